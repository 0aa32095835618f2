"""Rules that several op families or backends share, written once: the floating dtypes the
kernels take, the dtype they accumulate in, the checks of a tensor argument and of the
packed-sequence offsets (cu_seqlens) of the scans, and the selective scan's checkpoint spacing
and dB / dC partitions.

The C++ glue checks what reaches the raw ops (the Triton ops have no glue: these checks guard
them); its twins in csrc/glue/common_args.h raise the same exception with the same message,
which tests/test_bad_input.py asserts."""
import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: the name the messages use (dtype_name in common_args.h)."""
    return str(dtype).removeprefix("torch.")


def dtype_names(dtypes) -> str:
    """'float64, float32, float16 or bfloat16'."""
    names = [dtype_name(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_tensor(op: str, name: str, t, shape=None, dtypes=FLOAT_DTYPES, like=None, like_name: str = "u") -> None:
    """`name` is a tensor (TypeError), of `shape` when given (ValueError), of one of `dtypes`
    (TypeError) and on the device of `like` when given (ValueError), checked in that order."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be {dtype_names(dtypes)}, got {dtype_name(t.dtype)}")
    if like is not None and t.device != like.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {like_name} is on {like.device}")


# The reductions of the sparse aggregations (spmm, qspmm).
REDUCES = ("sum", "mean", "max", "min")


def check_reduce(op: str, reduce) -> None:
    """reduce is one of REDUCES, else ValueError (check_reduce in csrc/glue/sparse_args.h)."""
    if reduce not in REDUCES:
        raise ValueError(f"{op}: reduce must be 'sum', 'mean', 'max' or 'min', got {reduce!r}")


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
        raise TypeError(f"{op}: cu_seqlens must be int32 (num_seqs + 1 offsets), got {dtype_name(cu_seqlens.dtype)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{op}: cu_seqlens must be 1-D with at least 2 offsets (one sequence), got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != like.device:
        raise ValueError(f"{op}: cu_seqlens is on {cu_seqlens.device} but the inputs are on {like.device}")
    if batch != 1:
        raise ValueError(f"{op}: cu_seqlens packs sequences along L and needs batch == 1, got batch {batch}")
    if length >= 2**31 - 1:
        raise ValueError(f"{op}: cu_seqlens is int32, L = {length} does not fit")
    offsets = cu_seqlens.tolist()  # num_seqs + 1 values: one small read; the kernels index with them
    if offsets[0] != 0 or offsets[-1] != length:
        raise ValueError(f"{op}: cu_seqlens must start at 0 and end at L = {length}, got {offsets}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"{op}: cu_seqlens must not decrease, got {offsets}")
    return len(offsets) - 1
