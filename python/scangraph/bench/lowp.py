"""Benchmark cases of the low-precision family (inference ops: forward only).

qlinear_w8a8 / qlinear_w4a8: GNN-shaped node-feature transforms, M = 100k nodes (1M on a GPU or
with SCANGRAPH_BENCH_LARGE=1; quick mode 2048), K = N in 128, 256, 512 (quick: 64). Ours runs
quantize + int8 product + dequant/bias/relu epilogue in one op. Baselines: torch._int_mm with the
per-row quantization and the epilogue written in PyTorch around it (what a user composes
today), and fp32 F.linear + relu. Bytes: M*K*s_x + N*K*bits/8 + 4N + M*N*s_out (docs/lowp.md).
The weight's bytes (int8 / packed int4 + scales vs fp32) are a column of their own.

qspmm: int8 node features (per-row scales) aggregated with sum against fp32 spmm of the same
features (our C++ / CUDA kernel and torch.sparse.mm) on email-Enron (R-MAT / karate without the
data folder, as the sparse bench), F = 128 and 256 (quick: the --features list).
"""
import os
import warnings

import torch
import torch.nn.functional as F

import scangraph
from scangraph import CSRGraph
from scangraph.bench.case import Case, Options, our_backends
from scangraph.bench.sparse import bench_graphs

OPS = ("qlinear_w8a8", "qlinear_w4a8", "qspmm")


def _rows(device: torch.device, options: Options) -> int:
    if options.quick:
        return 2048
    if not options.full:
        return 20_000  # the default run: the _int_mm composition takes about 1 s per call here
    large = options.gpu(device) or os.environ.get("SCANGRAPH_BENCH_LARGE") == "1"
    return 1_000_000 if large else 100_000


def int_mm_baseline(x: torch.Tensor, wq_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What one writes without a fused kernel: per-row quantization of x in PyTorch, the int8
    product with torch._int_mm (int32 out), then dequantization, bias and relu.
    wq_t: the (K, N) int8 weight, transposed once ahead of time."""
    scale = x.abs().amax(dim=1, keepdim=True).float() / 127
    q = torch.where(scale > 0, torch.round(x.float() / scale.clamp_min(torch.finfo(torch.float32).tiny)),
                    torch.zeros((), dtype=torch.float32, device=x.device)).clamp_(-127, 127).to(torch.int8)
    acc = torch._int_mm(q, wq_t)
    return torch.relu(acc.float() * scale * w_scale + bias)


def _qlinear_case(M: int, K: int, bits: int, dtype: torch.dtype, device: torch.device, options: Options) -> Case:
    N = K
    element = torch.empty((), dtype=dtype).element_size()
    x = torch.randn(M, K, dtype=dtype, device=device)
    w = torch.randn(N, K, device=device)
    bias = torch.randn(N, device=device)
    wq = scangraph.quantize(w, bits, 0)
    case = Case(op=f"qlinear_w{bits}a8", label=f"M={M} K=N={K}", dtype=dtype, device=device,
                bytes_fwd=M * K * element + N * K * bits // 8 + 4 * N + M * N * element,
                columns={"M": M, "K": K, "N": N, "weight_bytes": wq.nbytes(), "fp32_weight_bytes": 4 * N * K})
    for backend in our_backends("qlinear", device, options):
        case.impls[f"scangraph.{backend}"] = {
            "fwd": lambda b=backend: scangraph.qlinear(x, wq, bias, "relu", backend=b)}
    wf = w.to(dtype)
    case.impls["fp32_linear_relu" if dtype == torch.float32 else "linear_relu"] = {
        "fwd": lambda: F.relu(F.linear(x, wf, bias.to(dtype)))}
    if bits == 8 and M % 8 == 0 and K % 8 == 0:  # torch._int_mm's shape rules
        wq_t = wq.data.t().contiguous()
        case.impls["torch._int_mm+quant+epilogue"] = {"fwd": lambda: int_mm_baseline(x, wq_t, wq.scale, bias)}
    return case


def _qspmm_case(name: str, graph: CSRGraph, f: int, device: torch.device, options: Options) -> Case:
    x = torch.randn(graph.num_cols, f, device=device)
    xq = scangraph.quantize(x, 8, 0)
    csr_bytes = 8 * (graph.num_rows + 1) + graph.col.element_size() * graph.num_edges
    with warnings.catch_warnings():  # torch flags its CSR tensors as beta
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(graph.rowptr, graph.col, torch.ones(graph.num_edges, device=device),
                                         (graph.num_rows, graph.num_cols))
    case = Case(op="qspmm", label=f"{name} F={f}", dtype=torch.int8, device=device,
                bytes_fwd=csr_bytes + graph.num_cols * (f + 4) + 4 * f * graph.num_rows,
                columns={"graph": name, "nodes": graph.num_rows, "edges": graph.num_edges, "F": f,
                         "gathered_bytes": f * graph.num_edges, "fp32_gathered_bytes": 4 * f * graph.num_edges})
    for backend in our_backends("qspmm", device, options):
        case.impls[f"scangraph.{backend}"] = {"fwd": lambda b=backend: scangraph.qspmm(graph, xq, "sum", backend=b)}
    fp32_backend = "cuda" if options.gpu(device) else "cpp"
    case.impls[f"fp32_spmm_{fp32_backend}"] = {"fwd": lambda: scangraph.spmm(graph, x, "sum", backend=fp32_backend)}
    case.impls["fp32_torch.sparse.mm"] = {"fwd": lambda: torch.sparse.mm(matrix, x)}
    return case


def cases(device: torch.device, dtype: torch.dtype, options: Options):
    ops = [op for op in OPS if op in options.ops]
    if not ops:
        return
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return
    M = _rows(device, options)
    for bits in (8, 4):
        if f"qlinear_w{bits}a8" not in ops:
            continue
        for K in ((64,) if options.quick else (128, 256, 512) if options.full else (256,)):
            case_label = f"M={M} K=N={K}"
            if options.only is None or options.only == case_label:
                yield _qlinear_case(M, K, bits, dtype, device, options)
    if "qspmm" in ops:
        only_graph = None if options.only is None else options.only.rsplit(" F=", 1)[0]
        graphs = list(bench_graphs(options.data_dir, options.quick, only_graph))
        if not (options.full or options.quick or options.only):
            graphs = graphs[:1]
        for name, edge_index, num_nodes in graphs:
            graph = CSRGraph.from_edge_index(edge_index, num_nodes).to(device)
            for f in (options.features or [32, 128]) if options.quick else (128, 256) if options.full else (256,):
                if options.only is None or options.only == f"{name} F={f}":
                    yield _qspmm_case(name, graph, f, device, options)
