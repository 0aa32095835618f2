"""PyG's own layers on scangraph's kernels:

    from scangraph.integrations import pyg as sg_pyg
    sg_pyg.patch()      # torch_geometric.nn.GCNConv / SAGEConv / GINConv / GATConv use scangraph
    sg_pyg.unpatch()    # PyG's own forward again

patch() wraps the forward of those four classes (process-wide, every instance, their own
parameters untouched). A call runs on scangraph's fused kernels when all of its inputs are ones
scangraph computes exactly as PyG does (`supported` below says which); any other call runs
PyG's own forward unchanged, so a patched model never gives a silently different result.
torch.jit.script cannot compile a patched layer's forward: script it unpatched.

Covered (else PyG's forward runs):
- all four: x a 2-D tensor (not a bipartite pair), the graph an `edge_index` (2, E) tensor or a
  square torch sparse adj_t (COO / CSR; its values are edge weights, out = adj_t @ x), `size`
  None, flow "source_to_target", none of MessagePassing's internals in use (explain mode,
  decomposed layers, hooks on propagate / message / aggregate);
- GCNConv: `edge_weight` (in edge_index order) with an edge_index; an adj_t without
  add_self_loops (PyG adds a second loop where adj_t has one); cached=False (PyG's cache reuses
  the first call's graph for every later call; scangraph caches per edge_index anyway);
  improved=True only with edge_weight (without it PyG's gcn_norm gives the loops weight 1, not 2);
- SAGEConv: aggr "mean" / "sum" / "max" / "min", project=False;
- GINConv: the default "add" aggregation;
- GATConv: an edge_index tensor, no edge_attr / edge_dim, no residual, a shared `lin`;
  return_attention_weights=True returns PyG's (out, (edge_index, alpha)). Attention dropout in
  training runs in the fused kernel: the same distribution as PyG's (Bernoulli per edge and
  head, after the softmax), drawn from scangraph's Philox stream, so the masks differ from
  PyG's draws (as any two dropout implementations' do).
"""
import functools
import inspect

import torch
import torch.nn.functional as F

from scangraph.nn.conv import gat_forward, gcn_propagation_graph
from scangraph.nn.graph_cache import as_csr
from scangraph.ops.sparse import spmm

_originals: dict = {}  # class -> PyG's forward
_MESSAGE_PASSING_STEPS = ("propagate", "message", "aggregate", "message_and_aggregate", "edge_update")
_REDUCE = {"mean": "mean", "sum": "sum", "add": "sum", "max": "max", "min": "min"}


def _pyg():
    try:
        import torch_geometric.nn as pyg_nn
    except ImportError as error:
        raise ImportError("scangraph.integrations.pyg needs PyG: pip install torch_geometric") from error
    return pyg_nn


def _graph_ok(module, x, edge_index, size, dense_only=False) -> bool:
    """The inputs every patched layer shares: plain node features and a plain graph."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or size is not None:
        return False
    if getattr(module, "flow", "source_to_target") != "source_to_target":
        return False
    if getattr(module, "_explain", None) or getattr(module, "decomposed_layers", 1) != 1:
        return False
    if any(getattr(module, f"_{stage}_forward_{kind}hooks", None)  # hooks on MessagePassing's steps
           for stage in _MESSAGE_PASSING_STEPS for kind in ("pre_", "")):
        return False
    if not isinstance(edge_index, torch.Tensor):
        return False  # a torch_sparse SparseTensor: PyG's layers treat its values differently
    if edge_index.layout == torch.strided:
        return edge_index.dim() == 2 and edge_index.shape[0] == 2 and not edge_index.is_floating_point()
    if dense_only or edge_index.layout not in (torch.sparse_coo, torch.sparse_csr):
        return False
    return edge_index.dim() == 2 and edge_index.shape[0] == edge_index.shape[1] == x.shape[0]


def _gcn(self, x, edge_index, edge_weight=None):
    matrix = isinstance(edge_index, torch.Tensor) and edge_index.layout != torch.strided
    # On an adj_t PyG adds a loop to every node even where one exists (on an edge_index it adds
    # the missing ones only, as scangraph does): leave that case to PyG.
    if not _graph_ok(self, x, edge_index, None) or (matrix and (edge_weight is not None or self.add_self_loops)):
        return NotImplemented
    if self.cached:  # PyG's cache keeps the first call's graph for every later call: its semantics, its code
        return NotImplemented
    if self.improved and edge_weight is None:  # PyG's gcn_norm drops the loops' fill value 2 without weights
        return NotImplemented
    graph = gcn_propagation_graph(x, edge_index, edge_weight, self.add_self_loops, self.normalize, self.improved)
    out = spmm(graph, self.lin(x), "sum")
    return out if self.bias is None else out + self.bias


def _sage(self, x, edge_index, size=None):
    if not _graph_ok(self, x, edge_index, size) or getattr(self, "project", False) \
            or not isinstance(self.aggr, str) or self.aggr not in _REDUCE:
        return NotImplemented
    graph = as_csr(x, edge_index)
    out = self.lin_l(spmm(graph, x, _REDUCE[self.aggr]))
    if self.root_weight:
        out = out + self.lin_r(x)
    return F.normalize(out, p=2.0, dim=-1) if self.normalize else out


def _gin(self, x, edge_index, size=None):
    if not _graph_ok(self, x, edge_index, size) or self.aggr not in ("add", "sum"):
        return NotImplemented
    graph = as_csr(x, edge_index)
    return self.nn(spmm(graph, x, "sum") + (1 + self.eps) * x)


def _gat(self, x, edge_index, edge_attr=None, size=None, return_attention_weights=None):
    if (not _graph_ok(self, x, edge_index, size, dense_only=True) or edge_attr is not None
            or getattr(self, "edge_dim", None) is not None or getattr(self, "res", None) is not None
            or getattr(self, "lin", None) is None):
        return NotImplemented
    # PyG's GATConv removes every loop, then adds one per node: as ours does.
    return gat_forward(self, x, edge_index, return_attention_weights)


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


def patch():
    """Route PyG's GCNConv, SAGEConv, GINConv and GATConv to scangraph where covered."""
    pyg_nn = _pyg()
    for cls, ours in ((pyg_nn.GCNConv, _gcn), (pyg_nn.SAGEConv, _sage), (pyg_nn.GINConv, _gin),
                      (pyg_nn.GATConv, _gat)):
        if cls not in _originals:
            _originals[cls] = cls.forward
            cls.forward = _wrap(ours, cls.forward)


def unpatch():
    """PyG's own forwards again."""
    for cls, original in list(_originals.items()):
        cls.forward = original
        del _originals[cls]


def patched() -> bool:
    return bool(_originals)
