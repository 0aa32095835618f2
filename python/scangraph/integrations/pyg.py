"""PyG's own layers on scangraph's kernels:

    from scangraph.integrations import pyg as sg_pyg
    sg_pyg.patch()      # torch_geometric.nn.GCNConv / SAGEConv / GINConv / GATConv, and the
                        # sum / mean / max / min aggregations of every MessagePassing layer
    sg_pyg.unpatch()    # PyG's own forward again

patch() wraps the forward of those four classes and of torch_geometric.nn.aggr's
SumAggregation, MeanAggregation, MaxAggregation and MinAggregation (process-wide, every
instance, their own parameters untouched). A call runs on scangraph's fused kernels when all of
its inputs are ones scangraph computes exactly as PyG does (`supported` below says which); any other call runs
PyG's own forward unchanged, so a patched model never gives a silently different result.
torch.jit.script cannot compile a patched layer's forward: script it unpatched.

Covered (else PyG's forward runs):
- all four: x a 2-D tensor, the graph an `edge_index` (2, E) tensor or a square adj_t (a torch
  sparse COO / CSR matrix or a torch_sparse SparseTensor, row i = target i), `size` None or the
  size x implies, flow "source_to_target", none of MessagePassing's internals in use (explain
  mode, decomposed layers, hooks on propagate / message / aggregate). An adj_t's values are read
  as PyG's layers read them: GCNConv's edge weights (a SparseTensor without values weighs 1),
  SAGEConv's and GINConv's message weights for a torch sparse matrix, dropped for a SparseTensor;
- SAGEConv and GINConv also on PyG's bipartite pair (x_src, x_dst) with an edge_index;
- GCNConv: `edge_weight` (in edge_index order) with an edge_index (with an adj_t, which PyG reads
  without it, PyG's forward runs); its self loops as PyG's gcn_norm adds them to each form
  (nn/graph_cache.loop_rule: the missing ones to an edge_index, one more per node to a torch
  sparse adj_t, the loops replaced on a SparseTensor); cached=False (PyG's cache reuses the first
  call's graph for every later call; scangraph caches per edge_index anyway); improved=True
  only with edge_weight or an adj_t (without weights PyG's gcn_norm gives an edge_index's loops
  weight 1, not 2);
- SAGEConv: aggr "mean" / "sum" / "max" / "min", project=False;
- GINConv: the default "add" aggregation;
- GATConv: `size` None, no edge_attr / edge_dim, no residual, a shared `lin`; with an
  edge_index tensor, return_attention_weights=True returns PyG's (out, (edge_index, alpha)) (with
  an adj_t PyG returns the weights as a sparse matrix: its forward runs). Attention dropout in
  training runs in the fused kernel: the same distribution as PyG's (Bernoulli per edge and
  head, after the softmax), drawn from scangraph's Philox stream, so the masks differ from
  PyG's draws (as any two dropout implementations' do);
- the aggregations, which every MessagePassing layer with a string `aggr` calls on its gathered
  messages (and any layer the rows above leave to PyG): messages reduced over dim 0 (a (E, ...)
  tensor in a float dtype) by an `index` (a CSR graph of the scatter, spmm over it) or by a
  `ptr`. Empty rows give 0, as in PyG. Ties in max / min give the gradient to the first of the
  tied messages, as torch_scatter's scatter_max does (PyG's torch-only path splits it among them).
"""
import functools
import inspect

import torch
import torch.nn.functional as F

from scangraph.graph import CSRGraph
from scangraph.nn.conv import gat_forward, gcn_propagation_graph
from scangraph.nn.graph_cache import aggregation_graph, as_csr_of, is_matrix, scatter_graph
from scangraph.ops._rules import FLOAT_DTYPES
from scangraph.ops.sparse import spmm

_originals: dict = {}  # class -> PyG's forward, while patched
_wrapped: dict = {}  # class -> (PyG's forward, its wrapper)
_MESSAGE_PASSING_STEPS = ("propagate", "message", "aggregate", "message_and_aggregate", "edge_update")
_REDUCE = {"mean": "mean", "sum": "sum", "add": "sum", "max": "max", "min": "min"}


