"""The ``qmail-remote host sender recip...`` command.

argv, stdin and stdout wiring only.  It never raises and always exits 0:
qmail-rspawn turns any other exit status into a permanent bounce, so the
entry point imports nothing that can fail before its own guard, and any
unexpected error still ends in a ``Z`` report (the mail is retried).

The process rules, shared by every way the command starts (the installed
launcher, ``python -m qmailremote``, the warm ``qmail-rspawn``):

* the environment: only ``QMAILHOME`` is read (control.open_home); the
  launcher starts Python with ``-I``, so no ``PYTHON*`` variable applies;
* the arguments are the exact bytes of argv (:func:`argv_bytes`; the warm
  qmail-rspawn passes qmail-send's bytes to :func:`run` directly);
* SIGINT has netqmail's effect, death by the signal (:func:`take_signals`).
"""

import os

__all__ = ["main", "run", "argv_bytes", "take_signals", "INTERRUPTED"]


#: The report when run() itself is cut short (a signal's exception...).
INTERRUPTED = (b"Zqmail-remote (qmailremote) was interrupted or hit an "
               b"internal error. (#4.3.0)\n\0")


def run(argv, message=0):
    """The bytes qmail-remote prints for *argv* (without the program name).

    The arguments are bytes, or str to be encoded with os.fsencode;
    *message* is where the message is read from (default: fd 0, stdin).
    """
    try:
        from .report import PERM_USAGE, Result
        if len(argv) < 3:
            return Result([], PERM_USAGE).render()
        from .delivery import deliver
        args = [arg if isinstance(arg, bytes) else os.fsencode(arg)
                for arg in argv]
        return deliver(args[0], args[1], args[2:], message).render()
    except MemoryError:
        return b"ZOut of memory. (#4.3.0)\n\0"
    except Exception:
        return (b"Zqmail-remote (qmailremote) could not start or hit an "
                b"internal error. (#4.3.0)\n\0")


def take_signals():
    """Give SIGINT its default action, then let a pending one through.

    The launcher blocks SIGINT before the interpreter starts, so that one
    arriving during start-up stays pending instead of raising
    KeyboardInterrupt somewhere in the interpreter's initialisation (exit
    status 1: a bounce).  Python installed its handler because SIGINT was
    at its default; put the default back (an inherited SIG_IGN is left
    alone) and unblock: a pending SIGINT now kills the process, as it
    does netqmail's qmail-remote (qmail-rspawn: "qmail-remote crashed.",
    retried).  ``_signal``, not ``signal``: that one imports enum, ~1 ms.
    """
    import _signal
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [_signal.SIGINT])


def argv_bytes():
    """The arguments after the program name, as the exact bytes given.

    Under the launcher Python runs in UTF-8 mode, where os.fsencode()
    undoes argv's decoding exactly.  Otherwise (``python -m qmailremote``
    under another locale) the C library decoded argv and Python's codec
    would not give the same bytes back, so they are read from
    /proc/self/cmdline: its last entries are sys.argv[1:].
    """
    import sys
    args = sys.argv[1:]
    if sys.flags.utf8_mode or not args:
        return [os.fsencode(arg) for arg in args]
    from .control import read_nonblocking
    try:
        given = read_nonblocking("/proc/self/cmdline").split(b"\0")[:-1]
    except OSError:
        given = []
    if len(given) <= len(args):
        return [os.fsencode(arg) for arg in args]
    return given[len(given) - len(args):]


def restore_stdin():
    """Put back the directory the launcher moved off fd 0 (its comment)."""
    number = os.environ.pop("QMAILREMOTE_STDIN_FD", None)
    if number is None or not number.isdigit():
        return
    fd = int(number)
    try:
        os.dup2(fd, 0)
        os.close(fd)
    except OSError:
        pass


def main():
    """Entry point of the command: print the reports, exit 0."""
    try:
        take_signals()
        restore_stdin()
        view = memoryview(run(argv_bytes()))
    except BaseException:
        view = memoryview(INTERRUPTED)
    try:
        while view:
            view = view[os.write(1, view):]
    except BaseException:
        pass  # netqmail exits 0 at once when stdout fails
    os._exit(0)
