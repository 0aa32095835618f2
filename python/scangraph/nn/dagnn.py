"""Deep Adaptive Graph Neural Network (Liu, Gao & Ji, "Towards Deeper Graph Neural Networks",
KDD 2020)."""
import torch
import torch.nn.functional as F
from torch import nn

from scangraph.nn.graph_cache import GraphLike, gcn_graph, num_nodes_of
from scangraph.ops.sparse import spmm


class DAGNN(nn.Module):
    """DAGNN: Z = MLP(X) (dropout, Linear, ReLU, dropout, Linear); H_k = Â^k Z for k = 0..K with
    Â = D^-1/2 (A + I) D^-1/2; per node, score s_k = sigmoid(H_k . s) from one learned projection
    s (out_channels -> 1); out = sum_k s_k H_k. Decoupling transform and propagation lets K be
    large (paper: K = 10 on Cora) without over-smoothing: each node picks its own receptive field.

    Shapes: x (N, in_channels) -> logits (N, out_channels). The normalised graph is cached (see
    graph_cache), so the K propagations are K spmm calls on one CSR.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, K: int = 10,
                 dropout: float = 0.5):
        super().__init__()
        self.K, self.dropout = K, dropout
        self.lin1 = nn.Linear(in_channels, hidden_channels)
        self.lin2 = nn.Linear(hidden_channels, out_channels)
        self.proj = nn.Linear(out_channels, 1)

    def forward(self, x: torch.Tensor, edge_index: GraphLike) -> torch.Tensor:
        graph = gcn_graph(edge_index, num_nodes_of(x, edge_index), dtype=x.dtype)
        x = F.dropout(x, self.dropout, self.training)
        x = F.relu(self.lin1(x))
        x = F.dropout(x, self.dropout, self.training)
        h = self.lin2(x)
        hops = [h]
        for _ in range(self.K):
            hops.append(spmm(graph, hops[-1], "sum"))  # the graph's normalised weights
        stacked = torch.stack(hops, dim=1)                    # (N, K + 1, C)
        score = torch.sigmoid(self.proj(stacked))             # (N, K + 1, 1)
        return (score * stacked).sum(1)
