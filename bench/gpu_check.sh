#!/usr/bin/env bash
# The one device check, for a lent GPU machine (H100 / H200, torch 2.11 + triton 3.6, no
# network), run in ONE call from the repository root:
#   bash bench/gpu_check.sh            (results under $OUT, a short summary printed last)
# Every step gets what is left of one budget (BUDGET_S, default 560 s, under the device tool's
# 600 s per call), so a slow step shortens the later ones instead of losing the whole call:
#   1. build the extension (sm_90 + PTX, 16 jobs) and print `python -m scangraph.info`;
#   2. the `cuda`-marked tests: the op samples on the `cuda` and `triton` backends (fp32 / fp16 /
#      bf16 / fp64, forward, backward, determinism, opcheck), CUDA graphs, bad input across
#      devices; --maxfail, not -x, so one failure does not hide the others;
#   3. small shapes once under compute-sanitizer (memcheck, racecheck, synccheck, initcheck);
#      where the machine refuses the sanitizer, that is recorded and the check goes on;
#   4. the GPU benchmarks, next to the launch plan's predictions;
#   5. with 150 s or more left: the build on the LibTorch stable ABI with the CUDA kernels (sm_90),
#      and the core op samples on its `cuda` backend (docs/packaging.md: never run on a GPU yet).
set -uo pipefail
deadline=$(( $(date +%s) + ${BUDGET_S:-560} ))
left() {  # seconds for the next step: its own cap, or what is left of the budget (at least 10)
  local rest=$(( deadline - $(date +%s) ))
  (( rest < 10 )) && rest=10
  (( rest < $1 )) && echo "$rest" || echo "$1"
}
OUT="${OUT:-$(pwd)/bench/out}"
mkdir -p "$OUT"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="9.0+PTX" MAX_JOBS=16 SCANGRAPH_CUDA=1
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

# 1. Editable install without network or build isolation: builds scangraph._C for sm_90 + PTX
# and maps triton_kernels/ into the package exactly as a user's install does.
start=$(date +%s)
timeout "$(left 240)" "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - start ))s" | tee -a "$OUT/env.txt"
"$PY" -m scangraph.info 2>&1 | tee -a "$OUT/env.txt"

# 2. Every cuda-marked test: the sample table's GPU parameters, CUDA graphs, device mismatches.
timeout "$(left 240)" "$PY" -m pytest tests -m cuda -q -p no:cacheprovider --maxfail=25 \
  --junitxml="$OUT/cuda-tests.xml" > "$OUT/cuda-tests.log" 2>&1
test_rc=$?

# 3. compute-sanitizer on small shapes: one float32 sample per family on the CUDA backend.
SMALL='test_op_samples.py::test_forward_backward and gpu and float32 and (spmm-hub-max-per_head or gat_aggregate-hub or sddmm-hub or selective_scan-varlen or selective_scan-fixed-full or causal_conv1d_fn-w3-init-final or causal_conv1d_update-circular-slots or prefix_attention-varlen or qlinear-w4a8-relu or qspmm-hub-sum) and not triton'
sanitizer_rc=""
if command -v compute-sanitizer > /dev/null 2>&1; then
  for tool in memcheck racecheck synccheck initcheck; do
    timeout "$(left 60)" compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
      "$PY" -m pytest tests/test_op_samples.py -q -p no:cacheprovider -k "$SMALL" > "$OUT/sanitizer-$tool.log" 2>&1
    rc=$?
    sanitizer_rc="$sanitizer_rc $tool=$rc"
    # A machine that refuses the sanitizer (no permission, unsupported driver) says so in the log.
    grep -qiE "not supported|permission|unable to|failed to initialize" "$OUT/sanitizer-$tool.log" \
      && echo "compute-sanitizer $tool refused on this machine (see sanitizer-$tool.log)" | tee -a "$OUT/env.txt"
  done
else
  sanitizer_rc=" not installed"
fi

# 4. The GPU benchmarks of every family, next to the launch plan's predictions.
timeout "$(left 180)" "$PY" -m scangraph.bench --device cuda --dtype float32 --full --out "$OUT/bench-cuda-fp32" \
  --append "$OUT/gpu.csv" > "$OUT/bench-cuda-fp32.txt" 2>&1
timeout "$(left 60)" "$PY" -m scangraph.bench --plan > "$OUT/plan.txt" 2>&1
timeout "$(left 120)" "$PY" -m scangraph.bench --device cuda --dtype bfloat16 --out "$OUT/bench-cuda-bf16" \
  --append "$OUT/gpu.csv" > "$OUT/bench-cuda-bf16.txt" 2>&1

# 5. The stable-ABI build on the device, last and only with time for it.
stable_rc="not run (under 150 s left)"
if (( deadline - $(date +%s) >= 150 )); then
  site=$(pwd)/build/stable_abi/site
  rm -rf build/stable_abi/dist "$site"
  TORCH_CUDA_ARCH_LIST=9.0 SCANGRAPH_STABLE_ABI=1 timeout "$(left 100)" "$PY" -m pip wheel --no-build-isolation \
    --no-deps --no-index -w build/stable_abi/dist . > "$OUT/stable-build.log" 2>&1 \
    && mkdir -p "$site" && "$PY" -m zipfile -e build/stable_abi/dist/scangraph-*.whl "$site" \
    && PYTHONPATH="$site" "$PY" -c "import scangraph; assert scangraph._extension.stable_abi(), scangraph.__file__" \
      >> "$OUT/stable-cuda-tests.log" 2>&1 \
    && PYTHONPATH="$site" timeout "$(left 120)" "$PY" -m pytest tests/test_op_samples.py -m "core and cuda" \
      -k "not triton" -q -p no:cacheprovider --maxfail=10 >> "$OUT/stable-cuda-tests.log" 2>&1
  stable_rc=$?
fi

echo "== build rc=$build_rc, cuda tests rc=$test_rc, compute-sanitizer:$sanitizer_rc, stable-ABI build + cuda tests rc=$stable_rc"
tail -n 3 "$OUT/cuda-tests.log"
cat "$OUT/bench-cuda-fp32.txt" "$OUT/bench-cuda-bf16.txt" | grep -v "%|"
