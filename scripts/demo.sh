#!/usr/bin/env bash
# Install everything (scripts/install.sh) and run the main job on the real model:
# create a repository, mount it, load the model through the mount, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python scripts/demo.py "$@"
