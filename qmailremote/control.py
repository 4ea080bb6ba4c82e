"""The home directory and the control files, with netqmail 1.06's rules.

netqmail ``chdir``s to its home and reads ``control/me``,
``control/timeoutremote``, ``control/timeoutconnect``, ``control/helohost``
and ``control/smtproutes``, in that order (``getcontrols``; reference
section 4).  After them come ``control/noesmtp`` (netqmail 1.06's
dialogue: HELO, no extension), then, in the ESMTP profile only,
``control/authsenders`` (routes by sender, with credentials), and
``control/nochunking`` (ESMTP without BDAT).  The ESMTP profile's other
files are read where they are used: the source address
(:mod:`qmailremote.binding`), TLS (:mod:`qmailremote.tls`) and AUTH
(:mod:`qmailremote.auth`).  Here the home
is opened as a directory descriptor instead of being made the working
directory, so that the :func:`qmailremote.deliver` API leaves the
caller's process alone; every path is still resolved relative to the
home, as netqmail's are.
"""

import os

from .report import TEMP_CHDIR, TEMP_CONTROL, Failure

__all__ = ["DEFAULT_HOME", "Controls", "open_home", "read_controls",
           "parse_int", "strip_trailing", "route_entries",
           "read_nonblocking", "scan_ulong", "read_control",
           "control_exists", "first_line"]

DEFAULT_HOME = "/var/qmail"

# control.c reads through a 64-byte buffer; any size gives the same bytes.
_READ = 65536


class Controls:
    """What the control files say."""

    __slots__ = ("helohost", "timeoutremote", "timeoutconnect", "routes",
                 "esmtp", "chunking", "authsenders")

    def __init__(self, helohost, timeoutremote=1200, timeoutconnect=60,
                 routes=(), esmtp=True, chunking=True, authsenders=()):
        self.helohost = helohost
        self.timeoutremote = timeoutremote
        self.timeoutconnect = timeoutconnect
        # smtproutes entries, ``key:value`` byte strings in file order.
        self.routes = list(routes)
        # False under control/noesmtp: netqmail 1.06's dialogue.
        self.esmtp = esmtp
        # False under control/nochunking: DATA even where BDAT is offered.
        self.chunking = chunking
        # control/authsenders entries (ESMTP only), as routes.
        self.authsenders = list(authsenders)


def open_home(home=None):
    """Return a descriptor for the home directory, or raise Failure.

    *home* defaults to ``$QMAILHOME`` when set and non-empty, else
    ``/var/qmail`` (deviation 1 of the reference).
    """
    if home is None:
        home = os.environ.get("QMAILHOME") or DEFAULT_HOME
    try:
        return os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, ValueError):
        raise Failure(TEMP_CHDIR) from None


def strip_trailing(line):
    """control.c ``striptrailingwhitespace``: LF, space and TAB; not CR."""
    return line.rstrip(b"\n \t")


# scan.c scan_ulong accumulates in an unsigned long: the value modulo
# 2**64.  10**64 = 2**64 * 5**64, so each digit before the last 64 adds a
# multiple of 2**64, and the last 64 digits alone give the same value
# modulo 2**64, hence modulo every 2**k, k <= 64: control_readint's int,
# timeoutconn's port modulo 65536, ip_scan's byte.  int() of 64 digits is
# far below CPython's int-to-str digit limit (4300 by default, 640 at
# least), which a longer string would hit (ValueError).
_ULONG_DIGITS = 64
_ULONG_MASK = (1 << 64) - 1


def scan_ulong(text, pos=0):
    """scan.c ``scan_ulong``: (value modulo 2**64, end) of the digits at *pos*.

    With no digit at *pos* the value is 0 and the end is *pos*.
    """
    end = pos
    while end < len(text) and 48 <= text[end] <= 57:
        end += 1
    if end == pos:
        return 0, pos
    return int(text[max(pos, end - _ULONG_DIGITS):end]) & _ULONG_MASK, end


def parse_int(line, default):
    """control.c ``control_readint`` on a first line.

    The decimal prefix, stored in a C ``int``: modulo 2**32, signed.  A line
    that does not start with a digit, or a missing file (None), leaves the
    default.
    """
    if line is None:
        return default
    value, end = scan_ulong(line)
    if not end:
        return default
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def route_entries(data):
    """control.c ``control_readfile`` + constmap's split of smtproutes.

    Lines are stripped of trailing whitespace; empty lines and lines whose
    first byte is ``#`` or NUL are dropped.  The kept lines are NUL-joined,
    and constmap splits at every NUL, so a NUL inside a line starts a new
    entry.
    """
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    entries = []
    for line in lines:
        line = strip_trailing(line)
        if line and line[0] not in (0, 35):  # NUL, '#'
            entries.extend(line.split(b"\0"))
    return entries


def read_nonblocking(path, dir_fd=None, whole=True):
    """The bytes of *path* (up to a read holding a LF unless *whole*).

    The file is opened non-blocking, as netqmail's open_read (O_NDELAY)
    opens control files: a FIFO with no writer reads as empty instead of
    blocking the delivery for ever, and one with a writer but no data yet
    fails (EAGAIN).  Raises OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, _READ)
            if not chunk:
                break
            chunks.append(chunk)
            if not whole and b"\n" in chunk:
                break
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_control(home_fd, name, whole=True):
    """Bytes of control/<name>; None when it does not exist.

    Any error but ENOENT (a directory, no permission...) is fatal.
    """
    try:
        return read_nonblocking("control/" + name, home_fd, whole)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise Failure(TEMP_CONTROL) from None


def control_exists(home_fd, name):
    """Whether control/<name> exists (any type, any content)."""
    try:
        os.stat("control/" + name, dir_fd=home_fd)
    except FileNotFoundError:
        return False
    except OSError:
        raise Failure(TEMP_CONTROL) from None
    return True


def first_line(home_fd, name):
    data = read_control(home_fd, name, whole=False)
    if data is None:
        return None
    return strip_trailing(data.split(b"\n", 1)[0])


def read_controls(home_fd):
    """Read the control files in netqmail's order; raise Failure on error."""
    me = first_line(home_fd, "me")
    timeoutremote = first_line(home_fd, "timeoutremote")
    timeoutconnect = first_line(home_fd, "timeoutconnect")
    helohost = first_line(home_fd, "helohost")
    if helohost is None:
        if me is None:
            raise Failure(TEMP_CONTROL)
        helohost = me
    routes = read_control(home_fd, "smtproutes", whole=True)
    esmtp = not control_exists(home_fd, "noesmtp")
    authsenders = read_control(home_fd, "authsenders") if esmtp else None
    return Controls(
        helohost=helohost,
        timeoutremote=parse_int(timeoutremote, 1200),
        timeoutconnect=parse_int(timeoutconnect, 60),
        routes=route_entries(routes) if routes else (),
        esmtp=esmtp,
        chunking=not control_exists(home_fd, "nochunking"),
        authsenders=route_entries(authsenders) if authsenders else (),
    )
