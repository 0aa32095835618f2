"""Attention dropout inside gat_aggregate (docs/sparse.md, "Attention dropout"): one Philox bit
layout on every backend, checked element by element against the reference's mask; gradients
through the regenerated mask; the keep rate; fresh masks per call; GATConv's dropout and
return_attention_weights against PyG."""
import math

import pytest
import torch

import scangraph
from conftest import assert_close, backend_params, emulated
from graphs import make_graph
from scangraph import reference
from test_sparse import _gat_inputs, _repeated_runs, _skewed_graph, _split_threshold


def _generator(seed=11):
    return torch.Generator().manual_seed(seed)


def _rng_of(seed, numel=2):
    """The (seed, offset) gat_aggregate draws from a CPU generator seeded with `seed`."""
    return torch.empty(numel, dtype=torch.int64).random_(generator=_generator(seed))


def test_philox_known_answers():
    """Word 0 of Philox4x32-10 on Random123's known-answer vectors (kat_vectors)."""
    cases = [((0, 0, 0, 0), (0, 0), 0x6627E8D5),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, 0x408F276D),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), 0xD16CFE09)]
    for counter, key, word0 in cases:
        got = reference.philox4x32_10_word0(tuple(torch.tensor([c]) for c in counter), key)
        assert int(got) == word0


@pytest.mark.parametrize("p", (0.1, 0.5, 0.9))
def test_keep_rate_within_binomial_bounds(p):
    """Over 2^20 elements the kept fraction is 1 - p within 5 standard deviations, and a tenth of
    them changes when the offset does (the counter's upper words matter)."""
    n = 1 << 20
    keep = reference.dropout_keep(torch.tensor([123456789, 5]), n, p)
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    other = reference.dropout_keep(torch.tensor([123456789, 6]), n, p)
    assert (keep != other).double().mean().item() > 2 * p * (1 - p) - 0.01


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_backends_draw_the_reference_mask(backend_device, monkeypatch):
    """x[j] one-hot per source makes out[i, h, j] = k_ij a_ij: the kept (edge, head) pairs read off
    each backend's output equal the reference's mask bit for bit, split rows included."""
    backend, device = backend_device
    graph = _skewed_graph(_split_threshold(backend, monkeypatch))
    n, heads = graph.num_cols, 3
    # Each row's sources are distinct (a duplicate edge would merge two mask bits into one column).
    src, dst = graph.col.long(), graph.edge_rows()
    first = torch.ones(graph.num_edges, dtype=torch.bool)
    order = torch.argsort(dst * n + src)
    pairs = (dst * n + src)[order]
    first[order[1:]] = pairs[1:] != pairs[:-1]
    graph = scangraph.CSRGraph.from_edge_index(torch.stack([src[first], dst[first]]), n)
    graph = scangraph.CSRGraph(graph.rowptr, graph.col, num_cols=n, validate=False).to(device)
    x = torch.eye(n, dtype=torch.float64)[:, None, :].expand(n, heads, n).contiguous().to(device)
    a_src, a_dst = (torch.randn(k, heads, dtype=torch.float64).to(device) for k in (n, graph.num_rows))
    p = 0.35
    out = scangraph.gat_aggregate(graph, x, a_src, a_dst, 0.2, p, generator=_generator(), backend=backend).cpu()
    cpu = graph.to("cpu")
    rows, cols = cpu.edge_rows(), cpu.col.long()
    kept = out[rows, :, cols] != 0                                     # (E, heads) in CSR order
    want = reference.dropout_keep(_rng_of(11), cpu.num_edges * heads, p).view(-1, heads)
    assert torch.equal(kept, want)
    attention = reference.gat_attention(cpu.rowptr, cpu.col, a_src.cpu(), a_dst.cpu(), 0.2)
    assert_close(out[rows, :, cols][want], (attention / (1 - p))[want], torch.float64)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
