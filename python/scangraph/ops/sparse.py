"""Sparse message passing over a CSRGraph: spmm (sum | mean | max | min), sddmm, gat_aggregate
and common_neighbor_aggregate.

Each op exists as the C++/CUDA op `scangraph::<op>` (CPU and CUDA kernels under one name) and
as the Triton op `scangraph::<op>_triton`. Both carry a fake kernel (torch.compile, export) and
an autograd formula whose backward calls the same family of ops:
  spmm:  dx = A^T dout  (spmm on the cached transpose: no atomics, deterministic)
         dw = sddmm(A, dout, x)
  sddmm: da = spmm(A, b, weight=dout);  db = spmm(A^T, a, weight=dout[perm])
For reduce="mean", dout is first divided by the in-degree of its row. Max / min run the op
`scangraph::spmm_arg[_triton]`, which also returns the winning edge of every output; its
backward `spmm_arg_backward` routes each gradient to that edge alone (dx on the transpose, dw
per edge), again without atomics. gat_aggregate keeps the row max and denominator of its
online softmax and its backward recomputes the attention (rows for dalpha_dst, the transpose for
dx and dalpha_src). common_neighbor_aggregate lists each pair's common neighbours as a CSR over
pairs (op `common_neighbors`, no gradient) and sums x over it with spmm.
"""
from typing import Optional

import torch

from scangraph import backend as _backend
from scangraph import reference
from scangraph.distributed.partition import PartitionedGraph
from scangraph.graph import CSRGraph
from scangraph.ops import _sparse_lib  # noqa: F401  (importing it registers the ops, their fakes and autograd)
from scangraph.ops._rules import FLOAT_DTYPES, check_reduce, dtype_name, dtype_names


