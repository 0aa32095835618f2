"""Time per NCN training epoch, CPU: scangraph's common-neighbour sum against the sparse-product
formulation, in the same model.

The authors' NCN (GraphPKU/NeuralCommonNeighbor) computes the common neighbours with torch_sparse,
which has no wheel for this torch; so the alternative timed here is the sparse-product
formulation of python/scangraph/bench/sparse.py (rows of A for both endpoints of every pair,
multiplied elementwise, then a sparse-dense product with the embeddings), swapped into the same
model in place of `common_neighbor_aggregate`. Everything else is train.py's: the recipe
(MODEL_DEFAULTS["ncn"], or CiteSeer's with --citeseer), the split, `link_epoch` (a negative per
training edge, target-link masking, the encoder and the predictor per batch, Adam). Both
implementations start from one copy of the initial weights; after `--warmup` epochs, `--epochs`
epochs are timed, alternating between the implementations epoch by epoch. Reported: the median
ms per epoch and the speedup.

    PYTHONPATH=python python bench/ncn_epoch.py --data cora.npz [--threads 2] [--epochs 10] [--json out.json]
"""
import argparse
import contextlib
import copy
import json
import statistics
import time

import torch

from scangraph import datasets, train
from scangraph.bench.sparse import coo_adjacency, sparse_product_common_neighbors
from scangraph.nn import ncn as ncn_module

CITESEER = dict(feature_dropout=0.4, propagation_dropout=0.0, cn_edge_dropout=0.0, predictor_dropout=0.55,
                encoder_dropout=0.75, lr=0.0085, predictor_lr=0.0078, batch_size=384, predictor_layers=2)


def sparse_product(graph, x, src, dst, backend=None):
    """common_neighbor_aggregate's signature over the bench's sparse-product baseline."""
    return sparse_product_common_neighbors(coo_adjacency(graph, x.dtype), x, src, dst)


@contextlib.contextmanager
def common_neighbors(implementation):
    original = ncn_module.common_neighbor_aggregate
    if implementation == "sparse_product":
        ncn_module.common_neighbor_aggregate = sparse_product
    try:
        yield
    finally:
        ncn_module.common_neighbor_aggregate = original


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--citeseer", action="store_true", help="CiteSeer's recipe (the authors' README)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dict(train.MODEL_DEFAULTS["ncn"], **(CITESEER if args.citeseer else {}))
    data = datasets.load_planetoid(args.data, normalize_features=False)
    split = datasets.link_split(data.edge_index, data.num_nodes, seed=0)
    data = data._replace(x=data.x.to_sparse())
    torch.manual_seed(0)
    model, _ = train.build_link_model(data.x.shape[1], cfg)
    runs = {}
    for name in ("scangraph", "sparse_product"):
        copied = copy.deepcopy(model)
        runs[name] = (copied, train.link_optimizer(copied, cfg), [])
    for epoch in range(args.warmup + args.epochs):
        for name, (copied, optimizer, times) in runs.items():
            with common_neighbors(name):
                start = time.perf_counter()
                train.link_epoch(copied, optimizer, data, split, cfg["batch_size"])
                elapsed = time.perf_counter() - start
            if epoch >= args.warmup:
                times.append(1000 * elapsed)
    medians = {name: statistics.median(times) for name, (_, _, times) in runs.items()}
    for name, ms in medians.items():
        print(f"{name:16} {ms:9.1f} ms per training epoch (median of {args.epochs})")
    print(f"speedup of scangraph over sparse_product: {medians['sparse_product'] / medians['scangraph']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": args.data, "config": cfg, "threads": args.threads, "torch": torch.__version__,
                       "ms_per_epoch": {n: t for n, (_, _, t) in runs.items()}, "median_ms": medians}, f, indent=1)


if __name__ == "__main__":
    main()
