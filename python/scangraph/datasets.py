"""Graphs for tests, examples and benchmarks.

Built in: Zachary's karate club and synthetic generators (R-MAT power-law graphs, stochastic
block models with features, the copying task for sequence models). Files are read from a path
the caller gives (graph .npz files of the form (edge_index, num_nodes), Planetoid-format node
classification files); the package ships no data sets. `link_split` prepares link prediction.
"""
import os
from typing import NamedTuple, Optional, Tuple

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


class NodeData(NamedTuple):
    """A node-classification data set: x (N, F) float32 features, y (N,) int64 labels,
    edge_index (2, E) int64, boolean (N,) train / val / test masks."""
    x: torch.Tensor
    y: torch.Tensor
    edge_index: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1

    def to(self, device) -> "NodeData":
        return NodeData(*(t.to(device) for t in self))


def _mask(index: np.ndarray, num_nodes: int) -> torch.Tensor:
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    mask[torch.from_numpy(index.astype(np.int64))] = True
    return mask


def load_planetoid(path: str, normalize_features: bool = True) -> NodeData:
    """A Planetoid-format .npz (Cora, CiteSeer, ...): `edge_index`, CSR features (`x_indptr`,
    `x_indices`, `x_data`, `x_shape`), `y`, `train_index`, `val_index`, `test_index` (the
    public split). normalize_features divides each row by its sum, clamped at 1, after shifting
    negative features to 0 (PyG's NormalizeFeatures, the usual preprocessing of these data
    sets); all-zero rows stay zero."""
    with np.load(path, allow_pickle=False) as data:
        rows, cols = (int(v) for v in data["x_shape"])
        indptr, indices = data["x_indptr"].astype(np.int64), data["x_indices"].astype(np.int64)
        x = torch.zeros(rows, cols, dtype=torch.float32)
        row_of = np.repeat(np.arange(rows), np.diff(indptr))
        x[torch.from_numpy(row_of), torch.from_numpy(indices)] = torch.from_numpy(data["x_data"].astype(np.float32))
        y = torch.from_numpy(data["y"].astype(np.int64))
        edge_index = torch.from_numpy(data["edge_index"].astype(np.int64))
        masks = [_mask(data[name], rows) for name in ("train_index", "val_index", "test_index")]
    if normalize_features:  # PyG's NormalizeFeatures: shift to non-negative, rows sum to 1
        x = x - x.min().clamp(max=0)
        x = x / x.sum(1, keepdim=True).clamp(min=1.0)
    return NodeData(x, y, edge_index, *masks)


def save_planetoid(path: str, data: NodeData) -> None:
    """Write `data` in the Planetoid .npz format that load_planetoid reads (features as CSR)."""
    x = data.x.numpy()
    rows, cols = np.nonzero(x)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=x.shape[0]))])
    np.savez(path, edge_index=data.edge_index.numpy().astype(np.int64), x_indptr=indptr.astype(np.int64),
             x_indices=cols.astype(np.int64), x_data=x[rows, cols].astype(np.float32),
             x_shape=np.array(x.shape, dtype=np.int64), y=data.y.numpy().astype(np.int64),
             **{f"{name}_index": np.nonzero(mask.numpy())[0].astype(np.int64)
                for name, mask in (("train", data.train_mask), ("val", data.val_mask), ("test", data.test_mask))})


def planetoid_path(name: str) -> Optional[str]:
    """The shared data folder's copy of a Planetoid data set ("cora", "citeseer"), or None."""
    root = shared_data_dir()
    path = None if root is None else os.path.join(root, "planetoid", f"{name.lower()}.npz")
    return path if path is not None and os.path.isfile(path) else None


