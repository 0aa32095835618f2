#!/usr/bin/env bash
# Registers, spills and shared memory of every CUDA kernel of one .cu file, from ptxas -v:
#   tools/ptxas_usage.sh csrc/cuda/selective_scan_fp32.cu [arch, default 90]
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${2:-90}
/usr/local/cuda/bin/nvcc -std=c++20 -O3 --expt-relaxed-constexpr -gencode=arch=compute_$arch,code=sm_$arch \
  -Xptxas -v -Icsrc -Icsrc/include -c "$1" -o /dev/null 2>&1 | python3 -c '
import re, subprocess, sys
kernel = None
for line in sys.stdin:
    m = re.search(r"Compiling entry function .(\w+).", line)
    if m:
        kernel = subprocess.run(["c++filt", m.group(1)], capture_output=True, text=True).stdout.strip()
        kernel = re.sub(r"\(.*", "", kernel.replace("scangraph::", ""))
        spill = "?"
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)
    if m:
        spill = f"stack {m.group(1)} B, spills {m.group(2)} B"
    m = re.search(r"Used (\d+) registers.*?(?:, (\d+) bytes smem)?$", line.strip())
    if m and kernel:
        print(f"{kernel:70} regs {m.group(1):>3}  smem {m.group(2) or 0:>6} B  {spill}")
'
