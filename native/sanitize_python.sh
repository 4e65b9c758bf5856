#!/usr/bin/env bash
# The Python boundary of the native kernels under AddressSanitizer + UndefinedBehaviorSanitizer:
# builds minibnn._native with the sanitizers (gcc, OpenMP as build_native.py decides) in a temporary
# directory next to a copy of the minibnn package (the source tree and its built module are not
# touched), then runs tests/test_native_boundary.py against that copy with the sanitizer runtimes
# preloaded into the (uninstrumented) Python. Any report aborts the run and fails this script.
# Skips, saying why, when gcc has no libasan or Python lacks cffi / numpy / pytest / hypothesis.
# Usage: native/sanitize_python.sh [pytest arguments]   (run by native/sanitize.sh; --capture=sys lets
# the sanitizer reports, written to file descriptor 2 by C, reach the terminal)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-$(command -v python || command -v python3 || echo python3)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

asan="$(gcc -print-file-name=libasan.so)"
ubsan="$(gcc -print-file-name=libubsan.so)"
if [[ "$asan" != /* || ! -e "$asan" || "$ubsan" != /* || ! -e "$ubsan" ]]; then
    echo "== python boundary: gcc has no libasan / libubsan here: skipped"
    exit 0
fi
if ! "$python" -c "import cffi, numpy, pytest, hypothesis" 2>/dev/null; then
    echo "== python boundary: $python lacks cffi, numpy, pytest or hypothesis: skipped"
    exit 0
fi

echo "== python boundary: gcc asan+ubsan build of minibnn._native"
mkdir -p "$tmp/path" "$tmp/build"
cp -R "$root/minibnn" "$tmp/path/minibnn"
find "$tmp/path/minibnn" \( -name "_native*.so" -o -name "_native*.pyd" -o -name __pycache__ \) -prune \
    -exec rm -rf {} +
# the build script's own flags and OpenMP probe, plus the sanitizers; -fno-wrapv undoes Python's
# -fwrapv (which would hide signed overflow from UBSan)
CC=gcc "$python" - "$here" "$tmp/build" "$tmp/path/minibnn" <<'EOF'
import os, shutil, sys

here, build, package = sys.argv[1:4]
sys.path.insert(0, here)
import build_native

san = ["-O1", "-g", "-fno-omit-frame-pointer", "-fno-wrapv", "-fsanitize=address,undefined",
       "-fno-sanitize-recover=all"]
flags = build_native.compiler_flags
build_native.compiler_flags = lambda: (flags()[0] + san, flags()[1] + ["-fsanitize=address,undefined"])
built = build_native.make_ffibuilder(absolute_paths=True).compile(tmpdir=build, verbose=False)
shutil.copy2(built, os.path.join(package, os.path.basename(built)))
EOF

# the sanitized module is the one imported (PYTHONPATH first; the working directory is the copy's)
cd "$tmp/path"
export PYTHONPATH="$tmp/path${PYTHONPATH:+:$PYTHONPATH}"
export ASAN_OPTIONS="abort_on_error=1:halt_on_error=1:detect_leaks=0"  # CPython frees little at exit
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc  # Python objects in malloc too, where ASan sees them
export LD_PRELOAD="$asan $ubsan"
"$python" -c "
import sys, minibnn._native as m
sys.exit(0 if m.__file__.startswith('$tmp/path/') else 'the sanitized module was not the one imported: ' + m.__file__)"
echo "== python boundary: tests/test_native_boundary.py against it"
"$python" -m pytest -q -p no:cacheprovider --capture=sys --rootdir "$root" "$root/tests/test_native_boundary.py" "$@"
