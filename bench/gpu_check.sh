#!/usr/bin/env bash
# The one device check, for a lent GPU machine (H100 / H200, torch 2.11 + triton 3.6, no
# network), run in ONE call from the repository root:
#   bash bench/gpu_check.sh            (results under $OUT, a short table printed last)
# It builds the CUDA extension for sm_90 only with 16 jobs, runs every `cuda`-marked test with
# Triton compiled (not interpreted), then the GPU benchmarks. Every step gets what is left of
# BUDGET_S (default 560 s, under the device tool's 600 s per call), so a slow step shortens the
# later ones instead of losing the whole call.
set -uo pipefail
deadline=$(( $(date +%s) + ${BUDGET_S:-560} ))
left() {  # seconds for the next step: its own cap, or what is left of the budget (at least 10)
  local rest=$(( deadline - $(date +%s) ))
  (( rest < 10 )) && rest=10
  (( rest < $1 )) && echo "$rest" || echo "$1"
}
OUT="${OUT:-$(pwd)/bench/out}"
mkdir -p "$OUT"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 SCANGRAPH_CUDA=1
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

# Editable install without network or build isolation: builds scangraph._C for sm_90 and maps
# triton_kernels/ into the package exactly as a user's install does.
start=$(date +%s)
timeout "$(left 240)" "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - start ))s" | tee -a "$OUT/env.txt"
"$PY" -m scangraph.info 2>&1 | tee -a "$OUT/env.txt"

# --maxfail, not -x: one failure should not hide the others, yet a broken build stops early.
timeout "$(left 300)" "$PY" -m pytest tests -m cuda -q -p no:cacheprovider --maxfail=25 --junitxml="$OUT/cuda-tests.xml" \
  > "$OUT/cuda-tests.log" 2>&1
test_rc=$?

timeout "$(left 180)" "$PY" -m scangraph.bench --device cuda --dtype float32 --features 32,128,512 \
  --json "$OUT/bench-cuda-fp32.json" --csv "$OUT/bench-cuda-fp32.csv" > "$OUT/bench-cuda-fp32.txt" 2>&1
timeout "$(left 120)" "$PY" -m scangraph.bench --device cuda --dtype bfloat16 --features 128 \
  --json "$OUT/bench-cuda-bf16.json" > "$OUT/bench-cuda-bf16.txt" 2>&1

echo "== build rc=$build_rc, cuda tests rc=$test_rc"
tail -n 3 "$OUT/cuda-tests.log"
cat "$OUT/bench-cuda-fp32.txt" "$OUT/bench-cuda-bf16.txt" | grep -v "%|"
