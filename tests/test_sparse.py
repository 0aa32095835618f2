"""spmm and sddmm on every backend against the float64 reference: forward, backward, gradcheck,
opcheck, torch.compile, determinism, real graphs, bad input."""
import pytest
import torch

import scangraph
from scangraph import CSRGraph, reference
from conftest import HAS_CUDA, assert_close, backend_params, emulated, real_graph_path
from graphs import make_graph

# (feature shape after the node dimension, weight shape after the edge dimension or None)
WEIGHTINGS = {
    "unweighted": ((33,), None),
    "per_edge": ((2, 5), ()),          # one weight per edge shared by both heads
    "per_edge_head": ((3, 4), (3,)),   # one weight per edge and head
}


def _inputs(graph, weighting, dtype, device, requires_grad=False):
    feature_shape, weight_shape = WEIGHTINGS[weighting]
    x = torch.randn((graph.num_cols,) + feature_shape, dtype=dtype).to(device)
    w = None if weight_shape is None else torch.rand((graph.num_edges,) + weight_shape).to(dtype).to(device)
    x.requires_grad_(requires_grad)
    if w is not None:
        w.requires_grad_(requires_grad)
    return x, w


def _reference_with_grads(graph, x, w, reduce, grad):
    x64 = x.detach().double().requires_grad_()
    w64 = None if w is None else w.detach().double().requires_grad_()
    out = reference.spmm(graph.rowptr, graph.col, x64, reduce, w64)
    out.backward(grad.double())
    return out, x64.grad, None if w is None else w64.grad


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("index_dtype", (torch.int32, torch.int64), ids=str)
@pytest.mark.parametrize("features", (1, 130))
def test_spmm_index_dtypes_and_wide_features(backend_device, index_dtype, features):
    backend, device = backend_device
    graph = make_graph("hub", index_dtype).to(device)
    assert graph.col.dtype == index_dtype
    x = torch.randn(graph.num_cols, features, device=device)
    out = scangraph.spmm(graph, x, "mean", backend=backend)
    cpu = graph.to("cpu")
    assert_close(out.cpu(), reference.spmm(cpu.rowptr, cpu.col, x.cpu().double(), "mean"), torch.float32)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_spmm_strided_inputs(backend_device):
    backend, device = backend_device
    graph = make_graph("random").to(device)
    base = torch.randn(graph.num_cols, 3, 16, device=device)
    cases = {
        "feature_stride_2": base[:, 0, ::2],
        "head_major": base.transpose(1, 2).contiguous().transpose(1, 2),  # (N, 3, 16), strides (48, 1, 3)
        "row_broadcast": torch.randn(1, 8, device=device).expand(graph.num_cols, 8),
    }
    for name, x in cases.items():
        out = scangraph.spmm(graph, x, "sum", backend=backend)
        cpu = graph.to("cpu")
        ref = reference.spmm(cpu.rowptr, cpu.col, x.cpu().double(), "sum")
        assert_close(out.cpu(), ref, torch.float32)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_gradcheck(backend_device):
    backend, device = backend_device
    graph = make_graph("tiny").to(device)
    x = torch.randn(graph.num_cols, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.rand(graph.num_edges, 2, dtype=torch.float64, device=device, requires_grad=True)
    w1 = torch.rand(graph.num_edges, dtype=torch.float64, device=device, requires_grad=True)
    a = torch.randn(graph.num_rows, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    fast = emulated(backend, device)
    for reduce in ("sum", "mean", "max", "min"):
        for weight in (w, w1):
            assert torch.autograd.gradcheck(
                lambda x, w: scangraph.spmm(graph, x, reduce, w, backend=backend), (x, weight),
                fast_mode=fast)
    assert torch.autograd.gradcheck(lambda a, b: scangraph.sddmm(graph, a, b, backend=backend), (a, x),
                                    fast_mode=fast)


def test_compile_fullgraph_cpu():
    graph = make_graph("karate")
    x = torch.randn(graph.num_cols, 16, requires_grad=True)
    w = torch.rand(graph.num_edges, requires_grad=True)

    def layer(x, w):
        h = scangraph.spmm(graph, x, "mean", w, backend="cpp")
        return torch.relu(h) + scangraph.sddmm(graph, h, x, backend="cpp").sum()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x, w)
    out.sum().backward()
    dx, dw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    layer(x, w).sum().backward()
    torch.testing.assert_close(out, layer(x, w))
    torch.testing.assert_close(dx, x.grad)
    torch.testing.assert_close(dw, w.grad)


def test_compile_fullgraph_gat_cpu():
    graph = make_graph("karate")
    x = torch.randn(graph.num_cols, 2, 8, requires_grad=True)
    a_src = torch.randn(graph.num_cols, 2, requires_grad=True)
    a_dst = torch.randn(graph.num_rows, 2, requires_grad=True)

    def layer(x, a_src, a_dst):
        return scangraph.gat_aggregate(graph, x, a_src, a_dst, backend="cpp").relu()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(x, a_src, a_dst).sum().backward()
    grads = [t.grad.clone() for t in (x, a_src, a_dst)]
    for t in (x, a_src, a_dst):
        t.grad = None
    layer(x, a_src, a_dst).sum().backward()
    for mine, eager in zip(grads, (x.grad, a_src.grad, a_dst.grad)):
        torch.testing.assert_close(mine, eager)


def test_compile_inductor_cpu():
    graph = make_graph("hub")
    x = torch.randn(graph.num_cols, 8)
    compiled = torch.compile(lambda x: scangraph.spmm(graph, x * 2, "sum", backend="cpp") + 1,
                             fullgraph=True)
    torch.testing.assert_close(compiled(x), scangraph.spmm(graph, x * 2, "sum") + 1)


@pytest.mark.parametrize("name", ("karate", "polbooks", "football", "power", "as-22july06"))
def test_real_graphs_cpp(name):
    edge_index, num_nodes = scangraph.datasets.load_graph(real_graph_path(name))
    graph = CSRGraph.from_edge_index(edge_index, num_nodes)
    x = torch.randn(num_nodes, 24, dtype=torch.float64, requires_grad=True)
    out = scangraph.spmm(graph, x, "mean", backend="cpp")
    grad = torch.randn_like(out)
    out.backward(grad)
    ref, ref_dx, _ = _reference_with_grads(graph, x, None, "mean", grad)
    assert_close(out, ref)
    assert_close(x.grad, ref_dx)


@pytest.mark.parametrize("name", ("polbooks", "football"))
def test_real_graphs_triton(name):
    if not scangraph.backend.triton_unavailable_reason(torch.device("cpu")) is None:
        pytest.skip("Triton interpreter unavailable")
    edge_index, num_nodes = scangraph.datasets.load_graph(real_graph_path(name))
    graph = CSRGraph.from_edge_index(edge_index, num_nodes)
    x = torch.randn(num_nodes, 24, dtype=torch.float64)
    out = scangraph.spmm(graph, x, "sum", backend="triton")
    assert_close(out, reference.spmm(graph.rowptr, graph.col, x, "sum"))


# ---- skewed rows: long rows split into segments (CUDA, Triton) ------------------------------
# Split threshold of the CUDA kernels (kSpmmSplitEdges in sparse_params.h, a compile-time
# constant); Triton's SPLIT_EDGES is lowered to SMALL_SPLIT so the interpreter stays fast.
CUDA_SPLIT_EDGES = 256
SMALL_SPLIT = 16


def _skewed_graph(split):
    """A star plus a broadcaster: row 0 receives from every node and node 1 sends to every node
    (so the transpose, which the backward runs on, has a long row too), both ~5x the split
    threshold; rows 2 and 3 hold exactly split and split + 1 edges; random edges around them."""
    n = 5 * split + 3
    nodes = torch.arange(n)
    src = torch.cat([nodes, torch.full((n,), 1), nodes[:split], nodes[:split + 1], torch.randint(0, n, (n,))])
    dst = torch.cat([torch.zeros(n, dtype=torch.int64), nodes, torch.full((split,), 2),
                     torch.full((split + 1,), 3), torch.randint(0, n, (n,))])
    built = CSRGraph.from_edge_index(torch.stack([src, dst]), n)
    return CSRGraph(built.rowptr, built.col, num_cols=n, validate=False)  # weights in CSR order


def _runs_to_compare(backend, device):
    """Runs compared bit for bit: one in the Triton interpreter, which executes a launch's programs
    one after another, so a second run there could only repeat the first (on a GPU: two)."""
    return 1 if backend == "triton" and device == "cpu" else 2


def _repeated_runs(call, inputs, grad, backend, device):
    """[output, gradients of inputs] of `call()` backpropagating grad, after checking that every
    run _runs_to_compare asks for gives the same bits."""
    runs = []
    for _ in range(_runs_to_compare(backend, device)):
        for t in inputs:
            t.grad = None
        out = call()
        out.backward(grad)
        runs.append([out.detach().clone()] + [t.grad.clone() for t in inputs])
    for later in runs[1:]:
        for first, second in zip(runs[0], later):
            assert torch.equal(first, second)
    return runs[0]


def _split_threshold(backend, monkeypatch):
    if backend == "triton":
        from scangraph.triton_kernels import sparse as triton_sparse
        monkeypatch.setattr(triton_sparse, "SPLIT_EDGES", SMALL_SPLIT)
        return SMALL_SPLIT
    return CUDA_SPLIT_EDGES if backend == "cuda" else SMALL_SPLIT  # cpp balances on its own


def test_long_row_plan():
    """Segments cover exactly the edges of the rows longer than the threshold, in order, at
    most `split` edges each, within the bound that sizes the launch."""
    pytest.importorskip("triton")
    from scangraph.triton_kernels.sparse import long_row_plan
    degrees = torch.tensor([0, 16, 17, 32, 33, 83, 5, 1])
    rowptr = torch.cat([torch.zeros(1, dtype=torch.int64), degrees.cumsum(0)])
    segment_ptr, segment_row, max_segments = long_row_plan(rowptr, int(rowptr[-1]), 16)
    assert segment_ptr.tolist() == [0, 0, 0, 2, 4, 7, 13, 13, 13]
    assert max_segments >= 13 and segment_row.shape == (max_segments,)
    assert segment_row[:13].tolist() == [2, 2, 3, 3, 4, 4, 4] + [5] * 6
    for row in (2, 3, 4, 5):
        starts = [int(rowptr[row]) + (s - int(segment_ptr[row])) * 16
                  for s in range(int(segment_ptr[row]), int(segment_ptr[row + 1]))]
        ends = [min(start + 16, int(rowptr[row + 1])) for start in starts]
        assert starts[0] == rowptr[row] and ends[-1] == rowptr[row + 1] and starts[1:] == ends[:-1]
    assert long_row_plan(rowptr[:3], 16, 16) is None  # no row can exceed 16 edges
    tight = torch.arange(6) * 17  # five rows of 17 edges: 2 segments each, the bound's worst case
    segment_ptr, _, max_segments = long_row_plan(tight, 85, 16)
    assert int(segment_ptr[-1]) == max_segments == 10


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("reduce", ("sum", "mean", "max", "min"))
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_spmm_splits_long_rows(backend_device, dtype, reduce, weighting, monkeypatch):
    """Hub rows several times the split threshold, forward and backward (whose dx runs spmm on
    the transpose, split as well for sum / mean) against float64, and bitwise equal on a second
    run; for max / min the combined segments must pick the very edge a single pass picks (dx
    and dweight follow the chosen edge)."""
    backend, device = backend_device
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the interpreter runs float32 here: bfloat16 on split rows is the op samples' core hub cases")
    graph = _skewed_graph(_split_threshold(backend, monkeypatch)).to(device)
    x, w = _inputs(graph, weighting, dtype, device, requires_grad=True)
    grad = None
    runs = []
    for _ in range(_runs_to_compare(backend, device)):
        x.grad = None
        if w is not None:
            w.grad = None
        out = scangraph.spmm(graph, x, reduce, w, backend=backend)
        grad = torch.randn_like(out) if grad is None else grad
        out.backward(grad)
        runs.append([out.detach().clone(), x.grad.clone()] + ([] if w is None else [w.grad.clone()]))
    for later in runs[1:]:
        for first, second in zip(runs[0], later):
            assert torch.equal(first, second)
    ref, ref_dx, ref_dw = _reference_with_grads(graph.to("cpu"), x.cpu(), None if w is None else w.cpu(),
                                                reduce, grad.cpu())
    assert_close(runs[0][0].cpu(), ref, dtype)
    assert_close(runs[0][1].cpu(), ref_dx, dtype)
    if w is not None:
        assert_close(runs[0][2].cpu(), ref_dw, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_cpu_max_backward_paths_agree_bitwise(dtype, weighting):
    """The CPU dx of max / min scatters by feature slices when there are enough of them for the
    threads (and F <= 128), and walks the transpose otherwise (many threads, few features): both
    sum each (source, feature) in increasing destination order, so they agree bit for bit."""
    graph = _skewed_graph(SMALL_SPLIT)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 256):  # 256 threads outnumber every feature slice here: the transpose walk
            torch.set_num_threads(count)
            torch.manual_seed(3)
            x, w = _inputs(graph, weighting, dtype, "cpu", requires_grad=True)
            for reduce in ("max", "min"):
                out = scangraph.spmm(graph, x, reduce, w, backend="cpp")
                grads = torch.autograd.grad(out, [x] + ([] if w is None else [w]), torch.randn_like(out))
                runs.append([t.clone() for t in grads])
    finally:
        torch.set_num_threads(threads)
    half = len(runs) // 2
    for first, second in zip(runs[:half], runs[half:]):
        assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_sddmm_on_skewed_rows(backend_device, monkeypatch):
    """sddmm's edge-parallel kernels (a block of consecutive edges per program, rows found by
    binary search) on hub rows, empty rows and rows of one edge, multi-head."""
    backend, device = backend_device
    graph = _skewed_graph(_split_threshold(backend, monkeypatch))
    n = graph.num_cols
    # Empty rows in front, between and at the end: rows of zero edges around the hubs.
    edge_index = graph.to_edge_index()
    graph = CSRGraph.from_edge_index(edge_index * 2 + 1, 2 * n + 3).to(device)
    a = torch.randn(2 * n + 3, 3, 5, dtype=torch.float64, device=device)
    b = torch.randn(2 * n + 3, 3, 5, dtype=torch.float64, device=device)
    out = scangraph.sddmm(graph, a, b, backend=backend)
    assert_close(out.cpu(), reference.sddmm(graph.rowptr.cpu(), graph.col.cpu(), a.cpu(), b.cpu()), torch.float64)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("name", ("as-22july06", "email-Enron"))
def test_real_skewed_graphs_cuda(backend, name):
    """Real graphs whose hub rows hold 1-2k edges (past the 256-edge split threshold) on the
    GPU: mean fwd + bwd with edge weights against float64, bitwise equal across runs."""
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    try:
        scangraph.backend.resolve("spmm", backend, torch.device("cuda"))
    except scangraph.BackendUnavailable as error:
        pytest.skip(str(error))
    edge_index, num_nodes = scangraph.datasets.load_graph(real_graph_path(name))
    graph = CSRGraph.from_edge_index(edge_index, num_nodes).to("cuda")
    x = torch.randn(num_nodes, 64, device="cuda", requires_grad=True)
    w = torch.rand(graph.num_edges, device="cuda", requires_grad=True)
    grad = torch.randn(num_nodes, 64, device="cuda")
    runs = []
    for _ in range(2):
        x.grad = w.grad = None
        out = scangraph.spmm(graph, x, "mean", w, backend=backend)
        out.backward(grad)
        runs.append((out.detach().clone(), x.grad.clone(), w.grad.clone()))
    for first, second in zip(*runs):
        assert torch.equal(first, second)
    ref, ref_dx, ref_dw = _reference_with_grads(graph.to("cpu"), x.cpu(), w.cpu(), "mean", grad.cpu())
    assert_close(runs[0][0].cpu(), ref, torch.float32)
    assert_close(runs[0][1].cpu(), ref_dx, torch.float32)
    assert_close(runs[0][2].cpu(), ref_dw, torch.float32)


def test_matches_torch_sparse_and_scatter():
    """Second oracles: torch.sparse.mm and PyG's index_select + scatter_add formulation."""
    graph = make_graph("random")
    x = torch.randn(graph.num_cols, 12, dtype=torch.float64)
    w = torch.rand(graph.num_edges, dtype=torch.float64)
    matrix = torch.sparse_csr_tensor(graph.rowptr, graph.col, w, (graph.num_rows, graph.num_cols))
    assert_close(scangraph.spmm(graph, x, "sum", w), torch.sparse.mm(matrix, x))
    src, dst = graph.to_edge_index()
    scattered = torch.zeros(graph.num_rows, 12, dtype=torch.float64).index_add_(
        0, dst, x.index_select(0, src) * w[:, None])
    assert_close(scangraph.spmm(graph, x, "sum", w), scattered)


# ---- bad input: a clear Python exception, never a crash or garbage -------------------------
def _bad_spmm_calls():
    graph = make_graph("random")
    x = torch.randn(graph.num_cols, 4)
    return {
        "x wrong rows": (lambda: scangraph.spmm(graph, x[:-1]), ValueError, "must have 40 rows"),
        "x integer": (lambda: scangraph.spmm(graph, x.long()), TypeError, "float64, float32"),
        "x 1-D": (lambda: scangraph.spmm(graph, x[:, 0]), ValueError, "(nodes, features)"),
        "x on another device": (lambda: scangraph.spmm(graph, x.to("meta")), ValueError, "on meta"),
        "weight wrong shape": (lambda: scangraph.spmm(graph, x, "sum", torch.rand(3)), ValueError,
                               "edge_weight must be"),
        "weight wrong dtype": (lambda: scangraph.spmm(graph, x, "sum", torch.rand(graph.num_edges).double()),
                               ValueError, "match x in dtype"),
        "unknown reduce": (lambda: scangraph.spmm(graph, x, "prod"), ValueError, "reduce must be .sum., .mean., .max. or .min."),
        "not a graph": (lambda: scangraph.spmm(graph.rowptr, x), TypeError, "CSRGraph"),
        "sddmm trailing shapes": (lambda: scangraph.sddmm(graph, x, x[:, :3]), ValueError, "trailing shape"),
        "unknown backend": (lambda: scangraph.spmm(graph, x, backend="numba"), ValueError, "backend must be"),
        "cuda backend on cpu": (lambda: scangraph.spmm(graph, x, backend="cuda"),
                                scangraph.BackendUnavailable, "CUDA tensors"),
    }


@pytest.mark.parametrize("case", list(_bad_spmm_calls()))
def test_bad_input_raises_clearly(case):
    call, error, message = _bad_spmm_calls()[case]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("reduce", ("max", "min"))
def test_extreme_ties_go_to_the_lowest_column(backend_device, reduce):
    """Duplicate edges and equal features tie: the first edge in CSR order wins and alone
    receives the gradient; empty rows give 0 and arg -1."""
    backend, device = backend_device
    edge_index = torch.tensor([[2, 1, 1, 0], [0, 0, 0, 1]])  # row 0: sources 1, 1, 2; row 1: 0; row 2: none
    graph = CSRGraph.from_edge_index(edge_index, 3).to(device)
    x = torch.tensor([[5.0, 0.0], [3.0, 3.0], [3.0, -1.0]], device=device, requires_grad=True)
    out = scangraph.spmm(graph, x, reduce, backend=backend)
    expected = [[3.0, 3.0], [5.0, 0.0], [0.0, 0.0]] if reduce == "max" else [[3.0, -1.0], [5.0, 0.0], [0.0, 0.0]]
    assert out.tolist() == expected
    out.backward(torch.ones_like(out))
    # Column 0 of row 0 ties between sources 1 (twice) and 2: the first edge (source 1) wins.
    expected_grad = ([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]] if reduce == "max"
                     else [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert x.grad.tolist() == expected_grad
    suffix = "_triton" if backend == "triton" else ""
    arg = getattr(torch.ops.scangraph, "spmm_arg" + suffix)(graph.rowptr, graph.col, None, x.detach(), reduce)[1]
    assert arg[2].tolist() == [-1, -1] and arg[0, 0].item() == 0


def test_cpp_op_validates_indices_itself():
    """Direct op calls bypass CSRGraph's validation; the CPU kernel checks values itself."""
    rowptr = torch.tensor([0, 2, 3])
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="out of range for 4 source nodes"):
        torch.ops.scangraph.spmm(rowptr, torch.tensor([0, 9, 1]), None, x, "sum")
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch.ops.scangraph.spmm(torch.tensor([0, 3, 2, 3]), torch.tensor([0, 1, 1]), None, x, "sum")
    with pytest.raises(RuntimeError, match=r"rowptr\[-1\] must equal"):
        torch.ops.scangraph.spmm(torch.tensor([0, 2, 5]), torch.tensor([0, 1, 1]), None, x, "sum")
    with pytest.raises(RuntimeError, match="int32 or int64"):
        torch.ops.scangraph.spmm(rowptr, torch.tensor([0.0, 1.0, 1.0]), None, x, "sum")


# ---- GAT aggregation ---------------------------------------------------------------------------
def _gat_inputs(graph, heads, features, dtype, device):
    shape = (heads, features) if heads else (features,)
    x = torch.randn((graph.num_cols,) + shape, dtype=dtype).to(device).requires_grad_()
    # Logits spread over +-6 so the softmax is far from uniform and the leaky slope matters.
    a_src = (3 * torch.randn((graph.num_cols,) + shape[:-1], dtype=dtype)).to(device).requires_grad_()
    a_dst = (3 * torch.randn((graph.num_rows,) + shape[:-1], dtype=dtype)).to(device).requires_grad_()
    return x, a_src, a_dst


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_gat_aggregate_splits_long_rows(backend_device, dtype, monkeypatch):
    """Hub rows several times the split threshold: the segments' softmax sums, brought to the
    row's max in order, give the reference forward and the backward (which recomputes the
    probabilities from the combined max and denominator); bitwise equal on a second run."""
    backend, device = backend_device
    graph = _skewed_graph(_split_threshold(backend, monkeypatch)).to(device)
    x, a_src, a_dst = _gat_inputs(graph, 2, 7, dtype, device)
    grad = torch.randn(graph.num_rows, 2, 7, dtype=dtype).to(device)
    first = _repeated_runs(lambda: scangraph.gat_aggregate(graph, x, a_src, a_dst, 0.2, backend=backend),
                           (x, a_src, a_dst), grad, backend, device)
    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in (x, a_src, a_dst)]
    cpu = graph.to("cpu")
    ref = reference.gat_aggregate(cpu.rowptr, cpu.col, *ref_inputs, 0.2)
    ref.backward(grad.cpu().double())
    assert_close(first[0].cpu(), ref, dtype)
    assert_close(first[1].cpu(), ref_inputs[0].grad, dtype)
    cancel = 1.0 if dtype == torch.float32 else 4.0 * max(1.0, float(x.detach().abs().max()))
    for mine, theirs in zip(first[2:], ref_inputs[1:]):
        assert_close(mine.cpu(), theirs.grad, dtype, scale=cancel)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_gat_aggregate_masks_minus_inf_logits(backend_device, monkeypatch):
    """alpha_src = -inf on every third source gives its edges weight 0 (a mask), also where a
    row, or a segment of a split row, starts with such an edge; rows with a finite score match
    the reference, rows with none give 0 (the reference's softmax gives NaN there)."""
    backend, device = backend_device
    graph = _skewed_graph(_split_threshold(backend, monkeypatch)).to(device)
    x, a_src, a_dst = (t.detach() for t in _gat_inputs(graph, 2, 5, torch.float64, device))
    a_src[::3] = float("-inf")
    out = scangraph.gat_aggregate(graph, x, a_src, a_dst, 0.2, backend=backend).cpu()
    cpu = graph.to("cpu")
    ref = reference.gat_aggregate(cpu.rowptr, cpu.col, x.cpu(), a_src.cpu(), a_dst.cpu(), 0.2)
    finite = torch.isfinite(ref).all(dim=-1)
    assert finite.any()
    assert_close(out[finite], ref[finite], torch.float64)
    assert torch.equal(out[~finite], torch.zeros_like(out[~finite]))


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_gat_aggregate_gradcheck_and_determinism(backend_device):
    backend, device = backend_device
    graph = make_graph("tiny").to(device)
    x, a_src, a_dst = _gat_inputs(graph, 2, 3, torch.float64, device)
    fast = emulated(backend, device)
    assert torch.autograd.gradcheck(
        lambda x, s, d: scangraph.gat_aggregate(graph, x, s, d, 0.1, backend=backend), (x, a_src, a_dst),
        fast_mode=fast)
    grads = []
    for _ in range(2):
        for t in (x, a_src, a_dst):
            t.grad = None
        scangraph.gat_aggregate(graph, x, a_src, a_dst, backend=backend).square().sum().backward()
        grads.append([t.grad.clone() for t in (x, a_src, a_dst)])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_gat_aggregate_is_stable_for_large_logits(backend_device):
    backend, device = backend_device
    graph = make_graph("hub").to(device)
    x, a_src, a_dst = (t.detach() for t in _gat_inputs(graph, 2, 5, torch.float32, device))
    out = scangraph.gat_aggregate(graph, x, a_src * 1e4, a_dst * 1e4, backend=backend)
    assert torch.isfinite(out).all()
    cpu = graph.to("cpu")
    ref = reference.gat_aggregate(cpu.rowptr, cpu.col, x.cpu().double(), a_src.cpu().double() * 1e4,
                                  a_dst.cpu().double() * 1e4)
    assert_close(out.cpu(), ref, torch.float32)


