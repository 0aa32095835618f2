"""python -m scangraph.bench: time every kernel against what users would otherwise use.

The default run times each family once at its headline shape (about 2 minutes on a 2-core
CPU); --full runs every shape and baseline. For each op, case, backend and pass it prints the
median time, the achieved GB/s of the op's compulsory bytes, that rate as a fraction of the copy
bandwidth measured in this run, and the speedup over the strongest alternative. Every baseline's
time and speedup go to the results files (JSON and CSV), and a PNG plots the speedups and the
fractions of copy bandwidth (with matplotlib).
"""
import argparse
import csv
import json
import os
import platform
import sys
import time

import torch

import scangraph
from scangraph import datasets
from scangraph import bench
from scangraph.bench.case import OURS, Options
from scangraph.bench.memory import peak_mb_in_subprocess
from scangraph.bench.results import append_rows, long_rows
from scangraph.bench.timing import copy_bandwidth_gbs, interleaved_times_ms, quantile

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
    print(f"# {_expected(args)}", file=sys.stderr, flush=True)
    copy_gbs = copy_bandwidth_gbs(device, megabytes=64 if args.quick else 256)
    cases = list(bench.cases(device, dtype, options))
    # Cases are unhashable dataclasses: results are keyed by the case's position.
    # Inference-only ops (the low-precision family) time "fwd" alone.
    passes = [(index, case, pass_name) for index, case in enumerate(cases) for pass_name in ("fwd", "fwd+bwd")
              if all(pass_name in fns for fns in case.impls.values())]
    progress = _progress(sum(len(case.impls) for _, case, _ in passes) * (2 if args.memory else 1))
    times, spread = {}, {}  # median; (20th, 80th percentile)
    for index, case, pass_name in passes:
        # Every implementation of a case in the same rounds (see interleaved_times_ms).
        progress.set_description(f"{case.op} {case.label} {pass_name}")
        runs = interleaved_times_ms({impl: fns[pass_name] for impl, fns in case.impls.items()}, device,
                                    min_seconds=0.1 if args.quick else 0.3)
        for impl, ms in runs.items():
            times[index, pass_name, impl] = quantile(ms, 0.5)
            spread[index, pass_name, impl] = (round(quantile(ms, 0.2), 4), round(quantile(ms, 0.8), 4))
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
                "ms_p20": spread[index, pass_name, impl][0], "ms_p80": spread[index, pass_name, impl][1],
                "GB/s": round(gbs, 2), "of_copy": round(gbs / copy_gbs, 3),
                **{f"x_vs_{b}": round(times[index, pass_name, b] / ms, 2) for b in baselines},
                **{f"ms_{b}": round(times[index, pass_name, b], 4) for b in baselines},
                **{f"ms_p20_{b}": spread[index, pass_name, b][0] for b in baselines},
                **{f"ms_p80_{b}": spread[index, pass_name, b][1] for b in baselines},
                **({"peak_MB": peaks[index, pass_name, impl],
                    **{f"peak_MB_{b}": peaks[index, pass_name, b] for b in baselines}} if args.memory else {}),
            })
    progress.close()
    return {"meta": {
        "date": time.strftime("%Y-%m-%d"), "device": _device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "copy_GB/s": round(copy_gbs, 1),
        "cuda_built": scangraph.cuda_built(), "python": platform.python_version(),
        "triton": _triton_version(),
    }, "rows": rows}


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return ""


def _options(args) -> Options:
    return Options(quick=args.quick, full=args.full, data_dir=args.data or datasets.shared_data_dir(),
                   features=[int(f) for f in args.features.split(",")] if args.features else None,
                   ops=tuple(args.ops.split(",")), large=args.large,
                   graphs=None if args.graphs is None else tuple(args.graphs.split(",")))


def _expected(args) -> str:
    """What the run will take, as measured on the 2-core development VM (CPU, all ops)."""
    if args.device != "cpu":
        return "timing on the GPU (a few minutes with --full)"
    if args.quick:
        return "a smoke run: about 15 s"
    if args.full:
        return "every shape and baseline: about 40 minutes on a 2-core CPU (--memory adds a process per call)"
    return "each family at its headline shape: about 2 minutes on a 2-core CPU (--full: every shape)"


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def strongest(row):
    """(name, speedup) of the fastest alternative that is not one of our backends, or (None, None)."""
    speedups = {k[5:]: v for k, v in row.items() if k.startswith("x_vs_") and v is not None}
    if not speedups:
        return None, None
    name = min(speedups, key=speedups.get)
    return name, speedups[name]


TABLE_WIDTH = 100
# The baselines' names as the table prints them (the results files keep the full names).
SHORT_NAMES = {"torch.sparse.mm": "torch.sparse.mm", "pyg_scatter": "PyG scatter", "sparse_product": "sparse A*A",
               "pyg_gat_propagate": "PyG GATConv math", "mambapy": "mambapy", "mambapy_formulation": "mambapy math",
               "reference": "reference", "sdpa_causal": "causal SDPA", "torch_cumsum": "cumsum formula",
               "fp32_linear_relu": "fp32 linear+relu", "linear_relu": "linear+relu",
               "torch._int_mm+quant+epilogue": "_int_mm+quant", "fp32_spmm_cpp": "fp32 spmm (ours)",
               "fp32_spmm_cuda": "fp32 spmm (ours)", "fp32_torch.sparse.mm": "torch.sparse.mm"}


