"""Context parallelism of the scans: each rank of a process group holds one contiguous slice of
L, in rank order (slices of any length, empty ones included), and gets exactly what one process
scanning the whole sequence would compute for its slice.

1. Each rank scans its slice from the empty state, which gives the slice's map of the carried
   state: h_out = P h_in + Q for the selective scan (P = exp(A x the slice's sum of delta), Q its
   last state from 0), the slice's (m, c, w) summary for prefix attention (whose combine is
   associative: entering a slice is combining with its summary).
2. The ranks all-gather the summaries (in the accumulation dtype, a few KB) and each composes
   those of the ranks before it, starting from the initial state given on the first rank.
3. Each rank scans its slice again from that state.

The all-gather is torch.distributed.nn's differentiable one, so autograd runs the three steps
backward: the gradient reaching a rank's entering state goes back through the composition to
the earlier ranks' summaries (their slices' gradients) in one reduce of the same size. The
backward is deterministic: fixed-order sums, no atomics.

Packed sequences (cu_seqlens) may cross the ranks' boundaries: each slice is cut into one piece
per sequence it touches, and only the piece the scan enters the slice by can continue a
sequence, so the slice's map is its decays when one sequence runs through it and P = 0 when one
starts in it (_packed_selective_scan); prefix attention's slice likewise combines the entering
state into the one it hands on only when one sequence runs through it (_packed_prefix_attention).

Parameters (A, D, delta_bias; prefix attention's q) are replicated: each rank's gradient is its
slice's share, and the sum over the group (or DDP's mean over it, scaled) is the full gradient.
"""
import struct
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from scangraph.ops._rules import check_cu_seqlens, opmath_dtype
from scangraph.ops.prefix_attention import prefix_attention as _prefix_attention
from scangraph.ops.selective_scan import selective_scan as _selective_scan

# dtype codes for the ranks' agreement check
FLOAT_CODES = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}


def _group_info(op: str, group, like: torch.Tensor):
    """(rank, world size) of the group, after checking that torch.distributed is set up and
    that the tensors are on a device the group's backend communicates from."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{op}: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group first (torchrun sets up the environment)")
    backend = dist.get_backend(group)
    if backend == "nccl" and like.device.type != "cuda":
        raise ValueError(f"{op}: the process group's backend is NCCL, which communicates CUDA tensors, but the "
                         f"inputs are on {like.device}")
    if backend == "gloo" and like.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: the gloo backend cannot communicate tensors on {like.device}")
    return dist.get_rank(group), dist.get_world_size(group)


def _agree(op: str, group, world: int, like: torch.Tensor, fields: dict, per_rank=("initial_state",)):
    """Gathers every rank's small integer descriptor of its call and raises, on every rank alike,
    where the ranks disagree on a field not in per_rank (an error on one rank alone would leave
    the others waiting in the next collective). Returns the descriptors, one dict per rank."""
    mine = torch.tensor(list(fields.values()), dtype=torch.int64, device=like.device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    every = [dict(zip(fields, t.tolist())) for t in every]
    for rank, theirs in enumerate(every):
        diff = {k for k in fields if k not in per_rank and theirs[k] != every[0][k]}
        if diff:
            raise ValueError(f"{op}: the ranks of the group disagree: rank 0 has {({k: every[0][k] for k in sorted(diff)})}"
                             f", rank {rank} has {({k: theirs[k] for k in sorted(diff)})}; every rank must pass the "
                             "same shapes and options, and its own slice of L")
    return every


def _check_initial_state(op: str, every, first: int):
    """initial_state is the state before the first scanned position: only that rank passes it."""
    holders = [r for r, d in enumerate(every) if d["initial_state"] and r != first]
    if holders:
        raise ValueError(f"{op}: initial_state is the state before the sequence's first scanned position, which "
                         f"rank {first} holds; rank(s) {holders} must pass None")


class _AllGather(torch.autograd.Function):
    """Every rank's tensor stacked in rank order; backward: each rank's slot of the gradients
    summed over the ranks (an all-reduce of the small stacked gradient).

    The backward is a collective: every rank must run it, and run the backward's collectives in
    the same order. Autograd orders them by the graph, so every rank must build the same graph
    (the same model code; the functions here use the gathered tensor on every rank)."""

    @staticmethod
    def forward(ctx, t, group, world):
        ctx.group = group
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None, None


def _gather(t: torch.Tensor, group, world: int):
    """Differentiable all-gather: every rank's tensor, in rank order."""
    return list(_AllGather.apply(t, group, world).unbind(0))


