"""Loads the compiled op library scangraph._C and reports what it was built with."""
import re

import torch


def build_info():
    """The module setup.py wrote at build time (torch version, CUDA architectures), or None."""
    try:
        from scangraph import _build_info
    except ImportError:  # a build from before the file existed, or a source tree
        return None
    return _build_info


def _release(version: str) -> tuple:
    """(major, minor) of a torch version string: '2.11.0+cu130' -> (2, 11), '2.10.0a0+git' -> (2, 10)."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def _cuda_major(version):
    """'13.0' -> 13; None (a CPU build of torch) -> None."""
    return None if version is None else int(version.split(".")[0])


def check_torch_version() -> None:
    """A library built on torch's regular C++ API loads only into the torch it was built against
    (C++ ABI); one built on the stable ABI (STABLE_ABI_FLOOR set) into any torch from that floor
    on, built for the same CUDA major version when it has CUDA kernels. Otherwise say so, naming
    both versions, before the loader fails with an undefined symbol or a missing CUDA library."""
    info = build_info()
    if info is None:
        return
    floor = getattr(info, "STABLE_ABI_FLOOR", None)
    if floor is not None:
        if _release(torch.__version__) < _release(floor):
            raise ImportError(
                f"scangraph's compiled kernels use the LibTorch stable ABI of torch >= {floor} (built against torch "
                f"{info.TORCH_VERSION}), but torch {torch.__version__} is installed. Install torch >= {floor}, or "
                f"build the kernels for this torch (pip install --no-build-isolation --force-reinstall --no-deps "
                f"scangraph, without SCANGRAPH_STABLE_ABI).")
        # The stable ABI covers torch's version, not CUDA's: a library with CUDA kernels links the
        # CUDA runtime of the major version it was built with, and torch's CUDA libraries.
        built_cuda = info.TORCH_CUDA if getattr(info, "CUDA_ARCHS", None) else None
        if built_cuda is not None and _cuda_major(torch.version.cuda) != _cuda_major(built_cuda):
            raise ImportError(
                f"scangraph's compiled kernels include CUDA kernels built for CUDA {built_cuda} (torch "
                f"{info.TORCH_VERSION}), but the installed torch {torch.__version__} is "
                f"{'a CPU build' if torch.version.cuda is None else 'built for CUDA ' + torch.version.cuda}. Install "
                f"a torch >= {floor} built for CUDA {_cuda_major(built_cuda)}.x, or rebuild the kernels for this torch "
                f"(pip install --no-build-isolation --force-reinstall --no-deps scangraph).")
    elif info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"scangraph's compiled kernels were built against torch {info.TORCH_VERSION}, but torch "
            f"{torch.__version__} is installed. Rebuild them for this torch (pip install --no-build-isolation "
            f"--force-reinstall --no-deps scangraph, or from a checkout: pip install --no-build-isolation .), "
            f"or install torch {info.TORCH_VERSION}.")


check_torch_version()
try:
    from scangraph import _C  # loading it registers the C++ and CUDA kernels

    LOAD_ERROR = None
except ImportError as error:  # a source checkout without a build
    LOAD_ERROR = error


def stable_abi() -> bool:
    """True when the loaded op library is built on the LibTorch stable ABI. Its
    dtype checks raise RuntimeError where the regular build's raise TypeError (csrc/glue/torch_api.h
    says why); the public functions check dtypes first and raise TypeError on both."""
    return LOAD_ERROR is None and getattr(_C, "TORCH_ABI", "regular") == "stable"


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
