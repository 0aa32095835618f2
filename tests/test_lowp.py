"""Low-precision family: quantize / int4 packing / QTensor, qlinear (W8A8, W4A8) with its exact
integer accumulator, qspmm, fake_quantize (STE) against reference.py on random and
adversarial values; opcheck, torch.compile, the Triton interpreter, bad input.

The Triton kernels run here in the interpreter (TRITON_INTERPRET=1, tests/conftest.py): int8 x
int8 `tl.dot` with an int32 accumulator works there (torch 2.14.1, triton 3.8), so the
"triton-cpu" parameters check the very kernels a GPU compiles, bit for bit."""
import io

import pytest
import torch

import scangraph
from scangraph import reference
from graphs import make_graph
from conftest import TOLERANCE, backend_params

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def adversarial(rows: int, cols: int, kind: str, dtype=torch.float32) -> torch.Tensor:
    """random | zero_rows (every other row 0) | outlier (one value 3e4 per row, within fp16) | boundary
    (absmax 127 per row, so the scale is 1: integers and exact .5 ties, ties-to-even tested,
    and +-127 at the clamp edge)."""
    x = torch.randn(rows, cols)
    if kind == "zero_rows":
        x[::2] = 0
    elif kind == "outlier":
        x[torch.arange(rows), torch.randint(0, cols, (rows,))] = 3e4
    elif kind == "boundary":
        x = (torch.randint(-254, 255, (rows, cols)) / 2.0).clamp(-126.5, 126.5)
        x[:, 0] = 127.0
        if cols > 1:
            x[:, -1] = -127.0
    return x.to(dtype)


KINDS = ("random", "zero_rows", "outlier", "boundary")
SHAPES = ((1, 1, 1), (1, 33, 7), (5, 77, 19), (37, 130, 65))   # (M, K, N): odd K and N, M = 1


def _isas():
    """The CPU qlinear paths this machine runs (the op raises for the others)."""
    x, w = torch.randn(1, 4), scangraph.quantize(torch.randn(2, 4))
    found = []
    for isa in ("scalar", "avx2", "avx512_vnni", "amx"):
        try:
            torch.ops.scangraph._qlinear_cpu_isa(x, w.data, w.scale, 8, 4, None, "none", torch.int32, isa)
            found.append(isa)
        except RuntimeError:
            pass
    return found


# ---- quantize ------------------------------------------------------------------------------------
def test_quantize_rounds_half_to_even_and_clamps():
    x = torch.tensor([[127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -127.0]])  # absmax 127: scale exactly 1
    q = scangraph.quantize(x, 8, 0, backend="cpp")
    assert q.scale.item() == 1.0
    assert q.data.tolist() == [[127, 2, 4, -2, 0, 0, 2, -127]]
    q4 = scangraph.quantize(torch.tensor([[7.0, 0.5, 1.5, -7.0, 2.5]]), 4, 0, backend="cpp")
    assert q4.int_values().tolist() == [[7, 0, 2, -7, 2]]
    # a zero row: scale 0, q 0, dequantizes to 0
    z = scangraph.quantize(torch.zeros(2, 3), 8, 0)
    assert z.scale.tolist() == [0.0, 0.0] and not z.data.any() and not z.dequantize().any()


