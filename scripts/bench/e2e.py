"""End-to-end pieces of the mount benchmarks (issue 16), shared by ``mount_read.py``
and ``mount_parallel.py``: the disk's own limit, cold loads in a child process that
has its libraries imported already, and the mount daemon's memory.

Not a benchmark by itself. Every function needs root where it drops the page cache.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import threading
import time

MIB = 1 << 20

# A child that imports its libraries, says "ready", waits for a line on stdin, loads
# the path and prints {"s": seconds, "n": bytes}. The page cache is dropped between
# "ready" and the go line: the libraries' own files are not what is measured.
CHILD = r'''
import json, sys, time
kind, path = sys.argv[1], sys.argv[2]
if kind == "automodel":
    import transformers
    transformers.logging.set_verbosity_error()
    def load():
        m = transformers.AutoModel.from_pretrained(path)
        return sum(p.numel() * p.element_size() for p in m.parameters())
elif kind == "sentence":
    from sentence_transformers import SentenceTransformer
    def load():
        m = SentenceTransformer(path, device="cpu")
        return sum(p.numel() * p.element_size() for p in m.parameters())
elif kind == "pt":
    import torch
    from safetensors import safe_open
    def load():
        n = 0
        with safe_open(path, "pt") as f:
            for k in f.keys():
                # get_tensor may hand out a view of the file's mmap: clone() makes it a
                # tensor in memory (what loading a model into parameters does)
                n += f.get_tensor(k).clone().nbytes
        return n
else:
    raise SystemExit("unknown kind " + kind)
if len(sys.argv) > 3:
    # a first load from another copy imports what the load imports lazily (the model
    # class, tokenizers...): the timed load then measures reading the model
    path, warm = sys.argv[3], path
    load()
    path = warm
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
n = load()
print(json.dumps({"s": time.perf_counter() - t, "n": n}), flush=True)
'''


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def cold_load(kind: str, path: str, before=None, warm: str | None = None) -> dict:
    """Load ``path`` (``kind``: ``automodel``, ``sentence``, ``pt``) in a fresh child
    process whose libraries are imported (and that has loaded ``warm``, another copy,
    once: what a load imports lazily is imported too), after dropping the page cache
    (and calling ``before()``, if given, right before). Returns ``{"s": seconds, "n":
    bytes}``."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, kind, path] + ([warm] if warm else []),
                         stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    try:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"{kind} loader did not start: {line!r}")
        drop_caches()
        if before:
            before()
        p.stdin.write("go\n")
        p.stdin.flush()
        out = json.loads(p.stdout.readline())
        p.wait(60)
        return out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def odirect_read(path: str, request: int = 8 * MIB, limit: int | None = None) -> tuple[float, int]:
    """The disk's own sequential read of ``path``: ``O_DIRECT`` (no page cache),
    ``request``-byte aligned reads one after another, up to ``limit`` bytes. Returns
    (seconds, bytes)."""
    buf = mmap.mmap(-1, request)
    mv = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        size = os.fstat(fd).st_size if limit is None else min(limit, os.fstat(fd).st_size)
        n = 0
        t = time.perf_counter()
        while n < size:
            k = os.preadv(fd, [mv], n)
            if k <= 0:
                break
            n += k
        return time.perf_counter() - t, n
    finally:
        os.close(fd)
        mv.release()
        buf.close()


def daemon_pid(repo_dir: str, mnt: str, timeout: float = 10.0) -> int:
    """PID of the mount process serving ``mnt`` (its pidfile, written just after
    mounting: waited for up to ``timeout`` seconds)."""
    from tvcfs.fs.daemon import _pidfile

    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(_pidfile(os.path.join(repo_dir, ".tvcfs"), mnt)) as f:
                return int(f.read())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def rss_anon(pid: int) -> int:
    """``RssAnon`` of process ``pid`` (bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Samples ``fn()`` every ``interval`` seconds in a thread while in the ``with``
    block; ``peak`` is the largest value seen."""

    def __init__(self, fn, interval: float = 0.01):
        self.fn, self.interval, self.peak = fn, interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.fn())
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        try:
            self.peak = max(self.peak, self.fn())
        except OSError:
            pass


def load_synth():
    """``scripts/synth_model.py`` as a module."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("synth_model", os.path.join(root, "scripts", "synth_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
