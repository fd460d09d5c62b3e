"""Package layout: kernels/ installs as fastwsss.kernels, export/ as fastwsss.export.

An explicit package list is needed: automatic discovery would also install a top-level `kernels`.
The CUDA extension fastwsss._C is built only when FASTWSSS_BUILD_CUDA=1 and nvcc is available; the
package installs and works without it.
"""

import os

from setuptools import setup

packages = [
    "fastwsss",
    "fastwsss.algorithms",
    "fastwsss.benchmarking",
    "fastwsss.data",
    "fastwsss.engine",
    "fastwsss.models",
    "fastwsss.methods",
    "fastwsss.reporting",
    "fastwsss.stages",
    "fastwsss.commands",
    "fastwsss.config",
    "fastwsss.kernels",
    "fastwsss.export",
]
package_dir = {
    "fastwsss": "fastwsss",
    "fastwsss.kernels": "kernels",
    "fastwsss.export": "export",
}


def cuda_extensions():
    if os.environ.get("FASTWSSS_BUILD_CUDA") != "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = sorted(os.path.join("csrc", name) for name in os.listdir("csrc") if name.endswith((".cu", ".cpp")))
    if not sources:
        return [], {}
    ext = CUDAExtension("fastwsss._C", sources, extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extensions()

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"fastwsss.kernels": ["*.cu", "*.cpp", "*.h", "preference.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
