"""Neural Common Neighbor link predictor (Wang, Yang, Zhang, "Neural Common Neighbor with
Completion for Link Prediction", ICLR 2024)."""
import torch
import torch.nn.functional as F
from torch import nn

from scangraph.nn.conv import GCNConv
from scangraph.nn.graph_cache import GraphLike, as_csr
from scangraph.ops.sparse import common_neighbor_aggregate


class NCN(nn.Module):
    """NCN: a GCN encoder gives h; a pair (i, j) scores
        MLP([h_i * h_j  ||  sum_{k in N(i) ∩ N(j)} h_k])
    The concatenation is computed as lin_ij(h_i * h_j) + lin_cn(cn): one Linear over the
    concatenation, split by input. The common-neighbour sum is `common_neighbor_aggregate`
    (a sorted merge of the two CSR rows; no (P, N) indicator is ever built).

    Args: in_channels, hidden_channels, out_channels (1 for a link logit), num_layers (GCN
    encoder layers), mlp_layers (layers of the scoring MLP), dropout.
    Shapes: x (N, in), pairs (2, P) -> (P,) logits when out_channels == 1, else (P, out).
    The encoder's graph is `edge_index` (the observed edges); the common neighbours are taken in
    the same graph.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int = 1, num_layers: int = 2,
                 mlp_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout
        self.convs = nn.ModuleList(
            [GCNConv(in_channels if i == 0 else hidden_channels, hidden_channels) for i in range(num_layers)])
        self.lin_ij = nn.Linear(hidden_channels, hidden_channels)
        self.lin_cn = nn.Linear(hidden_channels, hidden_channels, bias=False)
        layers = []
        for _ in range(mlp_layers - 1):
            layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_channels, hidden_channels)]
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_channels, out_channels)]
        self.mlp = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor, edge_index: GraphLike) -> torch.Tensor:
        """(N, in) -> (N, hidden) node embeddings."""
        for i, conv in enumerate(self.convs):
            x = F.dropout(x, self.dropout, self.training)
            x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return x

    def score(self, h: torch.Tensor, edge_index: GraphLike, pairs: torch.Tensor) -> torch.Tensor:
        """Logits of the (2, P) node pairs from embeddings h."""
        graph = as_csr(h, edge_index)
        src, dst = pairs[0].to(torch.int64), pairs[1].to(torch.int64)
        cn = common_neighbor_aggregate(graph, h, src.contiguous(), dst.contiguous())
        out = self.mlp(self.lin_ij(h[src] * h[dst]) + self.lin_cn(cn))
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def forward(self, x: torch.Tensor, edge_index: GraphLike, pairs: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(x, edge_index), edge_index, pairs)
