"""Causal depthwise convolution of Mamba's block: drop-ins for the causal-conv1d package's
`causal_conv1d_fn`, `causal_conv1d_update` and `causal_conv1d_varlen_states`.

    out[b, d, l] = act(bias[d] + sum_{j < W} weight[d, j] x[b, d, l - (W - 1) + j])

with the inputs before position 0 taken from `initial_states` (or zero), and `act` SiLU or none.

Each backend is the op `scangraph::causal_conv1d` (C++ on CPU, CUDA on GPU) or
`scangraph::causal_conv1d_triton`, with the activation fused into the kernel and a deterministic
backward (no atomics). docs/causal_conv1d.md has the math, docs/drop-in.md the differences from
the peer.
"""
import torch

from scangraph import backend as _backend
from scangraph import reference
from scangraph.ops import _causal_conv1d_lib  # noqa: F401  (importing it registers the ops, their fakes and autograd)
from scangraph.ops._rules import check_tensor

MAX_WIDTH = 4
ACTIVATIONS = (None, "silu", "swish")


def _silu(op, activation):
    if activation not in ACTIVATIONS:
        raise NotImplementedError(f"{op}: activation must be None, 'silu' or 'swish', got {activation!r}")
    return activation is not None


def _check_weight(op, weight, bias, x, dim):
    check_tensor(op, "weight", weight, like=x, like_name="x")
    if weight.dim() != 2 or weight.shape[0] != dim or not 1 <= weight.shape[1] <= MAX_WIDTH:
        raise ValueError(f"{op}: weight must be (dim, width) with dim = {dim} and width in [1, {MAX_WIDTH}], got "
                         f"shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(op, "bias", bias, (dim,), like=x, like_name="x")
    return weight.shape[1]


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None, *, backend="auto"):
    """The causal-conv1d package's `causal_conv1d_fn` (its signature, defaults and returns).

    Args:
        x: (batch, dim, L), float32 / float16 / bfloat16 (float64 for tests), any layout
            (channel-last included; strided inputs are copied once).
        weight: (dim, width), width 1 to 4, any float dtype (the kernels compute in float32,
            float64 for float64 x). bias: (dim,) or None.
        seq_idx: (batch, L) int32, packed sequences: a tap reads x only within the output's own
            sequence (equal ids), so each sequence starts from zeros.
        initial_states: (batch, dim, width - 1) in x's dtype, the inputs before position 0.
            Differentiable. Not together with seq_idx (as in the peer).
        return_final_states: also return the last width - 1 inputs (batch, dim, width - 1), the
            states a decoding step continues from (initial_states where L < width - 1).
            Differentiable. Not with seq_idx.
        final_states_out: a (batch, dim, width - 1) tensor the final states are written to (and
            returned as final_states).
        activation: None, "silu" or "swish" (SiLU, fused into the kernel).
        backend: "auto" | "cpp" | "cuda" | "triton" | "reference".
    Returns:
        out (batch, dim, L) in x's dtype, or (out, final_states).
    """
    op = "causal_conv1d_fn"
    silu = _silu(op, activation)
    check_tensor(op, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be (batch, dim, L), got shape {tuple(x.shape)}")
    batch, dim, length = x.shape
    width = _check_weight(op, weight, bias, x, dim)
    if seq_idx is not None and initial_states is not None:
        raise ValueError(f"{op}: seq_idx and initial_states exclude each other (each packed sequence starts from "
                         "zeros)")
    if seq_idx is not None:
        check_tensor(op, "seq_idx", seq_idx, (batch, length), (torch.int32,), like=x, like_name="x")
        if return_final_states:
            raise ValueError(f"{op}: return_final_states is not defined with seq_idx (as in causal-conv1d): take "
                             "each sequence's states with causal_conv1d_varlen_states")
    if initial_states is not None:
        check_tensor(op, "initial_states", initial_states, (batch, dim, width - 1), (x.dtype,), like=x,
                     like_name="x")
    name = _backend.resolve("causal_conv1d", backend, x.device)  # the op's name (the message names the function)
    if name == "reference":
        out = reference.causal_conv1d(x, weight, bias, seq_idx, initial_states, silu)
    else:
        out = _backend.op_for("causal_conv1d", name)(x, weight, bias, seq_idx, initial_states, silu)
    if not return_final_states:
        return out
    before = initial_states if initial_states is not None else x.new_zeros(batch, dim, width - 1)
    final_states = torch.cat([before, x], dim=-1)[..., length:]  # the last width - 1 of (W - 1) + L
    if final_states_out is not None:
        check_tensor(op, "final_states_out", final_states_out, (batch, dim, width - 1), (x.dtype,), like=x,
                     like_name="x")
        final_states = final_states_out.copy_(final_states)  # returned itself, as in causal-conv1d
    return out, final_states


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None, *, backend="auto"):
    """The causal-conv1d package's `causal_conv1d_update`: one decoding call. Updates `conv_state`
    in place and returns out.

    Args:
        x: (batch, dim) or (batch, dim, seqlen), the new inputs.
        conv_state: (batch, dim, state_len) in x's dtype, state_len >= width - 1: the last
            state_len inputs, oldest first; shifted left by seqlen and x appended.
        weight: (dim, width), bias: (dim,) as in causal_conv1d_fn. activation: None / silu / swish.
        cache_seqlens: (batch,) int32: conv_state is a circular buffer, x written from index
            cache_seqlens[b] mod state_len on (of inputs that land on one index, the last stays).
        conv_state_indices: (batch,) int32, continuous batching: row b uses conv_state row
            conv_state_indices[b] (conv_state then has one row per cache slot); a negative index
            is a padding row, whose out is 0 and whose state is not touched. Checked against the
            number of slots on the CPU only (on a GPU that check would synchronise each step).
            Two rows naming one slot race, as in the package.
    Returns:
        out in x's shape and dtype. No gradient (inference).
    """
    op = "causal_conv1d_update"
    silu = _silu(op, activation)
    check_tensor(op, "x", x)
    if x.dim() not in (2, 3):
        raise ValueError(f"{op}: x must be (batch, dim) or (batch, dim, seqlen), got shape {tuple(x.shape)}")
    one_step = x.dim() == 2
    x3 = x.unsqueeze(-1) if one_step else x
    batch, dim, _ = x3.shape
    width = _check_weight(op, weight, bias, x, dim)
    check_tensor(op, "conv_state", conv_state, dtypes=(x.dtype,), like=x, like_name="x")
    if conv_state.dim() != 3 or conv_state.shape[1] != dim or conv_state.shape[2] < width - 1:
        raise ValueError(f"{op}: conv_state must be (batch, dim, state_len) with dim = {dim} and state_len >= "
                         f"width - 1 = {width - 1}, got shape {tuple(conv_state.shape)}")
    for name, t in (("cache_seqlens", cache_seqlens), ("conv_state_indices", conv_state_indices)):
        if t is not None:
            check_tensor(op, name, t, (batch,), (torch.int32,), like=x, like_name="x")
    if conv_state_indices is None and conv_state.shape[0] != batch:
        raise ValueError(f"{op}: without conv_state_indices, conv_state must have one row per batch row ({batch}), "
                         f"got shape {tuple(conv_state.shape)}")
    # On the CPU the kernels index with the slots, so they are checked (the C++ glue does too); on a
    # GPU that would synchronise every decoding step (and break CUDA-graph capture): not checked,
    # as in causal-conv1d.
    if conv_state_indices is not None and x.device.type == "cpu" and batch \
            and int(conv_state_indices.max()) >= conv_state.shape[0]:
        raise ValueError(f"{op}: conv_state_indices holds slot {int(conv_state_indices.max())}, but conv_state "
                         f"has {conv_state.shape[0]} slots")
    name = _backend.resolve(op, backend, x.device)
    if name == "reference":
        out, new_state = reference.causal_conv1d_update(x3, conv_state, weight, bias, silu, cache_seqlens,
                                                        conv_state_indices)
        conv_state.copy_(new_state)
    else:
        out = _backend.op_for("causal_conv1d_update", name)(x3, conv_state, weight, bias, silu, cache_seqlens,
                                                            conv_state_indices)
    return out.squeeze(-1) if one_step else out


