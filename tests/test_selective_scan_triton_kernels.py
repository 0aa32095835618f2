"""The Triton selective-scan launchers called directly (no op registration) against the float64
reference: forward outputs, last states and checkpoints, the backward against autograd, and the
decode step. Tiny shapes: on CPU the kernels run in Triton's interpreter (conftest sets it)."""
import math

import pytest
import torch

from scangraph import reference

triton_kernels = pytest.importorskip("scangraph.triton_kernels")
if triton_kernels.UNAVAILABLE is not None:
    pytest.skip(f"triton is unavailable: {triton_kernels.UNAVAILABLE}", allow_module_level=True)
from scangraph.ops._rules import SCAN_CHUNK as CHUNK, opmath_dtype as _acc  # noqa: E402
from scangraph.triton_kernels import selective_scan as kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not triton_kernels.INTERPRETED else "cpu"


def make_case(batch, dim, length, dstate, groups=None, dtype=torch.float64, D=True, z=True, bias=True,
              softplus=True, h0=True, cu=None, reverse=False):
    """Inputs in the launchers' layouts: groups None means fixed (dim, N) B / C."""
    acc = _acc(dtype)
    opts = dict(device=DEVICE)
    u = torch.randn(batch, dim, length, **opts).to(dtype)
    if softplus:
        delta = (torch.randn(batch, dim, length, **opts) - 1.0).to(dtype)
    else:
        delta = (torch.rand(batch, dim, length, **opts) * 0.5 + 0.05).to(dtype)
    A = -(torch.rand(dim, dstate, **opts) + 0.5).to(acc)
    if groups is None:
        B = torch.randn(dim, dstate, **opts).to(acc)
        C = torch.randn(dim, dstate, **opts).to(acc)
    else:
        B = torch.randn(batch, groups, dstate, length, **opts).to(dtype)
        C = torch.randn(batch, groups, dstate, length, **opts).to(dtype)
    states = batch if cu is None else len(cu) - 1
    return dict(
        u=u, delta=delta, A=A, B=B, C=C,
        D=torch.randn(dim, **opts).to(acc) if D else None,
        z=torch.randn(batch, dim, length, **opts).to(dtype) if z else None,
        delta_bias=(torch.randn(dim, **opts) * 0.3).to(acc) if bias else None,
        delta_softplus=softplus,
        initial_state=torch.randn(states, dim, dstate, **opts).to(acc) if h0 else None,
        cu_seqlens=None if cu is None else torch.tensor(cu, dtype=torch.int32, device=DEVICE),
        reverse=reverse)


def run_forward(case):
    u, A = case["u"], case["A"]
    batch, dim, length = u.shape
    acc = _acc(u.dtype)
    states = batch if case["cu_seqlens"] is None else case["cu_seqlens"].numel() - 1
    out = torch.empty_like(u)
    last = torch.empty(states, dim, A.shape[1], dtype=acc, device=u.device)
    ckpt = torch.empty(batch, dim, math.ceil(length / CHUNK), A.shape[1], dtype=acc, device=u.device)
    kernels.launch_selective_scan(out=out, last_state=last, checkpoints=ckpt, **case)
    return out, last, ckpt


def run_backward(case, grad_out, grad_last, checkpoints):
    u, A, B = case["u"], case["A"], case["B"]
    grads = dict(
        du=torch.empty_like(u), ddelta=torch.empty_like(u),
        dz=torch.empty_like(u) if case["z"] is not None else None,
        dA=torch.empty_like(A), dB=torch.empty_like(B), dC=torch.empty_like(case["C"]),
        dD=torch.empty_like(case["D"]) if case["D"] is not None else None,
        ddelta_bias=torch.empty_like(case["delta_bias"]) if case["delta_bias"] is not None else None,
        dinitial_state=torch.empty_like(case["initial_state"]) if case["initial_state"] is not None else None)
    kernels.launch_selective_scan_backward(grad_out, grad_last, checkpoints=checkpoints, **case, **grads)
    return grads


def _as64(t):
    return None if t is None else t.detach().double()


def reference_forward(case, **override):
    args = {k: (_as64(v) if isinstance(v, torch.Tensor) and k != "cu_seqlens" else v) for k, v in case.items()}
    args.update(override)
    return reference.selective_scan(**args)


def reference_checkpoints(case):
    """The carried state entering scan position k * 64 (before a reset there), from the reference
    run on the prefix of the scan order (a suffix of the positions when reverse)."""
    u = case["u"]
    batch, dim, length = u.shape
    dstate = case["A"].shape[1]
    cu = None if case["cu_seqlens"] is None else [int(v) for v in case["cu_seqlens"]]
    out = torch.zeros(batch, dim, math.ceil(length / CHUNK), dstate, dtype=torch.float64, device=u.device)
    for k in range(1, out.shape[2]):
        p = k * CHUNK
        lo, hi = (length - p, length) if case["reverse"] else (0, p)

        def cut(t):
            return t[..., lo:hi] if t is not None and t.dim() >= 3 else t

        override = {name: cut(_as64(case[name])) for name in ("u", "delta", "z", "B", "C")}
        if cu is None:
            _, last = reference_forward(case, **override)
            out[:, :, k] = last
            continue
        # the sequence holding the last processed position, with offsets clipped to the window
        t_last = length - p if case["reverse"] else p - 1
        seq = max(i for i in range(len(cu) - 1) if cu[i] <= t_last < cu[i + 1])
        clipped = torch.tensor([min(max(c - lo, 0), hi - lo) for c in cu], dtype=torch.int32)
        _, last = reference_forward(case, cu_seqlens=clipped, **override)
        out[:, :, k] = last[seq]
    return out