def _pyg():
    try:
        import torch_geometric.nn as pyg_nn
    except ImportError as error:
        raise ImportError("scangraph.integrations.pyg needs PyG: pip install torch_geometric") from error
    return pyg_nn


def _node_features(x, size):
    """(x_src, x_dst, num_nodes) of a layer's x, a tensor or PyG's bipartite pair (x_src, x_dst),
    with `size` checked against it; num_nodes is None for one node set, else (num_src, num_dst).
    None where PyG's own code must run (a pair with x_dst None, a size that disagrees with x)."""
    if isinstance(x, torch.Tensor):
        x_src = x_dst = x
    elif isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, torch.Tensor) for t in x):
        x_src, x_dst = x
    else:
        return None
    if x_src.dim() != 2 or x_dst.dim() != 2 or x_src.dtype != x_dst.dtype or x_src.device != x_dst.device:
        return None
    pair = (x_src.shape[0], x_dst.shape[0])
    if size is not None and tuple(size) != pair:
        return None
    return x_src, x_dst, (None if x_src is x_dst else pair)


def _with_graph(features, edge_index):
    """(x_src, x_dst, the CSRGraph SAGEConv / GINConv aggregate over), from _node_features' answer."""
    x_src, x_dst, num_nodes = features
    return x_src, x_dst, aggregation_graph(x_src, edge_index) if num_nodes is None else as_csr_of(edge_index, num_nodes)


def _graph_ok(module, x, edge_index, bipartite=False) -> bool:
    """The inputs every patched layer shares: a plain graph, no MessagePassing internals in use."""
    if getattr(module, "flow", "source_to_target") != "source_to_target":
        return False
    if getattr(module, "_explain", None) or getattr(module, "decomposed_layers", 1) != 1:
        return False
    if any(getattr(module, f"_{stage}_forward_{kind}hooks", None)  # hooks on MessagePassing's steps
           for stage in _MESSAGE_PASSING_STEPS for kind in ("pre_", "")):
        return False
    if is_matrix(edge_index):  # a square adj_t over x's nodes: a SparseTensor, a torch COO / CSR matrix
        if bipartite or (isinstance(edge_index, torch.Tensor)
                         and edge_index.layout not in (torch.sparse_coo, torch.sparse_csr)):
            return False
        return edge_index.dim() == 2 and edge_index.size(0) == edge_index.size(1) == x.shape[0]
    if not isinstance(edge_index, torch.Tensor):
        return False
    return edge_index.dim() == 2 and edge_index.shape[0] == 2 and not edge_index.is_floating_point()


