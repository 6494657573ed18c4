"""Lazy mounts of S3 buckets (tvcfs/fs/s3source.py; docs/backends.md "Lazy mounts"):
`tvcfs mount s3://BUCKET/PREFIX MNT` against moto's real S3 server on loopback, real
FUSE mounts in child processes: sentence-transformers loads the model from the mount,
one tensor moves ≤ 1.1× its bytes, the bucket unreachable gives EIO within the
timeout, and `--cache-size` evicts least recently used leaves but never those of an
open file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from support.cli import run_tvcfs
from support.s3 import bucket_objects, new_bucket
from support.mount import edit_lazy_files_in_place, fsync_dir, lazy_mount, remote_stats, settled_remote_stats, stats
from support.safetensors import tensor_range
from support.wait import wait_until

from tvcfs.repo import Repo

pytestmark = [pytest.mark.fuse]

MiB = 1 << 20
MODEL = "model.safetensors"


@pytest.fixture
def pushed(s3_endpoint, tmp_path, real_model_dir, monkeypatch):
    """The real model committed and pushed to a fresh bucket; the environment points
    the mount's child processes at moto and at a private cache directory. Returns the
    ``s3://`` URL."""
    return push_dir(s3_endpoint, monkeypatch, tmp_path, real_model_dir, "models/minilm")


