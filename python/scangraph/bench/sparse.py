"""Benchmark cases of the sparse family: spmm sum and max, GAT aggregation and common
neighbours, forward and forward + backward.

Baselines are what a user would write otherwise: torch.sparse.mm on a CSR tensor, PyG's
scatter path (index_select of source rows, then scatter_add into destinations), and our
plain-PyTorch reference; for max, PyG's scatter(reduce="max") path (index_select, then
scatter_reduce "amax"). Bytes are the compulsory traffic of docs/sparse.md: rowptr,
col, x read once, out written once (the backward traverses the transpose the same way).
"""
import os
import warnings
from typing import Callable

import torch

import scangraph
from scangraph import CSRGraph, datasets, reference
from scangraph.bench.case import Case, Options, our_backends

OPS = ("spmm_sum", "spmm_max", "gat_aggregate", "common_neighbors")


def bench_graphs(data_dir, quick: bool, only=None, large: bool = False, names=None):
    """(name, edge_index, num_nodes): real heavy-tailed graphs when the data folder is there,
    R-MAT graphs of similar shape otherwise (the embedded default); with `large`, also an
    R-MAT graph of 1M nodes and 16M edges (its baselines gather E x F values: 8 GB at F = 128).
    `only` (one name) and `names` (a collection) narrow the choice."""
    wanted = (lambda name: (only is None or name == only) and (names is None or name in names))
    if quick:
        if wanted("karate"):
            yield ("karate", *datasets.karate())
        if wanted("rmat-4k"):
            yield ("rmat-4k", *datasets.rmat(4096, 40_000, seed=1))
        return
    found = False
    for name in ("email-Enron", "as-22july06"):
        path = None if data_dir is None else os.path.join(data_dir, "graphs", f"{name}.npz")
        if path and os.path.exists(path):
            found = True
            if wanted(name):
                yield (name, *datasets.load_graph(path))
    if not found and wanted("rmat-64k"):
        yield ("rmat-64k", *datasets.rmat(65_536, 700_000, seed=1))
    if large and wanted("rmat-1m"):
        yield ("rmat-1m", *datasets.rmat(1 << 20, 16_000_000, seed=1, dedupe=False))


def _label(graph_name: str, f: int) -> str:
    return f"{graph_name} F={f}"


def _columns(graph_name: str, graph: CSRGraph, f: int, gathered_fwd: int) -> dict:
    # gathered: bytes if every gathered source row came from memory (an upper bound of traffic)
    return {"graph": graph_name, "nodes": graph.num_rows, "edges": graph.num_edges, "F": f,
            "gathered_bytes": gathered_fwd}


def _fwd_bwd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor):
    def run():
        x.grad = None
        forward(x).backward(grad)
    return run


def _csr_bytes(graph: CSRGraph) -> int:
    """Compulsory bytes of reading a graph once: rowptr and col."""
    return 8 * (graph.num_rows + 1) + graph.col.element_size() * graph.num_edges


def _feature_case(op: str, name: str, graph: CSRGraph, f: int, dtype: torch.dtype, device: torch.device,
                  bytes_fwd: int, gathered_fwd: int, grad_rows: int):
    """A case whose implementations all map one (num_cols, f) input x to (grad_rows, f): returns
    the case and add(impl, forward), which times forward(x) and its backward with one gradient."""
    x = torch.randn(graph.num_cols, f, dtype=dtype, device=device)
    grad = torch.randn(grad_rows, f, dtype=dtype, device=device)
    xg = x.clone().requires_grad_()
    case = Case(op=op, label=_label(name, f), dtype=dtype, device=device, bytes_fwd=bytes_fwd,
                columns=_columns(name, graph, f, gathered_fwd))

    def add(impl, forward):
        case.impls[impl] = {"fwd": lambda: forward(x), "fwd+bwd": _fwd_bwd(forward, xg, grad)}
    return case, add


