"""pytest-benchmark suite of the cases of `python -m scangraph.bench` (same graphs, sizes
and baselines). Run: pytest bench/ --benchmark-columns=median,ops [--benchmark-json out.json].
SCANGRAPH_BENCH_DEVICE=cuda times the GPU; SCANGRAPH_BENCH_QUICK=1 uses the tiny graphs."""
import os

import pytest
import torch

from scangraph import datasets
from scangraph import bench
from scangraph.bench.case import Options

DEVICE = torch.device(os.environ.get("SCANGRAPH_BENCH_DEVICE", "cpu"))
QUICK = os.environ.get("SCANGRAPH_BENCH_QUICK", "0") == "1"
CASES = list(bench.cases(DEVICE, torch.float32, Options(quick=QUICK, data_dir=datasets.shared_data_dir(),
                                                          ops=tuple(bench.all_ops()))))
PARAMS = [pytest.param(case, impl, pass_name, id=f"{case.op}-{case.label}-{impl}-{pass_name}".replace(" ", "-"))
          for case in CASES for impl in case.impls for pass_name in ("fwd", "fwd+bwd")
          if pass_name in case.impls[impl]]  # inference-only ops (low precision) have no fwd+bwd


def _synchronized(fn):
    if DEVICE.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(DEVICE)
    return run


@pytest.mark.parametrize("case, impl, pass_name", PARAMS)
def test_kernel(benchmark, case, impl, pass_name):
    benchmark.group = f"{case.op} {case.label} {pass_name}"
    benchmark.extra_info.update(bytes=case.bytes_fwd * (2 if pass_name == "fwd+bwd" else 1))
    benchmark(_synchronized(case.impls[impl][pass_name]))
