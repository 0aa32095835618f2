"""Builds scangraph._C: csrc/cpu always, csrc/cuda when nvcc and a CUDA build of torch exist.

Environment:
  SCANGRAPH_CUDA=0|1     force the CUDA kernels off / on (default: on when both are present;
                         no GPU is needed to build them)
  TORCH_CUDA_ARCH_LIST   CUDA architectures to build for; unset: the visible GPUs', or
                         DEFAULT_CUDA_ARCHS where none is visible (see cuda_arch_list)
  SCANGRAPH_STABLE_ABI=1 build on the LibTorch stable ABI: one library that loads under every
                         torch >= 2.10, with the CPU kernels and, as above, the CUDA ones;
                         see docs/packaging.md
  MAX_JOBS               parallel compile jobs (read by torch's ninja build)
  CUDA_HOME              the CUDA toolkit; defaults to /usr/local/cuda where it holds nvcc
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))

# The architectures of a build on a machine without a visible GPU (a Docker image, a wheel, a
# CI runner) when TORCH_CUDA_ARCH_LIST is unset: sm_80 machine code (A100; sm_86 / sm_89 cards
# such as A10, L4 and RTX 30 / 40 run it too), sm_90 machine code (H100 / H200), and compute_90
# PTX that newer GPUs (Blackwell) compile when the library loads. Each added architecture costs
# about one more pass of nvcc's device compilation over every .cu file (docs/packaging.md gives
# the measured times).
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


# A stable-ABI build targets torch 2.10: the C shims it calls exist from 2.10 on, and it loads
# under every later torch (TORCH_TARGET_VERSION, torch/csrc/stable/version.h).
STABLE_ABI_FLOOR = "2.10"
STABLE_ABI_TARGET = "-DTORCH_TARGET_VERSION=0x020a000000000000ULL"


def cuda_arch_list(environ, capabilities, newest=None):
    """(TORCH_CUDA_ARCH_LIST for the build, where it came from).

    environ: the environment; a non-empty TORCH_CUDA_ARCH_LIST wins. capabilities: (major,
    minor) of each visible GPU. newest: the highest (major, minor) the installed torch was built
    for; a newer GPU gets that one (plus PTX), as torch's own helper does.
    """
    given = environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given, "TORCH_CUDA_ARCH_LIST"
    if capabilities:
        found = sorted({min(tuple(c), newest) if newest else tuple(c) for c in capabilities})
        archs = [f"{major}.{minor}" for major, minor in found]
        archs[-1] += "+PTX"
        return ";".join(archs), "the visible GPUs"
    return DEFAULT_CUDA_ARCHS, "the default for a machine without a visible GPU"


def _default_cuda_home():
    # torch guesses CUDA_HOME from the nvcc on PATH, which is wrong when that nvcc is a
    # wrapper script outside the toolkit: prefer the toolkit's standard location.
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _visible_capabilities(torch):
    try:
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a driver that cannot answer counts as no GPU
        return []


def _newest_torch_arch(torch):
    archs = [a for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    numbers = [int(re.sub(r"\D", "", a)) for a in archs]
    return max(((n // 10, n % 10) for n in numbers), default=None)


def _nvcc_version(cpp_extension):
    nvcc = os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc")
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"not runnable ({error})"
    found = re.search(r"release ([\d.]+)", text)
    return found.group(1) if found else "unknown"


def _want_stable_abi(torch):
    asked = os.environ.get("SCANGRAPH_STABLE_ABI", "")
    if asked in ("", "0"):
        return False
    if asked != "1":
        sys.exit(f"SCANGRAPH_STABLE_ABI must be 1 (the stable-ABI build) or 0 / unset (the regular one), got {asked!r}")
    floor = tuple(int(part) for part in STABLE_ABI_FLOOR.split("."))
    if tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2]) < floor:
        sys.exit(f"SCANGRAPH_STABLE_ABI=1 needs torch >= {STABLE_ABI_FLOOR} to build against, found "
                 f"{torch.__version__}")
    return True


def _want_cuda(torch, cpp_extension):
    forced = os.environ.get("SCANGRAPH_CUDA")
    have_toolkit = cpp_extension.CUDA_HOME is not None and (
        shutil.which("nvcc") or os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")))
    have_torch_cuda = torch.version.cuda is not None
    if forced == "0":
        return False
    if forced == "1":
        if not (have_toolkit and have_torch_cuda):
            sys.exit(f"SCANGRAPH_CUDA=1 but nvcc found: {bool(have_toolkit)}, "
                     f"torch built with CUDA: {have_torch_cuda} (torch {torch.__version__})")
        return True
    return bool(have_toolkit and have_torch_cuda)


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _extension(torch, cpp_extension, with_cuda, stable_abi):
    sources = _sources("csrc/registration.cpp") + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(HERE, "csrc"), os.path.join(HERE, "csrc", "include")]
    # torch adds the C++ standard its headers need; -fopenmp makes at::parallel_for parallel
    # (without it the pragma is ignored and every kernel runs on one thread).
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp", "-Wno-psabi"]
    link = ["-fopenmp"]
    if stable_abi:  # the C++ glue only: the .cu kernels do not include torch
        cxx += ["-DSCANGRAPH_STABLE_ABI", STABLE_ABI_TARGET]
        api = f"the LibTorch stable ABI (loads under torch >= {STABLE_ABI_FLOOR}; built against {torch.__version__})"
    else:
        api = f"torch {torch.__version__}'s C++ API (loads under that torch only)"
    if not with_cuda:
        print(f"scangraph: building the CPU kernels only, on {api}", file=sys.stderr)
        extension = cpp_extension.CppExtension(
            "scangraph._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
            extra_link_args=link)
        extension.build_record = _build_record(torch, None, stable_abi)
        return extension
    sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    # A pip-installed CUDA torch carries the cuBLAS / cuSPARSE headers that its own headers
    # include; a minimal toolkit may lack them.
    wheel_include = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)),
                                 "nvidia", "cu13", "include")
    if os.path.isdir(wheel_include):
        include_dirs.append(wheel_include)
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    archs, origin = cuda_arch_list(os.environ, _visible_capabilities(torch), _newest_torch_arch(torch))
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by torch's helper when it compiles
    print(f"scangraph: building CPU + CUDA kernels for TORCH_CUDA_ARCH_LIST={archs} ({origin}; "
          f"nvcc {_nvcc_version(cpp_extension)} at CUDA_HOME={cpp_extension.CUDA_HOME}, "
          f"torch {torch.__version__} with CUDA {torch.version.cuda}), on {api}. SCANGRAPH_CUDA=0 builds "
          "the CPU kernels only.", file=sys.stderr)
    extension = cpp_extension.CUDAExtension(
        "scangraph._C", sources, include_dirs=include_dirs,
        define_macros=[("SCANGRAPH_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    extension.build_record = _build_record(torch, archs, stable_abi)
    return extension


def _build_record(torch, archs, stable_abi=False):
    """The text of scangraph/_build_info.py: what this build was compiled against, for
    `python -m scangraph.info` and the import-time check of the torch version. build_ext writes it
    next to the library it describes (the build folder, or python/scangraph for an in-place build),
    so a record never outlives its library or describes another build's."""
    return ('"""Written by setup.py at build time: what the compiled library was built against."""\n'
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"TORCH_CUDA = {torch.version.cuda!r}\n"
            f"CUDA_ARCHS = {archs!r}  # None: built without the CUDA kernels\n"
            "# The oldest torch the library loads under: on the stable ABI any from this one on; on the\n"
            "# regular API (None) only TORCH_VERSION itself.\n"
            f"STABLE_ABI_FLOOR = {STABLE_ABI_FLOOR if stable_abi else None!r}\n")


