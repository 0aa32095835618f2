#!/usr/bin/env bash
# CI step: the wheel, tested as a user gets it. Builds it from the checkout with the README
# venv's torch (`python -m build --wheel --no-isolation`, the README's build variables: none, so
# the default CUDA architectures), prints its size and build time, installs it with pip into a
# fresh virtual environment, and there, with no compiler or CUDA toolkit on the PATH, imports it,
# prints `python -m scangraph.info` and runs a smoke subset of the tests: the op samples on the
# C++ and reference backends in float32, forward and backward.
#   bash .ci/wheel.sh   (after .ci/readme_install.sh .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. .venv/bin/activate
unset TORCH_CUDA_ARCH_LIST SCANGRAPH_CUDA SCANGRAPH_STABLE_ABI CUDA_HOME CUDA_PATH
python -m pip install -q build
torch_version=$(python -c 'import torch; print(torch.__version__.split("+")[0])')
rm -rf dist
start=$(date +%s)
python -m build --wheel --no-isolation --outdir dist > build-wheel.log 2>&1 || { tail -60 build-wheel.log; exit 1; }
wheel=$(ls dist/scangraph-*.whl)
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB, built in $(( $(date +%s) - start )) s"
deactivate

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT  # a torch environment is GBs: CI's disk holds few at once
venv=$work/venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==$torch_version" pytest
"$venv/bin/python" -m pip install -q "$wheel"
# A user's machine without build tools: only the venv's own programs on the PATH.
cd "$work"
env -i HOME="$HOME" PATH="$venv/bin" "$venv/bin/python" - <<'PY'
import shutil
assert shutil.which("c++") is None and shutil.which("nvcc") is None, "a compiler is on the PATH"
import scangraph
assert scangraph.cpp_built(), "the wheel's C++ kernels did not load"
print("imported", scangraph.__file__)
PY
env -i HOME="$HOME" PATH="$venv/bin" "$venv/bin/python" -m scangraph.info
env -i HOME="$HOME" PATH="$venv/bin" TRITON_INTERPRET=1 "$venv/bin/python" -m pytest "$repo/tests/test_op_samples.py" \
  -q -p no:cacheprovider -k "test_forward_backward and float32 and (-cpp- or -reference-)" --rootdir "$repo"
