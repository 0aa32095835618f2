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
from graphs import adj_t_forms

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
        (sgnn.GCNConv(7, 5, normalize=False), pyg.GCNConv(7, 5, normalize=False)),  # no loops by default
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


def test_gcn_refuses_loops_without_normalisation():
    """PyG's GCNConv adds self loops inside its normalisation only, and refuses the pair."""
    with pytest.raises(ValueError, match="normalize=True"):
        sgnn.GCNConv(7, 5, add_self_loops=True, normalize=False)
    assert sgnn.GCNConv(7, 5).add_self_loops and not sgnn.GCNConv(7, 5, normalize=False).add_self_loops


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


def test_scatter_graph_is_cached_per_view_of_an_edge_index():
    """A layer's aggregation index is a new view of its edge_index every call: one build per
    edge_index and row, rebuilt after an in-place edit."""
    from scangraph.nn.graph_cache import scatter_graph
    clear_graph_cache()
    edge_index = random_graph()
    first = scatter_graph(edge_index[1], 23)
    assert scatter_graph(edge_index[1], 23) is first
    assert scatter_graph(edge_index[0], 23) is not first and scatter_graph(edge_index[1], 24) is not first
    edge_index[1, 5] = (edge_index[1, 5] + 1) % 23
    rebuilt = scatter_graph(edge_index[1], 23)
    assert rebuilt is not first
    assert torch.equal(rebuilt.col, CSRGraph.from_scatter_index(edge_index[1].clone(), 23).col)


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
        steps = []
        for t in range(11):  # mamba_ssm's convention: (out, conv_state, ssm_state), states in place
            out, conv_next, ssm_next = block.step(x[:, t:t + 1], conv_state, ssm_state)
            assert out.shape == (3, 1, 12) and conv_next is conv_state and ssm_next is ssm_state
            steps.append(out[:, 0])
        torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-4)
        # A prompt through forward fills the caches; decoding continues from there.
        cache = block.allocate_inference_cache(3)
        prompt = block(x[:, :6], inference_cache=cache)
        rest = torch.stack([block.step(x[:, t:t + 1], *cache)[0][:, 0] for t in range(6, 11)], dim=1)
        torch.testing.assert_close(torch.cat([prompt, rest], 1), full, atol=1e-5, rtol=1e-4)


