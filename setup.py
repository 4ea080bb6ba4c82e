"""Extension wiring only: everything else is in pyproject.toml.

QMAILREMOTE_NO_EXTENSIONS=1 builds a pure-Python install.
"""

import os

from setuptools import setup

ext_modules = []
if not os.environ.get("QMAILREMOTE_NO_EXTENSIONS"):
    from Cython.Build import cythonize
    from setuptools import Extension

    ext_modules = cythonize(
        [Extension("qmailremote._fast", ["qmailremote/_fast.pyx"],
                   extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
