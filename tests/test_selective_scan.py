"""selective_scan and selective_state_update on every backend against the float64 sequential
reference: forward and every gradient, fixed / varying / grouped B and C, varlen, reverse,
initial and last states, dtypes, gradcheck, opcheck, torch.compile, determinism, bad input."""
import pytest
import torch

import scangraph
from scangraph import reference
from scangraph.ops._rules import opmath_dtype
from conftest import assert_close, backend_params, emulated

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# name: (groups (0: fixed B / C, None: varying as (batch, N, L)), with D, z, delta_bias, softplus)
CONFIGS = {
    "fixed_plain": (0, False, False, False, False),
    "fixed_full": (0, True, True, True, True),
    "varying3d_full": (None, True, True, True, True),
    "groups2_z": (2, False, True, False, True),
    "groups1_bias": (1, True, False, True, False),
}


def _inputs(batch, dim, length, dstate, groups, with_d, with_z, with_bias, dtype, device, states=None,
            initial=True):
    """Fresh random inputs in the dtype (rounded once), as leaves that require grad."""
    g = 1 if groups is None else groups

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale + shift).to(dtype)

    u = rnd(batch, dim, length)
    delta = (torch.rand(batch, dim, length, dtype=torch.float64) * 1.5 - 0.5).to(dtype)
    A = -torch.rand(dim, dstate, dtype=torch.float64) * 2 - 0.1
    if groups == 0:
        B, C = torch.randn(dim, dstate, dtype=torch.float64), torch.randn(dim, dstate, dtype=torch.float64)
    elif groups is None:
        B, C = rnd(batch, dstate, length), rnd(batch, dstate, length)
    else:
        B, C = rnd(batch, g, dstate, length), rnd(batch, g, dstate, length)
    if groups == 0:
        B, C = B.float() if dtype != torch.float64 else B, C.float() if dtype != torch.float64 else C
    acc = opmath_dtype(dtype)
    A = A.to(acc)
    D = torch.randn(dim, dtype=acc) if with_d else None
    z = rnd(batch, dim, length) if with_z else None
    bias = (torch.randn(dim, dtype=acc) * 0.5) if with_bias else None
    h0 = torch.randn(states or batch, dim, dstate, dtype=acc) if initial else None
    tensors = [u, delta, A, B, C, D, z, bias, h0]
    return [None if t is None else t.to(device).requires_grad_() for t in tensors]


def _run(inputs, softplus, backend, cu_seqlens=None, reverse=False):
    u, delta, A, B, C, D, z, bias, h0 = inputs
    return scangraph.selective_scan(u, delta, A, B, C, D, z, bias, softplus, True, initial_state=h0,
                                    cu_seqlens=cu_seqlens, reverse=reverse, backend=backend)


def _grads(inputs, out, last, grad_out, grad_last):
    leaves = [t for t in inputs if t is not None]
    return torch.autograd.grad((out * grad_out).sum() + (last * grad_last).sum(), leaves)


def _check_against_reference(inputs, softplus, backend, dtype, cu_seqlens=None, reverse=False, scale=1.0):
    out, last = _run(inputs, softplus, backend, cu_seqlens, reverse)
    grad_out, grad_last = torch.randn_like(out), torch.randn_like(last)
    grads = _grads(inputs, out, last, grad_out, grad_last)
    inputs64 = [None if t is None else t.detach().cpu().double().requires_grad_() for t in inputs]
    cu = None if cu_seqlens is None else cu_seqlens.cpu()
    ref_out, ref_last = _run(inputs64, softplus, "reference", cu, reverse)
    ref_grads = _grads(inputs64, ref_out, ref_last, grad_out.cpu().double(), grad_last.cpu().double())
    assert out.dtype == dtype and out.shape == ref_out.shape and last.shape == ref_last.shape
    assert_close(out.cpu(), ref_out, dtype, scale)
    assert_close(last.cpu(), ref_last, dtype, scale)
    names = [n for n, t in zip("u delta A B C D z delta_bias initial_state".split(), inputs) if t is not None]
    for name, got, want in zip(names, grads, ref_grads):
        # gradients of the parameters sum over batch and L: their error grows with the count
        assert got.shape == want.shape, name
        try:
            assert_close(got.cpu(), want, dtype, scale * (4 if name in ("A", "B", "C", "D", "delta_bias") else 1))
        except AssertionError as error:
            raise AssertionError(f"gradient of {name}: {error}") from None