def _build_ext_class(torch, cpp_extension, with_cuda):
    class BuildExtension(cpp_extension.BuildExtension):
        """torch's BuildExtension, whose failures in a CUDA build end in one message saying what
        was found and how to build without the CUDA kernels, not a traceback from inside torch.
        After a build it writes the library's record, _build_info.py, beside it."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as error:  # compile errors, torch's architecture and version checks
                if not with_cuda:
                    raise
                detail = str(error).strip().splitlines()
                raise SystemExit(
                    "scangraph: the CUDA kernels could not be built.\n"
                    f"  found: nvcc {_nvcc_version(cpp_extension)} (CUDA_HOME={cpp_extension.CUDA_HOME}), "
                    f"torch {torch.__version__} built with CUDA {torch.version.cuda}, "
                    f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}\n"
                    f"  error: {type(error).__name__}: {detail[-1] if detail else ''}\n"
                    "  To build the CPU kernels only: SCANGRAPH_CUDA=0 pip install --no-build-isolation .\n"
                    "  To pick other architectures: TORCH_CUDA_ARCH_LIST='8.0;9.0+PTX' (for example)."
                ) from None

        def run(self):
            super().run()
            # After run, as an in-place build copies the library into the source tree last.
            for extension in self.extensions:
                path = os.path.join(os.path.dirname(self.get_ext_fullpath(extension.name)), "_build_info.py")
                if not os.path.exists(path) or open(path).read() != extension.build_record:
                    with open(path, "w") as f:
                        f.write(extension.build_record)

    return BuildExtension.with_options(use_ninja=True)


def main():
    _default_cuda_home()
    import torch
    from torch.utils import cpp_extension

    stable_abi = _want_stable_abi(torch)
    with_cuda = _want_cuda(torch, cpp_extension)
    setup(
        package_dir={"scangraph": "python/scangraph",
                     "scangraph.triton_kernels": "triton_kernels"},
        packages=["scangraph", "scangraph.ops", "scangraph.nn", "scangraph.bench", "scangraph.integrations",
                  "scangraph.distributed", "scangraph.triton_kernels"],
        ext_modules=[_extension(torch, cpp_extension, with_cuda, stable_abi)],
        cmdclass={"build_ext": _build_ext_class(torch, cpp_extension, with_cuda)},
        # A stable-ABI build keeps its objects and library apart: a regular build in the same
        # checkout then neither rebuilds from them nor takes the stable library for its own (the
        # record, _build_info.py, goes beside each library: _build_ext_class).
        options={"build": {"build_base": os.path.join("build", "stable_abi", "build")}} if stable_abi else {},
    )


# setuptools' build backend runs this file as __main__; tests import it for cuda_arch_list.
if __name__ == "__main__":
    main()
