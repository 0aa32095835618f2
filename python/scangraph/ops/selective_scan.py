"""Selective scan (Mamba's S6 recurrence): selective_scan and selective_state_update.

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t . h_t + D u_t,   out_t = y_t silu(z_t)

`selective_scan` takes mamba_ssm's `selective_scan_fn` arguments in the same order and adds
what its kernel lacks: `initial_state` in (with its gradient), `cu_seqlens` for packed
variable-length sequences, `reverse=True`, and a deterministic backward.

Each backend is the op `scangraph::selective_scan` (C++ on CPU, CUDA on GPU) or
`scangraph::selective_scan_triton`. The forward returns (out, last_state, checkpoints): the
checkpoints are the state entering every SCAN_CHUNK positions, all the backward op keeps; it
recomputes each chunk's states from them, so no (batch, dim, L, N) tensor is ever stored.
"""

import torch

from scangraph import backend as _backend
from scangraph import reference
from scangraph.ops import _selective_scan_lib  # noqa: F401  (importing it registers the ops, their fakes and autograd)
from scangraph.ops._rules import check_cu_seqlens, check_tensor, dtype_name, opmath_dtype

MAX_DSTATE = 256

# ---- checks ---------------------------------------------------------------------------------
def _check_bc(op, name, t, u, dstate):
    batch, dim, length = u.shape
    check_tensor(op, name, t, like=u)
    if t.dim() == 2:
        if tuple(t.shape) != (dim, dstate):
            raise ValueError(f"{op}: fixed {name} must be (dim, N) = {(dim, dstate)}, got {tuple(t.shape)}")
        return 0
    if t.dim() not in (3, 4):
        raise ValueError(f"{op}: {name} must be (dim, N), (batch, N, L) or (batch, groups, N, L), "
                         f"got shape {tuple(t.shape)}")
    groups = t.shape[1] if t.dim() == 4 else 1
    if (t.shape[0], t.shape[-2], t.shape[-1]) != (batch, dstate, length):
        raise ValueError(f"{op}: varying {name} must be (batch, groups, N, L) with batch={batch}, N={dstate}, "
                         f"L={length}, got {tuple(t.shape)}")
    if groups < 1 or dim % groups:
        raise ValueError(f"{op}: dim ({dim}) must be divisible by the number of groups of {name} ({groups})")
    if t.dtype != u.dtype:
        raise TypeError(f"{op}: varying {name} must have u's dtype ({dtype_name(u.dtype)}), got {dtype_name(t.dtype)}")
    return groups