@pytest.mark.parametrize("dstate", (8, 9, 16, 33))
@pytest.mark.parametrize("config", ("fixed_full", "groups2_z"))
def test_cpu_vector_widths_match_reference(dstate, config):
    # The C++ kernels run 16-lane (AVX-512) vectors above 8 states and 8-lane ones up to 8 where
    # the CPU has them: N = 8, 9, 16 and 33 cover one full vector of each, a padded one and a
    # multi-vector state on both sides of that switch, forward and reverse, with packed sequences.
    groups, *flags, softplus = CONFIGS[config]
    lengths = [30, 1, 70]
    inputs = _inputs(1, 4, sum(lengths), dstate, groups, *flags, torch.float64, "cpu", states=len(lengths))
    cu_seqlens = torch.tensor([0, 30, 31, 101], dtype=torch.int32)
    for reverse in (False, True):
        _check_against_reference(inputs, softplus, "cpp", torch.float64, cu_seqlens=cu_seqlens, reverse=reverse)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("shape", ((1, 1, 1, 1), (3, 2, 1, 7), (1, 3, 129, 1), (1, 2, 5, 256)),
                         ids=("all_one", "L1", "L129_N1", "N256"))
def test_odd_sizes(backend_device, shape):
    backend, device = backend_device
    batch, dim, length, dstate = shape
    inputs = _inputs(batch, dim, length, dstate, 1, True, True, True, torch.float64, device)
    _check_against_reference(inputs, True, backend, torch.float64)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("reverse", (False, True), ids=("forward", "reverse"))
