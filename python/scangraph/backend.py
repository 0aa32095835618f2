"""Which implementation runs an op: "auto" | "cpp" | "cuda" | "triton" | "reference", and, for
tests, "cuda_emulated" (the CUDA kernels run on CPU tensors under csrc/testing's emulation of the
execution model; tests/cuda_emulation.py builds and loads it).

Precedence: a `backend=` argument other than "auto", then the innermost `use_backend(...)`
context, then the SCANGRAPH_BACKEND environment variable, then "auto". A backend that is not
built, or cannot run on the tensors' device, raises BackendUnavailable naming what is missing;
it is never silently replaced by another.
"""
import contextlib
import os

import torch

from scangraph import _extension

BACKENDS = ("auto", "cpp", "cuda", "triton", "reference", "cuda_emulated")

# The op of each compiled backend: scangraph::<op><suffix>, one schema for all (csrc/schemas.h).
_OP_SUFFIX = {"cpp": "", "cuda": "", "triton": "_triton", "cuda_emulated": "_cuda_emulated"}

# What "auto" runs, per device type. On CPU the C++ kernels beat the alternatives (see
# bench/results/). On CUDA no GPU measurement exists yet: the CUDA kernels are the default
# until the device check (bench/gpu_check.sh) measures CUDA against Triton per op.
AUTO = {"cpu": "cpp", "cuda": "cuda"}

_context_stack: list = []


class BackendUnavailable(RuntimeError):
    """The requested backend is not built or cannot run on the given tensors."""


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the block on backend `name` (unless a call names one itself)."""
    _check_name(name, "use_backend")
    _context_stack.append(name)
    try:
        yield
    finally:
        _context_stack.pop()


def _check_name(name, where):
    if name not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {name!r}")


def requested(backend: str) -> str:
    _check_name(backend, "backend")
    if backend != "auto":
        return backend
    if _context_stack:
        return _context_stack[-1]
    env = os.environ.get("SCANGRAPH_BACKEND", "auto")
    _check_name(env, "SCANGRAPH_BACKEND")
    return env


def triton_unavailable_reason(device: torch.device):
    """None when the Triton kernels can run on `device`, else why not."""
    from scangraph.triton_kernels import INTERPRETED, UNAVAILABLE

    if UNAVAILABLE is not None:
        return UNAVAILABLE
    if device.type == "cpu" and not INTERPRETED:
        return ("Triton kernels run on CPU tensors only in the interpreter: set TRITON_INTERPRET=1 "
                "before triton is imported")
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels run on CUDA tensors, got {device}"
    return None


def resolve(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend that runs `op` on tensors of `device`, or BackendUnavailable."""
    name = requested(backend)
    if name == "auto":
        if device.type not in AUTO:
            raise BackendUnavailable(f"{op}: no backend runs on {device} tensors")
        name = AUTO[device.type]
    if name == "cpp":
        _extension.require_cpp(f"{op} with backend='cpp'")
        if device.type != "cpu":
            raise BackendUnavailable(
                f"{op}: backend 'cpp' runs on CPU tensors, got {device} (use 'cuda' or 'triton')")
    elif name == "cuda":
        if device.type != "cuda":
            raise BackendUnavailable(
                f"{op}: backend 'cuda' runs on CUDA tensors, got {device} (use 'cpp' on CPU)")
        if not _extension.cuda_built(op):
            raise BackendUnavailable(
                f"{op}: backend 'cuda' is not built: scangraph was compiled without this CUDA kernel "
                "(no nvcc or a CPU build of torch at install time, or SCANGRAPH_CUDA=0). Reinstall "
                "with CUDA_HOME pointing at the toolkit, or use backend='triton'.")
    elif name == "cuda_emulated":
        if device.type != "cpu":
            raise BackendUnavailable(f"{op}: backend 'cuda_emulated' runs the CUDA kernels on CPU tensors, got {device}")
        if not hasattr(torch.ops.scangraph, f"{op}_cuda_emulated"):
            raise BackendUnavailable(
                f"{op}: backend 'cuda_emulated' is not loaded: it is a test-only build of the CUDA kernels for the "
                "CPU (tests/cuda_emulation.py builds and loads it)")
    elif name == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailable(f"{op}: backend 'triton' is unavailable: {reason}")
    return name


def op_name(op: str, name: str) -> str:
    """The qualified name of op `op` on the concrete backend `name`: scangraph::<op> (the C++ /
    CUDA library), its Triton twin scangraph::<op>_triton, or the emulated CUDA twin
    scangraph::<op>_cuda_emulated."""
    return f"scangraph::{op}{_OP_SUFFIX[name]}"


def op_for(op: str, name: str):
    """The op `op` that the concrete backend `name` (from resolve) runs (see op_name)."""
    return getattr(torch.ops.scangraph, op + _OP_SUFFIX[name])