def neighbour_positions(x: torch.Tensor, count: int, after: bool, group=None) -> torch.Tensor:
    """The `count` positions of the sequence next to this rank's slice x (..., L_rank): the last
    ones of the previous rank's slice, or the first ones of the next rank's when `after`; zeros
    past the sequence's ends (a causal conv's padding). Differentiable. Every slice needs at
    least `count` positions."""
    op = "scangraph.distributed.neighbour_positions"
    rank, world = _group_info(op, group, x)
    every = _agree(op, group, world, x, dict(count=count, after=int(bool(after)), length=x.shape[-1],
                                             shape=hash(tuple(x.shape[:-1])) & 0x7FFFFFFF), per_rank=("length",))
    short = [r for r, d in enumerate(every) if d["length"] < count]
    if short:
        raise ValueError(f"{op}: every rank's slice needs at least {count} positions (the conv's window reaches "
                         f"that far into the neighbouring slice); rank(s) {short} have fewer")
    edge = x[..., :count] if after else x[..., x.shape[-1] - count:]
    parts = _gather(edge, group, world)
    neighbour = rank + 1 if after else rank - 1
    # At the sequence's ends a zero product of the gathered tensor, not new zeros: every rank's
    # graph then holds the gather, so every rank runs its backward's all-reduce (see _AllGather).
    return parts[neighbour] if 0 <= neighbour < world else parts[rank] * 0


def slice_start(x: torch.Tensor, group=None) -> int:
    """The index in the whole L of this rank's first position: the lengths (x's last dim) of the
    slices of the ranks before it."""
    op = "scangraph.distributed.slice_start"
    rank, world = _group_info(op, group, x)
    every = _agree(op, group, world, x, dict(length=x.shape[-1]), per_rank=("length",))
    return sum(d["length"] for d in every[:rank])


def _order(world: int, reverse: bool):
    return list(range(world - 1, -1, -1)) if reverse else list(range(world))


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, cu_seqlens=None, reverse=False, group=None,
                   backend="auto"):
    """scangraph.selective_scan over one sequence split along L across `group` (default: the
    world). u, delta, z (batch, dim, L_rank) and varying B / C (batch, [groups,] N, L_rank) are
    this rank's slice, in rank order (reverse=True scans from the last rank's end); A, D and
    delta_bias are replicated. initial_state is read on the rank the scan enters first (rank 0,
    or the last rank with reverse=True; the others pass None); with return_last_state, the
    rank it leaves last returns the final state and the others None.

    Packed sequences: cu_seqlens (int32, num_seqs + 1 offsets into the whole L, batch 1) is the
    same on every rank, and its sequences may cross the ranks' boundaries (_packed_selective_scan).
    initial_state (num_seqs, dim, N) or None is then the same on every rank (replicated, its
    gradient summed over the group like A's), and the final states come back on every rank as
    (num_seqs, dim, N): the rows of the sequences this rank's slice finishes, zeros elsewhere,
    so their sum over the group is every sequence's final state (an empty sequence's, its
    initial state, on the rank the scan enters)."""
    op = "scangraph.distributed.selective_scan"
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"{op}: u must be a (batch, dim, L) tensor, got {getattr(u, 'shape', type(u).__name__)}")
    rank, world = _group_info(op, group, u)
    # What every rank must pass alike (_agree).
    fields = dict(batch=u.shape[0], dim=u.shape[1], N=A.shape[-1], dtype=FLOAT_CODES.get(u.dtype, -1),
                  varying_B=int(B.dim() > 2), groups=int(B.shape[1]) if B.dim() == 4 else 0, z=int(z is not None),
                  D=int(D is not None), delta_bias=int(delta_bias is not None),
                  delta_softplus=int(bool(delta_softplus)), reverse=int(bool(reverse)),
                  return_last_state=int(bool(return_last_state)), initial_state=int(initial_state is not None))
    if cu_seqlens is not None:
        return _packed_selective_scan(op, rank, world, fields, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      return_last_state, initial_state, cu_seqlens, reverse, group, backend)
    every = _agree(op, group, world, u, fields)
    order = _order(world, reverse)
    first, last = order[0], order[-1]
    _check_initial_state(op, every, first)
    acc = opmath_dtype(u.dtype)
    common = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, reverse=reverse, backend=backend)
    # 1. The slice's map of the state: Q from the empty state, P the product of its decays.
    _, Q = _selective_scan(u, delta, A, B, C, return_last_state=True, **common)
    P = _slice_decay(delta, A, delta_bias, delta_softplus, acc)
    h0 = initial_state.to(acc) if initial_state is not None else torch.zeros_like(Q)
    # 2. Every rank's summary and the first rank's initial state; compose the ranks before this one.
    summaries = _gather(torch.stack([P, Q, h0]), group, world)
    h = summaries[first][2]
    for k in order[:order.index(rank)]:
        h = summaries[k][0] * h + summaries[k][1]
    # 3. The slice from its true initial state.
    out, last_state = _selective_scan(u, delta, A, B, C, return_last_state=True, initial_state=h, **common)
    if not return_last_state:
        return out
    return out, (last_state if rank == last else None)


