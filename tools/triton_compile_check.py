"""Compiles every Triton kernel variant that the op samples launch, for a GPU target, without a GPU.

    python tools/triton_compile_check.py [--arch 90] [--json out.json] [--run]

1. Calls every sample of tests/op_samples.py on the "triton" backend with Triton's interpreter
   (TRITON_INTERPRET=1), forward and backward, in every dtype, and records each launch: the
   kernel and the specialization Triton's JIT would derive from the arguments (dtypes, ints
   equal to 1, 16-byte alignment and divisibility by 16, constexprs, num_warps). About half the
   variants come from that specialization, so they are recorded, not written by hand. The
   kernels do not run (record_triton(run=False)): a variant depends on shapes, dtypes and
   pointers, not on the values in the tensors, and on 2026-12-07 the 732 variants recorded so in
   2 s were the 732 that running them in the interpreter recorded in 365 s (--run does that;
   tests/test_plan.py checks the two agree on the samples whose launches depend on values).
2. Compiles each distinct variant with triton.compile(ASTSource(...), target=GPUTarget("cuda",
   arch, 32)): the real compiler down to a cubin, with the ptxas that ships in the triton wheel,
   in a fresh cache so that ptxas's -v log gives the registers, spills and shared memory.
3. Prints one line per variant and fails on any compile error. Spills of fp32 / fp16 / bf16
   variants are listed in docs/triton.md with their reason.

It needs triton (any version we support: 3.6 on the GPU machines, 3.8 here) and no GPU. The
recording and compiling are scangraph.bench.gpu_resources' (the launch plan uses them too).
"""
import argparse
import collections
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["TRITON_INTERPRET"] = "1"  # the samples run on CPU tensors, before triton is imported
sys.path.insert(0, os.path.join(ROOT, "tests"))


def record(arch, part=0, parts=1, run=False):
    """Calls every parts-th sample (from `part`), the kernels run in the interpreter when `run`;
    returns the launches."""
    import torch
    from triton.backends.compiler import GPUTarget

    import scangraph
    import test_op_samples as t
    from op_samples import SAMPLES, _scan
    from scangraph.bench.gpu_resources import record_triton

    runs = [(sample, dtype) for sample in SAMPLES if "triton" not in sample.skip for dtype in sample.dtypes]
    with record_triton(run=run, target=GPUTarget("cuda", arch, 32)) as launches:
        for sample, dtype in runs[part::parts]:
            torch.manual_seed(0)
            t._run(sample, t._prepare(sample, dtype), "triton")
        # The selective-scan backward without a gradient of the last state (HAS_GLAST=False) is
        # reached when only `out` is differentiated.
        if part == 0:
            for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                kwargs = _scan(2, 3, 70, 16, None, True)(dtype)
                kwargs["return_last_state"] = False
                u = kwargs["u"].requires_grad_()
                scangraph.selective_scan(**kwargs, backend="triton").sum().backward()
                assert u.grad is not None
    return launches


def record_in_parallel(arch, jobs, run):
    """record() split over `jobs` processes (the interpreter runs on one core): the launches of all."""
    if jobs <= 1 or not run:
        return record(arch, run=run)
    with tempfile.TemporaryDirectory(prefix="scangraph-record-") as folder:
        workers = []
        for part in range(jobs):
            out = os.path.join(folder, f"launches{part}.pkl")
            workers.append((out, subprocess.Popen([sys.executable, os.path.abspath(__file__), "--arch", str(arch),
                                                   "--record-part", f"{part}/{jobs}", out, "--run"])))
        codes = [process.wait() for _, process in workers]
        if any(codes):
            raise RuntimeError(f"a recording process failed (exit codes {codes})")
        launches = []
        for out, _ in workers:
            with open(out, "rb") as f:
                launches += pickle.load(f)
        return launches


def report(results, arch, json_path):
    import triton
    compiled = [r for r in results if "error" not in r]
    failures = [r for r in results if "error" in r]
    by_kernel = collections.defaultdict(list)
    for r in compiled:
        by_kernel[r["kernel"]].append(r)
    print(f"{'kernel':40} {'variants':>8} {'regs max':>8} {'spilling':>8} {'smem max':>9}")
    for name in sorted(by_kernel):
        rs = by_kernel[name]
        print(f"{name:40} {len(rs):8d} {max(r['registers'] or 0 for r in rs):8d} "
              f"{sum(r['spill_bytes'] > 0 for r in rs):8d} {max(r['shared_bytes'] for r in rs):9d}")
    for r in sorted(compiled, key=lambda r: (r["kernel"], r["pointers"])):
        if r["spill_bytes"]:
            print(f"spills {r['spill_bytes']:4d} B: {r['kernel']} [{r['pointers']}] num_warps={r['num_warps']} "
                  f"regs={r['registers']} {r['constexprs']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"triton": triton.__version__, "arch": arch, "variants": results}, f, indent=1)
    for failure in failures:
        print(f"FAILED {failure['kernel']} {failure['specialization']}: {failure['error']}")
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100 / H200)")
    parser.add_argument("--json", help="write every variant's resources here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes that record and compile (default: one per core)")
    parser.add_argument("--run", action="store_true",
                        help="run the kernels in the interpreter while recording (minutes; the same variants)")
    parser.add_argument("--record-part", nargs=2, metavar=("PART/PARTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record_part:  # a worker of record_in_parallel
        part, parts = map(int, args.record_part[0].split("/"))
        with open(args.record_part[1], "wb") as f:
            pickle.dump(record(args.arch, part, parts, run=True), f)
        return 0
    import triton

    from scangraph.bench.gpu_resources import compile_triton, distinct

    start = time.time()
    launches = record_in_parallel(args.arch, args.jobs, args.run)
    variants = distinct(launches)
    recorded = time.time() - start
    print(f"triton {triton.__version__}: {len(launches)} launches, {len(variants)} distinct variants recorded in "
          f"{recorded:.0f} s")
    results = compile_triton(variants, args.arch, processes=args.jobs)
    failures = [r for r in results if "error" in r]
    print(f"compiled {len(results) - len(failures)} variants for sm_{args.arch} in {time.time() - start - recorded:.0f} s, "
          f"{len(failures)} failed")
    return 1 if report(results, args.arch, args.json) else 0


if __name__ == "__main__":
    sys.exit(main())
