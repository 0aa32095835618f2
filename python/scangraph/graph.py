"""CSRGraph: a graph in compressed sparse rows, the input of every sparse op.

Row i is a destination node and col[rowptr[i]:rowptr[i+1]] are its sources (PyG's
"source_to_target" flow: edge_index[0] holds sources, edge_index[1] targets). Columns are sorted
within each row.

Edge order: per-edge tensors that users pass to and get from the ops (edge_weight, sddmm's
output) follow the caller's edge order, the order of the edge list the graph was built from, as
in PyG and DGL. `edge_ids` maps each CSR edge to its position in that list (None: the graph was
built from CSR parts, whose order it is); to_csr_order / to_caller_order move a per-edge tensor
between the two. The graph's own `edge_weight` attribute is kept in CSR order.
"""
from typing import Optional

import torch
from torch.utils import _pytree as pytree


def csr_transpose(rowptr: torch.Tensor, col: torch.Tensor, num_cols: int):
    """(rowptr_t, col_t, perm) of the transpose; perm[k] is the original id of edge k of the
    transpose. Deterministic on every device: a stable sort, no atomics."""
    num_edges = col.numel()
    edge_row = torch.searchsorted(
        rowptr, torch.arange(num_edges, device=col.device, dtype=rowptr.dtype), right=True) - 1
    sorted_col, perm = torch.sort(col.to(torch.int64), stable=True)
    rowptr_t = torch.searchsorted(
        sorted_col, torch.arange(num_cols + 1, device=col.device, dtype=torch.int64))
    col_t = edge_row[perm].to(col.dtype)
    return rowptr_t, col_t, perm


def validate_csr(rowptr: torch.Tensor, col: torch.Tensor, num_cols: int) -> None:
    """Raises ValueError unless rowptr/col describe a valid CSR graph with num_cols columns."""
    if rowptr.dim() != 1 or rowptr.dtype != torch.int64 or rowptr.numel() < 1:
        raise ValueError(f"rowptr must be a 1-D int64 tensor of num_rows + 1 offsets, got "
                         f"shape {tuple(rowptr.shape)} and dtype {rowptr.dtype}")
    if col.dim() != 1 or col.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"col must be a 1-D int32 or int64 tensor, got shape {tuple(col.shape)} "
                         f"and dtype {col.dtype}")
    if col.device != rowptr.device:
        raise ValueError(f"rowptr and col must be on one device, got {rowptr.device} and {col.device}")
    if col.dtype == torch.int32 and num_cols > torch.iinfo(torch.int32).max:
        raise ValueError(f"int32 col cannot index {num_cols} columns; use int64")
    first, last = int(rowptr[0]), int(rowptr[-1])
    if first != 0:
        raise ValueError(f"rowptr[0] must be 0, got {first}")
    if last != col.numel():
        raise ValueError(f"rowptr[-1] must equal the number of edges ({col.numel()}), got {last}")
    steps = rowptr[1:] - rowptr[:-1]
    if steps.numel() and bool((steps < 0).any()):
        bad = int(torch.nonzero(steps < 0)[0])
        raise ValueError(f"rowptr must be non-decreasing, but rowptr[{bad}] = {int(rowptr[bad])} > "
                         f"rowptr[{bad + 1}] = {int(rowptr[bad + 1])}")
    if col.numel():
        lo, hi = int(col.min()), int(col.max())
        if lo < 0 or hi >= num_cols:
            bad = lo if lo < 0 else hi
            raise ValueError(f"col holds {bad}, out of range for {num_cols} source nodes")


