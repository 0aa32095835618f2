"""torch.compile(fullgraph=True) and torch.export of the modules: the ops' fake kernels let both
trace through a whole layer, and CSRGraph is a pytree, so a graph is an ordinary export input.

NCN's common-neighbour lists have a data-dependent length, which the fake kernel declares as
an unbacked size, so it compiles whole and exports too. GraphMamba samples random walks and
builds token graphs on the host, so it compiles with graph breaks and does not export; the test
pins that down so a change in either direction is noticed."""
import pytest
import torch

import scangraph
from scangraph import nn as sgnn


def _graph_inputs():
    gen = torch.Generator().manual_seed(0)
    n = 30
    edge_index = torch.randint(0, n, (2, 120), generator=gen)
    graph = scangraph.CSRGraph.from_edge_index(edge_index, num_nodes=n)
    return graph, torch.randn(n, 8, generator=gen)


def _modules():
    torch.manual_seed(0)
    graph, x = _graph_inputs()
    sequence = torch.randn(2, 10, 16)
    yield "gcn", sgnn.GCNConv(8, 4), (x, graph)
    yield "sage", sgnn.SAGEConv(8, 4), (x, graph)
    yield "gin", sgnn.GINConv(torch.nn.Linear(8, 4)), (x, graph)
    yield "gat", sgnn.GATConv(8, 4, heads=2), (x, graph)
    yield "dagnn", sgnn.DAGNN(8, 16, 3, K=3), (x, graph)
    yield "ncn", sgnn.NCN(8, 16), (x, graph, torch.randint(0, 30, (2, 7)))
    yield "qgcn", sgnn.QGCNConv(8, 4), (x, graph)
    yield "quant_linear", sgnn.QuantLinear(8, 4), (x,)
    yield "mamba", sgnn.Mamba(16, d_state=4), (sequence,)
    yield "bimamba", sgnn.BiMamba(16, d_state=4), (sequence,)
    yield "aaren", sgnn.Aaren(16, heads=2), (sequence,)


MODULES = {name: (module, args) for name, module, args in _modules()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_compile_fullgraph(name):
    module, args = MODULES[name]
    module.eval()
    torch._dynamo.reset()
    with torch.no_grad():
        expected = module(*args)
        out = torch.compile(module, fullgraph=True, backend="aot_eager")(*args)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_export(name):
    module, args = MODULES[name]
    module.eval()
    with torch.no_grad():
        expected = module(*args)
        exported = torch.export.export(module, args)
        out = exported.module()(*args)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_exported_gcn_takes_another_graph_of_the_same_sizes():
    # The graph is an input of the exported program, not a constant baked into it.
    module = sgnn.GCNConv(8, 4).eval()
    graph, x = _graph_inputs()
    exported = torch.export.export(module, (x, graph)).module()
    other = scangraph.CSRGraph.from_edge_index(torch.randint(0, 30, (2, 120)), num_nodes=30)
    if other.num_edges != graph.num_edges:
        pytest.skip("the random graph deduplicated to another edge count")
    with torch.no_grad():
        torch.testing.assert_close(exported(x, other), module(x, other), rtol=1e-5, atol=1e-6)


def test_csr_graph_pytree_round_trip():
    graph, _ = _graph_inputs()
    graph.transpose_parts()
    leaves, spec = torch.utils._pytree.tree_flatten(graph)
    rebuilt = torch.utils._pytree.tree_unflatten(leaves, spec)
    assert rebuilt.num_cols == graph.num_cols and rebuilt.num_edges == graph.num_edges
    for a, b in zip((rebuilt.rowptr, rebuilt.col, *rebuilt._transpose), (graph.rowptr, graph.col, *graph._transpose)):
        assert torch.equal(a, b)


def test_graph_mamba_compiles_with_graph_breaks():
    torch.manual_seed(0)
    graph, x = _graph_inputs()
    module = sgnn.GraphMamba(8, 16, 3).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        expected = module(x, graph)
        out = torch.compile(module, backend="aot_eager")(x, graph)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(Exception):
            torch.export.export(module, (x, graph))
