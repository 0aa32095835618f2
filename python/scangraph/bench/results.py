"""The bench's long-format results: one row per (op, case, pass, implementation), ours and the
baselines alike, with the timing spread and where and when it was measured. `python -m
scangraph.bench --append FILE` adds a run's rows to FILE; bench/results/<machine kind>.csv keeps
them, append-only, so that a later run on the same kind of machine compares against every earlier
one without a results file per run."""
import csv
import os
import subprocess
from typing import Dict, List

from scangraph.bench.case import OURS

COLUMNS = ["op", "case", "pass", "implementation", "dtype", "device", "median_ms", "p20_ms", "p80_ms", "GB/s",
           "of_copy", "machine", "torch", "triton", "commit", "date", "run"]


def commit() -> str:
    """The git commit of the source checkout this package runs from ('' when installed from a
    wheel or outside git)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        found = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


def _baselines(row: Dict) -> List[str]:
    return [k[3:] for k in row if k.startswith("ms_") and not k.startswith(("ms_p20", "ms_p80"))]


def long_rows(result: Dict, run: str = "", git_commit: str = None) -> List[Dict]:
    """The run's rows (one per case, pass and backend of ours, the baselines' times in columns)
    as one row per implementation. A baseline's GB/s counts the bytes the op must move, as ours
    does, over the baseline's time; baselines shared by several of our backends appear once.
    `run` labels the run's rows (the bench's --out name)."""
    meta = result["meta"]
    where = dict(machine=meta["device"], torch=meta["torch"], triton=meta.get("triton", ""),
                 commit=commit() if git_commit is None else git_commit, date=meta["date"], run=run)
    rows, seen = [], set()
    for r in result["rows"]:
        key = dict(op=r["op"], case=r["case"], **{"pass": r["pass"]}, dtype=r["dtype"], device=r["device"])
        rows.append(dict(key, implementation=OURS + r["backend"], median_ms=r["ms"], p20_ms=r.get("ms_p20", ""),
                         p80_ms=r.get("ms_p80", ""), **{"GB/s": r["GB/s"]}, of_copy=r["of_copy"], **where))
        for b in _baselines(r):
            if (tuple(key.values()), b) in seen or r[f"ms_{b}"] is None:
                continue
            seen.add((tuple(key.values()), b))
            scale = r["ms"] / r[f"ms_{b}"]  # the same bytes over the baseline's time
            rows.append(dict(key, implementation=b, median_ms=r[f"ms_{b}"], p20_ms=r.get(f"ms_p20_{b}", ""),
                             p80_ms=r.get(f"ms_p80_{b}", ""), **{"GB/s": round(r["GB/s"] * scale, 2)},
                             of_copy=round(r["of_copy"] * scale, 3), **where))
    return rows


def append_rows(path: str, rows: List[Dict]) -> int:
    """Appends rows to the CSV at path (with the header when the file is new); a file with other
    columns is refused, never rewritten. Returns the number of rows appended."""
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    if exists:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            raise SystemExit(f"--append {path}: its columns {header} are not the bench's {COLUMNS}; append to a "
                             "file of this bench's rows, or a new one")
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if not exists:
            writer.writeheader()
        writer.writerows(rows)
    return len(rows)
