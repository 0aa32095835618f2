"""CSRGraph: construction from edge_index / torch sparse, cached transpose, validation."""
import pytest
import torch

import scangraph
from scangraph import CSRGraph
from scangraph.graph import csr_transpose
from graphs import make_graph


def _dense(graph: CSRGraph, weight=None) -> torch.Tensor:
    """Dense (num_rows, num_cols) adjacency with multi-edges summed."""
    src, dst = graph.to_edge_index()
    values = torch.ones(graph.num_edges, dtype=torch.float64) if weight is None else weight.double()
    return torch.zeros(graph.num_rows, graph.num_cols, dtype=torch.float64).index_put_(
        (dst, src), values, accumulate=True)


def test_from_edge_index_orders_by_destination_then_source():
    edge_index = torch.tensor([[2, 0, 1, 0, 2], [1, 1, 0, 2, 0]])  # sources, targets
    weight = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    graph = CSRGraph.from_edge_index(edge_index, 3, edge_weight=weight)
    assert graph.rowptr.tolist() == [0, 2, 4, 5]
    assert graph.col.tolist() == [1, 2, 0, 2, 0]
    assert graph.edge_weight.tolist() == [30.0, 50.0, 20.0, 10.0, 40.0]
    # edge_ids maps CSR edges back to the input's columns.
    assert torch.equal(edge_index[:, graph.edge_ids], graph.to_edge_index())


def test_from_edge_index_with_a_bipartite_size():
    """PyG's size (num_sources, num_targets): num_targets rows over num_sources columns."""
    edge_index = torch.tensor([[4, 0, 3, 4], [1, 1, 0, 1]])
    graph = CSRGraph.from_edge_index(edge_index, (5, 2))
    assert (graph.num_rows, graph.num_cols) == (2, 5)
    assert graph.rowptr.tolist() == [0, 1, 4] and graph.col.tolist() == [3, 0, 4, 4]
    assert torch.equal(edge_index[:, graph.edge_ids], graph.to_edge_index())
    with pytest.raises(ValueError, match="target ids outside"):
        CSRGraph.from_edge_index(edge_index, (5, 1))
    with pytest.raises(ValueError, match="source ids outside"):
        CSRGraph.from_edge_index(edge_index, (4, 2))


def test_from_scatter_index_is_torch_scatter():
    """spmm over the scatter's graph reduces the rows of src by index (empty rows 0)."""
    index = torch.tensor([2, 0, 2, 2, 4, 0])
    src = torch.randn(6, 3, dtype=torch.float64)
    graph = CSRGraph.from_scatter_index(index, 6)
    assert (graph.num_rows, graph.num_cols) == (6, 6)
    want = torch.zeros(6, 3, dtype=torch.float64).index_add_(0, index, src)
    torch.testing.assert_close(scangraph.spmm(graph, src, "sum"), want)
    want_max = torch.zeros(6, 3, dtype=torch.float64).scatter_reduce_(
        0, index[:, None].expand(-1, 3), src, "amax", include_self=False)
    torch.testing.assert_close(scangraph.spmm(graph, src, "max"), want_max)
    with pytest.raises(ValueError, match="outside"):
        CSRGraph.from_scatter_index(index, 4)


@pytest.mark.parametrize("name", ("random", "hub", "bipartite", "empty", "no_edges"))
def test_transpose_is_the_reversed_graph_and_cached(name):
    graph = make_graph(name)
    weight = torch.rand(graph.num_edges)
    graph.edge_weight = weight
    reversed_graph = graph.transpose()
    assert (reversed_graph.num_rows, reversed_graph.num_cols) == (graph.num_cols, graph.num_rows)
    torch.testing.assert_close(_dense(reversed_graph, reversed_graph.edge_weight), _dense(graph, weight).t())
    assert graph.transpose_parts() is graph.transpose_parts()
    rowptr_t, col_t, perm = graph.transpose_parts()
    # Rows of the transpose are sorted too, and perm is a permutation of the edge ids.
    assert torch.equal(perm.sort().values, torch.arange(graph.num_edges))
    for i in range(reversed_graph.num_rows):
        segment = col_t[rowptr_t[i]:rowptr_t[i + 1]]
        assert torch.equal(segment, segment.sort().values)


def test_transpose_keeps_index_dtype():
    graph = make_graph("random", torch.int32)
    assert csr_transpose(graph.rowptr, graph.col, graph.num_cols)[1].dtype == torch.int32


@pytest.mark.parametrize("layout", ("coo", "csr"))
def test_from_sparse(layout):
    dense = torch.rand(6, 9) * (torch.rand(6, 9) < 0.4)
    matrix = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    graph = CSRGraph.from_sparse(matrix)
    assert (graph.num_rows, graph.num_cols) == (6, 9)
    torch.testing.assert_close(_dense(graph, graph.edge_weight).float(), dense)


def test_scipy_round_trip():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    dense = torch.rand(7, 5, dtype=torch.float64) * (torch.rand(7, 5) < 0.5)
    graph = CSRGraph.from_scipy(scipy_sparse.coo_matrix(dense.numpy()))
    assert (graph.num_rows, graph.num_cols) == (7, 5)
    torch.testing.assert_close(_dense(graph, graph.edge_weight), dense)
    torch.testing.assert_close(torch.from_numpy(graph.to_scipy().toarray()), dense)


def test_to_edge_index_round_trip():
    graph = make_graph("random")
    again = CSRGraph.from_edge_index(graph.to_edge_index(), graph.num_rows)
    assert torch.equal(again.rowptr, graph.rowptr) and torch.equal(again.col, graph.col)


@pytest.mark.parametrize("rowptr, col, num_cols, message", [
    ([0, 2, 1, 3], [0, 1, 2], 3, "non-decreasing"),
    ([1, 2, 3], [0, 1, 2], 3, r"rowptr\[0\] must be 0"),
    ([0, 2, 4], [0, 1, 2], 3, r"rowptr\[-1\] must equal"),
    ([0, 1, 3], [0, 1, 5], 3, "out of range for 3 source nodes"),
    ([0, 1, 3], [0, -1, 2], 3, "out of range"),
])
def test_invalid_csr_is_rejected(rowptr, col, num_cols, message):
    with pytest.raises(ValueError, match=message):
        CSRGraph(torch.tensor(rowptr), torch.tensor(col), num_cols=num_cols)


def test_invalid_edge_index_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        CSRGraph.from_edge_index(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="outside"):
        CSRGraph.from_edge_index(torch.tensor([[0, 5], [1, 2]]), num_nodes=3)
    with pytest.raises(ValueError, match="int32 or int64"):
        CSRGraph.from_edge_index(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="1-D int64"):
        CSRGraph(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0]))
    with pytest.raises(ValueError, match="edge_weight must be"):
        CSRGraph(torch.tensor([0, 1]), torch.tensor([0]), edge_weight=torch.rand(2))


def test_transpose_keeps_the_caller_edge_order():
    """The reversed graph of an edge list takes per-edge tensors in that list's order too."""
    edge_index = torch.randint(0, 12, (2, 40))
    graph = CSRGraph.from_edge_index(edge_index, 12)
    w, x = torch.rand(40, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    want = torch.zeros(12, 3, dtype=torch.float64).index_add(0, edge_index[0], x[edge_index[1]] * w[:, None])
    torch.testing.assert_close(scangraph.spmm(graph.transpose(), x, "sum", w), want)
    assert torch.equal(graph.edge_rows(), graph.to_edge_index()[1]) and graph.edge_rows() is graph.edge_rows()