def _plain(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 2


def _gcn(self, x, edge_index, edge_weight=None):
    if not _plain(x) or not _graph_ok(self, x, edge_index) or (is_matrix(edge_index) and edge_weight is not None):
        return NotImplemented
    if self.cached:  # PyG's cache keeps the first call's graph for every later call: its semantics, its code
        return NotImplemented
    if self.improved and edge_weight is None and not is_matrix(edge_index):
        # PyG's gcn_norm drops an edge_index's loops' fill value 2 without weights
        return NotImplemented
    graph = gcn_propagation_graph(x, edge_index, edge_weight, self.add_self_loops, self.normalize, self.improved)
    out = spmm(graph, self.lin(x), "sum")
    return out if self.bias is None else out + self.bias


def _sage(self, x, edge_index, size=None):
    features = _node_features(x, size)
    if features is None or getattr(self, "project", False) or not isinstance(self.aggr, str) \
            or self.aggr not in _REDUCE or not _graph_ok(self, features[0], edge_index, features[2] is not None):
        return NotImplemented
    x_src, x_dst, graph = _with_graph(features, edge_index)
    out = self.lin_l(spmm(graph, x_src, _REDUCE[self.aggr]))
    if self.root_weight:
        out = out + self.lin_r(x_dst)
    return F.normalize(out, p=2.0, dim=-1) if self.normalize else out


def _gin(self, x, edge_index, size=None):
    features = _node_features(x, size)
    if features is None or self.aggr not in ("add", "sum") \
            or not _graph_ok(self, features[0], edge_index, features[2] is not None):
        return NotImplemented
    x_src, x_dst, graph = _with_graph(features, edge_index)
    return self.nn(spmm(graph, x_src, "sum") + (1 + self.eps) * x_dst)


def _gat(self, x, edge_index, edge_attr=None, size=None, return_attention_weights=None):
    if return_attention_weights and is_matrix(edge_index):  # PyG returns them as a sparse matrix
        return NotImplemented
    if (not _plain(x) or size is not None or not _graph_ok(self, x, edge_index) or edge_attr is not None
            or getattr(self, "edge_dim", None) is not None or getattr(self, "res", None) is not None
            or getattr(self, "lin", None) is None):
        return NotImplemented
    # PyG's GATConv removes every loop, then adds one per node: as ours does.
    return gat_forward(self, x, edge_index, return_attention_weights)


def _aggregation(reduce: str):
    def aggregate(self, x, index=None, ptr=None, dim_size=None, dim=-2):
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.dtype not in FLOAT_DTYPES:
            return NotImplemented
        if (dim + x.dim() if dim < 0 else dim) != 0:  # messages along another dim: a batch of scatters
            return NotImplemented
        return aggregate_messages(x, index, ptr, dim_size, reduce)
    return aggregate


def aggregate_messages(x, index, ptr, dim_size, reduce):
    """x (E, ...) reduced over its rows by index (or by the segments of ptr), as PyG's scatter /
    segment; NotImplemented where PyG's own code must run (or raise its own error)."""
    num_messages = x.shape[0]
    if index is not None:
        if index.dim() != 1 or index.numel() != num_messages or index.device != x.device:
            return NotImplemented
        rows = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
        try:
            graph = scatter_graph(index, rows)
        except ValueError:  # an index outside [0, dim_size): PyG raises its 'invalid dim_size' error
            return NotImplemented
    elif ptr is not None and ptr.dim() == 1 and ptr.device == x.device and int(ptr[-1]) == num_messages:
        graph = CSRGraph(ptr.to(torch.int64), torch.arange(num_messages, device=x.device), num_cols=num_messages)
    else:
        return NotImplemented
    out = spmm(graph, x.reshape(num_messages, -1), reduce)
    return out.reshape(graph.num_rows, *x.shape[1:])


def _wrap(ours, original):
    signature = inspect.signature(ours)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError:  # arguments beyond the ones covered: PyG's own forward takes (or refuses) them
            return original(self, *args, **kwargs)
        out = ours(self, *args, **kwargs)
        return original(self, *args, **kwargs) if out is NotImplemented else out
    forward.scangraph_original = original
    return forward


def patch(layers: bool = True, aggregations: bool = True):
    """Route PyG's GCNConv, SAGEConv, GINConv and GATConv (`layers`) and the sum / mean / max /
    min aggregations of MessagePassing (`aggregations`) to scangraph where covered."""
    pyg_nn = _pyg()
    targets = []
    if layers:
        targets += [(pyg_nn.GCNConv, _gcn), (pyg_nn.SAGEConv, _sage), (pyg_nn.GINConv, _gin), (pyg_nn.GATConv, _gat)]
    if aggregations:
        targets += [(getattr(pyg_nn.aggr, f"{name}Aggregation"), _aggregation(reduce))
                    for name, reduce in (("Sum", "sum"), ("Mean", "mean"), ("Max", "max"), ("Min", "min"))]
    for cls, ours in targets:
        if cls not in _originals:
            _originals[cls] = cls.forward
            # The wrapper is built once per class and forward: patching again is an assignment.
            if _wrapped.get(cls, (None,))[0] is not cls.forward:
                _wrapped[cls] = (cls.forward, _wrap(ours, cls.forward))
            cls.forward = _wrapped[cls][1]


def unpatch():
    """PyG's own forwards again."""
    for cls, original in list(_originals.items()):
        cls.forward = original
        del _originals[cls]


def patched() -> bool:
    return bool(_originals)