def causal_conv1d_varlen_states(x, cu_seqlens, state_len):
    """The causal-conv1d package's `causal_conv1d_varlen_states`: each packed sequence's last
    state_len inputs, the conv_state a decoder continues from.

    Args:
        x: (total_tokens, dim), the sequences packed along the first dimension.
        cu_seqlens: (num_sequences + 1,) int offsets, 0 first, total_tokens last.
        state_len: inputs kept per sequence; where a sequence is shorter, the state starts with
            zeros (never another sequence's inputs).
    Returns:
        (num_sequences, dim, state_len) in x's dtype. A gather, differentiable through x.
    """
    op = "causal_conv1d_varlen_states"
    check_tensor(op, "x", x)
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be (total_tokens, dim), got shape {tuple(x.shape)}")
    check_tensor(op, "cu_seqlens", cu_seqlens, dtypes=(torch.int32, torch.int64), like=x, like_name="x")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"{op}: cu_seqlens must be 1-D offsets, got shape {tuple(cu_seqlens.shape)}")
    ends = cu_seqlens[1:].long()
    starts = cu_seqlens[:-1].long()
    index = ends[:, None] - state_len + torch.arange(state_len, device=x.device)  # (num_sequences, state_len)
    valid = index >= starts[:, None]
    states = torch.where(valid[..., None], x[index.clamp(min=0)], 0)  # (num_sequences, state_len, dim)
    return states.transpose(1, 2)
