"""The one way an op family's compiled twins get their fake kernels and autograd.

Each op exists once per compiled backend, with one schema (csrc/schemas.h): scangraph::<op>
(the C++ / CUDA library), scangraph::<op>_triton (a triton_op) and, in the tests,
scangraph::<op>_cuda_emulated (the CUDA kernels under the CPU emulation); backend.op_name says
which is which. The twins share one fake kernel and one autograd, written once per family in
ops/_<family>_lib.py:

    FAKES = {"<op>": fake_kernel, ...}

    def autograd(ops):
        # ops("<op>") is the twin on the same backend, so a backward runs where its forward ran.
        return {"<op>": (backward, setup_context), ...}
"""
from typing import Callable, Dict

import torch

from scangraph.backend import op_for, op_name


def register_autograd(autograd: Callable, backend: str):
    """The autograd of the family's differentiable ops on `backend`."""
    for op, (backward, setup) in autograd(lambda other: op_for(other, backend)).items():
        torch.library.register_autograd(op_name(op, backend), backward, setup_context=setup)


def register_compiled(fakes: Dict[str, Callable], autograd: Callable, backend: str = "cpp"):
    """The fake kernels and autograd of a family's compiled ops on `backend`: "cpp" (the C++ /
    CUDA library, when it is loaded) or "cuda_emulated" (the test-only emulation). A triton_op
    has its fake kernel from its own definition, and takes only register_autograd."""
    for op, fake in fakes.items():
        torch.library.register_fake(op_name(op, backend))(fake)
    register_autograd(autograd, backend)
