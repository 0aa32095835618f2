"""setup.py's choice of CUDA architectures: TORCH_CUDA_ARCH_LIST, the visible GPUs, or the
default for a machine without one (a Docker image, a wheel, a CI runner)."""
import importlib.util
import os
import re
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("scangraph_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, builds nothing
    return module


def test_variable_wins_over_gpus_and_default(setup_py):
    archs, origin = setup_py.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "7.5;8.6"}, [(9, 0)], (12, 0))
    assert (archs, origin) == ("7.5;8.6", "TORCH_CUDA_ARCH_LIST")


@pytest.mark.parametrize("value", ("", "  "))
def test_empty_variable_counts_as_unset(setup_py, value):
    archs, _ = setup_py.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": value}, [], (12, 0))
    assert archs == setup_py.DEFAULT_CUDA_ARCHS


def test_no_gpu_gives_the_default(setup_py):
    archs, origin = setup_py.cuda_arch_list({}, [], (12, 0))
    assert archs == setup_py.DEFAULT_CUDA_ARCHS == "8.0;9.0+PTX"
    assert "without a visible GPU" in origin
    # The default covers A100 and H100 machine code and PTX for newer GPUs.
    assert {"8.0", "9.0+PTX"} <= set(archs.split(";"))


def test_visible_gpus_give_their_architectures(setup_py):
    archs, origin = setup_py.cuda_arch_list({}, [(9, 0), (8, 0), (9, 0)], (12, 0))
    assert archs == "8.0;9.0+PTX" and origin == "the visible GPUs"
    assert setup_py.cuda_arch_list({}, [(8, 6)], (12, 0))[0] == "8.6+PTX"


def test_gpu_newer_than_torch_is_clamped(setup_py):
    # As torch's helper does: a GPU newer than any architecture torch was built for gets
    # torch's newest, whose PTX the driver compiles for the GPU.
    assert setup_py.cuda_arch_list({}, [(13, 0)], (12, 0))[0] == "12.0+PTX"


