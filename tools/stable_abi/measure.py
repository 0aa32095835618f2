"""The LibTorch stable-ABI port (issue 23): the CPU ops of the sparse, low-precision and causal-
convolution families built on the stable ABI from the package's own sources, loaded under any
torch >= 2.10, tested and timed there.

    python tools/stable_abi/measure.py build [OUT]         # with the torch to build against
    python tools/stable_abi/measure.py test [OUT] [ARGS]   # under any torch: the families' tests
    python tools/stable_abi/measure.py time [OUT]          # compile time and cost per call, both ways

`build` compiles SOURCES with SCANGRAPH_STABLE_ABI (glue/torch_api.h) against the running torch's
headers, targeting torch 2.10, into OUT/libscangraph_stable.so (OUT: build/stable_abi), prints
the compile time and the torch symbols the library needs (only C shims: no C++ symbol of torch,
which is what changes between versions).

`test` imports scangraph (whose _C, built for the running torch, registers every op), loads the
stable library, which replaces the CPU kernels of OPS, checks in the dispatcher that each CPU
kernel is now the stable library's, and runs the families' tests on the C++ backend in this
process (pytest's ARGS replace the default selection).

`time` compiles sparse.cpp both ways and prints the two compile times; then it calls each op on a
tiny graph (64 rows, 256 edges, F = 8; one thread), where the call costs more than the kernel,
with the regular kernels and then, after loading the stable library, with the stable ones, and
prints microseconds per call. Results: docs/packaging.md.
"""
import importlib
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_OUT = os.path.join(ROOT, "build", "stable_abi")
LIBRARY = "libscangraph_stable.so"
SOURCES = [os.path.join(ROOT, "csrc", "cpu", name) for name in
           ("sparse.cpp", "quantize.cpp", "qlinear.cpp", "qspmm.cpp", "causal_conv1d.cpp")]
OPS = ("spmm", "spmm_arg", "spmm_arg_backward", "sddmm", "common_neighbors", "gat_aggregate",
       "gat_aggregate_backward", "quantize", "qlinear", "_qlinear_cpu_isa", "qspmm", "_qspmm_cpu_isa",
       "causal_conv1d", "causal_conv1d_backward", "causal_conv1d_update")
# The oldest torch the stable build targets: the shims it calls exist from 2.10 on.
TARGET_2_10 = "-DTORCH_TARGET_VERSION=(((0ULL + 2) << 56) | ((0ULL + 10) << 48))"
# The families' tests, C++ backend: their test files, and their cases of the op samples and of the
# bad-input tests.
TESTS = [os.path.join(ROOT, "tests", name) for name in
         ("test_sparse.py", "test_sparse_oracles.py", "test_gat_dropout.py", "test_lowp.py", "test_causal_conv1d.py",
          "test_op_samples.py", "test_bad_input.py")]
SELECTION = ["-k", "(cpp or not (triton or cuda or reference)) and (spmm or sddmm or gat or common_neighbor "
                   "or sparse or csr or oracle or quantize or qlinear or qspmm or lowp or conv)", "-p", "no:cacheprovider",
             "-q"]
# The one difference on the stable ABI: a dtype check of the raw op raises RuntimeError where the
# regular build raises TypeError (glue/torch_api.h says why). These cases of the bad-input test
# are deselected there and checked by check_type_errors instead, message and all.
TYPE_ERROR_CASES = (("spmm", "x int"), ("spmm", "x bool"), ("sddmm", "b int"), ("quantize", "x int"),
                    ("qlinear", "x int"), ("qspmm", "edge_weight int"), ("causal_conv1d_fn", "x int"),
                    ("causal_conv1d_fn", "weight int"), ("causal_conv1d_fn", "bias int"),
                    ("causal_conv1d_fn", "seq_idx int64"), ("causal_conv1d_fn", "initial_states dtype"),
                    ("causal_conv1d_update", "conv_state dtype"), ("causal_conv1d_update", "cache_seqlens int64"))
