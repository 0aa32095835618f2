"""The `python -m scangraph.bench` microbenchmarks (timing helpers and per-family cases)."""
