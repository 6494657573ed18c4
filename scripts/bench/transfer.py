"""Clone throughput over QUIC (qh3, aioquic) and TLS-over-TCP, server in its own process.

    python scripts/bench/transfer.py [--size-mib 256] [--engines qh3,aioquic,tcp]

Builds a synthetic repository (random tensors, CDC-chunked), serves it from a child
process, clones it into a fresh repository per transport and prints MB/s, the time
to the first block of a fresh connection, and ratios. One run; quote medians of
several runs for anything important (the VM's memory balloon makes runs vary).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import trio


def serve(repo_path: str, transport: str, port: int) -> None:
    from tvcfs.repo import Repo
    from tvcfs.transport.backend import RepoBackend
    from tvcfs.transport.identity import NodeIdentity
    from tvcfs.transport.quic import QuicSettings, serve_quic
    from tvcfs.transport.server import ServerConfig, handle_session
    from tvcfs.transport.tcp import serve_tcp

    repo = Repo.open(repo_path)
    ident = NodeIdentity.load_or_create(os.path.join(repo_path, ".tvcfs", "bench-node.key"))
    cfg = ServerConfig(RepoBackend(repo), ident)

    async def main():
        async with trio.open_nursery() as n:
            if transport == "tcp":
                addr = await n.start(lambda task_status: serve_tcp(
                    lambda s: handle_session(s, cfg), "127.0.0.1", port, identity=ident,
                    task_status=task_status))
                p = addr[1]
            else:
                srv = await n.start(lambda task_status: serve_quic(
                    lambda s: handle_session(s, cfg), "127.0.0.1", port, identity=ident,
                    settings=QuicSettings(engine=transport), task_status=task_status))
                p = srv.address[1]
            print("READY", ident.peer_id_str, p, flush=True)

    trio.run(main)


def clone(url: str, dest: str, engine: str | None) -> tuple[float, int, float | None]:
    from tvcfs.repo import Repo
    from tvcfs.transport.backend import RepoBackend
    from tvcfs.transport.client import open_session

    dst = Repo.init(dest)

    async def main():
        t0 = time.perf_counter()
        async with open_session(url, engine=engine) as sess:
            t_conn = time.perf_counter() - t0
            refs, _ = await sess.list_refs()
            st = await sess.fetch(RepoBackend(dst), list(refs.values()))
        assert not st.missing
        return time.perf_counter() - t0, st.nbytes, t_conn + (st.first_block_s or 0)

    try:
        return trio.run(main)
    finally:
        dst.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--engines", default="qh3,aioquic,tcp")
    ap.add_argument("--serve", nargs=3, metavar=("REPO", "TRANSPORT", "PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve[0], a.serve[1], int(a.serve[2]))
        return
    from tvcfs.repo import Repo

    with tempfile.TemporaryDirectory() as tmp:
        wt = os.path.join(tmp, "wt")
        os.makedirs(wt)
        left = a.size_mib << 20
        i = 0
        while left > 0:
            n = min(left, 64 << 20)
            with open(os.path.join(wt, f"shard{i}.bin"), "wb") as f:
                f.write(os.urandom(n))
            left -= n
            i += 1
        src = os.path.join(tmp, "src")
        repo = Repo.init(src)
        repo.commit_dir(wt, message="bench")
        repo.close()
        results = {}
        for t in a.engines.split(","):
            proc = subprocess.Popen([sys.executable, __file__, "--serve", src, t, "0"],
                                    stdout=subprocess.PIPE, text=True)
            try:
                line = proc.stdout.readline().split()
                pid, port = line[1], int(line[2])
                scheme = "tvcfs+tcp" if t == "tcp" else "tvcfs+quic"
                url = f"{scheme}://{pid}@127.0.0.1:{port}/"
                secs, nbytes, first = clone(url, os.path.join(tmp, f"dst-{t}"),
                                            None if t == "tcp" else t)
                results[t] = nbytes / secs / 1e6
                print(f"{t:8s} {nbytes / 1e6:8.1f} MB in {secs:6.2f} s = {results[t]:7.1f} MB/s; "
                      f"first block {first * 1000:.1f} ms after connect start")
            finally:
                proc.terminate()
                proc.wait()
        if "qh3" in results and "aioquic" in results:
            print(f"qh3/aioquic = {results['qh3'] / results['aioquic']:.2f}")
        if "tcp" in results and "qh3" in results:
            print(f"qh3/tcp = {results['qh3'] / results['tcp']:.2f}")


if __name__ == "__main__":
    main()