def test_int4_pack_unpack_round_trip():
    values = torch.arange(-8, 8, dtype=torch.int8)
    for length in (1, 2, 15, 16, 17):
        q = values[torch.randint(0, 16, (3, length))]
        packed = reference.pack_int4(q)
        assert packed.shape == (3, (length + 1) // 2) and packed.dtype == torch.uint8
        assert torch.equal(reference.unpack_int4(packed, length), q)
    # the layout: element 2i low nibble, 2i + 1 high nibble, two's complement, odd pads 0
    assert reference.pack_int4(torch.tensor([1, -1, -8], dtype=torch.int8)).tolist() == [0xF1, 0x08]


@pytest.mark.parametrize("bits,axis", [(4, 0), (4, 1), (4, None), (8, 1), (8, None)])
def test_qtensor_unpacks_and_dequantizes_as_the_reference(bits, axis):
    """QTensor's own unpacking and scaling against the reference's, on every byte value."""
    shape = (16, 33)
    if bits == 4:
        data = torch.randint(0, 256, (16, 17), dtype=torch.uint8)
        data[:, -1] &= 0x0F  # the padding nibble of an odd length is 0
        values = reference.unpack_int4(data, shape[-1])
    else:
        data = values = torch.randint(-127, 128, shape, dtype=torch.int8)
    scale = torch.rand(() if axis is None else shape[axis]) + 0.1
    q = scangraph.QTensor(data, scale, bits, axis, shape)
    assert torch.equal(q.int_values(), values)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert torch.equal(q.dequantize(dtype), reference.dequantize(values, scale, axis, dtype))


@pytest.mark.parametrize("bits", (8, 4))
def test_dequantize_error_is_at_most_half_a_step(bits):
    x = torch.randn(20, 33)
    q = scangraph.quantize(x, bits, 0)
    err = (q.dequantize() - x).abs()
    assert (err <= q.scale[:, None] / 2 * (1 + 1e-5) + 1e-7).all()


def test_qtensor_torch_save_load_round_trip():
    q = scangraph.quantize(torch.randn(5, 9), 4, 0)
    for weights_only in (False, True):
        buffer = io.BytesIO()
        torch.save({"w": q}, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=weights_only)["w"]
        assert isinstance(loaded, scangraph.QTensor)
        assert (loaded.bits, loaded.axis, loaded.shape) == (4, 0, (5, 9))
        assert torch.equal(loaded.data, q.data) and torch.equal(loaded.scale, q.scale)
        assert torch.equal(loaded.dequantize(), q.dequantize())


# ---- qlinear ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("bits", (8, 4))
@pytest.mark.parametrize("kind", KINDS)
def test_qlinear_integer_accumulator_is_exact(backend_device, bits, kind):
    backend, device = backend_device
    for M, K, N in SHAPES:
        x = adversarial(M, K, kind).to(device)
        w = scangraph.quantize(adversarial(N, K, kind), bits, 0).to(device)
        qx, _ = reference.quantize(x.cpu(), 8, 0)
        want = reference.qlinear_accumulator(qx, w.int_values().cpu()).to(torch.int32)
        got = scangraph.qlinear(x, w, out_dtype=torch.int32, backend=backend)
        assert got.dtype == torch.int32 and torch.equal(got.cpu(), want), (M, K, N)


@pytest.mark.parametrize("bits", (8, 4))
def test_every_cpu_path_gives_the_same_integers(bits):
    isas = _isas()
    assert "scalar" in isas
    for M, K, N in SHAPES + ((9, 300, 70),):
        x = adversarial(M, K, "boundary")
        w = scangraph.quantize(adversarial(N, K, "boundary"), bits, 0)
        want = reference.qlinear_accumulator(reference.quantize(x, 8, 0)[0], w.int_values()).to(torch.int32)
        for isa in isas:
            got = torch.ops.scangraph._qlinear_cpu_isa(x, w.data, w.scale, bits, K, None, "none", torch.int32, isa)
            assert torch.equal(got, want), (isa, M, K, N)


def test_accumulator_at_the_clamp_boundary():
    """Every product 127 * 127 (and -127 * 127): the int16 pair sums of vpmaddubsw are at their
    largest (32258) and the int32 sums reach K * 16129."""
    K = 1000
    x = torch.full((3, K), 127.0)
    x[1] = -127.0
    x[2, ::2] = -127.0
    w = scangraph.quantize(torch.full((5, K), 127.0), 8, 0)
    want = reference.qlinear_accumulator(reference.quantize(x, 8, 0)[0], w.data).to(torch.int32)
    assert want[0, 0] == K * 127 * 127
    for isa in _isas():
        got = torch.ops.scangraph._qlinear_cpu_isa(x, w.data, w.scale, 8, K, None, "none", torch.int32, isa)
        assert torch.equal(got, want), isa


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("bits", (8, 4))
@pytest.mark.parametrize("activation", (None, "relu", "gelu", "silu"))
def test_qlinear_epilogue_matches_reference(backend_device, bits, activation):
    backend, device = backend_device
    x = adversarial(13, 45, "random").to(device)
    w = scangraph.quantize(torch.randn(21, 45), bits, 0).to(device)
    bias = torch.randn(21, device=device)
    for b in (None, bias):
        for out_dtype in (None, torch.float16, torch.bfloat16):
            got = scangraph.qlinear(x, w, b, activation, out_dtype=out_dtype, backend=backend)
            want = reference.qlinear(x.cpu(), w.int_values().cpu(), w.scale.cpu(), None if b is None else b.cpu(),
                                     activation, out_dtype)
            assert got.dtype == want.dtype == (out_dtype or torch.float32)
            if activation in (None, "relu") and out_dtype is None and device == "cpu":
                # same fp32 operations in the same order: bit for bit (GPU compilers may fuse
                # the epilogue into FMAs: fp32 tolerance there)
                assert torch.equal(got.cpu(), want)
            else:
                atol, rtol = TOLERANCE[out_dtype or torch.float32]
                torch.testing.assert_close(got.cpu().float(), want.float(), atol=max(atol, 1e-6), rtol=rtol)
    # leading dimensions, and per-tensor weight scale
    wt = scangraph.quantize(torch.randn(21, 45), bits, None).to(device)
    got = scangraph.qlinear(x.reshape(13, 1, 45), wt, backend=backend)
    assert got.shape == (13, 1, 21)
    want = reference.qlinear(x.cpu(), wt.int_values().cpu(), wt.scale.expand(21).cpu())
    assert torch.equal(got.reshape(13, 21).cpu(), want)


@pytest.mark.parametrize("bits,tolerance", ((8, 0.03), (4, 0.3)))
def test_qlinear_approximates_the_float_product(bits, tolerance):
    x, w = torch.randn(64, 256), torch.randn(96, 256)
    got = scangraph.qlinear(x, scangraph.quantize(w, bits, 0))
    want = x @ w.t()
    assert ((got - want).norm() / want.norm()).item() < tolerance


# ---- qspmm -----------------------------------------------------------------------------------------
def _qspmm_isas():
    """The CPU qspmm paths this machine runs (the op raises for the others)."""
    graph, xq = make_graph("karate"), scangraph.quantize(torch.randn(34, 4))
    found = []
    for isa in ("scalar", "avx2", "avx512"):
        try:
            torch.ops.scangraph._qspmm_cpu_isa(graph.rowptr, graph.col, None, xq.data, xq.scale, "sum", isa)
            found.append(isa)
        except RuntimeError:
            pass
    return found


@pytest.mark.parametrize("reduce", ("sum", "mean", "max", "min"))
def test_qspmm_every_cpu_isa_matches_reference(reduce):
    """Each row loop the machine has, whatever the default picks: the hub row (300 edges) spans
    several edge blocks of the AVX2 path, and F = 200 leaves a tail after its 64-wide tiles."""
    assert "scalar" in _qspmm_isas()
    graph = make_graph("hub")
    for features in (8, 37, 200):
        xq = scangraph.quantize(torch.randn(graph.num_cols, features), 8, 0)
        for weight in (None, torch.rand(graph.num_edges)):
            want = reference.qspmm(graph.rowptr, graph.col, xq.data, xq.scale, reduce, weight)
            scale = float(xq.scale.max()) * 127
            for isa in _qspmm_isas():
                got = torch.ops.scangraph._qspmm_cpu_isa(graph.rowptr, graph.col, weight, xq.data, xq.scale, reduce, isa)
                torch.testing.assert_close(got.double(), want, atol=1e-5 * scale, rtol=1e-5, msg=isa)


def _row_slice(graph, begin, end):
    """Rows [begin, end) of graph as a graph of their own (same sources)."""
    rowptr = graph.rowptr[begin:end + 1]
    return scangraph.CSRGraph(rowptr - rowptr[0], graph.col[int(rowptr[0]):int(rowptr[-1])], num_cols=graph.num_cols)


def test_large_outputs_stream_bitwise_like_small_ones():
    """Outputs of 16 MiB and more are written with streaming stores into huge-page backed memory:
    the values must be those of the same rows computed into a small (cached, plainly stored) output."""
    rows, features = 16384, 256  # 16 MiB of fp32
    src, dst = torch.randint(0, 4000, (5 * rows,)), torch.randint(0, rows, (5 * rows,))
    built = scangraph.CSRGraph.from_edge_index(torch.stack([src, dst]), rows)
    graph = scangraph.CSRGraph(built.rowptr, built.col, num_cols=rows, validate=False)  # weights in CSR order
    x = torch.randn(rows, features)
    xq = scangraph.quantize(x, 8, 0)
    weight = torch.rand(graph.num_edges)
    for reduce in ("sum", "mean", "min"):
        big = scangraph.qspmm(graph, xq, reduce, weight)
        big_fp32 = scangraph.spmm(graph, x, reduce)
        for begin, end in ((0, 97), (rows - 300, rows)):
            part = _row_slice(graph, begin, end)
            lo = int(graph.rowptr[begin])
            small = scangraph.qspmm(part, xq, reduce, weight[lo:lo + part.num_edges])
            assert torch.equal(big[begin:end], small), reduce
            assert torch.equal(big_fp32[begin:end], scangraph.spmm(part, x, reduce)), reduce
    want = reference.qspmm(graph.rowptr, graph.col, xq.data, xq.scale, "sum", None)
    torch.testing.assert_close(scangraph.qspmm(graph, xq).double(), want,
                               atol=1e-5 * float(xq.scale.max()) * 127, rtol=1e-5)


def test_large_qlinear_outputs_stream_bitwise_like_small_ones():
    """A 16 MiB fp32 qlinear output is streamed from an L1 row: every path gives the rows of a small one."""
    x = adversarial(16384, 40, "boundary")
    w = scangraph.quantize(torch.randn(256, 40), 8, 0)
    bias = torch.randn(256)
    for isa in _isas():
        big = torch.ops.scangraph._qlinear_cpu_isa(x, w.data, w.scale, 8, 40, bias, "relu", None, isa)
        for begin, end in ((0, 33), (16384 - 70, 16384)):
            small = torch.ops.scangraph._qlinear_cpu_isa(x[begin:end], w.data, w.scale, 8, 40, bias, "relu", None, isa)
            assert torch.equal(big[begin:end], small), isa
    want = reference.qlinear(x, w.int_values(), w.scale, bias, "relu")
    assert torch.equal(scangraph.qlinear(x, w, bias, "relu"), want)


def test_qspmm_approximates_float_spmm():
    graph = make_graph("karate")
    x = torch.randn(graph.num_cols, 64)
    got = scangraph.qspmm(graph, scangraph.quantize(x, 8, 0), "mean")
    want = scangraph.spmm(graph, x, "mean")
    assert ((got - want).norm() / want.norm()).item() < 0.01


# ---- fake_quantize ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", (8, 4))
@pytest.mark.parametrize("axis", (0, 1, None))
def test_fake_quantize_forward_and_straight_through_gradient(bits, axis):
    x = adversarial(7, 10, "zero_rows").requires_grad_()
    out = scangraph.fake_quantize(x, bits, axis)
    assert torch.equal(out.detach(), scangraph.quantize(x.detach(), bits, axis).dequantize())
    grad = torch.randn_like(x)
    out.backward(grad)
    assert torch.equal(x.grad, grad)  # dynamic absmax scale: every element inside the range
    want = reference.fake_quantize(x, bits, axis)
    assert torch.equal(want.detach(), out.detach())


def test_fake_quantize_gradient_is_zero_outside_a_given_range():
    x = torch.tensor([[-3.0, -0.5, 0.2, 0.9, 2.0]], requires_grad=True)
    scale = torch.tensor([1.0 / 127])  # range [-1, 1]
    out = scangraph.fake_quantize(x, 8, 0, scale=scale)
    assert out.detach().tolist()[0][0] == pytest.approx(-1.0) and out.detach().tolist()[0][4] == pytest.approx(1.0)
    out.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bits, axis", [(8, 0), (4, 1), (8, None), (4, -1)])
def test_fake_quantize_with_a_given_scale_matches_the_reference(bits, axis, dtype):
    """A calibrated scale (some channels clamp, one is zero): forward and straight-through
    gradient against reference.fake_quantize, on fresh random input."""
    x = (3 * torch.randn(6, 9)).to(dtype).requires_grad_()
    channels = 1 if axis is None else x.shape[axis]
    scale = torch.rand(channels) * 2.0 / reference.quant_max(bits)  # ranges of 0 to 2: 3 sigma clamps
    if channels > 1:
        scale[1] = 0.0
    scale = scale.reshape(()) if axis is None else scale
    grad = torch.randn(6, 9).to(dtype)
    out = scangraph.fake_quantize(x, bits, axis, scale)
    (got_grad,) = torch.autograd.grad(out, x, grad)
    x_ref = x.detach().clone().requires_grad_()
    want = reference.fake_quantize(x_ref, bits, axis, scale)
    (want_grad,) = torch.autograd.grad(want, x_ref, grad)
    assert out.dtype == dtype and torch.equal(out, want)
    assert torch.equal(got_grad, want_grad)
    assert 0 < int((got_grad == 0).sum()) < got_grad.numel()  # some elements clamp, most pass


def test_fake_quantize_under_torch_compile():
    w = torch.randn(8, 12, requires_grad=True)
    x = torch.randn(5, 12)

    def layer(x, w):
        return torch.relu(scangraph.fake_quantize(x, 8, 0) @ scangraph.fake_quantize(w, 4, 0).t())

    for backend in ("aot_eager", "inductor"):
        compiled = torch.compile(layer, fullgraph=True, backend=backend)
        out = compiled(x, w)
        out.sum().backward()
        got_grad = w.grad.clone()
        w.grad = None
        want = layer(x, w)
        want.sum().backward()
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(got_grad, w.grad)
        w.grad = None


# ---- op machinery ----------------------------------------------------------------------------------
def _op_samples(device):
    graph = make_graph("random").to(device)
    x = torch.randn(6, 37, device=device)
    w8 = scangraph.quantize(torch.randn(9, 37), 8, 0).to(device)
    w4 = scangraph.quantize(torch.randn(9, 37), 4, 0).to(device)
    xq = scangraph.quantize(torch.randn(graph.num_cols, 11), 8, 0).to(device)
    bias = torch.randn(9, device=device)
    return [
        ("quantize", (x, 8, 0)),
        ("quantize", (x, 4, None)),
        ("qlinear", (x, w8.data, w8.scale, 8, 37, bias, "gelu", None)),
        ("qlinear", (x, w4.data, w4.scale, 4, 37, None, "none", torch.int32)),
        ("qspmm", (graph.rowptr, graph.col, torch.rand(graph.num_edges, device=device), xq.data, xq.scale, "mean")),
        ("qspmm", (graph.rowptr, graph.col, None, xq.data, xq.scale, "max")),
    ]


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_opcheck(backend_device):
    backend, device = backend_device
    suffix = "_triton" if backend == "triton" else ""
    # As in test_sparse: fake-tensor tracing of Triton ops on CPU tensors runs on the GPU only.
    utils = (("test_schema", "test_autograd_registration") if backend == "triton" and device == "cpu"
             else ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))
    for name, args in _op_samples(device):
        torch.library.opcheck(getattr(torch.ops.scangraph, name + suffix).default, args, test_utils=utils)
    if backend == "cpp":
        x, w = torch.randn(3, 5), scangraph.quantize(torch.randn(4, 5))
        torch.library.opcheck(torch.ops.scangraph._qlinear_cpu_isa.default,
                              (x, w.data, w.scale, 8, 5, None, "relu", None, "scalar"), test_utils=utils)


