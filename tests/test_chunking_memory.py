"""Chunking in bounded memory: large (sparse) files commit with peak RSS growth far
below their size, measured in a fresh subprocess (docs/format.md, "Chunking"). The
in-process chunking tests are in tests/unit/test_chunking.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from support import MIB


# --------------------------------------------------------------------------- memory
_MEM_SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    from tvcfs.repo import Repo
    from tvcfs.chunking import plan_spans
    import numpy, lmdb, dag_cbor, multiformats  # everything imported before the baseline
    src, repo_dir = sys.argv[1], sys.argv[2]
    repo = Repo.init(repo_dir)
    repo.add_bytes(b"warm up")
    before = hwm()
    res = repo.commit_dir(src, message="big")
    after = hwm()
    idx = repo.file_index(repo.entry("main", "big.bin").cid)
    print(json.dumps({"before": before, "after": after, "bytes": res.bytes, "new_bytes": res.new_bytes,
                      "leaves": len(idx.leaves), "size": idx.size}))
""")


def _measure(src_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(src_dir), str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _sparse(path, size, islands, header: bytes = b""):
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(size)
        for i in range(islands):  # a few non-zero islands so leaves differ
            f.seek(len(header) + (i + 1) * (size // (islands + 1)))
            f.write(os.urandom(4096))


@pytest.mark.slow
def test_commit_of_2gb_safetensors_streams_in_bounded_memory(tmp_path):
    """A 2 GiB (sparse) safetensors file commits with peak RSS growth far below its
    size: only ``window`` leaves of 1 MiB are in flight (VmHWM, measured in a fresh
    subprocess)."""
    size = 2 << 30
    d = tmp_path / "src"
    d.mkdir()
    hdr = json.dumps({"__metadata__": {"format": "pt"},
                      "w": {"dtype": "U8", "shape": [size - 256], "data_offsets": [0, size - 256]}}).encode()
    hdr += b" " * (256 - 8 - len(hdr))
    _sparse(d / "big.bin", size, 8, len(hdr).to_bytes(8, "little") + hdr)
    r = _measure(d, tmp_path)
    assert r["size"] == size and r["bytes"] == size
    assert r["leaves"] == 1 + -(-(size - 256) // MIB)  # header leaf + 1 MiB tensor pieces
    growth = r["after"] - r["before"]
    assert growth < 96 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB for a {size / MIB:.0f} MiB file"


@pytest.mark.slow
def test_commit_of_large_non_safetensors_streams_in_bounded_memory(tmp_path):
    """Same through the content-defined chunker (a 512 MiB sparse file)."""
    size = 512 << 20
    d = tmp_path / "src"
    d.mkdir()
    _sparse(d / "big.bin", size, 8)
    r = _measure(d, tmp_path)
    assert r["size"] == size
    growth = r["after"] - r["before"]
    assert growth < 96 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB for a {size / MIB:.0f} MiB file"
