"""CUDA graph capture: the ops launch on the current stream, allocate through torch and read no
device value on the host, so a forward (and a training step) can be captured once and replayed.
Runs only with a GPU (bench/gpu_check.sh). common_neighbor_aggregate is left out on purpose: it
reads the number of common neighbours on the host to size its output."""
import pytest
import torch

import scangraph

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _inputs():
    gen = torch.Generator().manual_seed(0)
    n = 500
    edge_index = torch.randint(0, n, (2, 4000), generator=gen)
    graph = scangraph.CSRGraph.from_edge_index(edge_index, num_nodes=n).to("cuda")
    graph.transpose_parts()  # built before capture: building it sorts, which is fine but slow to capture
    x = torch.randn(n, 64, generator=gen).cuda()
    return graph, x


def _ops(graph, x, backend):
    u = torch.randn(2, 32, 100, device="cuda")
    delta = torch.rand(2, 32, 100, device="cuda") * 0.1
    A = -torch.rand(32, 8, device="cuda") - 0.5
    B = torch.randn(2, 1, 8, 100, device="cuda")
    C = torch.randn(2, 1, 8, 100, device="cuda")
    q = torch.randn(4, 32, device="cuda")
    k = torch.randn(2, 100, 4, 32, device="cuda")
    v = torch.randn(2, 100, 4, 32, device="cuda")
    alpha = torch.randn(x.shape[0], 1, device="cuda")
    return {
        "spmm_sum": lambda: scangraph.spmm(graph, x, "sum", backend=backend),
        "spmm_max": lambda: scangraph.spmm(graph, x, "max", backend=backend),
        "sddmm": lambda: scangraph.sddmm(graph, x, x, backend=backend),
        "gat_aggregate": lambda: scangraph.gat_aggregate(graph, x[:, None], alpha, alpha, backend=backend),
        "selective_scan": lambda: scangraph.selective_scan(u, delta, A, B, C, backend=backend),
        "prefix_attention": lambda: scangraph.prefix_attention(q, k, v, backend=backend),
    }


@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("op", ("spmm_sum", "spmm_max", "sddmm", "gat_aggregate", "selective_scan",
                                "prefix_attention"))
def test_forward_captures_and_replays(op, backend):
    graph, x = _inputs()
    run = _ops(graph, x, backend)[op]
    expected = run()                       # eager, also compiles Triton kernels before capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()                              # warm-up on a side stream, as capture requires
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        captured = run()
    x.mul_(1.0)                            # replay reads the same buffers
    cuda_graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expected)


@pytest.mark.parametrize("backend", ("cuda", "triton"))
def test_attention_dropout_draws_a_new_mask_at_each_replay(backend):
    """torch's rule for RNG under CUDA graphs: the (seed, offset) of gat_aggregate's dropout is
    drawn by a torch RNG op inside the captured region, so each replay draws a new mask rather
    than replaying the capture's one."""
    graph, x = _inputs()
    alpha = torch.randn(x.shape[0], 1, device="cuda")

    def run():
        return scangraph.gat_aggregate(graph, x[:, None], alpha, alpha, 0.2, 0.5, backend=backend)

    run()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        captured = run()
    replays = []
    for _ in range(3):
        cuda_graph.replay()
        torch.cuda.synchronize()
        replays.append(captured.clone())
    assert all(torch.isfinite(r).all() for r in replays)
    assert not torch.equal(replays[0], replays[1]) and not torch.equal(replays[1], replays[2])
