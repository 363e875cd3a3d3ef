"""Build script for ClusterFormer's compiled ops (package metadata lives in setup.cfg).

The extension ``clusterformer._C`` is built from ``clusterformer/csrc``:

* the C++ sources always (CPU kernels, multi-threaded with ATen's ``parallel_for``);
* the ``.cu`` sources too when a CUDA toolkit is usable and matches torch, or when
  ``FORCE_CUDA=1`` (CI compiles them on machines without a GPU so a CUDA build error is caught).

Without a working compiler the package still installs and imports: every op has a pure-PyTorch
fallback (see ``clusterformer/modeling/ops``). Set ``CLUSTERFORMER_SKIP_EXT=1`` to skip the build.
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("clusterformer", "csrc")


def _cuda_requested(cpp_extension) -> bool:
    import torch

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None


def get_extensions():
    if os.environ.get("CLUSTERFORMER_SKIP_EXT", "0") == "1":
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:  # torch is needed to build the op, not to install the package
        return [], {}

    cpp_sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    if not cpp_sources:
        return [], {}

    define_macros = []
    extra_compile_args = {"cxx": ["-O3", "-std=c++17"]}
    extension = cpp_extension.CppExtension
    sources = list(cpp_sources)
    if cuda_sources and _cuda_requested(cpp_extension):
        extension = cpp_extension.CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = [
            "-O3",
            "-std=c++17",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ]
    ext = extension(
        "clusterformer._C",
        sources,
        include_dirs=[os.path.join(ROOT, CSRC)],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = get_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
