# The only job of this file is the cffi build of the C kernel (out-of-line API mode);
# everything else about the package lives in pyproject.toml.
from setuptools import setup

# cffi builds the extension against the limited API (it is named _mulaw.abi3.so), so the wheel
# says so: one wheel for CPython 3.11 and every later version.
setup(cffi_modules=["csrc/build_mulaw.py:ffibuilder"], options={"bdist_wheel": {"py_limited_api": "cp311"}})
