"""Aaren, the attention-as-an-RNN layer of Feng, Tung, Ahmed, Bengio & Hajimirsadeghi,
"Attention as an RNN" (2024), on scangraph's prefix-scan attention."""
import math
from typing import Optional, Tuple

import torch
from torch import nn

from scangraph.distributed import context_parallel
from scangraph.ops._rules import opmath_dtype
from scangraph.ops.prefix_attention import prefix_attention, prefix_attention_step

State = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Aaren(nn.Module):
    """Aaren layer: a learned query per head attends causally over keys and values projected
    from the input, o_t = sum_{j<=t} softmax_j(scale q . k_j) v_j for every position t, heads
    concatenated, then an output projection.

    Because the query is a parameter, not a function of x_t, the many-to-many attention is a
    prefix scan: `forward` computes all positions in parallel (`scangraph.prefix_attention`,
    O(L) memory, for training) and `step` advances one token in constant memory
    (`scangraph.prefix_attention_step`, for streaming), with the same result. Input and
    output widths are both `dim`, so layers stack like Transformer layers (wrap them in
    residuals, norms and MLPs as a Transformer would; this module is the attention part only).

    Args:
        dim: model width. heads: number of heads. head_dim: width of each head's keys and
            values (default dim // heads). bias: biases of the three projections.
    Parameters: `query` (heads, head_dim), `k_proj` / `v_proj` (dim -> heads * head_dim),
        `out_proj` (heads * head_dim -> dim).
    Shapes: x (batch, L, dim) -> (batch, L, dim); with cu_seqlens (int32 (nseq + 1,) offsets,
        batch 1) packed sequences along L, the scan restarting at each boundary.
    State: (m, denom, numer) of shapes (seqs, heads), (seqs, heads), (seqs, heads, head_dim),
        float32 (float64 for float64 modules): running max, softmax denominator, numerator.
    process_group (torch.distributed): context parallelism, each rank passing its own slice of
        L in rank order (scangraph.distributed.prefix_attention): `state` is read on rank 0 and
        the final state returned on the last rank (None on the others). With cu_seqlens (offsets
        into the whole L, the same on every rank), `state` is every sequence's on every rank, and
        each rank returns the final states of the sequences it finishes (the empty state
        elsewhere; combined over the group, every final state). Parameters are replicated: sum
        their gradients over the group.
    """

    def __init__(self, dim: int, heads: int = 1, head_dim: Optional[int] = None, bias: bool = True,
                 device=None, dtype=None, process_group=None):
        super().__init__()
        self.process_group = process_group
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"Aaren: dim ({dim}) must be divisible by heads ({heads}), or pass head_dim")
            head_dim = dim // heads
        factory = {"device": device, "dtype": dtype}
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        inner = heads * head_dim
        self.query = nn.Parameter(torch.empty(heads, head_dim, **factory))
        self.k_proj = nn.Linear(dim, inner, bias=bias, **factory)
        self.v_proj = nn.Linear(dim, inner, bias=bias, **factory)
        self.out_proj = nn.Linear(inner, dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self):
        # A unit-norm query on average: with scale head_dim^-0.5 the scores start of the order
        # of the keys' entries, so the initial softmax is neither uniform nor one-hot.
        nn.init.normal_(self.query, std=1.0 / math.sqrt(self.head_dim))
        for lin in (self.k_proj, self.v_proj, self.out_proj):
            lin.reset_parameters()

    def _keys_values(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(x.shape[:-1]) + (self.heads, self.head_dim)
        return self.k_proj(x).view(shape), self.v_proj(x).view(shape)

    def forward(self, x: torch.Tensor, state: Optional[State] = None, return_state: bool = False,
                cu_seqlens: Optional[torch.Tensor] = None):
        """x (batch, L, dim) -> (batch, L, dim) [, final state]. `state` is the state before the
        first position (e.g. returned by an earlier call on the previous chunk of a stream);
        gradients flow through it and through the returned state."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Aaren: x must be (batch, L, {self.dim}), got shape {tuple(x.shape)}")
        k, v = self._keys_values(x)
        # The op wants q, k and v in one dtype (autocast may have changed the projections').
        if self.process_group is not None:
            o, last = context_parallel.prefix_attention(self.query.to(k.dtype), k, v, initial_state=state,
                                                        return_state=True, cu_seqlens=cu_seqlens,
                                                        group=self.process_group)
        else:
            o, last = prefix_attention(self.query.to(k.dtype), k, v, initial_state=state, return_state=True,
                                       cu_seqlens=cu_seqlens)
        out = self.out_proj(o.reshape(tuple(x.shape[:-1]) + (self.heads * self.head_dim,)))
        return (out, last) if return_state else out

    def init_state(self, batch: int, device=None, dtype: Optional[torch.dtype] = None) -> State:
        """The empty state (m = -inf, denom = 0, numer = 0) for `batch` streams, in the
        accumulation dtype the ops use: float64 for float64 modules, else float32."""
        device = self.query.device if device is None else device
        if dtype is None:
            dtype = opmath_dtype(self.query.dtype)
        m = torch.full((batch, self.heads), float("-inf"), device=device, dtype=dtype)
        denom = torch.zeros(batch, self.heads, device=device, dtype=dtype)
        numer = torch.zeros(batch, self.heads, self.head_dim, device=device, dtype=dtype)
        return m, denom, numer

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, state: State) -> torch.Tensor:
        """One streaming position: x_t (batch, dim) or (batch, 1, dim) -> the output of the same
        shape; `state` (from init_state or from forward(..., return_state=True)) is updated in
        place. Inference only (no gradients)."""
        squeeze = x_t.dim() == 3
        if squeeze:
            if x_t.shape[1] != 1:
                raise ValueError(f"Aaren.step: x_t must be (batch, dim) or (batch, 1, dim), got {tuple(x_t.shape)}")
            x_t = x_t[:, 0]
        if x_t.dim() != 2 or x_t.shape[-1] != self.dim:
            raise ValueError(f"Aaren.step: x_t must be (batch, {self.dim}), got shape {tuple(x_t.shape)}")
        k, v = self._keys_values(x_t)
        o = prefix_attention_step(state, self.query.to(k.dtype), k, v)
        out = self.out_proj(o.reshape(x_t.shape[0], self.heads * self.head_dim))
        return out[:, None] if squeeze else out

    def extra_repr(self) -> str:
        return f"{self.dim}, heads={self.heads}, head_dim={self.head_dim}"
