"""Benchmark cases of the sparse family: spmm (sum) forward and forward + backward.

Baselines are what a user would write otherwise: torch.sparse.mm on a CSR tensor, PyG's
scatter path (index_select of source rows, then scatter_add into destinations), and our
plain-PyTorch reference. Bytes are the compulsory traffic of ALGORITHMS.md section 3: rowptr,
col, x read once, out written once (the backward traverses the transpose the same way).
"""
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch

import scangraph
from scangraph import CSRGraph, datasets, reference
from scangraph.backend import BackendUnavailable, resolve


@dataclass
class Case:
    op: str
    graph: str
    nodes: int
    edges: int
    features: int
    dtype: torch.dtype
    device: torch.device
    bytes_fwd: int          # compulsory bytes of one forward
    gathered_fwd: int       # bytes if every gathered source row came from memory
    impls: Dict[str, Dict[str, Callable[[], object]]] = field(default_factory=dict)
    # impls[name][pass] with pass in ("fwd", "fwd+bwd")


def bench_graphs(data_dir, quick: bool):
    """(name, edge_index, num_nodes): real heavy-tailed graphs when the data folder is there,
    R-MAT graphs of similar shape otherwise (the embedded default)."""
    if quick:
        edge_index, n = datasets.karate()
        yield "karate", edge_index, n
        yield ("rmat-4k", *datasets.rmat(4096, 40_000, seed=1))
        return
    found = False
    for name in ("email-Enron", "as-22july06"):
        path = None if data_dir is None else os.path.join(data_dir, "graphs", f"{name}.npz")
        if path and os.path.exists(path):
            found = True
            yield (name, *datasets.load_graph(path))
    if not found:
        yield ("rmat-64k", *datasets.rmat(65_536, 700_000, seed=1))


def _backends(device: torch.device) -> List[str]:
    names = []
    for backend in (("cpp", "triton") if device.type == "cpu" else ("cuda", "triton")):
        if device.type == "cpu" and backend == "triton":
            continue  # the interpreter is a correctness tool, not a speed contender
        try:
            resolve("spmm", backend, device)
            names.append(backend)
        except BackendUnavailable:
            pass
    return names


def _fwd_bwd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor):
    def run():
        x.grad = None
        forward(x).backward(grad)
    return run


def spmm_cases(device: torch.device, dtype: torch.dtype, features: List[int], data_dir, quick: bool):
    element = torch.empty((), dtype=dtype).element_size()
    for name, edge_index, num_nodes in bench_graphs(data_dir, quick):
        graph = CSRGraph.from_edge_index(edge_index, num_nodes).to(device)
        graph.transpose_parts()  # cached once, as in training
        src, dst = graph.to_edge_index()
        ones = torch.ones(graph.num_edges, dtype=dtype, device=device)
        matrix = torch.sparse_csr_tensor(graph.rowptr, graph.col, ones, (graph.num_rows, graph.num_cols))
        index_bytes = graph.col.element_size()
        for f in features:
            x = torch.randn(num_nodes, f, dtype=dtype, device=device)
            grad = torch.randn(graph.num_rows, f, dtype=dtype, device=device)
            xg = x.clone().requires_grad_()
            case = Case(
                op="spmm_sum", graph=name, nodes=num_nodes, edges=graph.num_edges, features=f,
                dtype=dtype, device=device,
                bytes_fwd=8 * (graph.num_rows + 1) + index_bytes * graph.num_edges
                + element * f * (graph.num_cols + graph.num_rows),
                gathered_fwd=element * f * graph.num_edges)
            for backend in _backends(device):
                op = lambda t, b=backend: scangraph.spmm(graph, t, "sum", backend=b)  # noqa: E731
                case.impls[f"scangraph.{backend}"] = {
                    "fwd": lambda op=op: op(x), "fwd+bwd": _fwd_bwd(op, xg, grad)}
            sparse_mm = lambda t: torch.sparse.mm(matrix, t)  # noqa: E731
            case.impls["torch.sparse.mm"] = {"fwd": lambda: sparse_mm(x), "fwd+bwd": _fwd_bwd(sparse_mm, xg, grad)}
            index = dst.view(-1, 1).expand(-1, f)

            def scatter(t, index=index):
                out = torch.zeros(graph.num_rows, t.shape[1], dtype=t.dtype, device=t.device)
                return out.scatter_add(0, index, t.index_select(0, src))
            case.impls["pyg_scatter"] = {"fwd": lambda s=scatter: s(x), "fwd+bwd": _fwd_bwd(scatter, xg, grad)}
            ref = lambda t: reference.spmm(graph.rowptr, graph.col, t, "sum")  # noqa: E731
            case.impls["reference"] = {"fwd": lambda: ref(x), "fwd+bwd": _fwd_bwd(ref, xg, grad)}
            yield case
