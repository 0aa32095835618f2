"""Full-graph GCN / GAT training on a graph partitioned over processes (scangraph.distributed):
time per epoch, bytes each rank sends, peak memory per rank, for 1, 2 and 4 processes.

    python -m scangraph.bench.distributed --graph email-Enron --procs 1 2 4   # spawns the ranks itself
    python -m scangraph.bench.distributed --partition contiguous   # METIS's halo against contiguous ranges
    torchrun --nproc-per-node=4 -m scangraph.bench.distributed --graph email-Enron   # or under torchrun

The graph has no features or labels of its own: both are drawn from a fixed seed, the same on
every rank. Every rank computes the loss over its own training nodes, divided by the global
count, and the parameter gradients are summed over the ranks (an all-reduce), so the training
is the one-process training, up to rounding. On one machine of few cores the times of several
processes say little about a cluster; the bytes sent (the halo's rows, forward and backward,
per layer) and the memory per rank are the figures that transfer.
"""
import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

import scangraph
from scangraph.distributed import PartitionedGraph
from scangraph.distributed.partition import contiguous_parts, metis_available, metis_parts

FEATURES, HIDDEN, CLASSES = 64, 32, 8


def synthetic_task(num_nodes: int, seed: int = 0):
    """(x, y, train mask): random features, labels and a half of the nodes to train on."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (num_nodes,), generator=g)
    train = torch.rand(num_nodes, generator=g) < 0.5
    return x, y, train


def make_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "gcn":
        layers = [scangraph.nn.GCNConv(FEATURES, HIDDEN), scangraph.nn.GCNConv(HIDDEN, CLASSES)]
    else:
        layers = [scangraph.nn.GATConv(FEATURES, HIDDEN // 4, heads=4), scangraph.nn.GATConv(HIDDEN, CLASSES)]
    return torch.nn.ModuleList(layers)


def train(model, graph, x, y, train_mask, epochs: int, lr: float = 0.5, group=None):
    """Full-graph training, plain gradient descent (Adam's normalised steps would turn the fp32
    rounding of near-zero gradients into steps of lr either way), `epochs` steps; graph a CSRGraph (one process) or this rank's
    PartitionedGraph (x, y, train_mask then this rank's owned nodes). Returns per-epoch losses and
    seconds."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    total = train_mask.sum()
    if isinstance(graph, PartitionedGraph):
        dist.all_reduce(total, group=group)
    losses, seconds = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        optimizer.zero_grad()
        h = F.relu(model[0](x, graph))
        out = model[1](h, graph)
        loss = F.cross_entropy(out[train_mask], y[train_mask], reduction="sum") / total
        loss.backward()
        if isinstance(graph, PartitionedGraph):  # the ranks' shares of the gradient and the loss, summed
            for p in model.parameters():
                dist.all_reduce(p.grad, group=group)
            loss = loss.detach().clone()
            dist.all_reduce(loss, group=group)
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return losses, seconds


def partition_name(partition: str) -> str:
    """The split that `partition` means here: "auto" is METIS when pymetis is installed, else
    contiguous ranges, as PartitionedGraph.build chooses."""
    if partition == "auto":
        return "metis" if metis_available() else "contiguous"
    return partition


def node_parts(graph, world: int, partition: str):
    """The node-to-rank map of `partition`: "metis" (pymetis), "contiguous" (balanced ranges of
    node ids) or "auto" (partition_name)."""
    if partition_name(partition) == "metis":
        parts = metis_parts(graph, world)
        if parts is None:
            raise RuntimeError("--partition metis needs pymetis: pip install 'scangraph[metis]'")
        return parts
    return contiguous_parts(graph.num_rows, world, graph.device)


def run_rank(graph_path: str, kind: str, epochs: int, out_path: str = None, partition: str = "auto"):
    """One rank of the partitioned training (the process group already initialised)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    edge_index, n = scangraph.datasets.load_graph(graph_path)
    graph = scangraph.CSRGraph.from_edge_index(edge_index, num_nodes=n)
    x, y, mask = synthetic_task(n)
    start = time.perf_counter()
    pg = PartitionedGraph.build(graph, node_parts(graph, world, partition))
    build_seconds = time.perf_counter() - start
    model = make_model(kind)
    owned = pg.owned
    losses, seconds = train(model, pg, x[owned], y[owned], mask[owned], epochs)
    result = dict(rank=rank, world=world, kind=kind, owned=pg.num_owned, halo=int(pg.halo.numel()),
                  halo_rows_sent=int(pg.send_index.numel()), bytes_sent_per_epoch=pg.bytes_sent / epochs,
                  seconds_per_epoch=sorted(seconds[1:] or seconds)[len(seconds[1:] or seconds) // 2],
                  build_seconds=build_seconds, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  losses=losses, params={k: v.detach() for k, v in model.state_dict().items()})
    if out_path:
        torch.save(result, out_path)
    return result


def _spawned(rank, world, port, graph_path, kind, epochs, folder, partition):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        run_rank(graph_path, kind, epochs, os.path.join(folder, f"rank{rank}.pt"), partition)
    finally:
        dist.destroy_process_group()


def run_world(world: int, graph_path: str, kind: str, epochs: int, partition: str = "auto"):
    """Every rank's result for `world` spawned processes (1: one process, no partition)."""
    import torch.multiprocessing as mp

    if world == 1:
        edge_index, n = scangraph.datasets.load_graph(graph_path)
        graph = scangraph.CSRGraph.from_edge_index(edge_index, num_nodes=n)
        x, y, mask = synthetic_task(n)
        model = make_model(kind)
        losses, seconds = train(model, graph, x, y, mask, epochs)
        return [dict(rank=0, world=1, kind=kind, owned=n, halo=0, halo_rows_sent=0, bytes_sent_per_epoch=0.0,
                     seconds_per_epoch=sorted(seconds[1:] or seconds)[len(seconds[1:] or seconds) // 2],
                     build_seconds=0.0, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     losses=losses, params={k: v.detach() for k, v in model.state_dict().items()})]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_spawned, args=(world, port, graph_path, kind, epochs, folder, partition), nprocs=world, join=True)
        return [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(world)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default="email-Enron", help="a graph of the data folder's graphs/, or an .npz path")
    parser.add_argument("--model", default="gcn", choices=("gcn", "gat"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--partition", default="auto", choices=("auto", "metis", "contiguous"),
                        help="how nodes are split over the ranks (auto: METIS when pymetis is installed)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    path = args.graph if args.graph.endswith(".npz") else os.path.join(
        scangraph.datasets.shared_data_dir() or ".", "graphs", f"{args.graph}.npz")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun: this process is one rank
        dist.init_process_group("gloo")
        try:
            r = run_rank(path, args.model, args.epochs, partition=args.partition)
            print(json.dumps({k: v for k, v in r.items() if k != "params"}))
        finally:
            dist.destroy_process_group()
        return
    rows = []
    for world in args.procs:
        ranks = run_world(world, path, args.model, args.epochs, args.partition)
        row = dict(procs=world, model=args.model, graph=args.graph, epochs=args.epochs,
                   partition=partition_name(args.partition),
                   seconds_per_epoch=max(r["seconds_per_epoch"] for r in ranks),
                   bytes_sent_per_epoch=[round(r["bytes_sent_per_epoch"]) for r in ranks],
                   halo_rows=[r["halo"] for r in ranks], owned=[r["owned"] for r in ranks],
                   peak_rss_mb=[round(r["peak_rss_mb"], 1) for r in ranks], final_loss=ranks[0]["losses"][-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=os.uname().nodename, torch=torch.__version__, cores=os.cpu_count(),
                           date=time.strftime("%Y-%m-%d"), rows=rows), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
