#!/usr/bin/env bash
# The packed-block decode kernels (tvcfs/store/_planes.c) under AddressSanitizer and
# UndefinedBehaviorSanitizer (docs/testing.md, "Fuzzing the decode kernels"): builds
# the extension with -fsanitize=address,undefined into a scratch copy of the package
# and runs the property tests of tests/test_planes_fuzz.py (and the kernel tests of
# tests/test_pack.py) against it with many examples. Any out-of-bounds access, use
# after free or undefined behaviour aborts the run with the sanitizer's report.
# Not part of the suite: it needs a special build and takes minutes.
#
#   bash scripts/asan_planes.sh              # 5000 examples per property
#   TVCFS_PLANES_EXAMPLES=20000 bash scripts/asan_planes.sh
#   SCRATCH=/var/tmp/x PYTHON=.venv/bin/python bash scripts/asan_planes.sh -x -k damaged
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
PY=${PYTHON:-$SRC/.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
SCRATCH=${SCRATCH:-/var/tmp/cfuzz}
rm -rf "$SCRATCH/pkg" "$SCRATCH/build"
mkdir -p "$SCRATCH/pkg" "$SCRATCH/build"
# a copy of the sources without the worktree's ordinary build of the module
cp -r tvcfs "$SCRATCH/pkg/"
find "$SCRATCH/pkg" -name '_planes*.so' -delete
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1 -g" \
LDFLAGS="-fsanitize=address,undefined" \
    "$PY" setup.py -q build_ext --build-lib "$SCRATCH/pkg" --build-temp "$SCRATCH/build"
SO=$(ls "$SCRATCH"/pkg/tvcfs/store/_planes*.so)
case "$(ldd "$SO")" in  # (not ldd | grep -q: with pipefail, grep's early exit fails ldd)
*libasan*) ;;
*) echo "asan_planes: $SO is not linked with libasan" >&2; exit 1 ;;
esac
export LD_PRELOAD=$(gcc -print-file-name=libasan.so)
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH=$SCRATCH/pkg
export TVCFS_PLANES_EXAMPLES=${TVCFS_PLANES_EXAMPLES:-5000}
unset TVCFS_NO_C
cd "$SCRATCH"  # not the source tree: python -m puts the current directory first on sys.path
# the run must use the sanitized module, not fall back to numpy or another build
"$PY" -c "
from tvcfs.store import encodings
assert encodings._c is not None and encodings._c.__file__ == '$SO', encodings._c
print('asan_planes: kernels', encodings._c.__file__)"
"$PY" -m pytest -q -p no:cacheprovider --rootdir="$SRC" \
    "$SRC/tests/test_planes_fuzz.py" \
    "$SRC/tests/test_pack.py::test_compiled_kernels_refuse_hostile_input_and_never_write_out_of_bounds" \
    "$SRC/tests/test_pack.py::test_compiled_and_numpy_kernels_give_identical_bytes" \
    "$SRC/tests/test_pack.py::test_damaged_sparse_sections_are_errors_never_wrong_bytes" \
    "$SRC/tests/test_pack.py::test_decode_into_rejects_damaged_frames_and_is_thread_safe" "$@"
rm -rf "$SCRATCH/pkg" "$SCRATCH/build"
echo "asan_planes: no sanitizer report"