# ---- public functions ------------------------------------------------------------------------
def _check_features(op: str, name: str, t, graph: CSRGraph, rows: int, rows_what: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in (2, 3):
        raise ValueError(f"{op}: {name} must be (nodes, features) or (nodes, heads, features), "
                         f"got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be {dtype_names(FLOAT_DTYPES)}, got {dtype_name(t.dtype)}")
    if t.shape[0] != rows:
        raise ValueError(f"{op}: {name} must have {rows} rows ({rows_what}), got shape "
                         f"{tuple(t.shape)}")
    if t.device != graph.device:
        raise ValueError(f"{op}: {name} is on {t.device} but the graph is on {graph.device}")


def _check_graph(op: str, graph):
    if not isinstance(graph, CSRGraph):
        raise TypeError(f"{op}: graph must be a scangraph.CSRGraph, got {type(graph).__name__} "
                        "(build one with CSRGraph.from_edge_index)")


def _edge_weight(op: str, graph: CSRGraph, edge_weight, x):
    """The weights in CSR order for the kernels: an explicit edge_weight (the caller's edge
    order, checked) gathered through graph.edge_ids, else the graph's own (CSR order) in x's
    dtype, else None."""
    if edge_weight is None:
        return None if graph.edge_weight is None else graph.edge_weight.to(x.dtype)
    heads = x.shape[1] if x.dim() == 3 else 1
    if not isinstance(edge_weight, torch.Tensor) or edge_weight.shape not in ((graph.num_edges,),
                                                                              (graph.num_edges, heads)):
        raise ValueError(f"{op}: edge_weight must be ({graph.num_edges},) or ({graph.num_edges}, {heads}), got "
                         f"{tuple(edge_weight.shape) if isinstance(edge_weight, torch.Tensor) else type(edge_weight).__name__}")
    if edge_weight.dtype != x.dtype or edge_weight.device != x.device:
        raise ValueError(f"{op}: edge_weight must match x in dtype and device ({dtype_name(x.dtype)}, "
                         f"{x.device}), got {dtype_name(edge_weight.dtype)} on {edge_weight.device}")
    return graph.to_csr_order(edge_weight)


def _caller_arg(graph: CSRGraph, arg: torch.Tensor) -> torch.Tensor:
    """The kernels' winners (CSR edge ids, -1 for empty rows) as positions in the caller's edge
    list, num_edges for empty rows (torch_scatter's convention)."""
    arg = arg.to(torch.int64)
    position = arg if graph.edge_ids is None else graph.edge_ids.to(torch.int64)[arg.clamp(min=0)]
    return torch.where(arg < 0, graph.num_edges, position)


def _needs_transpose(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def spmm(graph: CSRGraph, x: torch.Tensor, reduce: str = "sum",
         edge_weight: Optional[torch.Tensor] = None, *, return_arg: bool = False, backend: str = "auto"):
    """Sparse-dense product over a CSR graph: out[i] = reduce_{j in N(i)} w_ij * x[j].

    Args:
        graph: CSRGraph with num_rows destinations and num_cols sources.
        x: (num_cols, F) or (num_cols, heads, F) source features, float64/32/16 or bfloat16.
        reduce: "sum", "mean" (divides by the in-degree), "max" or "min" (elementwise over the
            weighted messages; on ties the first edge in CSR order, i.e. the lowest source id,
            wins and alone receives the gradient). Empty rows give 0 for every reduce.
        edge_weight: (num_edges,) or (num_edges, heads) in the caller's edge order (the order of
            the edge list the graph was built from, as in PyG), dtype of x; defaults to the
            graph's own edge_weight (None: every edge weighs 1).
        return_arg: with "max" / "min", also return the winning edge of every output, as
            torch_scatter's scatter_max / scatter_min do: int64 of the output's shape, the
            edge's position in the caller's edge list; num_edges for empty rows.
        backend: "auto" | "cpp" | "cuda" | "triton" | "reference" (see scangraph.backend).
    Returns:
        (num_rows, [heads,] F) in the dtype of x (accumulated in fp32, fp64 for fp64); with
        return_arg, (out, arg).
    Gradients reach x and edge_weight; the backward is deterministic.

    With a PartitionedGraph (scangraph.distributed), x holds this rank's owned nodes, the halo's
    features come from their owners (halo_exchange), edge_weight is the whole graph's (caller's
    edge order) and the output is this rank's rows.
    """
    if isinstance(graph, PartitionedGraph):
        if return_arg:
            raise ValueError("spmm: return_arg is not supported with a PartitionedGraph (the winners would be "
                             "local edge positions)")
        return spmm(graph.local, graph.exchange(x), reduce, graph.local_edge_tensor(edge_weight), backend=backend)
    _check_graph("spmm", graph)
    _check_features("spmm", "x", x, graph, graph.num_cols, "one per source node of the graph")
    check_reduce("spmm", reduce)
    if return_arg and reduce not in ("max", "min"):
        raise ValueError(f"spmm: return_arg needs reduce 'max' or 'min', got {reduce!r}")
    weight = _edge_weight("spmm", graph, edge_weight, x)
    name = _backend.resolve("spmm", backend, x.device)
    if name == "reference":
        if return_arg:
            out, arg = reference.spmm_arg(graph.rowptr, graph.col, x, reduce, weight)
            return out, _caller_arg(graph, arg)
        return reference.spmm(graph.rowptr, graph.col, x, reduce, weight)
    transpose = graph.transpose_parts() if _needs_transpose(x, weight) else (None, None, None)
    if reduce in ("max", "min"):
        out, arg = _backend.op_for("spmm_arg", name)(graph.rowptr, graph.col, weight, x, reduce, *transpose)
        return (out, _caller_arg(graph, arg)) if return_arg else out
    return _backend.op_for("spmm", name)(graph.rowptr, graph.col, weight, x, reduce, *transpose)


def sddmm(graph: CSRGraph, a: torch.Tensor, b: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Per-edge dot products: out[e] = a[row(e)] . b[col(e)] over the last dimension.

    Args:
        a: (num_rows, F) or (num_rows, heads, F) destination-side features.
        b: (num_cols, F) or (num_cols, heads, F) source-side features, same dtype as a.
    Returns:
        (num_edges,) or (num_edges, heads) in the caller's edge order (the order of the edge
        list the graph was built from, as in PyG). Gradients reach a and b.

    With a PartitionedGraph: a and b hold this rank's owned nodes (b's halo comes from its
    owners), and the output has this rank's edges in its local graph's order (graph.edge_ids
    gives their positions in the caller's edge list).
    """
    if isinstance(graph, PartitionedGraph):
        return sddmm(graph.local, a, graph.exchange(b), backend=backend)
    _check_graph("sddmm", graph)
    _check_features("sddmm", "a", a, graph, graph.num_rows, "one per destination row of the graph")
    _check_features("sddmm", "b", b, graph, graph.num_cols, "one per source node of the graph")
    if a.dtype != b.dtype or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"sddmm: a and b must share dtype and trailing shape, got {dtype_name(a.dtype)} "
                         f"{tuple(a.shape)} and {dtype_name(b.dtype)} {tuple(b.shape)}")
    name = _backend.resolve("sddmm", backend, a.device)
    if name == "reference":
        return graph.to_caller_order(reference.sddmm(graph.rowptr, graph.col, a, b))
    transpose = graph.transpose_parts() if _needs_transpose(a, b) else (None, None, None)
    return graph.to_caller_order(_backend.op_for("sddmm", name)(graph.rowptr, graph.col, a, b, *transpose))


class _RowLogSumExp(torch.autograd.Function):
    """lse[i] = log sum_{e in row i} exp(score[e]), given its value from the kernel's saved row
    max and denominator (max + log denominator): the backward is d lse_i / d score_e = a_e."""

    @staticmethod
    def forward(ctx, score, rows, lse):
        ctx.save_for_backward(score, rows, lse)
        return lse.clone()

    @staticmethod
    def backward(ctx, grad):
        score, rows, lse = ctx.saved_tensors
        attention = torch.exp(score - lse[rows]).nan_to_num(0.0)
        return grad[rows] * attention, None, None


def _attention_from_stats(graph: CSRGraph, alpha_src, alpha_dst, negative_slope, row_max, row_sum):
    """(E, heads) attention coefficients in CSR order from the kernel's row max and denominator:
    a_e = exp(score_e - lse_row) (gradients reach alpha_src and alpha_dst). A row whose scores
    are all -inf has no attention (0), as the kernels weigh it."""
    rows = graph.edge_rows()
    score = torch.nn.functional.leaky_relu(alpha_src[graph.col.long()] + alpha_dst[rows], negative_slope)
    score = score.to(row_max.dtype)
    lse = _RowLogSumExp.apply(score, rows, row_max + torch.log(row_sum))
    attention = torch.exp(score - lse[rows])
    return torch.where(score == float("-inf"), 0.0, attention).to(alpha_src.dtype)


def gat_aggregate(graph: CSRGraph, x: torch.Tensor, alpha_src: torch.Tensor, alpha_dst: torch.Tensor,
                  negative_slope: float = 0.2, dropout: float = 0.0, *, generator: Optional[torch.Generator] = None,
                  return_attention_weights: bool = False, backend: str = "auto"):
    """GAT attention aggregation in one pass (Velickovic et al. 2018, PyG's GATConv formula):
    out[i] = sum_{j -> i} m_ij / (1 - p) a_ij x[j] per head, with
    a_ij = softmax_j(leaky_relu(alpha_src[j] + alpha_dst[i])).

    Args:
        x: (num_cols, heads, F) source features, or (num_cols, F) for one head.
        alpha_src: (num_cols, heads) (or (num_cols,)) source attention logits.
        alpha_dst: (num_rows, heads) (or (num_rows,)) destination attention logits.
        dropout: p, dropout on the attention coefficients (PyG's GATConv in training): m_ij is
            Bernoulli(1 - p) per (edge, head), the softmax's denominator keeps every edge. The
            mask comes from Philox keyed by (seed, offset), two int64 drawn from `generator`
            (torch's default generator of x's device if None) at each call, so two calls draw two
            masks, torch.manual_seed repeats them, and a CUDA graph replays a new draw each time
            (a CPU generator with CUDA x copies its draw to the GPU: not capturable).
            The backward regenerates the mask (nothing of size E is kept). Every backend draws
            the same mask for the same generator state (docs/sparse.md, "Attention dropout").
            p = 0 draws nothing and gives exactly the result without dropout.
        return_attention_weights: also return a (E, heads) (or (E,)) in the caller's edge order
            (before dropout, as PyG returns them), computed from the kernel's row max and
            denominator; gradients reach alpha_src and alpha_dst.
    Returns:
        (num_rows, heads, F) (or (num_rows, F)); rows without edges give 0. With
        return_attention_weights, (out, attention). The softmax runs online (FlashAttention's
        rescaling over each neighbour list); no (E, heads) tensor is kept for backward: it keeps
        the per-row max and denominator and recomputes the weights. Gradients reach x, alpha_src
        and alpha_dst, deterministically.

    With a PartitionedGraph: x, alpha_src and alpha_dst hold this rank's owned nodes (the halo's
    x and alpha_src come from their owners); attention weights are in the local graph's edge
    order, and the dropout mask is drawn per local edge (a valid dropout, not the bits a single
    process would draw).
    """
    if isinstance(graph, PartitionedGraph):
        return gat_aggregate(graph.local, graph.exchange(x), graph.exchange(alpha_src), alpha_dst, negative_slope,
                             dropout, generator=generator, return_attention_weights=return_attention_weights,
                             backend=backend)
    _check_graph("gat_aggregate", graph)
    _check_features("gat_aggregate", "x", x, graph, graph.num_cols, "one per source node of the graph")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
        raise ValueError(f"gat_aggregate: dropout must be a probability in [0, 1], got {dropout!r}")
    single_head = x.dim() == 2
    heads = 1 if single_head else x.shape[1]
    expected = {"alpha_src": (graph.num_cols,), "alpha_dst": (graph.num_rows,)}
    for name, alpha in (("alpha_src", alpha_src), ("alpha_dst", alpha_dst)):
        shape = expected[name] + (() if single_head else (heads,))
        if not isinstance(alpha, torch.Tensor) or tuple(alpha.shape) != shape:
            raise ValueError(f"gat_aggregate: {name} must have shape {shape}, got "
                             f"{tuple(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__}")
        if alpha.dtype != x.dtype or alpha.device != x.device:
            raise ValueError(f"gat_aggregate: {name} must match x in dtype and device ({x.dtype}, {x.device}), "
                             f"got {alpha.dtype} on {alpha.device}")
    if single_head:
        x, alpha_src, alpha_dst = x.unsqueeze(1), alpha_src.unsqueeze(1), alpha_dst.unsqueeze(1)
    dropout = float(dropout)
    rng = None
    if dropout > 0:  # (seed, offset) drawn on the generator's device, read by the kernels on x's
        device = x.device if generator is None else generator.device
        rng = torch.empty(2, dtype=torch.int64, device=device).random_(generator=generator).to(x.device)
    name = _backend.resolve("gat_aggregate", backend, x.device)
    if name == "reference":
        out = reference.gat_aggregate(graph.rowptr, graph.col, x, alpha_src, alpha_dst, negative_slope, dropout, rng)
        attention = reference.gat_attention(graph.rowptr, graph.col, alpha_src, alpha_dst, negative_slope) \
            if return_attention_weights else None
    else:
        transpose = (graph.transpose_parts() if _needs_transpose(x, alpha_src, alpha_dst)
                     else (None, None, None))
        out, row_max, row_sum = _backend.op_for("gat_aggregate", name)(
            graph.rowptr, graph.col, x, alpha_src, alpha_dst, float(negative_slope), *transpose, dropout, rng)
        attention = _attention_from_stats(graph, alpha_src, alpha_dst, negative_slope, row_max, row_sum) \
            if return_attention_weights else None
    out = out.squeeze(1) if single_head else out
    if not return_attention_weights:
        return out
    attention = graph.to_caller_order(attention)
    return out, attention.squeeze(1) if single_head else attention


def common_neighbor_aggregate(graph: CSRGraph, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                              *, backend: str = "auto") -> torch.Tensor:
    """out[q] = sum of x[k] over the common neighbours k of src[q] and dst[q] (Neural Common
    Neighbor, Wang et al. 2024). Neighbours are the columns of a node's CSR row; both rows are
    sorted, so a merge walks them in deg(src) + deg(dst).

    The pairs' intersections come from the op `common_neighbors` as a CSR over pairs, and the
    sum is spmm over it: its backward (dx_k = sum of dout over the pairs whose intersection holds
    k) runs on that CSR's transpose, deterministic.

    Args:
        graph: a square CSRGraph with sorted rows (as from_edge_index builds).
        x: (num_nodes, F) or (num_nodes, heads, F). src, dst: (P,) int64 node ids.
    Returns:
        (P, [heads,] F). Gradients reach x.
    """
    op_name = "common_neighbor_aggregate"
    _check_graph(op_name, graph)
    if graph.num_rows != graph.num_cols:
        raise ValueError(f"{op_name}: the graph must be square, got {graph.num_rows} x {graph.num_cols}")
    _check_features(op_name, "x", x, graph, graph.num_cols, "one per node of the graph")
    for name, ids in (("src", src), ("dst", dst)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype != torch.int64:
            raise ValueError(f"{op_name}: {name} must be a 1-D int64 tensor")
        if ids.device != graph.device:
            raise ValueError(f"{op_name}: {name} is on {ids.device} but the graph is on {graph.device}")
        message = f"{op_name}: {name} holds node ids outside [0, {graph.num_rows})"
        if torch.compiler.is_compiling():
            # Traced, a host read of the ids would be a data-dependent branch: the check runs as
            # an async assert in the graph (and the kernels read nothing for such a pair).
            torch._assert_async(((ids >= 0) & (ids < graph.num_rows)).all(), message)
        elif ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= graph.num_rows):
            raise ValueError(message)
    if src.shape != dst.shape:
        raise ValueError(f"{op_name}: src and dst must have one length, got {tuple(src.shape)} and {tuple(dst.shape)}")
    if not torch.compiler.is_compiling() and not graph.rows_sorted():
        raise ValueError(f"{op_name}: the graph's columns must ascend within each row "
                         "(CSRGraph.from_edge_index builds it so)")
    name = _backend.resolve("common_neighbors", backend, x.device)
    if name == "reference":
        return reference.common_neighbor_aggregate(graph.rowptr, graph.col, x, src, dst)
    ptr, neighbors = _backend.op_for("common_neighbors", name)(graph.rowptr, graph.col, src.contiguous(), dst.contiguous())
    pairs = CSRGraph(ptr, neighbors, num_cols=graph.num_rows, validate=False)
    return spmm(pairs, x, "sum", backend=name)
