"""Prefix-scan attention (Aaren, "Attention as an RNN", Feng et al. 2024): one learned query
attends causally over a sequence, o_t = sum_{j<=t} softmax_j(scale q . k_j) v_j for every t,
computed as a prefix scan over the state (running max m, denominator c, numerator w).

Ops (schemas in csrc/registration.cpp; `_triton` twins are Triton ops of the same schema):
  prefix_attention            -> (o, m, c, m_last, c_last, w_last): the per-position max and
                                 denominator (batch, L, heads) are all the backward keeps
  prefix_attention_backward   -> (dq, dk, dv, dm0, dc0, dw0): two reverse scans with gates <= 1
                                 (docs/prefix_attention.md), deterministic
  prefix_attention_step       one streaming position, the state updated in place
Each has a fake kernel; prefix_attention's autograd calls the backward op of its own backend.
"""
from typing import Optional, Tuple

import torch

from scangraph import backend as _backend
from scangraph import reference
from scangraph.ops._prefix_attention_lib import _num_seqs  # importing it registers the ops, their fakes and autograd
from scangraph.ops._rules import FLOAT_DTYPES, check_cu_seqlens, dtype_name, dtype_names, opmath_dtype

# ---- public functions ------------------------------------------------------------------------
def _check_tensor(op, name, t, dims, expected):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        raise ValueError(f"{op}: {name} must be {expected}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be {dtype_names(FLOAT_DTYPES)}, got {dtype_name(t.dtype)}")


def _check_qkv(op, q, k, v, k_dims, k_expected, v_expected):
    """The public functions' checks of q, k and v; check_prefix_attention_qkv of
    csrc/glue/prefix_attention_args.h raises the same for callers of the raw ops."""
    _check_tensor(op, "q", q, (2, 3), "(heads, d) or (batch, heads, d)")
    _check_tensor(op, "k", k, k_dims, k_expected)
    _check_tensor(op, "v", v, k_dims, v_expected)
    for name, t in (("q", q), ("v", v)):
        if t.dtype != k.dtype:
            raise TypeError(f"{op}: {name} must have the dtype of k ({dtype_name(k.dtype)}), "
                            f"got {dtype_name(t.dtype)}")
        if t.device != k.device:
            raise ValueError(f"{op}: {name} is on {t.device} but k is on {k.device}")
    heads, dim = k.shape[-2], k.shape[-1]
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"{op}: v must be {v_expected} with the leading sizes of k {tuple(k.shape[:-1])}, "
                         f"got shape {tuple(v.shape)}")
    if q.shape[-2:] != (heads, dim):
        raise ValueError(f"{op}: q must have (heads, d) = ({heads}, {dim}) as its last two sizes (from k), "
                         f"got shape {tuple(q.shape)}")
    if q.dim() == 3 and q.shape[0] != k.shape[0]:
        raise ValueError(f"{op}: a per-batch q must be (batch, heads, d) = ({k.shape[0]}, {heads}, {dim}), "
                         f"got shape {tuple(q.shape)}")


