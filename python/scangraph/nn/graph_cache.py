"""Turning a layer's graph argument (a PyG edge_index or a CSRGraph) into the CSRGraph the ops take,
once per edge_index rather than once per call.

Building a CSRGraph sorts the edges, and its transpose (needed by every backward) sorts them
again: O(E log E) per call, more than the message passing itself on small graphs. A model calls
its layers with the same edge_index every epoch, so `graph_for` caches each derived graph keyed
on the identity of the edge_index tensor (its id, data_ptr, shape, strides, device and version
counter) plus what was derived from it (self loops, normalisation). Writing into the tensor in
place bumps its version, and a freed tensor fails the weak-reference check, so a stale entry is
never returned. The cache is module-level and small (CACHE_SIZE entries, least recently used
evicted), so the layers of one model share one build. `clear_graph_cache()` empties it.
"""
import collections
import weakref
from typing import Callable, Optional, Union

import torch

from scangraph.distributed.partition import PartitionedGraph
from scangraph.graph import CSRGraph, gcn_norm_weight, subgraph_of_edges, with_self_loops

GraphLike = Union[torch.Tensor, CSRGraph]  # an edge_index, an adj_t sparse matrix, or a CSRGraph

# A few entries cover a training loop's graphs (train / full graph, plus each layer's variant:
# raw, with self loops, normalised) without keeping old graphs alive for long.
CACHE_SIZE = 16

_cache: "collections.OrderedDict" = collections.OrderedDict()


def clear_graph_cache() -> None:
    """Forget every CSRGraph the layers derived from an edge_index or adj_t (frees their memory)."""
    _cache.clear()
    _matrix_graphs.clear()


def _key(tensor: torch.Tensor, extra):
    try:
        version = tensor._version
    except RuntimeError:  # inference tensors have no version counter: do not cache them
        return None
    return (id(tensor), tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), str(tensor.device), version,
            extra)


def cached_on(tensor: torch.Tensor, extra, build: Callable[[], CSRGraph]) -> CSRGraph:
    """build(), cached on the identity of `tensor` (see above) plus `extra` (what the graph is
    built from it: a hashable description)."""
    key = _key(tensor, extra)
    if key is not None and key in _cache:
        ref, cached = _cache[key]
        if ref() is tensor:
            _cache.move_to_end(key)
            return cached
        del _cache[key]
    built = build()
    if key is not None:
        _cache[key] = (weakref.ref(tensor), built)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return built


def graph_for(graph: GraphLike, num_nodes: Optional[int], variant: str,
              build: Callable[[CSRGraph], CSRGraph]) -> CSRGraph:
    """The graph `build(base)` derives from `graph`, where base is `graph` itself (a CSRGraph) or
    the CSRGraph of an edge_index. For an edge_index the result is cached under `variant` (a
    name for what `build` does); a CSRGraph caller owns its graph, so its derived graphs are
    cached on the object itself, as for the CSRGraph of an adj_t matrix."""
    graph = as_graph(graph)
    if isinstance(graph, PartitionedGraph):  # derived from the whole graph, then cut the same way
        return graph if variant == "raw" else graph.derived(variant, build)
    if isinstance(graph, CSRGraph):
        return graph.derived(variant, build)
    if not isinstance(graph, torch.Tensor):
        raise TypeError(f"expected an edge_index tensor (2, num_edges), a scangraph.CSRGraph, or an adjacency "
                        f"adj_t (a torch sparse matrix or a torch_sparse SparseTensor), got {type(graph).__name__}")
    return cached_on(graph, (num_nodes, variant), lambda: _build(graph, num_nodes, variant, build))


def _build(graph: torch.Tensor, num_nodes, variant: str, build: Callable[[CSRGraph], CSRGraph]) -> CSRGraph:
    base = as_csr_of(graph, num_nodes) if variant != "raw" else CSRGraph.from_edge_index(graph, num_nodes=num_nodes)
    return build(base)


def scatter_graph(index: torch.Tensor, num_rows: int) -> CSRGraph:
    """CSRGraph.from_scatter_index, cached. A message-passing layer's index is a view of its
    edge_index (a new view object each call), so the cache keys on the viewed tensor and the
    view's place in it."""
    base = index if index._base is None else index._base
    where = ("scatter", index.dtype, index.storage_offset(), tuple(index.stride()), tuple(index.shape), num_rows)
    return cached_on(base, where, lambda: CSRGraph.from_scatter_index(index, num_rows))


def as_csr(x: torch.Tensor, graph: GraphLike) -> CSRGraph:
    """The CSRGraph of a layer's graph argument as given (no loops added, no weights derived),
    cached; its node count from x where the graph does not say."""
    return as_csr_of(graph, num_nodes_of(x, graph))


def as_csr_of(graph: GraphLike, num_nodes: Optional[int]) -> CSRGraph:
    return graph_for(graph, num_nodes, "raw", lambda g: g)


