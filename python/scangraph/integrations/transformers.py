"""HF transformers' Mamba and FalconMamba on scangraph's kernels, in the style of Liger's
`apply_liger_kernel_to_*`:

    from scangraph.integrations import transformers as sg_hf
    model = MambaForCausalLM(config)      # or from_pretrained(...)
    sg_hf.apply(model)                    # every Mamba / FalconMamba mixer now scans with scangraph

transformers' mixers call two module-level functions for the SSM: `mamba_selective_scan` (the
parallel scan of a prompt or a training step) and `mamba_selective_state_update` (one decoding
token). Their own versions are the slow torch path unless the CUDA-only mamba_ssm kernels are
installed, and transformers turns that fast path off under torch.compile. apply() replaces both
functions in transformers' modeling modules with scangraph.selective_scan /
scangraph.selective_state_update, which run on CPU and GPU, in training, generation and under
torch.compile (they are torch custom ops with fake kernels). The causal conv and the
projections stay transformers' own torch code. revert() restores transformers' functions.

The patch is process-wide (all models of those classes), as Liger's is; `model` is only checked
and returned. Arguments transformers passes that select its own torch algorithm (use_mambapy,
use_associative_scan) do not apply to the fused kernel; any other unknown argument raises.
"""
import importlib
from typing import Optional

import torch

import scangraph

# The modeling modules whose mixers call mamba_selective_scan / mamba_selective_state_update.
MODULES = ("transformers.models.mamba.modeling_mamba", "transformers.models.falcon_mamba.modeling_falcon_mamba")
# Arguments that choose among transformers' torch implementations of the same scan.
_TORCH_PATH_OPTIONS = ("use_mambapy", "use_associative_scan")

_originals: dict = {}  # (module name, function name) -> transformers' function
_backend = "auto"


def _modules():
    try:
        import transformers
    except ImportError as error:
        raise ImportError("scangraph.integrations.transformers needs HF transformers: pip install transformers") \
            from error
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        missing = [f for f in ("mamba_selective_scan", "mamba_selective_state_update") if not hasattr(module, f)]
        if missing:
            raise RuntimeError(f"transformers {transformers.__version__}: {name} has no {missing}; this integration "
                               "knows the mixers that call mamba_selective_scan / mamba_selective_state_update")
        found.append(module)
    return found


def _check_options(function: str, options: dict):
    unknown = sorted(set(options) - set(_TORCH_PATH_OPTIONS))
    if unknown:
        raise TypeError(f"scangraph's {function} for transformers: unsupported arguments {unknown}")


def selective_scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, **options):
    """transformers' mamba_selective_scan on scangraph.selective_scan: hidden_states / dt / z
    (batch, dim, L), B / C (batch, N, L); returns out, or (out, last_state) in fp32."""
    _check_options("mamba_selective_scan", options)
    return scangraph.selective_scan(hidden_states.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(),
                                    D, None if z is None else z.contiguous(), delta_bias, delta_softplus,
                                    return_last_state, backend=_backend)


def selective_state_update(state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None,
                           **options):
    """transformers' mamba_selective_state_update (its argument order: dt_bias and dt_softplus
    before z) on scangraph.selective_state_update; state is updated in place."""
    _check_options("mamba_selective_state_update", options)
    return scangraph.selective_state_update(state, hidden_states.contiguous(), dt.contiguous(), A, B.contiguous(),
                                            C.contiguous(), D, None if z is None else z.contiguous(), dt_bias,
                                            dt_softplus, backend=_backend)


def apply(model: Optional[torch.nn.Module] = None, *, backend: str = "auto"):
    """Route transformers' Mamba and FalconMamba SSM calls to scangraph's kernels (process-wide);
    `backend` as in every scangraph op. Returns `model`."""
    global _backend
    modules = _modules()
    _backend = backend
    for module in modules:
        for name, ours in (("mamba_selective_scan", selective_scan),
                           ("mamba_selective_state_update", selective_state_update)):
            current = getattr(module, name)
            if current is not ours:
                _originals[(module.__name__, name)] = current
                setattr(module, name, ours)
    return model


def revert():
    """Restore transformers' own functions."""
    for (module_name, name), original in list(_originals.items()):
        setattr(importlib.import_module(module_name), name, original)
        del _originals[(module_name, name)]


def applied() -> bool:
    return bool(_originals)