def _spmm_case(name: str, graph: CSRGraph, f: int, dtype: torch.dtype, device: torch.device, options: Options) -> Case:
    """One (graph, F) case; a function of its own so every closure binds this case's tensors."""
    element = torch.empty((), dtype=dtype).element_size()
    src, dst = graph.to_edge_index()
    ones = torch.ones(graph.num_edges, dtype=dtype, device=device)
    with warnings.catch_warnings():  # torch flags its CSR tensors as beta; the baseline is what it is
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(graph.rowptr, graph.col, ones, (graph.num_rows, graph.num_cols))
    index = dst.view(-1, 1).expand(-1, f)
    case, add = _feature_case(
        "spmm_sum", name, graph, f, dtype, device,
        bytes_fwd=_csr_bytes(graph) + element * f * (graph.num_cols + graph.num_rows),
        gathered_fwd=element * f * graph.num_edges, grad_rows=graph.num_rows)
    for backend in our_backends("spmm", device, options):
        add(f"scangraph.{backend}", lambda t, b=backend: scangraph.spmm(graph, t, "sum", backend=b))
    add("torch.sparse.mm", lambda t: torch.sparse.mm(matrix, t))
    add("pyg_scatter", lambda t: torch.zeros(graph.num_rows, f, dtype=t.dtype, device=t.device)
        .scatter_add(0, index, t.index_select(0, src)))
    add("reference", lambda t: reference.spmm(graph.rowptr, graph.col, t, "sum"))
    return case


def _spmm_max_case(name: str, graph: CSRGraph, f: int, dtype: torch.dtype, device: torch.device, options: Options) -> Case:
    element = torch.empty((), dtype=dtype).element_size()
    src, dst = graph.to_edge_index()
    index = dst.view(-1, 1).expand(-1, f)
    case, add = _feature_case(
        "spmm_max", name, graph, f, dtype, device,
        # out and the int64 arg written, besides what sum moves
        bytes_fwd=_csr_bytes(graph) + element * f * (graph.num_cols + graph.num_rows) + 8 * f * graph.num_rows,
        gathered_fwd=element * f * graph.num_edges, grad_rows=graph.num_rows)
    for backend in our_backends("spmm", device, options):
        add(f"scangraph.{backend}", lambda t, b=backend: scangraph.spmm(graph, t, "max", backend=b))
    add("pyg_scatter", lambda t: torch.zeros(graph.num_rows, f, dtype=t.dtype, device=t.device)
        .scatter_reduce(0, index, t.index_select(0, src), "amax", include_self=False))
    return case


