"""Message-passing layers with PyTorch Geometric's call convention, formulas, defaults and
parameter names, so `conv.load_state_dict(pyg_conv.state_dict())` copies weights across.

Every layer takes `conv(x, edge_index)` with a PyG edge_index (2, E) (row 0 sources, row 1
targets), or `conv(x, graph)` with a scangraph.CSRGraph. The CSR graphs derived from an
edge_index (with self loops, normalisation weights, transposes) are cached: see graph_cache.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from scangraph.distributed.partition import PartitionedGraph
from scangraph.graph import CSRGraph, gcn_norm_weight, with_self_loops
from scangraph.nn.graph_cache import (GraphLike, aggregation_graph, as_csr_of, gcn_graph, graph_for,
                                      is_matrix, num_nodes_of)
from scangraph.ops.sparse import gat_aggregate, spmm


def glorot_(t: torch.Tensor) -> torch.Tensor:
    """Glorot & Bengio's uniform init over the last two dimensions (PyG's `glorot`)."""
    bound = math.sqrt(6.0 / (t.size(-2) + t.size(-1)))
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def _check_pyg_args(layer: str, in_channels=None, flow: str = "source_to_target"):
    """PyG arguments these layers do not take, refused by name rather than ignored."""
    if in_channels is not None and in_channels <= 0:
        raise ValueError(f"{layer}: lazy in_channels={in_channels} is not supported; pass the input width")
    if flow != "source_to_target":
        raise ValueError(f"{layer}: flow={flow!r} is not supported (edge_index[0] holds sources, edge_index[1] "
                         "targets); pass edge_index.flip(0) instead")


def _check_size(layer: str, size):
    if size is not None:
        raise ValueError(f"{layer}: size={size} (a bipartite message passing) is not supported; pass a "
                         "scangraph.CSRGraph with num_cols source nodes instead")


def _propagate(graph: CSRGraph, x: torch.Tensor, reduce: str) -> torch.Tensor:
    """spmm over the node axis of x (N, F), or of x (batch, N, F): a static graph shared by a batch
    (PyG's batched static graphs), run as the heads of one spmm."""
    if x.dim() == 3:
        return spmm(graph, x.transpose(0, 1), reduce).transpose(0, 1)
    return spmm(graph, x, reduce)


def gcn_propagation_graph(x: torch.Tensor, graph: GraphLike, edge_weight: Optional[torch.Tensor],
                          add_self_loops: bool, normalize: bool, improved: bool) -> CSRGraph:
    """The graph GCN propagates over, its weights the normalised edge weights (PyG's gcn_norm):
    cached per graph and dtype without edge_weight; rebuilt on every call with one, as weights
    may change or carry gradients. edge_weight follows the order of the edge list."""
    if edge_weight is not None and is_matrix(graph):
        raise ValueError("GCNConv: an adj_t sparse matrix carries its edge weights as its values; pass edge_weight "
                         "with an edge_index or a CSRGraph (PyG's GCNConv ignores it with an adj_t)")
    n = num_nodes_of(x, graph)
    if edge_weight is None:
        return gcn_graph(graph, n, add_self_loops, normalize, improved, x.dtype)
    # From here an edge_index, a CSRGraph or a PartitionedGraph: an adj_t was refused above.
    if isinstance(graph, PartitionedGraph):  # the whole graph's weights, normalised, cut as the graph is
        return graph.repartition(gcn_propagation_graph(x, graph.graph, edge_weight, add_self_loops, normalize,
                                                       improved))
    if isinstance(graph, CSRGraph):
        base = CSRGraph(graph.rowptr, graph.col, graph.to_csr_order(edge_weight), num_cols=graph.num_cols,
                        validate=False)
    else:
        base = CSRGraph.from_edge_index(graph, num_nodes=n, edge_weight=edge_weight)
    if add_self_loops:
        base = with_self_loops(base, 2.0 if improved else 1.0)
    if normalize:
        base = CSRGraph(base.rowptr, base.col, gcn_norm_weight(base, base.edge_weight), num_cols=n, validate=False)
    return base


class GCNConv(nn.Module):
    """Graph convolution of Kipf & Welling, "Semi-Supervised Classification with Graph
    Convolutional Networks" (ICLR 2017): out = D^-1/2 (A + I) D^-1/2 X W + b.

    Args as PyG's GCNConv: in_channels, out_channels, improved (self loops weigh 2),
    add_self_loops (default: normalize, as PyG's; loops without the normalisation raise a
    ValueError, as there), normalize, bias. Parameters: `lin.weight` (out, in), `bias` (out,).
    Shapes: x (N, in_channels) -> (N, out_channels), or (batch, N, in_channels) over one static
    graph (PyG's batched static graphs). The normalised graph of an edge_index is
    cached per dtype (normalised in fp64); an explicit `edge_weight` (E,) (in the edge order of
    edge_index, or of the edge list a CSRGraph was built from) is normalised on every call.
    """

    def __init__(self, in_channels: int, out_channels: int, improved: bool = False,
                 add_self_loops: Optional[bool] = None, normalize: bool = True, bias: bool = True,
                 flow: str = "source_to_target"):
        super().__init__()
        _check_pyg_args("GCNConv", in_channels, flow)
        if add_self_loops is None:  # PyG's default: loops come with the normalisation
            add_self_loops = normalize
        if add_self_loops and not normalize:
            raise ValueError("GCNConv adds self loops only together with the normalisation (normalize=True), "
                             "as PyG's GCNConv; pass add_self_loops=False or add the loops to the graph")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.improved, self.add_self_loops, self.normalize = improved, add_self_loops, normalize
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        glorot_(self.lin.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def propagation_graph(self, x: torch.Tensor, graph: GraphLike,
                          edge_weight: Optional[torch.Tensor] = None) -> CSRGraph:
        return gcn_propagation_graph(x, graph, edge_weight, self.add_self_loops, self.normalize, self.improved)

    def forward(self, x: torch.Tensor, edge_index: GraphLike,
                edge_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        graph = self.propagation_graph(x, edge_index, edge_weight)
        h = self.lin(x)
        out = _propagate(graph, h, "sum")  # the graph's own weights (CSR order), in h's dtype
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class SAGEConv(nn.Module):
    """GraphSAGE of Hamilton, Ying & Leskovec, "Inductive Representation Learning on Large
    Graphs" (NeurIPS 2017), mean aggregator: out = lin_l(mean_{j -> i} x_j) + lin_r(x_i).

    Args as PyG's SAGEConv: in_channels, out_channels, normalize (L2 on the output),
    root_weight, bias. Parameters: `lin_l.weight`, `lin_l.bias`, `lin_r.weight`.
    Shapes: x (N, in_channels) -> (N, out_channels), or (batch, N, in_channels) over one static
    graph.
    """

    def __init__(self, in_channels: int, out_channels: int, normalize: bool = False,
                 root_weight: bool = True, bias: bool = True, flow: str = "source_to_target"):
        super().__init__()
        _check_pyg_args("SAGEConv", in_channels, flow)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.normalize, self.root_weight = normalize, root_weight
        self.lin_l = nn.Linear(in_channels, out_channels, bias=bias)
        self.lin_r = nn.Linear(in_channels, out_channels, bias=False) if root_weight else None

    def forward(self, x: torch.Tensor, edge_index: GraphLike, size=None) -> torch.Tensor:
        _check_size("SAGEConv", size)
        graph = aggregation_graph(x, edge_index)
        if self.out_channels < self.in_channels:
            # The mean is linear, so projecting first moves fewer features along the edges;
            # the bias is added after, as lin_l(mean) would (empty rows give lin_l(0) = bias).
            out = _propagate(graph, F.linear(x, self.lin_l.weight), "mean")
            if self.lin_l.bias is not None:
                out = out + self.lin_l.bias
        else:
            out = self.lin_l(_propagate(graph, x, "mean"))
        if self.root_weight:
            out = out + self.lin_r(x)
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, aggr=mean"


class GINConv(nn.Module):
    """Graph Isomorphism Network layer of Xu, Hu, Leskovec & Jegelka, "How Powerful are Graph
    Neural Networks?" (ICLR 2019): out = nn((1 + eps) x_i + sum_{j -> i} x_j).

    Args as PyG's GINConv: nn (the MLP, stored as `nn`), eps, train_eps (eps a parameter, else
    a buffer; both are saved as `eps` of shape (1,)). Shapes: x (N, F) -> nn's output (N, F'), or
    x (batch, N, F) over one static graph.
    """

    def __init__(self, nn: torch.nn.Module, eps: float = 0.0, train_eps: bool = False,
                 flow: str = "source_to_target"):
        super().__init__()
        _check_pyg_args("GINConv", flow=flow)
        self.nn = nn
        self.initial_eps = eps
        if train_eps:
            self.eps = torch.nn.Parameter(torch.tensor([float(eps)]))
        else:
            self.register_buffer("eps", torch.tensor([float(eps)]))

    def forward(self, x: torch.Tensor, edge_index: GraphLike, size=None) -> torch.Tensor:
        _check_size("GINConv", size)
        graph = aggregation_graph(x, edge_index)
        return self.nn((1 + self.eps) * x + _propagate(graph, x, "sum"))


def gat_forward(layer: nn.Module, x: torch.Tensor, edge_index: GraphLike, return_attention_weights=None):
    """The forward of a GATConv (ours, or PyG's own module through integrations.pyg): it reads
    lin, att_src, att_dst, bias, heads, out_channels, concat, negative_slope, dropout,
    add_self_loops and training from `layer`. With return_attention_weights=True it returns
    (out, (edge_index, alpha)) as PyG does: the edge_index the attention ran over (with self
    loops: the caller's non-loop edges in order, then one loop per node) and alpha (E, heads)."""
    if return_attention_weights and isinstance(edge_index, PartitionedGraph):
        raise ValueError("GATConv: return_attention_weights is not supported on a PartitionedGraph (the weights "
                         "would be in each rank's local edge order)")
    n = num_nodes_of(x, edge_index)
    if layer.add_self_loops:
        graph = graph_for(edge_index, n, "loops", with_self_loops)
    else:
        graph = as_csr_of(edge_index, n)
    h = layer.lin(x).view(-1, layer.heads, layer.out_channels)
    alpha_src = (h * layer.att_src).sum(-1)
    alpha_dst = (h * layer.att_dst).sum(-1)
    dropout = layer.dropout if layer.training else 0.0
    out = gat_aggregate(graph, h, alpha_src, alpha_dst, layer.negative_slope, dropout,
                        return_attention_weights=bool(return_attention_weights))
    if return_attention_weights:
        out, alpha = out
    out = out.reshape(out.shape[0], layer.heads * layer.out_channels) if layer.concat else out.mean(1)
    if layer.bias is not None:
        out = out + layer.bias
    if not return_attention_weights:
        return out
    return out, (graph.to_caller_order(graph.to_edge_index().t()).t(), alpha)


class GATConv(nn.Module):
    """Graph attention of Velickovic et al., "Graph Attention Networks" (ICLR 2018), PyG's
    GATConv formula: h = lin(x) split into heads; a_ij = softmax_j(leaky_relu(att_src . h_j +
    att_dst . h_i)); out_i = sum_j a_ij h_j, heads concatenated (or averaged), + bias. The
    softmax and the sum run in one fused pass (`gat_aggregate`).

    Args as PyG's GATConv: in_channels, out_channels, heads=1, concat=True, negative_slope=0.2,
    dropout=0.0, add_self_loops=True (existing loops removed, one added per node), bias=True.
    Parameters: `lin.weight` (heads * out, in), `att_src`, `att_dst` (1, heads, out), `bias`.
    Shapes: x (N, in) -> (N, heads * out) with concat, else (N, out).

    dropout: in training, PyG's and the paper's dropout on the normalised attention
    coefficients, inside the fused kernel (a Philox mask per (edge, head), drawn from torch's
    generator; see `gat_aggregate`). forward(..., return_attention_weights=True) returns
    (out, (edge_index, alpha)) as PyG does (an edge_index or CSRGraph argument; not an adj_t).
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 bias: bool = True, flow: str = "source_to_target"):
        super().__init__()
        _check_pyg_args("GATConv", in_channels, flow)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"GATConv: dropout must be a probability in [0, 1], got {dropout}")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.concat, self.negative_slope, self.dropout = concat, negative_slope, dropout
        self.add_self_loops = add_self_loops
        self.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_channels))
        self.bias = nn.Parameter(torch.empty(heads * out_channels if concat else out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        glorot_(self.lin.weight)
        glorot_(self.att_src)
        glorot_(self.att_dst)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, edge_index: GraphLike, size=None, return_attention_weights=None):
        _check_size("GATConv", size)
        if x.dim() != 2:
            raise ValueError(f"GATConv: x must be (N, in_channels), got {tuple(x.shape)} (static graphs with a "
                             "batch dimension are not supported, as in PyG's GATConv)")
        if return_attention_weights and is_matrix(edge_index):
            raise ValueError("GATConv: return_attention_weights needs an edge_index (2, E) or a CSRGraph, not an "
                             "adj_t sparse matrix")
        return gat_forward(self, x, edge_index, return_attention_weights)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, heads={self.heads}"
