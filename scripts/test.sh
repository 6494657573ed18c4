#!/usr/bin/env bash
# Install everything (scripts/install.sh) and run the whole test suite.
# Tests mount real FUSE filesystems; every mount is unmounted by its fixture.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
