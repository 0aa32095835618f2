"""Second oracles for the sparse family, and the 64-bit offset path.

PyG's own message passing (torch_geometric's SimpleConv aggregation and GATConv) computes the
same formulas as spmm and gat_aggregate through a different code path (gather + scatter), so
agreement with it checks the reference too. The 64-bit test reads features at offsets past
2^31 elements without allocating 2^31 edges: a few rows of an untouched (lazily mapped) storage.
"""
import pytest
import torch

import scangraph
from conftest import backend_params
from graphs import make_graph

pyg = pytest.importorskip("torch_geometric")


def _edge_index(graph):
    src, dst = graph.to_edge_index()
    return torch.stack([src, dst])


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("reduce", ("sum", "mean", "max", "min"))
@pytest.mark.parametrize("graph_name", ("random", "hub", "isolated", "karate"))
def test_spmm_matches_pyg_aggregation(backend_device, reduce, graph_name):
    backend, device = backend_device
    graph = make_graph(graph_name).to(device)
    x = torch.randn(graph.num_cols, 12, dtype=torch.float64, device=device, requires_grad=True)
    conv = pyg.nn.SimpleConv(aggr=reduce)
    want = conv(x, _edge_index(graph))
    got = scangraph.spmm(graph, x, reduce, backend=backend)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    if reduce in ("sum", "mean"):  # PyG's max/min backward splits ties; ours picks one edge
        want_dx, = torch.autograd.grad(want, x, grad)
        got_dx, = torch.autograd.grad(got, x, grad)
        torch.testing.assert_close(got_dx, want_dx)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("graph_name", ("random", "hub", "karate"))
def test_gat_aggregate_matches_pyg_gatconv(backend_device, graph_name):
    backend, device = backend_device
    graph = make_graph(graph_name).to(device)
    heads, per_head, in_channels = 3, 5, 7
    conv = pyg.nn.GATConv(in_channels, per_head, heads=heads, add_self_loops=False, bias=False).double().to(device)
    x = torch.randn(graph.num_cols, in_channels, dtype=torch.float64, device=device, requires_grad=True)
    want = conv(x, _edge_index(graph))
    projected = conv.lin(x).view(-1, heads, per_head)
    alpha_src = (projected * conv.att_src).sum(-1)
    alpha_dst = (projected * conv.att_dst).sum(-1)
    got = scangraph.gat_aggregate(graph, projected, alpha_src, alpha_dst, conv.negative_slope, backend=backend)
    got = got.reshape(graph.num_rows, heads * per_head)
    # rows without in-edges: PyG leaves them 0 as well
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    params = [x, conv.lin.weight, conv.att_src, conv.att_dst]
    for a, b in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(want, params, grad)):
        torch.testing.assert_close(a, b)


def test_feature_offsets_past_two_to_the_31():
    """Source rows 2^29 elements apart: row 3 starts at 3 * 2^29 * 2 = 3 * 2^30 > 2^31 (fp16
    elements), so a 32-bit offset computation would wrap. Only the touched rows are written."""
    stride = 1 << 30
    try:
        storage = torch.empty(3 * stride + 64, dtype=torch.float16)  # ~6 GB virtual, few pages resident
    except RuntimeError:
        pytest.skip("cannot reserve 6 GB of address space here")
    x = storage.as_strided((4, 64), (stride, 1))
    values = torch.randn(4, 64, dtype=torch.float16)
    x.copy_(values)
    edge_index = torch.tensor([[3, 0, 2, 3, 1], [0, 0, 1, 1, 2]])
    graph = scangraph.CSRGraph.from_edge_index(edge_index, num_nodes=4)
    for reduce in ("sum", "max"):
        got = scangraph.spmm(graph, x, reduce, backend="cpp")
        want = scangraph.spmm(graph, values, reduce, backend="reference")
        torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=5e-3)
    got = scangraph.sddmm(graph, values[:4], x, backend="cpp")
    want = scangraph.sddmm(graph, values[:4], values, backend="reference")
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=5e-3)
