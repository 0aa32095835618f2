"""What a GPU launch of our kernels looks like, found without a GPU.

- record_cuda(): the launches of the CUDA kernels, recorded by their own launchers run under the
  test-only CPU emulation (tests/cuda_emulation.py) in record-only mode: each launch is checked
  and listed (kernel, grid, block), none runs. Needs a source checkout.
- record_triton(run=...): the launches of the Triton kernels through the interpreter, with the
  specialization Triton's JIT derives from the arguments; run=False lists them without running.
- cuda_resources(): registers and shared memory per CUDA kernel, from ptxas -v (nvcc).
- compile_triton(): registers, spills and shared memory per Triton variant, compiled for a GPU
  target with the ptxas in the triton wheel (in a second process: the interpreter patches
  triton.language for the whole process).
"""
import contextlib
import ctypes
import glob
import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def source_tree() -> str:
    """The source checkout whose tests/cuda_emulation.py records the CUDA launches: the one this
    package was imported from (an editable install), else the working directory (an installed
    package run from its checkout, as CI does), else an error."""
    for root in (ROOT, os.getcwd()):
        if os.path.exists(os.path.join(root, "tests", "cuda_emulation.py")):
            return root
    raise RuntimeError("the launch plan records the CUDA launchers under the test emulation "
                       "(tests/cuda_emulation.py): run it from a source checkout")


def kernel_name(text: str) -> str:
    """A kernel's name without namespaces, return type or parameters, e.g.
    'scan_forward_kernel<float, 1, false>'."""
    found = re.search(r"Kernel = ([^;\]]+)", text)
    text = found.group(1) if found else text
    text = re.sub(r"^void ", "", text.strip())
    depth, cut = 0, len(text)
    for i, ch in enumerate(text):  # drop "(params)" after the template arguments
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            cut = i
            break
    text = text[:cut]
    text = re.sub(r"\b(scangraph|scan_cuda|cuda|prefix|lowp_cuda)::", "", text)
    return text.replace("long int", "long").replace("unsigned int", "unsigned").strip()


@contextlib.contextmanager
def record_cuda():
    """Yields a list that fills with (kernel, grid, block) of every CUDA launch in the block;
    the kernels do not run (their outputs are zeros)."""
    sys.path.insert(0, os.path.join(source_tree(), "tests"))
    import cuda_emulation

    error = cuda_emulation.load()
    if error:
        raise RuntimeError(error)
    library = ctypes.CDLL(cuda_emulation.library_path())
    library.scangraph_emulation_recorded.restype = ctypes.c_longlong
    launches = []
    library.scangraph_emulation_record(1)
    try:
        yield launches
    finally:
        size = library.scangraph_emulation_recorded(None, 0)
        buffer = ctypes.create_string_buffer(size)
        library.scangraph_emulation_recorded(buffer, size)
        library.scangraph_emulation_record(0)
        for line in buffer.value.decode().splitlines():
            name, grid, block = line.split("\t")
            launches.append((kernel_name(name), tuple(map(int, grid.split())), tuple(map(int, block.split()))))