def reference_grads(case, grad_out, grad_last):
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    leaves = {}
    args = {}
    for k, v in case.items():
        if isinstance(v, torch.Tensor) and k != "cu_seqlens":
            args[k] = _as64(v).requires_grad_(k in names)
            if k in names:
                leaves[k] = args[k]
        else:
            args[k] = v
    out, last = reference.selective_scan(**args)
    loss = (out * grad_out.double()).sum()
    if grad_last is not None:
        loss = loss + (last * grad_last.double()).sum()
    got = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: (torch.zeros_like(leaves[k]) if g is None else g) for k, g in zip(leaves, got)}


GRAD_NAMES = {"u": "du", "delta": "ddelta", "A": "dA", "B": "dB", "C": "dC", "D": "dD", "z": "dz",
              "delta_bias": "ddelta_bias", "initial_state": "dinitial_state"}


def _close(actual, expected, dtype, scale=1.0):
    if dtype == torch.float64:
        atol, rtol = 1e-10 * scale, 1e-10
    else:  # fp32 accumulation over L and N: relative to the float64 reference
        atol, rtol = 2e-5 * scale, 2e-4
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def check_case(case, backward=True, grad_last=True, scale=1.0, repeat=False):
    dtype = case["u"].dtype
    out, last, ckpt = run_forward(case)
    ref_out, ref_last = reference_forward(case)
    _close(out, ref_out, dtype, scale)
    _close(last, ref_last, dtype, scale)
    _close(ckpt, reference_checkpoints(case), dtype, scale)
    if not backward:
        return
    grad_out = torch.randn_like(out)
    g_last = torch.randn_like(last) if grad_last else None
    grads = run_backward(case, grad_out, g_last, ckpt)
    expected = reference_grads(case, grad_out, g_last)
    for name, ref in expected.items():
        got = grads[GRAD_NAMES[name]]
        assert got is not None, name
        try:
            _close(got, ref, dtype, scale * 10)
        except AssertionError as error:
            raise AssertionError(f"gradient of {name}: {error}") from None
    # Bitwise reproducible: no atomics, fixed-order reductions. Shown on a GPU only: the
    # interpreter runs a launch's programs one after another, so its repeat cannot differ.
    if repeat and not triton_kernels.INTERPRETED:
        again = run_backward(case, grad_out, g_last, ckpt)
        for key, value in grads.items():
            if value is not None:
                assert torch.equal(value, again[key]), key


def test_fixed_bc_all_options():
    check_case(make_case(2, 3, 70, 3))


def test_varying_groups_reverse_no_softplus():
    check_case(make_case(1, 4, 70, 16, groups=2, reverse=True, softplus=False, z=False, bias=False))


@pytest.mark.parametrize("reverse", [False, True])
def test_cu_seqlens_with_short_and_empty_sequences(reverse):
    # a length-1 sequence, an empty one, and one crossing the checkpoint at 64
    check_case(make_case(1, 2, 70, 1, groups=1, cu=[0, 1, 1, 40, 70], reverse=reverse))


def test_cu_seqlens_fixed_bc_empty_last_without_h0():
    check_case(make_case(1, 2, 66, 3, cu=[0, 64, 66, 66], h0=False, D=False), grad_last=False)


def test_float32_against_float64_reference():
    check_case(make_case(1, 2, 70, 16, groups=1, dtype=torch.float32, reverse=True), scale=10)


def test_scan_partitions_matches_the_header():
    assert [kernels.scan_partitions(c) for c in (1, 63, 64, 128, 200, 1024, 4096)] == [1, 1, 1, 2, 3, 16, 16]


def test_partitions_of_a_group(monkeypatch):
    # Several partitions per group own dB / dC partials summed in order. Real shapes need 128
    # channels per group, too slow for the interpreter: force 2 partitions of 3 channels.
    monkeypatch.setattr(kernels, "scan_partitions", lambda channels: 2)
    check_case(make_case(2, 6, 70, 3, groups=1, z=False), repeat=True)


@pytest.mark.parametrize("forward_tile", [64, 4096])
def test_sub_chunks(monkeypatch, forward_tile):
    # Large N scans tiles shorter than a chunk (N = 64 scans 16 positions in the backward); the
    # backward then advances from the chunk's checkpoint. A smaller tile budget exercises it with
    # N = 3, with the forward's tile as short or a whole chunk.
    monkeypatch.setattr(kernels, "MAX_TILE", forward_tile)
    monkeypatch.setattr(kernels, "MAX_BACKWARD_TILE", 64)
    assert kernels.state_block(3, backward=True) == (4, 16)
    assert kernels.state_block(3) == (4, 16 if forward_tile == 64 else 64)
    check_case(make_case(2, 2, 70, 3, groups=2, cu=None, reverse=True))


