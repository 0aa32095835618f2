#!/usr/bin/env bash
# CI step: the README's install command, run literally, as a new user runs it. The command is
# read from README.md itself (the first ```bash block under "## Install"), so the two cannot
# drift apart. It runs in a fresh virtual environment with none of the build variables set that
# the README does not ask for, then imports the package and prints `python -m scangraph.info`.
#   bash .ci/readme_install.sh VENV_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: readme_install.sh VENV_DIR}
command=$(python3 - <<'PY'
import re
text = open("README.md").read()
section = text.split("## Install", 1)[1]
block = re.search(r"```bash\n(.*?)```", section, re.S)
assert block, "README.md: no ```bash block under ## Install"
print(block.group(1).strip())
PY
)
echo "README install command: $command"
rm -rf "$VENV"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
unset TORCH_CUDA_ARCH_LIST SCANGRAPH_CUDA SCANGRAPH_STABLE_ABI MAX_JOBS CUDA_HOME CUDA_PATH
start=$(date +%s)
# The build's own lines (architectures, or why the CUDA kernels are off) and errors.
(eval "$command") > readme-install.log 2>&1 || { tail -60 readme-install.log; exit 1; }
grep -E "^scangraph:" readme-install.log || true  # shown by pip only with -v
echo "README install: $(( $(date +%s) - start )) s"
cd /  # import the installed package, not the source tree
python -m scangraph.info
python - <<'PY'
import os, scangraph
assert scangraph.cpp_built(), "the C++ kernels did not load"
if os.path.exists("/usr/local/cuda/bin/nvcc"):
    assert scangraph.cuda_built(), "nvcc is present but the CUDA kernels were not built"
PY
