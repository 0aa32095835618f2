"""Plain-PyTorch references of every op: the tests' oracle (run them in float64).

Written for clarity, not speed: each follows the formula of ../shared/ALGORITHMS.md directly
and gets its gradients from autograd.
"""
from typing import Optional

import torch


def _edge_rows(rowptr: torch.Tensor) -> torch.Tensor:
    """Destination row of every CSR edge."""
    degree = rowptr[1:] - rowptr[:-1]
    return torch.repeat_interleave(torch.arange(degree.numel(), device=rowptr.device), degree)


def _broadcast_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(E,) or (E, heads) weights shaped to multiply gathered (E, [heads,] F) features."""
    return weight.reshape(weight.shape + (1,) * (x.dim() - weight.dim()))


def spmm(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, reduce: str = "sum",
         edge_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[i] = sum (or mean) over edges e of row i of w[e] * x[col[e]]; empty rows give 0."""
    rows = _edge_rows(rowptr)
    messages = x[col.long()]
    if edge_weight is not None:
        messages = messages * _broadcast_weight(edge_weight, messages)
    out = torch.zeros((rowptr.numel() - 1,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    out = out.index_add(0, rows, messages)
    if reduce == "mean":
        degree = (rowptr[1:] - rowptr[:-1]).clamp(min=1).to(x.dtype)
        out = out / degree.reshape((-1,) + (1,) * (x.dim() - 1))
    elif reduce != "sum":
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return out


def sddmm(rowptr: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out[e] = a[row(e)] . b[col[e]] over the last dimension: (E,) or (E, heads)."""
    return (a[_edge_rows(rowptr)] * b[col.long()]).sum(-1)
