"""Time per full-batch training epoch, CPU: scangraph's models vs the same models on torch_geometric.

Cases (each with python/scangraph/train.py's MODEL_DEFAULTS, i.e. the Cora hyperparameters):
GCN on Cora, GAT on Cora, GraphMamba on CiteSeer. One epoch = train mode, forward, cross entropy on
the train mask, zero_grad, backward, Adam step (train.py's loop). After `--warmup` epochs, `--epochs`
epochs are timed; the implementations of a case alternate epoch by epoch, so a change of load on
the machine hits all of them alike. Reported: the median ms per epoch (and the quartiles), and the
speedup = the PyG median over scangraph's.

The scangraph models are train.py's (`build_node_model`). The PyG models mirror them layer by layer
and take a copy of their initial weights (the parameter names agree, load_state_dict is strict);
in eval mode both give the same logits (`max_abs_diff_eval` in the JSON checks it). Differences:

- GCN: torch_geometric.nn.GCNConv. `pyg` uses cached=True (PyG's own Cora example: the normalised
  graph is built once, as scangraph's graph cache does); `pyg_nocache` is PyG's default
  (cached=False, gcn_norm on every call); `pyg_adj_t` is cached=True on a torch.sparse CSR
  adjacency (PyG's sparse-matrix path: torch.sparse.mm instead of gather / scatter).
- GAT: torch_geometric.nn.GATConv with the same heads, sizes and dropout. Both drop attention
  coefficients in training (scangraph inside its fused kernel, from a Philox mask; before
  2026-12-03 it dropped whole edges before the softmax, as in the 2026-11-28 figures): the same
  distribution, not the same random masks.
- GraphMamba (GMN, scangraph.nn.GraphMamba): `pyg+mambapy` has the same structure: lin_in, a
  PyG GCNConv (cached) for the local encodings, token means with torch_geometric.utils.scatter
  (mean) over the token's walk nodes, a bidirectional Mamba made of two mambapy MambaBlocks
  (the forward one on the sequences, the backward one on each sequence reversed within its
  own length, its output reversed back), the mean of the scan outputs over each node's
  sequence, residual, LayerNorm and an output PyG GCNConv. mambapy has no packed sequences:
  the token sequences are padded to a (nodes, max_len, hidden) batch (padding at the end, so
  the causal scan never sees it and the readout masks it out); mambapy's pscan further pads L
  to a power of two. scangraph runs both directions over all nodes as one packed cu_seqlens
  sequence, its backward block scanning in reverse without flips. The random-walk tokenisation
  (scangraph.nn.graph_mamba.neighbourhood_tokens, plain torch indexing, resampled at every
  training forward) is shared by both: PyG has no walk sampler without torch_cluster, and
  sharing it keeps the comparison on the layers.

    PYTHONPATH=python python bench/model_epochs.py [--cora PATH] [--citeseer PATH] [--threads 2]
        [--epochs 20] [--warmup 5] [--json out.json]
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F
from torch import nn

from scangraph import datasets
from scangraph.nn.graph_cache import graph_for
from scangraph.nn.graph_mamba import GraphMamba
from scangraph.train import MODEL_DEFAULTS, build_node_model


# ---- the PyG versions of train.py's models -------------------------------------------------------

class PygGCN(nn.Module):
    """train.GCN on torch_geometric.nn.GCNConv."""

    def __init__(self, in_channels, hidden_channels, out_channels, dropout, cached):
        super().__init__()
        from torch_geometric.nn import GCNConv
        self.dropout = dropout
        self.conv1 = GCNConv(in_channels, hidden_channels, cached=cached)
        self.conv2 = GCNConv(hidden_channels, out_channels, cached=cached)

    def forward(self, x, edge_index):
        x = F.dropout(x, self.dropout, self.training)
        x = F.relu(self.conv1(x, edge_index))
        return self.conv2(F.dropout(x, self.dropout, self.training), edge_index)


class PygGAT(nn.Module):
    """train.GAT on torch_geometric.nn.GATConv."""

    def __init__(self, in_channels, hidden_channels, out_channels, heads, dropout):
        super().__init__()
        from torch_geometric.nn import GATConv
        self.dropout = dropout
        self.conv1 = GATConv(in_channels, hidden_channels, heads=heads, dropout=dropout)
        self.conv2 = GATConv(hidden_channels * heads, out_channels, heads=1, concat=False, dropout=dropout)

    def forward(self, x, edge_index):
        x = F.dropout(x, self.dropout, self.training)
        x = F.elu(self.conv1(x, edge_index))
        return self.conv2(F.dropout(x, self.dropout, self.training), edge_index)


def reverse_within_length(padded, lengths):
    """Reverse each row's first lengths[i] positions of (n, L, d), leaving the padding in place:
    the backward scan must start at the last real token, not at the padding."""
    positions = torch.arange(padded.shape[1], device=padded.device)
    index = torch.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)
    return padded.gather(1, index[:, :, None].expand_as(padded))


class PygBiMamba(nn.Module):
    """scangraph.nn.BiMamba on mambapy: a causal block on the sequences plus a causal block on
    them reversed (re-reversed after), the flip form of scangraph's anti-causal block."""

    def __init__(self, d_model, d_state, d_conv, expand):
        super().__init__()
        from mambapy.mamba import MambaBlock, MambaConfig
        config = MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv, expand_factor=expand)
        self.fwd = MambaBlock(config)
        self.bwd = MambaBlock(config)

    def forward(self, padded, lengths):
        backward = reverse_within_length(self.bwd(reverse_within_length(padded, lengths)), lengths)
        return self.fwd(padded) + backward


