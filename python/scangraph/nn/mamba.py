"""The Mamba-1 block (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", 2023) on scangraph's selective scan, and its bidirectional form."""
import dataclasses
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from scangraph.distributed import context_parallel
from scangraph.ops.causal_conv1d import MAX_WIDTH, causal_conv1d_fn
from scangraph.ops.selective_scan import selective_scan, selective_state_update


def _sequence_positions(cu_seqlens: torch.Tensor, length: int, from_end: bool) -> torch.Tensor:
    """(L,) index of every packed position within its own sequence (counted from the end of the
    sequence when from_end)."""
    offsets = cu_seqlens.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    anchor = offsets[1:] - 1 if from_end else offsets[:-1]
    start = torch.repeat_interleave(anchor, lengths, output_size=length)
    position = torch.arange(length, device=cu_seqlens.device)
    return start - position if from_end else position - start


class Mamba(nn.Module):
    """Mamba-1 block: in_proj -> causal depthwise conv1d + SiLU -> x_proj (dt, B, C) -> dt_proj ->
    selective scan (delta_softplus, delta_bias = dt_proj.bias, D skip, z gate) -> out_proj.

    Constructor, parameter names and state_dict layout are mamba_ssm's `Mamba` (in_proj.weight,
    conv1d.weight/bias, x_proj.weight, dt_proj.weight/bias, A_log, D, out_proj.weight), so a
    saved mamba_ssm block loads with load_state_dict. Shapes: hidden_states (batch, L, d_model)
    -> (batch, L, d_model); d_inner = expand * d_model.

    reverse=True makes the block anti-causal (the conv looks ahead, the scan runs from the end):
    the backward half of BiMamba, with no flips. cu_seqlens (int32 offsets, batch 1) packs
    variable-length sequences: the conv and the scan restart at every boundary.

    Decoding, as in mamba_ssm: `forward(hidden_states, inference_params)` with mamba_ssm's
    InferenceParams (or scangraph.nn.InferenceParams: the same fields) keeps this block's
    (conv_state, ssm_state) in `inference_params.key_value_memory_dict[layer_idx]`; the prompt
    (seqlen_offset == 0) fills them, later calls (one token each) go through step().
    `step(hidden_states, conv_state, ssm_state)` returns (out, conv_state, ssm_state) and updates
    both states in place. `allocate_inference_cache(batch)` / `forward(x, inference_cache=...)`
    do the same without an InferenceParams.

    process_group (torch.distributed): context parallelism. Each rank passes its own contiguous
    slice of L, in rank order, and gets the block's output for it, as one process running the
    whole sequence would compute it: the conv reads the d_conv - 1 positions before the slice
    (after it, when reverse) from the neighbouring rank, the scan runs through
    scangraph.distributed.selective_scan. Every slice needs at least d_conv - 1 positions.
    cu_seqlens then holds the offsets into the whole L, the same on every rank; the sequences
    may cross the slices' boundaries. Parameters are replicated: sum their gradients over the
    group (DDP's mean, scaled).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, use_fast_path: bool = True, layer_idx: Optional[int] = None,
                 device=None, dtype=None, reverse: bool = False, process_group=None):
        super().__init__()
        self.process_group = process_group
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.reverse = reverse
        # use_fast_path is accepted for mamba_ssm's signature; every path here is the fused op.
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj starts so that softplus(W dt + bias) lands log-uniformly in [dt_min, dt_max]:
        # W small (std dt_rank^-0.5 * dt_scale), bias the inverse softplus of a sampled dt.
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'constant' or 'random', got {dt_init!r}")
        dt = torch.exp(torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # mamba_ssm's marker: keep this init in _init_weights

        # S4D-real initialisation: A = -(1, 2, ..., N) for every channel, stored as log(-A).
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # ---- the parallel (training) path ---------------------------------------------------------
    def _conv(self, x: torch.Tensor, cu_seqlens: Optional[torch.Tensor]) -> torch.Tensor:
        """Depthwise conv over L of x (batch, d_inner, L), causal (anti-causal when reverse)."""
        length = x.shape[-1]
        k = self.d_conv
        if k == 1:  # one tap: no window, no boundaries
            return self.conv1d(x)
        if self.process_group is not None:
            # The neighbouring slice's k - 1 positions, then the conv of the joined window.
            halo = context_parallel.neighbour_positions(x, k - 1, self.reverse, self.process_group)
            window = torch.cat([x, halo] if self.reverse else [halo, x], dim=-1)
            if cu_seqlens is not None:  # positions counted in the whole L, cut to this slice
                start = context_parallel.slice_start(x, self.process_group)
                position = _sequence_positions(cu_seqlens, int(cu_seqlens[-1]), from_end=self.reverse)
                return self._packed_conv(window, position[start:start + length])
            if not self.reverse:
                return self.conv1d(window)[..., k - 1:k - 1 + length]
            return F.conv1d(window, self.conv1d.weight.flip(-1), self.conv1d.bias, padding=k - 1,
                            groups=self.d_inner)[..., k - 1:k - 1 + length]
        if cu_seqlens is None:
            if not self.reverse:  # padded by k - 1 on both sides: keep the causal window
                return self.conv1d(x)[..., :length]
            # Anti-causal = the causal conv of the flipped sequence: tap k-1-s meets position
            # t + s, i.e. the flipped kernel over the look-ahead window.
            return F.conv1d(x, self.conv1d.weight.flip(-1), self.conv1d.bias, padding=k - 1,
                            groups=self.d_inner)[..., k - 1:]
        window = F.pad(x, (0, k - 1) if self.reverse else (k - 1, 0))
        return self._packed_conv(window, _sequence_positions(cu_seqlens, length, from_end=self.reverse))

    def _conv_silu(self, x: torch.Tensor, cu_seqlens: Optional[torch.Tensor]) -> torch.Tensor:
        """silu(conv(x)): scangraph's causal_conv1d kernel (the activation fused, packed sequences
        through seq_idx) for the causal block in one process, _conv for the others (anti-causal,
        split across ranks, or wider than the kernel's 4 taps)."""
        if self.process_group is None and not self.reverse and self.d_conv <= MAX_WIDTH:
            seq_idx = None
            if cu_seqlens is not None:  # each position's sequence; output_size: no host sync
                counts = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
                seq_idx = torch.repeat_interleave(torch.arange(counts.numel(), device=x.device, dtype=torch.int32),
                                                  counts, output_size=x.shape[-1])[None]
            return causal_conv1d_fn(x, self.conv1d.weight[:, 0, :], self.conv1d.bias, seq_idx=seq_idx,
                                    activation="silu")
        return F.silu(self._conv(x, cu_seqlens))

    def _packed_conv(self, window: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """The conv over packed sequences: a tap that reaches across a sequence's boundary must
        see zeros, as it would at the edge of its own sequence. window (batch, d_inner, L + k - 1)
        holds the k - 1 positions before the L outputs (after them when reverse); position (L,)
        is each output's index within its sequence (from the sequence's end when reverse). Sums
        the k shifted, masked copies (k is small, 4)."""
        k, length = self.d_conv, position.numel()
        weight = self.conv1d.weight[:, 0, :]  # (d_inner, k); tap k-1 meets the current position
        out = None
        for shift in range(k):  # tap k-1-shift meets position t - shift (t + shift when reverse)
            begin = shift if self.reverse else k - 1 - shift
            term = window[..., begin:begin + length] * weight[:, k - 1 - shift:k - shift]
            if shift:
                term = term * (position >= shift).to(window.dtype)
            out = term if out is None else out + term
        return out if self.conv1d.bias is None else out + self.conv1d.bias[:, None]

    def forward(self, hidden_states: torch.Tensor, inference_params=None, *,
                cu_seqlens: Optional[torch.Tensor] = None,
                inference_cache: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model).

        inference_params: mamba_ssm's InferenceParams (see the class docstring). inference_cache:
        (conv_state, ssm_state) from allocate_inference_cache, filled with the states after the
        last position, ready for step(). cu_seqlens: int32 offsets of packed sequences (batch 1)."""
        if isinstance(inference_params, torch.Tensor):
            raise TypeError("Mamba.forward(hidden_states, inference_params=None, *, cu_seqlens=None): the second "
                            "positional argument is mamba_ssm's inference_params; pass cu_seqlens= by keyword")
        if inference_params is not None:
            if inference_cache is not None:
                raise ValueError("pass inference_params or inference_cache, not both")
            inference_cache = self._states_from_cache(inference_params, hidden_states.shape[0])
            if inference_params.seqlen_offset > 0:  # decoding: one token at a time, states in place
                return self.step(hidden_states, *inference_cache)[0]
        if self.process_group is not None and inference_cache is not None:
            raise ValueError("Mamba with a process_group (context parallelism) splits L across the ranks: "
                             "decoding states are not supported there")
        batch, length, _ = hidden_states.shape
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2 d_inner, L)
        x, z = xz.chunk(2, dim=1)
        conv_input = x
        x = self._conv_silu(x, cu_seqlens)
        x_dbl = self.x_proj(x.transpose(1, 2))  # (batch, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias
        A = -torch.exp(self.A_log.float())
        want_state = inference_cache is not None
        if want_state and (self.reverse or cu_seqlens is not None):
            raise ValueError("decoding states need a causal block (reverse=False) without cu_seqlens")
        if self.process_group is not None:
            y = context_parallel.selective_scan(
                x.contiguous(), dt.contiguous(), A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                self.D.float(), z=z.contiguous(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                cu_seqlens=cu_seqlens, reverse=self.reverse, group=self.process_group)
            return self.out_proj(y.transpose(1, 2))
        y = selective_scan(x.contiguous(), dt.contiguous(), A, B.transpose(1, 2).contiguous(),
                           C.transpose(1, 2).contiguous(), self.D.float(), z=z.contiguous(),
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           return_last_state=want_state, cu_seqlens=cu_seqlens, reverse=self.reverse)
        if want_state:
            y, last_state = y
            conv_state, ssm_state = inference_cache
            with torch.no_grad():
                conv_state.copy_(F.pad(conv_input, (self.d_conv - length, 0)) if length < self.d_conv
                                 else conv_input[..., -self.d_conv:])
                ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    def _states_from_cache(self, inference_params, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """This block's (conv_state, ssm_state) in inference_params.key_value_memory_dict, made on
        first use (mamba_ssm's layout: the SSM state in dt_proj's dtype)."""
        if self.layer_idx is None:
            raise ValueError("decoding with inference_params needs Mamba(..., layer_idx=...), as in mamba_ssm")
        states = inference_params.key_value_memory_dict
        if self.layer_idx not in states:
            states[self.layer_idx] = self.allocate_inference_cache(batch_size, dtype=None,
                                                                   ssm_dtype=self.dt_proj.weight.dtype)
        return states[self.layer_idx]

    # ---- decoding -----------------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size: int, max_seqlen: Optional[int] = None, dtype=None,
                                 ssm_dtype=torch.float32, **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
        """(conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state)), zeros. The
        SSM state is fp32 by default, as the scan accumulates it (mamba_ssm: dt_proj's dtype)."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype)
        return conv_state, ssm_state

    @torch.no_grad()
    def step(self, hidden_states: torch.Tensor, conv_state: torch.Tensor,
             ssm_state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token, as mamba_ssm's step: hidden_states (batch, 1, d_model) (or (batch, d_model))
        -> (out of the same shape, conv_state, ssm_state); both states are updated in place."""
        if self.reverse:
            raise RuntimeError("step() decodes causally; a reverse (anti-causal) block cannot")
        squeeze = hidden_states.dim() == 3
        if squeeze and hidden_states.shape[1] != 1:
            raise ValueError(f"step() decodes one token: hidden_states must be (batch, 1, d_model), got "
                             f"{tuple(hidden_states.shape)}")
        x_t = hidden_states.squeeze(1) if squeeze else hidden_states
        x, z = self.in_proj(x_t).chunk(2, dim=-1)  # (batch, d_inner) each
        # The conv window slides by one: drop the oldest input, append this one.
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x.to(conv_state.dtype)
        x = (conv_state * self.conv1d.weight[:, 0, :]).sum(-1).to(x.dtype)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(ssm_state, x, dt, A, B, C, self.D.float(), z=z,
                                   dt_bias=self.dt_proj.bias.float(), dt_softplus=True)
        out = self.out_proj(y)
        return (out.unsqueeze(1) if squeeze else out), conv_state, ssm_state


class BiMamba(nn.Module):
    """Bidirectional Mamba as used by Vision Mamba (Zhu et al. 2024) and Graph Mamba networks
    (Behrouz & Hashemi 2024): a causal block `fwd` and an anti-causal block `bwd` (reverse scan,
    no flips), outputs summed. Shapes: (batch, L, d_model) -> (batch, L, d_model); cu_seqlens
    packs sequences as in Mamba. Keyword options go to both blocks."""

    def __init__(self, d_model: int, **mamba_options):
        super().__init__()
        mamba_options.pop("reverse", None)
        self.fwd = Mamba(d_model, **mamba_options)
        self.bwd = Mamba(d_model, reverse=True, **mamba_options)

    def forward(self, hidden_states: torch.Tensor, *, cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fwd(hidden_states, cu_seqlens=cu_seqlens) + self.bwd(hidden_states, cu_seqlens=cu_seqlens)


@dataclasses.dataclass
class InferenceParams:
    """The decoding state Mamba.forward reads, with the fields of mamba_ssm's InferenceParams
    (mamba_ssm's own works too): the states live in key_value_memory_dict[layer_idx];
    seqlen_offset counts the tokens already seen (0: the next call is the prompt)."""
    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = dataclasses.field(default_factory=dict)
    lengths_per_sample: Optional[torch.Tensor] = None

    def reset(self, max_seqlen: int, max_batch_size: int):
        self.max_seqlen, self.max_batch_size, self.seqlen_offset = max_seqlen, max_batch_size, 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()
