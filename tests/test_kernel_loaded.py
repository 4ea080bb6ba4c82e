"""A default run loads the compiled kernel; the switch loads the pure twin.

Checked in a fresh interpreter, because ``_kernel`` decides once, at import
time, and falls back to the pure twin silently: only this test notices a
build that lost its extension.
"""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

import qmailremote

compiled_only = pytest.mark.skipif(
    bool(os.environ.get("QMAILREMOTE_NO_EXTENSIONS")),
    reason="QMAILREMOTE_NO_EXTENSIONS is set: pure-Python run")

PROBE = """\
import json, qmailremote, qmailremote._kernel as k
print(json.dumps({
    "package": qmailremote.__file__,
    "compiled": k.COMPILED,
    "modules": sorted({k.Encoder.__module__, k.Writer.__module__,
                       k.ReplyReader.__module__}),
}))
"""


def _package_root():
    return str(Path(qmailremote.__file__).resolve().parent.parent)


def _environ(switch):
    """The current environment, with the switch set or removed.

    An installed package is found through site-packages; a package used in
    place (PYTHONPATH, or pytest's own sys.path) gets its directory put on
    PYTHONPATH, so the child imports the very package under test.
    """
    env = dict(os.environ)
    env.pop("QMAILREMOTE_NO_EXTENSIONS", None)
    if switch is not None:
        env["QMAILREMOTE_NO_EXTENSIONS"] = switch
    root = _package_root()
    site_dirs = site.getsitepackages() + [site.getusersitepackages()]
    installed = {str(Path(p).resolve()) for p in site_dirs}
    if root not in installed:
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([root] + paths)
    return env


def _probe(tmp_path, switch):
    # Run outside the source tree, so a checkout never shadows an install.
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path,
                            env=_environ(switch), capture_output=True,
                            text=True, timeout=60, check=True)
    loaded = json.loads(result.stdout)
    package = Path(qmailremote.__file__).resolve()
    assert Path(loaded["package"]).resolve() == package
    return loaded["compiled"], loaded["modules"]


@compiled_only
def test_compiled_kernel_is_the_default(tmp_path):
    assert _probe(tmp_path, None) == (True, ["qmailremote._fast"])


@pytest.mark.parametrize("switch", ["1", "yes"])
def test_switch_selects_pure_kernel(tmp_path, switch):
    assert _probe(tmp_path, switch) == (False, ["qmailremote._fast_py"])


@compiled_only
def test_empty_switch_is_off(tmp_path):
    # Only a non-empty value selects the pure twin, as at build time.
    assert _probe(tmp_path, "") == (True, ["qmailremote._fast"])
