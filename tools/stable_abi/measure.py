"""The LibTorch stable-ABI build (issue 23, docs/packaging.md): what it costs against the regular
build, measured.

    python tools/stable_abi/measure.py symbols SITE   # the torch symbols the stable library needs
    python tools/stable_abi/measure.py symbols LIB.so # the same, of another library (the emulation's)
    python tools/stable_abi/measure.py time SITE      # compile time and cost per call, both ways

SITE is a folder holding the stable build of the package (a scangraph/ folder: the wheel of
`SCANGRAPH_STABLE_ABI=1 pip wheel --no-build-isolation --no-deps .`, unpacked; .ci/stable_abi.sh
makes one in build/stable_abi/site).

`symbols` lists the undefined symbols of SITE's _C (or of the library LIB.so) that torch provides:
C shims only, no C++ symbol of torch (those change between torch versions), and fails otherwise.

`time` compiles csrc/cpu/sparse.cpp both ways (objects only) and prints the two compile times;
then it calls each op of _tiny_calls, where the call costs more than the kernel (a 64-row graph,
one decoding step), in two processes on one thread: the regular build that this Python imports
(the installed package, or PYTHONPATH=python in a checkout), and the stable one of SITE. It
prints microseconds per call.
"""
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
# setup.py's target for the stable build (STABLE_ABI_TARGET there).
TARGET_2_10 = "-DTORCH_TARGET_VERSION=0x020a000000000000ULL"
SPARSE = os.path.join(ROOT, "csrc", "cpu", "sparse.cpp")


def _library(site: str) -> str:
    folder = os.path.join(site, "scangraph")
    names = [name for name in os.listdir(folder) if name.startswith("_C.") and name.endswith(".so")]
    assert len(names) == 1, f"expected one scangraph/_C*.so in {site}, found {names}"
    return os.path.join(folder, names[0])


def symbols(site: str) -> None:
    library = site if os.path.isfile(site) else _library(site)
    site = os.path.dirname(site) if os.path.isfile(site) else site
    undefined = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True, text=True,
                               check=True).stdout.split()
    shims = sorted({s for s in undefined if s.startswith(("aoti_torch", "torch_"))})
    cxx_torch = [s for s in undefined if s.startswith("_ZN") and ("c104" in s or "2at" in s or "5torch" in s)]
    print(f"{os.path.relpath(library, site)}: {len(shims)} torch C shims used, {len(cxx_torch)} torch C++ symbols")
    assert not cxx_torch, cxx_torch


def _compile(flags, source, output):
    from torch.utils.cpp_extension import include_paths
    command = ["g++", "-O3", "-fPIC", "-fopenmp", "-fvisibility=hidden", "-Wno-psabi", "-c", *flags,
               *(f"-I{p}" for p in include_paths()), f"-I{ROOT}/csrc", f"-I{ROOT}/csrc/include", source, "-o", output]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


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
    # One decoding step of Mamba's selective scan: batch 2, 64 channels, N = 16, one group.
    state, step_u = torch.randn(2, 64, 16, generator=generator), torch.randn(2, 64, generator=generator)
    A, step_b = -torch.rand(64, 16, generator=generator), torch.randn(2, 16, generator=generator)
    # One step of prefix attention: batch 2, 4 heads, d = dv = 64.
    m, c = torch.randn(2, 4, generator=generator), torch.rand(2, 4, generator=generator) + 1
    w_state, q, k_t = (torch.randn(2, 4, 64, generator=generator) for _ in range(3))
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
        "selective_state_update": lambda: ops.selective_state_update(state, step_u, step_u, A, step_b, step_b, None,
                                                                     None, None, True),
        "prefix_attention_step": lambda: ops.prefix_attention_step(m, c, w_state, q, k_t, k_t, 0.125),
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


def calls(expect_stable: bool) -> None:
    """In the worker process: the per-call times of the build this process imports, as JSON."""
    torch.set_num_threads(1)
    import scangraph
    assert scangraph._extension.stable_abi() == expect_stable, (scangraph.__file__, expect_stable)
    print(json.dumps(_time_calls(_tiny_calls())))


def time_ops(site: str) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        # The regular API needs C++20 from torch 2.13 on.
        stable = _compile(["-std=c++17", "-DSCANGRAPH_STABLE_ABI", TARGET_2_10], SPARSE, os.path.join(out, "s.o"))
        regular = _compile(["-std=c++20", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"], SPARSE,
                           os.path.join(out, "r.o"))
    print(f"{os.path.relpath(SPARSE, ROOT)} compiles in {stable:.1f} s on the stable ABI, {regular:.1f} s on the "
          "regular API")
    results = {}
    for name, stable_build in (("regular", False), ("stable", True)):
        env = dict(os.environ)
        if stable_build:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(site), env.get("PYTHONPATH")]))
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "calls", str(stable_build)], env=env,
                             cwd=site, capture_output=True, text=True)
        assert run.returncode == 0, f"the {name} build's calls failed:\n{run.stderr}"
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"torch {torch.__version__}, one thread, best of 3 rounds of 5000 calls (us per call):")
    for op, regular_us in results["regular"].items():
        stable_us = results["stable"][op]
        print(f"  {op:22s} regular {regular_us:6.2f}  stable {stable_us:6.2f}  (+{stable_us - regular_us:.2f})")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "symbols" and len(sys.argv) == 3:
        symbols(sys.argv[2])
    elif command == "time" and len(sys.argv) == 3:
        time_ops(sys.argv[2])
    elif command == "calls":
        calls(sys.argv[2] == "True")
    else:
        sys.exit(__doc__)
