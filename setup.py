"""Builds the C++ pair-selection extension `fastalign._C`; everything else lives in pyproject.toml."""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "fastalign._C",
        sorted(["csrc/selection.cpp", "csrc/bindings.cpp"]),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3", "-ffp-contract=off"],  # no FMA contraction: results must match numpy bit for bit
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