def test_mamba_decodes_with_inference_params_as_mamba_ssm():
    """forward(hidden_states, inference_params): the prompt fills key_value_memory_dict[layer_idx],
    later one-token calls (seqlen_offset > 0) step; cu_seqlens is keyword-only."""
    torch.manual_seed(0)
    blocks = [sgnn.Mamba(12, d_state=6, layer_idx=i).eval() for i in range(2)]
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        full = blocks[1](blocks[0](x))
        params = sgnn.InferenceParams(max_seqlen=9, max_batch_size=2)
        outs = [blocks[1](blocks[0](x[:, :5], params), params)]
        assert sorted(params.key_value_memory_dict) == [0, 1]
        for t in range(5, 9):
            params.seqlen_offset = t
            outs.append(blocks[1](blocks[0](x[:, t:t + 1], params), params))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
    with pytest.raises(TypeError, match="cu_seqlens= by keyword"):
        blocks[0](x[:1], torch.tensor([0, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="layer_idx"):
        sgnn.Mamba(12)(x, sgnn.InferenceParams(max_seqlen=9, max_batch_size=2))
    with pytest.raises(ValueError, match="one token"):
        blocks[0].step(x[:, :2], *blocks[0].allocate_inference_cache(2))


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


def test_ncn_sparse_features_and_common_neighbour_edge_dropout():
    """Sparse (bag-of-words) features give the dense input's logits in eval mode; in training the
    common-neighbour graph's edge dropout keeps rows sorted (common_neighbor_aggregate checks it)
    and every parameter gets a gradient."""
    torch.manual_seed(0)
    edge_index, num_nodes = datasets.karate()
    x = (torch.rand(num_nodes, 40) < 0.1).float()
    model = sgnn.NCN(40, 16, num_layers=2, feature_dropout=0.5, encoder_dropout=0.1, propagation_dropout=0.1,
                     predictor_dropout=0.1, cn_edge_dropout=0.5, predictor_layers=2).eval()
    pairs = torch.tensor([[0, 32, 5, 9], [1, 33, 6, 25]])
    torch.testing.assert_close(model(x.to_sparse(), edge_index, pairs), model(x, edge_index, pairs))
    model.train()
    logits = model(x.to_sparse(), edge_index, pairs)
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


# ---- Aaren -----------------------------------------------------------------------------------------
def _aaren_by_formula(layer, x):
    """Aaren's output written out in plain PyTorch: the causal softmax over j <= t of the learned
    query's scores, materialised as an (L x L) matrix per head."""
    batch, length, _ = x.shape
    k = layer.k_proj(x).view(batch, length, layer.heads, layer.head_dim)
    v = layer.v_proj(x).view(batch, length, layer.heads, layer.head_dim)
    scores = torch.einsum("hd,bjhd->bhj", layer.query, k) * layer.head_dim ** -0.5
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    weights = torch.softmax(scores[:, :, None, :].masked_fill(~causal, float("-inf")), dim=-1)  # (b, h, t, j)
    o = torch.einsum("bhtj,bjhd->bthd", weights, v)
    return layer.out_proj(o.reshape(batch, length, -1))


def test_aaren_forward_matches_formula_and_step_by_step():
    torch.manual_seed(0)
    layer = sgnn.Aaren(12, heads=3).double()
    with torch.no_grad():
        layer.query.mul_(3.0)  # sharper softmax than the init: the running max matters
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    full = layer(x)
    assert full.shape == (2, 9, 12)
    torch.testing.assert_close(full, _aaren_by_formula(layer, x), atol=1e-12, rtol=1e-10)
    state = layer.init_state(2)
    steps = torch.stack([layer.step(x[:, t], state) for t in range(9)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-12, rtol=1e-10)
    # A prompt through forward returns the state; streaming continues from it ((batch, 1, dim) steps).
    prompt, state = layer(x[:, :4], return_state=True)
    rest = torch.cat([layer.step(x[:, t:t + 1], state) for t in range(4, 9)], dim=1)
    torch.testing.assert_close(torch.cat([prompt, rest], 1), full, atol=1e-12, rtol=1e-10)
    # Chunks chained through the state equal one call; the last chunk's state is the final one.
    first, mid = layer(x[:, :5], return_state=True)
    second, last = layer(x[:, 5:], state=mid, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-12, rtol=1e-10)
    for got, want in zip(last, state):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_aaren_is_causal_and_packs_sequences():
    torch.manual_seed(1)
    layer = sgnn.Aaren(8, heads=2).double()
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    probe = x.clone()
    probe[0, 4] += 1.0
    with torch.no_grad():
        base, moved = layer(x), layer(probe)
    torch.testing.assert_close(moved[:, :4], base[:, :4], atol=0, rtol=0)  # the past ignores the future
    assert (moved[:, 4:] - base[:, 4:]).abs().amin(-1).gt(0).all()
    lengths = [3, 1, 5]
    seqs = [torch.randn(1, n, 8, dtype=torch.float64) for n in lengths]
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    packed = layer(torch.cat(seqs, 1), cu_seqlens=cu)
    torch.testing.assert_close(packed, torch.cat([layer(s) for s in seqs], 1), atol=1e-12, rtol=1e-10)


def test_aaren_gradients_match_formula_and_layers_stack():
    torch.manual_seed(2)
    model = torch.nn.Sequential(sgnn.Aaren(10, heads=2), torch.nn.GELU(), sgnn.Aaren(10, heads=5)).double()
    x = torch.randn(3, 6, 10, dtype=torch.float64, requires_grad=True)
    out = model(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    _assert_all_parameters_get_gradients(model)
    ours = [x.grad] + [p.grad for p in model.parameters()]
    model.zero_grad()
    x2 = x.detach().clone().requires_grad_()
    expected = _aaren_by_formula(model[2], F.gelu(_aaren_by_formula(model[0], x2)))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    expected.backward(grad)
    for got, want in zip(ours, [x2.grad] + [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_aaren_step_keeps_float32_state_for_float32_layers():
    layer = sgnn.Aaren(6, heads=2, head_dim=4)
    state = layer.init_state(3)
    assert [t.dtype for t in state] == [torch.float32] * 3 and state[2].shape == (3, 2, 4)
    assert torch.isinf(state[0]).all() and state[0].lt(0).all()
    x = torch.randn(3, 5, 6)
    steps = torch.stack([layer.step(x[:, t], state) for t in range(5)], dim=1)
    torch.testing.assert_close(steps, layer(x).detach(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="divisible"):
        sgnn.Aaren(10, heads=3)


# ---- low precision: QuantLinear, QGCNConv ------------------------------------------------------------
def _dequantized(x, bits, axis=0):
    """dequantize(quantize(x)) from the reference (independent of the fake_quantize op)."""
    from scangraph import reference
    q, scale = reference.quantize(x, bits, axis)
    return q.float() * scale.unsqueeze(1 - axis)


def _fake_quant_linear(x, weight, bias, bits):
    """W{bits}A8 linear written out: x quantized per row, the weight per output channel."""
    return F.linear(_dequantized(x, 8), _dequantized(weight, bits), bias)


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_qat_then_converted(bits):
    torch.manual_seed(bits)
    fp32 = torch.nn.Linear(13, 7)
    layer = sgnn.QuantLinear(13, 7, weight_bits=bits)
    layer.load_state_dict(fp32.state_dict())  # nn.Linear's names: weight, bias
    x = torch.randn(11, 13, requires_grad=True)
    qat = layer(x)
    expected = _fake_quant_linear(x.detach(), fp32.weight.detach(), fp32.bias.detach(), bits)
    torch.testing.assert_close(qat, expected, atol=1e-5, rtol=1e-5)
    # Quantization error bound: with |dx| <= sx / 2 and |dw| <= sw / 2 per element,
    # |x.w - xq.wq| <= sx / 2 sum|w| + sw / 2 sum|x| + K sx sw / 4 for every output element.
    reference_out = fp32(x.detach())
    sx = x.detach().abs().amax(1, keepdim=True) / 127
    sw = fp32.weight.detach().abs().amax(1) / (127 if bits == 8 else 7)
    bound = (sx / 2 * fp32.weight.detach().abs().sum(1) + sw / 2 * x.detach().abs().sum(1, keepdim=True)
             + 13 * sx * sw / 4)
    error = (qat.detach() - reference_out).abs()
    assert (error <= bound + 1e-5).all() and error.max() > 1e-4  # quantized, within the bound
    # Straight-through gradients: those of F.linear evaluated at the quantized values.
    grad = torch.randn_like(qat)
    qat.backward(grad)
    torch.testing.assert_close(x.grad, grad @ _dequantized(fp32.weight.detach(), bits), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.weight.grad, grad.T @ _dequantized(x.detach(), 8), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.bias.grad, grad.sum(0))

    assert layer.convert() is layer and layer.converted
    assert "weight" not in dict(layer.named_parameters())
    assert layer.qweight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert layer.qweight.shape == ((7, 13) if bits == 8 else (7, 7)) and layer.weight_scale.shape == (7,)
    # Same quantizer, same rounding: the integer kernel reproduces the QAT forward up to fp32
    # summation order (int32 accumulation vs fp32 matmul of the dequantized values).
    x3 = torch.randn(2, 5, 13)  # leading dims flatten to rows, as in QAT
    with torch.no_grad():
        converted = layer(x3)
    assert converted.shape == (2, 5, 7)
    torch.testing.assert_close(converted, _fake_quant_linear(x3.reshape(10, 13), fp32.weight.detach(),
                                                             fp32.bias.detach(), bits).view(2, 5, 7),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="fake_quantize"):
        layer(x3.requires_grad_()).sum().backward()  # the integer kernels are inference only


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_state_dicts_load_in_both_phases(bits):
    torch.manual_seed(10 + bits)
    fp32 = torch.nn.Linear(9, 4)
    x = torch.randn(6, 9)
    converted = sgnn.QuantLinear.from_float(fp32, bits).convert()
    # A float state_dict into an already converted layer: quantized on load.
    late = sgnn.QuantLinear(9, 4, weight_bits=bits).convert()
    late.load_state_dict(fp32.state_dict())
    # A converted checkpoint into a converted layer: the integers copied as they are.
    copy = sgnn.QuantLinear(9, 4, weight_bits=bits).convert()
    copy.load_state_dict(converted.state_dict())
    with torch.no_grad():
        out = converted(x)
        assert not torch.equal(out, sgnn.QuantLinear(9, 4, weight_bits=bits).convert()(x))
        for other in (late, copy):
            assert torch.equal(other.qweight, converted.qweight)
            torch.testing.assert_close(other(x), out, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        late.load_state_dict(torch.nn.Linear(8, 4).state_dict())
    with pytest.raises(ValueError, match="weight_bits"):
        sgnn.QuantLinear(9, 4, weight_bits=2)


def _dense_gcn_matrix(edge_index, n):
    """D^-1/2 (A + I) D^-1/2 as a dense (n, n) matrix (row = target), duplicates summed and any
    existing self loop replaced by one of weight 1, as PyG's gcn_norm does."""
    a = torch.zeros(n, n, dtype=torch.float64)
    src, dst = edge_index
    keep = src != dst
    a.index_put_((dst[keep], src[keep]), torch.ones(int(keep.sum()), dtype=torch.float64), accumulate=True)
    a += torch.eye(n, dtype=torch.float64)
    inv_sqrt = a.sum(1).rsqrt()
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]


@pytest.mark.parametrize("bits", [8, 4])
def test_qgcnconv_matches_formula_and_converts(bits):
    torch.manual_seed(20 + bits)
    edge_index = random_graph()
    n = 23
    fp32 = sgnn.GCNConv(7, 5)
    torch.nn.init.normal_(fp32.bias)
    conv = sgnn.QGCNConv(7, 5, weight_bits=bits)
    conv.load_state_dict(fp32.state_dict())  # GCNConv's names: lin.weight, bias
    x = torch.randn(n, 7, requires_grad=True)
    qat = conv(x, edge_index)
    # The formula: features per row at 8 bits, weight per channel at `bits`, the transformed
    # features (the messages) per row at 8 bits, then the fp32 normalised propagation + bias.
    h = _fake_quant_linear(x.detach(), fp32.lin.weight.detach(), None, bits)
    a_hat = _dense_gcn_matrix(edge_index, n)
    expected = (a_hat @ _dequantized(h, 8).double()).float() + fp32.bias.detach()
    # A message whose x / scale lands within fp32 rounding of a .5 tie may round the other way
    # (different summation order): it then moves by one step s_j, so the tolerance of row i is
    # sum_j a_ij s_j. Almost every element must match to fp32 accuracy, though.
    step = (a_hat.float() @ (h.abs().amax(1) / 127))[:, None]
    error = (qat.detach() - expected).abs()
    assert (error <= step + 1e-5).all() and (error > 1e-5).float().mean() < 0.05
    # Gradients reach the input and both parameters (straight through the quantizers).
    qat.square().sum().backward()
    _assert_all_parameters_get_gradients(conv)
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Quantization moves the output a little from the fp32 layer's, not a lot.
    with torch.no_grad():
        reference_out = fp32(x, edge_index)
    relative = (qat - reference_out).norm() / reference_out.norm()
    assert 0 < relative < (0.03 if bits == 8 else 0.3), relative

    conv.convert()
    graph = CSRGraph.from_edge_index(edge_index, num_nodes=n)
    with torch.no_grad():
        converted = conv(x, edge_index)
        torch.testing.assert_close(conv(x, graph), converted, atol=1e-6, rtol=1e-6)
    error = (converted - qat.detach()).abs()
    assert (error <= step + 1e-5).all() and (error > 1e-5).float().mean() < 0.05
    error = (converted - expected).abs()
    assert (error <= step + 1e-5).all() and (error > 1e-5).float().mean() < 0.05


def test_qgcnconv_float_messages_and_convert_quantized():
    torch.manual_seed(30)
    edge_index = random_graph()
    conv = sgnn.QGCNConv(6, 4, weight_bits=4, quantize_messages=False)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(23, 6)
    h = _fake_quant_linear(x, conv.lin.weight.detach(), None, 4)
    expected = (_dense_gcn_matrix(edge_index, 23) @ h.double()).float() + conv.bias.detach()
    torch.testing.assert_close(conv(x, edge_index), expected, atol=1e-5, rtol=1e-5)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), sgnn.QuantLinear(6, 6, weight_bits=4))
    model.add_module("conv", conv)
    assert sgnn.convert_quantized(model) is model and model[1].converted and conv.converted
    assert isinstance(model[0].weight, torch.nn.Parameter)  # float layers stay float
    with torch.no_grad():
        torch.testing.assert_close(conv(x, edge_index), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ("coo", "csr"))
def test_convs_take_a_torch_sparse_adj_t(layout):
    """PyG's adj_t (row i = target i, values = edge weights): every conv gives what it gives for
    the same edges as an edge_index (unit weights), and GCNConv matches PyG's on adj_t."""
    torch.manual_seed(0)
    n = 20
    pairs = torch.randperm(n * n)[:90]  # distinct (dst, src) pairs: coalescing sums nothing
    pairs = pairs[pairs // n != pairs % n][:70]  # no loops: PyG adds loops to adj_t without removing any
    dst, src = pairs // n, pairs % n
    edge_index = torch.stack([src, dst])
    adj_t = torch.sparse_coo_tensor(torch.stack([dst, src]), torch.ones(70), (n, n)).coalesce()
    adj_t = adj_t if layout == "coo" else adj_t.to_sparse_csr()
    x = torch.randn(n, 6)
    layers = [sgnn.GCNConv(6, 4), sgnn.SAGEConv(6, 4), sgnn.GINConv(torch.nn.Linear(6, 4)),
              sgnn.GATConv(6, 4, heads=2)]
    for layer in layers:
        torch.testing.assert_close(layer(x, adj_t), layer(x, edge_index), msg=type(layer).__name__)
    assert graph_for(adj_t, n, "raw", lambda g: g) is graph_for(adj_t, n, "raw", lambda g: g)  # built once
    with pytest.raises(TypeError, match="adj_t"):
        layers[0](x, [edge_index])
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    pyg = pyg_nn.GCNConv(6, 4)
    pyg.lin.weight.data.copy_(layers[0].lin.weight.data)
    pyg.bias.data.copy_(layers[0].bias.data)
    torch.testing.assert_close(layers[0](x, adj_t), pyg(x, adj_t), atol=1e-5, rtol=1e-5)


def test_convs_read_an_adj_t_as_pyg_does():
    """On a weighted adj_t with self loops and a duplicate edge, each conv equals PyG's on the same
    matrix, which reads each form its own way: GCN's loops added to a torch sparse matrix's
    (weights summed) and replacing a SparseTensor's, SAGE's and GIN's messages weighted by a
    torch sparse matrix's values and not by a SparseTensor's, GAT's loops replaced."""
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    edge_index = random_graph()
    values = torch.rand(edge_index.shape[1]) + 0.5
    for adj_t in adj_t_forms(edge_index, 23, values):
        for ours, theirs in _conv_pairs(pyg):
            x = torch.randn(23, ours.in_channels if hasattr(ours, "in_channels") else 7)
            torch.testing.assert_close(ours(x, adj_t), theirs(x, adj_t), atol=1e-5, rtol=1e-4,
                                       msg=lambda m: f"{ours} on {type(adj_t).__name__}: {m}")
    with pytest.raises(ValueError, match="values"):
        sgnn.GCNConv(7, 5)(torch.randn(23, 7), adj_t_forms(edge_index, 23, values)[0], values)


def test_convs_take_batched_static_graphs_and_refuse_what_they_do_not_support():
    """x (batch, N, F) over one graph equals the batch of separate calls (and PyG's GCNConv);
    lazy in_channels, flow and size= are refused by name."""
    torch.manual_seed(0)
    edge_index, n = torch.randint(0, 15, (2, 50)), 15
    x = torch.randn(3, n, 6)
    for layer in (sgnn.GCNConv(6, 4), sgnn.SAGEConv(6, 4), sgnn.SAGEConv(6, 8),
                  sgnn.GINConv(torch.nn.Linear(6, 4))):
        torch.testing.assert_close(layer(x, edge_index), torch.stack([layer(xi, edge_index) for xi in x]))
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    ours, pyg = sgnn.GCNConv(6, 4), pyg_nn.GCNConv(6, 4)
    pyg.lin.weight.data.copy_(ours.lin.weight.data)
    pyg.bias.data.copy_(ours.bias.data)
    torch.testing.assert_close(ours(x, edge_index), pyg(x, edge_index), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="lazy in_channels"):
        sgnn.GCNConv(-1, 4)
    with pytest.raises(ValueError, match="flow"):
        sgnn.SAGEConv(6, 4, flow="target_to_source")
    with pytest.raises(ValueError, match="size="):
        sgnn.GINConv(torch.nn.Linear(6, 4))(x[0], edge_index, size=(n, n))
    with pytest.raises(ValueError, match="static graphs"):
        sgnn.GATConv(6, 4)(x, edge_index)