@pytest.mark.parametrize("groups", (0, 2))
def test_varlen_matches_reference_and_separate_calls(backend_device, reverse, groups):
    backend, device = backend_device
    lengths = [3, 1, 0, 70, 5] if backend != "triton" else [3, 1, 0, 9]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    total = int(cu[-1])
    inputs = _inputs(1, 4, total, 3, groups, True, True, True, torch.float64, device, states=len(lengths))
    _check_against_reference(inputs, True, backend, torch.float64, cu_seqlens=cu, reverse=reverse)
    out, last = _run(inputs, True, backend, cu, reverse)
    u, delta, A, B, C, D, z, bias, h0 = inputs
    for i, (begin, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        piece = [t[..., begin:end] for t in (u, delta)]
        bc = [t if t.dim() == 2 else t[..., begin:end] for t in (B, C)]
        one_out, one_last = scangraph.selective_scan(
            piece[0], piece[1], A, bc[0], bc[1], D, z[..., begin:end], bias, True, True,
            initial_state=h0[i:i + 1], reverse=reverse, backend=backend)
        torch.testing.assert_close(out[..., begin:end], one_out, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(last[i:i + 1], one_last, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_reverse_equals_flipped_inputs(backend_device):
    backend, device = backend_device
    u, delta, A, B, C, D, z, bias, h0 = _inputs(2, 3, 23, 4, 1, True, True, True, torch.float64, device)
    out, last = scangraph.selective_scan(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0,
                                         reverse=True, backend=backend)
    flipped = [t.flip(-1) for t in (u, delta, B, C, z)]
    out_f, last_f = scangraph.selective_scan(flipped[0], flipped[1], A, flipped[2], flipped[3], D, flipped[4],
                                             bias, True, True, initial_state=h0, backend=backend)
    torch.testing.assert_close(out, out_f.flip(-1))
    torch.testing.assert_close(last, last_f)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_streaming_in_pieces_equals_one_call(backend_device):
    """Scanning L in two calls, the second starting from the first's last state, equals one
    call, gradients included (they flow back through last_state into the first call)."""
    backend, device = backend_device
    inputs = _inputs(2, 3, 90, 4, 1, True, True, True, torch.float64, device)
    u, delta, A, B, C, D, z, bias, h0 = inputs
    whole, whole_last = _run(inputs, True, backend)
    grad = torch.randn_like(whole)
    whole_grads = torch.autograd.grad((whole * grad).sum(), [u, A, B, h0])
    cut = 37
    first, mid = scangraph.selective_scan(u[..., :cut], delta[..., :cut], A, B[..., :cut], C[..., :cut], D,
                                          z[..., :cut], bias, True, True, initial_state=h0, backend=backend)
    second, last = scangraph.selective_scan(u[..., cut:], delta[..., cut:], A, B[..., cut:], C[..., cut:], D,
                                            z[..., cut:], bias, True, True, initial_state=mid, backend=backend)
    pieces = torch.cat([first, second], -1)
    torch.testing.assert_close(pieces, whole)
    torch.testing.assert_close(last, whole_last)
    piece_grads = torch.autograd.grad((pieces * grad).sum(), [u, A, B, h0])
    for got, want in zip(piece_grads, whole_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("groups", (1, 2))
def test_state_update_equals_scan_token_by_token(backend_device, dtype, groups):
    backend, device = backend_device
    batch, dim, length, dstate = 2, 4, 5, 6
    u, delta, A, B, C, D, z, bias, h0 = [None if t is None else t.detach() for t in _inputs(
        batch, dim, length, dstate, groups, True, True, True, dtype, device)]
    out, last = scangraph.selective_scan(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0,
                                         backend=backend)
    state = h0.clone()
    for t in range(length):
        y = scangraph.selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                             bias, True, backend=backend)
        assert_close(y.cpu().double(), out[..., t].cpu().double(), dtype)
    assert_close(state.cpu(), last.cpu().double(), torch.float32 if dtype != torch.float64 else dtype)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_state_update_bf16_state_is_updated_in_place(backend_device):
    backend, device = backend_device
    x, dt = torch.randn(2, 4, device=device), torch.rand(2, 4, device=device)
    A, B, C = -torch.rand(4, 3, device=device), torch.randn(2, 3, device=device), torch.randn(2, 3, device=device)
    state = torch.randn(2, 4, 3, device=device).to(torch.bfloat16)
    before = state.clone()
    y = scangraph.selective_state_update(state, x, dt, A, B, C, backend=backend)
    want_y, want_state = reference.selective_state_update(before.float(), x, dt, A, B, C)
    torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, want_state.to(torch.bfloat16))


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_state_update_takes_fp32_b_c_with_half_x(backend_device, dtype):
    """Autocast's mix (x, dt, z in fp16 / bf16, B / C from fp32 projections): the float64
    reference on the same values, y in x's dtype."""
    backend, device = backend_device
    x, dt, z = (torch.randn(2, 4, device=device).to(dtype) for _ in range(3))
    dt = dt.abs()
    A, B, C = -torch.rand(4, 3, device=device), torch.randn(2, 3, device=device), torch.randn(2, 3, device=device)
    state = torch.randn(2, 4, 3, device=device)
    before = state.clone()
    y = scangraph.selective_state_update(state, x, dt, A, B, C, z=z, dt_softplus=True, backend=backend)
    assert y.dtype == dtype
    want_y, want_state = reference.selective_state_update(before.double(), x.double(), dt.double(), A.double(),
                                                          B.double(), C.double(), z=z.double(), dt_softplus=True)
    assert_close(y.cpu().double(), want_y.cpu(), dtype)
    assert_close(state.cpu().double(), want_state.cpu(), torch.float32)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_state_update_multi_head_layout_as_mamba_ssm(backend_device):
    """x (batch, nheads, dim), A (nheads, dim, N), B / C (batch, ngroups, N), D / dt_bias (nheads,
    dim), state (batch, nheads, dim, N), dt broadcast over dim as Mamba-2 passes it: each head
    equals the single-head float64 reference with its group's B / C."""
    backend, device = backend_device
    batch, nheads, ngroups, dim, dstate = 2, 4, 2, 3, 5
    x, z = torch.randn(batch, nheads, dim, device=device), torch.randn(batch, nheads, dim, device=device)
    dt = torch.rand(batch, nheads, 1, device=device).expand(batch, nheads, dim)  # stride 0 over dim
    A = -torch.rand(nheads, 1, dstate, device=device).expand(nheads, dim, dstate)
    B, C = torch.randn(batch, ngroups, dstate, device=device), torch.randn(batch, ngroups, dstate, device=device)
    D, dt_bias = torch.randn(nheads, dim, device=device), torch.randn(nheads, dim, device=device)
    state = torch.randn(batch, nheads, dim, dstate, device=device)
    before = state.clone()
    y = scangraph.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True, backend=backend)
    assert y.shape == (batch, nheads, dim)
    for h in range(nheads):
        g = h // (nheads // ngroups)
        want_y, want_state = reference.selective_state_update(
            before[:, h].double(), x[:, h].double(), dt[:, h].double(), A[h].double(), B[:, g].double(),
            C[:, g].double(), D[h].double(), z[:, h].double(), dt_bias[h].double(), True)
        assert_close(y[:, h].cpu().double(), want_y.cpu(), torch.float32)
        assert_close(state[:, h].cpu().double(), want_state.cpu(), torch.float32)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_state_update_state_batch_indices_and_padding(backend_device):
    """Continuous batching: row b updates cache slot state_batch_indices[b]; a negative slot is
    padding (y = 0, no state touched), as in mamba_ssm; the other slots stay as they were."""
    backend, device = backend_device
    slots, dim, dstate = 5, 4, 3
    index = torch.tensor([3, -1, 0], device=device)
    x, dt, z = torch.randn(3, dim, device=device), torch.rand(3, dim, device=device), torch.randn(3, dim, device=device)
    A, B, C = -torch.rand(dim, dstate, device=device), torch.randn(3, dstate, device=device), \
        torch.randn(3, dstate, device=device)
    state = torch.randn(slots, dim, dstate, device=device)
    before = state.clone()
    y = scangraph.selective_state_update(state, x, dt, A, B, C, z=z, state_batch_indices=index.to(torch.int32),
                                         backend=backend)
    for row, slot in ((0, 3), (2, 0)):
        want_y, want_state = reference.selective_state_update(
            before[slot:slot + 1].double(), x[row:row + 1].double(), dt[row:row + 1].double(), A.double(),
            B[row:row + 1].double(), C[row:row + 1].double(), z=z[row:row + 1].double())
        assert_close(y[row:row + 1].cpu().double(), want_y.cpu(), torch.float32)
        assert_close(state[slot:slot + 1].cpu().double(), want_state.cpu(), torch.float32)
    assert bool((y[1] == 0).all())
    for slot in (1, 2, 4):
        assert torch.equal(state[slot], before[slot])
    with pytest.raises(ValueError, match="slots"):
        scangraph.selective_state_update(state, x, dt, A, B, C, state_batch_indices=torch.tensor([5, 0, 1]),
                                         backend=backend)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_gradcheck(backend_device):
    backend, device = backend_device
    inputs = _inputs(1, 2, 9, 3, 1, True, True, True, torch.float64, device)
    u, delta, A, B, C, D, z, bias, h0 = inputs

    def fn(u, delta, A, B, C, D, z, bias, h0):
        out, last = scangraph.selective_scan(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0,
                                             backend=backend)
        return out, last
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=emulated(backend, device))


