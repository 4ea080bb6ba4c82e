"""The ``qmail-remote host sender recip...`` command.

argv, stdin and stdout wiring only.  It never raises and always exits 0:
qmail-rspawn turns any other exit status into a permanent bounce, so the
entry point imports nothing that can fail before its own guard, and any
unexpected error still ends in a ``Z`` report (the mail is retried).
"""

import os

__all__ = ["main", "run"]


class _Stdin:
    """fd 0 as a readinto() source, touched only when the body is sent."""

    def readinto(self, view):
        return os.readv(0, [view])


def run(argv):
    """The bytes qmail-remote prints for *argv* (without the program name)."""
    try:
        from .report import PERM_USAGE, Result
        if len(argv) < 3:
            return Result([], PERM_USAGE).render()
        from .delivery import deliver
        args = [os.fsencode(arg) for arg in argv]
        return deliver(args[0], args[1], args[2:], _Stdin()).render()
    except MemoryError:
        return b"ZOut of memory. (#4.3.0)\n\0"
    except Exception:
        return (b"Zqmail-remote (qmailremote) could not start or hit an "
                b"internal error. (#4.3.0)\n\0")


def main():
    """Console-script entry point: print the reports, exit 0."""
    import sys
    try:
        output = run(sys.argv[1:])
    except BaseException:
        output = b"Zqmail-remote (qmailremote) was interrupted. (#4.3.0)\n\0"
    try:
        view = memoryview(output)
        while view:
            view = view[os.write(1, view):]
    except OSError:
        pass  # netqmail exits 0 at once when stdout fails
    os._exit(0)