def push_dir(s3_endpoint, monkeypatch, tmp_path, directory: str, prefix: str) -> str:
    """Commit ``directory`` into a new repository, push it to ``s3://NEW-BUCKET/prefix``
    and point the mount's child processes at moto and a private cache directory;
    returns the URL."""
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/{prefix}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("TVCFS_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    with Repo.init(str(src)) as r:
        r.commit_dir(directory, message="model")
        r.add_remote("origin", url)
    run_tvcfs("-C", src, "push")
    assert bucket_objects(s3_endpoint, bucket)
    return url


def s3_bytes(mnt: str, settle: bool = True, timeout: float = 10.0) -> int:
    """Bytes the mount received from the bucket (ranged GETs); with ``settle`` wait
    until no fetch is pending or queued."""
    return settled_remote_stats(mnt, settle, timeout)["s3"]["bytes"]


@pytest.mark.ml
def test_mount_s3_loads_model_with_sentence_transformers(pushed, tmp_path, real_model_dir):
    mnt = tmp_path / "mnt"
    with lazy_mount(pushed, str(mnt), "--fetch-timeout", 20) as m:
        path = os.path.join(m, "branches", "main")
        code = f"""
import json, numpy as np
from sentence_transformers import SentenceTransformer
s = ["an S3 bucket mounted lazily", "a second sentence"]
a = SentenceTransformer({path!r}, device="cpu").encode(s)
b = SentenceTransformer({real_model_dir!r}, device="cpu").encode(s)
print(json.dumps({{"same": bool(np.array_equal(a, b)), "shape": list(a.shape)}}))
"""
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        assert p.returncode == 0, p.stderr[-3000:]
        assert json.loads(p.stdout.strip().splitlines()[-1]) == {"same": True, "shape": [2, 384]}
        r = remote_stats(m)
        assert r["source"] == "s3" and r["s3"]["bytes"] > 0 and r["bad_blocks"] == 0


def test_one_tensor_moves_at_most_1_1x_its_bytes(pushed, tmp_path, real_model_dir):
    src_file = os.path.join(real_model_dir, MODEL)
    name = "embeddings.word_embeddings.weight"
    a, b = tensor_range(src_file, name)
    with open(src_file, "rb") as f:
        want = f.read()[a:b]
    mnt = tmp_path / "mnt"
    with lazy_mount(pushed, str(mnt), "--fetch-timeout", 20, log_path=str(tmp_path / "mount.log")) as m:
        fd = os.open(os.path.join(m, "branches", "main", MODEL), os.O_RDONLY)
        try:
            n = int.from_bytes(os.pread(fd, 8, 0), "little")
            os.pread(fd, n, 8)  # the header (safe_open's first read)
            w1 = s3_bytes(m)
            got = os.pread(fd, b - a, a)
            w2 = s3_bytes(m)
            assert got == want
            moved = w2 - w1
            print(f"\ntensor {b - a} B moved {moved} B from S3 ({moved / (b - a):.3f}x)")
            assert moved <= 1.1 * (b - a)
            # every leaf fetched was written through the map just before it was served:
            # no read waited for a page-in worker thread (S3BlockSource.on_stored)
            assert stats(m)["cold_reads"] == 0, stats(m)
            # a second read is local
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(fd, b - a, a) == want
            assert s3_bytes(m) == w2
        finally:
            os.close(fd)


def test_fresh_mount_to_first_tensor_lists_once_and_gets_once(pushed, s3_endpoint, tmp_path, real_model_dir):
    """The requests of a fresh `tvcfs mount s3://…` up to a tensor's bytes: the bucket
    is listed once (packs/, deleted/) and each pack index read once — the mount's
    foreground and background clients share them (before: each client listed and
    read every index itself) —, the start-up warm reads the header in one ranged GET,
    and a small tensor further on is one more ranged GET."""
    from support.safetensors import read_safetensors_header

    bucket = pushed.split("/")[2]
    n_idx = sum(k.endswith(".idx") for k in bucket_objects(s3_endpoint, bucket))
    src_file = os.path.join(real_model_dir, MODEL)
    n, h = read_safetensors_header(src_file)
    # a small tensor well past the kernel's first read of the file (the warm's)
    name = min((t for t in h if t != "__metadata__" and h[t]["data_offsets"][0] > 1 * MiB),
               key=lambda t: h[t]["data_offsets"][1] - h[t]["data_offsets"][0])
    a, b = tensor_range(src_file, name)
    with open(src_file, "rb") as f:
        f.seek(a)
        want = f.read(b - a)
    with lazy_mount(pushed, str(tmp_path / "mnt"), "--fetch-timeout", 20) as m:
        wait_until(lambda: remote_stats(m)["s3"]["requests"] >= 1, 20, what="the warm-up's GET of the header")
        r0 = settled_remote_stats(m)["s3"]
        assert r0["requests"] == 1, r0
        assert r0["all_requests"] == 2 + n_idx + 1, (r0, n_idx)
        fd = os.open(os.path.join(m, "branches", "main", MODEL), os.O_RDONLY)
        try:
            assert os.pread(fd, 8 + n, 0)[8:] == open(src_file, "rb").read(8 + n)[8:]
            assert os.pread(fd, b - a, a) == want
        finally:
            os.close(fd)
        r1 = settled_remote_stats(m)["s3"]
    print(f"\n{n_idx} pack indexes; start-up {r0}; tensor {name} ({b - a} B): {r1}")
    assert r1["requests"] - r0["requests"] == 1, (r0, r1)
    assert r1["all_requests"] - r0["all_requests"] == 1, (r0, r1)


def test_corrupt_pack_read_is_eio_naming_the_block(pushed, s3_endpoint, tmp_path):
    from support.s3 import s3_client

    bucket = pushed.split("/")[2]
    cl = s3_client(s3_endpoint)
    key = max(((k, v) for k, v in bucket_objects(s3_endpoint, bucket).items() if k.endswith(".pack")),
              key=lambda kv: kv[1])[0]
    body = bytearray(cl.get_object(Bucket=bucket, Key=key)["Body"].read())
    for off in range(1 << 20, len(body), 1 << 20):  # damage every leaf-sized stretch
        body[off] ^= 0xFF
    cl.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    mnt = tmp_path / "mnt"
    with lazy_mount(pushed, str(mnt), "--fetch-timeout", 10) as m:
        path = os.path.join(m, "branches", "main", MODEL)
        with pytest.raises(OSError) as ei:
            with open(path, "rb") as f:
                while f.read(4 * MiB):
                    pass
        assert ei.value.errno == 5  # EIO
        r = remote_stats(m)
        assert r["bad_blocks"] >= 1
        assert "does not hash to its CID" in (r["last_read_error"] or {}).get("error", "") + r["last_error"]


def test_bucket_unreachable_eio_within_timeout(pushed, tmp_path, monkeypatch):
    import socket

    # make the cache (lazy clone) while the bucket is there, then point at a dead endpoint
    mnt = tmp_path / "mnt"
    with lazy_mount(pushed, str(mnt)):
        pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cache = [os.path.join(tmp_path / "cache", d) for d in os.listdir(tmp_path / "cache")]
    assert len(cache) == 1
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)  # the mount of the cache repository reads from here
    log = tmp_path / "mount.log"
    with lazy_mount(cache[0], str(mnt), "--fetch-timeout", 3, log_path=str(log)) as m:
        t0 = time.monotonic()
        with pytest.raises(OSError) as ei:
            with open(os.path.join(m, "branches", "main", MODEL), "rb") as f:
                f.read(1 << 20)
        dt = time.monotonic() - t0
        assert ei.value.errno == 5 and dt < 10, dt
        err = remote_stats(m)["last_error"]
        assert "cannot connect" in err and pushed in err, err


