"""Every sample of tests/op_samples.py on every backend: "cpp", "cuda_emulated" (the CUDA kernels
under the CPU emulation of tests/cuda_emulation.py), "triton" (the interpreter) and "reference";
with a GPU also "cuda" and "triton" on CUDA tensors (the `cuda`-marked parameters).

- forward and backward against the reference backend evaluated in float64 on the same rounded
  inputs, per dtype (the reference backend itself in float64 and float32 only: it accumulates in
  the input dtype, which is not a contract in half precision);
- a second run is bitwise equal (outputs and gradients): the backward passes are deterministic;
- torch.library.opcheck of every raw op that the public function and its backward run;
- every op and its twins (<op>_triton, <op>_cuda_emulated) have one schema.
"""
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cuda_emulation
import scangraph
from conftest import assert_close
from op_samples import BACKENDS, SAMPLES, tensors_of, to_device, to_reference
from scangraph.backend import triton_unavailable_reason

REFERENCE_DTYPES = (torch.float64, torch.float32)


_COARSENESS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _tolerance_dtype(dtype, result_dtype):
    """The coarser of the inputs' and the result's dtype: a float32 state from float16 inputs is
    as precise as float16 allows; a float32 result of float64 inputs as float32 allows."""
    if result_dtype not in _COARSENESS:
        return dtype
    return max(dtype, result_dtype, key=_COARSENESS.index)


def _require(backend, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if backend == "cuda_emulated":
        reason = cuda_emulation.load()
        if reason:
            pytest.skip(reason)
    elif backend == "triton":
        reason = triton_unavailable_reason(torch.device(device))
        if reason:
            pytest.skip(reason)
    elif backend == "cpp" and not scangraph.cpp_built():
        pytest.skip("the compiled library is not built")
    elif backend == "cuda" and not scangraph.cuda_built():
        pytest.skip("the CUDA kernels are not built")


# Triton's interpreter (the Triton backend on CPU) runs float64 (the exact check against the
# reference) on every sample, and float32 and one half type on the core samples, which reach each
# raw op path once: an op's core samples take float16 and bfloat16 in turn, and an op with one
# core sample takes both. A kernel's dtype handling (loads, casts, stores) is the same for every
# shape, while the interpreter costs seconds per sample and dtype (half of CI's test time). Every
# dtype of every sample still runs on the C++ and emulated CUDA backends, on a GPU, and compiles
# for sm_90 (tools/triton_compile_check.py).
INTERPRETER_DTYPES = (torch.float64,)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _interpreter_dtypes(sample):
    """The dtypes the interpreter runs for `sample` (see INTERPRETER_DTYPES)."""
    if not sample.core:
        return tuple(d for d in sample.dtypes if d in INTERPRETER_DTYPES) or sample.dtypes[:1]
    siblings = [s for s in SAMPLES if s.core and s.op == sample.op]
    if len(siblings) == 1:
        return sample.dtypes
    half = HALF_DTYPES[siblings.index(sample) % len(HALF_DTYPES)]
    return tuple(d for d in sample.dtypes if d not in HALF_DTYPES or d == half)


def _params(with_dtype=True):
    """Every sample in every dtype (the interpreter: see INTERPRETER_DTYPES); or, with_dtype=False,
    the core samples in float32 (opcheck and the repeat test: each raw op path once)."""
    params = []
    for sample in SAMPLES if with_dtype else [s for s in SAMPLES if s.core]:
        for backend, device in BACKENDS:
            marks = [pytest.mark.cuda] if device == "cuda" else []
            if sample.core:
                marks.append(pytest.mark.core)
            if backend in sample.skip:
                marks.append(pytest.mark.skip(reason=sample.skip[backend]))
            dtypes = sample.dtypes if with_dtype else (torch.float32 if torch.float32 in sample.dtypes else sample.dtypes[0],)
            if backend == "reference":
                dtypes = tuple(d for d in dtypes if d in REFERENCE_DTYPES)
            if backend == "triton" and device == "cpu" and with_dtype:
                dtypes = _interpreter_dtypes(sample)
            target = backend if device == "cpu" else f"{backend}-gpu"
            for dtype in dtypes:
                name = f"{sample.id}-{target}" + (f"-{str(dtype)[6:]}" if with_dtype else "")
                params.append(pytest.param(sample, (backend, device), dtype, id=name, marks=marks))
    return params


def _leaves(kwargs, names):
    """The differentiable arguments present, flattened (a state tuple gives three leaves)."""
    leaves = []
    for name in names:
        value = kwargs.get(name)
        for t in value if isinstance(value, tuple) else (value,):
            if isinstance(t, torch.Tensor):
                leaves.append(t)
    return leaves


def _prepare(sample, dtype, device="cpu"):
    kwargs = {name: to_device(value, device) for name, value in sample.make(dtype).items()}
    for leaf in _leaves(kwargs, sample.grads):
        leaf.requires_grad_()
    return kwargs


def _copy(kwargs, reference):
    """Separate inputs for one run: float64 leaves for the reference, or clones of the mutated ones."""
    out = {}
    for name, value in kwargs.items():
        if reference:
            value = to_device(value, "cpu")
        if reference and not isinstance(value, scangraph.QTensor):
            value = to_reference(value)
        elif isinstance(value, torch.Tensor):
            value = value.detach().clone().requires_grad_(value.requires_grad)
        elif isinstance(value, tuple) and all(isinstance(t, torch.Tensor) for t in value):
            value = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in value)
        out[name] = value
    return out