def _slice_decay(delta, A, delta_bias, delta_softplus, acc):
    """exp(A sum_t delta_t) per (batch, channel, state): the factor a slice applies to the state
    entering it (the P of its map)."""
    dt = delta.to(acc) + (delta_bias.to(acc)[:, None] if delta_bias is not None else 0)
    if delta_softplus:
        dt = F.softplus(dt)
    return torch.exp(A.to(acc)[None] * dt.sum(-1)[..., None])


def _pieces(offsets, lo: int, hi: int, reverse: bool):
    """The parts of the packed sequences that lie in the slice [lo, hi) of L, in order: (sequence,
    first, stop, enters, leaves) with first / stop local to the slice; `enters` when the piece holds
    its sequence's first scanned position (the first position, or the last with reverse), `leaves`
    when it holds its last scanned one. Empty sequences have no piece."""
    pieces = []
    for j, (a, b) in enumerate(zip(offsets, offsets[1:])):
        first, stop = max(a, lo), min(b, hi)
        if first < stop:
            starts, ends = a >= lo, b <= hi
            pieces.append((j, first - lo, stop - lo, ends if reverse else starts, starts if reverse else ends))
    return pieces


def _packed_slices(op, group, world, fields, like, batch, length, cu_seqlens, reverse):
    """The packed sequences cut at the ranks' slices, once the ranks agree on the call and on the
    offsets: (num_seqs, the offsets as a list, every rank's pieces (_pieces))."""
    num_seqs = cu_seqlens.numel() - 1 if isinstance(cu_seqlens, torch.Tensor) else -1
    every = _agree(op, group, world, like, dict(
        fields, num_seqs=num_seqs, length=length,
        # the offsets themselves (a hash of ints, the same in every process): ranks must agree
        offsets=hash(tuple(cu_seqlens.tolist())) & 0x7FFFFFFF if num_seqs >= 0 else -1), per_rank=("length",))
    lengths = [d["length"] for d in every]
    num_seqs = check_cu_seqlens(op, cu_seqlens, like, batch, sum(lengths))
    offsets = cu_seqlens.tolist()
    bounds = [sum(lengths[:r]) for r in range(world + 1)]
    return num_seqs, offsets, [_pieces(offsets, bounds[r], bounds[r + 1], reverse) for r in range(world)]


def _local_offsets(pieces, device) -> torch.Tensor:
    """A slice's pieces as rank-local packed sequences, one each; a slice without positions scans
    one empty sequence (the ops need one), which hands nothing on."""
    return torch.tensor([0] + [stop for _, _, stop, _, _ in pieces] if pieces else [0, 0], dtype=torch.int32,
                        device=device)


