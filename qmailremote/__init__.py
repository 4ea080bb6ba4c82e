"""qmailremote: a drop-in reimplementation of qmail's qmail-remote.

The public API is :func:`deliver`, which the ``qmail-remote`` command is a
thin shell over, and the result types it returns.
"""

from .delivery import deliver
from .mx import Resolver
from .report import Report, Result

__all__ = ["deliver", "Resolver", "Report", "Result", "__version__"]

__version__ = "0.1.0"
