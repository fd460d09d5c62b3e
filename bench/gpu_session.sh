#!/usr/bin/env bash
# One lent-GPU session in as few calls as possible: install with the CUDA extension, run the GPU tests, then
# the benchmarks, writing everything under $OUT (default /tmp/fastwsss-gpu). Phases, in order of need:
#
#   bash bench/gpu_session.sh setup tests kernels     # install + build fastwsss._C, GPU tests, kernel benchmarks
#   bash bench/gpu_session.sh setup pseudo serving    # the pseudo stage end to end, the serving benchmark
#
# `setup` is skipped when fastwsss._C already imports (a warm machine). Each phase's output goes to
# $OUT/<phase>.log and its JSON to $OUT/<name>.json; a failing phase is reported and the next one still runs.
# SERVING_MODEL may name a trained seg checkpoint (carried with the call) for the argmax-agreement figures.
set -u
OUT=${OUT:-/tmp/fastwsss-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TRITON_INTERPRET=0 MAX_JOBS=${MAX_JOBS:-16} FASTWSSS_NO_PROGRESS=1
PY=${PY:-python3}

phase_setup() {
  if $PY -c "import fastwsss._C" 2>/dev/null; then echo "already installed"; return 0; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  FASTWSSS_BUILD_CUDA=1 $PY -m pip install -q --no-deps --no-build-isolation -e . &&
    $PY -c "import fastwsss._C; print('fastwsss._C built')"
}

phase_tests() {
  timeout 420 $PY -m pytest -q -rs -p no:cacheprovider tests/kernels/test_gpu_kernels.py \
    tests/kernels/test_cuda_extension.py
}

phase_kernels() {
  timeout 420 $PY -m bench.kernels --device cuda --dense --repeats 50 --json "$OUT/kernels.json"
  timeout 200 $PY -m bench.random_walk --device cuda --grids 94x125,128x128 --classes 3,21 --budget-s 5 \
    --json "$OUT/random_walk.json"
}

phase_pseudo() {
  timeout 240 $PY -m bench.pseudo --device cuda --images 16 --dense-images 4 --json "$OUT/pseudo.json"
}

phase_serving() {
  if [ -n "${SERVING_MODEL:-}" ]; then
    timeout 200 $PY -m bench.serving --device cuda --model "$SERVING_MODEL" --json "$OUT/serving-trained.json"
  fi
  timeout 300 $PY -m bench.serving --device cuda --arch deeplabv2:resnet101:21 --json "$OUT/serving-r101.json"
}

status=0
for phase in "$@"; do
  echo "=== $phase ($(date +%T))"
  if ! "phase_$phase" >"$OUT/$phase.log" 2>&1; then
    echo "phase $phase FAILED (see $phase.log)"
    status=1
  fi
  tail -n 25 "$OUT/$phase.log"
done
exit $status