def _packed_selective_scan(op, rank, world, fields, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                           return_last_state, initial_state, cu_seqlens, reverse, group, backend):
    """Context parallelism over packed sequences. A rank's slice is cut into pieces, one per
    sequence it touches (_pieces). Only the piece the scan enters the slice by can continue a
    sequence from the ranks before; every other piece starts its sequence here, from the
    sequence's initial state. So the state the slice hands on is h_out = P h_in + Q with P the
    slice's decays when a single piece continues through it and P = 0 when a sequence starts in
    it (the state entering cannot reach the slice's end), and the ranks compose these maps as in
    the one-sequence case; a slice with no positions hands the state on unchanged (P = 1)."""
    batch, dim, length = u.shape
    dstate = A.shape[-1]
    num_seqs, offsets, every_pieces = _packed_slices(op, group, world, fields, u, batch, length, cu_seqlens, reverse)
    acc = opmath_dtype(u.dtype)
    if initial_state is not None:
        if tuple(initial_state.shape) != (num_seqs, dim, dstate):
            raise ValueError(f"{op}: with cu_seqlens, initial_state is every sequence's, the same on every rank: "
                             f"(num_seqs, dim, N) = {(num_seqs, dim, dstate)}, got {tuple(initial_state.shape)}")
        initial_state = initial_state.to(acc)
    order = _order(world, reverse)
    pieces = every_pieces[rank]
    local_cu = _local_offsets(pieces, u.device)
    zeros = torch.zeros(max(len(pieces), 1), dim, dstate, dtype=acc, device=u.device)

    def entering(carried, anchor=0):
        """Each piece's initial state: its sequence's where it enters the sequence, else `carried`;
        plus `anchor`, a zero."""
        rows = []
        for i, (j, _, _, enters, _) in enumerate(pieces):
            if enters:
                rows.append(initial_state[j] if initial_state is not None else zeros[i])
            else:
                rows.append(carried)
        return (torch.stack(rows) if rows else zeros) + anchor

    common = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, reverse=reverse,
                  cu_seqlens=local_cu, backend=backend)
    # 1. The slice's map of the state it hands on: its last scanned piece from its own entering
    #    state (0 where it continues a sequence).
    _, last = _selective_scan(u, delta, A, B, C, return_last_state=True, initial_state=entering(zeros[0]), **common)
    if not pieces:  # hands the state on unchanged: P = 1, Q = 0, both from the scan's graph, so
        Q = last[0]   # that autograd reaches the gather on this rank too (_AllGather's backward)
        P = 1 + Q * 0
    else:
        Q = last[0] if reverse else last[-1]
        if len(pieces) == 1 and not pieces[0][3]:  # one piece, continued through the whole slice
            P = _slice_decay(delta, A, delta_bias, delta_softplus, acc)[0]
        else:
            P = torch.zeros_like(Q)
    # 2. Gather the maps; compose those of the ranks before this one in scan order.
    summaries = _gather(torch.stack([P, Q]), group, world)
    h = torch.zeros_like(zeros[0])
    for k in order[:order.index(rank)]:
        h = summaries[k][0] * h + summaries[k][1]
    # 3. The slice from the true entering states. The anchor, a zero product of the gathered
    #    maps, keeps the gather in every rank's graph, so that every rank runs the backward's
    #    collective (_AllGather), also where no piece continues a sequence.
    anchor = summaries[rank][1] * 0
    out, last = _selective_scan(u, delta, A, B, C, return_last_state=True, initial_state=entering(h, anchor),
                                **common)
    if not return_last_state:
        return out
    # The final states of the sequences this slice finishes; an empty sequence's (its initial
    # state) on the rank the scan enters.
    finished = [(i, j) for i, (j, _, _, _, leaves) in enumerate(pieces) if leaves]
    rows = [j for _, j in finished]
    values = [last[i] for i, _ in finished]
    if rank == order[0]:
        for j, (a, b) in enumerate(zip(offsets, offsets[1:])):
            if a == b:
                rows.append(j)
                values.append(initial_state[j] if initial_state is not None else zeros[0])
    final = torch.zeros(num_seqs, dim, dstate, dtype=acc, device=u.device)
    if rows:
        final = final.index_put((torch.tensor(rows, device=u.device),), torch.stack(values))
    return out, final