def stochastic_block_model(num_nodes: int = 200, num_classes: int = 4, p_in: float = 0.1,
                           p_out: float = 0.01, num_features: int = 16, feature_noise: float = 1.0,
                           train_per_class: int = 10, seed: int = 0) -> NodeData:
    """A synthetic node-classification graph: a stochastic block model (Holland et al. 1983),
    edges within a class with probability p_in, across with p_out, undirected; features are a
    class centroid plus Gaussian noise. Split: train_per_class nodes per class, half of the rest
    validation, half test."""
    rng = np.random.default_rng(seed)
    y = np.sort(rng.integers(0, num_classes, num_nodes))
    same = y[:, None] == y[None, :]
    upper = np.triu(rng.random((num_nodes, num_nodes)) < np.where(same, p_in, p_out), k=1)
    src, dst = np.nonzero(upper)
    edge_index = torch.from_numpy(np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]).astype(np.int64))
    centroids = rng.normal(size=(num_classes, num_features))
    x = centroids[y] + feature_noise * rng.normal(size=(num_nodes, num_features))
    order = rng.permutation(num_nodes)
    train = np.concatenate([order[y[order] == c][:train_per_class] for c in range(num_classes)])
    rest = np.setdiff1d(order, train, assume_unique=True)
    rest = rest[rng.permutation(rest.size)]
    val, test = rest[: rest.size // 2], rest[rest.size // 2:]
    return NodeData(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), edge_index,
                    _mask(train, num_nodes), _mask(val, num_nodes), _mask(test, num_nodes))


class LinkSplit(NamedTuple):
    """Edges of an undirected graph split for link prediction: `train_edge_index` (2, 2 E_train)
    both directions (the message-passing graph), and (2, P) one-direction pairs: train_pos,
    val_pos, val_neg, test_pos, test_neg (negatives: uniformly sampled non-edges)."""
    train_edge_index: torch.Tensor
    train_pos: torch.Tensor
    val_pos: torch.Tensor
    val_neg: torch.Tensor
    test_pos: torch.Tensor
    test_neg: torch.Tensor


def link_split(edge_index: torch.Tensor, num_nodes: int, val_fraction: float = 0.1,
               test_fraction: float = 0.2, seed: int = 0) -> LinkSplit:
    """Random split of an undirected graph's edges (each pair once, i < j) into train / val /
    test (70 / 10 / 20 by default), with as many negative pairs as positives for val and test."""
    rng = np.random.default_rng(seed)
    ei = edge_index.numpy()
    pairs = np.unique(np.sort(ei[:, ei[0] != ei[1]], axis=0), axis=1)
    pairs = pairs[:, rng.permutation(pairs.shape[1])]
    n_val, n_test = int(round(val_fraction * pairs.shape[1])), int(round(test_fraction * pairs.shape[1]))
    val, test, train = pairs[:, :n_val], pairs[:, n_val:n_val + n_test], pairs[:, n_val + n_test:]
    existing = set((pairs[0] * num_nodes + pairs[1]).tolist())
    negatives = []
    while len(negatives) < n_val + n_test:
        a, b = sorted(rng.integers(0, num_nodes, 2).tolist())
        if a != b and a * num_nodes + b not in existing:
            existing.add(a * num_nodes + b)
            negatives.append((a, b))
    negatives = np.array(negatives, dtype=np.int64).T
    both = np.concatenate([train, train[::-1]], axis=1)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    return LinkSplit(t(both), t(train), t(val), t(negatives[:, :n_val]), t(test), t(negatives[:, n_val:]))


def copy_task(num_sequences: int, num_tokens: int = 8, delay: int = 0, vocab_size: int = 8,
              seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The copying memory task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): a sequence
    of num_tokens symbols in 1..vocab_size, `delay` blanks (0), a delimiter (vocab_size + 1),
    then num_tokens - 1 more blanks during which the model must output the symbols in order.
    Returns (inputs, targets), both (num_sequences, 2 num_tokens + delay) int64; targets are
    -100 (ignored by cross_entropy) except at the last num_tokens positions. The vocabulary has
    vocab_size + 2 entries."""
    generator = torch.Generator().manual_seed(seed)
    symbols = torch.randint(1, vocab_size + 1, (num_sequences, num_tokens), generator=generator)
    length = 2 * num_tokens + delay
    inputs = torch.zeros(num_sequences, length, dtype=torch.int64)
    inputs[:, :num_tokens] = symbols
    inputs[:, num_tokens + delay] = vocab_size + 1
    targets = torch.full((num_sequences, length), -100, dtype=torch.int64)
    targets[:, length - num_tokens:] = symbols
    return inputs, targets
