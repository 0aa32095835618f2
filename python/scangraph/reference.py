"""Plain-PyTorch references of every op: the tests' oracle (run them in float64).

Written for clarity, not speed: each follows the formula of ../shared/ALGORITHMS.md directly
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


def gat_aggregate(rowptr: torch.Tensor, col: torch.Tensor, x: torch.Tensor, alpha_src: torch.Tensor,
                  alpha_dst: torch.Tensor, negative_slope: float = 0.2) -> torch.Tensor:
    """out[i] = sum_j softmax_j(leaky_relu(alpha_src[j] + alpha_dst[i])) x[j] per head, with
    x (N, heads, F) and alpha (N, heads); the (E, heads) scores are materialised."""
    rows, cols = _edge_rows(rowptr), col.long()
    num_rows = rowptr.numel() - 1
    scores = torch.nn.functional.leaky_relu(alpha_src[cols] + alpha_dst[rows], negative_slope)
    index = rows[:, None].expand_as(scores)
    row_max = torch.full((num_rows, scores.shape[1]), float("-inf"), dtype=scores.dtype,
                         device=scores.device).scatter_reduce(0, index, scores.detach(), "amax")
    weights = torch.exp(scores - row_max[rows])
    denominator = torch.zeros_like(row_max).index_add(0, rows, weights)
    attention = weights / denominator[rows]
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


# ---- selective scan (ALGORITHMS.md section 1) -------------------------------------------------
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
    ALGORITHMS.md section 2 (any L, no L x L tensor): the oracle for states and the step op.
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