def format_table(result) -> str:
    """One line per (op, case, backend, pass), at most TABLE_WIDTH characters."""
    meta, rows = result["meta"], result["rows"]
    lines = [f"# {meta['device']}, torch {meta['torch']}, {meta['date']}"[:TABLE_WIDTH]]
    if not rows:
        return "\n".join(lines + ["(no rows)"])
    lines.append(f"{'op':16} {'case':20} {'impl':6} {'pass':7} {'ms':>8} {'GB/s':>5} {'copy':>4}  "
                 "vs the fastest alternative")
    for r in rows:
        name, speedup = strongest(r)
        versus = "-" if name is None else f"{speedup:6.2f}x {SHORT_NAMES.get(name, name)}"
        line = (f"{r['op'][:16]:16} {r['case'][:20]:20} {r['backend'][:6]:6} {r['pass']:7} {r['ms']:8.3f} "
                f"{r['GB/s']:5.1f} {r['of_copy']:4.2f}  {versus}")
        lines.append(line[:TABLE_WIDTH].rstrip())
    return "\n".join(lines)


FAMILIES = {"spmm_sum": "sparse", "spmm_max": "sparse", "gat_aggregate": "sparse", "common_neighbors": "sparse",
            "selective_scan": "selective scan", "prefix_attention": "prefix attention",
            "qlinear_w8a8": "low precision", "qlinear_w4a8": "low precision", "qspmm": "low precision"}


def plot(result, path):
    """One PNG: per row, the speedup over the strongest alternative (log scale) and the fraction
    of copy bandwidth, grouped and coloured by family."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if strongest(r)[0] is not None]
    if not rows:
        return None
    families = list(dict.fromkeys(FAMILIES.get(r["op"], "other") for r in rows))
    colours = dict(zip(families, plt.get_cmap("tab10").colors))
    labels = [f"{r['op']} {r['pass']} ({r['backend']}), {r['case']}" for r in rows]
    positions = list(range(len(rows)))[::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.32 * len(rows)), sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    for r, y in zip(rows, positions):
        name, speedup = strongest(r)
        colour = colours[FAMILIES.get(r["op"], "other")]
        left.barh(y, speedup, color=colour)
        left.text(speedup * 1.05, y, f"{speedup:.1f}x {SHORT_NAMES.get(name, name)}", va="center", fontsize=7)
        right.barh(y, r["of_copy"], color=colour)
    left.set_xscale("log")
    left.axvline(1.0, color="black", linewidth=0.8)
    left.set_yticks(positions, labels, fontsize=7)
    left.set_xlabel("speedup over the fastest alternative (log scale)")
    right.set_xlabel("fraction of copy bandwidth (same run)")
    right.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
    left.set_xlim(right=max(strongest(r)[1] for r in rows) * 8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[f]) for f in families]
    right.legend(handles, families, fontsize=7, loc="lower right")
    meta = result["meta"]
    fig.suptitle(f"scangraph on {meta['device']}, copy bandwidth {meta['copy_GB/s']} GB/s, {meta['date']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scangraph.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--full", action="store_true", help="every shape and baseline (about 40 minutes on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="tiny graphs, short timings (smoke test)")
    parser.add_argument("--features", default=None, help="comma-separated feature sizes of the sparse family")
    parser.add_argument("--ops", default=",".join(bench.default_ops()),
                        help=f"comma-separated cases of {', '.join(bench.all_ops())} "
                             f"(default: all but {', '.join(sorted(set(bench.all_ops()) - set(bench.default_ops())))})")
    parser.add_argument("--data", default=None, help="folder holding graphs/*.npz (default: ../shared/data when present)")
    parser.add_argument("--large", action="store_true",
                        help="also the 1M-node / 16M-edge R-MAT graph (its baselines need ~8 GB at F = 128)")
    parser.add_argument("--graphs", default=None,
                        help="comma-separated graph names of the sparse family (email-Enron, as-22july06, rmat-1m, ...)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure each call's peak extra memory, one fresh process per call")
    parser.add_argument("--out", default="scangraph-bench",
                        help="results files: OUT.json, OUT.csv and (with matplotlib) OUT.png (default: %(default)s)")
    parser.add_argument("--json", help="write the JSON here instead of OUT.json")
    parser.add_argument("--csv", help="write the CSV here instead of OUT.csv")
    parser.add_argument("--plot", help="write the PNG here instead of OUT.png")
    parser.add_argument("--no-plot", action="store_true", help="no PNG")
    parser.add_argument("--append", metavar="CSV",
                        help="also append the run's rows, one per implementation, to this long-format CSV (created "
                             "if absent; bench/results/<machine>.csv keeps one per machine kind)")
    parser.add_argument("--plan", action="store_true",
                        help="print the GPU launch plan at the GPU bench shapes, without a GPU (docs/plan.md)")
    args = parser.parse_args(argv)
    if args.plan:
        from scangraph.bench import plan
        plan.main(args)
        return 0
    result = run(args)
    json_path, csv_path = args.json or f"{args.out}.json", args.csv or f"{args.out}.csv"
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    if result["rows"]:
        with open(csv_path, "w", newline="") as f:
            fields = list(dict.fromkeys(k for r in result["rows"] for k in r))
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(result["rows"])
    if args.append and result["rows"]:
        appended = append_rows(args.append, long_rows(result, run=os.path.basename(args.out)))
        print(f"# appended {appended} rows to {args.append}", file=sys.stderr)
    png = None
    if not args.no_plot:
        try:
            png = plot(result, args.plot or f"{args.out}.png")
        except ImportError:
            png = None  # matplotlib is optional
    print(format_table(result))
    files = ", ".join(p for p in (json_path, csv_path if result["rows"] else None, png) if p)
    print(f"# copy bandwidth of this machine, measured in this run: {result['meta']['copy_GB/s']} GB/s; "
          f"every baseline in {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
