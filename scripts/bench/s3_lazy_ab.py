#!/usr/bin/env python3
"""A/B of the S3 lazy mount between source trees, against one moto server.

    python scripts/bench/s3_lazy_ab.py --work DIR --trees TREE_A TREE_B [--rounds 3]

``DIR`` is a ``scripts/bench/s3.py --workdir DIR`` directory (its ``src`` repository
and ``wt/model.safetensors``); each ``TREE`` a source tree (``git archive REV | tar
-x -C TREE``) whose ``tvcfs`` the mount daemon runs (``PYTHONPATH``). Starts
``moto_server``, pushes the model once, then per round and tree, each with an empty
cache: a fresh ``tvcfs mount s3://…``'s first tensor (``safe_open`` + the first
layer's ``input_layernorm``; ranged GETs and the foreground fetch's latency from
``.tvcfs/stats``) next to one raw 4 KiB ranged GET; then the raw loop of 16 MiB
ranged GETs (8 at a time) and another fresh mount's sequential read (4 MiB
``read``s): wall time, ranged GETs, FUSE reads, CPU seconds of the mount daemon and
of moto (``/proc/PID/stat``; the daemon's system time and its main thread's, the FUSE
requests, apart; its minor page faults). One JSON line per round and tree; judge by the same
round's ratio and by CPU seconds (docs/performance.md, S3 lazy mount sections).
``--read-ahead-kb`` is passed to the mounts of the sequential read. ``--profile
DIR``: ``py-spy record --threads --native`` of the daemon over each sequential read,
one raw file per round and tree in ``DIR`` (``-f raw``: collapsed stacks); with
``--perf``, ``perf record -g`` instead (kernel stacks too: ``perf report -i``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
MODEL_URL = "s3://models/synth"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


s3bench = _load("s3")        # moto_process, raw_upload, raw_ranged_read, clients, lazy
mount_load = _load("mount_load")  # proc_cpu


def cpu(pid: int) -> float:
    return mount_load.proc_cpu(pid)[0]


def cpu_split(pid: int) -> tuple[float, float]:
    """(system CPU seconds of process ``pid``, CPU seconds of its main thread: the
    mount's trio thread, which answers the FUSE requests)."""
    tck = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        m = f.read().rsplit(")", 1)[1].split()
    return int(x[12]) / tck, (int(m[11]) + int(m[12])) / tck


def daemon_pid() -> int | None:
    """PID of this process's child running the mount (``python -m tvcfs.cli``)."""
    me = os.getpid()
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == me and "tvcfs.cli" in cmd:
            return int(d)
    return None


def stats(mnt: str) -> dict:
    with open(os.path.join(mnt, ".tvcfs", "stats")) as f:
        return json.load(f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--trees", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--read-ahead-kb", type=int)
    ap.add_argument("--profile", metavar="DIR")
    ap.add_argument("--perf", action="store_true")
    a = ap.parse_args()
    a.work, a.trees = os.path.abspath(a.work), [os.path.abspath(t) for t in a.trees]
    # the mount daemon runs `python -m tvcfs.cli`, which puts its working directory
    # first on sys.path: started from a source tree, every mount would run that
    # tree's tvcfs whatever PYTHONPATH says (the A/Bs before 2026-12-07 19:20 compared
    # the tree they were started from with itself). Trees since then start it with
    # `python -P`; trees before still need this chdir.
    os.chdir(a.work)
    from safetensors import safe_open

    from tvcfs.fs import mount

    lazy = s3bench.lazy
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    srv, endpoint = s3bench.moto_process()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    src, model = os.path.join(a.work, "src"), os.path.join(a.work, "wt", "model.safetensors")
    size = os.path.getsize(model)
    mnt = os.path.join(a.work, "ab-mnt")
    cache = os.environ["TVCFS_CACHE_DIR"] = os.path.join(a.work, "ab-cache")
    log = os.path.join(a.work, "ab-mount.log")
    path = os.path.join(mnt, "branches", "main", "model.safetensors")
    extra = ["--read-ahead-kb", str(a.read_ahead_kb)] if a.read_ahead_kb else []
    try:
        c = s3bench.clients._boto(endpoint, 10)
        c.create_bucket(Bucket="raw")
        c.create_bucket(Bucket="models")
        s3bench.raw_upload(c, model, size)
        lazy.tvcfs("-C", src, "remote", "add", "origin", MODEL_URL, check=False)
        lazy.tvcfs("-C", src, "push", "-q")
        with safe_open(model, "np") as f:  # library start-up is not the mount's
            f.get_tensor("model.norm.weight")
        for r in range(a.rounds):
            for tree in a.trees:
                env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
                out: dict = {"tree": tree, "round": r, "load": round(os.getloadavg()[0], 2)}
                shutil.rmtree(cache, ignore_errors=True)
                with mount(MODEL_URL, mnt, env=env, log_path=log):
                    r0 = lazy.quiet(mnt)["s3"]["requests"]
                    t = time.perf_counter()
                    with safe_open(path, "np") as f:
                        f.get_tensor("model.layers.0.input_layernorm.weight")
                    out["first_ms"] = round((time.perf_counter() - t) * 1000, 1)
                    q = lazy.quiet(mnt)
                    out["first_gets"] = q["s3"]["requests"] - r0
                    out["fetch_ms"] = q["foreground_latency_ms"]["p50"]
                    lat = []
                    for i in range(5):
                        t = time.perf_counter()
                        c.get_object(Bucket="raw", Key=s3bench.pieces(size)[0][0],
                                     Range=f"bytes={i * MIB}-{i * MIB + 4095}")["Body"].read()
                        lat.append(time.perf_counter() - t)
                    out["raw_get_ms"] = round(sorted(lat)[2] * 1000, 1)
                shutil.rmtree(cache, ignore_errors=True)
                raw = s3bench.raw_ranged_read(c, size)
                with mount(MODEL_URL, mnt, env=env, log_path=log, extra_args=extra):
                    q0 = lazy.quiet(mnt)["s3"]
                    pid = daemon_pid()
                    spy = None
                    if a.profile:
                        os.makedirs(a.profile, exist_ok=True)
                        prof = os.path.join(a.profile, f"r{r}-{a.trees.index(tree)}")
                        cmd = (["perf", "record", "-g", "-o", prof + ".data"] if a.perf else
                               [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--threads",
                                "--native", "-r", "100", "-f", "raw", "-o", prof + ".txt"])
                        spy = subprocess.Popen(cmd + ["-p", str(pid)], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL)
                        time.sleep(1.0)  # py-spy attached
                    c0, m0, sp0 = cpu(pid), cpu(srv.pid), cpu_split(pid)
                    f0 = mount_load.proc_cpu(pid)[1]
                    t = time.perf_counter()
                    n = 0
                    with open(path, "rb", buffering=0) as f:
                        while b := f.read(4 * MIB):
                            n += len(b)
                    seq = time.perf_counter() - t
                    assert n == size
                    q1 = lazy.quiet(mnt)["s3"]
                    c1, m1, sp1 = cpu(pid), cpu(srv.pid), cpu_split(pid)
                    out["mount_minflt"] = mount_load.proc_cpu(pid)[1] - f0
                    if spy is not None:
                        spy.send_signal(2)  # SIGINT: py-spy writes its samples and exits
                        spy.wait(60)
                    out["fuse_reads"] = stats(mnt).get("reads")
                shutil.rmtree(cache, ignore_errors=True)
                out.update(raw_s=round(raw, 2), seq_s=round(seq, 2), ratio=round(raw / seq, 3),
                           seq_gets=q1["requests"] - q0["requests"], mount_cpu_s=round(c1 - c0, 2),
                           mount_sys_s=round(sp1[0] - sp0[0], 2), mount_main_s=round(sp1[1] - sp0[1], 2),
                           moto_cpu_s=round(m1 - m0, 2))
                print(json.dumps(out), flush=True)
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
