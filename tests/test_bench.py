"""The benchmark's measuring tools measure what they claim."""
import sys
import time

import pytest
import torch

from scangraph.bench.memory import measure
from scangraph.bench.timing import copy_bandwidth_gbs, interleaved_median_ms, median_ms


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_sees_a_transient_allocation():
    def transient():
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, written, freed on return
        return float(block[-1])
    assert 60 <= measure(transient, torch.device("cpu")) < 200


def test_timing_and_copy_bandwidth_are_positive():
    x = torch.randn(1000)
    assert median_ms(lambda: x.sum(), torch.device("cpu"), min_runs=3, min_seconds=0.0) > 0
    assert copy_bandwidth_gbs(torch.device("cpu"), megabytes=8) > 0.1


def test_interleaved_timing_runs_each_function_in_rounds():
    order = []
    fns = {"fast": lambda: order.append("fast"), "slow": lambda: (order.append("slow"), time.sleep(0.003))}
    medians = interleaved_median_ms(fns, torch.device("cpu"), min_runs=4, min_seconds=0.0)
    assert medians["slow"] >= 3.0 > medians["fast"] > 0
    # one warm-up run each, then 4 rounds in which each timed run follows an untimed one of its own
    assert order == ["fast", "slow"] + ["fast", "fast", "slow", "slow"] * 4


def test_mambapy_baseline_computes_the_selective_scan():
    """The speedups over the mambapy formulation are only honest if it computes the same thing."""
    from scangraph.bench.selective_scan import mambapy_scan
    from scangraph import reference
    for length in (1, 7, 100):
        u, z = torch.randn(2, 3, length, dtype=torch.float64), torch.randn(2, 3, length, dtype=torch.float64)
        delta = torch.rand(2, 3, length, dtype=torch.float64)
        A, D = -torch.rand(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        B, C = torch.randn(2, 1, 4, length, dtype=torch.float64), torch.randn(2, 1, 4, length, dtype=torch.float64)
        leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, z)]
        got = mambapy_scan(*leaves)
        want = reference.selective_scan(*leaves[:5], leaves[5], leaves[6])[0]
        torch.testing.assert_close(got, want)
        for a, b in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), leaves)):
            torch.testing.assert_close(a, b)
