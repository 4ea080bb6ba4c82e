"""Extension and launcher wiring only: everything else is in pyproject.toml.

QMAILREMOTE_NO_EXTENSIONS=1 builds a pure-Python install (the launcher is
still compiled).  The installed ``qmail-remote`` is the C launcher in
``launcher/qmail-remote.c``, compiled into the build's scripts with the
compiler that builds extensions; without a working C compiler it is a
Python script instead (README, "Known limits").
"""

import os
import sys

from setuptools import Distribution, setup
# setuptools first: it provides distutils (gone from the standard library).
from distutils.command.build_scripts import build_scripts

LAUNCHER = "launcher/qmail-remote.c"
# Resource floors below which the launcher prints a Z report instead of
# starting Python.  Measured need of a whole delivery (README, "Running
# under qmail"): 15-17 MiB of address space, 6-7 MiB of data segment,
# 5 descriptors; about twice that, for other interpreter builds and paths.
MEMORY_FLOOR_MB = 32
NOFILE_FLOOR = 8
# Installed when the launcher cannot be compiled; pip replaces "#!python"
# with the installing interpreter.
FALLBACK_SCRIPT = """#!python
# qmail-remote without its C launcher: no C compiler at build time.
from qmailremote.cli import main
main()
"""


def _c_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BuildLauncher(build_scripts):
    """Compile the launcher as the scripts' ``qmail-remote``.

    Linked statically when the C library allows it: a static launcher
    needs no dynamic loader, so it can still print its report under
    limits (1 MiB of address space, no free descriptor) where a dynamic
    one fails in ld.so with exit status 127, a bounce.
    """

    def run(self):
        self.mkpath(self.build_dir)
        target = os.path.join(self.build_dir, "qmail-remote")
        if not self._compile():
            self.warn("no C compiler: qmail-remote is a Python script")
            with open(target, "w") as script:
                script.write(FALLBACK_SCRIPT)
        os.chmod(target, 0o755)

    def _compile(self):
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler

        # force: the macros name this interpreter, which an object left in
        # build/ by another environment's build would not.
        compiler = new_compiler(force=True)
        customize_compiler(compiler)
        build_temp = self.get_finalized_command("build").build_temp
        macros = [
            ("PY_VERSION", _c_string("%d.%d" % sys.version_info[:2])),
            ("BUILD_PYTHON", _c_string(sys.executable)),
            ("MEMORY_FLOOR_MB", str(MEMORY_FLOOR_MB)),
            ("NOFILE_FLOOR", str(NOFILE_FLOOR)),
        ]
        try:
            objects = compiler.compile([LAUNCHER], output_dir=build_temp,
                                       macros=macros)
        except Exception as exc:  # no compiler, or it failed
            self.warn(f"compiling {LAUNCHER} failed: {exc}")
            return False
        for flags in (["-static", "-s"], ["-s"]):
            try:
                compiler.link_executable(objects, "qmail-remote",
                                         output_dir=self.build_dir,
                                         extra_postargs=flags)
                return True
            except Exception as exc:
                self.warn(f"linking qmail-remote {' '.join(flags)} "
                          f"failed: {exc}")
        return False


class PlatformDistribution(Distribution):
    """The launcher is machine code: never a pure (any-platform) wheel."""

    def has_ext_modules(self):
        return True


ext_modules = []
if not os.environ.get("QMAILREMOTE_NO_EXTENSIONS"):
    from Cython.Build import cythonize
    from setuptools import Extension

    ext_modules = cythonize(
        [Extension("qmailremote._fast", ["qmailremote/_fast.pyx"],
                   extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules, scripts=[LAUNCHER],
      cmdclass={"build_scripts": BuildLauncher},
      distclass=PlatformDistribution)
