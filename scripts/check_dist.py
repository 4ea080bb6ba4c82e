"""Check what the sdist and the wheel carry (CI, after ``python -m build``).

    python scripts/check_dist.py dist/qmailremote-*.tar.gz dist/*.whl

The sdist must carry what building and testing need: the Cython kernel
(``_fast.pyx``) and its pure-Python twin, the launcher's C source, every
test module and benchmark, and no generated C or compiled object.  The
wheel must carry the compiled kernel, the ``qmail-remote`` launcher (an
ELF executable) and the ``qmailremote`` tools' entry point, and no ``.c``
or ``.pyx``.  Exit status 1, with the reasons, when anything is missing
or extra.
"""

import subprocess
import sys
import tarfile
import zipfile


def tracked(pattern):
    """Files git tracks under *pattern*, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", pattern], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.split())


def check_sdist(path):
    problems = []
    with tarfile.open(path) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames()
                 if "/" in name}
    for needed in ("qmailremote/_fast.pyx", "qmailremote/_fast_py.py",
                   "qmailremote/_fast.pyi", "launcher/qmail-remote.c",
                   "setup.py", "pyproject.toml", "README.md", "LICENSE",
                   "MANIFEST.in", "tests/conftest.py"):
        if needed not in names:
            problems.append(f"sdist lacks {needed}")
    for folder in ("tests", "benchmarks", "qmailremote", "scripts"):
        wanted = tracked(folder)
        if wanted is None:
            continue
        for name in sorted(wanted - names):
            problems.append(f"sdist lacks tracked file {name}")
    for name in sorted(names):
        if name.endswith((".so", ".o", ".pyc")) or name == \
                "qmailremote/_fast.c":
            problems.append(f"sdist carries a build product: {name}")
    return problems


def check_wheel(path):
    problems = []
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        scripts = [n for n in names if n.endswith(".data/scripts/"
                                                  "qmail-remote")]
        if len(scripts) != 1:
            problems.append("wheel lacks the qmail-remote launcher")
        elif wheel.read(scripts[0])[:4] != b"\x7fELF":
            problems.append("the wheel's qmail-remote is not the compiled "
                            "launcher (no C compiler at build time?)")
        points = [n for n in names if n.endswith(".dist-info/"
                                                 "entry_points.txt")]
        if not points or b"qmailremote = qmailremote.tools:main" not in \
                wheel.read(points[0]):
            problems.append("wheel lacks the qmailremote entry point")
    if not any(n.startswith("qmailremote/_fast.") and n.endswith(".so")
               for n in names):
        problems.append("wheel lacks the compiled kernel")
    for name in sorted(names):
        if name.endswith((".c", ".pyx")):
            problems.append(f"wheel carries source it must not: {name}")
    for needed in ("qmailremote/_fast_py.py", "qmailremote/_fast.pyi",
                   "qmailremote/py.typed", "qmailremote/tools/__init__.py"):
        if needed not in names:
            problems.append(f"wheel lacks {needed}")
    return problems


def main(paths):
    problems = []
    for path in paths:
        if path.endswith(".tar.gz"):
            problems += check_sdist(path)
        elif path.endswith(".whl"):
            problems += check_wheel(path)
        else:
            problems.append(f"not an sdist or a wheel: {path}")
    for problem in problems:
        print("check_dist:", problem)
    if not problems:
        print("check_dist: sdist and wheel carry what they must")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