def test_gat_bad_input():
    graph = make_graph("random")
    x = torch.randn(graph.num_cols, 2, 4)
    a = torch.randn(graph.num_cols, 2)
    with pytest.raises(ValueError, match=r"alpha_src must have shape \(40, 2\)"):
        scangraph.gat_aggregate(graph, x, a[:, :1], a)
    with pytest.raises(ValueError, match="alpha_dst must match x in dtype"):
        scangraph.gat_aggregate(graph, x, a, a.double())


# ---- common neighbours -------------------------------------------------------------------------
def test_common_neighbors_lists_each_intersection_in_order():
    # 0: {1, 2, 3}, 1: {0, 2}, 2: {0, 1, 3}, 3: {0, 2}
    edges = torch.tensor([[1, 2, 3, 0, 2, 0, 1, 3, 0, 2], [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]])
    graph = CSRGraph.from_edge_index(edges, 4)
    src, dst = torch.tensor([0, 1, 3, 2]), torch.tensor([2, 3, 3, 2])
    for op in ("common_neighbors", "common_neighbors_triton"):
        if op.endswith("triton") and scangraph.backend.triton_unavailable_reason(torch.device("cpu")):
            continue
        ptr, neighbors = getattr(torch.ops.scangraph, op)(graph.rowptr, graph.col, src, dst)
        assert ptr.tolist() == [0, 2, 4, 6, 9]
        assert neighbors.tolist() == [1, 3, 0, 2, 0, 2, 0, 1, 3]


