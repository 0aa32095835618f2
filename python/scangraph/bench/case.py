"""What one benchmark case is, for every family: an op on one input shape, the implementations
to time (ours and the baselines), and the bytes a forward must move."""
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch

from scangraph.backend import BackendUnavailable, resolve

OURS = "scangraph."


@dataclass
class Options:
    """What the command line asked for, as every family's case generator sees it."""
    quick: bool = False     # tiny inputs, short timings (a smoke test)
    full: bool = False      # every shape and baseline (--full); the default is one headline case per op
    data_dir: object = None
    features: object = None  # the sparse family's F (None: the mode's default)
    ops: tuple = ()
    only: object = None     # a case label: build that case alone (the memory subprocess)
    large: bool = False     # also the large inputs (the sparse family's 1M-node / 16M-edge R-MAT)
    graphs: object = None   # the sparse family's graphs by name (None: all of them)
    gpu_shapes: bool = False   # the shapes of a GPU run whatever the device (the launch plan)
    backends: object = None    # our backends to build, instead of the device's (the launch plan)

    def gpu(self, device) -> bool:
        """Whether cases take the GPU's shapes."""
        return device.type == "cuda" or self.gpu_shapes


@dataclass
class Case:
    op: str
    label: str              # the input it runs on: a graph and F, or a shape
    dtype: torch.dtype
    device: torch.device
    bytes_fwd: int          # compulsory bytes of one forward (the backward counts the same again)
    columns: Dict[str, object] = field(default_factory=dict)   # extra table columns (sizes)
    impls: Dict[str, Dict[str, Callable[[], object]]] = field(default_factory=dict)
    # impls[name][pass] with pass in ("fwd", "fwd+bwd"); our backends are named "scangraph.<backend>"


def with_integration(fn: Callable[[], object], apply: Callable[[], object], revert: Callable[[], object]):
    """fn run with an integration's patch applied and undone after each call, so that the
    baseline, timed in the same rounds, runs unpatched."""
    def run():
        apply()
        try:
            return fn()
        finally:
            revert()
    return run


def our_backends(op: str, device: torch.device, options: Options) -> List[str]:
    """The compiled backends that run `op` on `device`; on CPU the Triton interpreter is a
    correctness tool, not a speed contender, so it is left out. options.backends overrides."""
    names = []
    wanted = options.backends or (("cpp",) if device.type == "cpu" else ("cuda", "triton"))
    for backend in wanted:
        try:
            resolve(op, backend, device)
            names.append(backend)
        except BackendUnavailable:
            pass
    return names