def num_nodes_of(x: torch.Tensor, graph: GraphLike) -> int:
    """Node count: the graph's own for a CSRGraph or an adj_t matrix, else the rows of x (PyG's default;
    x (batch, N, F) is a batch of feature sets over one graph)."""
    if isinstance(graph, CSRGraph):
        return graph.num_rows
    if isinstance(graph, PartitionedGraph):
        return graph.num_nodes
    if is_matrix(graph):
        return _graph_of_matrix(graph).num_rows
    return x.shape[-2] if x.dim() == 3 else x.shape[0]  # (batch, N, F): a batch over one static graph


# ---- adj_t: PyG's sparse adjacency, row i = target i (its values are the edge weights) --------
_matrix_graphs: dict = {}  # id(matrix) -> (weak reference to it, its CSRGraph)


def as_graph(graph):
    """An adj_t matrix as its CSRGraph; an edge_index or a CSRGraph unchanged."""
    return _graph_of_matrix(graph) if is_matrix(graph) else graph


def is_matrix(graph) -> bool:
    if isinstance(graph, torch.Tensor):
        return graph.layout != torch.strided
    return is_sparse_tensor(graph)


def is_sparse_tensor(graph) -> bool:
    """torch_sparse's SparseTensor (known by its name and csr(): torch_sparse is optional)."""
    return type(graph).__name__ == "SparseTensor" and hasattr(graph, "csr")


def aggregation_graph(x: torch.Tensor, graph: GraphLike) -> CSRGraph:
    """The graph SAGEConv and GINConv aggregate over: as_csr's, as PyG's layers read each form
    of adj_t. A torch sparse matrix's values weigh the messages; a torch_sparse SparseTensor's
    are dropped (PyG's message_and_aggregate sets them to None first)."""
    base = as_csr(x, graph)
    if not is_sparse_tensor(graph) or base.edge_weight is None:
        return base
    return base.derived("unweighted", lambda g: CSRGraph(g.rowptr, g.col, None, num_cols=g.num_cols,
                                                         edge_ids=g.edge_ids, validate=False))


def loop_rule(graph: GraphLike) -> str:
    """How GCN's added self loops meet the loops a graph has, as PyG's gcn_norm does for each form:
    "remaining" for an edge_index or a CSRGraph (add_remaining_self_loops: the missing ones),
    "added" for a torch sparse adj_t (add_self_loops: one more per node, so an existing loop's
    weight and the new one's add up), "replaced" for a SparseTensor (fill_diag: the loops weigh
    the fill value alone)."""
    if is_sparse_tensor(graph):
        return "replaced"
    return "added" if is_matrix(graph) else "remaining"


def _graph_of_matrix(matrix) -> CSRGraph:
    """The CSRGraph of a torch sparse (COO / CSR) or torch_sparse adj_t, built once per matrix
    object: A[i, j] is an edge j -> i weighing A[i, j] (out = A @ x, PyG's adj_t convention)."""
    entry = _matrix_graphs.get(id(matrix))
    if entry is not None and entry[0]() is matrix:
        return entry[1]
    if isinstance(matrix, torch.Tensor):
        graph = CSRGraph.from_sparse(matrix)
    else:
        rowptr, col, value = matrix.csr()
        graph = CSRGraph(rowptr, col, value, num_cols=matrix.sparse_size(1))
    for key in [k for k, (ref, _) in _matrix_graphs.items() if ref() is None]:
        del _matrix_graphs[key]  # matrices freed since
    _matrix_graphs[id(matrix)] = (weakref.ref(matrix), graph)
    return graph


def gcn_graph(graph: GraphLike, num_nodes: int, add_self_loops: bool = True, normalize: bool = True,
              improved: bool = False, dtype: torch.dtype = torch.float32) -> CSRGraph:
    """The (cached, per dtype) graph of a GCN propagation: self loops (loop_rule's, for the form of
    `graph`) and symmetric normalisation as edge weights, computed in fp64 and rounded once to
    `dtype`."""
    rule = loop_rule(graph) if add_self_loops else "none"
    fill = 2.0 if improved else 1.0

    def build(base: CSRGraph) -> CSRGraph:
        if base.edge_weight is None and not normalize and (rule == "none" or (rule == "remaining" and fill == 1.0)):
            return base if rule == "none" else with_self_loops(base, 1.0)  # every edge weighs 1
        weight = torch.ones(base.num_edges, dtype=torch.float64, device=base.device) if base.edge_weight is None \
            else base.edge_weight.double()  # fp64 norms, rounded once to dtype below
        if rule == "added":  # the new loop's weight on an old loop's (with_self_loops keeps that one)
            weight = weight + fill * (base.edge_rows() == base.col)
        base = CSRGraph(base.rowptr, base.col, weight, num_cols=base.num_cols, edge_ids=base.edge_ids,
                        validate=False)
        if rule == "replaced":
            base = subgraph_of_edges(base, base.edge_rows() != base.col)
        if rule != "none":
            base = with_self_loops(base, fill)
        weight = gcn_norm_weight(base, base.edge_weight) if normalize else base.edge_weight
        return CSRGraph(base.rowptr, base.col, weight.to(dtype), num_cols=base.num_cols, edge_ids=base.edge_ids,
                        validate=False)

    return graph_for(graph, num_nodes, f"gcn:{rule}:{normalize}:{improved}:{dtype}", build)
