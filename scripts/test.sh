#!/usr/bin/env bash
# Install everything (scripts/install.sh) and run the whole test suite.
# Tests mount real FUSE filesystems; every mount is unmounted by its fixture.
# No arguments: all of tests/ (tests/unit/ included); `bash scripts/test.sh tests/unit`
# runs only the fast unit tests. Layout: docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
