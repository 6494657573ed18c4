#!/usr/bin/env python3
"""Benchmark reading commit history: per-commit decoding and ``tvcfs log``.

Builds a repository with ``--commits`` commits on ``main`` (the same tree, via
``Repo.commit_tree``), then measures in this run:

* decoding one commit block: the ``dag-cbor`` library (what tvcfs used before) against
  :func:`tvcfs.encoding.commit.decode_commit` (the strict decoder of
  :mod:`tvcfs.encoding.dagcbor`), µs per commit over every commit of the history;
* ``tvcfs log --oneline`` of the whole history and ``tvcfs log -n 1`` in fresh
  processes (wall seconds, median of ``--repeat``), against ``git log --oneline`` of
  a git repository with the same number of commits, built in the same run, as the
  field's reference.

Prints the figures and ratios. Usage:
``python scripts/bench/history.py [--commits 2000] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(ROOT)  # after PYTHONPATH: ab.py runs each revision through it


def build_tvcfs(path: str, n: int) -> list[bytes]:
    from tvcfs.repo import Repo

    repo = Repo.init(path)
    src = path + ".src"
    os.makedirs(src)
    with open(os.path.join(src, "step.txt"), "w") as f:
        f.write("step 0\n")
    cids = []
    try:
        res = repo.commit_dir(src, branch="main", message="step 0")
        cids.append(res.cid)
        tree = repo.read_commit(res.cid).tree
        for i in range(1, n):
            cids.append(repo.commit_tree(tree, branch="main", message=f"step {i}").cid)
    finally:
        repo.close()
    return cids


def build_git(path: str, n: int) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@x")
    subprocess.run(["git", "init", "-q", "-b", "main", path], check=True)
    # fast-import: n commits in one process (each commit on a branch follows the last)
    lines = []
    for i in range(n):
        data = f"step {i}\n".encode()
        msg = f"step {i}".encode()
        lines.append(b"commit refs/heads/main\n")
        lines.append(b"committer b <b@x> %d +0000\n" % (1_700_000_000 + i))
        lines.append(b"data %d\n%s\n" % (len(msg), msg))
        lines.append(b"M 644 inline step.txt\ndata %d\n%s\n" % (len(data), data))
    subprocess.run(["git", "fast-import", "--quiet"], input=b"".join(lines), cwd=path, env=env, check=True)


def timed(cmd, cwd, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tvcfs-bench-history-")
    try:
        t = time.perf_counter()
        cids = build_tvcfs(os.path.join(tmp, "repo"), args.commits)
        print(f"built {args.commits} commits in {time.perf_counter() - t:.1f} s", flush=True)
        build_git(os.path.join(tmp, "git"), args.commits)

        import dag_cbor

        from tvcfs.encoding.commit import decode_commit
        from tvcfs.repo import Repo

        repo = Repo.open(os.path.join(tmp, "repo"))
        blocks = [bytes(repo.get(c)) for c in cids]
        repo.close()
        dag_cbor.decode(blocks[0])
        t = time.perf_counter()
        for b in blocks:
            dag_cbor.decode(b)
        lib_us = (time.perf_counter() - t) / len(blocks) * 1e6
        t = time.perf_counter()
        for b in blocks:
            decode_commit(b)
        ours_us = (time.perf_counter() - t) / len(blocks) * 1e6
        print(f"decode one commit: dag-cbor library {lib_us:.1f} µs, tvcfs {ours_us:.1f} µs "
              f"(library / tvcfs = {lib_us / ours_us:.1f})")

        tvcfs = [os.path.join(os.path.dirname(sys.executable), "tvcfs")]
        log_all = timed([*tvcfs, "log", "--oneline"], os.path.join(tmp, "repo"), args.repeat)
        log_one = timed([*tvcfs, "log", "-n", "1"], os.path.join(tmp, "repo"), args.repeat)
        git_all = timed(["git", "log", "--oneline"], os.path.join(tmp, "git"), args.repeat)
        git_one = timed(["git", "log", "-n", "1"], os.path.join(tmp, "git"), args.repeat)
        print(f"log of {args.commits} commits: tvcfs {log_all:.3f} s, git {git_all:.3f} s "
              f"(tvcfs / git = {log_all / git_all:.1f})")
        print(f"log -n 1: tvcfs {log_one:.3f} s, git {git_one:.3f} s (tvcfs / git = {log_one / git_one:.1f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