def _per_channel(t, groups, u):
    """B or C as varying with one group per channel, (batch, dim, N, L) in u's dtype: a fixed
    (dim, N) one broadcast over batch and L, a varying one's groups repeated over their channels
    (channel d reads group d // (dim / groups), mamba_ssm's rule). What running one fixed and one
    varying takes: the kernels read B and C alike. Costs batch * dim * N * L values each (autograd
    sums the fixed one's gradient back over batch and L)."""
    batch, dim, length = u.shape
    if groups == 0:
        return t.to(u.dtype)[None, :, :, None].expand(batch, dim, t.shape[1], length)
    t = t if t.dim() == 4 else t[:, None]
    return t.repeat_interleave(dim // t.shape[1], dim=1)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, cu_seqlens=None, reverse=False,
                   backend="auto"):
    """Mamba's selective scan, a drop-in for mamba_ssm's `selective_scan_fn` (Gu & Dao 2023).

    Args:
        u, delta: (batch, dim, L), float32 / float16 / bfloat16 (float64 for tests).
        A: (dim, N) real, N <= 256. B, C: (dim, N) fixed, or (batch, N, L) / (batch, groups, N, L)
            varying in u's dtype, dim divisible by groups; both varying with one number of groups,
            or one fixed and one varying (as mamba_ssm allows; both then run per channel, which
            costs batch * dim * N * L values each).
        D, delta_bias: (dim,). z: (batch, dim, L): out = y * silu(z).
        delta_softplus: delta = softplus(delta + delta_bias) (mamba's softplus, linear above 20).
        return_last_state: also return the final state (states, dim, N), float32 (float64).
        initial_state: (states, dim, N), the state before the first position (default 0);
            states = batch, or the number of sequences with cu_seqlens. Differentiable.
        cu_seqlens: int32 (num_sequences + 1,) offsets into L (batch must be 1): packed
            sequences, each scanned from its own initial state.
        reverse: scan from the last position to the first.
        backend: "auto" | "cpp" | "cuda" | "triton" | "reference".
    Returns:
        out (batch, dim, L) in u's dtype, or (out, last_state). The state and every sum are
        float32 (float64 for float64 u). The backward keeps only the checkpoints (the state
        every 64 positions), and it is deterministic: no atomics.
    """
    op = "selective_scan"
    check_tensor(op, "u", u)
    if u.dim() != 3:
        raise ValueError(f"{op}: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    check_tensor(op, "delta", delta, u.shape, (u.dtype,), like=u)
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError(f"{op}: complex A (mamba_ssm's S4D-style wtype=complex64) is not supported; use real A "
                        "(Mamba's S4D-real initialisation) or mamba_ssm's selective_scan_fn for complex A")
    check_tensor(op, "A", A, like=u)
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"{op}: A must be (dim, N) with dim = {dim}, got shape {tuple(A.shape)}")
    dstate = A.shape[1]
    if not 1 <= dstate <= MAX_DSTATE:
        raise ValueError(f"{op}: the state size N = A.shape[1] must be in [1, {MAX_DSTATE}], got {dstate}")
    groups_b, groups_c = _check_bc(op, "B", B, u, dstate), _check_bc(op, "C", C, u, dstate)
    if groups_b != groups_c and 0 not in (groups_b, groups_c):
        raise ValueError(f"{op}: B and C must have one number of groups when both vary, got {tuple(B.shape)} and "
                         f"{tuple(C.shape)}")

    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_tensor(op, name, t, (dim,), like=u)
    if z is not None:
        check_tensor(op, "z", z, u.shape, (u.dtype,), like=u)
    states = batch
    if cu_seqlens is not None:
        states = check_cu_seqlens(op, cu_seqlens, u, u.shape[0], u.shape[2])
    if initial_state is not None:
        check_tensor(op, "initial_state", initial_state, (states, dim, dstate), like=u)
    name = _backend.resolve(op, backend, u.device)
    if groups_b != groups_c and name != "reference":  # one fixed, one varying (mamba_ssm allows it): the
        B, C = _per_channel(B, groups_b, u), _per_channel(C, groups_c, u)  # kernels run both per channel
    if name == "reference":  # takes each of B, C fixed or varying as it comes
        out, last_state = reference.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                   initial_state, cu_seqlens, reverse)
        last_state = last_state.to(opmath_dtype(u.dtype))
    else:
        out, last_state, _ = _backend.op_for("selective_scan", name)(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state,
                                  cu_seqlens, bool(reverse))
    return (out, last_state) if return_last_state else out


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None, *, backend="auto"):
    """One decoding step of the selective scan, mamba_ssm's `selective_state_update` (its
    signature, layouts and return value). Updates `state` in place and returns y.

    Single-head layout: state (batch, dim, N); x, dt, z (batch, dim); A (dim, N); B, C (batch, N)
    or (batch, groups, N); D, dt_bias (dim,). Multi-head layout (Mamba-2-style callers): state
    (batch, nheads, dim, N); x, dt, z (batch, nheads, dim); A (nheads, dim, N); B, C (batch,
    ngroups, N) with ngroups dividing nheads (head h reads group h // (nheads / ngroups)); D,
    dt_bias (nheads, dim). Strided (e.g. broadcast) dt, A, D and dt_bias are accepted.

    state_batch_indices: (batch,) int, continuous batching: row b updates state slot
    state_batch_indices[b] (state then has one row per cache slot); a negative index is a
    padding slot, whose y is 0 and whose state is not touched. B and C may be in another float
    dtype than x (autocast): the step runs in the widest of them and y is returned in x's dtype.
    Equals selective_scan over one position with initial_state=state. No gradient (inference).
    """
    op = "selective_state_update"
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        return _multi_head_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices,
                                        backend)
    if state_batch_indices is None:
        return _state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend)
    check_tensor(op, "x", x)
    if not isinstance(state_batch_indices, torch.Tensor) or state_batch_indices.dtype not in (torch.int32,
                                                                                             torch.int64) \
            or tuple(state_batch_indices.shape) != (x.shape[0],):
        raise ValueError(f"{op}: state_batch_indices must be an int32 / int64 ({x.shape[0]},) tensor, got "
                         f"{getattr(state_batch_indices, 'dtype', type(state_batch_indices).__name__)} "
                         f"{tuple(getattr(state_batch_indices, 'shape', ()))}")
    check_tensor(op, "state", state, like=x, like_name="x")
    slots = state_batch_indices.to(device=state.device, dtype=torch.int64)
    if slots.numel() and int(slots.max()) >= state.shape[0]:
        raise ValueError(f"{op}: state_batch_indices holds slot {int(slots.max())}, but state has "
                         f"{state.shape[0]} slots")
    live = slots >= 0
    work = state.index_select(0, slots.clamp(min=0))  # the rows' states, gathered
    y = _state_update(work, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend)
    state.index_copy_(0, slots[live], work[live])
    return y.masked_fill(~live.reshape((-1,) + (1,) * (y.dim() - 1)), 0)