def test_common_neighbor_bad_input():
    graph = make_graph("random")
    x = torch.randn(graph.num_rows, 3)
    pairs = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="outside"):
        scangraph.common_neighbor_aggregate(graph, x, pairs, torch.tensor([0, 99]))
    with pytest.raises(ValueError, match="one length"):
        scangraph.common_neighbor_aggregate(graph, x, pairs, torch.tensor([0]))
    with pytest.raises(ValueError, match="1-D int64"):
        scangraph.common_neighbor_aggregate(graph, x, pairs.int(), pairs)
    unsorted = CSRGraph(torch.tensor([0, 2, 2]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="ascend within each row"):
        scangraph.common_neighbor_aggregate(unsorted, torch.randn(2, 3), pairs, pairs)
    with pytest.raises(ValueError, match="square"):
        scangraph.common_neighbor_aggregate(make_graph("bipartite"), torch.randn(25, 3), pairs, pairs)


# ---- per-edge tensors follow the caller's edge order ------------------------------------------
def _shuffled_edges(num_nodes=30, num_edges=150):
    """An edge list in no particular order (duplicates and self loops included)."""
    return torch.randint(0, num_nodes, (2, num_edges)), num_nodes


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("reduce", ("sum", "mean", "max", "min"))
def test_edge_weight_follows_the_edge_list(backend_device, reduce):
    """Built from a shuffled edge_index, the graph takes edge_weight[e] for edge e of that list
    (PyG's and DGL's convention), for spmm and its edge-weight gradient: against a reference
    written directly on the edge list."""
    backend, device = backend_device
    edge_index, n = _shuffled_edges()
    graph = CSRGraph.from_edge_index(edge_index, n).to(device)
    x = torch.randn(n, 7, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.rand(edge_index.shape[1], dtype=torch.float64, device=device, requires_grad=True)
    out = scangraph.spmm(graph, x, reduce, w, backend=backend)
    grad = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, (x, w), grad)
    x64, w64 = x.detach().cpu().requires_grad_(), w.detach().cpu().requires_grad_()
    src, dst = edge_index
    messages = x64[src] * w64[:, None]
    if reduce in ("sum", "mean"):
        want = torch.zeros(n, 7, dtype=torch.float64).index_add(0, dst, messages)
        if reduce == "mean":
            want = want / torch.bincount(dst, minlength=n).clamp(min=1)[:, None]
    else:  # ties cannot happen with random doubles
        fill = float("-inf") if reduce == "max" else float("inf")
        want = torch.full((n, 7), fill, dtype=torch.float64).scatter_reduce(
            0, dst[:, None].expand(-1, 7), messages, "amax" if reduce == "max" else "amin")
        want = torch.where(torch.isinf(want), torch.zeros_like(want), want)
    want_dx, want_dw = torch.autograd.grad(want, (x64, w64), grad.cpu())
    torch.testing.assert_close(out.cpu(), want.detach())
    torch.testing.assert_close(dx.cpu(), want_dx)
    torch.testing.assert_close(dw.cpu(), want_dw)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_sddmm_output_follows_the_edge_list(backend_device):
    backend, device = backend_device
    edge_index, n = _shuffled_edges()
    graph = CSRGraph.from_edge_index(edge_index, n).to(device)
    a = torch.randn(n, 2, 5, dtype=torch.float64, device=device)
    b = torch.randn(n, 2, 5, dtype=torch.float64, device=device)
    out = scangraph.sddmm(graph, a, b, backend=backend)
    src, dst = edge_index
    torch.testing.assert_close(out.cpu(), (a.cpu()[dst] * b.cpu()[src]).sum(-1))


def test_qspmm_edge_weight_follows_the_edge_list():
    edge_index, n = _shuffled_edges()
    graph = CSRGraph.from_edge_index(edge_index, n)
    xq = scangraph.quantize(torch.randn(n, 6), 8, 0)
    w = torch.rand(edge_index.shape[1])
    src, dst = edge_index
    want = torch.zeros(n, 6).index_add(0, dst, xq.dequantize()[src] * w[:, None])
    torch.testing.assert_close(scangraph.qspmm(graph, xq, "sum", w), want, atol=1e-5, rtol=1e-5)


def test_gcn_conv_takes_edge_weight_in_edge_index_order():
    """A layer's explicit edge_weight follows its edge_index, for an edge_index and for the
    CSRGraph built from it alike."""
    from scangraph import nn as sgnn
    edge_index, n = _shuffled_edges()
    conv = sgnn.GCNConv(5, 3)
    x, w = torch.randn(n, 5), torch.rand(edge_index.shape[1])
    by_edges = conv(x, edge_index, w)
    by_graph = conv(x, CSRGraph.from_edge_index(edge_index, n), w)
    torch.testing.assert_close(by_edges, by_graph)
    try:
        from torch_geometric.nn import GCNConv
    except ImportError:
        return
    pyg = GCNConv(5, 3)
    pyg.lin.weight.data.copy_(conv.lin.weight.data)
    pyg.bias.data.copy_(conv.bias.data)
    torch.testing.assert_close(by_edges, pyg(x, edge_index, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("reduce", ("max", "min"))
def test_spmm_returns_the_winning_edge_as_torch_scatter(backend_device, reduce):
    """return_arg: the winner's position in the caller's edge list (scatter_max's arg of the
    messages x[src] * w), num_edges for empty rows; per head and feature."""
    backend, device = backend_device
    edge_index, n = _shuffled_edges()
    edge_index = edge_index[:, edge_index[1] != 3]  # row 3 stays empty
    num_edges = edge_index.shape[1]
    graph = CSRGraph.from_edge_index(edge_index, n).to(device)
    x = torch.randn(n, 2, 4, dtype=torch.float64, device=device)
    w = torch.rand(num_edges, dtype=torch.float64, device=device)
    out, arg = scangraph.spmm(graph, x, reduce, w, return_arg=True, backend=backend)
    assert arg.dtype == torch.int64 and arg.shape == out.shape
    src, dst = edge_index
    messages = x.cpu()[src] * w.cpu()[:, None, None]
    arg, out = arg.cpu(), out.cpu()
    assert bool((arg[3] == num_edges).all()) and bool((out[3] == 0).all())
    has_edges = torch.bincount(dst, minlength=n) > 0
    winners = arg[has_edges]
    assert bool((dst[winners] == torch.arange(n)[has_edges][:, None, None]).all())  # an edge of its row
    torch.testing.assert_close(messages.gather(0, winners.clamp(max=num_edges - 1)), out[has_edges])
    fill = float("-inf") if reduce == "max" else float("inf")
    want = torch.full((n, 2, 4), fill, dtype=torch.float64).scatter_reduce(
        0, dst[:, None, None].expand(-1, 2, 4), messages, "amax" if reduce == "max" else "amin")
    torch.testing.assert_close(out[has_edges], want[has_edges])
    with pytest.raises(ValueError, match="return_arg"):
        scangraph.spmm(graph, x, "sum", return_arg=True, backend=backend)


def test_gcn_conv_float64_matches_pyg():
    """The cached normalisation is computed in fp64 and rounded once to x's dtype, so a float64
    layer matches PyG's float64 layer to float64 precision."""
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    from scangraph import nn as sgnn
    edge_index, n = _shuffled_edges()
    conv = sgnn.GCNConv(5, 3).double()
    pyg = pyg_nn.GCNConv(5, 3).double()
    pyg.lin.weight.data.copy_(conv.lin.weight.data)
    pyg.bias.data.copy_(torch.randn(3, dtype=torch.float64))
    conv.bias.data.copy_(pyg.bias.data)
    x = torch.randn(n, 5, dtype=torch.float64)
    torch.testing.assert_close(conv(x, edge_index), pyg(x, edge_index), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(conv.float()(x.float(), edge_index), pyg.float()(x.float(), edge_index))
