"""Thin modules on scangraph's ops: each holds parameters and calls the fused kernels.

Sequence: Mamba, BiMamba. Graph layers (PyG's call convention and parameter names): GCNConv,
SAGEConv, GINConv, GATConv. Models: DAGNN, NCN, GraphMamba (GMN), GraphMambaLayer (Graph-Mamba).
Not here yet: Aaren, QuantLinear and QGCNConv wait for their ops (prefix_attention, qlinear,
qspmm), which are being written on other branches.
"""
from scangraph.nn.conv import GATConv, GCNConv, GINConv, SAGEConv
from scangraph.nn.dagnn import DAGNN
from scangraph.nn.graph_cache import clear_graph_cache
from scangraph.nn.graph_mamba import GraphMamba, GraphMambaLayer
from scangraph.nn.mamba import BiMamba, Mamba
from scangraph.nn.ncn import NCN

__all__ = ["BiMamba", "DAGNN", "GATConv", "GCNConv", "GINConv", "GraphMamba", "GraphMambaLayer", "Mamba",
           "NCN", "SAGEConv", "clear_graph_cache"]
