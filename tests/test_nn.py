"""scangraph.nn: shapes, PyG agreement of the convolutions (weights copied, forward and
gradients), Mamba decoding against the parallel forward and its mamba_ssm state_dict layout,
BiMamba, packed sequences, gradients of the graph models, graph caching, and two small
learning checks (GCN on Cora, Mamba on the copying task)."""
import pytest
import torch
import torch.nn.functional as F

from scangraph import CSRGraph, datasets
from scangraph import nn as sgnn
from scangraph.nn.graph_cache import clear_graph_cache, graph_for

# mamba_ssm's Mamba(d_model) state_dict, in its order (a module's own parameters come before its
# submodules'): names and shapes as functions of (d_model, d_inner, d_state, d_conv, dt_rank),
# with the default conv_bias=True, bias=False.
MAMBA_SSM_KEYS = {
    "A_log": lambda d, i, n, k, r: (i, n),
    "D": lambda d, i, n, k, r: (i,),
    "in_proj.weight": lambda d, i, n, k, r: (2 * i, d),
    "conv1d.weight": lambda d, i, n, k, r: (i, 1, k),
    "conv1d.bias": lambda d, i, n, k, r: (i,),
    "x_proj.weight": lambda d, i, n, k, r: (r + 2 * n, i),
    "dt_proj.weight": lambda d, i, n, k, r: (i, r),
    "dt_proj.bias": lambda d, i, n, k, r: (i,),
    "out_proj.weight": lambda d, i, n, k, r: (d, i),
}


def random_graph(num_nodes=23, num_edges=90, seed=0):
    """Random directed edges with a few self loops, one duplicate and an isolated node (the last)."""
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes - 1, (2, num_edges), generator=g)
    edge_index[:, :3] = torch.tensor([[0, 1, 2], [0, 1, 2]])  # self loops
    edge_index[:, 3] = edge_index[:, 4]                         # a duplicate edge
    return edge_index


# ---- PyG agreement ---------------------------------------------------------------------------------
def _conv_pairs(pyg):
    """(scangraph layer, PyG layer) with the same configuration, PyG's weights copied in."""
    ours_and_theirs = [
        (sgnn.GCNConv(7, 5), pyg.GCNConv(7, 5)),
        (sgnn.GCNConv(7, 5, add_self_loops=False, normalize=False), pyg.GCNConv(7, 5, add_self_loops=False,
                                                                                normalize=False)),
        (sgnn.SAGEConv(7, 5), pyg.SAGEConv(7, 5)),
        (sgnn.SAGEConv(4, 9, normalize=True), pyg.SAGEConv(4, 9, normalize=True)),
        (sgnn.GINConv(torch.nn.Sequential(torch.nn.Linear(7, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5)),
                      eps=0.3, train_eps=True),
         pyg.GINConv(torch.nn.Sequential(torch.nn.Linear(7, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5)),
                     eps=0.3, train_eps=True)),
        (sgnn.GATConv(7, 5, heads=3), pyg.GATConv(7, 5, heads=3)),
        (sgnn.GATConv(7, 5, heads=2, concat=False, negative_slope=0.1),
         pyg.GATConv(7, 5, heads=2, concat=False, negative_slope=0.1)),
    ]
    for ours, theirs in ours_and_theirs:
        torch.nn.init.normal_(theirs.bias) if getattr(theirs, "bias", None) is not None else None
        ours.load_state_dict(theirs.state_dict())
    return ours_and_theirs


def test_convs_match_torch_geometric():
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    edge_index = random_graph()
    for ours, theirs in _conv_pairs(pyg):
        in_channels = ours.in_channels if hasattr(ours, "in_channels") else 7
        x = torch.randn(23, in_channels)
        x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ours, out_theirs = ours(x_ours, edge_index), theirs(x_theirs, edge_index)
        torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-4, msg=lambda m: f"{ours}: {m}")
        grad = torch.randn_like(out_ours)
        out_ours.backward(grad)
        out_theirs.backward(grad)
        torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-5, rtol=1e-4)
        theirs_params = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            torch.testing.assert_close(p.grad, theirs_params[name].grad, atol=1e-5, rtol=1e-4,
                                       msg=lambda m: f"{type(ours).__name__}.{name}: {m}")