@contextlib.contextmanager
def record_triton(run=True, target=None):
    """Yields a list that fills with one dict per Triton launch in the block: kernel, grid,
    num_warps, and the plain data compile_triton needs. run=False: the kernels do not run.
    Needs the interpreter (TRITON_INTERPRET=1 before triton is imported)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction, create_function_from_signature
    import torch

    backend = make_backend(target or GPUTarget("cuda", 90, 32))
    binders = {}
    launches = []
    original = interpreter.InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        fn = self.fn
        if fn not in binders:
            jit = JITFunction(fn)
            binders[fn] = (jit, create_function_from_signature(jit.signature, jit.params, backend))
        jit, binder = binders[fn]
        bound, specialization, options = binder(*args, **kwargs)
        grid_dims = grid(bound) if callable(grid) else grid
        grid_dims = tuple(int(g) for g in grid_dims) + (1,) * (3 - len(grid_dims))
        launches.append({
            "module": fn.__module__, "name": fn.__name__, "grid": grid_dims,
            "num_warps": int(kwargs.get("num_warps", 4)), "specialization": specialization,
            "key": f"{fn.__module__}.{fn.__qualname__} {specialization} {options}",
            "bound": {k: None if isinstance(v, torch.Tensor) else v for k, v in bound.items()},
            "kwargs": {k: v for k, v in kwargs.items() if k not in jit.arg_names}})
        if run:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        return None

    interpreter.InterpretedFunction.run = record
    new_empty = torch.Tensor.new_empty
    if not run:  # nothing runs: zeros keep data-dependent sizes (common neighbours' counts) at zero
        torch.Tensor.new_empty = lambda self, *args, **kwargs: torch.Tensor.new_zeros(self, *args, **kwargs)
    try:
        yield launches
    finally:
        interpreter.InterpretedFunction.run = original
        torch.Tensor.new_empty = new_empty


def distinct(launches):
    """One launch per Triton variant (Triton's own cache key)."""
    seen = {}
    for launch in launches:
        seen.setdefault(launch["key"], launch)
    return list(seen.values())


def _compile_in_this_process(variants, arch):
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile, make_backend

    triton.knobs.nvidia.dump_ptxas_log = True  # prints ptxas -v, captured below
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    results = []
    for v in variants:
        entry = {"key": v["key"], "kernel": v["name"]}
        try:
            jit = getattr(importlib.import_module(v["module"]), v["name"])
            options, signature, constexprs, attrs = jit._pack_args(backend, v["kwargs"], v["bound"],
                                                                    v["specialization"], None)
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                kernel = triton_compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
            text = log.getvalue()
            regs = [int(m) for m in PTXAS_REGS.findall(text)]
            spills = [int(a) + int(b) for a, b in PTXAS_SPILLS.findall(text)]
            pointers = sorted({x for x in signature.values() if isinstance(x, str) and x.startswith("*")})
            entry.update(pointers=" ".join(pointers), constexprs={str(k): repr(c) for k, c in constexprs.items()},
                         num_warps=options.num_warps, registers=max(regs) if regs else None,
                         spill_bytes=max(spills) if spills else 0, shared_bytes=kernel.metadata.shared)
        except Exception as error:  # reported per variant
            entry["error"] = f"{type(error).__name__}: {error}"
            entry["specialization"] = str(v["specialization"])
        results.append(entry)
    return results


def compile_triton(variants, arch=90, processes=None):
    """Compiles Triton variants (from record_triton) for sm_<arch> in other processes (the
    interpreter's patches stay in this one), one per CPU core, each with a fresh cache; one dict
    per variant, in order: registers, spill_bytes, shared_bytes, or error."""
    processes = max(1, min(processes or os.cpu_count() or 1, len(variants)))
    with tempfile.TemporaryDirectory(prefix="scangraph-triton-") as folder:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        workers = []
        for worker in range(processes):  # variant i goes to worker i % processes
            path, out = os.path.join(folder, f"variants{worker}.pkl"), os.path.join(folder, f"results{worker}.json")
            with open(path, "wb") as f:
                pickle.dump(variants[worker::processes], f)
            # A fresh cache per worker: ptxas runs and its log is seen.
            env_worker = dict(env, TRITON_CACHE_DIR=os.path.join(folder, f"cache{worker}"))
            workers.append((out, subprocess.Popen([sys.executable, "-m", "scangraph.bench.gpu_resources", path, out,
                                                   str(arch)], env=env_worker)))
        failed = [process.wait() for _, process in workers]
        if any(failed):
            raise RuntimeError(f"a Triton compile worker failed (exit codes {failed})")
        parts = []
        for out, _ in workers:
            with open(out) as f:
                parts.append(json.load(f))
        results = [None] * len(variants)
        for worker, part in enumerate(parts):
            results[worker::processes] = part
        return results


def cuda_resources(arch=90, sources=None):
    """{kernel: (registers, shared bytes, spill bytes)} of the CUDA kernels, from ptxas -v over
    csrc/cuda/*.cu (cached in build/ptxas by the sources' hash). Needs nvcc."""
    root = source_tree()
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    if not os.path.exists(nvcc):
        raise RuntimeError(f"ptxas resource counts need nvcc ({nvcc} not found; set CUDA_HOME)")
    files = sources or sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")))
    headers = sorted(glob.glob(os.path.join(root, "csrc", "cuda", "*.cuh")) +
                     glob.glob(os.path.join(root, "csrc", "include", "scangraph", "*.h")))
    cache = os.path.join(root, "build", "ptxas")
    os.makedirs(cache, exist_ok=True)
    usage = {}
    for path in files:
        digest = hashlib.sha1(str(arch).encode())
        for dependency in [path] + headers:
            with open(dependency, "rb") as f:
                digest.update(f.read())
        cached = os.path.join(cache, f"{os.path.basename(path)}.{digest.hexdigest()[:16]}.txt")
        if not os.path.exists(cached):
            log = subprocess.run([nvcc, "-std=c++20", "-O3", "--expt-relaxed-constexpr",
                                  f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
                                  "-I" + os.path.join(root, "csrc"), "-I" + os.path.join(root, "csrc", "include"),
                                  "-c", path, "-o", os.devnull], capture_output=True, text=True)
            if log.returncode != 0:
                raise RuntimeError(f"nvcc failed on {path}:\n{log.stderr[-2000:]}")
            with open(cached, "w") as f:
                f.write(log.stderr)
        with open(cached) as f:
            text = f.read()
        kernel = None
        spills = 0
        for line in text.splitlines():
            found = re.search(r"Compiling entry function '(\w+)'", line)
            if found:
                kernel = _demangle(found.group(1))
                continue
            found = PTXAS_SPILLS.search(line)
            if found:
                spills = int(found.group(1)) + int(found.group(2))
            found = re.search(r"Used (\d+) registers.*?(?:, (\d+) bytes smem)?$", line.strip())
            if found and kernel:
                usage[kernel] = (int(found.group(1)), int(found.group(2) or 0), spills)
                kernel = None
    return usage


def _demangle(symbol):
    try:
        out = subprocess.run(["c++filt", symbol], capture_output=True, text=True).stdout.strip()
    except OSError:
        return symbol
    return kernel_name(out)


if __name__ == "__main__":  # the second process of compile_triton
    source, target_path, arch_text = sys.argv[1:4]
    with open(source, "rb") as f:
        variant_list = pickle.load(f)
    with open(target_path, "w") as f:
        json.dump(_compile_in_this_process(variant_list, int(arch_text)), f)
