"""Shared test setup: the Triton interpreter, backends per device, the tolerance table, graphs."""
import os
import zlib

# Triton kernels run on CPU tensors only in the interpreter, which must be chosen before triton
# is first imported. bench/gpu_check.sh sets TRITON_INTERPRET=0 to run them compiled on a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist each of the N workers would start one OpenMP thread per core: N threads per
# core, whose spinning barriers made a C++-backend test file run 2.3x slower on CI's 2 cores with
# 2 workers (2026-12-07). Each worker, and the processes it starts, gets its share of the cores.
# The kernels' splits over threads are still tested: tests/test_determinism.py runs every op
# with 1 and 2 threads and compares the bits, and the tests of thread counts set theirs.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

import pytest  # noqa: E402
import torch  # noqa: E402

if _WORKERS > 1:  # torch reads OMP_NUM_THREADS once, and a plugin may have imported it before this file
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from scangraph import datasets  # noqa: E402
from scangraph.backend import BackendUnavailable, resolve  # noqa: E402

HAS_CUDA = torch.cuda.is_available()

# (atol, rtol) of a kernel's output against the float64 reference evaluated on the same
# (rounded) inputs: fp32 accumulation, then one rounding of the output to the dtype.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (1e-2, 2e-2),
}


def assert_close(actual, expected, dtype=None, scale=1.0):
    """Compare with the tolerance of `dtype`; `scale` widens atol where a kernel legitimately
    cancels terms of that magnitude (e.g. attention gradients from a rounded output)."""
    atol, rtol = TOLERANCE[dtype or actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol)


def _available(backend, device):
    try:
        resolve("spmm", backend, torch.device(device))
        return True
    except BackendUnavailable:
        return False


def backend_params():
    """(backend, device) pairs: every compiled backend on CPU (the CUDA kernels under the CPU
    emulation among them) and, with a GPU, on CUDA."""
    params = []
    for backend in ("cpp", "cuda_emulated", "triton"):
        params.append(pytest.param((backend, "cpu"), id=f"{backend}-cpu"))
    for backend in ("cuda", "triton"):
        params.append(pytest.param((backend, "cuda"), id=f"{backend}-cuda", marks=pytest.mark.cuda))
    return params


def emulated(backend, device):
    """True for the backends that run a GPU's kernels on the CPU program by program (Triton's
    interpreter, the CUDA emulation): a call takes seconds there, so gradcheck uses its random
    projection mode (fast_mode) on them; the C++ backend and a GPU check every Jacobian entry."""
    return device == "cpu" and backend in ("triton", "cuda_emulated")


@pytest.fixture
def backend_device(request):
    backend, device = request.param
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    if backend == "cuda_emulated":
        import cuda_emulation  # the CUDA kernels on CPU tensors (tests/cuda_emulation.py)
        reason = cuda_emulation.load()
        if reason:
            pytest.skip(reason)
    if not _available(backend, device):
        pytest.skip(f"backend {backend!r} is unavailable on {device}")
    return backend, device


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run bench/gpu_check.sh on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def real_graph_path(name):
    root = datasets.shared_data_dir()
    path = None if root is None else os.path.join(root, "graphs", f"{name}.npz")
    if path is None or not os.path.exists(path):
        pytest.skip(f"real graph {name} not found (set SCANGRAPH_DATA to the shared data folder)")
    return path


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs per test, yet reproducible from the test's name when one fails.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
