#!/usr/bin/env bash
# Build instrumented copies of the native kernels with their C test driver and run them; fail on any
# report. Every build happens in a temporary directory (the source tree is not touched):
#   1. gcc, AddressSanitizer + UndefinedBehaviorSanitizer, OpenMP    (the driver runs)
#   2. gcc, the same sanitizers, without OpenMP                       (the driver runs)
#   3. gcc -Wall -Wextra -Wpedantic -Werror, -O3, with and without OpenMP, release flags (runs)
#   4. clang, when `command -v clang` finds one: sanitizers (when its runtime links), with and
#      without OpenMP (with only when it links)
#   5. the NEON path, when aarch64-linux-gnu-gcc links and qemu-aarch64 exists (static build run under qemu)
#   6. the cffi extension built with gcc's sanitizers, driven from Python by tests/test_native_boundary.py
#      (sanitize_python.sh; skipped, saying why, without libasan or the Python test dependencies)
# Usage: native/sanitize.sh [cases]   (cases per kernel in the driver, default 60)
set -euo pipefail
cd "$(dirname "$0")"
cases="${1:-60}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

san=(-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
std=(-std=c11 -ffp-contract=off -Wall -Wextra -Wpedantic -Werror -I.)
srcs=(test_driver.c minibnn_kernels.c)
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=${MINIBNN_DETECT_LEAKS:-1}:halt_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

run() { # name, compiler, flags...
    local name="$1" cc="$2"
    shift 2
    echo "== $name"
    "$cc" "${std[@]}" "$@" "${srcs[@]}" -o "$tmp/$name" -lm
    "$tmp/$name" "$cases"
}

run gcc-asan-ubsan-openmp gcc "${san[@]}" -fopenmp
run gcc-asan-ubsan gcc "${san[@]}"
run gcc-release-openmp gcc -O3 -fopenmp
run gcc-release gcc -O3

if command -v clang >/dev/null 2>&1; then
    probe() { echo 'int main(void){return 0;}' | clang "$@" -x c - -o "$tmp/probe" 2>/dev/null; }
    clang_san=("${san[@]}")
    if ! probe "${san[@]}"; then
        echo "== clang cannot link the sanitizers here (no compiler-rt): clang builds without them"
        clang_san=(-O3)
    fi
    if probe -fopenmp; then
        # LeakSanitizer's exit-time tracer of older LLVM runtimes can crash on libomp's threads
        # ("Tracer caught signal 11", google/sanitizers#1267, fixed in later LLVM): no leak check in
        # this one build (the gcc builds above do check leaks, with and without OpenMP)
        ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" run clang-openmp clang "${clang_san[@]}" -fopenmp
    fi
    run clang clang "${clang_san[@]}"
else
    echo "== clang not found: skipped the clang builds"
fi
cross_ok() { # the cross compiler links a static C program (it needs the aarch64 C library too)
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1 &&
        echo 'int main(void){return 0;}' | aarch64-linux-gnu-gcc -static -x c - -o "$tmp/cross-probe" 2>/dev/null
}
if cross_ok; then
    echo "== aarch64-neon (qemu)"
    aarch64-linux-gnu-gcc "${std[@]}" -O2 -static "${srcs[@]}" -o "$tmp/aarch64"
    qemu-aarch64 "$tmp/aarch64" "$cases"
else
    echo "== no working aarch64 cross compiler (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross) + qemu-user: skipped the NEON build"
fi
bash sanitize_python.sh
echo "sanitize.sh: no reports"