def test_gcn_edge_weight_matches_torch_geometric():
    pyg = pytest.importorskip("torch_geometric.nn")
    edge_index = random_graph()
    weight = torch.rand(edge_index.shape[1])
    theirs = pyg.GCNConv(6, 4)
    ours = sgnn.GCNConv(6, 4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(23, 6)
    torch.testing.assert_close(ours(x, edge_index, weight), theirs(x, edge_index, weight), atol=1e-5, rtol=1e-4)


def test_convs_accept_a_csr_graph():
    edge_index = random_graph()
    graph = CSRGraph.from_edge_index(edge_index, num_nodes=23)
    x = torch.randn(23, 7)
    for conv in (sgnn.GCNConv(7, 5), sgnn.SAGEConv(7, 5), sgnn.GATConv(7, 5, heads=2),
                 sgnn.GINConv(torch.nn.Linear(7, 5))):
        torch.testing.assert_close(conv(x, graph), conv(x, edge_index))


def test_graph_cache_reuses_and_invalidates():
    clear_graph_cache()
    edge_index = random_graph()
    built = []

    def build(g):
        built.append(1)
        return g

    first = graph_for(edge_index, 23, "probe", build)
    assert graph_for(edge_index, 23, "probe", build) is first and len(built) == 1
    edge_index[0, 5] = 22  # an in-place edit bumps the version: rebuilt
    assert graph_for(edge_index, 23, "probe", build) is not first and len(built) == 2
    assert graph_for(edge_index.clone(), 23, "probe", build) is not first  # another tensor


# ---- Mamba -----------------------------------------------------------------------------------------
def test_mamba_state_dict_layout_matches_mamba_ssm():
    d_model, d_state, d_conv, expand = 20, 8, 3, 2
    block = sgnn.Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    d_inner, dt_rank = expand * d_model, 2  # dt_rank "auto" = ceil(20 / 16)
    expected = {name: shape(d_model, d_inner, d_state, d_conv, dt_rank) for name, shape in MAMBA_SSM_KEYS.items()}
    assert list(block.state_dict()) == list(expected)
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == expected
    # Initialisation: A = -(1..N) per channel; softplus(dt bias) in [dt_min, dt_max].
    torch.testing.assert_close(-torch.exp(block.A_log), -torch.arange(1, d_state + 1.0).repeat(d_inner, 1))
    dt = F.softplus(block.dt_proj.bias)
    dt = dt.detach()
    assert float(dt.min()) >= 1e-3 * 0.999 and float(dt.max()) <= 0.1 * 1.001
    sgnn.Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand).load_state_dict(block.state_dict())


def test_mamba_step_equals_forward():
    torch.manual_seed(0)
    block = sgnn.Mamba(12, d_state=6, d_conv=4, expand=2).eval()
    with torch.no_grad():
        block.conv1d.bias.normal_()
    x = torch.randn(3, 11, 12)
    with torch.no_grad():
        full = block(x)
        conv_state, ssm_state = block.allocate_inference_cache(3)
        steps = torch.stack([block.step(x[:, t], conv_state, ssm_state) for t in range(11)], dim=1)
        torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)
        # A prompt through forward fills the caches; decoding continues from there.
        cache = block.allocate_inference_cache(3)
        prompt = block(x[:, :6], inference_cache=cache)
        rest = torch.stack([block.step(x[:, t:t + 1], *cache)[:, 0] for t in range(6, 11)], dim=1)
        torch.testing.assert_close(torch.cat([prompt, rest], 1), full, atol=1e-5, rtol=1e-4)


def test_reverse_mamba_is_the_flipped_causal_block_and_packing_restarts():
    torch.manual_seed(0)
    causal = sgnn.Mamba(8, d_state=4, d_conv=3)
    backward = sgnn.Mamba(8, d_state=4, d_conv=3, reverse=True)
    backward.load_state_dict(causal.state_dict())
    x = torch.randn(2, 9, 8)
    torch.testing.assert_close(backward(x), causal(x.flip(1)).flip(1), atol=1e-5, rtol=1e-4)
    # Packed sequences (batch 1, cu_seqlens) equal separate calls, in both directions.
    lengths = [4, 1, 6, 2]
    seqs = [torch.randn(1, n, 8) for n in lengths]
    cu = torch.tensor([0, 4, 5, 11, 13], dtype=torch.int32)
    for block in (causal, backward):
        packed = block(torch.cat(seqs, 1), cu_seqlens=cu)
        torch.testing.assert_close(packed, torch.cat([block(s) for s in seqs], 1), atol=1e-5, rtol=1e-4)


def test_bimamba_sums_both_directions_and_trains():
    torch.manual_seed(0)
    bi = sgnn.BiMamba(8, d_state=4)
    x = torch.randn(2, 7, 8, requires_grad=True)
    out = bi(x)
    torch.testing.assert_close(out, bi.fwd(x) + bi.bwd(x))
    assert bi.bwd.reverse and not bi.fwd.reverse
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bi.parameters())
    # Position 0 sees the last position only through the backward block.
    base = torch.randn(1, 7, 8)
    probe = base.clone()
    probe[0, -1] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(bi.fwd(probe)[0, 0], bi.fwd(base)[0, 0])
        assert not torch.allclose(bi(probe)[0, 0], bi(base)[0, 0])


