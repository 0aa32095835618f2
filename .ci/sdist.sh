#!/usr/bin/env bash
# CI step: the source distribution, as `pip install scangraph-*.tar.gz` uses it, under another
# torch than the main run's. Builds the sdist from the checkout (`python -m build --sdist
# --no-isolation`), prints its size, creates a fresh virtual environment with torch==VERSION,
# installs the sdist there with pip (the CPU kernels only, SCANGRAPH_CUDA=0, to keep CI's time:
# the CUDA build is the wheel step's, from the same setup.py and sources), and, outside the
# checkout, runs a subset of the tests against the installed package: the core op samples (each
# raw op path once, `-m core`) in float32 on each backend that torch's triton allows (C++,
# reference, Triton in its interpreter), forward and backward against the reference, opcheck of
# the C++ ops; the backend checks (tests/test_backend.py), where a Triton too old for the kernels
# must raise BackendUnavailable; and, for torch >= 2.10, the tests against the stable-ABI build
# that the main run made against its torch (.ci/stable_abi.sh). The environment is deleted
# afterwards (CI's disk).
#   bash .ci/sdist.sh 2.11.0   (after .ci/readme_install.sh .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
torch_version=${1:?usage: sdist.sh TORCH_VERSION}
. .venv/bin/activate
unset TORCH_CUDA_ARCH_LIST SCANGRAPH_CUDA SCANGRAPH_STABLE_ABI
python -m pip install -q build
rm -rf dist-sdist
python -m build --sdist --no-isolation --outdir dist-sdist > build-sdist.log 2>&1 || { tail -60 build-sdist.log; exit 1; }
sdist=$(ls "$repo"/dist-sdist/scangraph-*.tar.gz)
echo "sdist: $(basename "$sdist"), $(du -k "$sdist" | cut -f1) KiB, $(tar tzf "$sdist" | grep -c '/csrc/') files under csrc/"
deactivate

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=$work/venv
python3 -m venv "$venv"
# numpy < 2.4: the interpreter of triton <= 3.6 (torch <= 2.11) fails under numpy 2.4, and
# scangraph then refuses the Triton backend on CPU tensors, saying so (triton_kernels/__init__.py).
"$venv/bin/python" -m pip install -q "torch==$torch_version" "numpy<2.4" setuptools wheel ninja pybind11 pytest pytest-xdist hypothesis
start=$(date +%s)
SCANGRAPH_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/python" -m pip install -q --no-build-isolation "$sdist" \
  > install-sdist.log 2>&1 || { tail -60 install-sdist.log; exit 1; }
echo "pip install of the sdist (CPU kernels) under torch $torch_version took $(( $(date +%s) - start )) s"
cd "$work"
"$venv/bin/python" -c "import scangraph; assert scangraph.cpp_built(), 'the C++ kernels did not load'; print('imported', scangraph.__file__)"
TRITON_INTERPRET=1 "$venv/bin/python" -m scangraph.info
# The core op samples (each raw op path once) in float32: forward and backward against the
# reference on every backend, and opcheck (the torch.library registrations, what a torch version
# changes) of the C++ ops; then the backend checks. opcheck of the Triton ops and the bitwise
# repeat stay in the main run: under triton 3.6's interpreter they ran past 7 minutes here. The
# CUDA emulation is not built for this torch (tests/cuda_emulation.py would rebuild it, shared
# with the main run, in the checkout's build/): its tests are deselected.
tests=(-q -p no:cacheprovider -W ignore::DeprecationWarning --rootdir "$repo" -n 2)
TRITON_INTERPRET=1 "$venv/bin/python" -m pytest "$repo/tests/test_op_samples.py" "${tests[@]}" \
  -m core -k "((test_opcheck and cpp) or (test_forward_backward and float32)) and not cuda_emulated"
TRITON_INTERPRET=1 "$venv/bin/python" -m pytest "$repo/tests/test_backend.py" "${tests[@]}"
# The stable-ABI build that the main run made against its torch (2.14.1): the same library,
# loaded under this torch, passes the tests (torch >= 2.10 only).
if "$venv/bin/python" -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 10))"; then
  bash "$repo/.ci/stable_abi.sh" test "$venv/bin/python"
fi
