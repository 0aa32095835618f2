"""Prefix-scan attention (Aaren) on every backend against the float64 references: forward,
gradients of q, k, v and the initial state, streaming in chunks, the step op, packed sequences,
huge scores, gradcheck, opcheck, torch.compile, determinism, bad input."""
import math

import pytest
import torch

import scangraph
from scangraph import reference
from scangraph.ops._rules import opmath_dtype as _acc
from conftest import TOLERANCE, assert_close, backend_params, emulated

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
HEADS, DIM, DIM_V = 2, 11, 9  # d, dv not multiples of 8: vector tails on CPU, masked lanes in Triton


def _qkv(batch, seqlen, dtype, device, per_batch=False, spread=1.0):
    q = torch.randn((batch, HEADS, DIM) if per_batch else (HEADS, DIM), dtype=torch.float64)
    k = torch.randn(batch, seqlen, HEADS, DIM, dtype=torch.float64) * spread
    v = torch.randn(batch, seqlen, HEADS, DIM_V, dtype=torch.float64)
    return [t.to(dtype).to(device).requires_grad_() for t in (q, k, v)]


def _state(seqs, dtype, device, empty_first=True):
    """A random initial state; the first sequence's is the empty one (m = -inf, c = 0, w = 0)."""
    m = torch.randn(seqs, HEADS, dtype=torch.float64)
    c = torch.rand(seqs, HEADS, dtype=torch.float64) + 0.5
    w = torch.randn(seqs, HEADS, DIM_V, dtype=torch.float64)
    if empty_first and seqs:
        m[0], c[0], w[0] = float("-inf"), 0.0, 0.0
    return [t.to(dtype).to(device).requires_grad_() for t in (m, c, w)]


