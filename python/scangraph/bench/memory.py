"""Peak extra memory of one benchmark call, measured in a fresh process.

    python -m scangraph.bench.memory OP LABEL IMPL PASS [--features F] [--data DIR] [--quick] [--device cpu]

prints the megabytes by which one call raises the process's peak memory above what it held
before the call: on CUDA the allocator's peak; on a Linux CPU the resident-set high-water mark
(VmHWM, reset through /proc/self/clear_refs) over the resident size just before the call. A fresh
process matters on CPU: freed memory that an allocator keeps would hide a second call's peak.
"""
import argparse
import subprocess
import sys

import torch

from scangraph import datasets
from scangraph import bench
from scangraph.bench.case import Options


def _status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def measure(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    fn()
    return max(0, _status_kb("VmHWM") - before) / 1024


def peak_mb_in_subprocess(case, impl, pass_name, device, options: Options):
    """Runs this module in a fresh interpreter; None when the measurement is unavailable."""
    command = [sys.executable, "-m", "scangraph.bench.memory", case.op, case.label, impl, pass_name,
               "--device", str(device)]
    if options.features:
        command += ["--features", ",".join(map(str, options.features))]
    if options.full:
        command.append("--full")
    if options.data_dir:
        command += ["--data", str(options.data_dir)]
    if options.large:
        command.append("--large")
    if options.quick:
        command.append("--quick")
    result = subprocess.run(command, capture_output=True, text=True)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scangraph.bench.memory")
    for name in ("op", "label", "impl", "pass_name"):
        parser.add_argument(name)
    parser.add_argument("--features", default=None)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--large", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    options = Options(quick=args.quick, full=args.full, data_dir=args.data or datasets.shared_data_dir(),
                      features=[int(f) for f in args.features.split(",")] if args.features else None,
                      ops=(args.op,), only=args.label, large=args.large)
    # Only the measured case is built: tensors built and freed before the call would stay
    # resident and hide part of its peak.
    for case in bench.cases(device, torch.float32, options):
        if case.op == args.op and case.label == args.label:
            print(round(measure(case.impls[args.impl][args.pass_name], device), 1))
            return 0
    print(f"no case {args.op} on {args.label}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