def test_cache_size_evicts_lru_but_never_open_files(pushed, tmp_path, real_model_dir):
    limit = 8 * MiB
    mnt = tmp_path / "mnt"
    src_file = os.path.join(real_model_dir, MODEL)
    with open(src_file, "rb") as f:
        want = f.read()
    with lazy_mount(pushed, str(mnt), "--fetch-timeout", 20, "--cache-size", "8M") as m:
        path = os.path.join(m, "branches", "main", MODEL)
        fd = os.open(path, os.O_RDONLY)
        try:
            # read the whole 87 MiB file through one open handle: its leaves are pinned
            # while it is open, so the cache goes over the limit and nothing of it is evicted
            got = bytearray()
            while len(got) < len(want):
                got += os.pread(fd, 4 * MiB, len(got))
            assert bytes(got) == want
            # the keeper has run over the limit (it pinned the open file's leaves) ...
            wait_until(lambda: remote_stats(m)["cache"]["pinned_blocks"] > 50, 10,
                       what="the keeper to pin the open file's leaves")
            r = remote_stats(m)
            # ... and evicted nothing of it
            assert r["cache"]["evicted_blocks"] == 0
            assert r["cache"]["bytes"] > limit
            # re-reading moves nothing from S3
            w = s3_bytes(m)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(fd, len(want), 0) == want
            assert s3_bytes(m) == w
        finally:
            os.close(fd)
        # closed: the keeper evicts down to the limit
        wait_until(lambda: remote_stats(m)["cache"]["bytes"] <= limit, 10,
                   what="the keeper to evict down to the limit")
        r = remote_stats(m)
        assert r["cache"]["evicted_blocks"] > 50
        # reads keep working, and the evicted leaves come back from the bucket once the
        # mount's read snapshot is renewed (every 0.25 s; until then it still holds the
        # deleted leaves, as LMDB keeps a snapshot's pages). O_DIRECT: not from the
        # kernel's page cache, which still holds the pages read above.
        import mmap

        w = s3_bytes(m)
        buf = mmap.mmap(-1, 4 * MiB)
        deadline = time.monotonic() + 10
        while True:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                got, off = bytearray(), 0
                while off < len(want):
                    n = os.preadv(fd, [buf], off)
                    assert n > 0
                    got += buf[:n]
                    off += n
            finally:
                os.close(fd)
            assert bytes(got) == want
            if s3_bytes(m) > w:
                break
            assert time.monotonic() < deadline, "evicted leaves never fetched again"
            time.sleep(0.05)


def test_copy_on_write_with_a_cache_smaller_than_the_file(pushed, tmp_path, real_model_dir):
    """With ``--cache-size 2M`` (smaller than the 87 MiB file and than its largest
    tensor) a change in place to a file never read copies it on write, also with no
    handle open (a truncation by path): its leaves are fetched first and may be
    evicted once copied; the staged and the committed file read back as on disk.
    Before: EIO (the copy read the local store only). (That the copy pins the
    file's leaves is not shown here: a 60 MiB copy ends before the keeper runs.)"""
    with lazy_mount(pushed, str(tmp_path / "mnt"), "--fetch-timeout", 20, "--cache-size", "2M", limit=100) as m:
        want = edit_lazy_files_in_place(os.path.join(m, "branches", "main"), real_model_dir)
        wait_until(lambda: remote_stats(m)["cache"]["bytes"] <= 2 * MiB, 10, what="the cache back under its limit")
    with lazy_mount(pushed, str(tmp_path / "mnt"), "--fetch-timeout", 20, "--cache-size", "2M", limit=100) as m:
        for name, data in want.items():
            with open(os.path.join(m, "branches", "main", name), "rb") as f:
                assert f.read() == data, name


def test_cache_holding_local_leaves_evicts_only_fetched_ones(pushed, tmp_path, real_model_dir):
    """A cache repository that holds leaves the bucket does not (3 MiB of files
    written through ``branches/main`` and committed) besides fetched ones, mounted
    with ``--cache-size 2M``: the keeper evicts fetched leaves down to the limit,
    keeps the local ones and does not count them, and the mount keeps serving. Before:
    the keeper paired the bucket's answers with the wrong leaves, so the mount died
    (KeyError in the keeper: every request then failed with ENOTCONN), and the local
    leaves stayed counted, so the cache never got under its limit."""
    local = {f"local{i}.bin": os.urandom(MiB) for i in range(3)}
    with open(os.path.join(real_model_dir, MODEL), "rb") as f:
        model = f.read()
    with lazy_mount(pushed, str(tmp_path / "mnt"), "--fetch-timeout", 20) as m:
        br = os.path.join(m, "branches", "main")
        for name, data in local.items():
            with open(os.path.join(br, name), "wb") as f:
                f.write(data)
        fsync_dir(br)
        with open(os.path.join(br, MODEL), "rb") as f:  # every leaf fetched
            assert f.read() == model
    with lazy_mount(pushed, str(tmp_path / "mnt"), "--fetch-timeout", 20, "--cache-size", "2M", limit=100) as m:
        wait_until(lambda: remote_stats(m)["cache"]["bytes"] <= 2 * MiB, 15, what="the cache under its limit")
        br = os.path.join(m, "branches", "main")
        for name, data in local.items():
            with open(os.path.join(br, name), "rb") as f:
                assert f.read() == data, name
        with open(os.path.join(br, MODEL), "rb") as f:
            assert f.read() == model
        assert remote_stats(m)["cache"]["evicted_bytes"] > 50 * MiB