def _reference(inputs, scale=None, state=None, cu_seqlens=None):
    """The float64 materialised reference on the (rounded) inputs, with leaves of its own."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in inputs]
    state_leaves = None if state is None else [t.detach().cpu().double().requires_grad_() for t in state]
    o, last = reference.prefix_attention(*leaves, scale, state_leaves,
                                         None if cu_seqlens is None else cu_seqlens.cpu())
    return o, last, leaves, state_leaves


def _loss_grads(o, last, wrt, grads):
    """Gradients of <o, g_o> + <state, g_state> with respect to `wrt` (None where unreached)."""
    outputs = [o] + list(last)
    return torch.autograd.grad(outputs, wrt, [g.to(t.dtype).to(t.device) for g, t in zip(grads, outputs)],
                               allow_unused=True)


def _random_grads(o, last):
    return [torch.randn(o.shape, dtype=torch.float64)] + [torch.randn(t.shape, dtype=torch.float64) for t in last]


# Where a low-precision backward legitimately loses more: the kernel reads the rounded output o
# in o . grad_o, and dk / dq sum L such terms.
GRAD_SCALE = {torch.float64: 1.0, torch.float32: 4.0, torch.float16: 8.0, torch.bfloat16: 8.0}


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("per_batch", (False, True), ids=("q_per_head", "q_per_batch"))
def test_initial_and_returned_state_gradients(backend_device, dtype, per_batch):
    """Gradients reach q, k, v and all three initial-state tensors, through o and through the
    returned state (including its max)."""
    backend, device = backend_device
    q, k, v = _qkv(3, 19, dtype, device, per_batch)
    state = _state(3, _acc(dtype), device)
    o, last = scangraph.prefix_attention(q, k, v, scale=0.6, initial_state=state, return_state=True,
                                         backend=backend)
    ref, ref_last, leaves, state_leaves = _reference((q, k, v), 0.6, state)
    assert_close(o.cpu(), ref, dtype)
    for got, want in zip(last, ref_last):
        assert got.dtype == _acc(dtype)
        assert_close(got.cpu(), want, dtype)
    grads = _random_grads(ref, ref_last)
    mine = _loss_grads(o, last, (q, k, v, *state), grads)
    expected = _loss_grads(ref, ref_last, (*leaves, *state_leaves), grads)
    for got, want in zip(mine, expected):
        assert torch.isfinite(got).all()
        assert_close(got.cpu(), want, dtype, scale=GRAD_SCALE[dtype])


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_huge_scores_stay_finite(backend_device, dtype):
    """Scores of +-1e4: the running max starts at -inf and every exponent is <= 0."""
    backend, device = backend_device
    q, k, v = _qkv(2, 21, dtype, device)
    with torch.no_grad():
        q.copy_(torch.ones_like(q))
        signs = torch.where(torch.rand(k.shape[:3]) < 0.5, -1.0, 1.0).to(device)
        # s = scale * q . k = +-1e4 + a spread of a few hundred, so both maxima and underflow occur
        k.copy_(((signs[..., None] * 1e4 + 300 * torch.randn(k.shape[:3] + (1,)).to(device))
                 / (DIM * DIM ** -0.5)).expand_as(k).to(dtype))
    o, last = scangraph.prefix_attention(q, k, v, return_state=True, backend=backend)
    ref, ref_last, leaves, _ = _reference((q, k, v))
    assert torch.isfinite(o).all() and all(torch.isfinite(t).all() for t in last)
    # Scores of 1e4 formed in fp32 carry absolute errors ~1e-3 (the reference forms them in
    # float64), which shift the weights e^{s - m} by as much: a wider tolerance than the table's.
    torch.testing.assert_close(o.cpu().double(), ref, atol=max(2e-3, 2 * TOLERANCE[dtype][0]),
                               rtol=max(2e-3, TOLERANCE[dtype][1]))
    grad = torch.randn(o.shape, dtype=torch.float64)
    mine = torch.autograd.grad(o, (q, k, v), grad.to(dtype).to(device))
    assert all(torch.isfinite(g).all() for g in mine)
    # dv is well conditioned; dq / dk carry factors of 1e4 and are checked for finiteness only.
    torch.testing.assert_close(mine[2].cpu().double(), torch.autograd.grad(ref, leaves[2], grad)[0],
                               atol=max(1e-2, 8 * TOLERANCE[dtype][0]), rtol=max(2e-3, TOLERANCE[dtype][1]))


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("per_batch", (False, True), ids=("q_per_head", "q_per_batch"))
def test_streaming_in_chunks_equals_one_call(backend_device, per_batch):
    backend, device = backend_device
    q, k, v = _qkv(2, 29, torch.float64, device, per_batch)
    whole, whole_last = scangraph.prefix_attention(q, k, v, return_state=True, backend=backend)
    pieces, state = [], None
    for begin, end in ((0, 7), (7, 8), (8, 8), (8, 29)):
        o, state = scangraph.prefix_attention(q, k[:, begin:end], v[:, begin:end], initial_state=state,
                                              return_state=True, backend=backend)
        pieces.append(o)
    chunked = torch.cat(pieces, 1)
    assert_close(chunked, whole)
    for got, want in zip(state, whole_last):
        assert_close(got, want)
    grads = [torch.randn(whole.shape, dtype=torch.float64)] + [torch.randn(t.shape, dtype=torch.float64)
                                                                for t in whole_last]
    for got, want in zip(_loss_grads(chunked, state, (q, k, v), grads),
                         _loss_grads(whole, whole_last, (q, k, v), grads)):
        assert_close(got, want)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("per_batch", (False, True), ids=("q_per_head", "q_per_batch"))
def test_step_equals_scan(backend_device, dtype, per_batch):
    backend, device = backend_device
    q, k, v = _qkv(2, 9, dtype, device, per_batch)
    q, k, v = q.detach(), k.detach(), v.detach()
    acc = _acc(dtype)
    state = (torch.full((2, HEADS), float("-inf"), dtype=acc, device=device),
             torch.zeros(2, HEADS, dtype=acc, device=device), torch.zeros(2, HEADS, DIM_V, dtype=acc, device=device))
    pointers = [t.data_ptr() for t in state]
    steps = [scangraph.prefix_attention_step(state, q, k[:, t], v[:, t], backend=backend) for t in range(9)]
    assert [t.data_ptr() for t in state] == pointers  # updated in place
    o, last = scangraph.prefix_attention(q, k, v, return_state=True, backend=backend)
    scan_o, scan_last = reference.prefix_attention_scan(q.cpu().double(), k.cpu().double(), v.cpu().double())
    stepped = torch.stack(steps, 1)
    assert stepped.dtype == dtype
    assert_close(stepped.cpu(), scan_o, dtype)
    assert_close(stepped, o, dtype)
    for got, want, scanned in zip(state, last, scan_last):
        assert_close(got, want, dtype)
        assert_close(got.cpu(), scanned, dtype)


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
def test_packed_sequences_equal_separate_calls(backend_device, dtype):
    """cu_seqlens with a length-1 and a length-0 sequence: the scan restarts at each boundary,
    states are per sequence, the empty sequence returns its initial state untouched."""
    backend, device = backend_device
    lengths = [5, 1, 0, 18, 3]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device)
    q, k, v = _qkv(1, sum(lengths), dtype, device)
    state = _state(len(lengths), _acc(dtype), device)
    o, last = scangraph.prefix_attention(q, k, v, initial_state=state, return_state=True, cu_seqlens=cu,
                                         backend=backend)
    separate, separate_last = [], []
    for i, (begin, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_i, last_i = scangraph.prefix_attention(q, k[:, begin:end], v[:, begin:end],
                                                 initial_state=[t[i:i + 1] for t in state], return_state=True,
                                                 backend=backend)
        separate.append(o_i)
        separate_last.append(last_i)
    separate_last = [torch.cat(parts) for parts in zip(*separate_last)]
    assert_close(o, torch.cat(separate, 1), dtype)
    for got, want in zip(last, separate_last):
        assert_close(got, want, dtype)
    ref, ref_last, leaves, state_leaves = _reference((q, k, v), None, state, cu)
    assert_close(o.cpu(), ref, dtype)
    grads = _random_grads(ref, ref_last)
    mine = _loss_grads(o, last, (q, k, v, *state), grads)
    expected = _loss_grads(ref, ref_last, (*leaves, *state_leaves), grads)
    for got, want in zip(mine, expected):
        assert_close(got.cpu(), want, dtype, scale=GRAD_SCALE[dtype])
    # The empty sequence (index 2) passes its state through with gradient 1.
    for got, want in zip(last, state):
        assert torch.equal(got[2], want[2].detach())


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_empty_inputs_give_zeros(backend_device):
    backend, device = backend_device
    q, k, v = _qkv(2, 0, torch.float32, device)
    o, (m, c, w) = scangraph.prefix_attention(q, k, v, return_state=True, backend=backend)
    assert o.shape == (2, 0, HEADS, DIM_V)
    assert torch.equal(c, torch.zeros_like(c)) and torch.equal(w, torch.zeros_like(w)) and bool((m == -math.inf).all())
    cu = torch.tensor([0, 0, 0], dtype=torch.int32, device=device)
    q, k, v = _qkv(1, 0, torch.float32, device)
    o = scangraph.prefix_attention(q, k, v, cu_seqlens=cu, backend=backend)
    assert o.shape == (1, 0, HEADS, DIM_V)
    # An empty initial state before real positions is the same as no state.
    q, k, v = _qkv(2, 6, torch.float32, device)
    empty = (torch.full((2, HEADS), -math.inf, device=device), torch.zeros(2, HEADS, device=device),
             torch.zeros(2, HEADS, DIM_V, device=device))
    torch.testing.assert_close(scangraph.prefix_attention(q, k, v, initial_state=empty, backend=backend),
                               scangraph.prefix_attention(q, k, v, backend=backend))


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_gradcheck(backend_device):
    backend, device = backend_device
    fast = emulated(backend, device)
    q, k, v = _qkv(2, 6, torch.float64, device, per_batch=False)
    state = _state(2, torch.float64, device, empty_first=False)
    cu = torch.tensor([0, 2, 2, 6], dtype=torch.int32, device=device)
    state3 = _state(3, torch.float64, device, empty_first=False)

    def batched(q, k, v, m0, c0, w0):
        o, (m, c, w) = scangraph.prefix_attention(q, k, v, initial_state=(m0, c0, w0), return_state=True,
                                                  backend=backend)
        return o, m, c, w

    def packed(q, k, v, m0, c0, w0):
        o, (m, c, w) = scangraph.prefix_attention(q, k[:1], v[:1], initial_state=(m0, c0, w0), return_state=True,
                                                  cu_seqlens=cu, backend=backend)
        return o, m, c, w

    assert torch.autograd.gradcheck(batched, (q, k, v, *state), fast_mode=fast)
    assert torch.autograd.gradcheck(packed, (q, k, v, *state3), fast_mode=fast)


def test_compile_fullgraph_cpu():
    q, k, v = _qkv(2, 13, torch.float32, "cpu")
    state = [t.detach().requires_grad_() for t in _state(2, torch.float32, "cpu", empty_first=False)]

    def layer(q, k, v, m0, c0, w0):
        o, (m, c, w) = scangraph.prefix_attention(q, torch.tanh(k), v, initial_state=(m0, c0, w0),
                                                  return_state=True, backend="cpp")
        return o.relu().sum() + (w / c[..., None]).sum()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    inputs = (q, k, v, *state)
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    eager = layer(*inputs)
    torch.testing.assert_close(loss, eager)
    for got, want in zip(grads, torch.autograd.grad(eager, inputs)):
        torch.testing.assert_close(got, want)
    inductor = torch.compile(lambda q, k, v: scangraph.prefix_attention(q, k * 2, v, backend="cpp") + 1,
                             fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(inductor(q, k, v), scangraph.prefix_attention(q, k * 2, v) + 1)


def test_reference_backend_and_auto():
    q, k, v = _qkv(2, 7, torch.float64, "cpu")
    ref = scangraph.prefix_attention(q, k, v, backend="reference")
    assert_close(scangraph.prefix_attention(q, k, v), ref)  # auto: the C++ kernel on CPU
    state = (torch.full((2, HEADS), -math.inf, dtype=torch.float64), torch.zeros(2, HEADS, dtype=torch.float64),
             torch.zeros(2, HEADS, DIM_V, dtype=torch.float64))
    with torch.no_grad():
        out = scangraph.prefix_attention_step(state, q, k[:, 0], v[:, 0], backend="reference")
    assert_close(out, ref[:, 0].detach())


# ---- bad input: a clear Python exception naming the argument, expected and got -------------
def _bad_calls():
    q, k, v = (t.detach() for t in _qkv(2, 5, torch.float32, "cpu"))
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    state = (torch.zeros(2, HEADS), torch.zeros(2, HEADS), torch.zeros(2, HEADS, DIM_V))
    pa, step = scangraph.prefix_attention, scangraph.prefix_attention_step
    return {
        "k 3-D": (lambda: pa(q, k[0], v), ValueError, "k must be (batch, L, heads, d), got shape (5, 2, 11)"),
        "q 1-D": (lambda: pa(q[0], k, v), ValueError, "q must be (heads, d) or (batch, heads, d)"),
        "q wrong d": (lambda: pa(q[:, :4], k, v), ValueError, "q must have (heads, d) = (2, 11)"),
        "q wrong batch": (lambda: pa(q.expand(3, -1, -1), k, v), ValueError,
                          "per-batch q must be (batch, heads, d) = (2"),
        "v wrong L": (lambda: pa(q, k, v[:, :3]), ValueError, "v must be (batch, L, heads, dv)"),
        "dtype mismatch": (lambda: pa(q, k, v.double()), TypeError, "v must have the dtype of k (float32)"),
        "integer k": (lambda: pa(q, k.long(), v), TypeError, "k must be float64, float32"),
        "device mismatch": (lambda: pa(q, k, v.to("meta")), ValueError, "v is on meta but k is on cpu"),
        "cu_seqlens int64": (lambda: pa(q, k[:1], v[:1], cu_seqlens=cu.long()), TypeError,
                             "cu_seqlens must be int32"),
        "cu_seqlens start": (lambda: pa(q, k[:1], v[:1], cu_seqlens=cu + 1), ValueError,
                             "must start at 0 and end at L = 5, got [1,"),
        "cu_seqlens end": (lambda: pa(q, k[:1], v[:1], cu_seqlens=cu[:2]), ValueError,
                           "must start at 0 and end at L = 5, got [0, 2]"),
        "cu_seqlens decreasing": (lambda: pa(q, k[:1], v[:1], cu_seqlens=torch.tensor([0, 4, 3, 5], dtype=torch.int32)),
                                  ValueError, "must not decrease"),
        "cu_seqlens batch 2": (lambda: pa(q, k, v, cu_seqlens=cu), ValueError, "needs batch == 1, got batch 2"),
        "state shape": (lambda: pa(q, k, v, initial_state=(state[0][:1], state[1], state[2])), ValueError,
                        "initial_state m must have shape (2, 2)"),
        "state not a triple": (lambda: pa(q, k, v, initial_state=state[:2]), TypeError, "tuple (m, denom, numer)"),
        "unknown backend": (lambda: pa(q, k, v, backend="numba"), ValueError, "backend must be"),
        "cuda backend on cpu": (lambda: pa(q, k, v, backend="cuda"), scangraph.BackendUnavailable, "CUDA tensors"),
        "step k 4-D": (lambda: step(state, q, k, v), ValueError, "k must be (batch, heads, d)"),
        "step state dtype": (lambda: step(tuple(t.double() for t in state), q, k[:, 0], v[:, 0]), ValueError,
                             "contiguous float32 tensor"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input_raises_clearly(case):
    call, error, message = _bad_calls()[case]
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_cpp_op_checks_its_arguments_itself():
    """Called directly, the op validates what the public function would (no crash, no garbage)."""
    q, k, v = (t.detach() for t in _qkv(1, 5, torch.float32, "cpu"))
    op = torch.ops.scangraph.prefix_attention
    with pytest.raises(ValueError, match="cu_seqlens must not decrease"):
        op(q, k, v, 1.0, None, None, None, torch.tensor([0, 4, 3, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0 and end at L = 5"):
        op(q, k, v, 1.0, None, None, None, torch.tensor([0, 4], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="m0 must be Float"):
        op(q, k, v, 1.0, torch.zeros(1, HEADS, dtype=torch.float64), torch.zeros(1, HEADS),
           torch.zeros(1, HEADS, DIM_V), None)
    with pytest.raises(RuntimeError, match="all three of"):
        op(q, k, v, 1.0, torch.zeros(1, HEADS), None, None, None)


@pytest.mark.parametrize("threads", (1, 2))
def test_cpu_head_blocks(threads):
    """Many heads: a C++ task walks a block of adjacent heads (13 heads give blocks of 4, 4, 4, 1
    on 2 threads, 8 and 5 on 1). Results match the reference and do not depend on the blocking."""
    heads, dim, dim_v = 13, 5, 6
    q = torch.randn(3, heads, dim, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 17, heads, dim, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 17, heads, dim_v, dtype=torch.float64, requires_grad=True)
    state = [torch.randn(3, heads, dtype=torch.float64), torch.rand(3, heads, dtype=torch.float64) + 0.5,
             torch.randn(3, heads, dim_v, dtype=torch.float64)]
    state = [t.requires_grad_() for t in state]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        o, last = scangraph.prefix_attention(q, k, v, initial_state=state, return_state=True, backend="cpp")
        ref, ref_last = reference.prefix_attention(q, k, v, None, state)
        grads = _random_grads(ref, ref_last)
        mine = _loss_grads(o, last, (q, k, v, *state), grads)
    finally:
        torch.set_num_threads(previous)
    assert_close(o, ref)
    for got, want in zip(mine, _loss_grads(ref, ref_last, (q, k, v, *state), grads)):
        assert_close(got, want)
    single = scangraph.prefix_attention(q[:, :1], k[:, :, :1], v[:, :, :1], initial_state=[t[:, :1] for t in state],
                                        backend="cpp")
    assert torch.equal(single, o[:, :, :1])  # one head alone: bitwise the same as in a block


_COMPILE_FOR_SM90 = r"""
import inspect, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from scangraph.triton_kernels import prefix_attention as K
for fn, dtype, consts in (
        (K.prefix_attention_fwd_kernel, "bf16", dict(HAS_STATE=True, HAS_STATS=True, VARLEN=False)),
        (K.prefix_attention_bwd_kernel, "fp32", dict(HAS_STATE=True, VARLEN=True))):
    consts.update(ACC=tl.float32, BLOCK_L=16, BLOCK_D=64, BLOCK_DV=64)
    data = ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "grad_o_ptr", "dk_ptr", "dv_ptr")
    signature = {n: "constexpr" if n in consts else "*" + dtype if n in data else "*i32" if n == "cu_ptr"
                 else "*fp32" if n.endswith("_ptr") else "fp32" if n == "scale" else "i64"
                 for n in inspect.signature(fn.fn).parameters}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"] and ".local" not in compiled.asm["ptx"], fn.fn.__name__  # no spills
print("compiled")
"""


def test_triton_kernels_compile_for_sm90():
    """Without a GPU the interpreter cannot show that the kernels compile: build them for sm_90
    (Triton's own ptxas, no device needed) in a process with the interpreter off."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("backend_device", backend_params(), indirect=True)
def test_strided_inputs(backend_device):
    """Head-major k (a transposed view), v with a strided last dimension, q a slice."""
    backend, device = backend_device
    k = torch.randn(2, HEADS, 10, DIM, dtype=torch.float64, device=device).transpose(1, 2)
    v = torch.randn(2, 10, HEADS, 2 * DIM_V, dtype=torch.float64, device=device)[..., ::2]
    q = torch.randn(HEADS, 2 * DIM, dtype=torch.float64, device=device)[:, DIM:]
    o = scangraph.prefix_attention(q, k, v, backend=backend)
    assert_close(o.cpu(), reference.prefix_attention(q.cpu(), k.cpu(), v.cpu())[0])
