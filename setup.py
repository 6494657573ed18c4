"""tvcfs's one compiled module; everything else is in pyproject.toml.

``tvcfs.store._planes``: the packed-block decode's kernels (docs/performance.md "Packed
blocks", ninth round). Optional: without a C compiler and Python's headers tvcfs
installs all the same and decodes with numpy (the same bytes, slower; ``TVCFS_NO_C=1``
forces that path). Here rather than in ``[tool.setuptools.ext-modules]``, which
setuptools still calls experimental.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tvcfs.store._planes", ["tvcfs/store/_planes.c"],
                             extra_compile_args=["-O3"], optional=True)])
