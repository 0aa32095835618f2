"""scangraph.integrations.transformers: HF's MambaForCausalLM and FalconMambaForCausalLM (small
models built from a config, no download) give the logits, generated tokens and training
gradients of transformers' own torch path once apply() routes their SSM to scangraph."""
import pytest
import torch

from conftest import backend_params
from graphs import adj_t_forms

transformers = pytest.importorskip("transformers")
from scangraph.integrations import transformers as sg_hf  # noqa: E402

MODELS = {
    "mamba": lambda: transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=61, hidden_size=24, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
        time_step_rank=4)),
    "falcon_mamba": lambda: transformers.FalconMambaForCausalLM(transformers.FalconMambaConfig(
        vocab_size=61, hidden_size=24, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
        time_step_rank=4)),
}


@pytest.fixture
def patched():
    yield sg_hf
    sg_hf.revert()


def _model(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():  # make the SSM matter: non-trivial D and conv bias
        for module in model.modules():
            if hasattr(module, "D") and isinstance(module.D, torch.nn.Parameter):
                module.D.normal_()
    return model


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_generate_and_gradients_match_transformers(backend_device, name, patched):
    backend, device = backend_device
    # Triton's interpreter runs a whole model's launches one program at a time (minutes): there,
    # the logits and two generated tokens of one model; the ops' own tests cover its gradients.
    interpreted = backend == "triton" and device == "cpu"
    if interpreted and name != "mamba":
        pytest.skip("the interpreted Triton backend runs one model")
    model = _model(name).to(device)
    ids = torch.randint(0, 61, (2, 13), device=device)
    new_tokens = 2 if interpreted else 6

    def run():
        model.eval()
        with torch.no_grad():
            logits = model(ids).logits
            tokens = model.generate(ids[:, :5], max_new_tokens=new_tokens, do_sample=False,
                                    min_new_tokens=new_tokens)
        if interpreted:
            return logits, tokens, {}
        model.train()
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
        return logits, tokens, grads

    want_logits, want_tokens, want_grads = run()
    assert patched.apply(model, backend=backend) is model and patched.applied()
    logits, tokens, grads = run()
    torch.testing.assert_close(logits, want_logits, atol=2e-5, rtol=1e-4)
    assert torch.equal(tokens, want_tokens)
    assert grads.keys() == want_grads.keys()
    for key in grads:
        torch.testing.assert_close(grads[key], want_grads[key], atol=2e-5, rtol=1e-4, msg=key)


def test_runs_under_torch_compile(patched):
    model = _model("mamba").eval()
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        want = model(ids).logits
        patched.apply(model)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(ids).logits, want, atol=2e-5, rtol=1e-4)


def test_revert_restores_transformers_and_unknown_arguments_raise(patched):
    from transformers.models.mamba import modeling_mamba
    original = modeling_mamba.mamba_selective_scan
    patched.apply()
    assert modeling_mamba.mamba_selective_scan is patched.selective_scan
    x = torch.randn(1, 4, 6)
    with pytest.raises(TypeError, match="unsupported arguments"):
        patched.selective_scan(x, x.abs(), -torch.rand(4, 3), torch.randn(1, 3, 6), torch.randn(1, 3, 6),
                               initial_state=torch.zeros(1, 4, 3))
    patched.revert()
    assert modeling_mamba.mamba_selective_scan is original and not patched.applied()


# ---- PyG: patch() / unpatch() -------------------------------------------------------------------
pyg_nn = pytest.importorskip("torch_geometric.nn")
from scangraph import datasets  # noqa: E402
from scangraph.integrations import pyg as sg_pyg  # noqa: E402

PYG_LAYERS = {
    "gcn": lambda: pyg_nn.GCNConv(8, 6),
    "gcn_improved": lambda: pyg_nn.GCNConv(8, 6, improved=True),
    "gcn_plain": lambda: pyg_nn.GCNConv(8, 6, normalize=False),
    "sage_mean": lambda: pyg_nn.SAGEConv(8, 6),
    "sage_max_normalize": lambda: pyg_nn.SAGEConv(8, 6, aggr="max", normalize=True),
    "sage_sum_no_root": lambda: pyg_nn.SAGEConv(8, 6, aggr="sum", root_weight=False),
    "gin": lambda: pyg_nn.GINConv(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU()), eps=0.3),
    "gat": lambda: pyg_nn.GATConv(8, 6, heads=3),
    "gat_mean_no_loops": lambda: pyg_nn.GATConv(8, 6, heads=2, concat=False, add_self_loops=False),
    "gcn_lazy": lambda: pyg_nn.GCNConv(-1, 6),
}


