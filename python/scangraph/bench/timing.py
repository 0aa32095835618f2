"""Timing and bandwidth helpers: medians over repeated runs, and the device's copy bandwidth
measured in the same process (the ceiling every memory-bound kernel is compared with)."""
import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, min_runs: int = 5,
              min_seconds: float = 0.3, max_runs: int = 200) -> float:
    """Median wall time of fn() in milliseconds after one warm-up run, repeated until both
    min_runs and min_seconds are reached. On CUDA each run is timed with events."""
    fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start_all < min_seconds):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device, megabytes: int = 256) -> float:
    """GB/s of a large device-memory copy, counting bytes read plus bytes written."""
    n = megabytes * (1 << 20) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, min_runs=10)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
