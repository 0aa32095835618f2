#!/usr/bin/env bash
# CI step: the source distribution, as `pip install scangraph-*.tar.gz` uses it. Builds it from
# the checkout (`python -m build --sdist --no-isolation`), prints its size, installs it with pip
# from the .tar.gz into a fresh virtual environment (the CPU kernels only, SCANGRAPH_CUDA=0, to
# keep CI's time: the CUDA build is the wheel step's, from the same setup.py and sources), then
# imports it outside the checkout and runs the wheel step's smoke subset of the op samples.
#   bash .ci/sdist.sh   (after .ci/readme_install.sh .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. .venv/bin/activate
unset TORCH_CUDA_ARCH_LIST SCANGRAPH_CUDA
python -m pip install -q build
torch_version=$(python -c 'import torch; print(torch.__version__.split("+")[0])')
rm -rf dist-sdist
python -m build --sdist --no-isolation --outdir dist-sdist > build-sdist.log 2>&1 || { tail -60 build-sdist.log; exit 1; }
sdist=$(ls "$repo"/dist-sdist/scangraph-*.tar.gz)
echo "sdist: $(basename "$sdist"), $(du -k "$sdist" | cut -f1) KiB, $(tar tzf "$sdist" | grep -c '/csrc/') files under csrc/"
deactivate

venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==$torch_version" setuptools wheel ninja pybind11 pytest
start=$(date +%s)
SCANGRAPH_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/python" -m pip install -q --no-build-isolation "$sdist" \
  > install-sdist.log 2>&1 || { tail -60 install-sdist.log; exit 1; }
echo "pip install of the sdist (CPU kernels) took $(( $(date +%s) - start )) s"
cd "$(mktemp -d)"
"$venv/bin/python" -c "import scangraph; assert scangraph.cpp_built(), 'the C++ kernels did not load'; print('imported', scangraph.__file__)"
TRITON_INTERPRET=1 "$venv/bin/python" -m pytest "$repo/tests/test_op_samples.py" -q -p no:cacheprovider \
  -k "test_forward_backward and float32 and (-cpp- or -reference-)" --rootdir "$repo"
