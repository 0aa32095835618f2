"""The benchmark's measuring tools measure what they claim."""
import csv
import sys
import time

import pytest
import torch

from scangraph.bench.memory import measure
from scangraph.bench.results import COLUMNS, append_rows, long_rows
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
    history = tmp_path / "history.csv"
    # Every op (CI's benchmark smoke run is this test).
    result = subprocess.run([sys.executable, "-m", "scangraph.bench", "--quick", "--out", str(out),
                             "--append", str(history)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert all(len(line) <= 100 for line in lines[:-1]), max(lines[:-1], key=len)
    assert len(lines) >= 8 and "fastest alternative" in lines[1]
    assert "copy bandwidth" in lines[-1] and str(out) + ".json" in lines[-1]
    assert (tmp_path / "run.json").exists() and (tmp_path / "run.csv").exists()
    # --append: one long-format row per implementation, ours and the baselines, with the spread
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and f"appended {len(rows)} rows" in result.stderr
    implementations = {r["implementation"] for r in rows}
    assert "scangraph.cpp" in implementations and "torch.sparse.mm" in implementations, implementations
    for r in rows:
        assert 0 < float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"]), r
        assert r["torch"] == torch.__version__ and r["date"] and float(r["GB/s"]) >= 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "run.png").stat().st_size > 10_000


def test_results_append_only_to_a_file_of_the_same_columns(tmp_path):
    """long_rows turns a run's rows into one row per implementation (a baseline shared by two of
    our backends once, its GB/s from the same bytes); append_rows adds to a file and refuses one
    with other columns."""
    result = {"meta": {"device": "test CPU", "torch": "2.x", "triton": "3.x", "date": "2026-12-07"}, "rows": [
        {"op": "spmm_sum", "pass": "fwd", "case": "c", "dtype": "float32", "device": "cpu", "backend": "cpp",
         "ms": 2.0, "ms_p20": 1.9, "ms_p80": 2.2, "GB/s": 10.0, "of_copy": 0.5, "ms_torch.sparse.mm": 4.0,
         "ms_p20_torch.sparse.mm": 3.8, "ms_p80_torch.sparse.mm": 4.4, "x_vs_torch.sparse.mm": 2.0},
        {"op": "spmm_sum", "pass": "fwd", "case": "c", "dtype": "float32", "device": "cpu", "backend": "triton",
         "ms": 8.0, "ms_p20": 7.0, "ms_p80": 9.0, "GB/s": 2.5, "of_copy": 0.125, "ms_torch.sparse.mm": 4.0,
         "ms_p20_torch.sparse.mm": 3.8, "ms_p80_torch.sparse.mm": 4.4, "x_vs_torch.sparse.mm": 0.5}]}
    rows = long_rows(result, run="test", git_commit="abc")
    assert [r["implementation"] for r in rows] == ["scangraph.cpp", "torch.sparse.mm", "scangraph.triton"]
    assert rows[1]["GB/s"] == 5.0 and rows[1]["p80_ms"] == 4.4 and (rows[1]["commit"], rows[1]["run"]) == ("abc", "test")
    path = tmp_path / "cpu.csv"
    assert append_rows(str(path), rows) == 3 and append_rows(str(path), rows[:1]) == 1
    with open(path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    other = tmp_path / "other.csv"
    other.write_text("op,ms\nspmm,1\n")
    with pytest.raises(SystemExit, match="not the bench's"):
        append_rows(str(other), rows)
    assert other.read_text() == "op,ms\nspmm,1\n"


def test_hf_mamba_cases_run_on_request_only(tmp_path):
    """The HF transformers family is opt-in (its baseline's CPU training step takes minutes at the
    default shape): a plain run leaves it out, --ops runs the model's training step and greedy
    decoding on scangraph against transformers' own path."""
    pytest.importorskip("transformers")
    import subprocess
    from scangraph import bench
    assert "hf_mamba" in bench.all_ops() and "hf_mamba" not in bench.default_ops()
    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, "-m", "scangraph.bench", "--quick", "--ops", "hf_mamba,hf_mamba_decode",
                             "--out", str(out), "--no-plot"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(f"{out}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["op"], r["pass"]) for r in rows} == {("hf_mamba", "fwd"), ("hf_mamba", "fwd+bwd"),
                                                    ("hf_mamba_decode", "fwd")}
    assert all(float(r["ms_transformers"]) > 0 and float(r["ms"]) > 0 for r in rows), rows