class PygGraphMamba(nn.Module):
    """scangraph.nn.GraphMamba with PyG's GCNConv, scatter-mean token encodings and mambapy's
    scan over padded per-node sequences (module docstring: what differs)."""

    def __init__(self, in_channels, hidden_channels, out_channels, walk_length=2, num_walks=4, repeats=1,
                 d_state=16, d_conv=4, expand=2, dropout=0.5, eval_seed=0):
        super().__init__()
        from torch_geometric.nn import GCNConv
        self.walk_length, self.num_walks, self.repeats = walk_length, num_walks, repeats
        self.dropout, self.eval_seed = dropout, eval_seed
        self.lin_in = nn.Linear(in_channels, hidden_channels)
        self.local = GCNConv(hidden_channels, hidden_channels, cached=True)
        self.mamba = PygBiMamba(hidden_channels, d_state, d_conv, expand)
        self.norm = nn.LayerNorm(hidden_channels)
        self.head = GCNConv(hidden_channels, out_channels, cached=True)
        self._eval_tokens = None

    # The same sampling as scangraph's model: fresh walks in training, one fixed draw in eval.
    tokens = GraphMamba.tokens

    def forward(self, x, edge_index):
        from torch_geometric.utils import scatter
        n = x.shape[0]
        graph = graph_for(edge_index, n, "raw", lambda g: g)  # for the walk sampler only
        h = self.lin_in(F.dropout(x, self.dropout, self.training))
        local = F.relu(self.local(h, edge_index))
        tokens, cu_seqlens = self.tokens(graph)
        num_tokens = tokens.num_rows
        token_of_entry = torch.repeat_interleave(torch.arange(num_tokens), tokens.rowptr.diff())
        walk_nodes = F.dropout(local, self.dropout, self.training)[tokens.col.to(torch.int64)]
        sequence = scatter(walk_nodes, token_of_entry, dim=0, dim_size=num_tokens, reduce="mean")
        # Pack the (T, hidden) token list into (n, max_len, hidden), padding at the end.
        offsets = cu_seqlens.to(torch.int64)
        lengths = offsets.diff()
        node_of_token = torch.repeat_interleave(torch.arange(n), lengths)
        position = torch.arange(num_tokens) - offsets[:-1][node_of_token]
        padded = sequence.new_zeros(n, int(lengths.max()), sequence.shape[1])
        padded = padded.index_put((node_of_token, position), sequence)
        scanned = self.mamba(padded, lengths)
        real = (torch.arange(padded.shape[1]) < lengths[:, None]).to(scanned.dtype)
        readout = (scanned * real[:, :, None]).sum(1) / lengths[:, None].to(scanned.dtype)
        out = self.norm(readout + local)
        return self.head(F.dropout(out, self.dropout, self.training), edge_index)


# ---- cases ---------------------------------------------------------------------------------------

def build_cases(name, data, cfg):
    """[(impl name, model, graph argument)]: scangraph first, then the PyG versions with a copy of
    scangraph's initial weights."""
    f_in, classes = data.x.shape[1], data.num_classes
    ours = build_node_model(name, f_in, classes, cfg)
    edge_index = data.edge_index
    cases = [("scangraph", ours, edge_index)]
    if name == "gcn":
        from torch_geometric.utils import to_torch_csr_tensor
        # adj_t[i, j] != 0 for an edge j -> i (PyG's transposed-adjacency convention).
        adj_t = to_torch_csr_tensor(edge_index.flip(0), size=(data.num_nodes, data.num_nodes))
        for impl, cached, graph in (("pyg", True, edge_index), ("pyg_nocache", False, edge_index),
                                    ("pyg_adj_t", True, adj_t)):
            cases.append((impl, PygGCN(f_in, cfg["hidden"], classes, cfg["dropout"], cached), graph))
    elif name == "gat":
        cases.append(("pyg", PygGAT(f_in, cfg["hidden"], classes, cfg["heads"], cfg["dropout"]), edge_index))
    elif name == "graphmamba":
        model = PygGraphMamba(f_in, cfg["hidden"], classes, walk_length=cfg["walk_length"],
                              num_walks=cfg["num_walks"], d_state=cfg["d_state"], expand=cfg["expand"],
                              dropout=cfg["dropout"])
        cases.append(("pyg+mambapy", model, edge_index))
    for _, model, _ in cases[1:]:
        model.load_state_dict(ours.state_dict())
    return cases


