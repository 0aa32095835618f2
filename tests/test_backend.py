"""Backend choice: argument, use_backend(), SCANGRAPH_BACKEND, auto; clear errors."""
import os

import pytest
import torch

import scangraph
from scangraph import backend as backend_module
from graphs import make_graph


def test_precedence(monkeypatch):
    cpu = torch.device("cpu")
    assert backend_module.resolve("spmm", "auto", cpu) == "cpp"
    monkeypatch.setenv("SCANGRAPH_BACKEND", "reference")
    assert backend_module.resolve("spmm", "auto", cpu) == "reference"
    with scangraph.use_backend("cpp"):
        assert backend_module.resolve("spmm", "auto", cpu) == "cpp"      # context beats env
        assert backend_module.resolve("spmm", "reference", cpu) == "reference"  # argument beats context
    assert backend_module.resolve("spmm", "auto", cpu) == "reference"


def test_bad_names(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        with scangraph.use_backend("fastest"):
            pass
    monkeypatch.setenv("SCANGRAPH_BACKEND", "gpu")
    with pytest.raises(ValueError, match="SCANGRAPH_BACKEND"):
        backend_module.resolve("spmm", "auto", torch.device("cpu"))


def test_cpp_backend_refuses_other_devices():
    with pytest.raises(scangraph.BackendUnavailable, match="runs on CPU tensors"):
        backend_module.resolve("spmm", "cpp", torch.device("cuda"))


def test_cuda_backend_names_what_is_missing():
    if scangraph.cuda_built():
        with pytest.raises(scangraph.BackendUnavailable, match="runs on CUDA tensors"):
            backend_module.resolve("spmm", "cuda", torch.device("cpu"))
    else:
        with pytest.raises(scangraph.BackendUnavailable, match="not built"):
            backend_module.resolve("spmm", "cuda", torch.device("cuda"))


def test_triton_without_interpreter_on_cpu_names_the_fix(monkeypatch):
    import scangraph.triton_kernels as tk
    if tk.UNAVAILABLE is not None:
        pytest.skip(f"triton is unavailable here for another reason: {tk.UNAVAILABLE}")
    monkeypatch.setattr(tk, "INTERPRETED", False)
    with pytest.raises(scangraph.BackendUnavailable, match="TRITON_INTERPRET=1"):
        backend_module.resolve("spmm", "triton", torch.device("cpu"))


@pytest.mark.parametrize("too_old, message", [
    ("del torch.library.triton_op", "has no torch.library.triton_op"),  # torch < 2.6
    ("import triton; triton.__version__ = '3.2.0'", "triton 3.2.0 is older than 3.4"),
])
def test_triton_too_old_names_the_version(too_old, message):
    # A torch or triton older than the Triton kernels need: the package still imports, its C++
    # ops run, and backend="triton" raises BackendUnavailable saying what is too old. (Under CI's
    # torch 2.6 run the real triton 3.2 is the too-old one.)
    import scangraph.triton_kernels as tk
    if tk.UNAVAILABLE is not None and "triton 3.2.0" not in message:
        pytest.skip(f"triton is unavailable here for another reason: {tk.UNAVAILABLE}")
    code = f"""
import torch, torch.library
{too_old}
import scangraph
graph = scangraph.CSRGraph.from_edge_index(torch.tensor([[0, 1], [1, 0]]), num_nodes=2)
x = torch.randn(2, 3)
assert torch.equal(scangraph.spmm(graph, x), x.flip(0))
try:
    scangraph.spmm(graph, x, backend="triton")
except scangraph.BackendUnavailable as error:
    assert {message!r} in str(error), error
else:
    raise AssertionError("backend='triton' ran")
"""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.stderr


def test_old_triton_interpreter_under_new_numpy_names_the_fix():
    from scangraph.triton_kernels import interpreter_problem
    assert "numpy<2.4" in interpreter_problem("3.6.0", "2.4.6")
    assert interpreter_problem("3.6.0", "2.3.5") is None
    assert interpreter_problem("3.7.0", "2.4.6") is None
    assert interpreter_problem("3.10.1", "2.10.0") is None


def test_every_backend_agrees_on_cpu():
    graph = make_graph("karate")
    x = torch.randn(graph.num_cols, 5, dtype=torch.float64)
    results = {}
    for name in ("cpp", "triton", "reference"):
        try:
            results[name] = scangraph.spmm(graph, x, "mean", backend=name)
        except scangraph.BackendUnavailable:
            continue
    assert "cpp" in results and "reference" in results
    for out in results.values():
        torch.testing.assert_close(out, results["reference"])


def test_cpp_and_cuda_are_reported():
    assert scangraph.cpp_built()
    assert isinstance(scangraph.cuda_built(), bool)


def test_info_reports_the_build():
    from scangraph.info import report
    text = report()
    assert torch.__version__ in text and "compiled library" in text and "auto -> cpp" in text