_RANDOM_READER = r"""
import mmap, os, random, sys, time
path, src, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
want = open(src, "rb").read()
rng = random.Random(seed)
buf = memoryview(mmap.mmap(-1, 3 << 20))
for i in range(n):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)  # not from the page cache
    try:
        for _ in range(3):
            off = rng.randrange(0, len(want)) & ~4095
            size = rng.choice([4096, 1 << 20, 3 << 20])
            got = os.preadv(fd, [buf[:size]], off)
            assert buf[:got] == want[off:off + got] and got == min(size, len(want) - off), (off, size)
    finally:
        os.close(fd)
    time.sleep(rng.random() * 0.3)  # no handle open: the keeper evicts
"""


def test_random_reads_from_processes_that_open_and_close_with_a_tiny_cache(pushed, tmp_path, real_model_dir):
    """Four processes open the 87 MiB file, read 3 random ranges (O_DIRECT) and close
    it, 50 times each, through an ``s3://`` mount with ``--cache-size 2M``: between
    opens the keeper evicts, so leaves go and come back. Every read returns the
    right bytes, none fails. Before: a read whose leaf was evicted after the read
    snapshot that called it local began, that snapshot being renewed meanwhile, failed
    with EIO (``block … not found``) although the bucket was up."""
    src = os.path.join(real_model_dir, MODEL)
    with lazy_mount(pushed, str(tmp_path / "mnt"), "--fetch-timeout", 20, "--cache-size", "2M", limit=150) as m:
        path = os.path.join(m, "branches", "main", MODEL)
        procs = [subprocess.Popen([sys.executable, "-c", _RANDOM_READER, path, src, str(i), "50"],
                                  stderr=subprocess.PIPE, text=True) for i in range(4)]
        try:
            errs = [p.communicate(timeout=120)[1] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert [p.returncode for p in procs] == [0] * 4, [e[-1500:] for e in errs]
        r = remote_stats(m)
        assert r["cache"]["evicted_blocks"] > 100 and not r.get("last_read_error"), r
        wait_until(lambda: remote_stats(m)["cache"]["bytes"] <= 2 * MiB, 10, what="the cache back under its limit")


def test_cache_size_of_a_mount_that_cannot_evict_is_refused(pushed, tmp_repo, servers, tmp_path):
    """``--cache-size`` bounds the cache of ``s3://`` mounts only (the only source that
    evicts). On a peer lazy mount or a plain repository it was accepted and ignored,
    so the cache grew past the bound the user set: refused with one line, nothing
    mounted, in the background and in the foreground; an ``s3://`` mount takes it."""
    src = tmp_path / "w"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(100000))
    tmp_repo.commit_dir(str(src), message="w")
    srv = servers(tmp_repo.root, tmp_path)
    clone = tmp_path / "clone"
    run_tvcfs("clone", "--lazy", "-q", srv.url, clone)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        for repo, what in ((clone, "lazy mount of tvcfs:// peers"), (tmp_repo.root, "not a lazy mount")):
            for fg in ([], ["-f"]):
                r = run_tvcfs("mount", *fg, "--cache-size", "2M", repo, mnt, ok=None, timeout=60)
                err = r.stderr.decode()
                assert r.returncode == 1 and err.count("\n") == 1, (r.stdout, err)
                assert err.startswith("tvcfs: error: --cache-size") and what in err and str(repo) in err, err
                assert "Traceback" not in err and not os.path.ismount(mnt)
    finally:  # (before the fix: mounted in the background, ignoring the bound)
        if os.path.ismount(mnt):
            run_tvcfs("unmount", mnt, ok=None, timeout=60)
    # a plain repository with an s3:// --remote is an S3 mount: accepted
    with lazy_mount(tmp_repo.root, str(mnt), "--remote", pushed, "--cache-size", "2M") as m:
        assert remote_stats(m)["cache"]["limit_bytes"] == 2 * MiB


