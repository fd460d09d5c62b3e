#!/usr/bin/env bash
# The GPU runs of fastwsss in phases that each finish in under 8 minutes (docs/gpu.md gives the calls that fit
# a 15-minute GPU budget, and the table the results fill in):
#
#   bash bench/gpu.sh env setup tests        # what is missing; install + build fastwsss._C; GPU tests
#   bash bench/gpu.sh setup walk kernels     # the random walk against IRNet's dense walk; kernel benchmarks
#   bash bench/gpu.sh setup pseudo serving   # the pseudo stage end to end; the serving benchmark
#   bash bench/gpu.sh --check                # every phase's Python entry points on the CPU at toy sizes (CI)
#
# Everything goes under $OUT (default /tmp/fastwsss-gpu): gpu.log (all phases), <phase>.json, tests.xml, and
# preference.json (the dispatcher's measured backend order: copy it to kernels/preference.json).
# A phase whose packages are missing is skipped with the names it lacks (the machine has no network, nothing
# can be installed there); a phase that fails is reported as FAILED, the next phases still run, and the
# script exits non-zero. SERVING_MODEL may name a trained seg checkpoint (carried with the call).
set -euo pipefail

CHECK=0
PHASES=()
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    env | setup | tests | kernels | walk | pseudo | serving) PHASES+=("$arg") ;;
    *) echo "bench/gpu.sh: unknown phase or option '$arg' (phases: env setup tests kernels walk pseudo serving; --check)" >&2
       exit 2 ;;
  esac
done
if [ "${#PHASES[@]}" -eq 0 ]; then
  if [ "$CHECK" -eq 1 ]; then PHASES=(env setup tests kernels walk pseudo serving); else PHASES=(env); fi
fi

cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastwsss-gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 FASTWSSS_NO_PROGRESS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$CHECK" -eq 1 ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  DEVICE=cpu
else
  export TRITON_INTERPRET=0 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export MAX_JOBS=${MAX_JOBS:-16}
  DEVICE=cuda
fi