def test_forward_backward_match_the_reference(backend_device, dtype, monkeypatch):
    """Output and the three gradients against the float64 reference with the same mask, on a
    graph with hub rows and a hub source (the split passes, and the transpose's perm_t), bitwise
    equal on a second run with the same generator state."""
    backend, device = backend_device
    graph = _skewed_graph(_split_threshold(backend, monkeypatch)).to(device)
    x, a_src, a_dst = _gat_inputs(graph, 2, 6, dtype, device)
    grad = torch.randn(graph.num_rows, 2, 6, dtype=dtype).to(device)
    first = _repeated_runs(
        lambda: scangraph.gat_aggregate(graph, x, a_src, a_dst, 0.2, 0.6, generator=_generator(), backend=backend),
        (x, a_src, a_dst), grad, backend, device)
    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in (x, a_src, a_dst)]
    cpu = graph.to("cpu")
    ref = reference.gat_aggregate(cpu.rowptr, cpu.col, *ref_inputs, 0.2, 0.6, _rng_of(11))
    ref.backward(grad.cpu().double())
    assert_close(first[0].cpu(), ref, dtype)
    for mine, theirs in zip(first[1:], ref_inputs):
        assert_close(mine.cpu(), theirs.grad, dtype, scale=4.0)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_gradcheck_with_a_fixed_seed(backend_device):
    backend, device = backend_device
    graph = make_graph("tiny").to(device)
    x, a_src, a_dst = _gat_inputs(graph, 2, 3, torch.float64, device)
    assert torch.autograd.gradcheck(
        lambda x, s, d: scangraph.gat_aggregate(graph, x, s, d, 0.1, 0.4, generator=_generator(3), backend=backend),
        (x, a_src, a_dst), fast_mode=emulated(backend, device))


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_calls_draw_fresh_masks_and_p0_is_exact(backend_device):
    """Two calls on the default generator draw two masks; torch.manual_seed repeats them; p = 0
    is bitwise the call without dropout (and draws nothing from the generator)."""
    backend, device = backend_device
    graph = make_graph("random").to(device)
    x, a_src, a_dst = (t.detach() for t in _gat_inputs(graph, 2, 4, torch.float32, device))

    def run(p):
        return scangraph.gat_aggregate(graph, x, a_src, a_dst, 0.2, p, backend=backend)

    torch.manual_seed(5)
    first, second = run(0.5), run(0.5)
    assert not torch.equal(first, second)
    torch.manual_seed(5)
    assert torch.equal(run(0.5), first)
    state = torch.get_rng_state()
    assert torch.equal(run(0.0), scangraph.gat_aggregate(graph, x, a_src, a_dst, 0.2, backend=backend))
    assert torch.equal(torch.get_rng_state(), state)


def test_kernel_keep_rate_over_many_edges():
    """The C++ kernel's kept count over 2 x 10^5 (edge, head) pairs: x = 1 and equal logits per
    row make out[i] = (kept edges of row i) / deg(i) / (1 - p)."""
    if not scangraph.cpp_built():
        pytest.skip("the compiled library is not built")
    n, p, heads = 2000, 0.3, 4
    edge_index = torch.randint(0, n, (2, 50_000))
    graph = scangraph.CSRGraph.from_edge_index(edge_index, n)
    x = torch.ones(n, heads, 1, dtype=torch.float64)
    a_src = torch.full((n, heads), 0.7, dtype=torch.float64)
    out = scangraph.gat_aggregate(graph, x, a_src, torch.randn(n, heads, dtype=torch.float64), 0.2, p,
                                  backend="cpp")
    kept = (out[..., 0] * graph.in_degree()[:, None] * (1 - p)).sum().item()
    total = graph.num_edges * heads
    assert abs(round(kept) - kept) < 1e-6
    assert abs(kept / total - (1 - p)) < 5 * math.sqrt(p * (1 - p) / total)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_attention_weights_from_the_row_statistics(backend_device):
    """return_attention_weights: (E, heads) in the caller's edge order, equal to the reference's
    softmax, with gradients to alpha_src and alpha_dst; before dropout, as PyG returns them."""
    backend, device = backend_device
    edge_index = torch.randint(0, 40, (2, 300))
    graph = scangraph.CSRGraph.from_edge_index(edge_index, 40).to(device)
    x, a_src, a_dst = _gat_inputs(graph, 3, 4, torch.float64, device)
    out, alpha = scangraph.gat_aggregate(graph, x, a_src, a_dst, 0.2, 0.3, generator=_generator(),
                                         return_attention_weights=True, backend=backend)
    weights = torch.randn(alpha.shape, dtype=torch.float64)
    (alpha.cpu() * weights).sum().backward()
    ref_inputs = [t.detach().cpu().requires_grad_() for t in (a_src, a_dst)]
    cpu = graph.to("cpu")
    want = cpu.to_caller_order(reference.gat_attention(cpu.rowptr, cpu.col, *ref_inputs, 0.2))
    (want * weights).sum().backward()
    assert_close(alpha.detach().cpu(), want.detach(), torch.float64)
    for mine, theirs in zip((a_src, a_dst), ref_inputs):
        assert_close(mine.grad.cpu(), theirs.grad, torch.float64)
    # Per caller edge: alpha sums to 1 over each destination's edges.
    sums = torch.zeros(40, 3, dtype=torch.float64).index_add_(0, edge_index[1], alpha.detach().cpu())
    has_edges = torch.bincount(edge_index[1], minlength=40) > 0
    assert_close(sums[has_edges], torch.ones_like(sums[has_edges]), torch.float64)


