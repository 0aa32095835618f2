"""The test-only CUDA emulation backend, "cuda_emulated": the CUDA kernels of csrc/cuda and their
glue (csrc/cuda/*_launch.cpp), compiled by the host compiler against
csrc/testing/cuda_emulation.h into one library that registers them as CPU kernels of the ops
`scangraph::<op>_cuda_emulated` (same schemas). It is built on the torch API of the loaded
scangraph: the regular one, or the LibTorch stable ABI under a stable-ABI build, so that the
emulation tests the CUDA glue of that build. Built once into build/cuda_emulated (or
build/cuda_emulated_stable; ninja keeps it between runs; CI builds it before the tests):

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
# A library built before, loaded as it is, without a build: CI loads the stable-ABI emulation that
# it built under its main torch under torch 2.11 too (.ci/stable_abi.sh), the one-binary claim.
PREBUILT = "SCANGRAPH_EMULATION_LIBRARY"
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


def _target():
    """(build folder, library name, compiler flags) for the torch API of the loaded scangraph: a
    stable-ABI build gets its own folder and library, built with the same target version as
    scangraph itself (TORCH_TARGET_VERSION, from its floor)."""
    import scangraph

    if not scangraph._extension.stable_abi():
        return BUILD, "scangraph_cuda_emulated", []
    major, minor = (int(part) for part in scangraph._extension.build_info().STABLE_ABI_FLOOR.split("."))
    target = f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000ULL"
    return BUILD + "_stable", "scangraph_cuda_emulated_stable", ["-DSCANGRAPH_STABLE_ABI", target]


def library_path():
    """The emulation's library for the torch API of the loaded scangraph (built or not), or the
    prebuilt one that SCANGRAPH_EMULATION_LIBRARY names."""
    if os.environ.get(PREBUILT):
        return os.environ[PREBUILT]
    build_dir, name, _ = _target()
    return os.path.join(build_dir, f"{name}.so")


def _sources(build_dir):
    """The emulator and the twins' schemas, each .cu through a stub that includes it after the
    emulation header (so the host compiler takes it as C++), and the families' torch glue."""
    stubs = os.path.join(build_dir, "stubs")
    os.makedirs(stubs, exist_ok=True)
    sources = [os.path.join(ROOT, "csrc", "testing", name) for name in ("cuda_emulation.cpp", "cuda_emulation_schemas.cpp")]
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
    build_dir, name, api_flags = _target()
    os.makedirs(build_dir, exist_ok=True)
    flags = ["-O1", "-g0", "-ffp-contract=off", "-DSCANGRAPH_CUDA_EMULATION=1", "-Wno-deprecated-declarations"]
    flags += api_flags
    includes = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "cuda"),
                include]
    extra = os.environ.get("SCANGRAPH_EMULATION_CFLAGS", "").split()  # tools/sanitize.sh adds ASan here
    cpp_extension.load(name=name, sources=_sources(build_dir), extra_cflags=flags + extra,
                       extra_include_paths=includes, extra_ldflags=extra, build_directory=build_dir, with_cuda=False,
                       is_python_module=False, verbose=verbose)
    return library_path()


def load():
    """Builds if needed, loads the library and registers fake kernels and autograd for the
    `_cuda_emulated` ops. Returns None, or why the backend is unavailable."""
    if _state["loaded"] or _state["error"] is not None:
        return _state["error"]
    import scangraph  # noqa: F401  (the scangraph op namespace must exist first)
    from scangraph.ops import _causal_conv1d_lib, _lowp_lib, _prefix_attention_lib, _selective_scan_lib, _sparse_lib
    from scangraph.ops._twins import register_compiled

    try:
        if os.environ.get(PREBUILT):
            import torch
            torch.ops.load_library(os.environ[PREBUILT])
        else:
            build()
    except Exception as error:  # reported by the tests as the reason they skip
        _state["error"] = f"the CUDA emulation could not be built or loaded: {error}"
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