def test_compile_fullgraph_cpu():
    inputs = _inputs(2, 4, 30, 3, 1, True, True, True, torch.float32, "cpu")

    def fn(u, delta, A, B, C, D, z, bias, h0):
        out, last = scangraph.selective_scan(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0,
                                             backend="cpp")
        return out.sum() + last.sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, [inputs[0], inputs[2]])
    want = fn(*inputs)
    want_grads = torch.autograd.grad(want, [inputs[0], inputs[2]])
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


def test_compile_inductor_cpu():
    u, delta, A, B, C, D, z, bias, h0 = [None if t is None else t.detach() for t in _inputs(
        1, 4, 20, 3, 1, True, True, True, torch.float32, "cpu")]
    fn = lambda u: scangraph.selective_scan(u * 2, delta, A, B, C, D, z, bias, True, backend="cpp") + 1  # noqa: E731
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(u), fn(u))


def test_non_contiguous_inputs_are_accepted():
    u, delta, A, B, C, D, z, bias, h0 = [None if t is None else t.detach() for t in _inputs(
        2, 6, 11, 3, 1, True, True, True, torch.float64, "cpu")]
    # (batch, L, dim) storage seen as (batch, dim, L), as after mamba's in_proj + rearrange
    u_t = u.transpose(1, 2).contiguous().transpose(1, 2)
    B_t = B.transpose(2, 3).contiguous().transpose(2, 3)
    out = scangraph.selective_scan(u_t, delta, A, B_t, C, D, z, bias, True, backend="cpp")
    want = scangraph.selective_scan(u, delta, A, B, C, D, z, bias, True, backend="cpp")
    assert not u_t.is_contiguous()
    torch.testing.assert_close(out, want, atol=0, rtol=0)


