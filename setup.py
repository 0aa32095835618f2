"""Builds scangraph._C: csrc/cpu always, csrc/cuda when nvcc and a CUDA build of torch exist.

Environment:
  SCANGRAPH_CUDA=0|1     force the CUDA kernels off / on (default: on when both are present;
                         no GPU is needed to build them)
  TORCH_CUDA_ARCH_LIST   CUDA architectures to build for (read by torch's build helpers)
  MAX_JOBS               parallel compile jobs (read by torch's ninja build)
  CUDA_HOME              the CUDA toolkit; defaults to /usr/local/cuda where it holds nvcc
"""
import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _default_cuda_home():
    # torch guesses CUDA_HOME from the nvcc on PATH, which is wrong when that nvcc is a
    # wrapper script outside the toolkit: prefer the toolkit's standard location.
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


_default_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda():
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


def _extension():
    with_cuda = _want_cuda()
    sources = _sources("csrc/registration.cpp") + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(HERE, "csrc"), os.path.join(HERE, "csrc", "include")]
    # torch adds the C++ standard its headers need; -fopenmp makes at::parallel_for parallel
    # (without it the pragma is ignored and every kernel runs on one thread).
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp", "-Wno-psabi"]
    link = ["-fopenmp"]
    if not with_cuda:
        print("scangraph: building the CPU kernels only", file=sys.stderr)
        return cpp_extension.CppExtension(
            "scangraph._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
            extra_link_args=link)
    sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    # A pip-installed CUDA torch carries the cuBLAS / cuSPARSE headers that its own headers
    # include; a minimal toolkit may lack them.
    wheel_include = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)),
                                 "nvidia", "cu13", "include")
    if os.path.isdir(wheel_include):
        include_dirs.append(wheel_include)
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    print(f"scangraph: building CPU + CUDA kernels (CUDA_HOME={cpp_extension.CUDA_HOME}, "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '<torch default>')})",
          file=sys.stderr)
    return cpp_extension.CUDAExtension(
        "scangraph._C", sources, include_dirs=include_dirs,
        define_macros=[("SCANGRAPH_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)


setup(
    package_dir={"scangraph": "python/scangraph",
                 "scangraph.triton_kernels": "triton_kernels"},
    packages=["scangraph", "scangraph.ops", "scangraph.nn", "scangraph.bench", "scangraph.triton_kernels"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