def test_mamba_learns_the_copying_task():
    torch.manual_seed(0)
    vocab = 4
    inputs, targets = datasets.copy_task(64, num_tokens=3, delay=1, vocab_size=vocab, seed=0)
    model = torch.nn.Sequential(torch.nn.Embedding(vocab + 2, 32), sgnn.Mamba(32, d_state=8),
                                torch.nn.Linear(32, vocab + 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# ---- graph models ----------------------------------------------------------------------------------
def _assert_all_parameters_get_gradients(model):
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("name", ["dagnn", "graphmamba", "graphmamba_rwse"])
def test_node_models_forward_backward(name):
    torch.manual_seed(0)
    data = datasets.stochastic_block_model(num_nodes=60, num_features=10, num_classes=3, seed=1)
    if name == "dagnn":
        model = sgnn.DAGNN(10, 16, 3, K=4, dropout=0.1)
    else:
        model = sgnn.GraphMamba(10, 16, 3, walk_length=2, num_walks=3, d_state=4,
                                rwse_steps=4 if name.endswith("rwse") else 0, dropout=0.1)
    out = model(data.x, data.edge_index)
    assert out.shape == (60, 3)
    F.cross_entropy(out, data.y).backward()
    _assert_all_parameters_get_gradients(model)
    model.eval()
    torch.testing.assert_close(model(data.x, data.edge_index), model(data.x, data.edge_index))


def test_graph_mamba_tokens_order_and_isolated_nodes():
    from scangraph.nn.graph_mamba import neighbourhood_tokens

    edge_index = random_graph()  # node 22 is isolated
    graph = CSRGraph.from_edge_index(edge_index, num_nodes=23)
    tokens, cu = neighbourhood_tokens(graph, walk_length=3, num_walks=2, repeats=2)
    lengths = (cu[1:] - cu[:-1]).tolist()
    assert lengths[22] == 1 and all(n == 3 * 2 + 1 for n in lengths[:22])
    last = cu[1:].long() - 1
    own = tokens.col[tokens.rowptr[last]]  # each sequence ends with the node itself
    assert torch.equal(own, torch.arange(23)) and bool((tokens.in_degree()[last] == 1).all())
    assert tokens.in_degree()[0] == 2 * 4  # the first token: 2 walks of 3 steps (4 nodes each)


def test_graph_mamba_layer_batches_and_unpermutes():
    torch.manual_seed(0)
    layer = sgnn.GraphMambaLayer(8, d_state=4).eval()
    edge_index = random_graph(num_nodes=12, num_edges=30)
    x = torch.randn(12, 8)
    one = layer(x, edge_index)
    assert one.shape == (12, 8)
    # Two copies of the graph in one batch give the same per-node outputs as each alone.
    both = layer(torch.cat([x, x]), torch.cat([edge_index, edge_index + 12], 1),
                 batch=torch.arange(2).repeat_interleave(12))
    torch.testing.assert_close(both, torch.cat([one, one]), atol=1e-5, rtol=1e-4)
    layer.train()
    layer(x, edge_index).sum().backward()
    _assert_all_parameters_get_gradients(layer)


def test_ncn_scores_pairs_and_trains():
    torch.manual_seed(0)
    edge_index, num_nodes = datasets.karate()
    x = torch.randn(num_nodes, 8)
    model = sgnn.NCN(8, 16, num_layers=2)
    pairs = torch.tensor([[0, 32, 5, 9], [1, 33, 6, 25]])  # the first two share many neighbours
    logits = model(x, edge_index, pairs)
    assert logits.shape == (4,)
    F.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 1.0, 0.0])).backward()
    _assert_all_parameters_get_gradients(model)


def test_gcn_learns_cora():
    path = datasets.planetoid_path("cora")
    if path is None:
        pytest.skip("Cora not found (set SCANGRAPH_DATA to the shared data folder)")
    torch.manual_seed(0)
    data = datasets.load_planetoid(path)
    conv1, conv2 = sgnn.GCNConv(data.x.shape[1], 16), sgnn.GCNConv(16, data.num_classes)
    params = list(conv1.parameters()) + list(conv2.parameters())
    optimizer = torch.optim.Adam(params, lr=0.01, weight_decay=5e-4)

    def forward(train):
        h = F.relu(conv1(F.dropout(data.x, 0.5, train), data.edge_index))
        return conv2(F.dropout(h, 0.5, train), data.edge_index)

    for _ in range(100):
        loss = F.cross_entropy(forward(True)[data.train_mask], data.y[data.train_mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (forward(False).argmax(1) == data.y)[data.test_mask].float().mean().item()
    assert accuracy > 0.75, accuracy
