"""Shared fixtures.

``kernel`` runs a test against both twins, ids ``c`` and ``py``.  The
compiled parameter is skipped only when the suite runs in pure mode on
purpose (``QMAILREMOTE_NO_EXTENSIONS`` set, as at build time); otherwise a
missing or broken extension is an error, never a skip, so a fallback to the
pure twin cannot hide a broken build.
"""

import importlib
import os

import pytest

PURE_MODE = bool(os.environ.get("QMAILREMOTE_NO_EXTENSIONS"))
PURE_MODE_REASON = "QMAILREMOTE_NO_EXTENSIONS is set: pure-Python run"

KERNELS = {"c": "qmailremote._fast", "py": "qmailremote._fast_py"}


@pytest.fixture(scope="session", params=list(KERNELS))
def kernel(request):
    """The compiled kernel module (``c``) or its pure twin (``py``)."""
    if request.param == "c" and PURE_MODE:
        pytest.skip(PURE_MODE_REASON)
    try:
        return importlib.import_module(KERNELS[request.param])
    except ImportError as exc:
        pytest.fail(f"{KERNELS[request.param]} does not import: {exc}",
                    pytrace=False)