def _check_state(op, state, seqs, heads, dim_v, k, name="initial_state"):
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise TypeError(f"{op}: {name} must be a tuple (m, denom, numer), got {type(state).__name__}"
                        + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
    for part, t, shape in zip(("m", "denom", "numer"), state, ((seqs, heads), (seqs, heads), (seqs, heads, dim_v))):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} {part} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} {part} must have shape {shape} (one per sequence and head), "
                             f"got {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} {part} must be a float tensor, got {dtype_name(t.dtype)}")
        if t.device != k.device:
            raise ValueError(f"{op}: {name} {part} is on {t.device} but k is on {k.device}")


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                     initial_state: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
                     return_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                     backend: str = "auto"):
    """Prefix-scan attention (Aaren): for every position t,
    o_t = sum_{j<=t} exp(s_j - m_t) v_j / sum_{j<=t} exp(s_j - m_t), s_j = scale * q . k_j,
    m_t the running max (started at -inf, so any finite scores are stable).

    Args:
        q: (heads, d) learned query shared by the batch, or (batch, heads, d).
        k: (batch, L, heads, d); v: (batch, L, heads, dv), all of one dtype (float64/32/16, bf16).
        scale: defaults to d ** -0.5.
        initial_state: (m, denom, numer) of shapes (seqs, heads), (seqs, heads), (seqs, heads, dv)
            (seqs = batch, or the number of packed sequences): the state of positions before
            the first, e.g. the returned state of the previous chunk of a stream. m = -inf with
            denom = 0 means empty. Converted to float32 (float64 for float64 inputs).
        return_state: also return the final state (m, denom, numer), in float32 (float64).
        cu_seqlens: int32 (nseq + 1,) offsets of packed sequences along L (batch == 1); the scan
            restarts at each boundary; empty sequences are allowed.
        backend: "auto" | "cpp" | "cuda" | "triton" | "reference" (see scangraph.backend).
    Returns:
        o (batch, L, heads, dv) in the dtype of v [, state]. Gradients reach q, k, v and the
        three tensors of initial_state, also through the returned state; the backward keeps only
        the per-position max and denominator and is deterministic.
    """
    op = "prefix_attention"
    _check_qkv(op, q, k, v, (4,), "(batch, L, heads, d)", "(batch, L, heads, dv)")
    if cu_seqlens is not None:
        check_cu_seqlens(op, cu_seqlens, k, k.shape[0], k.shape[1])
    seqs, heads, dim_v = _num_seqs(k, cu_seqlens), k.shape[2], v.shape[3]
    acc = opmath_dtype(k.dtype)
    if initial_state is not None:
        _check_state(op, initial_state, seqs, heads, dim_v, k)
        initial_state = tuple(t.to(acc) for t in initial_state)
    scale = k.shape[3] ** -0.5 if scale is None else float(scale)
    name = _backend.resolve(op, backend, k.device)
    if name == "reference":
        o, state = reference.prefix_attention(q, k, v, scale, initial_state, cu_seqlens)
        state = tuple(t.to(acc) for t in state)
    else:
        forward = _backend.op_for("prefix_attention", name)
        m0, c0, w0 = initial_state if initial_state is not None else (None, None, None)
        o, _, _, m, c, w = forward(q, k, v, scale, m0, c0, w0, cu_seqlens)
        state = (m, c, w)
    return (o, state) if return_state else o


def prefix_attention_step(state: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], q: torch.Tensor,
                          k_t: torch.Tensor, v_t: torch.Tensor, *, scale: Optional[float] = None,
                          backend: str = "auto") -> torch.Tensor:
    """One streaming position of prefix attention in constant memory: updates state = (m, denom,
    numer) ((batch, heads), (batch, heads), (batch, heads, dv), float32 (float64 for float64
    inputs), contiguous) in place with k_t (batch, heads, d), v_t (batch, heads, dv) and returns
    o_t (batch, heads, dv). Start from the state prefix_attention(..., return_state=True) returns,
    or from (-inf, 0, 0). Inference only: no gradients."""
    op = "prefix_attention_step"
    _check_qkv(op, q, k_t, v_t, (3,), "(batch, heads, d)", "(batch, heads, dv)")
    batch, heads, dim = k_t.shape
    _check_state(op, state, batch, heads, v_t.shape[2], k_t, name="state")
    acc = opmath_dtype(k_t.dtype)
    for part, t in zip(("m", "denom", "numer"), state):
        if t.dtype != acc or not t.is_contiguous():
            raise ValueError(f"{op}: state {part} is updated in place and must be a contiguous {dtype_name(acc)} "
                             f"tensor for {dtype_name(k_t.dtype)} inputs, got {dtype_name(t.dtype)}"
                             f"{'' if t.is_contiguous() else ' (non-contiguous)'}")
    scale = dim ** -0.5 if scale is None else float(scale)
    name = _backend.resolve(op, backend, k_t.device)
    m, c, w = state
    if name == "reference":
        with torch.no_grad():
            o, (m1, c1, w1) = reference.prefix_attention_scan(q, k_t[:, None], v_t[:, None], scale, (m, c, w))
            m.copy_(m1)
            c.copy_(c1)
            w.copy_(w1)
        return o[:, 0]
    return _backend.op_for("prefix_attention_step", name)(m, c, w, q, k_t, v_t, scale)
