"""The `python -m scangraph.bench` microbenchmarks (timing helpers and per-family cases)."""
import importlib

# One module per kernel family, each with OPS (the case names --ops accepts) and
# cases(device, dtype, options) yielding scangraph.bench.case.Case. A family with OPT_IN = True
# runs only when --ops names its cases.
FAMILY_MODULES = ("sparse", "selective_scan", "causal_conv1d", "prefix_attention", "lowp", "pyg_aggr", "hf_mamba")


def families():
    return [importlib.import_module(f"scangraph.bench.{name}") for name in FAMILY_MODULES]


def all_ops():
    return [op for family in families() for op in family.OPS]


def default_ops():
    return [op for family in families() if not getattr(family, "OPT_IN", False) for op in family.OPS]


def cases(device, dtype, options):
    for family in families():
        yield from family.cases(device, dtype, options)
