#!/usr/bin/env python3
"""Packed blocks: what a fine-tune costs after `tvcfs pack`, decode speed, and the
mount's cold read of a packed commit (issue 22; docs/performance.md "Packed blocks").

Usage (root: it drops the page cache for the cold reads)::

    python scripts/bench/deltas.py [--bf16-mib 256] [--steps 30] [--repeat 3]
                                   [--workdir DIR] [--keep] [--json OUT.json]
    python scripts/bench/deltas.py --transfer [--bf16-mib 64] [--steps 30]   # the push part only; no root needed

The push measurement (``--transfer``'s: bytes a push of each fine-tune moves to a
tvcfs:// peer and an S3 bucket that hold its base) runs after the figures below in
the same run unless ``--no-transfer``.

In one run:

``real_fp32``  a real fine-tune of all-MiniLM-L6-v2 (``scripts/make_finetune.py real``:
               ``--steps`` AdamW steps, lr 2e-5, torch on CPU, seed 0) committed on
               top of the base with ``--delta-base``, then ``tvcfs pack --keep-hot 0``:
               stored bytes of the blocks the fine-tune added / their raw size
               (target <= 0.45)
``bf16``       a synthetic LLaMA-style bf16 model of ``--bf16-mib`` MiB and its
               fine-tune (every tensor, updates of relative size 1e-3;
               ``scripts/make_finetune.py synth-bf16``), the same way: the fine-tune
               (target <= 0.20) and the base, a unique bf16 model with no base to
               delta against (target <= 0.75)
``decode``     single-thread decode throughput of the bf16 fine-tune's packed values
               (and, in ``real_fp32.decode``, of the real fp32 fine-tune's: the first
               three figures below):
               the codec's (every value — the deltas and their packed bases — decoded
               once, a delta given its base's bytes: bytes out per CPU second; target
               >= 1 GB/s per core) and per leaf as the mount decodes it (the delta's
               frame and its packed base's frame for one leaf's bytes, XOR on the
               planes, one un-grouping; printed beside it), the store's full read path per leaf (bases
               decoded, every block checked: ``LMDBStore.get``, cache cleared), and
               the GIL's cost: wall ms per leaf of two threads reading them through
               the store, alone and beside a thread running Python (300 us busy,
               300 us asleep: the FUSE loop), and the ratio
``mount``      sequential cold read (after ``drop_caches``, a fresh mount process) of the
               bf16 fine-tune's file through the mount, packed (delta on the packed
               base: two decodes per leaf) against the same commit raw in a second
               repository: packed / raw (target >= 0.5); and packed with the base kept
               raw (``--hot BASE``: one decode per leaf) / raw; medians of ``--repeat``

``--transfer`` measures instead what a push of each fine-tune (real fp32, bf16) moves
to a peer that holds its base: over ``tvcfs://`` (``tvcfs serve`` in a child process,
QUIC on loopback, the push of ``tvcfs push``: thin transfers, docs/protocol.md) the
bytes sent / the raw bytes of the fine-tune's new blocks, and to ``s3://`` (moto's
S3 server in this process, the push of ``tvcfs push``) the pack bytes the push added /
the same raw bytes; and the unique bf16 base pushed to an empty bucket (stored /
raw). Throughputs are GB/s (10^9 bytes/s). Prints a summary and one
JSON object (also written to ``--json``); the load average is recorded (the machine
may be shared).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.append(ROOT)  # after PYTHONPATH: ab.py runs each revision through it

import numpy as np  # noqa: E402

from tvcfs.encoding.cid import cid_str  # noqa: E402
from tvcfs.fs import mount  # noqa: E402
from tvcfs.fs.daemon import _mount_pid  # noqa: E402
from tvcfs.pack import DELTA_BASE_KEY, commit_storage, pack  # noqa: E402
from tvcfs.repo import Author, Repo  # noqa: E402
from tvcfs.store import encodings  # noqa: E402

AUTHOR = Author("bench", "bench@example.org")


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def commit_pair(repo_dir: str, base_dir: str, ft_dir: str, do_pack: bool, base_hot: bool = False) -> dict:
    """Commit ``base_dir`` then ``ft_dir`` (naming the base with ``delta_base``) into a
    fresh repository; pack everything when ``do_pack`` (but the base when
    ``base_hot``: ``tvcfs pack --keep-hot 0 --hot BASE``). Returns the storage of both
    commits (:func:`tvcfs.pack.commit_storage`) and the pack's figures."""
    shutil.rmtree(repo_dir, ignore_errors=True)
    out = {}
    with Repo.init(repo_dir) as repo:
        c1 = repo.commit_dir(base_dir, "main", "base", AUTHOR).cid
        c2 = repo.commit_dir(ft_dir, "main", "fine-tune", AUTHOR,
                             metadata={DELTA_BASE_KEY: cid_str(c1)}).cid  # tvcfs commit --delta-base
        if do_pack:
            t = time.perf_counter()
            res = pack(repo, keep_hot=0, hot=[c1] if base_hot else ())
            out["pack_s"] = round(time.perf_counter() - t, 2)
            out["pack"] = res.as_dict()
        out["base"] = commit_storage(repo, c1)
        out["ft"] = commit_storage(repo, c2)
        out["commits"] = (c1, c2)
    return out


