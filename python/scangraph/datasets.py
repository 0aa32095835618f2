"""Graphs for tests, examples and benchmarks.

Built in: Zachary's karate club and synthetic generators (R-MAT power-law graphs). Files are
read from a path the caller gives (the graph .npz files of the form (edge_index, num_nodes));
the package ships no data sets.
"""
import os
from typing import Optional, Tuple

import numpy as np
import torch

# Zachary's karate club (34 members, 78 friendships), the undirected edge list.
KARATE_EDGES = (
    (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (0, 7), (0, 8), (0, 10), (0, 11), (0, 12),
    (0, 13), (0, 17), (0, 19), (0, 21), (0, 31), (1, 2), (1, 3), (1, 7), (1, 13), (1, 17),
    (1, 19), (1, 21), (1, 30), (2, 3), (2, 7), (2, 8), (2, 9), (2, 13), (2, 27), (2, 28),
    (2, 32), (3, 7), (3, 12), (3, 13), (4, 6), (4, 10), (5, 6), (5, 10), (5, 16), (6, 16),
    (8, 30), (8, 32), (8, 33), (9, 33), (13, 33), (14, 32), (14, 33), (15, 32), (15, 33),
    (18, 32), (18, 33), (19, 33), (20, 32), (20, 33), (22, 32), (22, 33), (23, 25), (23, 27),
    (23, 29), (23, 32), (23, 33), (24, 25), (24, 27), (24, 31), (25, 31), (26, 29), (26, 33),
    (27, 33), (28, 31), (28, 33), (29, 32), (29, 33), (30, 32), (30, 33), (31, 32), (31, 33),
    (32, 33),
)


def karate() -> Tuple[torch.Tensor, int]:
    """(edge_index (2, 156) with both directions, num_nodes = 34)."""
    one_way = torch.tensor(KARATE_EDGES, dtype=torch.int64).t()
    return torch.cat([one_way, one_way.flip(0)], dim=1), 34


def load_graph(path: str) -> Tuple[torch.Tensor, int]:
    """(edge_index, num_nodes) from an .npz holding `edge_index` (2, E) and `num_nodes`."""
    with np.load(path, allow_pickle=False) as data:
        edge_index = torch.from_numpy(data["edge_index"].astype(np.int64))
        num_nodes = int(data["num_nodes"]) if "num_nodes" in data.files else int(edge_index.max()) + 1
    return edge_index, num_nodes


def rmat(num_nodes: int, num_edges: int, probabilities=(0.57, 0.19, 0.19, 0.05),
         seed: int = 0, dedupe: bool = True) -> Tuple[torch.Tensor, int]:
    """R-MAT graph (Chakrabarti et al. 2004): each edge descends log2(n) levels of the adjacency
    matrix, choosing a quadrant with the given probabilities (Graph500's defaults), which gives
    the heavy-tailed degrees of real networks. Self loops are dropped; with dedupe, duplicates."""
    levels = max(1, int(np.ceil(np.log2(max(num_nodes, 2)))))
    rng = np.random.default_rng(seed)
    src = np.zeros(num_edges, dtype=np.int64)
    dst = np.zeros(num_edges, dtype=np.int64)
    cumulative = np.cumsum(probabilities)
    for level in range(levels):
        quadrant = np.searchsorted(cumulative, rng.random(num_edges) * cumulative[-1], side="right")
        src |= (quadrant >> 1).astype(np.int64) << level
        dst |= (quadrant & 1).astype(np.int64) << level
    # Scramble ids so the hubs are not all at low ids (as in Graph500).
    relabel = rng.permutation(1 << levels)
    src, dst = relabel[src] % num_nodes, relabel[dst] % num_nodes
    keep = src != dst
    src, dst = src[keep], dst[keep]
    if dedupe:  # one int64 key per edge: sorting keys is far faster than unique over columns
        key = np.unique(src * num_nodes + dst)
        src, dst = key // num_nodes, key % num_nodes
    return torch.from_numpy(np.stack([src, dst])), num_nodes


def shared_data_dir() -> Optional[str]:
    """The project's data folder for tests and benchmarks: $SCANGRAPH_DATA, else ../shared/data
    beside a source checkout; None where neither exists. Never needed by the package itself."""
    candidates = [os.environ.get("SCANGRAPH_DATA")]
    here = os.path.dirname(os.path.abspath(__file__))
    candidates.append(os.path.join(here, "..", "..", "..", "shared", "data"))
    candidates.append(os.path.join(os.getcwd(), "..", "shared", "data"))
    for path in candidates:
        if path and os.path.isdir(path):
            return os.path.normpath(path)
    return None
