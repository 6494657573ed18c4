"""Shared test support for the tvcfs tests (docs/testing.md).

One implementation of each harness, imported as ``from support.X import ...`` (the
``tests`` directory is on ``sys.path`` under pytest, via ``tests/conftest.py``):

``support.cli``          :func:`~support.cli.run_tvcfs`, the one runner of the ``tvcfs`` CLI.
``support.mount``        :class:`~support.mount.Mounted`, the one mount harness
                         (``tvcfs mount -f`` child, watchdog, always unmounted).
``support.server``       :class:`~support.server.ServerProcess`, the one server harness
                         (a child that prints its URL; stopped by PID), its uses
                         (``tvcfs serve``, ``tvcfs hub serve``, the TensorSwap server
                         script) and the in-thread servers (gateway, moto S3).
``support.safetensors``  write/read safetensors files by hand; tensor byte ranges.
``support.wait``         :func:`~support.wait.wait_until`: poll a condition with a deadline.
``support.model``        the real model directory and a fine-tuned copy of it.
``support.trees``        compare directory trees.
``support.repo``         read refs, walk DAGs, count blocks of a repository.
``support.s3``           S3 clients and buckets on the moto server.
``support.hub``          HTTP and Hugging Face client helpers for the hub tests.
"""

import os

#: bytes in a MiB
MIB = 1 << 20
#: the repository's top directory (str)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_log(path: str) -> str:
    """The text of the log file ``path`` (undecodable bytes replaced); "" when it
    cannot be read (not written yet, or a temporary log already deleted)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""
