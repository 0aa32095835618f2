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
