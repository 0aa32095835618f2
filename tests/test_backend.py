"""Backend choice: argument, use_backend(), SCANGRAPH_BACKEND, auto; clear errors."""
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
    monkeypatch.setattr(tk, "INTERPRETED", False)
    with pytest.raises(scangraph.BackendUnavailable, match="TRITON_INTERPRET=1"):
        backend_module.resolve("spmm", "triton", torch.device("cpu"))


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