def test_compile_fullgraph_cpu():
    graph = make_graph("karate")
    w = scangraph.quantize(torch.randn(16, 24), 8, 0)
    w4 = scangraph.quantize(torch.randn(16, 24), 4, 0)

    def layer(x):
        h = scangraph.qlinear(x, w, activation="relu", backend="cpp") + scangraph.qlinear(x, w4, backend="cpp")
        return scangraph.qspmm(graph, scangraph.quantize(h, 8, 0, backend="cpp"), "mean", backend="cpp")

    x = torch.randn(graph.num_cols, 24)
    for backend in ("aot_eager", "inductor"):
        torch.testing.assert_close(torch.compile(layer, fullgraph=True, backend=backend)(x), layer(x))


def test_inference_ops_have_no_gradient():
    x = torch.randn(3, 8, requires_grad=True)
    out = scangraph.qlinear(x, scangraph.quantize(torch.randn(4, 8)))
    with pytest.raises(RuntimeError, match="inference op"):
        out.sum().backward()


@pytest.mark.parametrize("case", [
    ("bits", lambda: scangraph.quantize(torch.randn(3, 4), bits=3), ValueError, "bits must be 8 or 4"),
    ("bits op", lambda: torch.ops.scangraph.quantize(torch.randn(3, 4), 2, 0), ValueError, "bits must be 8 or 4"),
    ("axis", lambda: scangraph.quantize(torch.randn(3, 4), 8, 2), ValueError, "axis"),
    ("int x", lambda: scangraph.quantize(torch.ones(3, 4, dtype=torch.int32)), TypeError, "float32"),
    ("nan", lambda: scangraph.quantize(torch.tensor([[1.0, float("nan")]])), RuntimeError, "NaN or inf"),
    ("nan qlinear", lambda: scangraph.qlinear(torch.tensor([[float("inf"), 1.0]]), scangraph.quantize(torch.ones(2, 2))),
     RuntimeError, "NaN or inf"),
    ("K", lambda: scangraph.qlinear(torch.randn(3, 5), scangraph.quantize(torch.randn(4, 6))), ValueError, "K = 6"),
    ("K op", lambda: torch.ops.scangraph.qlinear(torch.randn(3, 5), torch.zeros(4, 6, dtype=torch.int8),
                                                  torch.ones(4), 8, 6, None), ValueError, r"K = 6 .*\(3, 5\)"),
    ("w dtype", lambda: torch.ops.scangraph.qlinear(torch.randn(3, 6), torch.zeros(4, 6), torch.ones(4), 8, 6, None),
     RuntimeError, "must be int8"),
    ("w4 shape", lambda: torch.ops.scangraph.qlinear(torch.randn(3, 6), torch.zeros(4, 6, dtype=torch.uint8),
                                                     torch.ones(4), 4, 6, None), RuntimeError, "packed uint8"),
    ("w -128", lambda: torch.ops.scangraph.qlinear(torch.randn(3, 6), torch.full((4, 6), -128, dtype=torch.int8),
                                                   torch.ones(4), 8, 6, None), RuntimeError, "-127, 127"),
    ("x dtype", lambda: scangraph.qlinear(torch.ones(3, 4, dtype=torch.int64), scangraph.quantize(torch.randn(2, 4))),
     TypeError, "float32"),
    ("w type", lambda: scangraph.qlinear(torch.randn(3, 4), torch.randn(2, 4)), TypeError, "QTensor"),
    ("w axis", lambda: scangraph.qlinear(torch.randn(3, 4), scangraph.quantize(torch.randn(2, 4), 8, 1)),
     ValueError, "per output channel"),
    ("act_bits", lambda: scangraph.qlinear(torch.randn(3, 4), scangraph.quantize(torch.randn(2, 4)), act_bits=4),
     ValueError, "act_bits"),
    ("activation", lambda: scangraph.qlinear(torch.randn(3, 4), scangraph.quantize(torch.randn(2, 4)),
                                             activation="tanh"), ValueError, "activation"),
    ("int32 + bias", lambda: scangraph.qlinear(torch.randn(3, 4), scangraph.quantize(torch.randn(2, 4)),
                                               torch.ones(2), out_dtype=torch.int32), ValueError, "raw"),
    ("qspmm bits", lambda: scangraph.qspmm(make_graph("karate"), scangraph.quantize(torch.randn(34, 4), 4)),
     ValueError, "8-bit"),
    ("qspmm rows", lambda: scangraph.qspmm(make_graph("karate"), scangraph.quantize(torch.randn(30, 4))),
     ValueError, "one row per source"),
    ("qspmm reduce", lambda: scangraph.qspmm(make_graph("karate"), scangraph.quantize(torch.randn(34, 4)), "prod"),
     ValueError, "reduce"),
    ("qspmm op dtype", lambda: torch.ops.scangraph.qspmm(make_graph("karate").rowptr, make_graph("karate").col, None,
                                                         torch.zeros(34, 4), torch.ones(34)), RuntimeError, "int8"),
], ids=lambda case: case[0])
def test_bad_input_raises_clearly(case):
    _, call, error, message = case
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_empty_inputs(backend_device):
    backend, device = backend_device
    q = scangraph.quantize(torch.zeros(3, 0, device=device), 8, 0, backend=backend)
    assert q.data.shape == (3, 0) and q.scale.tolist() == [0.0, 0.0, 0.0]
    w = scangraph.quantize(torch.randn(5, 7), 4, 0).to(device)
    assert scangraph.qlinear(torch.zeros(0, 7, device=device), w, backend=backend).shape == (0, 5)
    graph = make_graph("empty").to(device)
    xq = scangraph.quantize(torch.zeros(0, 4), 8, 0).to(device)
    assert scangraph.qspmm(graph, xq, backend=backend).shape == (0, 4)
