"""Selective state-space models on graphs: GraphMamba (Graph Mamba Networks, Behrouz & Hashemi,
"Graph Mamba: Towards Learning on Graphs with State Space Models", KDD 2024) and
GraphMambaLayer (Wang et al., "Graph-Mamba: Towards Long-Range Graph Sequence Modeling with
Selective State Spaces", 2024)."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from scangraph.distributed.partition import PartitionedGraph
from scangraph.graph import CSRGraph
from scangraph.nn.conv import GCNConv
from scangraph.nn.graph_cache import GraphLike, as_csr, as_csr_of, num_nodes_of
from scangraph.nn.mamba import BiMamba, Mamba
from scangraph.ops.sparse import spmm

# Columns of the identity propagated at once when computing RWSE: bounds the dense block
# (num_nodes x block) to about 2^22 floats (16 MB) whatever the graph size.
RWSE_BLOCK_ELEMENTS = 1 << 22


def random_walks(graph: CSRGraph, starts: torch.Tensor, length: int,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(len(starts), length + 1) uniform random walks: each step moves from a node to one of its
    CSR neighbours (the columns of its row); a node without neighbours stays put."""
    degree = graph.in_degree()
    walk = [starts]
    current = starts
    for _ in range(length):
        d = degree[current]
        u = torch.rand(current.shape, generator=generator, device=current.device)
        offset = torch.minimum((u * d).to(torch.int64), (d - 1).clamp(min=0))
        position = (graph.rowptr[current] + offset).clamp(max=max(graph.num_edges - 1, 0))
        step = graph.col[position].to(torch.int64) if graph.num_edges else current
        current = torch.where(d > 0, step, current)
        walk.append(current)
    return torch.stack(walk, dim=1)


def neighbourhood_tokens(graph: CSRGraph, walk_length: int, num_walks: int, repeats: int,
                         generator: Optional[torch.Generator] = None) -> Tuple[CSRGraph, torch.Tensor]:
    """GMN's tokenisation as a CSR graph over tokens, and the int32 cu_seqlens of each node's sequence.

    For node v and each hop count k = walk_length, ..., 1 (widest neighbourhood first), `repeats`
    tokens, each the multiset of nodes on `num_walks` random walks of length k from v; the last
    token of v's sequence is v itself. Token rows list their nodes (with multiplicity), so
    spmm(tokens, h, "mean") is each token's mean node encoding. A node without neighbours has
    only its own token: sequences vary in length, hence cu_seqlens.
    """
    n = graph.num_rows
    nodes = torch.arange(n, device=graph.device)
    blocks, lengths = [], []
    for k in range(walk_length, 0, -1):
        walks = random_walks(graph, nodes.repeat_interleave(repeats * num_walks), k, generator)
        blocks.append(walks.reshape(n, repeats * num_walks * (k + 1)))
        lengths += [num_walks * (k + 1)] * repeats
    blocks.append(nodes.view(n, 1))
    lengths.append(1)
    entries = torch.cat(blocks, dim=1)                                   # (n, entries per node)
    tokens_per_node = len(lengths)
    is_self = torch.arange(tokens_per_node, device=graph.device) == tokens_per_node - 1
    row_keep = (graph.in_degree() > 0)[:, None] | is_self[None, :]       # (n, tokens per node)
    row_length = torch.tensor(lengths, device=graph.device).expand(n, tokens_per_node)
    entry_keep = torch.repeat_interleave(row_keep.reshape(-1), row_length.reshape(-1))
    kept_length = row_length[row_keep]
    rowptr = torch.cat([kept_length.new_zeros(1), kept_length.cumsum(0)])
    tokens = CSRGraph(rowptr, entries.reshape(-1)[entry_keep], num_cols=n, validate=False)
    sequence_length = row_keep.sum(1)
    cu_seqlens = torch.cat([sequence_length.new_zeros(1), sequence_length.cumsum(0)]).to(torch.int32)
    return tokens, cu_seqlens


