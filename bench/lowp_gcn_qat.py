"""Quantization-aware training of a 2-layer GCN on Cora: fp32 vs W8A8 vs W4A8 test accuracy.

GCN (Kipf & Welling 2017): out = A_hat relu(A_hat X W1^T) W2^T with A_hat = D^-1/2 (A + I) D^-1/2,
propagated with scangraph.spmm (edge weights = the normalisation). QAT (Degree-Quant / LPGNAS
style): scangraph.fake_quantize on the weights (per output channel, 8 or 4 bits) and on the
node features entering each dense transform (per row, 8 bits), straight-through gradients.
After training, the quantized model is also evaluated with the real kernels: scangraph.qlinear
(int8 activations x int8 / packed int4 weights, int32 accumulation) for the transforms.

Hyper-parameters are Kipf & Welling's (hidden 16, dropout 0.5, Adam lr 0.01, weight decay 5e-4,
200 epochs, the Planetoid split); the test accuracy is taken at the best validation epoch.

    PYTHONPATH=python python bench/lowp_gcn_qat.py [--data ../shared/data/planetoid/cora.npz] [--seeds 0,1,2,3,4]
"""
import argparse
import os
import statistics
import time

import numpy as np
import torch

import scangraph


def load_cora(path):
    d = np.load(path)
    n, f = (int(v) for v in d["x_shape"])
    x = torch.sparse_csr_tensor(torch.from_numpy(d["x_indptr"]), torch.from_numpy(d["x_indices"]),
                                torch.from_numpy(d["x_data"]), (n, f)).to_dense()
    split = {k: torch.from_numpy(d[f"{k}_index"]) for k in ("train", "val", "test")}
    return x, torch.from_numpy(d["y"]), torch.from_numpy(d["edge_index"]), split


def gcn_graph(edge_index, n):
    """A + I symmetrically normalised, as a CSRGraph with per-edge weights."""
    loops = torch.arange(n).repeat(2, 1)
    ei = torch.cat([edge_index, loops], dim=1)
    ei = torch.unique(ei, dim=1)
    graph = scangraph.CSRGraph.from_edge_index(ei, n)
    src, dst = graph.to_edge_index()
    degree = torch.bincount(dst, minlength=n).float()
    return graph, (degree[src] * degree[dst]).rsqrt()


class GCN(torch.nn.Module):
    def __init__(self, f_in, hidden, classes, weight_bits=None):
        super().__init__()
        self.lin1 = torch.nn.Linear(f_in, hidden)
        self.lin2 = torch.nn.Linear(hidden, classes)
        self.weight_bits = weight_bits  # None: fp32; 8 or 4: fake-quantized weights, 8-bit activations

    def transform(self, lin, h):
        if self.weight_bits is None:
            return lin(h)
        h = scangraph.fake_quantize(h, 8, 0)
        w = scangraph.fake_quantize(lin.weight, self.weight_bits, 0)
        return torch.nn.functional.linear(h, w, lin.bias)

    def forward(self, graph, norm, x, quantized_kernels=False):
        transform = self.transform_kernels if quantized_kernels else self.transform
        h = torch.nn.functional.dropout(x, 0.5, self.training)
        h = torch.relu(scangraph.spmm(graph, transform(self.lin1, h), "sum", norm))
        h = torch.nn.functional.dropout(h, 0.5, self.training)
        return scangraph.spmm(graph, transform(self.lin2, h), "sum", norm)

    @torch.no_grad()
    def transform_kernels(self, lin, h):
        """Inference with the real int8 kernels (what the fake quantization simulated)."""
        return scangraph.qlinear(h, scangraph.quantize(lin.weight, self.weight_bits, 0), lin.bias)


def train(data, weight_bits, seed, epochs=200):
    x, y, graph, norm, split = data
    torch.manual_seed(seed)
    model = GCN(x.shape[1], 16, int(y.max()) + 1, weight_bits)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    best_val, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(graph, norm, x)[split["train"]], y[split["train"]])
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            pred = model(graph, norm, x).argmax(1)
        val = (pred[split["val"]] == y[split["val"]]).float().mean().item()
        if val > best_val:
            best_val, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        test = (model(graph, norm, x).argmax(1)[split["test"]] == y[split["test"]]).float().mean().item()
        kernel_test = None
        if weight_bits is not None:
            pred = model(graph, norm, x, quantized_kernels=True).argmax(1)
            kernel_test = (pred[split["test"]] == y[split["test"]]).float().mean().item()
    return 100 * test, None if kernel_test is None else 100 * kernel_test


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.path.join(scangraph.datasets.shared_data_dir() or ".", "planetoid", "cora.npz")
    parser.add_argument("--data", default=default)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    x, y, edge_index, split = load_cora(args.data)
    graph, norm = gcn_graph(edge_index, x.shape[0])
    data = (x, y, graph, norm, split)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"Cora: {x.shape[0]} nodes, {graph.num_edges} edges (with self loops), seeds {seeds}")
    results = {}
    for name, bits in (("fp32", None), ("W8A8", 8), ("W4A8", 4)):
        start = time.perf_counter()
        runs = [train(data, bits, seed) for seed in seeds]
        sim = [r[0] for r in runs]
        results[name] = statistics.mean(sim)
        line = f"{name:5s} test acc {statistics.mean(sim):.2f} +- {statistics.pstdev(sim):.2f} (per seed {sim})"
        if bits is not None:
            real = [r[1] for r in runs]
            line += (f"; with the qlinear kernels {statistics.mean(real):.2f} (per seed {real}); "
                     f"gap to fp32 {results['fp32'] - statistics.mean(sim):+.2f} points")
        print(line + f"  [{time.perf_counter() - start:.1f} s]")


if __name__ == "__main__":
    main()
