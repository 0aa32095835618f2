"""The test-only CUDA emulation backend, "cuda_emulated": the CUDA kernels of csrc/cuda and their
glue (csrc/cuda/*_launch.cpp), compiled by the host compiler against
csrc/testing/cuda_emulation.h into one library that registers them as CPU kernels of the ops
`scangraph::<op>_cuda_emulated` (same schemas). Built once into build/cuda_emulated (ninja keeps
it between runs; CI builds it before the tests):

    python tests/cuda_emulation.py          # build (MAX_JOBS jobs), then print the ops it registers

It needs the CUDA headers (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h: a toolkit, or the headers
that a CUDA torch wheel carries), not a GPU, nvcc or libcudart. docs/testing.md says what the
emulation checks and what only a GPU shows.
"""
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("SCANGRAPH_EMULATION_BUILD", os.path.join(ROOT, "build", "cuda_emulated"))
NAME = "scangraph_cuda_emulated"
# Every family's kernels, through their own glue; each family registers its ops' twins.
FAMILIES = ("sparse", "selective_scan", "causal_conv1d", "prefix_attention", "lowp")

_state = {"loaded": False, "error": None}


def cuda_include_dir():
    """A folder holding cuda_runtime.h, cuda_fp16.h and cuda_bf16.h, or None."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    candidates.append("/usr/local/cuda/include")
    try:
        import torch
        site = os.path.dirname(os.path.dirname(torch.__file__))
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
        candidates += [os.path.join(site, "nvidia", "cuda_runtime", "include")]
    except ImportError:
        pass
    for folder in candidates:
        if all(os.path.exists(os.path.join(folder, h)) for h in ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h")):
            return folder
    return None


def _sources():
    """The emulator, each .cu through a stub that includes it after the emulation header (so
    the host compiler takes it as C++), and the families' torch glue."""
    stubs = os.path.join(BUILD, "stubs")
    os.makedirs(stubs, exist_ok=True)
    sources = [os.path.join(ROOT, "csrc", "testing", "cuda_emulation.cpp")]
    for cu in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
        stub = os.path.join(stubs, os.path.basename(cu)[:-3] + ".cpp")
        text = f'#include "testing/cuda_emulation.h"\n#include "{cu}"\n'
        if not os.path.exists(stub) or open(stub).read() != text:  # rewrite only on change (ninja)
            with open(stub, "w") as f:
                f.write(text)
        sources.append(stub)
    sources += [os.path.join(ROOT, "csrc", "cuda", f"{family}_launch.cpp") for family in FAMILIES]
    return sources


def build(verbose=False):
    """Compiles (or finds up to date) the emulated library; returns its path."""
    include = cuda_include_dir()
    if include is not None and not os.environ.get("CUDA_HOME"):  # quiets torch's guess from PATH
        os.environ["CUDA_HOME"] = os.path.dirname(include)
    from torch.utils import cpp_extension

    import scangraph  # noqa: F401  (defines the scangraph op namespace that the library extends)

    if include is None:
        raise RuntimeError("the CUDA headers (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h) were not found: set "
                           "CUDA_HOME to a CUDA toolkit, or install a CUDA build of torch")
    os.makedirs(BUILD, exist_ok=True)
    flags = ["-O1", "-g0", "-ffp-contract=off", "-DSCANGRAPH_CUDA_EMULATION=1", "-Wno-deprecated-declarations"]
    includes = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "cuda"),
                include]
    extra = os.environ.get("SCANGRAPH_EMULATION_CFLAGS", "").split()  # tools/sanitize.sh adds ASan here
    cpp_extension.load(name=NAME, sources=_sources(), extra_cflags=flags + extra, extra_include_paths=includes,
                       extra_ldflags=extra, build_directory=BUILD, with_cuda=False, is_python_module=False,
                       verbose=verbose)
    return os.path.join(BUILD, f"{NAME}.so")


def load():
    """Builds if needed, loads the library and registers fake kernels and autograd for the
    `_cuda_emulated` ops. Returns None, or why the backend is unavailable."""
    if _state["loaded"] or _state["error"] is not None:
        return _state["error"]
    import scangraph  # the scangraph op namespace must exist first
    if scangraph._extension.stable_abi():
        # The emulation tests the CUDA glue, which a stable-ABI build has none of; it would also
        # rebuild the shared build folder for this torch.
        _state["error"] = "the loaded scangraph is a stable-ABI build (CPU kernels only, no CUDA glue to emulate)"
        return _state["error"]
    from scangraph.ops import _causal_conv1d_lib, _lowp_lib, _prefix_attention_lib, _selective_scan_lib, _sparse_lib
    from scangraph.ops._twins import register_compiled

    try:
        build()
    except Exception as error:  # reported by the tests as the reason they skip
        _state["error"] = f"the CUDA emulation could not be built: {error}"
        return _state["error"]
    for family in (_sparse_lib, _selective_scan_lib, _causal_conv1d_lib, _prefix_attention_lib, _lowp_lib):
        register_compiled(family.FAKES, family.autograd, "cuda_emulated")
    _state["loaded"] = True
    return None


if __name__ == "__main__":
    path = build(verbose="-v" in sys.argv)
    error = load()
    if error:
        sys.exit(error)
    import torch
    ops = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                 if n.startswith("scangraph::") and n.endswith("_cuda_emulated"))
    print(f"{path}: {len(ops)} ops: {', '.join(ops)}")
