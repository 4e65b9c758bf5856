#!/usr/bin/env bash
# The GPU check of the cuda backend: one script, about 5 minutes on an H100/H200 with CuPy and PyTorch
# installed and no network. Run from the repository root, from the source tree (no install needed):
#
#     bash benchmarks/gpu_check.sh [OUTDIR]
#
# 1. the cuda tests (pytest -m gpu: the kernel table against numpy_ref bit for bit on the tensor-core
#    and the CUDA-core paths, every op, module, optimizer, training and packed inference against the
#    numpy backend, the host-sync test);
# 2. a binary LeNet on MNIST, two epochs on `cuda` (test accuracy and seconds; the first epoch pays the
#    start-up: CUDA context, kernel loading), then `minibnn eval`,
#    `convert` and packed `eval` of it on `cuda`; the same LeNet on
#    `native` over the first 6,000 images of the same machine's CPUs when the C library can be built
#    there (cffi wheels in .whl/ are installed first when present: the GPU machine has no cffi);
# 3. python benchmarks/gpu.py --quick --sections gemm,conv,infer,train (about 2 minutes): xnor_gemm at
#    4096^3 and conv shapes on tensor cores and CUDA cores against cuBLAS (CuPy f32/f16, PyTorch bf16),
#    ResNet-18's binary 3x3 convolutions against PyTorch bf16 conv2d, packed ResNet-18 inference and
#    binary training against PyTorch, each minibnn result checked against numpy_ref; it ends with the
#    table of issue 9's four targets (met / MISSED / not run), also in gpu_quick.json.
# It prints one table at the end with the card's name, then that targets table, and exits non-zero
# when any part failed (a MISSED target is a measurement, not a failure). Logs go to OUTDIR (default
# $OUT when set, else gpu_check_out/). Each part has a time limit (timeout), so one that hangs fails alone.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
runs=$(mktemp -d)  # trained models and checkpoints (not kept)
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
declare -a rows
status=0

row() { rows+=("$(printf '%-34s %-8s %s' "$1" "$2" "$3")"); }
elapsed() { echo $(( $(date +%s) - $1 ))s; }

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$runs/gpu.txt"
$py -c "import sys, numpy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__)"
gpu_name=$(head -1 "$runs/gpu.txt")

if ls .whl/cffi-*.whl >/dev/null 2>&1 && ! $py -c "import cffi" 2>/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
t=$(date +%s)
if timeout 120 $py native/build_native.py >"$out/native_build.log" 2>&1; then native=yes; else native=no; fi
row "native build (CPU)" "$native" "$(elapsed "$t"), log native_build.log"

echo "== 1. cuda tests"
t=$(date +%s)
if timeout 200 $py -m pytest -q -m gpu -p no:cacheprovider --durations=8 tests 2>&1 | tee "$out/pytest_gpu.log"; then r=pass; else r=FAIL; status=1; fi
row "pytest -m gpu" "$r" "$(elapsed "$t"), $(tail -1 "$out/pytest_gpu.log")"

echo "== 2. binary LeNet, 2 epochs on MNIST"
t=$(date +%s)
if timeout 150 $py -m minibnn train --backend cuda --model lenet --epochs 2 --quiet --out "$runs/lenet_cuda" 2>&1 \
    | tee "$out/lenet_cuda.log"; then r=pass; else r=FAIL; status=1; fi
row "LeNet 2 epochs, cuda" "$r" "$(elapsed "$t"), $(grep -h 'epoch 1:' "$out/lenet_cuda.log" | tail -1 | cut -c1-80)"
row "  (epoch 2: no start-up costs)" "" "$(grep -h 'epoch 2:' "$out/lenet_cuda.log" | tail -1 | cut -c1-80)"
row "  test accuracy, cuda" "" "$(grep -h 'test accuracy' "$out/lenet_cuda.log" | tail -1 | cut -c1-60)"
t=$(date +%s)  # the trained model: float eval, convert, packed eval, all on cuda
if timeout 90 bash -c "$py -m minibnn eval --backend cuda '$runs/lenet_cuda/model' && \
    $py -m minibnn convert --backend cuda '$runs/lenet_cuda/model.json' && \
    $py -m minibnn eval --backend cuda '$runs/lenet_cuda/binarized_model'" 2>&1 | tee "$out/lenet_eval.log"
then r=pass; else r=FAIL; status=1; fi
row "LeNet eval/convert/packed eval" "$r" "$(elapsed "$t"), $(grep -h 'packed model' "$out/lenet_eval.log" | cut -c1-70)"
if [ "$native" = yes ]; then
  t=$(date +%s)
  if timeout 120 $py -m minibnn train --backend native --model lenet --epochs 1 --limit 6000 --quiet \
      --out "$runs/lenet_native" 2>&1 | tee "$out/lenet_native.log"; then r=pass; else r=FAIL; status=1; fi
  row "LeNet 6k images, native ($(nproc) CPUs)" "$r" "$(elapsed "$t"), $(grep -h 'epoch 1:' "$out/lenet_native.log" | tail -1 | cut -c1-80)"
fi

echo "== 3. benchmarks/gpu.py --quick (gemm, conv, infer, train)"
t=$(date +%s)
rm -f "$out/gpu_quick.json"
if timeout 240 $py benchmarks/gpu.py --quick --sections gemm,conv,infer,train --json "$out/gpu_quick.json" 2>&1 \
    | tee "$out/gpu_bench.log"; then r=pass; else r=FAIL; status=1; fi
row "benchmarks/gpu.py --quick" "$r" "$(elapsed "$t"), table in gpu_bench.log"
# The targets table gpu.py prints last (a block ending in a blank line); when gpu.py was cut short, the
# targets in its JSON, which it rewrites after each section.
targets=$(sed -n '/^== targets/,/^$/p' "$out/gpu_bench.log")
json_targets() {
  $py - "$out/gpu_quick.json" "$1" <<'PY'
import collections, json, sys
rows = json.load(open(sys.argv[1]))["targets"]
if sys.argv[2] == "count":
    print(", ".join(f"{n} {result}" for result, n in collections.Counter(r["result"] for r in rows).items()))
else:
    print("== targets (issue 9), from gpu_quick.json: gpu.py did not finish")
    for r in rows:
        print(r["target"], r["what"], r["measured"], "vs", r["baseline"], r["baseline_value"], "ratio", r["ratio"],
              r["goal"], r["result"], r["note"])
PY
}
if [ -s "$out/gpu_quick.json" ]; then
  [ -n "$targets" ] || targets=$(json_targets table 2>&1)
  row "  issue 9 targets" "" "$(json_targets count 2>&1)"
fi

echo
echo "== GPU check on: $gpu_name"
printf '%s\n' "${rows[@]}"
echo
printf '%s\n' "${targets:-== targets (issue 9): none, gpu.py wrote neither its table nor its JSON}"
echo
[ $status -eq 0 ] && echo "GPU check: all parts passed" || echo "GPU check: FAILED (see the logs in $out)"
exit $status
