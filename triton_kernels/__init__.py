"""Triton kernels of scangraph, installed as scangraph.triton_kernels.

Triton is optional: without it, IMPORT_ERROR says why and the "triton" backend raises a clear
error. On CPU tensors the kernels run in Triton's interpreter, which needs TRITON_INTERPRET=1 in
the environment before triton is first imported.
"""
import os

try:
    import triton  # noqa: F401

    IMPORT_ERROR = None
except ImportError as error:
    IMPORT_ERROR = error

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Warps that fill the GPU the launch rules aim at: SMs x 64, the most warps an SM holds (132 x 64
# on an H100 / H200), as cuda_target_warps() of the CUDA launchers. A launch with fewer programs
# than this cuts the scan order into segments (selective_scan.scan_segments,
# prefix_attention.segment_length).
TARGET_WARPS = 132 * 64