@torch.no_grad()
def eval_difference(cases, data):
    """Max |logits - scangraph's logits| in eval mode (no dropout, fixed walks): the same model?"""
    outs = []
    for _, model, graph in cases:
        model.eval()
        outs.append(model(data.x, graph))
    return {impl: float((out - outs[0]).abs().max()) for (impl, _, _), out in zip(cases[1:], outs[1:])}


def train_epoch(model, optimizer, data, graph):
    model.train()
    loss = F.cross_entropy(model(data.x, graph)[data.train_mask], data.y[data.train_mask])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def time_case(cases, data, cfg, warmup, epochs):
    """ms per epoch of each implementation, epochs interleaved across implementations."""
    optimizers = [torch.optim.Adam(m.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
                  for _, m, _ in cases]
    times = [[] for _ in cases]
    for epoch in range(warmup + epochs):
        for i, (_, model, graph) in enumerate(cases):
            start = time.perf_counter()
            train_epoch(model, optimizers[i], data, graph)
            if epoch >= warmup:
                times[i].append(1000 * (time.perf_counter() - start))
    return times


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_revision():
    """The repository's commit, + "-dirty" when tracked files differ from it (the numbers belong to
    the code as it was when measured)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def package_version(distribution):
    """The installed distribution's version (mambapy has no __version__ attribute)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.join(datasets.shared_data_dir() or ".", "planetoid")
    parser.add_argument("--cora", default=os.path.join(root, "cora.npz"))
    parser.add_argument("--citeseer", default=os.path.join(root, "citeseer.npz"))
    parser.add_argument("--models", default="gcn,gat,graphmamba")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs per implementation")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results and machine info here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = {"gcn": args.cora, "gat": args.cora, "graphmamba": args.citeseer}
    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "torch_geometric": package_version("torch_geometric"),
               "mambapy": package_version("mambapy"), "scangraph": package_version("scangraph"),
               "python": platform.python_version(), "revision": source_revision(),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "loadavg_start": os.getloadavg()}
    print(f"{machine['cpu']}, {machine['torch_threads']} torch threads, torch {machine['torch']}, "
          f"torch_geometric {machine['torch_geometric']}, mambapy {machine['mambapy']}, {machine['date']}, "
          f"load average {machine['loadavg_start'][0]:.2f}")
    print(f"median of {args.epochs} epochs after {args.warmup} warm-up, implementations interleaved per epoch")
    rows = []
    header = (f"{'model':10s} {'data':9s} {'implementation':14s} {'ms/epoch':>9s} {'p25-p75':>15s} "
              f"{'speedup':>8s} {'eval max|diff|':>14s}")
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        cfg = dict(MODEL_DEFAULTS[name])
        data = datasets.load_planetoid(paths[name])
        data_name = os.path.splitext(os.path.basename(paths[name]))[0]
        torch.manual_seed(args.seed)
        cases = build_cases(name, data, cfg)
        diffs = eval_difference(cases, data)
        torch.manual_seed(args.seed)
        times = time_case(cases, data, cfg, args.warmup, args.epochs)
        ours = statistics.median(times[0])
        for (impl, _, _), t in zip(cases, times):
            q1, _, q3 = statistics.quantiles(t, n=4)
            median = statistics.median(t)
            row = {"model": name, "data": data_name, "impl": impl, "ms_median": median, "ms_p25": q1, "ms_p75": q3,
                   "ms_all": t, "speedup_of_scangraph": None if impl == "scangraph" else median / ours,
                   "max_abs_diff_eval": diffs.get(impl)}
            rows.append(row)
            speedup = "" if impl == "scangraph" else f"{median / ours:.2f}x"
            diff = "" if impl == "scangraph" else f"{diffs[impl]:.1e}"
            print(f"{name:10s} {data_name:9s} {impl:14s} {median:9.2f} {q1:7.2f}-{q3:<7.2f} {speedup:>8s} {diff:>14s}",
                  flush=True)
    machine["loadavg_end"] = os.getloadavg()
    print(f"speedup = the implementation's median over scangraph's (> 1: scangraph faster); "
          f"load average at the end {machine['loadavg_end'][0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "epochs": args.epochs, "warmup": args.warmup, "seed": args.seed,
                       "configs": {name: MODEL_DEFAULTS[name] for name in args.models.split(",")},
                       "data": {name: paths[name] for name in args.models.split(",")}, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