def _daemon_pid(repo_dir: str, mnt: str, timeout: float = 10.0) -> int:
    """The pid of the mount daemon of ``repo_dir`` on ``mnt``: its pid file, polled
    (a daemon before the pid file was written atomically made it visible empty for
    a moment after the mount appeared). Raises ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while (pid := _mount_pid(repo_dir, mnt)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no pid file for the mount on {mnt}")
        time.sleep(0.01)
    return pid


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mount_stats(mnt: str) -> dict:
    """The ``.tvcfs/stats`` counters of the mount at ``mnt``."""
    with open(os.path.join(mnt, ".tvcfs", "stats")) as f:
        return json.load(f)


def ratio(st: dict) -> float:
    return round(st["new_stored"] / st["new_raw"], 4)


def decode_speed(repo_dir: str, commit: bytes) -> dict:
    """Decode throughput per core of the packed leaves ``commit`` added (GB/s of
    decoded bytes per CPU second of the one thread doing it, so that other jobs on a
    shared machine count less): ``decode`` (decompression, un-grouping, XOR; bases'
    bytes in memory) and ``read`` (the store's path: bases decoded, every block
    checked, no cache); and the GIL's cost (:func:`_two_threads`): wall ms per leaf
    of two reading threads alone and beside a thread running Python."""
    from tvcfs.pack import reachable_blocks

    with Repo.open(repo_dir) as repo:
        com = repo.read_commit(commit)
        mine = reachable_blocks(repo, [commit]) - reachable_blocks(repo, com.parents)
        st = repo.store
        items = []
        with st.view() as v:
            for c in mine:
                info = v.info(c)
                if info is None or info.encoding == "raw":
                    continue
                value = bytes(v.txn.get(c, db=st.dbs["packed"]))
                base = None
                if info.base:  # as stored: a packed base is decoded too, as the mount does
                    b = v.txn.get(info.base, db=st.dbs["packed"])
                    base = (True, bytes(b)) if b is not None else (False, bytes(v.get(info.base)))
                items.append((c, value, base, info.raw))
        nbytes = sum(i[3] for i in items)
        t = time.thread_time()
        for _, value, base, _ in items:
            _decode_as_stored(value, base)
        dec = nbytes / (time.thread_time() - t) / 1e9
        codec = _codec_speed(items)
        st.decoded.__init__()
        st.verified.__init__()
        t = time.thread_time()
        for c, *_ in items:
            st.get(c)
            st.decoded.__init__()
        read = nbytes / (time.thread_time() - t) / 1e9
        alone = _two_threads(st, [i[0] for i in items], python=False)
        beside = _two_threads(st, [i[0] for i in items], python=True)
    return {"leaves": len(items), "bytes": nbytes, "decode_gbps": round(dec, 3), "codec_gbps": round(codec, 3),
            "read_gbps": round(read, 3),
            "two_threads_ms_per_leaf": round(alone * 1e3, 3), "beside_python_ms_per_leaf": round(beside * 1e3, 3),
            "gil_slowdown": round(beside / alone, 2)}


def _codec_speed(items) -> float:
    """The codec's own throughput (GB/s of decoded bytes per CPU second of this
    thread): every packed value among ``items`` (the fine-tune's leaves and their packed
    bases) decoded once on its own, a delta given its base's bytes in memory, as a codec
    benchmark counts it (each decode's output counted once). The mount's per-leaf
    figure (``decode_gbps``: a delta and its packed base for one leaf's bytes) is
    lower by the base's frame."""
    values, bases = [], {}
    for _, value, base, _ in items:
        if base is not None and base[0]:
            bases[base[1]] = None
        values.append((value, base))
    for bv in bases:  # the base's bytes a delta is decoded against (not timed)
        bh = encodings.header(bv)
        out = np.empty(bh.raw_len, np.uint8)
        encodings.decode_into(bv, out, None, bh)
        bases[bv] = out.tobytes()
    jobs = [(bv, None) for bv in bases]
    jobs += [(v, None if b is None else (b[1] if not b[0] else bases[b[1]])) for v, b in values]
    n, t = 0, time.thread_time()
    for value, base_bytes in jobs:
        h = encodings.header(value)
        encodings.decode_into(value, encodings.scratch(h.raw_len, 8), base_bytes, h)  # not slot 0: decode_into's own
        n += h.raw_len
    return n / (time.thread_time() - t) / 1e9


# the store decodes a delta into its base's planes in place (LMDBStore._decode) since the
# compiled kernels came (docs/performance.md "Packed blocks", ninth round); older code: a copy
_SPEND = {"spend_base": True} if "spend_base" in inspect.signature(encodings.decode_into).parameters else {}


def _decode_as_stored(value: bytes, base) -> None:
    """Decode packed ``value`` as the store does (``LMDBStore._decode``, without its
    lookups and check): ``base`` is ``None``, ``(False, bytes)`` for a raw base, or
    ``(True, value)`` for a packed one, whose frame is decoded too — into planes XORed
    with the delta's when both have the same element size (one un-grouping)."""
    h = encodings.header(value)
    out = encodings.scratch(h.raw_len, 8)  # the store's output is no scratch slot decode_into uses (0)
    if base is None or not base[0]:
        encodings.decode_into(value, out, base and base[1], h)
        return
    bh = encodings.header(base[1])
    if h.elem == bh.elem > 1 and bh.base is None:
        planes = encodings.scratch(bh.raw_len, 1)
        encodings.planes_into(base[1], planes, None, bh)
        encodings.decode_into(value, out, None, h, base_planes=planes, **_SPEND)
    else:
        b = encodings.scratch(bh.raw_len, 1)
        encodings.decode_into(base[1], b, None, bh)  # a base of depth 1: the fine-tunes here
        encodings.decode_into(value, out, b, h)


def _two_threads(st, cids: list, python: bool, busy: float = 300e-6, idle: float = 300e-6) -> float:
    """Wall seconds per leaf for two threads reading ``cids`` (packed leaves) through
    the store's path (no cache: bases decoded, checked), as the mount's two preload
    threads do; with ``python``, a third thread beside them runs Python ``busy``
    seconds then sleeps ``idle`` seconds, over and over, as the FUSE loop does. The
    ratio of the two measures what the decodes lose waiting to take the GIL back
    after each step that released it (docs/performance.md "Packed blocks")."""
    import threading

    st.decoded.__init__()
    st.verified.__init__()
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            end = time.perf_counter() + busy
            while time.perf_counter() < end:
                pass
            time.sleep(idle)

    def work(part):
        with st.view() as v:
            for c in part:
                v.get(c)

    py = threading.Thread(target=loop) if python else None
    if py:
        py.start()
    ts = [threading.Thread(target=work, args=(cids[k::2],)) for k in range(2)]
    t = time.perf_counter()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    dt = time.perf_counter() - t
    stop.set()
    if py:
        py.join()
    st.decoded.__init__()
    return dt / max(1, len(cids))


T0 = 1_700_000_000  # commit timestamps of --transfer: both sides make the same base commit


def _base_and_ft(repo_dir: str, base_dir: str, ft_dir: str | None):
    """A repository holding ``base_dir`` committed at :data:`T0` (and ``ft_dir`` on top,
    naming the base with ``delta_base``); returns ``(base CID, fine-tune CID | None,
    raw bytes of the blocks the fine-tune added)``."""
    shutil.rmtree(repo_dir, ignore_errors=True)
    with Repo.init(repo_dir) as repo:
        c1 = repo.commit_dir(base_dir, "main", "base", AUTHOR, timestamp=T0).cid
        if ft_dir is None:
            return c1, None, sum(len(repo.store.get(c)) for c in repo.store)
        before = set(repo.store)
        c2 = repo.commit_dir(ft_dir, "main", "fine-tune", AUTHOR, timestamp=T0 + 1,
                             metadata={DELTA_BASE_KEY: cid_str(c1)}).cid
        raw = sum(len(repo.store.get(c)) for c in repo.store if c not in before)
    return c1, c2, raw


def wire_push(work: str, name: str, base_dir: str, ft_dir: str) -> dict:
    """Push the fine-tune over tvcfs:// (QUIC) to a ``tvcfs serve`` holding the base:
    bytes sent / raw bytes of the fine-tune's new blocks."""
    from tvcfs import sync
    from tvcfs.transport.identity import format_peer_id

    tr = _load(os.path.join(HERE, "transfer.py"), "transfer_bench")
    srv, local = os.path.join(work, f"{name}-srv"), os.path.join(work, f"{name}-local")
    _base_and_ft(srv, base_dir, None)
    _, ft, raw = _base_and_ft(local, base_dir, ft_dir)
    with Repo.open(local) as repo:
        peer = format_peer_id(repo.identity().peer_id)
    cmd = [sys.executable, "-m", "tvcfs.cli", "serve", srv, "--listen", "127.0.0.1:0", "-q", "--no-tcp",
           "--allow-push", peer]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        url = "tvcfs+quic" + line[line.index("://"):]
        with Repo.open(local) as repo:
            t = time.perf_counter()
            r = sync.push(repo, url, "main")
            secs = time.perf_counter() - t
        with Repo.open(srv) as repo:
            assert repo.refs()["refs/heads/main"] == ft
    finally:
        tr._stop(proc)
    return {"raw": raw, "sent": r.nbytes, "ratio": round(r.nbytes / raw, 4), "seconds": round(secs, 2)}


def s3_push(work: str, endpoint: str, name: str, base_dir: str, ft_dir: str | None) -> dict:
    """Push the base (then the fine-tune) to a new bucket with ``tvcfs push``'s code;
    the pack bytes the last push added / the raw bytes of what it pushed."""
    import uuid

    import boto3

    from tvcfs import sync
    from tvcfs.pack import DeltaSource

    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)

    def objects():
        page = client.list_objects_v2(Bucket=bucket)
        return {o["Key"]: o["Size"] for o in page.get("Contents", ()) if o["Key"].endswith(".pack")}

    url = f"s3://{bucket}/m"
    local = os.path.join(work, f"{name}-s3")
    base, ft, raw = _base_and_ft(local, base_dir, ft_dir)
    with Repo.open(local) as repo:
        if ft is not None:  # the bucket holds the base first
            repo.update_ref("refs/heads/main", base, ft)
            sync.push(repo, url, "main", options={"endpoint_url": endpoint, "deltas": DeltaSource(repo, [base])})
            repo.update_ref("refs/heads/main", ft, base)
        before = objects()
        head = repo.ref_db.get("refs/heads/main")
        t = time.perf_counter()
        sync.push(repo, url, "main", options={"endpoint_url": endpoint, "deltas": DeltaSource(repo, [head])})
        secs = time.perf_counter() - t
    added = sum(v for k, v in objects().items() if k not in before)
    return {"raw": raw, "stored": added, "ratio": round(added / raw, 4), "seconds": round(secs, 2)}


def transfer_main(args, mf, work: str) -> dict:
    """``--transfer``: :func:`wire_push` and :func:`s3_push` of both fine-tunes."""
    import logging

    from moto.server import ThreadedMotoServer

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    result: dict = {"loadavg_start": os.getloadavg(), "bf16_mib": args.bf16_mib, "steps": args.steps}
    real_ft = os.path.join(work, "real-ft")
    shutil.rmtree(real_ft, ignore_errors=True)
    mf.real_finetune(real_ft, steps=args.steps, lr=2e-5, seed=0)
    synth_dir = os.path.join(work, "bf16")
    shutil.rmtree(synth_dir, ignore_errors=True)
    s = mf.synth_bf16(synth_dir, size_mib=args.bf16_mib, delta=1e-3, seed=0)
    pairs = {"real_fp32": (mf.real_model_dir(), real_ft),
             "bf16": (os.path.dirname(s["base"]), os.path.dirname(s["ft"]))}
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, (b, f) in pairs.items():
            result[name] = {"wire": wire_push(work, name, b, f), "s3": s3_push(work, endpoint, name, b, f)}
        result["bf16_unique_s3"] = s3_push(work, endpoint, "bf16-base", pairs["bf16"][0], None)
    finally:
        srv.stop()
    result["loadavg_end"] = os.getloadavg()
    targets = [("real fp32 fine-tune: push sent / raw", result["real_fp32"]["wire"]["ratio"], 0.45),
               ("real fp32 fine-tune: S3 stored / raw", result["real_fp32"]["s3"]["ratio"], 0.45),
               ("bf16 fine-tune: push sent / raw", result["bf16"]["wire"]["ratio"], 0.20),
               ("bf16 fine-tune: S3 stored / raw", result["bf16"]["s3"]["ratio"], 0.20),
               ("unique bf16 model: S3 stored / raw", result["bf16_unique_s3"]["ratio"], 0.75)]
    for what, v, goal in targets:
        print(f"{what:<40} {v:>8}  target <= {goal}  {'ok' if v <= goal else 'MISSED'}")
    print(f"load {result['loadavg_start']} -> {result['loadavg_end']}")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bf16-mib", type=float, default=256, help="size of the synthetic bf16 model (MiB)")
    ap.add_argument("--steps", type=int, default=30, help="AdamW steps of the real fine-tune")
    ap.add_argument("--repeat", type=int, default=3, help="cold reads per repository")
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--transfer", action="store_true",
                    help="measure only the bytes a push moves (tvcfs:// thin, S3)")
    ap.add_argument("--no-transfer", action="store_true",
                    help="leave the push measurement (run by default after the storage figures) out")
    args = ap.parse_args(argv)
    if args.transfer:
        mf = _load(os.path.join(ROOT, "scripts", "make_finetune.py"), "make_finetune")
        work = args.workdir or tempfile.mkdtemp(prefix="tvcfs-bench-deltas-", dir="/var/tmp")
        os.makedirs(work, exist_ok=True)
        try:
            result = transfer_main(args, mf, work)
        finally:
            if not args.keep and not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(result, default=str))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1, default=str)
        return 0
    if os.geteuid() != 0:
        print("deltas.py: needs root (drop_caches for the cold reads)", file=sys.stderr)
        return 2
    mf = _load(os.path.join(ROOT, "scripts", "make_finetune.py"), "make_finetune")
    mr = _load(os.path.join(HERE, "mount_read.py"), "mount_read")
    work = args.workdir or tempfile.mkdtemp(prefix="tvcfs-bench-deltas-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    result: dict = {"loadavg_start": os.getloadavg(), "bf16_mib": args.bf16_mib, "steps": args.steps,
                    "kernels": getattr(encodings, "KERNELS", "numpy")}  # compiled or numpy decode
    try:
        # real fp32 fine-tune
        t = time.perf_counter()
        real_ft = os.path.join(work, "real-ft")
        shutil.rmtree(real_ft, ignore_errors=True)
        info = mf.real_finetune(real_ft, steps=args.steps, lr=2e-5, seed=0)
        result["real_fp32"] = {"finetune_s": round(time.perf_counter() - t, 1), "changed_tensors": info["changed"],
                               "tensors": info["tensors"], "loss": [info["loss_first"], info["loss_last"]]}
        r = commit_pair(os.path.join(work, "repo-real"), mf.real_model_dir(), real_ft, True)
        result["real_fp32"].update(ft_ratio=ratio(r["ft"]), ft_new_raw=r["ft"]["new_raw"],
                                   ft_new_stored=r["ft"]["new_stored"], base_ratio=ratio(r["base"]),
                                   pack_s=r["pack_s"], encodings=r["ft"]["encodings"])
        dec = decode_speed(os.path.join(work, "repo-real"), r["commits"][1])
        result["real_fp32"]["decode"] = {k: dec[k] for k in ("leaves", "bytes", "decode_gbps", "codec_gbps",
                                                             "read_gbps")}

        # synthetic bf16 base and fine-tune
        t = time.perf_counter()
        synth_dir = os.path.join(work, "bf16")
        shutil.rmtree(synth_dir, ignore_errors=True)
        s = mf.synth_bf16(synth_dir, size_mib=args.bf16_mib, delta=1e-3, seed=0)
        result["bf16"] = {"bytes": s["bytes"], "make_s": round(time.perf_counter() - t, 1)}
        base_dir, ft_dir = os.path.dirname(s["base"]), os.path.dirname(s["ft"])
        packed_repo = os.path.join(work, "repo-bf16-packed")
        hotbase_repo = os.path.join(work, "repo-bf16-hotbase")
        raw_repo = os.path.join(work, "repo-bf16-raw")
        r = commit_pair(packed_repo, base_dir, ft_dir, True)
        _, ft_commit = r["commits"]
        result["bf16"].update(ft_ratio=ratio(r["ft"]), base_ratio=ratio(r["base"]), pack_s=r["pack_s"],
                              pack_mbps=round((r["base"]["new_raw"] + r["ft"]["new_raw"]) / r["pack_s"] / 1e6, 1),
                              encodings=r["ft"]["encodings"])
        commit_pair(raw_repo, base_dir, ft_dir, False)
        commit_pair(hotbase_repo, base_dir, ft_dir, True, base_hot=True)

        # decode
        result["decode"] = decode_speed(packed_repo, ft_commit)

        # mount cold read: packed vs raw, same commit
        size = os.path.getsize(s["ft"])
        mnt = os.path.join(work, "mnt")
        cold = {"packed": [], "raw": [], "hotbase": []}
        cpu = {k: [] for k in cold}  # the mount daemon's CPU seconds per GB read
        waits = {k: [] for k in cold}  # its requests, and those that waited for a page-in
        for _ in range(args.repeat):
            for name, repo_dir in (("raw", raw_repo), ("packed", packed_repo), ("hotbase", hotbase_repo)):
                with mount(repo_dir, mnt) as m:
                    path = os.path.join(m, "branches", "main", "model.safetensors")
                    pid = _daemon_pid(repo_dir, m)
                    mr.drop_caches()
                    s0, c0 = _mount_stats(m), _cpu_s(pid)
                    dt, n = mr.seq_read(path)
                    c1, s1 = _cpu_s(pid), _mount_stats(m)
                    assert n == size
                    cold[name].append(n / dt / 1e9)
                    cpu[name].append((c1 - c0) / (n / 1e9))
                    waits[name].append([s1.get(k, 0) - s0.get(k, 0) for k in ("reads", "cold_reads")])
        ratios = [p / q for p, q in zip(cold["packed"], cold["raw"])]
        hot_ratios = [p / q for p, q in zip(cold["hotbase"], cold["raw"])]
        result["mount"] = {"cold_raw_gbps": round(statistics.median(cold["raw"]), 3),
                           "cold_packed_gbps": round(statistics.median(cold["packed"]), 3),
                           "cold_hotbase_gbps": round(statistics.median(cold["hotbase"]), 3),
                           "packed_over_raw": round(statistics.median(ratios), 3),
                           "hotbase_over_raw": round(statistics.median(hot_ratios), 3),
                           "runs": {k: [round(x, 3) for x in v] for k, v in cold.items()},
                           "daemon_cpu_s_per_gb": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
                           "requests_reads_cold": {k: v for k, v in waits.items()}}
        result["loadavg_end"] = os.getloadavg()
        if not args.no_transfer:  # the bytes a push moves, in the same run (prints its own targets)
            tdir = os.path.join(work, "transfer")
            os.makedirs(tdir, exist_ok=True)
            result["transfer"] = transfer_main(args, mf, tdir)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    targets = [("real fp32 fine-tune stored / raw", result["real_fp32"]["ft_ratio"], "<=", 0.45),
               ("bf16 fine-tune stored / raw", result["bf16"]["ft_ratio"], "<=", 0.20),
               ("unique bf16 model stored / raw", result["bf16"]["base_ratio"], "<=", 0.75),
               ("decode GB/s per core (every value once)", result["decode"]["codec_gbps"], ">=", 1.0),
               ("  per leaf served: delta + packed base", result["decode"]["decode_gbps"], ">=", 1.0),
               ("mount cold read packed / raw", result["mount"]["packed_over_raw"], ">=", 0.5),
               ("  the same, base kept raw (--hot)", result["mount"]["hotbase_over_raw"], ">=", 0.5)]
    for what, v, op, goal in targets:
        ok = v <= goal if op == "<=" else v >= goal
        print(f"{what:<36} {v:>8}  target {op} {goal}  {'ok' if ok else 'MISSED'}")
    print(f"two threads through the store: {result['decode']['two_threads_ms_per_leaf']} ms per leaf, "
          f"{result['decode']['beside_python_ms_per_leaf']} beside a Python thread "
          f"(x{result['decode']['gil_slowdown']})")
    rd = result["real_fp32"]["decode"]
    print(f"real fp32 fine-tune decode per core: every value once {rd['codec_gbps']} GB/s, per leaf served "
          f"{rd['decode_gbps']}, store read path {rd['read_gbps']}")
    print(f"store read path (bases decoded, hashed) {result['decode']['read_gbps']} GB/s per core; "
          f"cold read raw {result['mount']['cold_raw_gbps']} GB/s, packed {result['mount']['cold_packed_gbps']}, "
          f"base kept raw {result['mount']['cold_hotbase_gbps']}; "
          f"load {result['loadavg_start']} -> {result['loadavg_end']}")
    print(json.dumps(result, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
