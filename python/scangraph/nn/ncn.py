"""Neural Common Neighbor link predictor (Wang, Yang, Zhang, "Neural Common Neighbor with
Completion for Link Prediction", ICLR 2024), as the authors' NCN runs it (their code,
GraphPKU/NeuralCommonNeighbor: the `puregcn` encoder with jumping knowledge, and the
common-neighbour predictor with `use_xlin`, `tailact` and LayerNorm)."""
import torch
import torch.nn.functional as F
from torch import nn

from scangraph.graph import subgraph_of_edges
from scangraph.nn.graph_cache import GraphLike, as_csr, gcn_graph, num_nodes_of
from scangraph.ops.sparse import common_neighbor_aggregate, spmm


def _mlp_block(width: int, dropout: float, norm_first: bool) -> list:
    """Linear -> [LayerNorm] -> Dropout -> ReLU (the authors' hidden block; LayerNorm where they use it)."""
    return [nn.Linear(width, width)] + ([nn.LayerNorm(width)] if norm_first else []) + [nn.Dropout(dropout), nn.ReLU()]


class NCNEncoder(nn.Module):
    """h0 = drop_e(lin(drop_x(x))); h_l = drop_t(Â h_{l-1}), l = 1..num_layers, with
    Â = D̃^-1/2 (A + I) D̃^-1/2 (weightless GCN propagation); h = sum_l w_l h_l with learnable
    scalars w (jumping knowledge, not normalised). x may be a torch sparse COO matrix (Planetoid's
    bag-of-words features are ~1% nonzero): lin then runs as one sparse product."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int = 1, feature_dropout: float = 0.0,
                 encoder_dropout: float = 0.0, propagation_dropout: float = 0.0):
        super().__init__()
        self.lin = nn.Linear(in_channels, hidden_channels)
        self.feature_dropout, self.encoder_dropout = feature_dropout, encoder_dropout
        self.propagation_dropout = propagation_dropout
        self.layer_weights = nn.Parameter(torch.randn(num_layers))

    def forward(self, x: torch.Tensor, edge_index: GraphLike) -> torch.Tensor:
        graph = gcn_graph(edge_index, num_nodes_of(x, edge_index), dtype=x.dtype)
        if x.layout != torch.strided:
            # Sparse (bag-of-words) features: dropout on the stored values (a zero stays zero either
            # way: the same distribution as on the dense matrix), then one sparse product.
            x = x.coalesce()
            x = torch.sparse_coo_tensor(x.indices(), F.dropout(x.values(), self.feature_dropout, self.training),
                                        x.shape, is_coalesced=True, check_invariants=False)  # x's own indices
            h = torch.sparse.mm(x, self.lin.weight.t()) + self.lin.bias
        else:
            h = self.lin(F.dropout(x, self.feature_dropout, self.training))
        h = F.dropout(h, self.encoder_dropout, self.training)
        out = 0
        for weight in self.layer_weights:
            h = F.dropout(spmm(graph, h), self.propagation_dropout, self.training)
            out = out + weight * h
        return out


class NCNPredictor(nn.Module):
    """A pair (i, j) scores lin(beta * mlp_cn(cn) + mlp_ij(h_i ⊙ h_j)), where
    cn = sum over the common neighbours k of i and j of (h_k + mlp_x(h_k)). In training each
    edge of the graph the common neighbours come from is dropped with probability
    cn_edge_dropout (a fresh mask per call, each direction on its own, as the authors' DropAdj)."""

    def __init__(self, hidden_channels: int, out_channels: int = 1, dropout: float = 0.0,
                 cn_edge_dropout: float = 0.0, predictor_layers: int = 1, beta: float = 1.0):
        super().__init__()
        w = hidden_channels
        self.cn_edge_dropout = cn_edge_dropout
        self.mlp_x = nn.Sequential(*_mlp_block(w, dropout, False), *_mlp_block(w, dropout, True))
        self.mlp_cn = nn.Sequential(*_mlp_block(w, dropout, False), *_mlp_block(w, dropout, True))
        self.mlp_ij = nn.Sequential(*_mlp_block(w, dropout, True))
        self.lin = nn.Sequential(*[m for _ in range(predictor_layers) for m in _mlp_block(w, dropout, True)],
                                 nn.Linear(w, out_channels))
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def forward(self, h: torch.Tensor, edge_index: GraphLike, pairs: torch.Tensor) -> torch.Tensor:
        graph = as_csr(h, edge_index)
        if self.training and self.cn_edge_dropout > 0:
            graph = subgraph_of_edges(graph, torch.rand(graph.num_edges, device=graph.device) >= self.cn_edge_dropout)
        src, dst = pairs[0].to(torch.int64).contiguous(), pairs[1].to(torch.int64).contiguous()
        cn = common_neighbor_aggregate(graph, h + self.mlp_x(h), src, dst)
        out = self.lin(self.beta * self.mlp_cn(cn) + self.mlp_ij(h[src] * h[dst]))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class NCN(nn.Module):
    """NCN: `encoder` (NCNEncoder) gives node embeddings h over the observed edges, `predictor`
    (NCNPredictor) scores node pairs from h and their common neighbours in the same graph. The
    common-neighbour sum is `common_neighbor_aggregate` (a sorted merge of the two CSR rows; no
    (P, N) indicator is ever built).

    Args: in_channels, hidden_channels, out_channels (1 for a link logit), num_layers
    (propagation steps), feature_dropout / encoder_dropout / propagation_dropout (the authors'
    xdp / gnndp / tdp), predictor_dropout (predp), cn_edge_dropout (preedp), predictor_layers
    (hidden blocks of the final MLP: 1, or 2 with the authors' --twolayerlin).
    Shapes: x (N, in), pairs (2, P) -> (P,) logits when out_channels == 1, else (P, out).
    `encoder` and `predictor` are separate modules so that each can have its own learning rate,
    as in the authors' recipe.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int = 1, num_layers: int = 1,
                 feature_dropout: float = 0.0, encoder_dropout: float = 0.0, propagation_dropout: float = 0.0,
                 predictor_dropout: float = 0.0, cn_edge_dropout: float = 0.0, predictor_layers: int = 1):
        super().__init__()
        self.encoder = NCNEncoder(in_channels, hidden_channels, num_layers, feature_dropout, encoder_dropout,
                                  propagation_dropout)
        self.predictor = NCNPredictor(hidden_channels, out_channels, predictor_dropout, cn_edge_dropout,
                                      predictor_layers)

    def encode(self, x: torch.Tensor, edge_index: GraphLike) -> torch.Tensor:
        """(N, in) -> (N, hidden) node embeddings."""
        return self.encoder(x, edge_index)

    def score(self, h: torch.Tensor, edge_index: GraphLike, pairs: torch.Tensor) -> torch.Tensor:
        """Logits of the (2, P) node pairs from embeddings h."""
        return self.predictor(h, edge_index, pairs)

    def forward(self, x: torch.Tensor, edge_index: GraphLike, pairs: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(x, edge_index), edge_index, pairs)
