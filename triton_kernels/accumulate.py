"""The Triton dtype the kernels accumulate in: scangraph.ops._rules.opmath_dtype as a tl type."""
import torch
import triton.language as tl

from scangraph.ops._rules import opmath_dtype


def accumulator(dtype: torch.dtype):
    return tl.float64 if opmath_dtype(dtype) == torch.float64 else tl.float32
