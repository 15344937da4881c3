"""Build the example policy: python setup.py build_ext --inplace"""

import llamadiff
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    name="right_to_left",
    ext_modules=cythonize(
        [Extension("right_to_left", ["right_to_left.pyx"], include_dirs=llamadiff.get_include(),
                   extra_compile_args=["-std=c++17"])],
        include_path=llamadiff.get_include(),
    ),
)
