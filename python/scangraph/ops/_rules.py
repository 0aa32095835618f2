"""Rules that several op families or backends share, written once: the floating dtypes the
kernels take, the dtype they accumulate in, the packed-sequence offsets (cu_seqlens) of the
scans, and the selective scan's checkpoint spacing and dB / dC partitions."""
import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels accumulate in float32, or in float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Scan positions between two checkpoints of the selective scan (kScanChunk of
# csrc/include/scangraph/selective_scan_params.h): the forward's saved states, every backend's.
SCAN_CHUNK = 64


def scan_partitions(channels_per_group: int) -> int:
    """scan_partitions of selective_scan_params.h: the partitions of a group's channels, each
    owning a partial of varying dB / dC, a function of the shape alone (1 to 16)."""
    return min(max(channels_per_group // SCAN_CHUNK, 1), 16)


def check_cu_seqlens(op: str, cu_seqlens, like: torch.Tensor, batch: int, length: int) -> int:
    """cu_seqlens packs sequences along L of a batch of one: an int32 (num_seqs + 1,) tensor on
    like's device, 0 first, L last, never decreasing. Returns num_seqs. A wrong type or dtype
    raises TypeError, a wrong shape or value ValueError."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{op}: cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"{op}: cu_seqlens must be int32 (num_seqs + 1 offsets), got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{op}: cu_seqlens must be 1-D with at least 2 offsets (one sequence), got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != like.device:
        raise ValueError(f"{op}: cu_seqlens is on {cu_seqlens.device} but the inputs are on {like.device}")
    if batch != 1:
        raise ValueError(f"{op}: cu_seqlens packs sequences along L and needs batch == 1, got batch {batch}")
    offsets = cu_seqlens.tolist()  # num_seqs + 1 values: one small read; the kernels index with them
    if offsets[0] != 0 or offsets[-1] != length:
        raise ValueError(f"{op}: cu_seqlens must start at 0 and end at L = {length}, got {offsets}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"{op}: cu_seqlens must not decrease, got {offsets}")
    return len(offsets) - 1