@pytest.fixture
def pyg_patch():
    yield sg_pyg
    sg_pyg.unpatch()


def _graphs():
    """A small random edge list (loops, a duplicate, an isolated node) and karate from the shared
    data when present; edge lists in no particular order."""
    edge_index = torch.randint(0, 29, (2, 120))
    edge_index = torch.cat([edge_index, edge_index[:, :1]], 1)
    graphs = [("random", edge_index, 30)]
    root = datasets.shared_data_dir()
    if root is not None:
        karate, n = datasets.load_graph(f"{root}/graphs/karate.npz")
        graphs.append(("karate", karate[:, torch.randperm(karate.shape[1])], n))
    return graphs


def _run(layer, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    out = layer(x, *args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.ones_like(out) + torch.arange(out.numel()).reshape(out.shape) % 3)
    grads = [x.grad] + [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    return out.detach(), grads


def _calls(monkeypatch):
    """Counts the scangraph kernels the patched layers call."""
    count = {"n": 0}
    for name in ("spmm", "gat_forward"):
        original = getattr(sg_pyg, name)

        def counted(*args, _original=original, **kwargs):
            count["n"] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(sg_pyg, name, counted)
    return count


@pytest.mark.parametrize("name", sorted(PYG_LAYERS))
def test_patched_pyg_layers_match_pyg(name, pyg_patch, monkeypatch):
    """Outputs and gradients (input and parameters) of the patched layer equal PyG's own, with
    an edge_index, edge weights (GCN) and weighted adj_t matrices (each form PyG reads its own
    way: graphs.adj_t_forms), on graphs with loops and a duplicate edge; and the kernels really ran."""
    calls = _calls(monkeypatch)
    for graph_name, edge_index, n in _graphs():
        torch.manual_seed(1)
        layer = PYG_LAYERS[name]()
        x = torch.randn(n, 8)
        inputs = [] if name == "gcn_improved" else [(edge_index,)]  # PyG's improved needs weights, see pyg.py
        if name.startswith("gcn"):
            inputs.append((edge_index, torch.rand(edge_index.shape[1])))
        inputs += [(adj_t,) for adj_t in adj_t_forms(edge_index, n, torch.rand(edge_index.shape[1]) + 0.5)]
        for args in inputs:
            want = _run(layer, x, *args)
            before = calls["n"]
            pyg_patch.patch()
            got = _run(layer, x, *args)
            pyg_patch.unpatch()
            assert calls["n"] > before, f"{name} on {graph_name}: the patched layer did not run scangraph"
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
            for g, w in zip(got[1], want[1]):
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_uncovered_pyg_calls_fall_through(pyg_patch, monkeypatch):
    """A bipartite pair without targets, bipartite GAT, edge features, GCN's edge_weight beside an
    adj_t (PyG ignores it), GAT's attention weights on an adj_t (PyG returns a sparse matrix),
    PyG's cached / improved GCN and hooks on message passing run PyG's own code: same results,
    no scangraph kernel."""
    calls = _calls(monkeypatch)
    edge_index, n = torch.randint(0, 20, (2, 60)), 20
    x, x_dst = torch.randn(n, 8), torch.randn(n, 8)
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), torch.ones(60), (n, n)).coalesce()
    torch.manual_seed(0)
    hooked = pyg_nn.GINConv(torch.nn.Linear(8, 6))
    seen = []
    hooked.register_message_forward_pre_hook(lambda module, inputs: seen.append(1))
    cases = [
        (pyg_nn.SAGEConv(8, 6), ((x, None), edge_index), {"size": (n, n)}),
        (pyg_nn.GATConv(8, 6), ((x, x_dst), edge_index), {}),
        (pyg_nn.GATConv(8, 6, edge_dim=3), (x, edge_index, torch.randn(60, 3)), {}),
        (pyg_nn.GCNConv(8, 6), (x, adj_t, torch.rand(60)), {}),
        (pyg_nn.GATConv(8, 6), (x, adj_t), {"return_attention_weights": True}),
        (pyg_nn.GCNConv(8, 6, cached=True), (x, edge_index), {}),
        (pyg_nn.GCNConv(8, 6, improved=True), (x, edge_index), {}),
        (hooked, (x, edge_index), {}),
    ]
    for layer, args, kwargs in cases:
        want = layer.eval()(*args, **kwargs)
        pyg_patch.patch(aggregations=False)
        got = layer(*args, **kwargs)
        pyg_patch.unpatch()
        want, got = (want[0], got[0]) if isinstance(want, tuple) else (want, got)
        torch.testing.assert_close(got, want)
    assert len(seen) == 2  # the hook ran unpatched and patched
    assert calls["n"] == 0


