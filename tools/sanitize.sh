#!/usr/bin/env bash
# Runs a subset of the tests against a build of the CPU kernels with AddressSanitizer and
# UndefinedBehaviorSanitizer (issue 7, "Hardening").
#
#   tools/sanitize.sh                       # default subset (see TESTS below)
#   tools/sanitize.sh tests/test_sparse.py -k cpp   # any pytest arguments instead
#   SANITIZE_DIR=/tmp/sg-asan KEEP_BUILD=1 tools/sanitize.sh ...   # reuse a previous build
#
# What it does, without touching the in-place build (python/scangraph/_C*.so) or build/:
#  1. builds csrc/registration.cpp + csrc/cpu/*.cpp (SCANGRAPH_CUDA=0: CPU only) with
#     -fsanitize=address,undefined through setup.py's own extension definition, into
#     $SANITIZE_DIR/lib (build_ext --build-lib / --build-temp point outside the tree);
#  2. makes $SANITIZE_DIR/lib/scangraph a shadow package: links to every file of python/scangraph
#     and triton_kernels/, except _C, which is the sanitized build. PYTHONPATH puts it ahead of the
#     editable install (setuptools appends its finder after the path-based one);
#  3. runs pytest with libasan preloaded (the Python binary is not instrumented, so the ASan runtime
#     must come first), detect_leaks=0 (CPython and torch keep allocations alive at exit by
#     design), PYTHONMALLOC=malloc (so ASan sees Python's allocations too);
#  4. fails when pytest fails or the log holds an ASan report or a UBSan "runtime error:".
# Needs gcc (libasan, libubsan) and ~2 minutes on 2 cores to compile. Run it where no other build
# is running: it compiles every CPU source.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${SANITIZE_DIR:-/tmp/scangraph-sanitize}
LOG="$OUT/pytest.log"
# Default subset: bad input (index checks, empty and strided tensors), property tests (random
# graphs and shapes through every C++ kernel, forward and backward), determinism (two threads),
# and the op-sample table on the C++ kernels and on the CUDA kernels under the CPU emulation
# (tests/cuda_emulation.py; its library is built here with the same sanitizers, into
# $OUT/emulation). Not the memory-growth test: ASan's quarantine keeps freed memory resident.
TESTS=(tests/test_bad_input.py tests/test_properties.py tests/test_determinism.py)
SAMPLES=(tests/test_op_samples.py -k "cpp or cuda_emulated")
if [ "$#" -gt 0 ]; then TESTS=("$@"); SAMPLES=(); fi

LIBASAN=$(gcc -print-file-name=libasan.so)
[ -f "$LIBASAN" ] || { echo "sanitize: libasan.so not found (gcc -print-file-name)"; exit 2; }

mkdir -p "$OUT"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g"
if [ "${KEEP_BUILD:-0}" != 1 ] || ! ls "$OUT"/lib/scangraph/_C*.so > /dev/null 2>&1; then
  echo "=== building the sanitized CPU extension into $OUT (not in place)"
  rm -rf "$OUT/lib" "$OUT/tmp"
  # distutils appends CFLAGS / LDFLAGS to the compile and link lines of the extension. The
  # extension's own -O3 comes later on the line and wins: the kernels run as they ship.
  SCANGRAPH_CUDA=0 CFLAGS="$SAN" LDFLAGS="$SAN" MAX_JOBS="${MAX_JOBS:-2}" \
    python setup.py -q build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp" > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
fi
SO=$(ls "$OUT"/lib/scangraph/_C*.so)
# (grep -c, not grep -q: with pipefail an early grep exit would fail nm with SIGPIPE)
[ "$(nm -D "$SO" | grep -c "__asan_report")" -gt 0 ] || { echo "sanitize: $SO is not instrumented (CFLAGS ignored?)"; exit 1; }

# The shadow package: everything but the extension links back to the source tree.
for f in "$ROOT"/python/scangraph/*; do
  name=$(basename "$f")
  case "$name" in _C*.so|__pycache__) continue ;; esac
  ln -sfn "$f" "$OUT/lib/scangraph/$name"
done
ln -sfn "$ROOT/triton_kernels" "$OUT/lib/scangraph/triton_kernels"

# libstdc++ is preloaded too: the Python binary does not link it, and ASan's __cxa_throw
# interceptor finds no real __cxa_throw unless libstdc++ is loaded when ASan starts ("CHECK failed:
# asan_interceptors.cpp ... real___cxa_throw", at the first C++ exception, e.g. importing triton).
LIBSTDCXX=$(gcc -print-file-name=libstdc++.so)
export PYTHONPATH="$OUT/lib${PYTHONPATH:+:$PYTHONPATH}" LD_PRELOAD="$LIBASAN $LIBSTDCXX" PYTHONMALLOC=malloc
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:print_stacktrace=1"
# The emulated CUDA kernels, built with the sanitizers into a folder of their own.
export SCANGRAPH_EMULATION_BUILD="$OUT/emulation" SCANGRAPH_EMULATION_CFLAGS="$SAN"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# The tests must load the sanitized library, not the in-place one.
loaded=$(cd "$OUT" && python -c "import scangraph._C as c; print(c.__file__)")
[ "$loaded" = "$SO" ] || { echo "sanitize: scangraph._C loads from $loaded, not $SO"; exit 1; }
echo "=== pytest ${TESTS[*]} against $SO"
set +e
python -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
if [ "${#SAMPLES[@]}" -gt 0 ] && [ "$status" -eq 0 ]; then
  echo "=== pytest ${SAMPLES[*]} (the CUDA kernels under the emulation, built with the sanitizers)"
  python -m pytest -q -p no:cacheprovider "${SAMPLES[@]}" 2>&1 | tee -a "$LOG"
  status=${PIPESTATUS[0]}
fi
set -e
if grep -qE "ERROR: AddressSanitizer|runtime error:" "$LOG"; then
  echo "sanitize: sanitizer reports in $LOG"
  exit 1
fi
[ "$status" -eq 0 ] || { echo "sanitize: pytest failed ($status), log in $LOG"; exit "$status"; }
echo "sanitize: clean"
