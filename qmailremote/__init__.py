"""qmailremote: a drop-in reimplementation of qmail's qmail-remote.

The public API is :func:`deliver`, which the ``qmail-remote`` command is a
thin shell over, and the types it uses; :class:`Sender` sends many
messages to many domains at once over kept connections.  They are imported on first use,
so that the command's entry point (``qmailremote.cli``) imports nothing
that could fail before its own guard.
"""

__all__ = ["deliver", "Sender", "Outcome", "Resolver", "Report", "Result",
           "__version__"]

__version__ = "0.1.0"

_LAZY = {"deliver": "delivery", "Sender": "bulk", "Outcome": "bulk",
         "Resolver": "mx", "Report": "report", "Result": "report"}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module
        value = getattr(import_module("." + _LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