def test_sequential_read_gets_each_pack_slot_once(s3_endpoint, tmp_path, monkeypatch):
    """A scan of a lazily mounted file asks for whole pack slots (S3Store.slot_of: the
    ~16 MiB slices of a pack), one ranged GET each, and moves each stored byte once.
    (Before: the reader's window grew in 2 MiB steps and each step's leaves, cut at
    16 MiB of block bytes without regard to packs, became GETs of ~6 MiB on average,
    each of which a server like moto pays for with a copy of the whole pack.)

    The scan keeps several slots in flight: its readahead runs past the tensor being
    read by 1/4 of what it has read (``S3BlockSource.scan_lead_div``), so ≥ 2 slots
    ahead by the second half (before: the reader's 1/32, ≤ 8 MiB here, and the reader
    waited on the one GET in flight, docs/performance.md "fourth round"). The page-in
    threads are handed only leaves already stored: the fetched ones are marked
    resident as they arrive (before: each page-in of a leaf still in flight found
    nothing, after switching the whole map to exact reads and back).

    No leaf the scan fetched is hashed again when it is served: each was hashed
    against its CID as it arrived (``read_checks`` counts the at-rest checks of
    reads; before: one xxh3 of each leaf, and an LMDB lookup of its checksum, on the
    FUSE thread or a page-in thread, docs/performance.md "fifth round").

    A request whose leaves the scan fetched is served without looking each leaf up
    in the store first (``remote_checks``: before, every request did, ~8 000 LMDB
    lookups per GiB on the FUSE thread; docs/performance.md "sixth round")."""
    from support.model import synth_model

    from tvcfs.store.s3 import MAX_RANGE

    synth = synth_model()
    wt = tmp_path / "wt"
    wt.mkdir()
    # a synthetic f16 transformer of ~250 MiB (the shape of scripts/bench/s3.py's model:
    # large matrices and small norms, byte-grouped and compressed in ~4 packs)
    synth.write_model(str(wt / MODEL), synth.plan_config(1.3e8), "f16", seed=3)
    want = (wt / MODEL).read_bytes()
    url = push_dir(s3_endpoint, monkeypatch, tmp_path, str(wt), "seq")
    bucket = url.split("/")[2]
    packs = {k: n for k, n in bucket_objects(s3_endpoint, bucket, "seq/packs/").items() if k.endswith(".pack")}
    assert len(packs) >= 2

    with lazy_mount(url, str(tmp_path / "mnt"), "--fetch-timeout", 30) as m:
        s0 = settled_remote_stats(m)["s3"]
        st0 = stats(m)
        checks0 = st0["read_checks"]
        got = bytearray()
        with open(os.path.join(m, "branches", "main", MODEL), "rb", buffering=0) as f:
            while b := f.read(4 * MiB):
                got += b
                if len(got) < len(want) // 2 <= len(got) + 4 * MiB:
                    s1 = settled_remote_stats(m)["s3"]  # the scan is under way by now
        assert bytes(got) == want
        s2 = settled_remote_stats(m)["s3"]
        st = stats(m)
    moved = s2["bytes"] - s0["bytes"]
    gets, scan_bytes = s2["requests"] - s1["requests"], s2["bytes"] - s1["bytes"]
    print(f"\n{len(want) / MiB:.0f} MiB read: {s2['requests'] - s0['requests']} GETs, {moved / MiB:.1f} MiB "
          f"moved ({len(packs)} packs, {sum(packs.values()) / MiB:.1f} MiB); second half {gets} GETs of "
          f"{scan_bytes / MiB:.1f} MiB")
    assert moved <= sum(packs.values())  # every stored byte at most once
    # the scan: one GET per pack slot (~16 MiB; the last slot of a pack 8-24 MiB)
    assert scan_bytes >= gets * 0.75 * MAX_RANGE, (gets, scan_bytes)
    print(f"scan lead {st['scan_lead_max'] / MiB:.1f} MiB past the tensor; {st['preload_absent']} page-ins "
          "of leaves not stored")
    assert st["scan_lead_max"] >= 2 * MAX_RANGE, st["scan_lead_max"]
    assert st["preload_absent"] == 0
    print(f"{st['read_checks'] - checks0} at-rest checks of served leaves during the scan")
    assert st["read_checks"] == checks0, (checks0, st["read_checks"])
    reads, looked_up = st["reads"] - st0["reads"], st["remote_checks"] - st0["remote_checks"]
    print(f"{reads} FUSE reads, {looked_up} of them looked their leaves up first")
    assert looked_up * 10 <= reads, (looked_up, reads)

