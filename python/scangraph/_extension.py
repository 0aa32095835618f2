"""Loads the compiled op library scangraph._C and reports what it was built with."""
import torch


def build_info():
    """The module setup.py wrote at build time (torch version, CUDA architectures), or None."""
    try:
        from scangraph import _build_info
    except ImportError:  # a build from before the file existed, or a source tree
        return None
    return _build_info


def check_torch_version() -> None:
    """A library built against one torch cannot load into another (C++ ABI): say so, naming both,
    before the loader fails with an undefined symbol."""
    info = build_info()
    if info is not None and info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"scangraph's compiled kernels were built against torch {info.TORCH_VERSION}, but torch "
            f"{torch.__version__} is installed. Rebuild them for this torch (pip install --no-build-isolation "
            f"--force-reinstall --no-deps scangraph, or from a checkout: pip install --no-build-isolation .), "
            f"or install torch {info.TORCH_VERSION}.")


check_torch_version()
try:
    from scangraph import _C  # noqa: F401  (loading it registers the C++ and CUDA kernels)

    LOAD_ERROR = None
except ImportError as error:  # a source checkout without a build
    LOAD_ERROR = error


def cpp_built() -> bool:
    """True when the C++ op library is loaded (its CPU kernels are always part of it)."""
    return LOAD_ERROR is None


def cuda_built(op: str = "spmm") -> bool:
    """True when the loaded op library holds the CUDA kernel of `op` (built where nvcc was present)."""
    return cpp_built() and torch._C._dispatch_has_kernel_for_dispatch_key(f"scangraph::{op}", "CUDA")


def require_cpp(what: str) -> None:
    if LOAD_ERROR is not None:
        raise RuntimeError(
            f"{what} needs scangraph's compiled library, which failed to load ({LOAD_ERROR}). "
            "Reinstall with `pip install --no-build-isolation .` against the installed torch "
            f"({torch.__version__}), or pick backend='triton' or 'reference'.")
