"""Dropout inside Triton kernels: the bit layout of csrc/include/scangraph/philox.h (Philox4x32-10
keyed by the seed, counter (n, offset), word 0, kept when its top 24 bits reach floor(p * 2^24 + 1/2)),
so a Triton kernel's mask equals the CPU and CUDA kernels' element for element."""
import triton
import triton.language as tl


@triton.jit
def dropout_factor(rng_ptr, n, threshold, scale):
    """scale where element n (an int64 block) is kept, else 0; (seed, offset) are read from
    rng_ptr (drawn from torch's generator by the caller)."""
    seed = tl.load(rng_ptr)
    offset = tl.load(rng_ptr + 1)
    c0 = (n & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((n >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zeros = tl.zeros_like(c0)
    c2 = zeros + (offset & 0xFFFFFFFF).to(tl.uint32)
    c3 = zeros + ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    word0, _, _, _ = tl.philox(seed, c0, c1, c2, c3)
    return tl.where((word0 >> 8).to(tl.int32) >= threshold, scale, 0.0)


def dropout_threshold(p: float) -> int:
    """Kept when the 24 random bits are >= floor(p * 2^24 + 1/2)."""
    return int(p * (1 << 24) + 0.5)  # rounded half up, as philox.h computes it


def dropout_scale(p: float) -> float:
    """What a kept element is multiplied by: 1 / (1 - p); 0 for p = 1 (nothing is kept)."""
    return 1.0 / (1.0 - p) if p < 1 else 0.0