class CSRGraph:
    """A CSR graph with a cached transpose.

    Args:
        rowptr: (num_rows + 1,) int64 offsets.
        col: (num_edges,) int32 or int64 source node of each edge, grouped by row.
        edge_weight: optional (num_edges,) or (num_edges, heads) weights in CSR edge order.
        num_cols: number of source nodes (default: num_rows, a square graph).
        edge_ids: optional (num_edges,) int64 position of each CSR edge in the source edge list.
        validate: check offsets and indices once here (one device sync), so kernels can trust them.
    """

    def __init__(self, rowptr: torch.Tensor, col: torch.Tensor,
                 edge_weight: Optional[torch.Tensor] = None, num_cols: Optional[int] = None,
                 edge_ids: Optional[torch.Tensor] = None, validate: bool = True):
        self.rowptr = rowptr.contiguous()
        self.col = col.contiguous()
        self.num_rows = rowptr.numel() - 1
        self.num_cols = self.num_rows if num_cols is None else int(num_cols)
        if validate:
            validate_csr(self.rowptr, self.col, self.num_cols)
        if edge_weight is not None and (edge_weight.dim() not in (1, 2)
                                        or edge_weight.shape[0] != self.col.numel()):
            raise ValueError(f"edge_weight must be (num_edges,) or (num_edges, heads) with "
                             f"num_edges = {self.col.numel()}, got {tuple(edge_weight.shape)}")
        self.edge_weight = edge_weight
        self.edge_ids = edge_ids
        self._transpose = None
        self._csr_position = None
        self._edge_rows = None
        self._rows_sorted = None
        self._derived = {}

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_edge_index(cls, edge_index: torch.Tensor, num_nodes=None,
                        edge_weight: Optional[torch.Tensor] = None,
                        index_dtype: torch.dtype = torch.int64) -> "CSRGraph":
        """From a PyG-style (2, E) edge_index: row 0 sources, row 1 targets (destinations).
        num_nodes: the node count (default: the largest id + 1), or PyG's bipartite size
        (num_sources, num_targets): a graph of num_targets rows over num_sources columns."""
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, num_edges), got {tuple(edge_index.shape)}")
        if edge_index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"edge_index must be int32 or int64, got {edge_index.dtype}")
        src, dst = edge_index[0].to(torch.int64), edge_index[1].to(torch.int64)
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
        num_src, num_dst = map(int, num_nodes) if isinstance(num_nodes, (tuple, list)) else (int(num_nodes),) * 2
        for ids, count, what in ((src, num_src, "source"), (dst, num_dst, "target")):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= count):
                raise ValueError(f"edge_index holds {what} ids outside [0, {count})")
        # Sort by (destination, source); the key fits int64 for any num_src < 3e9.
        order = torch.argsort(dst * num_src + src, stable=True)
        rowptr = torch.searchsorted(
            dst[order], torch.arange(num_dst + 1, device=dst.device, dtype=torch.int64))
        weight = None if edge_weight is None else edge_weight[order]
        return cls(rowptr, src[order].to(index_dtype), weight, num_cols=num_src,
                   edge_ids=order, validate=False)

    @classmethod
    def from_scatter_index(cls, index: torch.Tensor, num_rows: int) -> "CSRGraph":
        """The graph of a scatter: row i reads the positions e with index[e] == i, so that
        spmm(graph, src, reduce) equals torch_scatter's scatter(src, index, 0, num_rows, reduce)
        on a (len(index), F) src (ties in max / min: the first position)."""
        if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"index must be a 1-D int32 or int64 tensor, got {index.dtype} of shape "
                             f"{tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_rows):
            raise ValueError(f"index holds values outside [0, {num_rows})")
        order = torch.argsort(index, stable=True)
        rowptr = torch.searchsorted(index[order], torch.arange(num_rows + 1, device=index.device, dtype=index.dtype))
        return cls(rowptr.to(torch.int64), order, num_cols=index.numel(), validate=False)

    @classmethod
    def from_sparse(cls, matrix: torch.Tensor) -> "CSRGraph":
        """From a torch sparse COO or CSR matrix A (out = A @ x): A[i, j] is an edge j -> i with
        weight A[i, j]."""
        if matrix.dim() != 2:
            raise ValueError(f"from_sparse expects a 2-D matrix, got shape {tuple(matrix.shape)}")
        rows, cols = matrix.shape
        if matrix.layout == torch.sparse_coo:
            matrix = matrix.coalesce()  # sorted by (row, column), duplicates summed
            row, col = matrix.indices()
            rowptr = torch.searchsorted(row, torch.arange(rows + 1, device=row.device))
            return cls(rowptr, col, matrix.values(), num_cols=cols)
        if matrix.layout != torch.sparse_csr:
            raise ValueError(f"from_sparse expects a sparse COO or CSR tensor, got {matrix.layout}")
        return cls(matrix.crow_indices().to(torch.int64), matrix.col_indices(),
                   matrix.values(), num_cols=cols)

    @classmethod
    def from_scipy(cls, matrix) -> "CSRGraph":
        """From any scipy.sparse matrix A (out = A @ x): A[i, j] is an edge j -> i weighing A[i, j]."""
        csr = matrix.tocsr(copy=True)
        csr.sort_indices()
        weight = torch.from_numpy(csr.data) if csr.data.dtype.kind == "f" else None
        return cls(torch.from_numpy(csr.indptr.astype("int64")), torch.from_numpy(csr.indices.astype("int64")),
                   weight, num_cols=csr.shape[1])

    def to_scipy(self):
        """The graph as a scipy.sparse.csr_matrix (edge weights as values, else ones)."""
        import numpy as np
        import scipy.sparse

        values = (np.ones(self.num_edges, dtype=np.float32) if self.edge_weight is None
                  else self.edge_weight.detach().cpu().numpy())
        return scipy.sparse.csr_matrix(
            (values, self.col.cpu().numpy(), self.rowptr.cpu().numpy()), shape=(self.num_rows, self.num_cols))

    # ---- views --------------------------------------------------------------------------
    @property
    def num_edges(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.rowptr.device

    def in_degree(self) -> torch.Tensor:
        return self.rowptr[1:] - self.rowptr[:-1]

    def edge_rows(self) -> torch.Tensor:
        """(num_edges,) int64: the destination row of every CSR edge, computed once."""
        if self._edge_rows is None:
            rows = torch.arange(self.num_rows, device=self.rowptr.device)
            self._edge_rows = torch.repeat_interleave(rows, self.in_degree(), output_size=self.num_edges)
        return self._edge_rows

    def rows_sorted(self) -> bool:
        """Whether columns ascend within every row (checked once, then cached)."""
        if self._rows_sorted is None:
            steps = self.col[1:].to(torch.int64) - self.col[:-1].to(torch.int64)
            row_start = torch.zeros(self.num_edges, dtype=torch.bool, device=self.device)
            row_start[self.rowptr[1:-1][self.rowptr[1:-1] < self.num_edges]] = True
            self._rows_sorted = not bool(((steps < 0) & ~row_start[1:]).any()) if self.num_edges > 1 else True
        return self._rows_sorted

    def derived(self, key, build):
        """What `build(self)` derives from this graph (self loops, normalisation, a positional
        encoding), built once per key and kept with the graph."""
        if key not in self._derived:
            self._derived[key] = build(self)
        return self._derived[key]

    def to_csr_order(self, per_edge: torch.Tensor) -> torch.Tensor:
        """A per-edge tensor in the caller's edge order, gathered into CSR order (autograd-aware)."""
        return per_edge if self.edge_ids is None else per_edge[self.edge_ids]

    def to_caller_order(self, per_edge: torch.Tensor) -> torch.Tensor:
        """A per-edge tensor in CSR order, gathered into the caller's edge order (autograd-aware)."""
        if self.edge_ids is None:
            return per_edge
        if self._csr_position is None:  # the inverse of edge_ids, computed once
            position = torch.empty_like(self.edge_ids)
            position[self.edge_ids] = torch.arange(self.edge_ids.numel(), device=self.edge_ids.device)
            self._csr_position = position
        return per_edge[self._csr_position]

    def transpose_parts(self):
        """(rowptr_t, col_t, perm) of the transpose, computed once and cached."""
        if self._transpose is None:
            self._transpose = csr_transpose(self.rowptr, self.col, self.num_cols)
        return self._transpose

    def transpose(self) -> "CSRGraph":
        """The reversed graph (sources become rows); its edge weights are gathered, not rebuilt. Its
        edge order is this graph's (edge_ids maps each of its edges to the same edge here)."""
        rowptr_t, col_t, perm = self.transpose_parts()
        weight = None if self.edge_weight is None else self.edge_weight[perm]
        edge_ids = perm if self.edge_ids is None else self.edge_ids[perm]
        return CSRGraph(rowptr_t, col_t, weight, num_cols=self.num_rows, edge_ids=edge_ids, validate=False)

    def to_edge_index(self) -> torch.Tensor:
        """(2, num_edges) int64 edge_index in CSR edge order: row 0 sources, row 1 targets."""
        return torch.stack([self.col.to(torch.int64), self.edge_rows()])

    def to(self, device) -> "CSRGraph":
        moved = CSRGraph(self.rowptr.to(device), self.col.to(device),
                         None if self.edge_weight is None else self.edge_weight.to(device),
                         num_cols=self.num_cols,
                         edge_ids=None if self.edge_ids is None else self.edge_ids.to(device),
                         validate=False)
        if self._transpose is not None:
            moved._transpose = tuple(t.to(device) for t in self._transpose)
        return moved

    def __repr__(self) -> str:
        return (f"CSRGraph(num_rows={self.num_rows}, num_cols={self.num_cols}, "
                f"num_edges={self.num_edges}, col={self.col.dtype}, device={self.device}, "
                f"weighted={self.edge_weight is not None})")


# CSRGraph as a pytree node: torch.export takes and returns only pytrees of tensors, so a graph
# argument is flattened into its tensors (the cached transpose included, so an exported
# training graph does not rebuild it) with num_cols as static context. Key names are chosen so
# that none is a prefix of another: export's guard code substitutes paths textually.
_PYTREE_KEYS = ("rowptr", "col", "edge_weight", "edge_ids", "transpose_rowptr", "transpose_col", "transpose_perm")


# ---- graphs derived from a graph (the layers cache them: nn/graph_cache.py) -------------------
def subgraph_of_edges(graph: CSRGraph, keep: torch.Tensor) -> CSRGraph:
    """The CSR graph of the edges where `keep` (a (num_edges,) bool mask) is true, order kept
    (so sorted rows stay sorted)."""
    kept_per_row = torch.bincount(graph.edge_rows()[keep], minlength=graph.num_rows)
    rowptr = torch.cat([kept_per_row.new_zeros(1), kept_per_row.cumsum(0)])
    return CSRGraph(rowptr, graph.col[keep],
                    None if graph.edge_weight is None else graph.edge_weight[keep],
                    num_cols=graph.num_cols,
                    edge_ids=None if graph.edge_ids is None else graph.edge_ids[keep], validate=False)


def with_self_loops(graph: CSRGraph, fill_value: float = 1.0) -> CSRGraph:
    """Every node gets exactly one self loop (PyG's add_remaining_self_loops): existing loops keep
    their weight, the others weigh `fill_value`. Columns stay sorted within rows. The new graph's
    caller order (its edge_ids) is PyG's: the non-loop edges in the caller's order, then the
    loops of nodes 0 .. n - 1, so per-edge results line up with PyG's edge_index."""
    if graph.num_rows != graph.num_cols:
        raise ValueError(f"self loops need a square graph, got {graph.num_rows} x {graph.num_cols}")
    n = graph.num_rows
    device = graph.device
    dst = graph.edge_rows()
    src = graph.col.to(torch.int64)
    is_loop = src == dst
    loop_weight = None
    if graph.edge_weight is not None:
        loop_weight = graph.edge_weight.new_full((n,) + tuple(graph.edge_weight.shape[1:]), fill_value)
        loop_weight[dst[is_loop]] = graph.edge_weight[is_loop]
    src, dst = src[~is_loop], dst[~is_loop]
    nodes = torch.arange(n, device=device)
    all_src, all_dst = torch.cat([src, nodes]), torch.cat([dst, nodes])
    order = torch.argsort(all_dst * n + all_src, stable=True)
    weight = None
    if graph.edge_weight is not None:
        weight = torch.cat([graph.edge_weight[~is_loop], loop_weight])[order]
    # A non-loop edge's new caller position: its rank among the non-loop edges' caller positions.
    caller = graph.edge_ids if graph.edge_ids is not None else torch.arange(graph.num_edges, device=device)
    caller = caller[~is_loop]
    kept = torch.zeros(graph.num_edges, dtype=torch.int64, device=device)
    kept[caller] = 1
    rank = (kept.cumsum(0) - 1)[caller]
    edge_ids = torch.cat([rank, rank.numel() + nodes])[order]
    rowptr = torch.searchsorted(all_dst[order], torch.arange(n + 1, device=device))
    return CSRGraph(rowptr, all_src[order].to(graph.col.dtype), weight, num_cols=n, edge_ids=edge_ids,
                    validate=False)


def gcn_norm_weight(graph: CSRGraph, edge_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Kipf & Welling's symmetric normalisation of `graph` (self loops already added):
    w_ji / sqrt(deg_i deg_j) with deg the weighted in-degree (PyG's gcn_norm, flow source_to_target)."""
    dst = graph.edge_rows()
    if edge_weight is None:  # fp64, so the weights are exact to the rounding of the caller's dtype
        edge_weight = torch.ones(graph.num_edges, dtype=torch.float64, device=graph.device)
    degree = torch.zeros(graph.num_rows, dtype=edge_weight.dtype, device=graph.device)
    degree.index_add_(0, dst, edge_weight)
    inv_sqrt = degree.pow(-0.5).masked_fill(degree == 0, 0.0)
    return inv_sqrt[graph.col.to(torch.int64)] * edge_weight * inv_sqrt[dst]


def _flatten(graph: CSRGraph):
    transpose = graph._transpose if graph._transpose is not None else (None, None, None)
    return [graph.rowptr, graph.col, graph.edge_weight, graph.edge_ids, *transpose], graph.num_cols


def _flatten_with_keys(graph: CSRGraph):
    children, context = _flatten(graph)
    return [(pytree.GetAttrKey(key), child) for key, child in zip(_PYTREE_KEYS, children)], context


def _unflatten(children, num_cols: int) -> CSRGraph:
    rowptr, col, edge_weight, edge_ids, rowptr_t, col_t, perm = children
    graph = CSRGraph(rowptr, col, edge_weight, num_cols=num_cols, edge_ids=edge_ids, validate=False)
    if rowptr_t is not None:
        graph._transpose = (rowptr_t, col_t, perm)
    return graph


pytree.register_pytree_node(CSRGraph, _flatten, _unflatten, serialized_type_name="scangraph.CSRGraph",
                            flatten_with_keys_fn=_flatten_with_keys)
