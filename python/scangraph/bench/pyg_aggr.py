"""PyG's MessagePassing aggregations (SumAggregation, MeanAggregation, MaxAggregation) on
scangraph's kernels through scangraph.integrations.pyg.patch() against PyG's own scatter: the
(E, F) messages a layer has gathered reduced into (N, F) by an unsorted destination index, a
view of the layer's edge_index. The patched call builds the scatter's CSR graph (a stable sort
of the index) once per edge_index, as a training loop calls its layers with the same one, and
spmm reduces over it. PyG is an optional extra: without it this family has no cases."""
import functools

import torch

from scangraph.bench.case import Case, Options, our_backends, with_integration

OPS = ("pyg_aggr",)
REDUCES = ("sum", "mean", "max")


def _shape(device: torch.device, options: Options) -> dict:
    if options.quick:
        return dict(nodes=500, edges=5_000, features=16)
    if options.gpu(device):
        return dict(nodes=2_000_000, edges=40_000_000, features=64)
    return dict(nodes=50_000, edges=500_000, features=64)


def cases(device: torch.device, dtype: torch.dtype, options: Options):
    if "pyg_aggr" not in options.ops:
        return
    try:
        from torch_geometric.nn import aggr
    except ImportError:
        return
    from scangraph.integrations import pyg as sg_pyg
    patch = functools.partial(sg_pyg.patch, layers=False)
    s = _shape(device, options)
    backends = our_backends("spmm", device, options)[:1]  # the patch runs the device's default backend
    generator = torch.Generator().manual_seed(0)
    # A layer's aggregation gets edge_index[1], a new view of the same edge_index every call.
    edge_index = torch.randint(0, s["nodes"], (2, s["edges"]), generator=generator).to(device)
    messages = torch.randn(s["edges"], s["features"], generator=generator, dtype=dtype).to(device)
    messages.requires_grad_()
    grad = torch.randn(s["nodes"], s["features"], generator=generator, dtype=dtype).to(device)
    element = messages.element_size()
    for reduce in REDUCES:
        module = getattr(aggr, f"{reduce.capitalize()}Aggregation")()
        label = f"{reduce} E{s['edges']} F{s['features']}"

        def forward(module=module):
            with torch.no_grad():
                return module(messages, edge_index[1], dim_size=s["nodes"])

        def step(module=module):
            messages.grad = None
            module(messages, edge_index[1], dim_size=s["nodes"]).backward(grad)

        # Compulsory bytes of a forward: the messages and the index read once, the output written.
        bytes_fwd = s["edges"] * (s["features"] * element + edge_index.element_size()) + s["nodes"] * s["features"] * element
        case = Case(op="pyg_aggr", label=label, dtype=dtype, device=device, bytes_fwd=bytes_fwd,
                    columns={"reduce": reduce, "E": s["edges"], "N": s["nodes"], "F": s["features"]})
        for backend in backends:
            case.impls[f"scangraph.{backend}"] = {"fwd": with_integration(forward, patch, sg_pyg.unpatch),
                                                  "fwd+bwd": with_integration(step, patch, sg_pyg.unpatch)}
        case.impls["pyg_scatter"] = {"fwd": forward, "fwd+bwd": step}
        if options.only is None or options.only == label:
            yield case
