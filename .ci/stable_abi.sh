#!/usr/bin/env bash
# CI step: the package built on the LibTorch stable ABI (issue 23, docs/packaging.md): one library
# that loads under every torch >= 2.10. CI builds its CPU kernels (a second CUDA build would not
# fit CI's time) and tests its CUDA glue under the CPU emulation, built on the stable ABI too.
#
#   bash .ci/stable_abi.sh build          # in the main environment (after .ci/readme_install.sh .venv)
#   bash .ci/stable_abi.sh test [PYTHON]  # the tests, with PYTHON (default: the main environment's)
#
# `build` builds the wheel as a user would (SCANGRAPH_STABLE_ABI=1 pip wheel), prints its size and
# build time, unpacks it into build/stable_abi/site, checks that its library needs no C++ symbol of
# torch (tools/stable_abi/measure.py symbols), builds the CUDA emulation on the stable ABI
# (tests/cuda_emulation.py, into build/cuda_emulated_stable) and checks its library the same way,
# and runs `test`. `test` runs the test suite against that unpacked build (PYTHONPATH puts it
# before any installed scangraph; the checkout has no top-level scangraph to shadow it) and that
# emulation library, loaded as built (SCANGRAPH_EMULATION_LIBRARY): every test but the Triton ones
# (no C++ in them), the emulated op samples on their core samples only (for CI's time). .ci/sdist.sh runs `test` again under torch 2.11 with the same two libraries,
# made against the main run's torch.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
site=$repo/build/stable_abi/site
emulation=$repo/build/cuda_emulated_stable/scangraph_cuda_emulated_stable.so

run_tests() {
  local python=$1
  PYTHONPATH="$site" "$python" -c \
    "import scangraph, torch; assert scangraph._extension.stable_abi(), scangraph.__file__; print('the stable build', scangraph.__file__, 'under torch', torch.__version__)"
  # The emulated CUDA tests on their core samples only (each raw op path once, which is what the
  # glue's API layer needs); the main run's emulation runs them all on the same kernels.
  PYTHONPATH="$site" SCANGRAPH_EMULATION_LIBRARY="$emulation" "$python" -m pytest tests -q -p no:cacheprovider -n 2 \
    -W ignore::DeprecationWarning -k "not triton and (not cuda_emulated or core)"
}

case "${1:-}" in
  build)
    . .venv/bin/activate
    # Objects are kept for an incremental build; the packaged files are not (a removed module must
    # not reach the wheel).
    rm -rf build/stable_abi/dist "$site" build/stable_abi/build/lib.* build/stable_abi/build/bdist.*
    start=$(date +%s)
    SCANGRAPH_STABLE_ABI=1 SCANGRAPH_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" python -m pip wheel -q --no-build-isolation \
      --no-deps -w build/stable_abi/dist . > build-stable-abi.log 2>&1 || { tail -60 build-stable-abi.log; exit 1; }
    wheel=$(ls build/stable_abi/dist/scangraph-*.whl)
    echo "stable-ABI wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB, built in $(( $(date +%s) - start )) s"
    mkdir -p "$site"
    python -m zipfile -e "$wheel" "$site"
    python tools/stable_abi/measure.py symbols "$site"
    start=$(date +%s)
    PYTHONPATH="$site" python tests/cuda_emulation.py > build-stable-abi-emulation.log 2>&1 \
      || { tail -60 build-stable-abi-emulation.log; exit 1; }
    echo "the CUDA emulation on the stable ABI: built in $(( $(date +%s) - start )) s"
    python tools/stable_abi/measure.py symbols "$emulation"
    run_tests "$repo/.venv/bin/python"
    ;;
  test)
    run_tests "${2:-$repo/.venv/bin/python}"
    ;;
  *)
    echo "usage: stable_abi.sh build | test [PYTHON]" >&2
    exit 2
    ;;
esac