def _combine(a, b):
    """(m, c, w) of a followed by b: the associative combine of prefix attention's state, safe
    for empty states (m = -inf, c = w = 0)."""
    (ma, ca, wa), (mb, cb, wb) = a, b
    m = torch.maximum(ma, mb)
    ref = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    ea, eb = torch.exp(ma - ref), torch.exp(mb - ref)
    return m, ca * ea + cb * eb, wa * ea[..., None] + wb * eb[..., None]


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                     initial_state: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
                     return_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, group=None,
                     backend: str = "auto"):
    """scangraph.prefix_attention over one sequence split along L across `group`: k (batch,
    L_rank, heads, d) and v (batch, L_rank, heads, dv) are this rank's slice, in rank order; q
    is replicated. initial_state (m, denom, numer) is read on rank 0 (the others pass None);
    with return_state, the last rank returns the final state and the others None.

    Packed sequences: cu_seqlens (int32, num_seqs + 1 offsets into the whole L, batch 1) is the
    same on every rank, and its sequences may cross the ranks' boundaries. initial_state is then
    every sequence's ((num_seqs, heads), (num_seqs, heads), (num_seqs, heads, dv)), the same on
    every rank, and with return_state every rank returns the final states of the sequences it
    finishes, with the empty state (m = -inf, 0, 0) elsewhere: their combine over the group is
    every final state (as the selective scan's packed states sum to it)."""
    op = "scangraph.distributed.prefix_attention"
    if not isinstance(k, torch.Tensor) or k.dim() != 4 or not isinstance(v, torch.Tensor) or v.dim() != 4:
        raise ValueError(f"{op}: k and v must be (batch, L, heads, d) tensors")
    rank, world = _group_info(op, group, k)
    batch, _, heads, dk = k.shape
    dv = v.shape[3]
    fields = dict(
        batch=batch, heads=heads, d=dk, dv=dv, dtype=FLOAT_CODES.get(k.dtype, -1), q_batched=int(q.dim() == 3),
        return_state=int(bool(return_state)),
        scale_bits=struct.unpack("<q", struct.pack("<d", scale))[0] if scale is not None else -1,
        initial_state=int(initial_state is not None))
    if cu_seqlens is not None:
        return _packed_prefix_attention(op, rank, world, fields, q, k, v, scale, initial_state, return_state,
                                        cu_seqlens, group, backend)
    every = _agree(op, group, world, k, fields)
    _check_initial_state(op, every, 0)
    acc = opmath_dtype(v.dtype)
    # 1. The slice's summary from the empty state.
    _, (m, c, w) = _prefix_attention(q, k, v, scale=scale, return_state=True, backend=backend)
    if initial_state is not None:
        m0, c0, w0 = (t.to(acc) for t in initial_state)
    else:
        m0 = torch.full_like(m, float("-inf"))
        c0, w0 = torch.zeros_like(c), torch.zeros_like(w)
    # 2. Gather (m, c, w) of every rank and the initial state; compose the ranks before this one.
    summaries = _gather(torch.cat([_pack_state((m, c, w)), _pack_state((m0, c0, w0))], -1), group, world)
    state = _unpack_state(summaries[0][..., 2 + dv:])
    for r in range(rank):
        state = _combine(state, _unpack_state(summaries[r][..., :2 + dv]))
    # 3. The slice from its true initial state.
    out, final = _prefix_attention(q, k, v, scale=scale, initial_state=state, return_state=True, backend=backend)
    if not return_state:
        return out
    return out, (final if rank == world - 1 else None)


def _pack_state(state):
    """(m, c, w) as one tensor (..., 2 + dv), as the ranks exchange it."""
    m, c, w = state
    return torch.cat([torch.stack([m, c], -1), w], -1)


def _unpack_state(t):
    return t[..., 0], t[..., 1], t[..., 2:]