def _bad(**changes):
    u, delta, A, B, C = torch.randn(1, 4, 8), torch.rand(1, 4, 8), -torch.rand(4, 3), torch.randn(1, 2, 3, 8), \
        torch.randn(1, 2, 3, 8)
    args = dict(u=u, delta=delta, A=A, B=B, C=C)
    args.update(changes)
    kwargs = {k: args.pop(k) for k in ("initial_state", "cu_seqlens") if k in args}
    return args, kwargs


BAD_INPUTS = {
    "N over 256": (dict(A=-torch.rand(4, 257), B=torch.randn(1, 2, 257, 8), C=torch.randn(1, 2, 257, 8)),
                   ValueError, "N = A.shape"),
    "dim not divisible by groups": (dict(B=torch.randn(1, 3, 3, 8), C=torch.randn(1, 3, 3, 8)), ValueError,
                                    "divisible"),
    "cu_seqlens not ending at L": (dict(cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32)), ValueError,
                                   "end at L"),
    "cu_seqlens decreasing": (dict(cu_seqlens=torch.tensor([0, 5, 3, 8], dtype=torch.int32)), ValueError,
                              "decrease"),
    "cu_seqlens int64": (dict(cu_seqlens=torch.tensor([0, 8])), TypeError, "int32"),
    "delta of another dtype": (dict(delta=torch.rand(1, 4, 8, dtype=torch.float64)), TypeError, "delta"),
    "B of another dtype": (dict(B=torch.randn(1, 2, 3, 8, dtype=torch.float64)), TypeError, "u's dtype"),
    "u of int dtype": (dict(u=torch.ones(1, 4, 8, dtype=torch.int32)), TypeError, "u must be"),
    "u of rank 2": (dict(u=torch.randn(4, 8)), ValueError, "u must be"),
    "A of wrong dim": (dict(A=-torch.rand(5, 3)), ValueError, "A must be"),
    "initial_state of wrong shape": (dict(initial_state=torch.randn(2, 4, 3)), ValueError, "initial_state"),
    "B and C varying with other groups": (dict(C=torch.randn(1, 1, 3, 8)), ValueError, "one number of groups"),
}


@pytest.mark.parametrize("backend", ("cpp", "triton", "reference"))
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_clear_error(backend, case):
    changes, error, message = BAD_INPUTS[case]
    args, kwargs = _bad(**changes)
    with pytest.raises(error, match=message):
        scangraph.selective_scan(**args, **kwargs, backend=backend)


def test_cpp_op_checks_its_own_input():
    """The op is public too (torch.ops.scangraph.selective_scan): it checks without Python."""
    u, delta, A = torch.randn(1, 4, 8), torch.rand(1, 4, 8), -torch.rand(4, 3)
    B = torch.randn(1, 3, 3, 8)
    with pytest.raises(ValueError, match="divisible"):
        torch.ops.scangraph.selective_scan(u, delta, A, B, B, None, None, None, False, None, None, False)
    with pytest.raises(ValueError, match="end at L"):
        torch.ops.scangraph.selective_scan(u, delta, A, B[:, :1], B[:, :1], None, None, None, False, None,
                                           torch.tensor([0, 5], dtype=torch.int32), False)


def test_cuda_backward_walks_rounds_of_channels(monkeypatch):
    """The CUDA backward's blocks take 8 channels of a group; when a group has more channels than
    its slabs hold (a GPU already full), each warp walks several in turn. A small target of warps
    reaches that branch at a test's size: 136 channels, 16 slabs of 8, two rounds."""
    import cuda_emulation
    reason = cuda_emulation.load()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("SCANGRAPH_EMULATION_TARGET_WARPS", "64")
    inputs = _inputs(1, 136, 9, 2, None, False, False, False, torch.float32, "cpu")
    _check_against_reference(inputs, False, "cuda_emulated", torch.float32, scale=4)
