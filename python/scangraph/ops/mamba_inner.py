"""mamba_ssm's `mamba_inner_fn`: Mamba's block from the in-projected xz to the out-projection,

    x, z = xz.chunk(2, dim=1)
    x = silu(causal_conv1d(x))                        # scangraph's causal_conv1d_fn, SiLU fused
    x_dbl = x @ x_proj_weight.T                       # (b l, dt_rank + 2 N)
    delta = delta_proj_weight @ x_dbl[:, :dt_rank].T  # (b, d, l)
    B, C = x_dbl's next N and last N columns (+ B_proj_bias / C_proj_bias, optional RMS norms)
    y = selective_scan(x, delta, A, B, C, D, z, delta_bias, delta_softplus)
    out = y @ out_proj_weight.T + out_proj_bias

composed of scangraph's fused kernels (the convolution with its activation, the scan with its
gate) and torch's matmuls, with autograd through each. The scan's autograd keeps its inputs, so
the convolution's output and delta stay stored at either checkpoint_lvl: the memory of mamba_ssm's
level 0 (its level 1 recomputes them in the backward instead).
"""
import torch
import torch.nn.functional as F

from scangraph.ops.causal_conv1d import causal_conv1d_fn
from scangraph.ops.selective_scan import selective_scan


def _rms_norm(t, weight, eps):
    """RMS norm over the last dimension, in float32 (float64 for float64 t), back in t's dtype."""
    if weight is None:
        return t
    wide = t.to(torch.promote_types(t.dtype, torch.float32))
    return (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps) * weight).to(t.dtype)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias,
                   A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None,
                   b_c_dt_rms_eps=1e-6, *, backend="auto"):
    """mamba_ssm's `mamba_inner_fn` (its signature, defaults and result).

    Args:
        xz: (batch, 2 dim, L), in_proj's output transposed. conv1d_weight: (dim, 1, width) (an
            nn.Conv1d's weight) or (dim, width); conv1d_bias: (dim,) or None.
        x_proj_weight: (dt_rank + 2 N, dim); delta_proj_weight: (dim, dt_rank); out_proj_weight:
            (d_model, dim); out_proj_bias: (d_model,) or None.
        A: (dim, N) real. B, C: None (projected from x, the Mamba default) or given as
            selective_scan takes them. D, delta_bias: (dim,).
        B_proj_bias, C_proj_bias: (N,), added to the projected B / C.
        b_rms_weight, c_rms_weight (N,), dt_rms_weight (dim,): RMS norms of B, C and delta
            (eps b_c_dt_rms_eps), as in mamba_ssm; here their weights get gradients too.
        checkpoint_lvl: 0 or 1, accepted for mamba_ssm's signature; both store the convolution's
            output and delta for the backward (mamba_ssm's level 1 recomputes them there).
        backend: "auto" | "cpp" | "cuda" | "triton" | "reference", for both kernels.
    Returns:
        (batch, L, d_model).
    """
    op = "mamba_inner_fn"
    if checkpoint_lvl not in (0, 1):
        raise ValueError(f"{op}: checkpoint_lvl must be 0 or 1, got {checkpoint_lvl!r}")
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError(f"{op}: complex A (mamba_ssm's S4D-style wtype=complex64) is not supported; use real A "
                        "(Mamba's S4D-real initialisation) or mamba_ssm's mamba_inner_fn for complex A")
    if not isinstance(xz, torch.Tensor) or xz.dim() != 3 or xz.shape[1] % 2:
        raise ValueError(f"{op}: xz must be (batch, 2 dim, L), got shape {tuple(getattr(xz, 'shape', ()))}")
    batch, _, length = xz.shape
    x, z = xz.chunk(2, dim=1)
    dim = x.shape[1]
    weight = conv1d_weight.reshape(conv1d_weight.shape[0], conv1d_weight.shape[-1]) if conv1d_weight.dim() == 3 \
        else conv1d_weight
    dt_rank, dstate = delta_proj_weight.shape[1], A.shape[-1]

    conv = causal_conv1d_fn(x, weight, conv1d_bias, activation="silu", backend=backend)
    x_dbl = F.linear(conv.transpose(1, 2).reshape(batch * length, dim), x_proj_weight)  # (b l, r + 2 N)
    delta = (delta_proj_weight @ x_dbl[:, :dt_rank].t()).reshape(dim, batch, length).transpose(0, 1)
    delta = _rms_norm(delta.transpose(1, 2), dt_rms_weight, b_c_dt_rms_eps).transpose(1, 2).to(conv.dtype)

    def projected(given, columns, proj_bias, rms_weight):
        """B or C as given, else from its columns of x_dbl: (b, 1, N, l) in the conv's dtype."""
        if given is not None:
            return given
        t = x_dbl[:, columns]
        if proj_bias is not None:
            t = t + proj_bias.to(t.dtype)
        t = _rms_norm(t, rms_weight, b_c_dt_rms_eps)
        return t.reshape(batch, length, 1, dstate).permute(0, 2, 3, 1).to(conv.dtype)

    Bv = projected(B, slice(dt_rank, dt_rank + dstate), B_proj_bias, b_rms_weight)
    Cv = projected(C, slice(x_dbl.shape[1] - dstate, x_dbl.shape[1]), C_proj_bias, c_rms_weight)
    y = selective_scan(conv, delta, A, Bv, Cv, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                       backend=backend)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
