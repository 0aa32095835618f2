"""Triton kernels of scangraph, installed as scangraph.triton_kernels.

Triton is optional: without it, or with a triton or torch too old for these kernels, UNAVAILABLE
says why and the "triton" backend raises a clear error (the C++ and CUDA kernels run as ever). On CPU tensors the kernels run
in Triton's interpreter, which needs TRITON_INTERPRET=1 in the environment before triton is first
imported.
"""
import os
import re

import torch

try:
    import triton  # noqa: F401

    IMPORT_ERROR = None
except ImportError as error:
    IMPORT_ERROR = error

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _major_minor(version: str):
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def interpreter_problem(triton_version: str, numpy_version: str):
    """None when Triton's interpreter runs under this numpy, else why not and the fix. Triton 3.6
    and older index with int() of a one-element array, an error since numpy 2.4; 3.7 fixed it."""
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (f"the interpreter of triton {triton_version} fails under numpy {numpy_version} (int() of a "
                "one-element array, refused since numpy 2.4): install 'numpy<2.4' or triton >= 3.7")
    return None


if IMPORT_ERROR is not None:
    UNAVAILABLE = f"triton could not be imported ({IMPORT_ERROR}); install it with `pip install triton`"
elif _major_minor(triton.__version__) < (3, 4):
    # Triton 3.2 and 3.3 flip only a tile's last dimension; the selective scan's backward flips
    # its (positions, states) tile along the positions. torch >= 2.8 brings triton >= 3.4.
    UNAVAILABLE = (f"triton {triton.__version__} is older than 3.4, the first whose tl.flip reverses any "
                   "dimension of a tile (the selective scan's backward needs it); torch >= 2.8 brings it")
elif not hasattr(torch.library, "triton_op"):
    UNAVAILABLE = (f"torch {torch.__version__} has no torch.library.triton_op, which makes the Triton kernels "
                   "torch ops (torch >= 2.6 has it)")
elif INTERPRETED:
    import numpy

    UNAVAILABLE = interpreter_problem(triton.__version__, numpy.__version__)
else:
    UNAVAILABLE = None


def wrap_triton(kernel):
    """torch.library.wrap_triton, also for the interpreter's kernels. Under TRITON_INTERPRET=1,
    @triton.jit gives an InterpretedFunction, which torch before 2.13 refuses ("wrap_triton only
    works on functions annotated with triton.jit") and torch 2.13 returns as it is, to be launched
    eagerly: that is done here for every torch."""
    if INTERPRETED and type(kernel).__name__ == "InterpretedFunction":
        return kernel
    return torch.library.wrap_triton(kernel)


# Warps that fill the GPU the launch rules aim at: SMs x 64, the most warps an SM holds (132 x 64
# on an H100 / H200), as cuda_target_warps() of the CUDA launchers. A launch with fewer programs
# than this cuts the scan order into segments (selective_scan.scan_segments,
# prefix_attention.segment_length).
TARGET_WARPS = 132 * 64