RAW_MESSAGE_TEST = "test_raw_op_message_equals_the_public_one"
RAW_OPS = ("spmm", "sddmm", "quantize", "qlinear", "qspmm")


class DeselectTypeErrorCases:
    """A pytest plugin: deselects the TYPE_ERROR_CASES of the raw-message test."""

    def pytest_collection_modifyitems(self, config, items):
        names = {f"{RAW_MESSAGE_TEST}[{op}-{name}]" for op, name in TYPE_ERROR_CASES}
        chosen = [item for item in items if item.name not in names]
        deselected = [item for item in items if item.name in names]
        assert len(deselected) == len(names), f"expected the cases {sorted(names)}"
        config.hook.pytest_deselected(items=deselected)
        items[:] = chosen


def _compile(flags, sources, output):
    from torch.utils.cpp_extension import include_paths
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    command = ["g++", "-O3", "-fPIC", "-fopenmp", "-fvisibility=hidden", "-Wno-psabi", *flags,
               *(f"-I{p}" for p in include_paths()), f"-I{ROOT}/csrc", f"-I{ROOT}/csrc/include",
               *sources, "-o", output, f"-L{lib}", "-ltorch_cpu"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def build(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    library = os.path.join(out, LIBRARY)
    names = ", ".join(os.path.relpath(source, ROOT) for source in SOURCES)
    seconds = _compile(["-shared", "-std=c++17", "-DSCANGRAPH_STABLE_ABI", TARGET_2_10], SOURCES, library)
    print(f"stable: {names} compiled against torch {torch.__version__} (target 2.10) in {seconds:.1f} s")
    symbols = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True, text=True,
                             check=True).stdout.split()
    torch_symbols = sorted({s for s in symbols if s.startswith(("aoti_torch", "torch_"))})
    cxx_torch = [s for s in symbols if s.startswith("_ZN") and ("c104" in s or "2at" in s or "5torch" in s)]
    print(f"{LIBRARY}: {len(torch_symbols)} torch C shims used, {len(cxx_torch)} torch C++ symbols")
    assert not cxx_torch, cxx_torch


def load(out: str) -> None:
    """Loads the stable library over scangraph's _C and checks that it now serves the CPU ops."""
    import scangraph
    assert scangraph.cpp_built(), "scangraph's C++ kernels must be built for this torch"
    path = os.path.join(out, LIBRARY)
    torch.ops.load_library(path)
    for op in OPS:
        table = torch._C._dispatch_dump(f"scangraph::{op}")
        cpu = next(line for line in table.splitlines() if line.startswith("CPU:"))
        # The stable library's kernels are boxed only: "[ boxed ]", no unboxed entry.
        assert "unboxed" not in cpu, f"{op}: the CPU kernel is not the stable one: {cpu}"
    print(f"{LIBRARY} serves the CPU kernels of {len(OPS)} ops under torch {torch.__version__}")


def check_type_errors() -> None:
    """The deselected cases: the public function raises TypeError, the raw op on the stable ABI
    RuntimeError, with the same message."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import scangraph
    import test_bad_input as cases
    messages = {}
    for case in TYPE_ERROR_CASES:
        call, error, _ = cases.CASES[case]
        assert error is TypeError, case
        try:
            call()
            raise AssertionError(f"{case}: the public function accepted it")
        except TypeError as public:
            messages[case] = str(public)
    # The public functions swapped for their raw ops, as the bad-input test does.
    swaps = [(scangraph, name, getattr(cases, f"_raw_{name}")) for name in RAW_OPS] + [
        (cases, "cc", cases._raw_causal_conv1d), (cases, "ccu", cases._raw_causal_conv1d_update)]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    for owner, name, raw_function in swaps:
        setattr(owner, name, raw_function)
    try:
        for case, message in messages.items():
            try:
                cases.CASES[case][0]()
                raise AssertionError(f"{case}: the raw op accepted it")
            except RuntimeError as raw:
                assert type(raw) is RuntimeError and str(raw) == message, (case, raw, message)
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)
    print(f"the {len(TYPE_ERROR_CASES)} dtype cases: TypeError from the public functions, RuntimeError with the "
          "same message from the raw ops")


def test(out: str, args) -> int:
    import pytest
    load(out)
    if args:
        return pytest.main(args)
    code = pytest.main(TESTS + SELECTION, plugins=[DeselectTypeErrorCases()])
    check_type_errors()
    return code


def _tiny_calls():
    generator = torch.Generator().manual_seed(0)
    rows, edges, features, heads = 64, 256, 8, 2
    dst = torch.randint(0, rows, (edges,), generator=generator).sort().values
    rowptr = torch.zeros(rows + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(dst, minlength=rows).cumsum(0)
    col = torch.randint(0, rows, (edges,), generator=generator)
    x = torch.randn(rows, features, generator=generator)
    xh = torch.randn(rows, heads, features, generator=generator)
    alpha = torch.randn(rows, heads, generator=generator)
    pairs = torch.randint(0, rows, (2, 32), generator=generator)
    ops = torch.ops.scangraph
    w, w_scale = ops.quantize(torch.randn(16, features, generator=generator), 8, 0)
    xq = torch.randint(-127, 128, (rows, features), dtype=torch.int8, generator=generator)
    xq_scale = torch.rand(rows, generator=generator)
    # One decoding step of the causal convolution: batch 2, 64 channels, width 4.
    step_x, conv_state = torch.randn(2, 64, 1, generator=generator), torch.randn(2, 64, 3, generator=generator)
    conv_weight = torch.randn(64, 4, generator=generator)
    return {
        "spmm": lambda: ops.spmm(rowptr, col, None, x, "sum"),
        "spmm_arg": lambda: ops.spmm_arg(rowptr, col, None, x, "max"),
        "sddmm": lambda: ops.sddmm(rowptr, col, x, x),
        "gat_aggregate": lambda: ops.gat_aggregate(rowptr, col, xh, alpha, alpha, 0.2),
        "common_neighbors": lambda: ops.common_neighbors(rowptr, col.sort().values, pairs[0],
                                                         pairs[1]),
        "quantize": lambda: ops.quantize(x, 8, 0),
        "qlinear": lambda: ops.qlinear(x[:4], w, w_scale, 8, features, None),
        "qspmm": lambda: ops.qspmm(rowptr, col, None, xq, xq_scale, "sum"),
        "causal_conv1d_update": lambda: ops.causal_conv1d_update(step_x, conv_state, conv_weight, None, True, None,
                                                                 None),
    }


def _time_calls(calls, rounds=3, repeats=5000):
    best = {}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(200):
                call()
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) / repeats * 1e6)
    return best


def time_ops(out: str) -> None:
    # The compile times: the regular API needs C++20 from torch 2.13 on; -c, the objects only.
    stable = _compile(["-c", "-std=c++17", "-DSCANGRAPH_STABLE_ABI", TARGET_2_10], SOURCES[:1],
                      os.path.join(out, "stable.o"))
    regular = _compile(["-c", "-std=c++20"], SOURCES[:1], os.path.join(out, "regular.o"))
    print(f"{os.path.relpath(SOURCES[0], ROOT)} compiles in {stable:.1f} s on the stable ABI, {regular:.1f} s on the "
          "regular API")
    torch.set_num_threads(1)
    importlib.import_module("scangraph")  # registers the regular kernels
    calls = _tiny_calls()
    regular = _time_calls(calls)
    load(out)
    stable = _time_calls(calls)
    print(f"torch {torch.__version__}, one thread, best of 3 rounds of 5000 calls (us per call):")
    for name in calls:
        print(f"  {name:22s} regular {regular[name]:6.2f}  stable {stable[name]:6.2f}  "
              f"(+{stable[name] - regular[name]:.2f})")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "test"
    folder = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUT)
    if command == "build":
        build(folder)
    elif command == "test":
        sys.exit(test(folder, sys.argv[3:]))
    elif command == "time":
        time_ops(folder)
    else:
        sys.exit(__doc__)
