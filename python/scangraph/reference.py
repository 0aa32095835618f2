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
    if reduce in ("max", "min"):
        return _extreme(rows, messages, rowptr.numel() - 1, reduce)
    out = torch.zeros((rowptr.numel() - 1,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    out = out.index_add(0, rows, messages)
    if reduce == "mean":
        degree = (rowptr[1:] - rowptr[:-1]).clamp(min=1).to(x.dtype)
        out = out / degree.reshape((-1,) + (1,) * (x.dim() - 1))
    elif reduce != "sum":
        raise ValueError(f"reduce must be 'sum', 'mean', 'max' or 'min', got {reduce!r}")
    return out


def spmm_arg(rowptr, col, x, reduce, edge_weight=None):
    """(out, arg) of max / min spmm: arg is the winning edge id, -1 for empty rows."""
    rows = _edge_rows(rowptr)
    messages = x[col.long()]
    if edge_weight is not None:
        messages = messages * _broadcast_weight(edge_weight, messages)
    return _extreme(rows, messages, rowptr.numel() - 1, reduce, with_arg=True)


def _extreme(rows, messages, num_rows, reduce, with_arg=False):
    """Max / min of messages per row; the winner is the first edge in CSR order on ties, and
    only the winner receives gradient. Empty rows give 0."""
    num_edges = messages.shape[0]
    shape = (num_rows,) + tuple(messages.shape[1:])
    index = rows.reshape((-1,) + (1,) * (messages.dim() - 1)).expand_as(messages)
    start = float("-inf") if reduce == "max" else float("inf")
    best = torch.full(shape, start, dtype=messages.dtype, device=messages.device).scatter_reduce(
        0, index, messages.detach(), "amax" if reduce == "max" else "amin")
    edge_ids = torch.arange(num_edges, device=messages.device).reshape(index.shape[:1] + (1,) * (messages.dim() - 1))
    candidates = torch.where(messages.detach() == best[rows], edge_ids.expand_as(messages), num_edges)
    arg = torch.full(shape, num_edges, device=messages.device).scatter_reduce(0, index, candidates, "amin")
    # A zero row appended to the messages serves empty rows (arg == num_edges) and keeps
    # autograd connected on graphs without edges.
    padded = torch.cat([messages, messages.new_zeros((1,) + tuple(messages.shape[1:]))])
    out = padded.gather(0, arg)
    if with_arg:
        return out, torch.where(arg == num_edges, -1, arg)
    return out


def sddmm(rowptr: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out[e] = a[row(e)] . b[col[e]] over the last dimension: (E,) or (E, heads)."""
    return (a[_edge_rows(rowptr)] * b[col.long()]).sum(-1)


def gat_aggregate(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, alpha_src: torch.Tensor,
                  alpha_dst: torch.Tensor, negative_slope: float = 0.2) -> torch.Tensor:
    """out[i] = sum_j softmax_j(leaky_relu(alpha_src[j] + alpha_dst[i])) x[j] per head, with
    x (N, heads, F) and alpha (N, heads); the (E, heads) scores are materialised."""
    rows, cols = _edge_rows(rowptr), col.long()
    num_rows = rowptr.numel() - 1
    scores = torch.nn.functional.leaky_relu(alpha_src[cols] + alpha_dst[rows], negative_slope)
    index = rows[:, None].expand_as(scores)
    row_max = torch.full((num_rows, scores.shape[1]), float("-inf"), dtype=scores.dtype,
                         device=scores.device).scatter_reduce(0, index, scores.detach(), "amax")
    weights = torch.exp(scores - row_max[rows])
    denominator = torch.zeros_like(row_max).index_add(0, rows, weights)
    attention = weights / denominator[rows]
    out = torch.zeros((num_rows,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    return out.index_add(0, rows, attention[..., None] * x[cols])


def common_neighbor_aggregate(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, src: torch.Tensor,
                              dst: torch.Tensor) -> torch.Tensor:
    """out[q] = sum of x[k] over k in N(src[q]) and N(dst[q]) (rows of the CSR; a column repeated
    in both rows counts min(times in one, times in the other)); dense multiplicities, small graphs."""
    num_nodes = rowptr.numel() - 1
    counts = torch.zeros(num_nodes, x.shape[0], dtype=x.dtype, device=x.device)
    counts.index_put_((_edge_rows(rowptr), col.long()), torch.ones_like(col, dtype=x.dtype), accumulate=True)
    weights = torch.minimum(counts[src], counts[dst])
    return (weights @ x.flatten(1)).reshape((src.numel(),) + tuple(x.shape[1:]))
