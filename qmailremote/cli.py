"""The ``qmail-remote host sender recip...`` command.

argv, stdin and stdout wiring only.  It never raises and always exits 0:
qmail-rspawn turns any other exit status into a permanent bounce, so the
entry point imports nothing that can fail before its own guard, and any
unexpected error still ends in a ``Z`` report (the mail is retried).
"""

import os

__all__ = ["main", "run"]


def run(argv):
    """The bytes qmail-remote prints for *argv* (without the program name)."""
    try:
        from .report import PERM_USAGE, Result
        if len(argv) < 3:
            return Result([], PERM_USAGE).render()
        from .delivery import deliver
        args = [os.fsencode(arg) for arg in argv]
        return deliver(args[0], args[1], args[2:], 0).render()  # fd 0: stdin
    except MemoryError:
        return b"ZOut of memory. (#4.3.0)\n\0"
    except Exception:
        return (b"Zqmail-remote (qmailremote) could not start or hit an "
                b"internal error. (#4.3.0)\n\0")


def main():
    """Console-script entry point: print the reports, exit 0."""
    try:
        import sys
        view = memoryview(run(sys.argv[1:]))
    except BaseException:
        view = memoryview(b"Zqmail-remote (qmailremote) was interrupted or "
                          b"hit an internal error. (#4.3.0)\n\0")
    try:
        while view:
            view = view[os.write(1, view):]
    except BaseException:
        pass  # netqmail exits 0 at once when stdout fails
    os._exit(0)
