"""Plain-PyTorch references of every op: the tests' oracle (run them in float64).

Written for clarity, not speed: each follows the formula of its family's docs/<family>.md directly
and gets its gradients from autograd.
"""
from typing import Optional

import torch


def _edge_rows(rowptr: torch.Tensor) -> torch.Tensor:
    """Destination row of every CSR edge."""
    degree = rowptr[1:] - rowptr[:-1]
    return torch.repeat_interleave(torch.arange(degree.numel(), device=rowptr.device), degree)


def _broadcast_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(E,) or (E, heads) weights shaped to multiply gathered (E, [heads,] F) features."""
    return weight.reshape(weight.shape + (1,) * (x.dim() - weight.dim()))


def spmm(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, reduce: str = "sum",
         edge_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[i] = sum (or mean) over edges e of row i of w[e] * x[col[e]]; empty rows give 0."""
    rows = _edge_rows(rowptr)
    messages = x[col.long()]
    if edge_weight is not None:
        messages = messages * _broadcast_weight(edge_weight, messages)
    if reduce in ("max", "min"):
        return _extreme(rows, messages, rowptr.numel() - 1, reduce)
    out = torch.zeros((rowptr.numel() - 1,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    out = out.index_add(0, rows, messages)
    if reduce == "mean":
        degree = (rowptr[1:] - rowptr[:-1]).clamp(min=1).to(x.dtype)
        out = out / degree.reshape((-1,) + (1,) * (x.dim() - 1))
    elif reduce != "sum":
        raise ValueError(f"reduce must be 'sum', 'mean', 'max' or 'min', got {reduce!r}")
    return out


def spmm_arg(rowptr, col, x, reduce, edge_weight=None):
    """(out, arg) of max / min spmm: arg is the winning edge id, -1 for empty rows."""
    rows = _edge_rows(rowptr)
    messages = x[col.long()]
    if edge_weight is not None:
        messages = messages * _broadcast_weight(edge_weight, messages)
    return _extreme(rows, messages, rowptr.numel() - 1, reduce, with_arg=True)


def _extreme(rows, messages, num_rows, reduce, with_arg=False):
    """Max / min of messages per row; the winner is the first edge in CSR order on ties, and
    only the winner receives gradient. Empty rows give 0."""
    num_edges = messages.shape[0]
    shape = (num_rows,) + tuple(messages.shape[1:])
    index = rows.reshape((-1,) + (1,) * (messages.dim() - 1)).expand_as(messages)
    start = float("-inf") if reduce == "max" else float("inf")
    best = torch.full(shape, start, dtype=messages.dtype, device=messages.device).scatter_reduce(
        0, index, messages.detach(), "amax" if reduce == "max" else "amin")
    edge_ids = torch.arange(num_edges, device=messages.device).reshape(index.shape[:1] + (1,) * (messages.dim() - 1))
    candidates = torch.where(messages.detach() == best[rows], edge_ids.expand_as(messages), num_edges)
    arg = torch.full(shape, num_edges, device=messages.device).scatter_reduce(0, index, candidates, "amin")
    # A zero row appended to the messages serves empty rows (arg == num_edges) and keeps
    # autograd connected on graphs without edges.
    padded = torch.cat([messages, messages.new_zeros((1,) + tuple(messages.shape[1:]))])
    out = padded.gather(0, arg)
    if with_arg:
        return out, torch.where(arg == num_edges, -1, arg)
    return out


def sddmm(rowptr: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out[e] = a[row(e)] . b[col[e]] over the last dimension: (E,) or (E, heads)."""
    return (a[_edge_rows(rowptr)] * b[col.long()]).sum(-1)


_MASK32 = 0xFFFFFFFF
# Philox4x32-10's round multipliers and key increments (Random123; csrc/include/scangraph/philox.h).
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _mulhilo32(a: int, b: torch.Tensor):
    """(high, low) 32-bit words of a * b for uint32 values held in int64 (no int64 overflow: b is
    split in 16-bit halves)."""
    low_part, high_part = a * (b & 0xFFFF), a * (b >> 16)
    high = ((low_part >> 16) + high_part) >> 16
    low = (low_part + ((high_part & 0xFFFF) << 16)) & _MASK32
    return high & _MASK32, low


def philox4x32_10_word0(counter, key) -> torch.Tensor:
    """Word 0 of Philox4x32-10 (Salmon et al., SC 2011) of counters (c0, c1, c2, c3) (int64
    tensors holding uint32 values) under key (k0, k1) (ints), as int64."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W[0]) & _MASK32, (k1 + _PHILOX_W[1]) & _MASK32
    return c0


def dropout_threshold(p: float) -> int:
    """Elements whose 24 random bits are >= this are kept: floor(p * 2^24 + 1/2)."""
    return int(p * (1 << 24) + 0.5)  # rounded half up, as philox.h computes it


def dropout_keep(rng: torch.Tensor, numel: int, p: float) -> torch.Tensor:
    """(numel,) bool: which elements n = 0 .. numel - 1 a fused kernel's dropout keeps, for
    rng = (seed, offset) (int64): the bit layout of csrc/include/scangraph/philox.h."""
    seed, offset = (int(v) & ((1 << 64) - 1) for v in rng.tolist())
    n = torch.arange(numel, dtype=torch.int64, device=rng.device)
    zeros = torch.zeros_like(n)
    counter = (n & _MASK32, n >> 32, zeros + (offset & _MASK32), zeros + (offset >> 32))
    word0 = philox4x32_10_word0(counter, (seed & _MASK32, seed >> 32))
    return (word0 >> 8) >= dropout_threshold(p)


def gat_attention(rowptr: torch.Tensor, col: torch.Tensor, alpha_src: torch.Tensor, alpha_dst: torch.Tensor,
                  negative_slope: float = 0.2) -> torch.Tensor:
    """(E, heads) attention coefficients in CSR order: softmax over each row's edges of
    leaky_relu(alpha_src[j] + alpha_dst[i])."""
    rows, cols = _edge_rows(rowptr), col.long()
    num_rows = rowptr.numel() - 1
    scores = torch.nn.functional.leaky_relu(alpha_src[cols] + alpha_dst[rows], negative_slope)
    index = rows[:, None].expand_as(scores)
    row_max = torch.full((num_rows, scores.shape[1]), float("-inf"), dtype=scores.dtype,
                         device=scores.device).scatter_reduce(0, index, scores.detach(), "amax")
    weights = torch.exp(scores - row_max[rows])
    denominator = torch.zeros_like(row_max).index_add(0, rows, weights)
    return weights / denominator[rows]


def gat_aggregate(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, alpha_src: torch.Tensor,
                  alpha_dst: torch.Tensor, negative_slope: float = 0.2, dropout: float = 0.0,
                  rng: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[i] = sum_j m_ij / (1 - p) softmax_j(leaky_relu(alpha_src[j] + alpha_dst[i])) x[j] per
    head, with x (N, heads, F) and alpha (N, heads); the (E, heads) scores are materialised. With
    dropout p > 0, m = dropout_keep(rng, E * heads, p) over (CSR edge, head); the softmax is over
    the full row (the mask follows it, as in PyG)."""
    rows, cols = _edge_rows(rowptr), col.long()
    num_rows = rowptr.numel() - 1
    attention = gat_attention(rowptr, col, alpha_src, alpha_dst, negative_slope)
    if dropout > 0:
        keep = dropout_keep(rng, attention.numel(), dropout).view(attention.shape)
        scale = 1.0 / (1.0 - dropout) if dropout < 1 else 0.0
        attention = attention * keep.to(attention.dtype) * scale
    out = torch.zeros((num_rows,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    return out.index_add(0, rows, attention[..., None] * x[cols])


def common_neighbor_aggregate(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, src: torch.Tensor,
                              dst: torch.Tensor) -> torch.Tensor:
    """out[q] = sum of x[k] over k in N(src[q]) and N(dst[q]) (rows of the CSR; a column repeated
    in both rows counts min(times in one, times in the other)); dense multiplicities, small graphs."""
    num_nodes = rowptr.numel() - 1
    counts = torch.zeros(num_nodes, x.shape[0], dtype=x.dtype, device=x.device)
    counts.index_put_((_edge_rows(rowptr), col.long()), torch.ones_like(col, dtype=x.dtype), accumulate=True)
    weights = torch.minimum(counts[src], counts[dst])
    return (weights @ x.flatten(1)).reshape((src.numel(),) + tuple(x.shape[1:]))


# ---- selective scan (docs/selective_scan.md) -------------------------------------------------
def _softplus(x: torch.Tensor) -> torch.Tensor:
    # mamba_ssm's softplus: log1p(exp(x)), the identity above 20
    return torch.where(x <= 20, torch.log1p(torch.exp(torch.clamp(x, max=20))), x)


def _scan_bc_at(t: torch.Tensor, position: int, dim: int) -> torch.Tensor:
    """B or C for every (batch, channel) at one position: (batch or 1, dim, N)."""
    if t.dim() == 2:
        return t.unsqueeze(0)
    groups = t.shape[1] if t.dim() == 4 else 1
    bc = t[..., position] if t.dim() == 4 else t[..., position].unsqueeze(1)   # (batch, groups, N)
    return bc.repeat_interleave(dim // groups, dim=1)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, cu_seqlens=None, reverse=False):
    """Sequential S6 scan, one position at a time -> (out (batch, dim, L), last_state).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (dim, N), (batch, N, L) or
    (batch, groups, N, L); D, delta_bias: (dim,); initial_state: (states, dim, N). With
    cu_seqlens (batch 1) every packed sequence starts from its own initial state (or 0) and
    last_state holds each sequence's final state. Computed in u's dtype (run it in float64).
    """
    batch, dim, length = u.shape
    dstate = A.shape[1]
    dtype = u.dtype
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[None, :, None]
    if delta_softplus:
        delta = _softplus(delta)
    A = A.to(dtype)
    if cu_seqlens is None:
        bounds = [(0, length)]
        states = batch
    else:
        offsets = [int(v) for v in cu_seqlens]
        bounds = list(zip(offsets[:-1], offsets[1:]))
        states = len(bounds)
    outs = [None] * length
    last = []
    for index, (start, end) in enumerate(bounds):
        rows = slice(None) if cu_seqlens is None else slice(index, index + 1)
        if initial_state is not None:
            h = initial_state[rows].to(dtype)
        else:
            h = u.new_zeros((batch if cu_seqlens is None else 1, dim, dstate))
        positions = range(end - 1, start - 1, -1) if reverse else range(start, end)
        for t in positions:
            a = torch.exp(delta[:, :, t, None] * A)
            bt = _scan_bc_at(B, t, dim).to(dtype)
            ct = _scan_bc_at(C, t, dim).to(dtype)
            h = a * h + (delta[:, :, t] * u[:, :, t])[..., None] * bt
            outs[t] = (h * ct).sum(-1)
        last.append(h)
    y = torch.stack(outs, dim=-1) if length else u.new_zeros(u.shape)
    if D is not None:
        y = y + D.to(dtype)[None, :, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(dtype))
    last_state = torch.cat(last, 0) if cu_seqlens is not None else last[0]
    assert last_state.shape[0] == states
    return y, last_state


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step: returns y (batch, dim) and the new state (not written in place)."""
    out, new_state = selective_scan(
        x.unsqueeze(-1), dt.unsqueeze(-1), A, B.unsqueeze(-1), C.unsqueeze(-1), D,
        None if z is None else z.unsqueeze(-1), dt_bias, dt_softplus, initial_state=state)
    return out.squeeze(-1), new_state

# ---- prefix-scan attention (Aaren) ------------------------------------------------------------
def causal_conv1d(x, weight, bias=None, seq_idx=None, initial_states=None, silu=False):
    """out[b, d, l] = act(bias[d] + sum_j weight[d, j] x(l - (W - 1) + j)), where x(p) for p < 0
    is initial_states[b, d, W - 1 + p] (or 0), and with seq_idx a tap reads x(p) only when
    seq_idx[b, p] == seq_idx[b, l] (positions before 0 then read 0)."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    before = initial_states if initial_states is not None else x.new_zeros(batch, dim, width - 1)
    padded = torch.cat([before.to(x.dtype), x], dim=-1)  # padded[..., p + W - 1] = x(p)
    out = torch.zeros_like(x) if bias is None else bias.to(x.dtype)[:, None].expand(batch, dim, length)
    positions = torch.arange(length, device=x.device)
    for j in range(width):
        tap = padded[..., j:j + length]  # x(l - (W - 1) + j)
        if seq_idx is not None:
            source = positions - (width - 1) + j
            same = (source >= 0) & (seq_idx.gather(1, source.clamp(min=0).expand(batch, -1)) == seq_idx)
            tap = tap * same[:, None, :].to(x.dtype)
        out = out + weight[:, j].to(x.dtype)[:, None] * tap
    return torch.nn.functional.silu(out) if silu else out


def causal_conv1d_update(x, conv_state, weight, bias=None, silu=False, cache_seqlens=None, conv_state_indices=None):
    """One decoding call, input by input: returns (out, new conv_state). x (batch, dim, seqlen);
    conv_state (slots, dim, state_len): the last state_len inputs oldest first, or with
    cache_seqlens a circular buffer written at cache_seqlens[b] % state_len onwards; row b uses
    slot conv_state_indices[b] (default b), a negative slot gives out 0 and leaves the state."""
    batch, dim, seqlen = x.shape
    width, state_len = weight.shape[1], conv_state.shape[2]
    state = conv_state.clone()
    out = x.new_zeros(x.shape)
    for b in range(batch):
        slot = b if conv_state_indices is None else int(conv_state_indices[b])
        if slot < 0:
            continue
        head = int(cache_seqlens[b]) % state_len if cache_seqlens is not None and state_len else 0
        history = [state[slot, :, (head + i) % state_len] for i in range(state_len)]  # oldest first
        for i in range(seqlen):
            history.append(x[b, :, i])
            window = torch.stack(history[len(history) - width:], dim=-1)
            pre = (window * weight.to(x.dtype)).sum(-1) + (0 if bias is None else bias.to(x.dtype))
            out[b, :, i] = torch.nn.functional.silu(pre) if silu else pre
        if state_len:
            if cache_seqlens is None:
                state[slot] = torch.stack(history[len(history) - state_len:], dim=-1)
            else:
                for i in range(seqlen):
                    state[slot, :, (head + i) % state_len] = x[b, :, i]
    return out, state


def _sequence_spans(batch: int, seqlen: int, cu_seqlens):
    """(batch entry, begin, end) of every sequence: the batch entries, or the packed ones."""
    if cu_seqlens is None:
        return [(b, 0, seqlen) for b in range(batch)]
    offsets = [int(x) for x in cu_seqlens.tolist()]
    return [(0, offsets[i], offsets[i + 1]) for i in range(len(offsets) - 1)]


def _empty_state(heads: int, dim_v: int, like: torch.Tensor):
    return (torch.full((heads,), float("-inf"), dtype=like.dtype, device=like.device),
            like.new_zeros((heads,)), like.new_zeros((heads, dim_v)))


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                     initial_state=None, cu_seqlens: Optional[torch.Tensor] = None):
    """Aaren's prefix attention with the causal softmax materialised, (L x L) per sequence and head:
    o_t = sum_{j<=t} e^{s_j} v_j / sum_{j<=t} e^{s_j}, s_j = scale q . k_j, with an initial state
    (m0, c0, w0) counting as mass c0 e^{m0} and numerator w0 e^{m0} before the first position.

    q (heads, d) or (batch, heads, d); k (batch, L, heads, d); v (batch, L, heads, dv).
    Returns (o (batch, L, heads, dv), (m, c, w)): the final state per sequence, (seqs, heads),
    (seqs, heads), (seqs, heads, dv). Small L only (it builds the L x L weights).
    """
    batch, seqlen, heads, dim = k.shape
    scale = dim ** -0.5 if scale is None else scale
    q3 = q.unsqueeze(0).expand(batch, -1, -1) if q.dim() == 2 else q
    outputs, states = [], []
    for seq, (b, begin, end) in enumerate(_sequence_spans(batch, seqlen, cu_seqlens)):
        if initial_state is None:
            m0, c0, w0 = _empty_state(heads, v.shape[-1], k)
        else:
            m0, c0, w0 = (t[seq] for t in initial_state)
        s = scale * torch.einsum("hd,lhd->hl", q3[b], k[b, begin:end])     # (heads, n)
        v_seq = v[b, begin:end].transpose(0, 1)                            # (heads, n, dv)
        n = end - begin
        if n == 0:
            outputs.append(v[b, begin:end] * 0)  # empty, yet part of the autograd graph
            states.append((m0, c0, w0))
            continue
        running_max = torch.maximum(s.cummax(dim=1).values, m0[:, None])  # (heads, n): m_t
        causal = torch.ones(n, n, dtype=torch.bool, device=k.device).tril()
        exponent = torch.where(causal, s[:, None, :] - running_max[:, :, None], float("-inf"))
        weights = exponent.exp()                                           # (heads, t, j) <= 1
        from_state = torch.exp(m0[:, None] - running_max)                  # (heads, t)
        denominator = weights.sum(-1) + c0[:, None] * from_state
        numerator = weights @ v_seq + from_state[..., None] * w0[:, None, :]
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        o = torch.where(denominator[..., None] > 0, numerator / safe[..., None], torch.zeros_like(numerator))
        outputs.append(o.transpose(0, 1))
        states.append((running_max[:, -1], denominator[:, -1], numerator[:, -1]))
    if cu_seqlens is None:
        o = torch.stack(outputs) if outputs else v.new_zeros((0, seqlen, heads, v.shape[-1]))
    else:
        o = torch.cat(outputs)[None] if outputs else v.new_zeros((1, 0, heads, v.shape[-1]))
    if states:
        state = tuple(torch.stack(parts) for parts in zip(*states))
    else:
        state = (k.new_zeros((0, heads)), k.new_zeros((0, heads)), k.new_zeros((0, heads, v.shape[-1])))
    return o.to(v.dtype), state


def prefix_attention_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                          initial_state=None):
    """The same attention as a sequential scan over positions with the (m, c, w) recurrence of
    docs/prefix_attention.md (any L, no L x L tensor): the oracle for states and the step op.
    Batch sequences only (no cu_seqlens). Returns (o, (m, c, w))."""
    batch, seqlen, heads, dim = k.shape
    scale = dim ** -0.5 if scale is None else scale
    q3 = q.unsqueeze(0).expand(batch, -1, -1) if q.dim() == 2 else q
    if initial_state is None:
        m = torch.full((batch, heads), float("-inf"), dtype=k.dtype, device=k.device)
        c, w = k.new_zeros((batch, heads)), k.new_zeros((batch, heads, v.shape[-1]))
    else:
        m, c, w = initial_state
    outputs = []
    for t in range(seqlen):
        s = scale * (q3 * k[:, t]).sum(-1)
        m_new = torch.maximum(m, s)
        # e^{m - m_new}, 1 where both are -inf (an empty state stays empty)
        alpha = torch.where(m == m_new, torch.ones_like(m), torch.exp(m - m_new))
        weight = torch.exp(s - m_new)
        c = c * alpha + weight
        w = w * alpha[..., None] + weight[..., None] * v[:, t]
        m = m_new
        outputs.append(torch.where(c[..., None] > 0, w / torch.where(c > 0, c, 1)[..., None], 0))
    o = torch.stack(outputs, 1) if outputs else v.new_zeros((batch, 0, heads, v.shape[-1]))
    return o.to(v.dtype), (m, c, w)


# ---- low precision (docs/lowp.md) ---------------------------------------------------
def quant_max(bits: int) -> int:
    """Largest magnitude of a symmetric `bits`-bit integer: 127 for 8 bits, 7 for 4 bits."""
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    return 127 if bits == 8 else 7


def _channel_view(t: torch.Tensor, axis: Optional[int], ndim: int) -> torch.Tensor:
    """A (channels,) tensor shaped to broadcast along `axis` of an ndim-D tensor."""
    if axis is None:
        return t.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def quantize(x: torch.Tensor, bits: int = 8, axis: Optional[int] = 0):
    """(q, scale): q int8 values of x's shape in [-qmax, qmax], scale float32 with one entry per
    index along `axis` ((channels,)), or a 0-d tensor for axis=None. In fp32: scale = absmax /
    qmax, q = clamp(round_half_even(x / scale)), 0 where scale is 0."""
    qmax = quant_max(bits)
    xf = x.float()
    if axis is None:
        amax = xf.abs().amax()
    else:
        axis = axis % x.dim()
        dims = [d for d in range(x.dim()) if d != axis]
        amax = xf.abs().amax(dim=dims) if dims else xf.abs()
    scale = amax / qmax
    s = _channel_view(scale, axis, x.dim())
    q = torch.where(s > 0, torch.round(xf / torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(xf))
    return q.clamp(-qmax, qmax).to(torch.int8), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] -> uint8 with two per byte along the last dimension: element 2i in
    the low nibble of byte i, 2i + 1 in the high nibble, odd lengths padded with 0."""
    if q.shape[-1] % 2:
        q = torch.cat([q, q.new_zeros(q.shape[:-1] + (1,))], dim=-1)
    nibbles = q.to(torch.int16) & 0xF
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(data: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of pack_int4: (..., ceil(length / 2)) uint8 -> (..., length) int8."""
    b = data.to(torch.int16)
    nibbles = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(data.shape[:-1] + (2 * data.shape[-1],))
    return ((nibbles ^ 8) - 8)[..., :length].to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, axis: Optional[int], dtype=torch.float32) -> torch.Tensor:
    return (q.float() * _channel_view(scale, None if axis is None else axis % q.dim(), q.dim())).to(dtype)


def qlinear_accumulator(qx: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """acc[m, n] = sum_k qx[m, k] qw[n, k], exact (int64)."""
    return qx.to(torch.int64) @ qw.to(torch.int64).t()


def _activate(v: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    if activation in (None, "none"):
        return v
    if activation == "relu":
        return torch.relu(v)
    if activation == "gelu":
        return torch.nn.functional.gelu(v)
    if activation == "silu":
        return torch.nn.functional.silu(v)
    raise ValueError(f"activation must be None, 'relu', 'gelu' or 'silu', got {activation!r}")


def qlinear(x: torch.Tensor, qw: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
            activation: Optional[str] = None, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """W8A8 / W4A8 linear: x (M, K) float quantized per row to 8 bits, qw (N, K) int8 values (4-bit
    weights unpacked), w_scale (N,). out = act(acc * sx * sw + bias) in fp32, in the order
    ((acc * sx) * sw) + bias; out_dtype=torch.int32 returns acc itself."""
    qx, sx = quantize(x, 8, 0)
    acc = qlinear_accumulator(qx, qw)
    if out_dtype == torch.int32:
        return acc.to(torch.int32)
    v = acc.float() * sx[:, None] * w_scale.float()[None, :]
    if bias is not None:
        v = v + bias.float()
    out_dtype = out_dtype or (torch.float32 if x.dtype == torch.float64 else x.dtype)
    return _activate(v, activation).to(out_dtype)


def qspmm(rowptr: torch.Tensor, col: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, reduce: str = "sum",
          edge_weight: Optional[torch.Tensor] = None, dtype=torch.float64) -> torch.Tensor:
    """spmm over per-row quantized features x = q * scale[:, None], evaluated in `dtype`."""
    x = q.to(dtype) * scale.to(dtype)[:, None]
    return spmm(rowptr, col, x, reduce, None if edge_weight is None else edge_weight.to(dtype))


def fake_quantize(x: torch.Tensor, bits: int = 8, axis: Optional[int] = 0,
                  scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dequantize(quantize(x)) with a straight-through gradient: 1 where |x| <= qmax * scale
    (inside the clamp range), 0 outside. Without `scale` the scale is absmax / qmax, whose range
    holds every element, so the gradient passes everywhere."""
    qmax = quant_max(bits)
    if scale is None:
        q, scale = quantize(x.detach(), bits, axis)
        s = _channel_view(scale, None if axis is None else axis % x.dim(), x.dim())
        inside = torch.ones_like(x, dtype=torch.bool)
    else:
        s = _channel_view(scale.float(), None if axis is None else axis % x.dim(), x.dim())
        # A zero scale (a channel calibrated on zeros) quantizes to 0, as quantize does, not 0 / 0.
        q = torch.round(x.detach().float() / torch.where(s > 0, s, torch.ones_like(s))).clamp(-qmax, qmax)
        q = torch.where(s > 0, q, torch.zeros_like(q))
        inside = x.detach().abs() <= qmax * s
    dq = (q.float() * s).to(x.dtype)
    return dq + (x - x.detach()) * inside
