"""No memory growth: every op, forward and backward on the C++ backend, repeated a few hundred
times on small inputs, leaves the resident set size (RSS) where warm-up left it, within a small
slack. A leak in a kernel's glue (a buffer never freed, a tensor kept alive by a cycle through an
autograd node, a cache keyed on fresh objects) grows RSS by at least the leaked bytes per call.

RSS is read from /proc/self/statm after gc.collect(); the allocator keeps some freed memory, so
the slack absorbs its fluctuation. A first test shows the measurement does see a real leak."""
import ctypes
import ctypes.util
import gc
import os

import pytest
import torch

import scangraph
from scangraph import CSRGraph

WARMUP, ITERATIONS = 40, 300
SLACK = 8 << 20  # bytes

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")


def _release_free_heap():
    # glibc keeps freed heap pages resident; earlier tests in the same process can leave many
    # megabytes of them, which a leak would then fill without growing RSS. malloc_trim returns
    # them to the system, so growth after this point is new memory.
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def _rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Inputs are small, yet each call's outputs and gradients are ~64 KiB: a leak of one of them per call
# grows RSS by ~19 MiB over the iterations, well above the slack.
def _growth(step):
    for _ in range(WARMUP):
        step()
    _release_free_heap()
    before = _rss()
    for _ in range(ITERATIONS):
        step()
    return _rss() - before


def _graph():
    g = torch.Generator().manual_seed(0)
    return CSRGraph.from_edge_index(torch.randint(0, 60, (2, 400), generator=g), 60)


GRAPH = _graph()


def _leaf(*shape):
    return torch.randn(*shape).requires_grad_()


def _backward(*outs):
    sum(o.float().square().sum() for o in outs).backward()


def spmm():
    x, w = _leaf(60, 4, 64), torch.rand(GRAPH.num_edges, 4).requires_grad_()
    for reduce in ("sum", "mean", "max", "min"):
        _backward(scangraph.spmm(GRAPH, x, reduce, w, backend="cpp"))


def sddmm():
    a, b = _leaf(60, 256), _leaf(60, 256)
    _backward(scangraph.sddmm(GRAPH, a, b, backend="cpp"))


def gat_aggregate():
    x, s, d = _leaf(60, 4, 64), _leaf(60, 4), _leaf(60, 4)
    _backward(scangraph.gat_aggregate(GRAPH, x, s, d, backend="cpp"))


def common_neighbor_aggregate():
    x = _leaf(60, 256)
    pairs = torch.randint(0, 60, (2, 30))
    _backward(scangraph.common_neighbor_aggregate(GRAPH, x, pairs[0], pairs[1], backend="cpp"))


def selective_scan():
    u, delta, z = _leaf(1, 64, 256), torch.rand(1, 64, 256).requires_grad_(), _leaf(1, 64, 256)
    A, B, C = (-torch.rand(64, 4)).requires_grad_(), _leaf(1, 2, 4, 256), _leaf(1, 2, 4, 256)
    D, bias, h0 = _leaf(64), _leaf(64), _leaf(2, 64, 4)
    cu = torch.tensor([0, 100, 256], dtype=torch.int32)
    _backward(*scangraph.selective_scan(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0,
                                        cu_seqlens=cu, backend="cpp"))


def selective_state_update():
    state = torch.randn(16, 256, 4)
    scangraph.selective_state_update(state, torch.randn(16, 256), torch.rand(16, 256), -torch.rand(256, 4),
                                     torch.randn(16, 4), torch.randn(16, 4), torch.randn(256), torch.randn(16, 256),
                                     torch.randn(256), True, backend="cpp")


def prefix_attention():
    q, k, v = _leaf(4, 16), _leaf(1, 256, 4, 16), _leaf(1, 256, 4, 16)
    state = (_leaf(2, 4), (torch.rand(2, 4) + 0.5).requires_grad_(), _leaf(2, 4, 16))
    o, (m, c, w) = scangraph.prefix_attention(q, k, v, initial_state=state, return_state=True,
                                              cu_seqlens=torch.tensor([0, 80, 256], dtype=torch.int32), backend="cpp")
    _backward(o, c, w)


def prefix_attention_step():
    state = (torch.randn(64, 4), torch.rand(64, 4) + 0.5, torch.randn(64, 4, 64))
    scangraph.prefix_attention_step(state, torch.randn(4, 64), torch.randn(64, 4, 64), torch.randn(64, 4, 64),
                                    backend="cpp")


def lowp():
    x, w = torch.randn(256, 64), torch.randn(64, 64)
    for bits in (8, 4):
        wq = scangraph.quantize(w, bits, 0, backend="cpp")
        scangraph.qlinear(x, wq, torch.randn(64), "silu", backend="cpp")
        scangraph.qlinear(x, wq, out_dtype=torch.int32, backend="cpp")
    xq = scangraph.quantize(torch.randn(60, 256), 8, 0, backend="cpp")
    scangraph.qspmm(GRAPH, xq, "mean", backend="cpp")
    xf = _leaf(256, 64)
    _backward(scangraph.fake_quantize(xf, 8, 0, backend="cpp"))


OPS = {f.__name__: f for f in (spmm, sddmm, gat_aggregate, common_neighbor_aggregate, selective_scan,
                               selective_state_update, prefix_attention, prefix_attention_step, lowp)}


def test_measurement_sees_a_leak():
    kept = []

    def leaky():
        kept.append(torch.ones(16 << 10))  # 64 KiB touched and kept per call: ~19 MiB in 300 calls

    assert _growth(leaky) > 2 * SLACK


@pytest.mark.parametrize("name", OPS)
def test_no_rss_growth(name):
    growth = _growth(OPS[name])
    assert growth < SLACK, f"{name}: RSS grew by {growth / 2**20:.1f} MiB over {ITERATIONS} iterations"
