"""The causal convolution beyond the shared op samples (tests/op_samples.py): parity with the
causal-conv1d package's parameter grid and tolerances (its reference formula: the convolution in
the weight's dtype, F.conv1d over the padded input), seq_idx against separate calls, final
states continued by the update, causal_conv1d_varlen_states, and mamba_inner_fn against
mamba_ssm's reference composition."""
import pytest
import torch
import torch.nn.functional as F

import scangraph
from scangraph import reference
from conftest import backend_params

# The peer's tolerances (tests/test_causal_conv1d.py of causal-conv1d 1.6.1): outputs and input
# gradients per dtype, (rtol, atol); weight and bias gradients (1e-3, 1e-3).
PEER_TOL = {torch.float32: (3e-4, 1e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (1e-2, 5e-2)}
PEER_WEIGHT_TOL = (1e-3, 1e-3)


def peer_reference(x, weight, bias=None, initial_states=None, activation=None):
    """The package's reference formula: x in the weight's dtype, F.conv1d over (initial states or
    zeros, x), SiLU, the output back in x's dtype; the final states are the last width - 1 inputs."""
    dtype_in, width = x.dtype, weight.shape[1]
    x = x.to(weight.dtype)
    before = initial_states.to(weight.dtype) if initial_states is not None else \
        x.new_zeros(x.shape[0], x.shape[1], width - 1)
    padded = torch.cat([before, x], dim=-1)
    out = F.conv1d(padded, weight.unsqueeze(1), bias, groups=weight.shape[0])
    out = F.silu(out) if activation else out
    return out.to(dtype_in), padded[..., x.shape[-1]:].to(dtype_in)


ON_CPU = pytest.mark.parametrize("backend_device", [p for p in backend_params() if p.values[0][1] == "cpu"],
                                 indirect=True)


@pytest.mark.parametrize("backend_device", [p for p in backend_params()], indirect=True)
@pytest.mark.parametrize("itype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("seqlen", [1, 8, 129, 372])
def test_peer_grid(backend_device, itype, width, seqlen):
    """The peer's grid (dim 64; bias, SiLU, channel-last layout, initial and final states each on
    and off) at its tolerances, forward and backward. The emulated CUDA and interpreted Triton
    backends run one length, 8 channels and every eighth combination (a call costs seconds there)."""
    backend, device = backend_device
    combos = [(bias, silu, channel_last, init, final) for bias in (False, True) for silu in (False, True)
              for channel_last in (False, True) for init in (False, True) for final in (False, True)]
    batch, dim = 2, 64
    if backend in ("cuda_emulated", "triton") and device == "cpu":
        if seqlen != 129:
            pytest.skip("the emulated backends run one of the lengths (a call costs seconds there)")
        combos, dim = combos[width % 8::8], 8
    rtol, atol = PEER_TOL[itype]
    for has_bias, silu, channel_last, has_init, final in combos:
        if channel_last:  # (batch, seqlen, dim) memory seen as (batch, dim, seqlen)
            x = torch.randn(batch, seqlen, dim + 16, device=device, dtype=itype)[..., 8:8 + dim].transpose(1, 2)
        else:
            x = torch.randn(batch, dim + 16, seqlen, device=device, dtype=itype)[:, 8:8 + dim]
        x.requires_grad_()
        weight = torch.randn(dim, width, device=device, requires_grad=True)
        bias = torch.randn(dim, device=device, requires_grad=True) if has_bias else None
        init = torch.randn(batch, width - 1, dim, device=device, dtype=itype).transpose(1, 2).requires_grad_() \
            if has_init else None
        activation = "silu" if silu else None
        got = scangraph.causal_conv1d_fn(x, weight, bias, initial_states=init, return_final_states=final,
                                         activation=activation, backend=backend)
        out, final_states = got if final else (got, None)
        leaves = [x, weight] + ([bias] if has_bias else []) + ([init] if has_init else [])
        refs = [t.detach().clone().requires_grad_() for t in leaves]
        ref_map = dict(zip(["x", "weight"] + (["bias"] if has_bias else []) + (["init"] if has_init else []), refs))
        out_ref, final_ref = peer_reference(ref_map["x"], ref_map["weight"], ref_map.get("bias"), ref_map.get("init"),
                                            activation)
        assert torch.allclose(out, out_ref, rtol=rtol, atol=atol)
        if final:
            assert torch.equal(final_states, final_ref)
        g = torch.randn_like(out_ref)
        grads = torch.autograd.grad((out * g).sum(), leaves)
        grads_ref = torch.autograd.grad((out_ref * g).sum(), refs)
        names = list(ref_map)
        for name, a, r in zip(names, grads, grads_ref):
            tol = PEER_WEIGHT_TOL if name in ("weight", "bias") else (rtol, atol)
            assert torch.allclose(a, r.to(a.dtype), rtol=tol[0], atol=tol[1]), (name, has_bias, silu, channel_last)


def peer_update_reference(x, conv_state, weight, bias, activation, cache_seqlens):
    """The package's update formula, input by input in float64: (out, new state)."""
    out, state = reference.causal_conv1d_update(x.double(), conv_state.double(), weight.double(),
                                                None if bias is None else bias.double(), activation is not None,
                                                cache_seqlens)
    return out, state.to(conv_state.dtype)


@pytest.mark.parametrize("backend_device", [p for p in backend_params()], indirect=True)
@pytest.mark.parametrize("itype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("seqlen", [1, 4, 5])
def test_peer_update_grid(backend_device, itype, width, seqlen):
    """The peer's update grid (dims 2048 + 16, a state_len drawn in [width - 1, width + 10), a
    channel-last conv_state, cache_seqlens on and off, bias, SiLU) at its tolerances; the state
    bit for bit. One length, fewer rows and channels on the emulated backends."""
    backend, device = backend_device
    slow = backend in ("cuda_emulated", "triton") and device == "cpu"
    if slow and seqlen != 5:
        pytest.skip("the emulated backends run one of the lengths (a call costs seconds there)")
    batch, dim = (3, 8) if slow else (16, 2048 + 16)
    rtol, atol = PEER_TOL[itype]
    for circular in (False, True):
        for has_bias, silu in ((False, False), (True, True), (True, False), (False, True))[:2 if slow else 4]:
            x = torch.randn(batch, seqlen, dim, device=device, dtype=itype).transpose(-1, -2)
            state_len = int(torch.randint(width - 1, width + 10, ()))
            conv_state = torch.randn(batch, state_len, dim, device=device, dtype=itype).transpose(-1, -2)
            weight = torch.randn(dim, width, device=device)
            bias = torch.randn(dim, device=device) if has_bias else None
            cache = torch.randint(0, 1024, (batch,), dtype=torch.int32, device=device) if circular else None
            activation = "silu" if silu else None
            out_ref, state_ref = peer_update_reference(x, conv_state, weight, bias, activation, cache)
            out = scangraph.causal_conv1d_update(x, conv_state, weight, bias, activation, cache, backend=backend)
            assert torch.equal(conv_state, state_ref)
            assert torch.allclose(out.double(), out_ref, rtol=rtol, atol=atol)


@ON_CPU
def test_seq_idx_equals_separate_calls(backend_device):
    """Packed sequences with seq_idx give each sequence's own convolution from zeros."""
    backend = backend_device[0]
    lengths = [5, 0, 1, 30, 3]
    x = torch.randn(1, 6, sum(lengths), dtype=torch.float64)
    weight, bias = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32)[None]
    packed = scangraph.causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx, activation="silu", backend=backend)
    pieces = [scangraph.causal_conv1d_fn(part, weight, bias, activation="silu", backend=backend)
              for part in x.split(lengths, dim=-1)]
    torch.testing.assert_close(packed, torch.cat(pieces, dim=-1), rtol=1e-12, atol=1e-12)


@ON_CPU
def test_final_states_continue_in_the_update(backend_device):
    """A prefix through causal_conv1d_fn, then its final states through causal_conv1d_update one
    input at a time, equals the whole sequence at once (the decoding hand-over)."""
    backend = backend_device[0]
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    weight, bias = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    whole = scangraph.causal_conv1d_fn(x, weight, bias, activation="silu", backend=backend)
    head, state = scangraph.causal_conv1d_fn(x[..., :7], weight, bias, return_final_states=True,
                                             activation="silu", backend=backend)
    steps = [scangraph.causal_conv1d_update(x[..., i], state, weight, bias, "silu", backend=backend)
             for i in range(7, 12)]
    torch.testing.assert_close(torch.cat([head, torch.stack(steps, -1)], -1), whole, rtol=1e-12, atol=1e-12)


def test_final_states_out_is_written():
    x, weight = torch.randn(2, 3, 9), torch.randn(3, 4)
    dest = torch.empty(2, 3, 3)
    _, final = scangraph.causal_conv1d_fn(x, weight, return_final_states=True, final_states_out=dest)
    assert torch.equal(dest, x[..., -3:]) and final is dest  # written and returned, as in causal-conv1d


def test_varlen_states():
    """The package's definition: each sequence's last state_len inputs, zeros where it is shorter."""
    x = torch.randn(20, 6)
    cu = torch.tensor([0, 2, 2, 9, 20], dtype=torch.int32)
    states = scangraph.causal_conv1d_varlen_states(x, cu, 4)
    assert states.shape == (4, 6, 4)
    for s in range(4):
        start, end = int(cu[s]), int(cu[s + 1])
        expected = torch.zeros(6, 4)
        take = min(4, end - start)
        if take:
            expected[:, 4 - take:] = x[end - take:end].t()
        assert torch.equal(states[s], expected)


def _mamba_inner_inputs(batch=2, dim=6, length=37, dstate=4, rank=3, width=4, d_model=5, dtype=torch.float64):
    def mk(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=dtype) * scale).requires_grad_()
    return dict(xz=mk(batch, 2 * dim, length), conv1d_weight=mk(dim, 1, width, scale=0.5), conv1d_bias=mk(dim),
                x_proj_weight=mk(rank + 2 * dstate, dim, scale=0.5), delta_proj_weight=mk(dim, rank, scale=0.5),
                out_proj_weight=mk(d_model, dim), out_proj_bias=mk(d_model),
                A=(-torch.rand(dim, dstate, dtype=dtype) - 0.5).requires_grad_(), D=mk(dim), delta_bias=mk(dim))


