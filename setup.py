"""Build script for ClusterFormer's compiled ops (package metadata lives in setup.cfg).

The extension ``clusterformer._C`` is built from ``clusterformer/csrc``:

* the C++ sources always (CPU kernels, multi-threaded with ATen's ``parallel_for``);
* the ``.cu`` sources too when a CUDA toolkit is usable and matches torch, or when
  ``FORCE_CUDA=1`` (CI compiles them on machines without a GPU so a CUDA build error is caught).

Without a working compiler the package still installs and imports: every op has a pure-PyTorch
fallback (see ``clusterformer/modeling/ops``), which warns once at run time that the extension is
missing. Environment variables:

* ``CLUSTERFORMER_SKIP_EXT=1``: do not build the extension at all;
* ``CLUSTERFORMER_REQUIRE_EXT=1`` (or ``FORCE_CUDA=1``): a failed build is an error instead of a
  warning (the Makefile sets it, so CI fails on a compile error);
* ``FORCE_CUDA=1``: compile the CUDA kernels even where no GPU is visible;
  ``TORCH_CUDA_ARCH_LIST`` picks their architectures.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("clusterformer", "csrc")


def _has_cuda_runtime(home: str) -> bool:
    return any(os.path.exists(os.path.join(home, lib, "libcudart.so")) for lib in ("lib64", "lib"))


def _locate_cuda_home() -> None:
    """Sets CUDA_HOME for torch.utils.cpp_extension when it would guess wrong.

    Without CUDA_HOME / CUDA_PATH, torch takes the parent of the ``bin`` holding ``nvcc``. Where
    ``nvcc`` on PATH is a wrapper script (``/usr/local/bin/nvcc`` on this project's machines) that
    gives ``/usr/local``, which has no CUDA runtime library, and linking fails (``-lcudart``).
    Prefer a directory that really holds a toolkit: nvcc's resolved location, else
    ``/usr/local/cuda``. Must run before ``torch.utils.cpp_extension`` is imported.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and _has_cuda_runtime(home):
            os.environ["CUDA_HOME"] = home
            return


def _nvcc_version(cuda_home: str):
    """(major, minor) of the toolkit's nvcc, or None if it cannot be run."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _cuda_requested(cpp_extension) -> bool:
    """Whether to compile the ``.cu`` kernels.

    ``FORCE_CUDA=1`` always does (CI compiles them without a GPU); otherwise only when torch sees a
    GPU and the toolkit's major version matches torch's CUDA (``torch.utils.cpp_extension``
    refuses to build against another major version, e.g. torch 2.3.1/cu121 with nvcc 13). A
    mismatch falls back to the C++ (CPU) kernels instead of failing the whole install.
    """
    import torch

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if torch.version.cuda is None or cpp_extension.CUDA_HOME is None:
        return False
    if not torch.cuda.is_available():
        return False
    toolkit = _nvcc_version(cpp_extension.CUDA_HOME)
    torch_major = int(torch.version.cuda.split(".")[0])
    if toolkit is None or toolkit[0] != torch_major:
        print(
            "clusterformer: skipping the CUDA kernels: torch is built with CUDA "
            f"{torch.version.cuda} but the toolkit at {cpp_extension.CUDA_HOME} is {toolkit}; "
            "set FORCE_CUDA=1 to try anyway"
        )
        return False
    return True


def get_extensions():
    if os.environ.get("CLUSTERFORMER_SKIP_EXT", "0") == "1":
        return [], {}
    _locate_cuda_home()
    try:
        from torch.utils import cpp_extension
    except ImportError:  # torch is needed to build the op, not to install the package
        return [], {}

    cpp_sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    if not cpp_sources:
        return [], {}

    define_macros = []
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++17 for torch 2.3,
    # C++20 for recent releases) to both the host compiler and nvcc.
    # -fopenmp is required: ATen's parallel_for is an inline OpenMP region in the headers, so
    # without it the CPU kernels would silently run on one thread. The OpenMP runtime symbols
    # resolve to the one torch already loaded.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    extension = cpp_extension.CppExtension
    sources = list(cpp_sources)
    if cuda_sources and _cuda_requested(cpp_extension):
        extension = cpp_extension.CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        # torch adds its own -D__CUDA_NO_HALF*/BFLOAT16_CONVERSIONS__ flags; the kernels convert
        # half/bf16 through c10::Half/c10::BFloat16, which work with them.
        extra_compile_args["nvcc"] = ["-O3"]
    ext = extension(
        "clusterformer._C",
        sources,
        include_dirs=[os.path.join(ROOT, CSRC)],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )
    return [ext], {"build_ext": _tolerant_build_ext(cpp_extension)}


def _extension_required() -> bool:
    return "1" in (os.environ.get("CLUSTERFORMER_REQUIRE_EXT"), os.environ.get("FORCE_CUDA"))


def _tolerant_build_ext(cpp_extension):
    """torch's BuildExtension, except that a failed build warns and installs without the extension
    (the ops then run their PyTorch fallback) unless the extension is required."""
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class BuildExtension(base):
        def build_extensions(self) -> None:
            try:
                super().build_extensions()
            except Exception as error:
                if _extension_required():
                    raise
                # Nothing was built: forget the extension so that the in-place copy and the
                # install steps do not look for it.
                self.extensions = []
                print(
                    f"\nclusterformer: WARNING: building clusterformer._C failed ({error}); "
                    "installing without it, so the ops run their slower pure-PyTorch fallback. "
                    "Set CLUSTERFORMER_REQUIRE_EXT=1 to make this an error.\n",
                    file=sys.stderr,
                )

    return BuildExtension


ext_modules, cmdclass = get_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
