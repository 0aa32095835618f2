"""The `python -m scangraph.bench` microbenchmarks (timing helpers and per-family cases)."""
import importlib

# One module per kernel family, each with OPS (the case names --ops accepts) and
# cases(device, dtype, options) yielding scangraph.bench.case.Case.
FAMILY_MODULES = ("sparse", "selective_scan", "prefix_attention", "lowp")


def families():
    return [importlib.import_module(f"scangraph.bench.{name}") for name in FAMILY_MODULES]


def all_ops():
    return [op for family in families() for op in family.OPS]


def cases(device, dtype, options):
    for family in families():
        yield from family.cases(device, dtype, options)
