"""The benchmark's measuring tools measure what they claim."""
import sys

import pytest
import torch

from scangraph.bench.memory import measure
from scangraph.bench.timing import copy_bandwidth_gbs, median_ms


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
