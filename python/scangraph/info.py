"""python -m scangraph.info: what this installation was built with and which backends run here."""
import os
import platform

import torch

import scangraph
from scangraph import _extension
from scangraph.backend import AUTO, triton_unavailable_reason

OPS = ("spmm", "spmm_arg", "sddmm", "gat_aggregate", "common_neighbors", "selective_scan", "causal_conv1d",
       "prefix_attention",
       "quantize", "qlinear",
       "qspmm")


def report() -> str:
    lines = [f"scangraph {scangraph.__version__}",
             f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})"]
    try:
        import triton
        lines.append(f"triton {triton.__version__}, interpreter {'on' if os.environ.get('TRITON_INTERPRET') == '1' else 'off'}")
    except ImportError:
        lines.append("triton: not installed")
    if _extension.LOAD_ERROR is not None:
        lines.append(f"compiled library: failed to load ({_extension.LOAD_ERROR})")
    else:
        lines.append(f"compiled library: {_extension._C.__file__}")
        built = _extension.build_info()
        if built is not None:
            floor = getattr(built, "STABLE_ABI_FLOOR", None)
            abi = f"the LibTorch stable ABI (loads under torch >= {floor})" if floor else "torch's regular C++ API"
            lines.append(f"built against torch {built.TORCH_VERSION} on {abi}; CUDA kernels "
                         + (f"for TORCH_CUDA_ARCH_LIST={built.CUDA_ARCHS}" if built.CUDA_ARCHS else "not built"))
        lines.append("CUDA kernels: " + ", ".join(f"{op} {'yes' if _extension.cuda_built(op) else 'no'}" for op in OPS))
    lines.append(f"GPU visible: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    for device in ("cpu", "cuda"):
        dev = torch.device(device)
        reason = triton_unavailable_reason(dev)
        if device == "cuda" and not torch.cuda.is_available():
            reason = "no GPU visible"
        lines.append(f"{device}: auto -> {AUTO[device]}; triton {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
