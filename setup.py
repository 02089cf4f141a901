# The only job of this file is the cffi build of the C kernel (out-of-line API mode);
# everything else about the package lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["csrc/build_mulaw.py:ffibuilder"])
