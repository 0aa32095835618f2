"""Compiles every Triton kernel variant that the op samples launch, for a GPU target, without a GPU.

    python tools/triton_compile_check.py [--arch 90] [--json out.json]

1. Runs every sample of tests/op_samples.py on the "triton" backend in Triton's interpreter
   (TRITON_INTERPRET=1), forward and backward, in every dtype, and records each real launch:
   the kernel and the specialization Triton's JIT would derive from the arguments (dtypes,
   ints equal to 1, 16-byte alignment and divisibility by 16, constexprs, num_warps). About half
   the variants come from that specialization, so they are recorded, not written by hand.
2. Compiles each distinct variant with triton.compile(ASTSource(...), target=GPUTarget("cuda",
   arch, 32)): the real compiler down to a cubin, with the ptxas that ships in the triton wheel,
   in a fresh cache so that ptxas's -v log gives the registers, spills and shared memory.
3. Prints one line per variant and fails on any compile error. Spills of fp32 / fp16 / bf16
   variants are listed in docs/triton.md with their reason.

It needs triton (any version we support: 3.6 on the GPU machines, 3.8 here) and no GPU. The
interpreter patches triton.language for the whole process, so the compiles run in a second
process (`--compile-from`), which imports the kernels as real JIT functions.
"""
import argparse
import collections
import contextlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTXAS = re.compile(r"Used (\d+) registers")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _picklable(value):
    """A launch argument as the compile needs it: tensors only matter through the specialization."""
    import torch
    return None if isinstance(value, torch.Tensor) else value


def record(arch):
    """Runs the samples in the interpreter; returns the distinct variants as plain data."""
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction, create_function_from_signature

    import scangraph
    import test_op_samples as t
    from op_samples import SAMPLES, _scan

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binders, variants = {}, {}
    launches = 0
    original = interpreter.InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        nonlocal launches
        launches += 1
        fn = self.fn
        if fn not in binders:
            jit = JITFunction(fn)
            binders[fn] = (jit, create_function_from_signature(jit.signature, jit.params, backend))
        jit, binder = binders[fn]
        bound, specialization, options = binder(*args, **kwargs)
        options_kw = {k: v for k, v in kwargs.items() if k not in jit.arg_names}
        key = (fn.__module__, fn.__qualname__, str(specialization), str(options))
        if key not in variants:
            variants[key] = {"module": fn.__module__, "name": fn.__name__, "specialization": specialization,
                             "bound": {k: _picklable(v) for k, v in bound.items()}, "kwargs": options_kw}
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = run
    try:
        for sample in SAMPLES:
            if "triton" in sample.skip:
                continue
            for dtype in sample.dtypes:
                torch.manual_seed(0)
                t._run(sample, t._prepare(sample, dtype), "triton")
        # The selective-scan backward without a gradient of the last state (HAS_GLAST=False) is
        # reached when only `out` is differentiated.
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            kwargs = _scan(2, 3, 70, 16, None, True)(dtype)
            kwargs["return_last_state"] = False
            u = kwargs["u"].requires_grad_()
            scangraph.selective_scan(**kwargs, backend="triton").sum().backward()
            assert u.grad is not None
    finally:
        interpreter.InterpretedFunction.run = original
    return launches, list(variants.values())


def compile_all(variants, arch):
    """Compiles each variant for sm_<arch> in a fresh cache; (results, failures)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile, make_backend

    triton.knobs.nvidia.dump_ptxas_log = True  # prints ptxas -v, captured below
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    results, failures = [], []
    for v in variants:
        try:
            jit = getattr(importlib.import_module(v["module"]), v["name"])
            options, signature, constexprs, attrs = jit._pack_args(backend, v["kwargs"], v["bound"],
                                                                    v["specialization"], None)
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                kernel = triton_compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
            text = log.getvalue()
            regs = [int(m) for m in PTXAS.findall(text)]
            spills = [int(a) + int(b) for a, b in SPILLS.findall(text)]
            pointers = sorted({x for x in signature.values() if isinstance(x, str) and x.startswith("*")})
            results.append({"kernel": v["name"], "pointers": " ".join(pointers),
                            "constexprs": {str(k): repr(c) for k, c in constexprs.items()},
                            "num_warps": options.num_warps, "registers": max(regs) if regs else None,
                            "spill_bytes": max(spills) if spills else 0, "shared_bytes": kernel.metadata.shared})
        except Exception as error:  # every failure is listed, then the check fails
            failures.append({"kernel": v["name"], "specialization": str(v["specialization"]),
                             "error": f"{type(error).__name__}: {error}"})
    return results, failures


def report(results, failures, arch, json_path):
    import triton
    by_kernel = collections.defaultdict(list)
    for r in results:
        by_kernel[r["kernel"]].append(r)
    print(f"{'kernel':40} {'variants':>8} {'regs max':>8} {'spilling':>8} {'smem max':>9}")
    for name in sorted(by_kernel):
        rs = by_kernel[name]
        print(f"{name:40} {len(rs):8d} {max(r['registers'] or 0 for r in rs):8d} "
              f"{sum(r['spill_bytes'] > 0 for r in rs):8d} {max(r['shared_bytes'] for r in rs):9d}")
    for r in sorted(results, key=lambda r: (r["kernel"], r["pointers"])):
        if r["spill_bytes"]:
            print(f"spills {r['spill_bytes']:4d} B: {r['kernel']} [{r['pointers']}] num_warps={r['num_warps']} "
                  f"regs={r['registers']} {r['constexprs']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"triton": triton.__version__, "arch": arch, "variants": results, "failures": failures}, f,
                      indent=1)
    for failure in failures:
        print(f"FAILED {failure['kernel']} {failure['specialization']}: {failure['error']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100 / H200)")
    parser.add_argument("--json", help="write every variant's resources here")
    parser.add_argument("--compile-from", help=argparse.SUPPRESS)  # the second process
    args = parser.parse_args(argv)
    if args.compile_from:
        with open(args.compile_from, "rb") as f:
            variants = pickle.load(f)
        start = time.time()
        results, failures = compile_all(variants, args.arch)
        print(f"compiled {len(results)} variants for sm_{args.arch} in {time.time() - start:.0f} s, "
              f"{len(failures)} failed")
        report(results, failures, args.arch, args.json)
        return 1 if failures else 0
    start = time.time()
    launches, variants = record(args.arch)
    import triton
    print(f"triton {triton.__version__}: {launches} launches, {len(variants)} distinct variants recorded in "
          f"{time.time() - start:.0f} s")
    with tempfile.TemporaryDirectory(prefix="scangraph-triton-check-") as folder:
        path = os.path.join(folder, "variants.pkl")
        with open(path, "wb") as f:
            pickle.dump(variants, f)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = os.path.join(folder, "cache")  # fresh: ptxas runs, its log is seen
        command = [sys.executable, os.path.abspath(__file__), "--arch", str(args.arch), "--compile-from", path]
        if args.json:
            command += ["--json", os.path.abspath(args.json)]
        return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
