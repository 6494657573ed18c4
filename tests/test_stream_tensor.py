"""tvcfs.stream_tensor (tvcfs/stream.py): one tensor of a safetensors file, in order,
verified leaf by leaf, from a peer (a real server process, QUIC and TLS/TCP) or a
local repository; as numpy and torch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import tvcfs
from tvcfs.errors import CorruptBlock, TvcfsError
from tvcfs.repo import Repo

from support.safetensors import write_safetensors_raw
from support.server import Server

MIB = 1 << 20


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A repository whose ``m/model.safetensors`` has a small tensor, a 3 MiB BF16
    tensor (several leaves), a float16 one, and a header padded over 1 MiB (so it
    spans two leaves)."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(5)
    big = rng.integers(0, 1 << 16, size=(1536, 1024), dtype=np.uint16)
    tensors = [("a", "F32", (1000,), rng.standard_normal(1000).astype("<f4").tobytes()),
               ("big", "BF16", (1536, 1024), big.astype("<u2").tobytes()),
               ("c", "F16", (3, 4), rng.standard_normal(12).astype("<f2").tobytes())]
    wt = root / "wt"
    (wt / "m").mkdir(parents=True)
    write_safetensors_raw(str(wt / "m" / "model.safetensors"), tensors, header_pad=MIB + 5000)
    (wt / "notes.txt").write_text("not a model")
    repo = Repo.init(str(root / "repo"))
    repo.commit_dir(str(wt), message="m", timestamp=1_700_000_000)
    repo.close()
    return str(root / "repo"), {name: (dtype, shape, data) for name, dtype, shape, data in tensors}


@pytest.fixture(scope="module", params=["quic", "tcp"])
def server(model, request):
    srv = Server(model[0], transport=request.param)
    try:
        yield srv
    finally:
        srv.kill()


def test_remote_tensor_streams_in_order_and_converts(server, model):
    _, tensors = model
    dtype, shape, data = tensors["big"]
    with tvcfs.stream_tensor(server.url, "main", "m/model.safetensors", "big") as st:
        assert (st.name, st.dtype, st.shape, st.nbytes) == ("big", dtype, shape, len(data))
        chunks = [bytes(c) for c in st]
    assert len(chunks) >= 3  # handed over leaf by leaf, as they arrived
    assert b"".join(chunks) == data and st.received == len(data)
    arr = st.numpy()
    expect = (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)
    assert arr.shape == shape and arr.dtype == np.float32
    assert np.array_equal(arr.reshape(-1).view("<u4"), expect.view("<u4"))  # NaNs too
    torch = pytest.importorskip("torch")
    t = st.torch()
    assert t.dtype == torch.bfloat16 and tuple(t.shape) == shape
    assert t.view(torch.int16).numpy().tobytes() == data
    # one call for the array; a small tensor, by tag-less revision CID too
    small = tvcfs.stream_tensor(server.url, "HEAD", "m/model.safetensors", "c", as_array=True)
    assert np.array_equal(small, np.frombuffer(tensors["c"][2], "<f2").reshape(3, 4))


def test_local_repository_and_errors(model, server):
    path, tensors = model
    repo = Repo.open(path)
    try:
        head = repo.head()
        for source, rev in ((repo, "main"), (path, str(tvcfs.CID(head)))):
            st = tvcfs.stream_tensor(source, rev, "m/model.safetensors", "a")
            assert b"".join(bytes(c) for c in st) == tensors["a"][2]
        with pytest.raises(TvcfsError, match="has no tensor 'zz'; it has: a, big, c"):
            tvcfs.stream_tensor(repo, "main", "m/model.safetensors", "zz")
        with pytest.raises(TvcfsError, match="not a safetensors file"):
            tvcfs.stream_tensor(repo, "main", "notes.txt", "a")
    finally:
        repo.close()
    with pytest.raises(TvcfsError, match="has no tensor 'zz'"):
        tvcfs.stream_tensor(server.url, "main", "m/model.safetensors", "zz")
    with pytest.raises(TvcfsError, match="no revision 'nope'"):
        tvcfs.stream_tensor(server.url, "nope", "m/model.safetensors", "a")
    with pytest.raises(TvcfsError, match="not found"):
        tvcfs.stream_tensor(server.url, "main", "m/other.safetensors", "a")


def test_a_lying_peer_is_caught_before_its_bytes_are_handed_over(model):
    srv = Server(model[0], corrupt=True)
    try:
        got = []
        with pytest.raises(CorruptBlock):
            for chunk in tvcfs.stream_tensor(srv.url, "main", "m/model.safetensors", "big"):
                got.append(chunk)
        assert got == []
    finally:
        srv.kill()


def test_import_tvcfs_stays_lean():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, tvcfs; print(sorted(m for m in ('trio', 'numpy', "
         "'tvcfs.stream', 'tvcfs.transport.client') if m in sys.modules)); "
         "tvcfs.stream_tensor; print('tvcfs.stream' in sys.modules)"],
        capture_output=True, text=True, env=dict(os.environ), check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
