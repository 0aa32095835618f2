"""Timing and bandwidth helpers: medians (and the 20th / 80th percentiles) over repeated runs,
and the device's copy bandwidth measured in the same process (the ceiling every memory-bound
kernel is compared with)."""
import statistics
import time
from typing import Callable, Dict, List

import torch


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def median_ms(fn: Callable[[], object], device: torch.device, min_runs: int = 5,
              min_seconds: float = 0.3, max_runs: int = 200) -> float:
    """Median wall time of fn() in milliseconds after one warm-up run, repeated until both
    min_runs and min_seconds are reached. On CUDA each run is timed with events."""
    return interleaved_median_ms({"fn": fn}, device, min_runs, min_seconds, max_runs)["fn"]


def interleaved_median_ms(fns: Dict[str, Callable[[], object]], device: torch.device, min_runs: int = 5,
                          min_seconds: float = 0.3, max_runs: int = 200) -> Dict[str, float]:
    """Median milliseconds of each of fns (interleaved_times_ms)."""
    times = interleaved_times_ms(fns, device, min_runs, min_seconds, max_runs)
    return {name: statistics.median(t) for name, t in times.items()}


def quantile(times: List[float], q: float) -> float:
    """The q-quantile of the timed runs, linearly interpolated (q = 0.5: the median)."""
    ordered = sorted(times)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def interleaved_times_ms(fns: Dict[str, Callable[[], object]], device: torch.device, min_runs: int = 5,
                         min_seconds: float = 0.3, max_runs: int = 200) -> Dict[str, List[float]]:
    """Every timed run's milliseconds of each of fns, timed in rounds (one run of each per round, after one
    warm-up run each) until every one has min_runs runs and the rounds took min_seconds per
    function. Interleaving spreads a slow spell of a shared machine over all of them alike,
    instead of landing it on whichever function was being timed. On the CPU each timed run comes
    right after an untimed run of the same function: on a VM, a call that frees a lot of memory
    slows the page faults of the next call's fresh allocations (measured: 2.5x on a 100 MB
    output right after torch._int_mm's CPU composition), which in rounds would be charged to
    whichever function follows the one that frees most. CUDA's caching allocator has no such
    carry-over."""
    for fn in fns.values():
        fn()
    _sync(device)
    settle = device.type == "cpu"
    times = {name: [] for name in fns}
    start_all = time.perf_counter()
    rounds = 0
    while rounds < max_runs and (rounds < min_runs or time.perf_counter() - start_all < min_seconds * len(fns)):
        for name, fn in fns.items():
            if settle:
                fn()
            times[name].append(_time_once_ms(fn, device))
        rounds += 1
    return times


def copy_bandwidth_gbs(device: torch.device, megabytes: int = 256) -> float:
    """GB/s of a large device-memory copy, counting bytes read plus bytes written."""
    n = megabytes * (1 << 20) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, min_runs=10)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
