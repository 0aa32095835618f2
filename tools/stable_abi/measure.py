"""The LibTorch stable-ABI trial (issue 23): one op, `spmm_sum`, registered on the stable ABI
(stable.cpp) and on the regular C++ API (regular.cpp) over the same kernel (kernel.h).

    python tools/stable_abi/measure.py build [OUT]   # with the torch to build against; OUT: build/stable_abi
    python tools/stable_abi/measure.py run [OUT]     # under any torch: load, check, time

`build` compiles both libraries with g++ against the running torch's headers and prints each
compile time. `run` loads each library the running torch can load (a regular build fails under
another torch with an undefined symbol, which it prints), checks the op against index_add on a
random graph and that a bad dtype raises, and times calls on a tiny graph (16 rows, 32 edges,
F = 4; one thread), where the call's own cost dominates. Results: docs/packaging.md.
"""
import ctypes
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "..", "build", "stable_abi")
# The oldest torch the stable build targets: its shims exist from 2.10 on.
TARGET_2_10 = "-DTORCH_TARGET_VERSION=(((0ULL + 2) << 56) | ((0ULL + 10) << 48))"


def build(out: str) -> None:
    from torch.utils.cpp_extension import include_paths
    os.makedirs(out, exist_ok=True)
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    common = ["g++", "-O2", "-fPIC", "-shared", "-fopenmp", *(f"-I{p}" for p in include_paths()), f"-L{lib}"]
    # The regular API needs C++20 from torch 2.13 on; the stable headers build as C++17.
    for name, flags in (("stable", ["-std=c++17", TARGET_2_10]), ("regular", ["-std=c++20", "-lc10"])):
        start = time.perf_counter()
        subprocess.run([*common, *flags, os.path.join(HERE, f"{name}.cpp"), "-o", os.path.join(out, f"lib{name}.so"),
                        "-ltorch_cpu"], check=True)
        print(f"{name}: compiled against torch {torch.__version__} in {time.perf_counter() - start:.1f} s")


def _graph(rows: int, edges: int, features: int, generator: torch.Generator):
    dst = torch.randint(0, rows, (edges,), generator=generator).sort().values
    col = torch.randint(0, rows, (edges,), generator=generator)
    rowptr = torch.zeros(rows + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(dst, minlength=rows).cumsum(0)
    return rowptr, col, torch.randn(rows, features, generator=generator)


def run(out: str) -> None:
    torch.set_num_threads(1)
    ops = {}
    for name in ("stable", "regular"):
        path = os.path.join(out, f"lib{name}.so")
        try:
            torch.ops.load_library(path)
            ops[name] = getattr(torch.ops, f"sg{name}").spmm_sum
            print(f"{name}: loaded under torch {torch.__version__}")
        except OSError:
            try:  # torch's message does not say why: the dynamic loader's does
                ctypes.CDLL(path)
                reason = "?"
            except OSError as error:
                reason = str(error)[:200]
            print(f"{name}: does not load under torch {torch.__version__}: {reason}")
    generator = torch.Generator().manual_seed(0)
    rowptr, col, x = _graph(1000, 8000, 16, generator)
    rows = torch.repeat_interleave(torch.arange(1000), rowptr[1:] - rowptr[:-1])
    want = torch.zeros(1000, 16).index_add_(0, rows, x[col])
    for name, op in ops.items():
        torch.testing.assert_close(op(rowptr, col, x), want)
        try:
            op(rowptr, col, x.double())
            raise AssertionError(f"{name}: a float64 x did not raise")
        except RuntimeError as error:
            print(f"{name}: equals index_add; a bad dtype raises: {str(error).splitlines()[0][:80]}")
    tiny = _graph(16, 32, 4, generator)
    for _ in range(3):  # rounds, each op in turn
        for name, op in ops.items():
            for _ in range(1000):
                op(*tiny)
            start = time.perf_counter()
            for _ in range(20000):
                op(*tiny)
            print(f"{name}: {(time.perf_counter() - start) / 20000 * 1e6:.2f} us per call")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    folder = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUT)
    {"build": build, "run": run}[command](folder)
