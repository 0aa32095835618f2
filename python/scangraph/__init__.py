"""scangraph: fused selective-scan, prefix-attention, sparse and low-precision kernels as torch ops.

    import scangraph
    g = scangraph.CSRGraph.from_edge_index(edge_index, num_nodes=n)
    out = scangraph.spmm(g, x, reduce="mean")          # C++ on CPU, CUDA on GPU
    out = scangraph.spmm(g, x, backend="triton")       # or choose a backend
"""
from scangraph._extension import cpp_built, cuda_built
from scangraph.backend import BACKENDS, BackendUnavailable, use_backend
from scangraph.graph import CSRGraph
from scangraph import datasets, distributed, nn, reference
from scangraph.ops.selective_scan import selective_scan, selective_state_update
from scangraph.ops.causal_conv1d import causal_conv1d_fn, causal_conv1d_update, causal_conv1d_varlen_states
from scangraph.ops.mamba_inner import mamba_inner_fn
from scangraph.ops.sparse import common_neighbor_aggregate, gat_aggregate, sddmm, spmm
from scangraph.ops.lowp import QTensor, dequantize, fake_quantize, qlinear, qspmm, quantize
from scangraph.ops.prefix_attention import prefix_attention, prefix_attention_step

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendUnavailable", "CSRGraph", "QTensor", "causal_conv1d_fn", "causal_conv1d_update",
    "causal_conv1d_varlen_states", "common_neighbor_aggregate", "cpp_built",
    "cuda_built", "dequantize", "fake_quantize", "gat_aggregate", "mamba_inner_fn", "prefix_attention", "prefix_attention_step",
    "qlinear", "qspmm", "quantize", "sddmm", "selective_scan", "selective_state_update", "spmm", "use_backend",
]
