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


def test_quick_run_prints_a_table_that_fits_and_writes_every_file(tmp_path):
    """The first run a user sees: one table of at most 100 columns, a closing line naming the
    copy bandwidth and the results files, which exist (the PNG where matplotlib is installed)."""
    import subprocess
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "scangraph.bench", "--quick", "--ops",
                             "spmm_sum,selective_scan,prefix_attention,qlinear_w8a8", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert all(len(line) <= 100 for line in lines[:-1]), max(lines[:-1], key=len)
    assert len(lines) >= 8 and "fastest alternative" in lines[1]
    assert "copy bandwidth" in lines[-1] and str(out) + ".json" in lines[-1]
    assert (tmp_path / "run.json").exists() and (tmp_path / "run.csv").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "run.png").stat().st_size > 10_000
