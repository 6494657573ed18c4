#!/usr/bin/env python3
"""Server time of the hub's web pages for a repository of 1,000 commits, one run.

    python scripts/bench/hub_pages.py [--commits 1000] [--workdir DIR] [--repeat 20]

1. Makes a hub in ``--workdir`` (kept for re-runs) with ``bench/long``: ``--commits``
   commits made quickly with ``Repo.commit_tree`` on small trees (a README with front
   matter, a config, and a 16-tensor safetensors file of 4 layers × 4 kinds, one
   tensor changed per commit).
2. Starts ``tvcfs hub serve`` (tests/support/server.py) and requests each page once
   (cold: the process computes the log order and the per-commit figures it caches)
   and then ``--repeat`` times (warm), on a keep-alive connection.
3. Prints, per page, the server time (the ``Server-Timing: app;dur=`` header the
   pages send: routing excluded, rendering included) cold and the median and maximum
   warm, the client-side wall time median, and the page size; then, after one more
   commit lands, the same for the first log page of the new head; then a JSON line.

Target (docs/performance.md, "Hub web pages"): server time <= 100 ms per page.
The machine is shared: run it once, on a quiet machine if possible.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
REPO = "bench/long"
KINDS = ("attn.q.weight", "attn.k.weight", "mlp.up.weight", "mlp.down.weight")
LAYERS = 4


def _safetensors(step: int) -> bytes:
    """A small safetensors file (16 F32 tensors of 64×64); tensor ``step % 16`` gets
    new values at each step, the others keep theirs."""
    import numpy as np

    header, blobs, off = {"__metadata__": {"format": "pt", "step": str(step)}}, [], 0
    for i in range(LAYERS * len(KINDS)):
        name = f"model.layers.{i // len(KINDS)}.{KINDS[i % len(KINDS)]}"
        seed = step if i == step % (LAYERS * len(KINDS)) else -1
        a = np.random.default_rng(i * 100_003 + seed + 1).standard_normal((64, 64)).astype(np.float32)
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": [64, 64], "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + b"".join(blobs)


def prepare(work: str, commits: int) -> str:
    """The hub root with ``bench/long`` of ``commits`` commits (built once)."""
    from tvcfs.hub.core import Hub
    from tvcfs.repo import Author

    root = os.path.join(work, "hub")
    hub = Hub.init(root)
    try:
        if hub.state.repo(REPO) is not None:
            return root
        hub.create_repo(REPO)
        repo = hub.repo(REPO)
        src = os.path.join(work, "tree")
        os.makedirs(src, exist_ok=True)
        with open(os.path.join(src, "README.md"), "w") as f:
            f.write("---\nlicense: apache-2.0\ntags: [bench]\n---\n# bench/long\n\nA small model, trained a "
                    "little at a time.\n")
        with open(os.path.join(src, "config.json"), "w") as f:
            json.dump({"model_type": "llama", "num_hidden_layers": LAYERS}, f)
        t0, start = time.time(), int(time.time()) + 10
        author = Author("trainer", "trainer@example.org")
        for step in range(commits):
            with open(os.path.join(src, "model.safetensors"), "wb") as f:
                f.write(_safetensors(step))
            tree = repo.add_path(src)
            repo.commit_tree(tree, "main", f"step {step}", author, timestamp=start + step,
                             metadata={"step": step, "loss": 1.0 / (step + 1)})
        print(f"built {commits} commits in {time.time() - t0:.1f} s", file=sys.stderr)
    finally:
        hub.close()
    return root


def measure(url: str, path: str, repeat: int) -> dict:
    u = url.split("//", 1)[1]
    host, port = u.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=60)

    def one():
        t = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        wall = (time.perf_counter() - t) * 1000
        assert r.status == 200, (path, r.status, body[:300])
        return float(r.getheader("server-timing").split("dur=")[1]), wall, len(body)

    cold, _, size = one()
    warm = [one() for _ in range(repeat)]
    c.close()
    return {"path": path, "cold_ms": cold, "median_ms": statistics.median(w[0] for w in warm),
            "max_ms": max(w[0] for w in warm), "wall_ms": statistics.median(w[1] for w in warm), "bytes": size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    from support.server import running_hub

    work = args.workdir or tempfile.mkdtemp(prefix="tvcfs-bench-pages-")
    root = prepare(work, args.commits)
    pages = ["/", f"/{REPO}", f"/{REPO}/tree/main", f"/{REPO}/commits/main", f"/{REPO}/commits/main?p=10",
             f"/{REPO}/commits/main?p={-(-(args.commits + 1) // 50)}", f"/{REPO}/commit/main",
             f"/{REPO}/compare/main~1...main", f"/{REPO}/compare/main~999...main" if args.commits > 999
             else f"/{REPO}/compare/main~{args.commits - 1}...main",
             f"/{REPO}/blob/main/model.safetensors", f"/{REPO}/blob/main/config.json"]
    rows = []
    with running_hub(root, log=os.path.join(work, "hub-serve.log")) as url:
        for p in pages:
            rows.append(measure(url, p, args.repeat))
        # one more commit while the hub runs: the first log page of the new head
        from tvcfs.hub.core import Hub
        from tvcfs.repo import Author

        hub = Hub.open(root)
        try:
            repo = hub.repo(REPO)
            tree = repo.read_commit(repo.resolve("main~1")).tree
            repo.commit_tree(tree, "main", "one more", Author("trainer", "trainer@example.org"))
        finally:
            hub.close()
        r = measure(url, f"/{REPO}/commits/main", args.repeat)
        r["path"] += " (after a new commit)"
        rows.append(r)
    print(f"{'page':<62} {'cold':>8} {'median':>8} {'max':>8} {'wall':>8} {'bytes':>8}")
    for r in rows:
        print(f"{r['path']:<62} {r['cold_ms']:>6.1f}ms {r['median_ms']:>6.1f}ms {r['max_ms']:>6.1f}ms "
              f"{r['wall_ms']:>6.1f}ms {r['bytes']:>8}")
    print(json.dumps({"commits": args.commits, "pages": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