def test_import_under_another_torch_names_both_versions():
    """The compiled kernels record the torch they were built against; importing scangraph under
    another torch fails with that message, before the loader's undefined-symbol error."""
    import subprocess
    import sys

    import scangraph
    info = scangraph._extension.build_info()
    if info is None:
        pytest.skip("no build record (a source tree without a build)")
    code = ("import torch; torch.__version__ = '2.6.0+cpu'\n"
            "try:\n    import scangraph\nexcept ImportError as error:\n    print(error)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(scangraph.__file__)))
    said = " ".join(out.stdout.split())
    assert f"built against torch {info.TORCH_VERSION}" in said and "but torch 2.6.0+cpu is installed" in said, \
        out.stdout + out.stderr


@pytest.mark.parametrize("installed, refused", [("2.10.0", False), ("2.11.0+cu130", False), ("2.14.1", False),
                                                ("2.10.0a0+git1234", False), ("2.12.0.dev20260101", False),
                                                ("3.0.0", False), ("2.9.1+cpu", True), ("2.6.0", True)])
def test_stable_abi_build_loads_from_its_floor_on(installed, refused, monkeypatch):
    """A library on the stable ABI (STABLE_ABI_FLOOR recorded) is accepted under every torch from
    the floor on, whatever it was built against; below the floor the message names both."""
    from scangraph import _extension

    class Info:
        TORCH_VERSION, TORCH_CUDA, CUDA_ARCHS, STABLE_ABI_FLOOR = "2.14.1+cu130", "13.0", None, "2.10"

    monkeypatch.setattr(_extension, "build_info", lambda: Info)
    monkeypatch.setattr(_extension.torch, "__version__", installed)
    if refused:
        with pytest.raises(ImportError, match=rf"stable ABI of torch >= 2\.10 \(built against torch 2\.14\.1\+cu130\), "
                                              rf"but torch {re.escape(installed)} is installed"):
            _extension.check_torch_version()
    else:
        _extension.check_torch_version()
    Info.STABLE_ABI_FLOOR = None  # a regular build: only the torch it was built against
    with pytest.raises(ImportError, match="built against torch 2.14.1"):
        _extension.check_torch_version()


@pytest.mark.parametrize("installed_cuda, refused", [("13.0", False), ("13.2", False), ("12.8", True), (None, True)])
def test_stable_abi_cuda_build_needs_torch_of_its_cuda_major(installed_cuda, refused, monkeypatch):
    """A stable-ABI library with CUDA kernels loads under any torch from the floor on that is built
    for the same CUDA major version (it links that CUDA runtime); another says so, naming both."""
    from scangraph import _extension

    class Info:
        TORCH_VERSION, TORCH_CUDA, CUDA_ARCHS, STABLE_ABI_FLOOR = "2.14.1+cu130", "13.0", "9.0", "2.10"

    monkeypatch.setattr(_extension, "build_info", lambda: Info)
    monkeypatch.setattr(_extension.torch, "__version__", "2.11.0")
    monkeypatch.setattr(_extension.torch.version, "cuda", installed_cuda)
    if refused:
        said = "a CPU build" if installed_cuda is None else f"built for CUDA {installed_cuda}"
        with pytest.raises(ImportError, match=rf"built for CUDA 13\.0 \(torch 2\.14\.1\+cu130\), but the "
                                              rf"installed torch 2\.11\.0 is {re.escape(said)}"):
            _extension.check_torch_version()
    else:
        _extension.check_torch_version()
    Info.CUDA_ARCHS = None  # the CPU kernels only: any torch from the floor on
    _extension.check_torch_version()


def test_stable_abi_build_is_asked_for(setup_py, monkeypatch):
    """SCANGRAPH_STABLE_ABI=1 asks for the stable-ABI build, with torch >= 2.10 to build against;
    SCANGRAPH_CUDA=1 beside it is accepted (the CUDA glue builds on the stable ABI too)."""
    class Torch:
        __version__ = "2.14.1+cu130"

    monkeypatch.delenv("SCANGRAPH_CUDA", raising=False)
    monkeypatch.delenv("SCANGRAPH_STABLE_ABI", raising=False)
    assert setup_py._want_stable_abi(Torch) is False
    monkeypatch.setenv("SCANGRAPH_STABLE_ABI", "0")
    assert setup_py._want_stable_abi(Torch) is False
    monkeypatch.setenv("SCANGRAPH_STABLE_ABI", "false")
    with pytest.raises(SystemExit, match="SCANGRAPH_STABLE_ABI must be 1"):
        setup_py._want_stable_abi(Torch)
    monkeypatch.setenv("SCANGRAPH_STABLE_ABI", "1")
    assert setup_py._want_stable_abi(Torch) is True
    monkeypatch.setenv("SCANGRAPH_CUDA", "1")
    assert setup_py._want_stable_abi(Torch) is True
    monkeypatch.setenv("SCANGRAPH_CUDA", "0")
    Torch.__version__ = "2.9.1+cpu"
    with pytest.raises(SystemExit, match=r"needs torch >= 2.10 to build against, found 2.9.1\+cpu"):
        setup_py._want_stable_abi(Torch)


def test_stable_abi_cuda_build_puts_the_cuda_glue_on_the_stable_abi(setup_py, monkeypatch, tmp_path):
    """A stable-ABI build with the CUDA kernels compiles every C++ source, the CUDA glue included,
    with the stable-ABI defines (the .cu kernels include no torch), and records both its floor and
    its architectures."""
    made = {}

    class CppExtensionModule:
        CUDA_HOME = str(tmp_path)  # no nvcc there: the version printed is "not runnable"

        @staticmethod
        def CUDAExtension(name, sources, **options):
            made.update(options, name=name, sources=sources)
            return types.SimpleNamespace()

    class Torch:
        __version__ = "2.14.1+cu130"
        __file__ = str(tmp_path / "torch" / "__init__.py")
        version = types.SimpleNamespace(cuda="13.0")
        cuda = types.SimpleNamespace(device_count=lambda: 0, get_arch_list=lambda: ["sm_90"])

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    extension = setup_py._extension(Torch, CppExtensionModule, with_cuda=True, stable_abi=True)
    cxx = made["extra_compile_args"]["cxx"]
    assert "-DSCANGRAPH_STABLE_ABI" in cxx and setup_py.STABLE_ABI_TARGET in cxx
    names = [os.path.basename(source) for source in made["sources"]]
    assert "sparse_launch.cpp" in names and "sparse_fp32.cu" in names and "registration.cpp" in names
    assert "STABLE_ABI_FLOOR = '2.10'" in extension.build_record
    assert "CUDA_ARCHS = '9.0'" in extension.build_record