def mamba_inner_reference(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                          out_proj_bias, A, D, delta_bias, B_proj_bias=None, C_proj_bias=None):
    """mamba_ssm's mamba_inner_ref, written from its formula with the plain-torch references."""
    length, dim = xz.shape[-1], A.shape[0]
    rank, dstate = delta_proj_weight.shape[1], A.shape[1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv1d_weight, conv1d_bias, padding=conv1d_weight.shape[-1] - 1, groups=dim)[..., :length])
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, dim), x_proj_weight)
    delta = (delta_proj_weight @ x_dbl[:, :rank].t()).reshape(dim, -1, length).transpose(0, 1)
    B, C = x_dbl[:, rank:rank + dstate], x_dbl[:, -dstate:]
    B = B if B_proj_bias is None else B + B_proj_bias
    C = C if C_proj_bias is None else C + C_proj_bias
    B, C = (t.reshape(-1, length, dstate).transpose(1, 2) for t in (B, C))
    y, _ = reference.selective_scan(x, delta, A, B, C, D, z, delta_bias, True)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


@ON_CPU
@pytest.mark.parametrize("checkpoint_lvl", [0, 1])
@pytest.mark.parametrize("proj_bias", [False, True])
def test_mamba_inner_fn(backend_device, checkpoint_lvl, proj_bias):
    backend = backend_device[0]
    if backend in ("cuda_emulated", "triton") and not (checkpoint_lvl and proj_bias):
        pytest.skip("the emulated backends run one combination (a call costs seconds there)")
    inputs = _mamba_inner_inputs()
    extra = dict(B_proj_bias=torch.randn(4, dtype=torch.float64, requires_grad=True),
                 C_proj_bias=torch.randn(4, dtype=torch.float64, requires_grad=True)) if proj_bias else {}
    out = scangraph.mamba_inner_fn(**inputs, **extra, checkpoint_lvl=checkpoint_lvl, backend=backend)
    ref = mamba_inner_reference(**inputs, **extra)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    leaves = list(inputs.values()) + list(extra.values())
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