def _multi_head_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, backend):
    """The multi-head layout as the single-head one over nheads * dim channels: channel h * dim +
    d of group g covers heads g * nheads / ngroups onwards, as in mamba_ssm, so B / C keep their shape."""
    op = "selective_state_update"
    batch, nheads, dim = x.shape
    dstate = A.shape[-1] if isinstance(A, torch.Tensor) else 0
    shapes = {"dt": (dt, (batch, nheads, dim)), "A": (A, (nheads, dim, dstate)), "z": (z, (batch, nheads, dim)),
              "D": (D, (nheads, dim)), "dt_bias": (dt_bias, (nheads, dim))}
    for name, (t, shape) in shapes.items():
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != shape):
            raise ValueError(f"{op}: with x of shape (batch, nheads, dim) = {tuple(x.shape)}, {name} must be "
                             f"{shape}, got {tuple(getattr(t, 'shape', ()))}")
    for name, t in (("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] != batch or t.shape[2] != dstate \
                or nheads % t.shape[1]:
            raise ValueError(f"{op}: with {nheads} heads, {name} must be (batch, ngroups, N) with ngroups dividing "
                             f"nheads, got {tuple(getattr(t, 'shape', ()))}")
    if not isinstance(state, torch.Tensor) or state.dim() != 4 or tuple(state.shape[1:]) != (nheads, dim, dstate):
        raise ValueError(f"{op}: with {nheads} heads, state must be (batch, nheads, dim, N) = "
                         f"(*, {nheads}, {dim}, {dstate}), got {tuple(getattr(state, 'shape', ()))}")
    channels = nheads * dim

    def flat(t, *lead):
        return None if t is None else t.reshape(*lead, channels)

    flat_state = state.view(state.shape[0], channels, dstate) if state.is_contiguous() else \
        state.reshape(state.shape[0], channels, dstate)
    y = selective_state_update(flat_state, flat(x, batch), flat(dt, batch), A.reshape(channels, dstate), B, C,
                               flat(D), flat(z, batch), flat(dt_bias), dt_softplus, state_batch_indices,
                               backend=backend)
    if flat_state.data_ptr() != state.data_ptr() or not state.is_contiguous():
        state.copy_(flat_state.view_as(state))  # a strided state was worked on as a copy
    return y.reshape(batch, nheads, dim)


def _state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    """The single-head step (public contract in selective_state_update)."""
    op = "selective_state_update"
    check_tensor(op, "x", x)
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be (batch, dim), got shape {tuple(x.shape)}")
    batch, dim = x.shape
    check_tensor(op, "dt", dt, x.shape, (x.dtype,), like=x, like_name="x")
    check_tensor(op, "A", A, like=x, like_name="x")
    if A.dim() != 2 or A.shape[0] != dim or not 1 <= A.shape[1] <= MAX_DSTATE:
        raise ValueError(f"{op}: A must be (dim, N) with dim = {dim} and N <= {MAX_DSTATE}, got {tuple(A.shape)}")
    dstate = A.shape[1]
    check_tensor(op, "state", state, (batch, dim, dstate), like=x, like_name="x")
    for name, t in (("B", B), ("C", C)):
        check_tensor(op, name, t, like=x, like_name="x")
        groups = t.shape[1] if t.dim() == 3 else 1
        if t.dim() not in (2, 3) or t.shape[0] != batch or t.shape[-1] != dstate or dim % groups:
            raise ValueError(f"{op}: {name} must be (batch, N) or (batch, groups, N) with groups dividing dim, "
                             f"got {tuple(t.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None:
            check_tensor(op, name, t, (dim,), like=x, like_name="x")
    if z is not None:
        check_tensor(op, "z", z, x.shape, (x.dtype,), like=x, like_name="x")
    name = _backend.resolve(op, backend, x.device)
    out_dtype = x.dtype
    wide = torch.promote_types(torch.promote_types(x.dtype, B.dtype), C.dtype)
    if wide != x.dtype or B.dtype != C.dtype:
        # Mixed precision, as under autocast (B / C from fp32 projections, x in fp16 / bf16):
        # every input in the widest dtype loses nothing (the kernels accumulate in fp32 anyway);
        # y comes back in x's dtype, as in mamba_ssm.
        x, dt, B, C = x.to(wide), dt.to(wide), B.to(wide), C.to(wide)
        z = None if z is None else z.to(wide)
    if name == "reference":
        y, new_state = reference.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
        state.copy_(new_state)
        return y.to(out_dtype)
    y = _backend.op_for("selective_state_update", name)(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))
    return y.to(out_dtype)