def _packed_prefix_attention(op, rank, world, fields, q, k, v, scale, initial_state, return_state, cu_seqlens,
                             group, backend):
    """Prefix attention over packed sequences. As for the scan (_packed_selective_scan), a rank's
    slice is cut into one piece per sequence it touches, and only its first piece can continue a
    sequence from the ranks before. The state a slice hands on is combine(h_in, S) when one
    piece continues through the whole slice (or the slice is empty, S then the empty state), and
    S alone when a sequence starts in it, S being its last piece's state from that piece's own
    entering state (its sequence's initial state where it starts the sequence, else empty)."""
    batch, length, heads, _ = k.shape
    dv = v.shape[3]
    num_seqs, offsets, every_pieces = _packed_slices(op, group, world, fields, k, batch, length, cu_seqlens, False)
    acc = opmath_dtype(v.dtype)
    if initial_state is not None:
        want = ((num_seqs, heads), (num_seqs, heads), (num_seqs, heads, dv))
        if len(initial_state) != 3 or any(tuple(t.shape) != shape for t, shape in zip(initial_state, want)):
            raise ValueError(f"{op}: with cu_seqlens, initial_state is every sequence's (m, denom, numer), the same on "
                             f"every rank: shapes {want}")
        initial_state = tuple(t.to(acc) for t in initial_state)
    empty = (torch.full((heads,), float("-inf"), dtype=acc, device=k.device),
             torch.zeros(heads, dtype=acc, device=k.device), torch.zeros(heads, dv, dtype=acc, device=k.device))
    pieces = every_pieces[rank]
    local_cu = _local_offsets(pieces, k.device)

    def continues(r):  # whether rank r's slice combines the state entering it into the one it hands on
        return not every_pieces[r] or (len(every_pieces[r]) == 1 and not every_pieces[r][0][3])

    def entering(carried, anchor=0):
        """Each piece's initial state: its sequence's where it starts the sequence, else
        `carried`; `anchor`, a zero, added to the sums."""
        rows = [(tuple(t[j] for t in initial_state) if initial_state is not None else empty) if enters else carried
                for j, _, _, enters, _ in pieces] or [empty]
        m, c, w = (torch.stack([row[i] for row in rows]) for i in range(3))
        if isinstance(anchor, torch.Tensor):
            c, w = c + anchor, w + anchor[..., None]
        return m, c, w

    common = dict(scale=scale, return_state=True, cu_seqlens=local_cu, backend=backend)
    # 1. The slice's summary S: its last piece's state from its own entering state.
    _, last = _prefix_attention(q, k, v, initial_state=entering(empty), **common)
    # (A slice without positions scans one empty sequence: its summary is the empty state, taken
    # from the op's output all the same, so that the gather below is in this rank's graph.)
    summary = tuple(t[-1] for t in last)
    # 2. Gather the summaries; compose those of the ranks before this one.
    summaries = _gather(_pack_state(summary), group, world)
    state = empty
    for r in range(rank):
        theirs = _unpack_state(summaries[r])
        state = _combine(state, theirs) if continues(r) else theirs
    # 3. The slice from the true entering states. The anchor, a zero product of the gathered
    #    sums (finite, unlike an empty m), keeps the gather in every rank's graph, so that every
    #    rank runs the backward's collective (_AllGather).
    anchor = summaries[rank][..., 1] * 0
    out, last = _prefix_attention(q, k, v, initial_state=entering(state, anchor), **common)
    if not return_state:
        return out
    # The final states of the sequences this slice finishes (an empty sequence's, its initial
    # state, on rank 0), the empty state elsewhere: combining them over the ranks gives every
    # sequence's, as the combine leaves a state unchanged by the empty one.
    mine = [empty] * num_seqs
    for i, (j, _, _, _, leaves) in enumerate(pieces):
        if leaves:
            mine[j] = tuple(t[i] for t in last)
    if rank == 0 and initial_state is not None:
        for j, (a, b) in enumerate(zip(offsets, offsets[1:])):
            if a == b:
                mine[j] = tuple(t[j] for t in initial_state)
    return out, tuple(torch.stack([row[i] for row in mine]) for i in range(3))