BIPARTITE_LAYERS = {
    "sage_mean": lambda: pyg_nn.SAGEConv((8, 5), 6),
    "sage_max_normalize": lambda: pyg_nn.SAGEConv((8, 5), 6, aggr="max", normalize=True),
    "gin": lambda: pyg_nn.GINConv(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU()), eps=0.2),
}


@pytest.mark.parametrize("name", sorted(BIPARTITE_LAYERS))
def test_patched_pyg_layers_on_bipartite_inputs_match_pyg(name, pyg_patch, monkeypatch):
    """PyG's bipartite (x_src, x_dst) with an edge_index in no order (and `size=` saying the same),
    and one node set with size=(N, N): the fused kernels, PyG's outputs and gradients (both
    feature sets and the parameters)."""
    calls = _calls(monkeypatch)
    torch.manual_seed(3)
    num_src, num_dst = 30, 12
    edge_index = torch.stack([torch.randint(0, num_src, (90,)), torch.randint(0, num_dst, (90,))])
    layer = BIPARTITE_LAYERS[name]()
    x_src, x_dst = torch.randn(num_src, 8), torch.randn(num_dst, 5 if name.startswith("sage") else 8)
    square = pyg_nn.SAGEConv(8, 6) if name.startswith("sage") else pyg_nn.GINConv(torch.nn.Linear(8, 6))
    for module, x, kwargs in ((layer, (x_src, x_dst), {}), (layer, (x_src, x_dst), {"size": (num_src, num_dst)}),
                              (square, x_src, {"size": (num_src, num_src)})):
        results = []
        for patched in (False, True):
            if patched:
                pyg_patch.patch()
            module.zero_grad()
            xs = [t.detach().clone().requires_grad_() for t in (x if isinstance(x, tuple) else (x,))]
            out = module(tuple(xs) if isinstance(x, tuple) else xs[0], edge_index, **kwargs)
            out.backward(torch.arange(out.numel()).reshape(out.shape) % 5 - 2.0)
            results.append([out.detach()] + [t.grad for t in xs] + [p.grad.clone() for p in module.parameters()])
            pyg_patch.unpatch()
        for got, want in zip(results[1], results[0]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert calls["n"] == 3


def _aggregations(monkeypatch):
    count = {"n": 0}
    original = sg_pyg.aggregate_messages

    def counted(*args, **kwargs):
        out = original(*args, **kwargs)
        count["n"] += out is not NotImplemented
        return out
    monkeypatch.setattr(sg_pyg, "aggregate_messages", counted)
    return count


MESSAGE_PASSING_LAYERS = {  # layers the layer patch leaves to PyG, on the patched aggregations
    "graph_conv_max": lambda n: (pyg_nn.GraphConv(8, 6, aggr="max"), ()),
    "graph_conv_min": lambda n: (pyg_nn.GraphConv(8, 6, aggr="min"), ()),
    "graph_conv_mean": lambda n: (pyg_nn.GraphConv(8, 6, aggr="mean"), ()),
    "edge_conv_max": lambda n: (pyg_nn.EdgeConv(torch.nn.Linear(16, 6)), ()),
    "gat_edge_features": lambda n: (pyg_nn.GATConv(8, 6, heads=2, edge_dim=3), (torch.randn(121, 3),)),
    "sage_project": lambda n: (pyg_nn.SAGEConv(8, 6, project=True), ()),
}


@pytest.mark.parametrize("name", sorted(MESSAGE_PASSING_LAYERS))
def test_patched_aggregations_match_pyg_in_message_passing_layers(name, pyg_patch, monkeypatch):
    """Layers that reach MessagePassing's aggregation (messages of shape (E, F) or (E, heads, F))
    give PyG's outputs and gradients with scangraph's scatter doing the reduction."""
    count = _aggregations(monkeypatch)
    edge_index, n = _graphs()[0][1:]
    torch.manual_seed(2)
    layer, extra = MESSAGE_PASSING_LAYERS[name](n)
    x = torch.randn(n, 8)
    want = _run(layer, x, edge_index, *extra)
    pyg_patch.patch()
    got = _run(layer, x, edge_index, *extra)
    pyg_patch.unpatch()
    assert count["n"] >= 1
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reduce", ["Sum", "Mean", "Max", "Min"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_patched_aggregation_modules_match_pyg(reduce, dtype, pyg_patch, monkeypatch):
    """The aggregation modules by index (in no order, with empty rows and dim_size past the last
    index) and by ptr, on (E, F) and (E, heads, F) messages: PyG's values and gradients (PyG's
    computed in float64 and rounded once: in half types scangraph accumulates in fp32, PyG in the
    half type); an index past dim_size still raises PyG's error."""
    torch.manual_seed(0)
    count = _aggregations(monkeypatch)
    module = getattr(pyg_nn.aggr, f"{reduce}Aggregation")()
    index = torch.tensor([3, 0, 0, 5, 3, 3, 1, 5, 0])
    order = torch.argsort(index, stable=True)
    ptr = torch.tensor([0, 3, 4, 4, 7, 7, 9, 9])
    for shape, dim in (((9, 4), -2), ((9, 2, 3), 0)):
        messages = torch.randn(shape, dtype=torch.float64).to(dtype).double()
        for kwargs, values in (({"index": index, "dim_size": 8}, messages), ({"index": index}, messages),
                               ({"ptr": ptr}, messages[order])):
            results = []
            for patched, run_dtype in ((False, torch.float64), (True, dtype)):
                if patched:
                    pyg_patch.patch()
                src = values.to(run_dtype).detach().clone().requires_grad_()
                out = module(src, dim=dim, **kwargs)
                out.backward(torch.arange(out.numel(), dtype=run_dtype).reshape(out.shape))
                results.append((out.detach().to(dtype), src.grad.to(dtype)))
                pyg_patch.unpatch()
            (want, want_grad), (got, got_grad) = results
            torch.testing.assert_close(got, want)
            torch.testing.assert_close(got_grad, want_grad)
    assert count["n"] == 6
    pyg_patch.patch()
    with pytest.raises(ValueError, match="dim_size"):
        module(torch.randn(9, 4), index=index, dim_size=4)


def test_patched_gat_attention_weights_and_dropout(pyg_patch, monkeypatch):
    """return_attention_weights=True gives PyG's (out, (edge_index, alpha)), with alpha's
    gradient; attention dropout in training runs in scangraph's kernel, and with p = 0.5 about
    half the attention mass is dropped (the output differs from eval mode)."""
    calls = _calls(monkeypatch)
    edge_index, n = torch.randint(0, 20, (2, 60)), 20
    x = torch.randn(n, 8)
    layer = pyg_nn.GATConv(8, 6, heads=2, dropout=0.5).eval()
    want_out, (want_ei, want_alpha) = layer(x, edge_index, return_attention_weights=True)
    (want_alpha * torch.arange(want_alpha.numel()).reshape(want_alpha.shape)).sum().backward()
    want_grad = layer.att_src.grad.clone()
    layer.zero_grad()
    pyg_patch.patch()
    out, (ei, alpha) = layer(x, edge_index, return_attention_weights=True)
    (alpha * torch.arange(alpha.numel()).reshape(alpha.shape)).sum().backward()
    assert calls["n"] == 1
    assert torch.equal(ei, want_ei)
    torch.testing.assert_close(alpha, want_alpha)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(layer.att_src.grad, want_grad)
    layer.train()
    dropped = layer(x, edge_index)
    assert calls["n"] == 2
    assert not torch.allclose(dropped, want_out)
    assert sg_pyg.patched()
