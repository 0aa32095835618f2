"""python -m scangraph.bench: time every kernel against what users would otherwise use.

For each op, graph, size, backend and pass it prints the median time, the achieved GB/s of the
op's compulsory bytes, that rate as a fraction of the copy bandwidth measured in this run, and
the speedup over each baseline. --json / --csv write the rows; --plot draws speedups.
"""
import argparse
import csv
import json
import platform
import sys
import time

import torch

import scangraph
from scangraph import datasets
from scangraph import bench
from scangraph.bench.case import OURS, Options
from scangraph.bench.memory import peak_mb_in_subprocess
from scangraph.bench.timing import copy_bandwidth_gbs, interleaved_median_ms

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def _progress(total):
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit="timing", file=sys.stderr, leave=False)
    except ImportError:
        class Plain:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k
                print(f"\r{self.n}/{total} timings", end="", file=sys.stderr, flush=True)

            def set_description(self, text):
                pass

            def close(self):
                print(file=sys.stderr)
        return Plain()


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    options = _options(args)
    unknown = set(options.ops) - set(bench.all_ops())
    if unknown:
        raise SystemExit(f"unknown --ops {sorted(unknown)}; choose from {bench.all_ops()}")
    copy_gbs = copy_bandwidth_gbs(device, megabytes=64 if args.quick else 256)
    cases = list(bench.cases(device, dtype, options))
    # Cases are unhashable dataclasses: results are keyed by the case's position.
    # Inference-only ops (the low-precision family) time "fwd" alone.
    passes = [(index, case, pass_name) for index, case in enumerate(cases) for pass_name in ("fwd", "fwd+bwd")
              if all(pass_name in fns for fns in case.impls.values())]
    progress = _progress(sum(len(case.impls) for _, case, _ in passes) * (2 if args.memory else 1))
    times = {}
    for index, case, pass_name in passes:
        # Every implementation of a case in the same rounds (see interleaved_median_ms).
        progress.set_description(f"{case.op} {case.label} {pass_name}")
        medians = interleaved_median_ms({impl: fns[pass_name] for impl, fns in case.impls.items()}, device,
                                        min_seconds=0.1 if args.quick else 0.3)
        for impl, ms in medians.items():
            times[index, pass_name, impl] = ms
            progress.update()
    # Memory after every timing: the fresh processes it starts would disturb the timings.
    peaks = {}
    for index, case, pass_name in passes if args.memory else ():
        for impl in case.impls:
            progress.set_description(f"{case.op} {case.label} {impl} {pass_name} memory")
            peaks[index, pass_name, impl] = peak_mb_in_subprocess(
                case, impl, pass_name, device, options)
            progress.update()
    rows = []
    for index, case, pass_name in passes:
        moved = case.bytes_fwd * (2 if pass_name == "fwd+bwd" else 1)
        baselines = [b for b in case.impls if not b.startswith(OURS)]
        for impl in case.impls:
            if not impl.startswith(OURS):
                continue
            ms = times[index, pass_name, impl]
            gbs = moved / (ms * 1e-3) / 1e9
            rows.append({
                "op": case.op, "pass": pass_name, "case": case.label, **case.columns,
                "dtype": str(case.dtype).replace("torch.", ""),
                "device": str(device), "backend": impl[len(OURS):], "ms": round(ms, 4),
                "GB/s": round(gbs, 2), "of_copy": round(gbs / copy_gbs, 3),
                **{f"x_vs_{b}": round(times[index, pass_name, b] / ms, 2) for b in baselines},
                **{f"ms_{b}": round(times[index, pass_name, b], 4) for b in baselines},
                **({"peak_MB": peaks[index, pass_name, impl],
                    **{f"peak_MB_{b}": peaks[index, pass_name, b] for b in baselines}} if args.memory else {}),
            })
    progress.close()
    return {"meta": {
        "date": time.strftime("%Y-%m-%d"), "device": _device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "copy_GB/s": round(copy_gbs, 1),
        "cuda_built": scangraph.cuda_built(), "python": platform.python_version(),
    }, "rows": rows}


def _options(args) -> Options:
    return Options(quick=args.quick, data_dir=args.data or datasets.shared_data_dir(),
                   features=[int(f) for f in args.features.split(",")], ops=tuple(args.ops.split(",")),
                   large=args.large, graphs=None if args.graphs is None else tuple(args.graphs.split(",")))


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def print_table(result, file=sys.stdout):
    meta, rows = result["meta"], result["rows"]
    print(f"# {meta['device']}, torch {meta['torch']}, copy bandwidth {meta['copy_GB/s']} GB/s, "
          f"{meta['date']}", file=file)
    if not rows:
        print("(no rows)", file=file)
        return
    baseline_cols = sorted({k for r in rows for k in r if k.startswith("x_vs_")})
    memory_cols = sorted({k for r in rows for k in r if k.startswith("peak_MB")})
    header = ["op", "pass", "case", "backend", "ms", "GB/s", "of_copy"] + baseline_cols + memory_cols
    widths = [max(len(h), *(len(str(r.get(h, ""))) for r in rows)) for h in header]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)), file=file)
    for r in rows:
        print("  ".join(str(r.get(h, "")).ljust(w) for h, w in zip(header, widths)), file=file)


def _plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    baselines = sorted({k for r in rows for k in r if k.startswith("x_vs_")})
    labels = [f"{r['op']} {r['case']} {r['pass']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.6), 4))
    width = 0.8 / len(baselines)
    for i, b in enumerate(baselines):
        ax.bar([j + i * width for j in range(len(rows))], [r.get(b, 0) for r in rows], width, label=b[5:])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], labels, rotation=60, ha="right")
    ax.set_ylabel("speedup of scangraph (x)")
    ax.set_title(result["meta"]["device"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scangraph.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--features", default="32,128", help="comma-separated feature sizes (sparse family)")
    parser.add_argument("--ops", default=",".join(bench.all_ops()),
                        help=f"comma-separated cases (default: all of {', '.join(bench.all_ops())})")
    parser.add_argument("--data", default=None, help="folder holding graphs/*.npz (default: ../shared/data when present)")
    parser.add_argument("--quick", action="store_true", help="tiny graphs, short timings (smoke test)")
    parser.add_argument("--large", action="store_true",
                        help="also the 1M-node / 16M-edge R-MAT graph (its baselines need ~8 GB at F = 128)")
    parser.add_argument("--graphs", default=None,
                        help="comma-separated graph names of the sparse family (email-Enron, as-22july06, rmat-1m, ...)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure each call's peak extra memory, one fresh process per call")
    parser.add_argument("--json", help="write the rows and metadata as JSON")
    parser.add_argument("--csv", help="write the rows as CSV")
    parser.add_argument("--plot", help="write a speedup plot (needs matplotlib)")
    parser.add_argument("--plan", action="store_true",
                        help="print the GPU launch plan at the GPU bench shapes, without a GPU (docs/plan.md)")
    args = parser.parse_args(argv)
    if args.plan:
        from scangraph.bench import plan
        plan.main(args)
        return 0
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.csv and result["rows"]:
        with open(args.csv, "w", newline="") as f:
            fields = list(dict.fromkeys(k for r in result["rows"] for k in r))
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(result["rows"])
    if args.plot and result["rows"]:
        _plot(result, args.plot)
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
