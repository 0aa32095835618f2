"""Does overlapping the halo exchange with the interior rows pay? A measurement for a partitioned
graph's spmm (forward, inference), on gloo processes of this machine:

  sequential  the halo's features received (all_to_all), then the rows' spmm (what spmm on a
              PartitionedGraph runs);
  overlapped  the exchange started asynchronously, the interior rows (those reading owned nodes
              only) reduced meanwhile, then the boundary rows once the halo has arrived.

Both give the same rows (checked). Run: python -m scangraph.bench.halo_overlap --graph
email-Enron --procs 2 4. On a CPU the processes share the cores that would overlap, so the
figure that transfers is the interior share of the rows and edges; the times say whether gloo
on this machine gains anything."""
import argparse
import json
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scangraph import datasets
from scangraph.distributed import PartitionedGraph
from scangraph.graph import CSRGraph
from scangraph.ops.sparse import spmm


def split_rows(local: CSRGraph, num_owned: int):
    """(interior, boundary) row ids of a rank's local graph and their CSR graphs: interior rows
    read owned columns only (num_cols = num_owned), boundary rows read the halo too."""
    degree = local.rowptr[1:] - local.rowptr[:-1]
    rows = torch.repeat_interleave(torch.arange(local.num_rows), degree)
    halo_edges = torch.bincount(rows[local.col.to(torch.int64) >= num_owned], minlength=local.num_rows)
    graphs = []
    for keep in (halo_edges == 0, halo_edges > 0):
        edges = keep[rows]
        rowptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(degree[keep], 0)])
        weight = None if local.edge_weight is None else local.edge_weight[edges]
        num_cols = num_owned if len(graphs) == 0 else local.num_cols
        graphs.append((torch.nonzero(keep).flatten(), CSRGraph(rowptr, local.col[edges], weight, num_cols=num_cols)))
    return graphs


def overlapped_spmm(pg: PartitionedGraph, parts, x: torch.Tensor) -> torch.Tensor:
    (inner_rows, inner), (edge_rows, boundary) = parts
    send = x[pg.send_index].contiguous()
    recv = x.new_empty((sum(pg.recv_counts),) + tuple(x.shape[1:]))
    work = dist.all_to_all_single(recv, send, output_split_sizes=pg.recv_counts, input_split_sizes=pg.send_counts,
                                  group=pg.group, async_op=True)
    out = x.new_empty((pg.num_owned,) + tuple(x.shape[1:]))
    out[inner_rows] = spmm(inner, x, "sum")
    work.wait()
    out[edge_rows] = spmm(boundary, torch.cat([x, recv]), "sum")
    return out


def _rank(rank, world, port, graph_path, features, runs, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        edge_index, num_nodes = datasets.load_graph(graph_path)
        graph = CSRGraph.from_edge_index(edge_index, num_nodes=num_nodes)
        pg = PartitionedGraph.build(graph, world)
        parts = split_rows(pg.local, pg.num_owned)
        x = torch.randn(pg.num_owned, features, generator=torch.Generator().manual_seed(rank))
        times = {"sequential": [], "overlapped": []}
        with torch.no_grad():
            assert torch.allclose(overlapped_spmm(pg, parts, x), spmm(pg, x, "sum"), rtol=1e-5, atol=1e-5)
            for _ in range(runs):
                for name, fn in (("sequential", lambda: spmm(pg, x, "sum")),
                                 ("overlapped", lambda: overlapped_spmm(pg, parts, x))):
                    dist.barrier()
                    start = time.perf_counter()
                    fn()
                    dist.barrier()  # the slowest rank's time
                    times[name].append((time.perf_counter() - start) * 1e3)
        inner_rows, inner = parts[0]
        result = dict(rank=rank, rows=pg.num_owned, interior_rows=int(inner_rows.numel()), edges=pg.local.num_edges,
                      interior_edges=inner.num_edges, halo=int(pg.halo.numel()),
                      **{f"{k}_ms": statistics.median(v) for k, v in times.items()})
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def run(world: int, graph_path: str, features: int, runs: int):
    with tempfile.TemporaryDirectory() as folder, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(_rank, args=(world, port, graph_path, features, runs, folder), nprocs=world, join=True)
        return [json.load(open(os.path.join(folder, f"rank{r}.json"))) for r in range(world)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default="email-Enron", help="a graph of the data folder's graphs/, or an .npz path")
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    path = args.graph if args.graph.endswith(".npz") else os.path.join(datasets.shared_data_dir() or "", "graphs",
                                                                        f"{args.graph}.npz")
    results = {}
    for world in args.procs:
        ranks = run(world, path, args.features, args.runs)
        results[world] = ranks
        seq, ovl = ranks[0]["sequential_ms"], ranks[0]["overlapped_ms"]
        rows = sum(r["rows"] for r in ranks)
        inner = sum(r["interior_rows"] for r in ranks)
        edges, inner_edges = sum(r["edges"] for r in ranks), sum(r["interior_edges"] for r in ranks)
        print(f"{world} processes, {args.graph}, F={args.features}: sequential {seq:.2f} ms, overlapped {ovl:.2f} ms "
              f"({seq / ovl:.2f}x); interior rows {inner / rows:.1%}, interior edges {inner_edges / edges:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(graph=args.graph, features=args.features, runs=args.runs, torch=torch.__version__,
                           date=time.strftime("%Y-%m-%d"), results=results), f, indent=1)


if __name__ == "__main__":
    main()