# Each phase: a time limit (seconds) for its commands, and the commands (real run, then --check).
phase_env() {
  if [ "$CHECK" -eq 0 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  fi
  timeout 60 "$PY" -m bench.gpu_env --json "$OUT/env.json"
}

phase_setup() {
  if [ "$CHECK" -eq 1 ]; then  # never install into the checking environment: check that the package imports
    timeout 60 "$PY" -c "import fastwsss.kernels.random_walk, fastwsss.kernels.cam_norm, fastwsss.cli; print('imports ok')"
    return
  fi
  if "$PY" -c "import fastwsss._C" 2>/dev/null; then echo "fastwsss._C already built"; return; fi
  local build=0
  if command -v nvcc >/dev/null; then build=1; else echo "nvcc not found: installing without fastwsss._C"; fi
  FASTWSSS_BUILD_CUDA=$build timeout 420 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
  "$PY" -c "import fastwsss, sys; import importlib.util as u; print('fastwsss._C', 'built' if u.find_spec('fastwsss._C') else 'absent')"
}

phase_tests() {
  local files=(tests/kernels/test_gpu_kernels.py tests/kernels/test_cuda_extension.py)
  if [ "$CHECK" -eq 1 ]; then
    timeout 120 "$PY" -m pytest -q -p no:cacheprovider --collect-only "${files[@]}" | tail -n 3
    return
  fi
  # FASTWSSS_REQUIRE_GPU=1: a GPU test that would skip (no GPU, the interpreter, no extension) fails instead.
  FASTWSSS_REQUIRE_GPU=1 timeout 450 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml "$OUT/tests.xml" "${files[@]}"
}

phase_kernels() {
  if [ "$CHECK" -eq 1 ]; then
    timeout 300 "$PY" -m bench.kernels --device cpu --tiny --repeats 1 --no-compile --only cam_norm,confounder_attention \
      --json "$OUT/kernels.json"
    preference_table
    return
  fi
  timeout 420 "$PY" -m bench.kernels --device cuda --repeats 30 --only cam_norm,confounder_attention --json "$OUT/kernels.json"
  preference_table
}

# The dispatcher's per-op, per-dtype order from whichever of kernels.json and walk.json this call wrote.
preference_table() {
  timeout 60 "$PY" -m bench.preference "$OUT/kernels.json" "$OUT/walk.json" --json "$OUT/preference.json" \
    $([ "$CHECK" -eq 1 ] && echo --allow-cpu)
}

phase_walk() {
  if [ "$CHECK" -eq 1 ]; then
    timeout 300 "$PY" -m bench.kernels --device cpu --tiny --repeats 1 --only random_walk --dense --json "$OUT/walk.json"
    timeout 120 "$PY" -m bench.random_walk --device cpu --grids 8x8 --classes 2 --exp-times 2 --repeats 1 --budget-s 1 \
      --threads 1 --json "$OUT/random_walk.json"
    preference_table
    return
  fi
  timeout 300 "$PY" -m bench.kernels --device cuda --repeats 20 --only random_walk --dense --json "$OUT/walk.json"
  timeout 150 "$PY" -m bench.random_walk --device cuda --grids 94x125 --classes 3,21 --budget-s 3 \
    --json "$OUT/random_walk.json"
  preference_table
}

phase_pseudo() {
  if [ "$CHECK" -eq 1 ]; then
    timeout 300 "$PY" -m bench.pseudo --device cpu --images 2 --size 64x48 --backbone resnet18_quarter \
      --dense-images 1 --threads 1 --json "$OUT/pseudo.json"
    return
  fi
  timeout 420 "$PY" -m bench.pseudo --device cuda --images 64 --batch 16 --backends triton,cuda,reference \
    --dense-images 2 --budget-s 60 --json "$OUT/pseudo.json"
}

phase_serving() {
  if [ "$CHECK" -eq 1 ]; then
    timeout 300 "$PY" -m bench.serving --device cpu --arch deeplabv2:resnet18_quarter:3 --sizes 64x64 --batches 1 \
      --repeats 1 --warmup 1 --budget-s 1 --threads 1 --json "$OUT/serving.json"
    return
  fi
  if [ -n "${SERVING_MODEL:-}" ]; then
    timeout 150 "$PY" -m bench.serving --device cuda --model "$SERVING_MODEL" --json "$OUT/serving-trained.json"
  fi
  timeout 270 "$PY" -m bench.serving --device cuda --arch deeplabv2:resnet101:21 --json "$OUT/serving.json"
}

failed=()
skipped=()
for phase in "${PHASES[@]}"; do
  echo "=== $phase ($(date -u +%T) UTC)$([ "$CHECK" -eq 1 ] && echo ', --check on the CPU')" | tee -a "$LOG"
  lacks=$(timeout 60 "$PY" -m bench.gpu_env --missing "$phase" || echo "python3 or bench.gpu_env")
  if [ -n "$lacks" ]; then
    echo "phase $phase SKIPPED: the machine lacks $lacks" | tee -a "$LOG"
    skipped+=("$phase")
    continue
  fi
  begin=$SECONDS
  set +e
  (set -euo pipefail; "phase_$phase") 2>&1 | tee -a "$LOG"
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "phase $phase FAILED (exit $status$([ "$status" -eq 124 ] && echo ': timed out'))" | tee -a "$LOG"
    failed+=("$phase")
  else
    echo "phase $phase ok in $((SECONDS - begin)) s" | tee -a "$LOG"
  fi
done
echo "=== done: ${#PHASES[@]} phases, failed: ${failed[*]:-none}, skipped: ${skipped[*]:-none}; files under $OUT" | tee -a "$LOG"
[ "${#failed[@]}" -eq 0 ] && [ "${#skipped[@]}" -eq 0 ]