def _gat_case(name: str, graph: CSRGraph, f: int, dtype: torch.dtype, device: torch.device, options: Options, heads: int = 4) -> Case:
    """GAT aggregation, F features split over `heads` heads, against PyG's GATConv propagate
    formula written out in torch (gather logits per edge, scatter softmax, scatter_add)."""
    element = torch.empty((), dtype=dtype).element_size()
    src, dst = graph.to_edge_index()
    per_head = max(1, f // heads)
    x = torch.randn(graph.num_cols, heads, per_head, dtype=dtype, device=device)
    a_src = torch.randn(graph.num_cols, heads, dtype=dtype, device=device)
    a_dst = torch.randn(graph.num_rows, heads, dtype=dtype, device=device)
    grad = torch.randn(graph.num_rows, heads, per_head, dtype=dtype, device=device)
    inputs = [t.clone().requires_grad_() for t in (x, a_src, a_dst)]
    index = dst.view(-1, 1).expand(-1, heads)

    def pyg(x, a_src, a_dst):
        logits = torch.nn.functional.leaky_relu(a_src.index_select(0, src) + a_dst.index_select(0, dst), 0.2)
        row_max = torch.full((graph.num_rows, heads), float("-inf"), dtype=dtype, device=device).scatter_reduce(
            0, index, logits.detach(), "amax")
        weights = (logits - row_max.index_select(0, dst)).exp()
        denominator = torch.zeros(graph.num_rows, heads, dtype=dtype, device=device).scatter_add(0, index, weights)
        attention = weights / denominator.index_select(0, dst)
        messages = x.index_select(0, src) * attention[..., None]
        return torch.zeros(graph.num_rows, heads, per_head, dtype=dtype, device=device).index_add(0, dst, messages)

    case = Case(
        op="gat_aggregate", label=_label(name, f), dtype=dtype, device=device,
        columns=_columns(name, graph, heads * per_head, element * heads * per_head * graph.num_edges),
        bytes_fwd=_csr_bytes(graph) + element * heads * (per_head * (graph.num_cols + graph.num_rows) + graph.num_cols + graph.num_rows))

    def add(impl, forward):
        def fwd_bwd():
            for t in inputs:
                t.grad = None
            forward(*inputs).backward(grad)
        case.impls[impl] = {"fwd": lambda: forward(x, a_src, a_dst), "fwd+bwd": fwd_bwd}

    for backend in our_backends("gat_aggregate", device, options):
        add(f"scangraph.{backend}", lambda *t, b=backend: scangraph.gat_aggregate(graph, *t, backend=b))
    add("pyg_gat_propagate", pyg)
    return case


def coo_adjacency(graph: CSRGraph, dtype: torch.dtype) -> torch.Tensor:
    """The graph as a coalesced torch sparse COO matrix of ones, A[i, j] for an edge j -> i."""
    with warnings.catch_warnings():  # torch's invariant-check notice about sparse tensors
        warnings.simplefilter("ignore", UserWarning)
        src, dst = graph.to_edge_index()
        return torch.sparse_coo_tensor(torch.stack([dst, src]), torch.ones(graph.num_edges, dtype=dtype, device=graph.device),
                                       (graph.num_rows, graph.num_cols)).coalesce()


def sparse_product_common_neighbors(adjacency: torch.Tensor, x: torch.Tensor, src: torch.Tensor,
                                    dst: torch.Tensor) -> torch.Tensor:
    """The baseline of common_neighbor_aggregate: (A[src] ∘ A[dst]) @ x with torch.sparse."""
    return torch.sparse.mm(adjacency.index_select(0, src) * adjacency.index_select(0, dst), x)


def _common_neighbor_case(name: str, graph: CSRGraph, f: int, dtype: torch.dtype, device: torch.device,
                          options: Options) -> Case:
    """Common-neighbour sums of target edges (the link-prediction setting of NCN) against the
    sparse-product formulation: rows of A for both endpoints multiplied, then A_pairs @ x. 20 000
    pairs, 2 000 in a quick run (the sparse product took 0.45 s a call on 20 000 rmat-4k pairs)."""
    num_pairs = 2_000 if options.quick else 20_000
    generator = torch.Generator().manual_seed(0)
    picked = torch.randint(0, max(graph.num_edges, 1), (min(num_pairs, graph.num_edges),), generator=generator)
    src_all, dst_all = graph.to_edge_index()
    src, dst = src_all[picked.to(device)], dst_all[picked.to(device)]
    adjacency = coo_adjacency(graph, dtype)
    element = torch.empty((), dtype=dtype).element_size()
    case, add = _feature_case(
        "common_neighbors", name, graph, f, dtype, device,
        bytes_fwd=_csr_bytes(graph) + 16 * src.numel() + element * f * (graph.num_cols + src.numel()),
        gathered_fwd=0, grad_rows=src.numel())
    for backend in our_backends("common_neighbors", device, options):
        add(f"scangraph.{backend}",
            lambda t, b=backend: scangraph.common_neighbor_aggregate(graph, t, src, dst, backend=b))
    add("sparse_product", lambda t: sparse_product_common_neighbors(adjacency, t, src, dst))
    return case


def cases(device: torch.device, dtype: torch.dtype, options: Options):
    """The cases of the sparse family that options.ops names, for every graph and F."""
    ops = [op for op in OPS if op in options.ops]
    if not ops:
        return
    only_graph = None if options.only is None else options.only.rsplit(" F=", 1)[0]
    features = options.features or ([32, 128] if options.full or options.quick else [128])
    graphs = list(bench_graphs(options.data_dir, options.quick, only_graph, options.large, options.graphs))
    if not (options.full or options.quick or options.graphs or options.only):
        graphs = graphs[:1]  # the headline: the first real graph (email-Enron), else its R-MAT stand-in
    for name, edge_index, num_nodes in graphs:
        graph = CSRGraph.from_edge_index(edge_index, num_nodes).to(device)
        graph.transpose_parts()  # cached once, as in training
        for f in features:
            if options.only is not None and _label(name, f) != options.only:
                continue
            if "spmm_sum" in ops:
                yield _spmm_case(name, graph, f, dtype, device, options)
            if "spmm_max" in ops:
                yield _spmm_max_case(name, graph, f, dtype, device, options)
            if "gat_aggregate" in ops:
                yield _gat_case(name, graph, f, dtype, device, options)
            if "common_neighbors" in ops:
                yield _common_neighbor_case(name, graph, f, dtype, device, options)