def _run(sample, kwargs, backend, cotangents=None):
    """(outputs, gradients, cotangents): the result tensors plus the mutated arguments after the
    call, and the gradients of sum(output * cotangent) over the sample's differentiable inputs.
    A sample's generator is reseeded first: every run draws the same random numbers (a dropout
    mask), so backends and the reference compare on one mask."""
    for value in kwargs.values():
        if isinstance(value, torch.Generator):
            value.manual_seed(value.initial_seed())
    result = getattr(scangraph, sample.op)(**kwargs, backend=backend)
    outputs = tensors_of(result) + [t for name in sample.mutated for t in tensors_of(kwargs[name])]
    leaves = _leaves(kwargs, sample.grads)
    if cotangents is None:
        # rounded to each output's dtype: the backward sees the same values on every backend
        cotangents = [torch.randn_like(o).double().cpu() if o.is_floating_point() else None for o in outputs]
    terms = [(o.double() * c.to(o.device)).sum() for o, c in zip(outputs, cotangents) if o.requires_grad]
    grads = torch.autograd.grad(sum(terms), leaves, allow_unused=True) if leaves and terms else []
    return [o.detach().cpu() for o in outputs], [None if g is None else g.cpu() for g in grads], cotangents


@pytest.mark.parametrize("sample, target, dtype", _params())
def test_forward_backward(sample, target, dtype):
    backend, device = target
    _require(backend, device)
    kwargs = _prepare(sample, dtype, device)
    # The exact (integer) ops compare with the reference on the same inputs; the others with the
    # reference in float64 on the same rounded values.
    reference_inputs = _copy(kwargs, reference=not sample.exact)
    outputs, grads, cotangents = _run(sample, kwargs, backend)
    want, want_grads, _ = _run(sample, reference_inputs, "reference", cotangents)
    assert len(outputs) == len(want)
    for i, (got, expected) in enumerate(zip(outputs, want)):
        assert got.shape == expected.shape, f"output {i}: shape {tuple(got.shape)}, want {tuple(expected.shape)}"
        if got.is_floating_point():
            assert_close(got, expected, _tolerance_dtype(dtype, got.dtype), sample.tol)
        else:
            assert torch.equal(got, expected), f"output {i} differs from the reference"
    names = [n for n in sample.grads if kwargs.get(n) is not None]
    for i, (got, expected) in enumerate(zip(grads, want_grads)):
        if got is None or expected is None:
            present = got if expected is None else expected  # an unused input: no gradient, or zeros
            assert present is None or present.numel() == 0 or present.abs().max() == 0
            continue
        try:
            assert_close(got, expected, _tolerance_dtype(dtype, got.dtype), sample.grad_tol)
        except AssertionError as error:
            raise AssertionError(f"gradient {i} ({names}): {error}") from None