@torch.no_grad()
def random_walk_encoding(graph: CSRGraph, steps: int) -> torch.Tensor:
    """RWSE (Dwivedi et al. 2022): (N, steps) probabilities that a uniform random walk from each
    node is back at it after 1..steps steps, the diagonal of (D^-1 A)^k. Propagates blocks of
    identity columns with spmm(mean), so memory stays bounded; kept with the graph (derived)."""
    return graph.derived(("rwse", steps), lambda g: _random_walk_encoding(g, steps))


def _random_walk_encoding(graph: CSRGraph, steps: int) -> torch.Tensor:
    n = graph.num_rows
    out = torch.zeros(n, steps, device=graph.device)
    block = max(1, min(n, RWSE_BLOCK_ELEMENTS // max(n, 1)))
    for start in range(0, n, block):
        ids = torch.arange(start, min(start + block, n), device=graph.device)
        cols = torch.arange(ids.numel(), device=graph.device)
        state = torch.zeros(n, ids.numel(), device=graph.device)
        state[ids, cols] = 1.0
        for k in range(steps):
            state = spmm(graph, state, "mean")
            out[ids, k] = state[ids, cols]
    return out


def _not_partitioned(layer: str, graph) -> None:
    """The Graph Mamba layers scan sequences of nodes drawn over the whole graph (walks, degree
    orders), which cross the parts of a PartitionedGraph: not supported there yet."""
    if isinstance(graph, PartitionedGraph):
        raise TypeError(f"{layer}: its node sequences (random walks, degree order) run across the whole graph and "
                        "would cross the ranks' parts; a PartitionedGraph is not supported yet (train it with data "
                        "parallelism, or partition the graph into subgraphs it scans whole)")

class GraphMamba(nn.Module):
    """Graph Mamba Network (GMN, Behrouz & Hashemi 2024) for node-level tasks.

    Per node v, a sequence of neighbourhood tokens ordered from the widest neighbourhood to v
    itself (`neighbourhood_tokens`: `num_walks` random walks per token, `repeats` tokens per hop
    count 1..walk_length). Each token is encoded by a local MPNN: a GCN layer over the node
    encodings, averaged over the token's walk nodes (spmm mean over the token CSR). A
    bidirectional selective scan (BiMamba) runs over every node's sequence, all nodes packed in
    one cu_seqlens call (batch 1); the mean of the scan's outputs over v's sequence, plus the
    local encoding (residual), LayerNorm and an output GCN layer, gives v's output. Optional RWSE (`rwse_steps` > 0) adds a linear map of the random-walk
    return probabilities to the input encoding.

    Walks are resampled at every training forward (the paper's sampling, an augmentation too);
    in eval mode a fixed sample (seed `eval_seed`) is drawn once per graph, so predictions are
    deterministic. Shapes: x (N, in_channels) -> (N, out_channels).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, walk_length: int = 2,
                 num_walks: int = 4, repeats: int = 1, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 rwse_steps: int = 0, dropout: float = 0.5, eval_seed: int = 0):
        super().__init__()
        self.walk_length, self.num_walks, self.repeats = walk_length, num_walks, repeats
        self.rwse_steps, self.dropout, self.eval_seed = rwse_steps, dropout, eval_seed
        self.lin_in = nn.Linear(in_channels, hidden_channels)
        self.rwse_lin = nn.Linear(rwse_steps, hidden_channels) if rwse_steps > 0 else None
        self.local = GCNConv(hidden_channels, hidden_channels)
        self.mamba = BiMamba(hidden_channels, d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm = nn.LayerNorm(hidden_channels)
        # The output layer propagates once more (a GCN layer rather than a per-node linear map):
        # GMN interleaves local message passing with the scans, and on homophilous graphs the
        # final smoothing is worth several points of accuracy.
        self.head = GCNConv(hidden_channels, out_channels)
        self._eval_tokens = None  # (graph, tokens, cu_seqlens) of the last eval graph

    def tokens(self, graph: CSRGraph) -> Tuple[CSRGraph, torch.Tensor]:
        if self.training:
            return neighbourhood_tokens(graph, self.walk_length, self.num_walks, self.repeats)
        if self._eval_tokens is None or self._eval_tokens[0] is not graph:
            generator = torch.Generator(device=graph.device).manual_seed(self.eval_seed)
            self._eval_tokens = (graph,) + neighbourhood_tokens(
                graph, self.walk_length, self.num_walks, self.repeats, generator)
        return self._eval_tokens[1:]

    def forward(self, x: torch.Tensor, edge_index: GraphLike) -> torch.Tensor:
        _not_partitioned("GraphMamba", edge_index)
        graph = as_csr(x, edge_index)
        h = self.lin_in(F.dropout(x, self.dropout, self.training))
        if self.rwse_lin is not None:
            h = h + self.rwse_lin(random_walk_encoding(graph, self.rwse_steps).to(h.dtype))
        local = F.relu(self.local(h, edge_index))
        tokens, cu_seqlens = self.tokens(graph)
        sequence = spmm(tokens, F.dropout(local, self.dropout, self.training), "mean")  # (T, hidden)
        scanned = self.mamba(sequence.unsqueeze(0), cu_seqlens=cu_seqlens)[0]
        # Read out the mean over the node's sequence: the forward scan has seen every token
        # only at the last position and the reverse scan only at the first, so neither single
        # position carries both directions.
        positions = torch.arange(scanned.shape[0], device=x.device)
        readout = CSRGraph(cu_seqlens.to(torch.int64), positions, num_cols=scanned.shape[0], validate=False)
        out = self.norm(spmm(readout, scanned, "mean") + local)
        return self.head(F.dropout(out, self.dropout, self.training), edge_index)


class GraphMambaLayer(nn.Module):
    """One Graph-Mamba layer (Wang et al. 2024), GPS-style: a local GCN branch and a global Mamba
    branch over the nodes of each graph sorted by degree (ascending, so high-degree nodes see
    the most context), with random tie-breaking noise in training; the scan output is put back
    in node order, each branch gets a residual and LayerNorm, their sum goes through an FFN.

    Shapes: x (N, channels), batch (N,) graph id of each node (None: one graph) -> (N, channels).
    All graphs of a batch are scanned in one packed cu_seqlens call.
    """

    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout
        self.local = GCNConv(channels, channels)
        self.mamba = Mamba(channels, d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm_local = nn.LayerNorm(channels)
        self.norm_global = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, 2 * channels), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(2 * channels, channels))
        self.norm_ffn = nn.LayerNorm(channels)

    def degree_order(self, graph: CSRGraph, batch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(permutation sorting nodes by (graph, degree, noise), int32 cu_seqlens of the graphs)."""
        degree = graph.in_degree().to(torch.float64)
        noise = (torch.rand(degree.shape, device=degree.device, dtype=torch.float64) if self.training
                 else torch.zeros_like(degree))
        # Noise in [0, 1) only reorders nodes of equal degree; graphs stay contiguous.
        key = batch.to(torch.float64) * (float(degree.max()) + 2.0 if degree.numel() else 1.0) + degree + noise
        order = torch.argsort(key, stable=True)
        counts = torch.bincount(batch, minlength=int(batch.max()) + 1 if batch.numel() else 0)
        cu_seqlens = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
        return order, cu_seqlens

    def forward(self, x: torch.Tensor, edge_index: GraphLike, batch: Optional[torch.Tensor] = None) -> torch.Tensor:
        _not_partitioned(type(self).__name__, edge_index)
        n = num_nodes_of(x, edge_index)
        graph = as_csr_of(edge_index, n)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.int64, device=x.device)
        order, cu_seqlens = self.degree_order(graph, batch)
        scanned = self.mamba(x[order].unsqueeze(0), cu_seqlens=cu_seqlens)[0]
        global_out = torch.empty_like(scanned).index_copy_(0, order, scanned)  # back to node order
        h_local = self.norm_local(x + F.dropout(self.local(x, edge_index), self.dropout, self.training))
        h_global = self.norm_global(x + F.dropout(global_out, self.dropout, self.training))
        h = h_local + h_global
        return self.norm_ffn(h + self.ffn(h))