def test_bad_dropout_arguments():
    graph = make_graph("random")
    x, a_src, a_dst = (t.detach() for t in _gat_inputs(graph, 2, 4, torch.float32, "cpu"))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout must be a probability"):
            scangraph.gat_aggregate(graph, x, a_src, a_dst, 0.2, p)
    if scangraph.cpp_built():
        with pytest.raises(RuntimeError, match="dropout > 0 needs rng"):
            torch.ops.scangraph.gat_aggregate(graph.rowptr, graph.col, x, a_src, a_dst, 0.2, None, None, None, 0.5)
        with pytest.raises(RuntimeError, match="dropout must be in"):
            torch.ops.scangraph.gat_aggregate(graph.rowptr, graph.col, x, a_src, a_dst, 0.2, None, None, None, 2.0,
                                              torch.zeros(2, dtype=torch.int64))


def test_gatconv_dropout_is_pygs_attention_dropout():
    """GATConv(dropout=p) in training: the layer's output is the reference with the same mask
    (drawn from torch's default generator); in eval mode it equals PyG's GATConv."""
    conv = scangraph.nn.GATConv(6, 4, heads=2, dropout=0.5).double()
    edge_index = torch.randint(0, 30, (2, 150))
    x = torch.randn(30, 6, dtype=torch.float64)
    torch.manual_seed(9)
    got = conv(x, edge_index)
    torch.manual_seed(9)
    rng = torch.empty(2, dtype=torch.int64).random_()
    from scangraph.graph import with_self_loops
    from scangraph.nn.graph_cache import graph_for
    graph = graph_for(edge_index, 30, "loops", with_self_loops)
    h = conv.lin(x).view(30, 2, 4)
    want = reference.gat_aggregate(graph.rowptr, graph.col, h, (h * conv.att_src).sum(-1), (h * conv.att_dst).sum(-1),
                                   0.2, 0.5, rng).reshape(30, 8) + conv.bias
    assert_close(got, want, torch.float64)
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    pyg = pyg_nn.GATConv(6, 4, heads=2, dropout=0.5).double()
    pyg.load_state_dict(conv.state_dict())
    conv.eval()
    pyg.eval()
    assert_close(conv(x, edge_index), pyg(x, edge_index), torch.float64)


def test_gatconv_returns_pygs_attention_weights():
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    edge_index = torch.randint(0, 30, (2, 150))
    edge_index[:, :5] = torch.arange(5)  # some self loops, which PyG removes before adding its own
    x = torch.randn(30, 6, dtype=torch.float64)
    for kwargs in (dict(heads=2), dict(heads=1, add_self_loops=False)):
        conv = scangraph.nn.GATConv(6, 4, **kwargs).double().eval()
        pyg = pyg_nn.GATConv(6, 4, **kwargs).double().eval()
        pyg.load_state_dict(conv.state_dict())
        out, (ei, alpha) = conv(x, edge_index, return_attention_weights=True)
        want_out, (want_ei, want_alpha) = pyg(x, edge_index, return_attention_weights=True)
        assert torch.equal(ei, want_ei)
        assert_close(alpha, want_alpha, torch.float64)
        assert_close(out, want_out, torch.float64)
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), torch.ones(150), (30, 30)).coalesce()
    with pytest.raises(ValueError, match="return_attention_weights needs an edge_index"):
        conv(x, adj_t, return_attention_weights=True)