def test_mamba_inner_fn_rms_norms_and_fixed_bc():
    """The RMS norms of B, C and delta (Jamba-style) and B / C given as (dim, N) parameters, against
    the same composition on the reference backend."""
    inputs = _mamba_inner_inputs(dtype=torch.float64)
    norms = dict(b_rms_weight=torch.rand(4, dtype=torch.float64) + 0.5,
                 c_rms_weight=torch.rand(4, dtype=torch.float64) + 0.5,
                 dt_rms_weight=torch.rand(6, dtype=torch.float64) + 0.5)
    out = scangraph.mamba_inner_fn(**inputs, **norms)
    ref = scangraph.mamba_inner_fn(**inputs, **norms, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    fixed = dict(B=torch.randn(6, 4, dtype=torch.float64), C=torch.randn(6, 4, dtype=torch.float64))
    out = scangraph.mamba_inner_fn(**inputs, **fixed)
    ref = scangraph.mamba_inner_fn(**inputs, **fixed, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_mamba_inner_fn_refuses():
    inputs = _mamba_inner_inputs()
    with pytest.raises(ValueError, match="checkpoint_lvl"):
        scangraph.mamba_inner_fn(**inputs, checkpoint_lvl=2)
    inputs["A"] = torch.randn(6, 4, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex A"):
        scangraph.mamba_inner_fn(**inputs)
