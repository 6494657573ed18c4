#!/usr/bin/env bash
# Install everything tvcfs needs on a fresh Debian 12 machine (run as root or with sudo):
# Debian packages (FUSE 3, headers for pyfuse3, Node.js for the IPFS interop test, nginx
# for scripts/bench/hub.py, Chromium and its WebDriver for the hub's web page tests,
# strace for a test of the mount's request loop),
# then a virtual environment .venv with tvcfs, its test extras and CPU PyTorch 2.13.0.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=""
for pkg in fuse3 libfuse3-dev pkg-config gcc git python3-dev python3-venv nginx chromium chromium-driver strace; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt="$need_apt $pkg"
done
command -v node >/dev/null 2>&1 || need_apt="$need_apt nodejs npm"
if [ -n "$need_apt" ]; then
  echo "==> apt-get install$need_apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need_apt >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
# (pip install -e also compiles tvcfs/store/_planes.c in place: the packed-block decode's
# kernels, gcc and python3-dev above; a change to the C file rebuilds it)
if ! .venv/bin/python -c "import tvcfs, pyfuse3, torch, transformers, sentence_transformers, pytest" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.tvcfs-installed ] || [ setup.py -nt .venv/.tvcfs-installed ] || [ tvcfs/store/_planes.c -nt .venv/.tvcfs-installed ]; then
  echo "==> pip install (CPU torch 2.13.0 first: other versions pull GBs of CUDA packages)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[test,ml]'
  touch .venv/.tvcfs-installed
fi
# pyfuse3 built with packaging/pyfuse3-read-reply-nogil.patch: the mount's read replies are
# written to /dev/fuse with the GIL released (25-30 % faster cold reads, docs/mount.md "Reads");
# then packaging/pyfuse3-request-loop.patch: a queued request is read without a pass of the
# event loop (~30 % less CPU per request on the FUSE thread, docs/performance.md).
# The stock pyfuse3 from PyPI works too (a plain `pip install tvcfs`), only slower.
PYFUSE3=3.5.0
PYFUSE3_LOCAL=$PYFUSE3+tvcfs.nogilread3
if [ "$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pyfuse3"))' 2>/dev/null)" != "$PYFUSE3_LOCAL" ]; then
  echo "==> pyfuse3 $PYFUSE3 with packaging/pyfuse3-*.patch (built from its source: ~30 s)"
  build=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-binary :all: --no-deps "pyfuse3==$PYFUSE3" -d "$build"
  tar xzf "$build/pyfuse3-$PYFUSE3.tar.gz" -C "$build"
  for name in read-reply-nogil request-loop; do  # in this order: the second builds on the first
    patch_file=$PWD/packaging/pyfuse3-$name.patch
    (cd "$build/pyfuse3-$PYFUSE3" && git apply "$patch_file")
  done
  SETUPTOOLS_SCM_PRETEND_VERSION=$PYFUSE3_LOCAL \
    .venv/bin/python -m pip install -q --no-deps --force-reinstall "$build/pyfuse3-$PYFUSE3"
  rm -rf "$build"
fi
if ! .venv/bin/python -c "import tvcfs.store._planes" 2>/dev/null; then
  echo "==> warning: tvcfs/store/_planes.c did not build (gcc, python3-dev?): packed blocks decode with numpy, slower" >&2
fi
echo "==> installed: $(.venv/bin/tvcfs --version)"