def test_empty_length():
    case = make_case(2, 2, 0, 3)
    out, last, ckpt = run_forward(case)
    assert out.shape == (2, 2, 0) and ckpt.shape == (2, 2, 0, 3)
    torch.testing.assert_close(last, case["initial_state"])
    g_last = torch.randn_like(last)
    grads = run_backward(case, torch.empty_like(out), g_last, ckpt)
    torch.testing.assert_close(grads["dinitial_state"], g_last)
    assert torch.equal(grads["dA"], torch.zeros_like(grads["dA"]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("groups", [1, 2])
def test_state_update(dtype, groups):
    batch, dim, dstate = 2, 4, 3
    acc = _acc(dtype)
    state = torch.randn(batch, dim, dstate, device=DEVICE).to(acc)
    x = torch.randn(batch, dim, device=DEVICE).to(dtype)
    dt = torch.randn(batch, dim, device=DEVICE).to(dtype)
    A = -(torch.rand(dim, dstate, device=DEVICE) + 0.5).to(acc)
    B = torch.randn(batch, groups, dstate, device=DEVICE).to(dtype)
    C = torch.randn(batch, groups, dstate, device=DEVICE).to(dtype)
    D = torch.randn(dim, device=DEVICE).to(acc)
    z = torch.randn(batch, dim, device=DEVICE).to(dtype)
    bias = torch.randn(dim, device=DEVICE).to(acc)
    ref_out, ref_state = reference.selective_state_update(
        *(t.double() for t in (state, x, dt, A, B, C, D, z, bias)), dt_softplus=True)
    out = torch.empty_like(x)
    work = state.clone()
    kernels.launch_selective_state_update(work, x, dt, A, B, C, D, z, bias, True, out)
    _close(out, ref_out, dtype)
    _close(work, ref_state, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    # fp32 accumulation; only the outputs and the T-typed gradients are rounded to dtype.
    case = make_case(1, 2, 70, 3, groups=1, dtype=dtype, cu=[0, 5, 5, 70])
    atol, rtol = {torch.float16: (2e-3, 5e-3), torch.bfloat16: (1e-2, 2e-2)}[dtype]
    out, last, ckpt = run_forward(case)
    ref_out, ref_last = reference_forward(case)
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(last.double(), ref_last, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(out)
    grad_last = torch.randn_like(last)
    grads = run_backward(case, grad_out, grad_last, ckpt)
    for name, ref in reference_grads(case, grad_out, grad_last).items():
        got = grads[GRAD_NAMES[name]]
        scale = 4 * ref.abs().max().item() if got.dtype == dtype else 1e-3
        torch.testing.assert_close(got.double(), ref, atol=atol * scale, rtol=rtol, msg=name)


@pytest.mark.parametrize("target, reverse, groups, forward, backward", [
    (1, False, 1, 1, 1), (32, True, None, 2, 2), (32, False, 1, 2, 4), (10**6, True, 1, 4, 4)])
def test_segments_of_the_scan_order(monkeypatch, target, reverse, groups, forward, backward):
    # L = 200 is 4 chunks, the last one short. The GPU target decides how many segments the
    # forward and the backward cut it into (their summary pass, composition and full pass); the
    # packed sequences cross segment boundaries, one is empty and one has a single position.
    monkeypatch.setattr(kernels, "TARGET_WARPS", target)
    monkeypatch.setattr(kernels, "scan_partitions", lambda channels: 2)
    assert kernels.scan_segments(4, 4, 200)[1] == forward    # 4 channels, 4 warps each
    programs = 4
    if groups is not None:  # 2 partitions, or one per channel when the target wants more
        programs = kernels.backward_partitions(1, 1, 4, 200, 4)
        assert programs == (4 if target > 100 else 2)
    assert kernels.scan_segments(programs, 4, 200)[1] == backward
    case = make_case(1, 4, 200, 3, groups=groups, cu=[0, 1, 1, 100, 199, 200], reverse=reverse)
    check_case(case, repeat=True)


def test_segments_fill_the_gpu():
    # Whole chunks per segment, as few segments as give TARGET_WARPS, never more than the chunks.
    assert kernels.scan_segments(8 * 16, 8, 4096) == (448, 10)     # the bench backward, varying B / C
    assert kernels.backward_partitions(8, 1, 2048, 4096, 8) == 16  # its partitions: scan_partitions
    assert kernels.backward_partitions(2, 1, 512, 2048, 8) == 17   # b2 d512 L2048: more fill the GPU
    assert kernels.backward_partitions(1, 1, 3, 64, 8) == 3        # at most one per channel
    assert kernels.scan_segments(8 * 2048, 4, 4096) == (4096, 1)   # the bench forward: channels suffice
    assert kernels.scan_segments(64, 4, 100_000) == (3008, 34)     # a GraphMamba-style packed call
    assert kernels.scan_segments(1, 4, 64) == (64, 1)
    assert kernels.scan_segments(1, 4, 0) == (1, 1)
