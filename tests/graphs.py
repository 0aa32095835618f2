"""Small graphs that exercise the edge cases of CSR kernels (tests import these by name).

They are CSR graphs built from their CSR parts (edge_ids None), so a per-edge tensor's order is
the CSR order the references take; test_sparse.py's edge-order tests use graphs built from a
shuffled edge_index."""
import warnings

import torch

from scangraph import CSRGraph, datasets


def _from_pairs(src, dst, num_nodes, index_dtype):
    edge_index = torch.stack([torch.as_tensor(src), torch.as_tensor(dst)]).to(torch.int64)
    return _csr(CSRGraph.from_edge_index(edge_index, num_nodes, index_dtype=index_dtype))


def _csr(graph):
    return CSRGraph(graph.rowptr, graph.col, num_cols=graph.num_cols, validate=False)


def make_graph(name: str, index_dtype=torch.int64) -> CSRGraph:
    if name == "random":  # duplicates and self loops included
        return _from_pairs(torch.randint(0, 40, (200,)), torch.randint(0, 40, (200,)), 40, index_dtype)
    if name == "tiny":  # small enough for gradcheck in the Triton interpreter
        return _from_pairs(torch.randint(0, 9, (25,)), torch.randint(0, 9, (25,)), 9, index_dtype)
    if name == "empty":  # no nodes at all
        return _from_pairs([], [], 0, index_dtype)
    if name == "no_edges":
        return _from_pairs([], [], 7, index_dtype)
    if name == "isolated":  # rows 10..29 receive nothing
        return _from_pairs(torch.randint(0, 30, (80,)), torch.randint(0, 10, (80,)), 30, index_dtype)
    if name == "hub":  # row 3 holds most edges (longer than any block of edges)
        src = torch.cat([torch.arange(300) % 70, torch.randint(0, 70, (40,))])
        dst = torch.cat([torch.full((300,), 3), torch.randint(0, 70, (40,))])
        return _from_pairs(src, dst, 70, index_dtype)
    if name == "karate":
        edge_index, n = datasets.karate()
        return _csr(CSRGraph.from_edge_index(edge_index, n, index_dtype=index_dtype))
    if name == "bipartite":  # 12 destinations, 25 sources
        rowptr = torch.cat([torch.zeros(1, dtype=torch.int64),
                            torch.randint(0, 6, (12,)).cumsum(0)])
        col = torch.randint(0, 25, (int(rowptr[-1]),)).to(index_dtype)
        for i in range(12):  # sorted within each row, as CSRGraph promises
            col[rowptr[i]:rowptr[i + 1]] = col[rowptr[i]:rowptr[i + 1]].sort().values
        return CSRGraph(rowptr, col, num_cols=25)
    raise KeyError(name)


GRAPHS = ("random", "empty", "no_edges", "isolated", "hub", "karate", "bipartite")


def adj_t_forms(edge_index: torch.Tensor, num_nodes: int, values: torch.Tensor) -> list:
    """An edge_index as PyG's adj_t (row i = target i) in each form PyG's layers take: torch sparse
    COO (duplicates summed by coalescing) and CSR, and, where torch_sparse is installed, a
    SparseTensor with `values` and one without."""
    coo = torch.sparse_coo_tensor(edge_index.flip(0), values, (num_nodes, num_nodes)).coalesce()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's beta notice for sparse CSR
        forms = [coo, coo.to_sparse_csr()]
    try:
        from torch_sparse import SparseTensor
    except ImportError:
        return forms
    sizes = (num_nodes, num_nodes)
    return forms + [SparseTensor(row=edge_index[1], col=edge_index[0], value=values, sparse_sizes=sizes),
                    SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=sizes)]