@pytest.mark.parametrize("sample, target, dtype", _params(with_dtype=False))
def test_repeatable(sample, target, dtype):
    backend, device = target
    if (backend, device) == ("triton", "cpu"):
        # The interpreter runs a launch's programs one after another in one fixed order: the same
        # bits every time by construction (the GPU run, triton-gpu, is the one that can differ).
        pytest.skip("Triton's interpreter runs programs sequentially: a repeat there cannot differ")
    _require(backend, device)
    kwargs = _prepare(sample, dtype, device)
    first = _run(sample, _copy(kwargs, reference=False), backend)
    second = _run(sample, _copy(kwargs, reference=False), backend, first[2])
    for a, b in zip(first[0] + list(first[1]), second[0] + list(second[1])):
        if a is not None:
            assert torch.equal(a, b), "a second run gave other bits"


class _RecordOps(TorchDispatchMode):
    """Records the first call of every scangraph op (below autograd: forward and backward ops)."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "scangraph" and func not in self.calls:
            def keep(a):
                return a.detach().clone() if isinstance(a, torch.Tensor) else a
            self.calls[func] = (tuple(keep(a) for a in args), {k: keep(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


@pytest.mark.parametrize("sample, target, dtype", [p for p in _params(with_dtype=False)
                                                   if p.values[1][0] != "reference"])
def test_opcheck(sample, target, dtype):
    backend, device = target
    _require(backend, device)
    kwargs = _prepare(sample, dtype, device)
    # Forward ops are recorded apart from the ops their backward runs: the differentiable ones
    # get inputs that require grad, so opcheck exercises their autograd registration.
    with _RecordOps() as forward:
        result = getattr(scangraph, sample.op)(**kwargs, backend=backend)
    outputs = [o for o in tensors_of(result) if o.requires_grad]
    # Triton's interpreter checks the forward ops alone: the backward ops cost it about ten times
    # as much (9 s a call for the scan's), while their results are checked in
    # test_forward_backward and their schema twice, against the C++ op's
    # (test_twins_share_one_schema) and here on a GPU.
    interpreted = backend == "triton" and device == "cpu"
    with _RecordOps() as backward:
        if outputs and not interpreted:
            torch.autograd.grad(sum((o.double() * torch.randn_like(o).double()).sum() for o in outputs),
                                _leaves(kwargs, sample.grads), allow_unused=True)
    assert forward.calls, "the public function ran no scangraph op"
    # Fake-tensor tracing of Triton kernels launched on CPU tensors is not supported by
    # torch.compile (the interpreter runs eagerly); those checks run on the GPU.
    utils = ("test_schema", "test_autograd_registration")
    if not interpreted:
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    for recorder, differentiable in ((forward, bool(sample.grads)), (backward, False)):
        for func, (args, kw) in recorder.calls.items():
            if differentiable and torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "Autograd"):
                args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                             for a in args)
            torch.library.opcheck(func, args, kw, test_utils=utils)


def _canonical(schema, op):
    """The schema with the op's name removed, alias sets numbered in order of appearance (a
    Triton op's generated schema names them a0, a1, ...; the C++ list a, b, ...) and SymInt read
    as int (what a Triton op's Python `int` becomes)."""
    labels = {}
    text = re.sub(r"\((\w+)(!?)\)", lambda m: f"({labels.setdefault(m.group(1), len(labels))}{m.group(2)})",
                  str(schema))
    return text.split("(", 1)[1].replace("SymInt", "int")


def test_twins_share_one_schema():
    """The shared autograd and fake kernels assume <op>, <op>_triton and <op>_cuda_emulated take
    and return the same arguments."""
    cuda_emulation.load()
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("scangraph::")]
    base = {n.split("::")[1] for n in names if not n.endswith(("_triton", "_cuda_emulated"))}
    twins = 0
    for op in sorted(base):
        schema = str(getattr(torch.ops.scangraph, op).default._schema)
        for suffix in ("_triton", "_cuda_emulated"):
            if f"scangraph::{op}{suffix}" not in names:
                continue
            twin = str(getattr(torch.ops.scangraph, op + suffix).default._schema)
            assert _canonical(twin, op) == _canonical(schema, op), (twin, schema)
            twins += 1
    assert twins >= 12 + (16 if cuda_emulation.load() is None else 0)
