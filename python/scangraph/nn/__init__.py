"""Thin modules on scangraph's ops: each holds parameters and calls the fused kernels.

Sequence: Mamba (with InferenceParams for decoding), BiMamba, Aaren (prefix-scan attention: parallel forward, streaming step).
Graph layers (PyG's call convention and parameter names): GCNConv, SAGEConv, GINConv, GATConv.
Low precision (W8A8 / W4A8, quantization-aware training, then `convert()` to the integer
kernels qlinear / qspmm): QuantLinear, QGCNConv, convert_quantized.
Models: DAGNN, NCN, GraphMamba (GMN), GraphMambaLayer (Graph-Mamba).
"""
from scangraph.nn.aaren import Aaren
from scangraph.nn.conv import GATConv, GCNConv, GINConv, SAGEConv
from scangraph.nn.dagnn import DAGNN
from scangraph.nn.graph_cache import clear_graph_cache
from scangraph.nn.graph_mamba import GraphMamba, GraphMambaLayer
from scangraph.nn.mamba import BiMamba, InferenceParams, Mamba
from scangraph.nn.ncn import NCN
from scangraph.nn.quant import QGCNConv, QuantLinear, convert_quantized

__all__ = ["Aaren", "BiMamba", "DAGNN", "GATConv", "GCNConv", "GINConv", "GraphMamba", "GraphMambaLayer",
           "InferenceParams", "Mamba", "NCN", "QGCNConv", "QuantLinear", "SAGEConv", "clear_graph_cache", "convert_quantized"]
