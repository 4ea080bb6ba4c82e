"""``qmailremote tcpto``: the tcpto tables, and clearing them.

Without options it prints ``queue/lock/tcpto`` exactly as netqmail 1.06's
``qmail-tcpto`` prints it (one line per record whose count is at least 1,
``<ip> timed out <seconds> seconds ago; # recent timeouts: <count>``, the
seconds as the C tool computes them: an unsigned 64-bit difference, so a
record dated in the future shows a huge number), under qmail-tcpto's lock:
a write descriptor that holds ``flock(LOCK_EX)`` while a second, read-only
one reads at most 1024 bytes.  Its error lines are qmail-tcpto's too
(``fatal: unable to open tcpto: file does not exist``).  Then comes the
IPv6 table, ``queue/lock/tcpto6`` (``qmailremote.tcpto``'s format), under a
heading, in the same style, with addresses in RFC 5952 form.

``--clear IP`` zeroes that address's record(s), under qmail-tcpok's lock
(``flock(LOCK_EX)`` on a write descriptor); ``--clear-all`` does what
qmail-tcpok does -- write zero bytes over the first 1024 bytes of tcpto
(extending a shorter file) -- and the same with 2048 bytes for tcpto6.

Nothing here is used by ``qmail-remote`` itself.
"""

import argparse
import datetime
import errno
import fcntl
import os
import sys
import time

from ..addresses import ipv6_literal, text as address_text
from ..binding import parse_ipv4
from ..control import DEFAULT_HOME
from ..tcpto import TCPTO, TCPTO6

__all__ = ["add_arguments", "run", "error_str", "home_of",
           "read_table", "table_records", "skip_verdict", "SKIP_MIN",
           "SKIP_MAX"]

_EPILOG = """\
Without options: queue/lock/tcpto exactly as netqmail's qmail-tcpto prints
it (same lines, same lock, same error texts), then queue/lock/tcpto6 (IPv6)
under a heading, in the same style.

--clear IP: qmail-tcpok writes zero bytes over the whole of tcpto; this
writes zero bytes over just the record(s) of IP (the whole 16-byte record
in tcpto, 32-byte record in tcpto6), under the same lock (flock on a write
descriptor).  qmail-remote then tries that address again at once.  An
IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address.

--clear-all: what qmail-tcpok does (1024 zero bytes over tcpto, a shorter
file extended), and 2048 zero bytes over tcpto6 when it exists.

Exit status: 0 done; 1 a table could not be read (listing), or the address
had no record (--clear); 2 usage error, or a file could not be written.

--json: {"action": "list", "now", "skip_window": {"min", "max"},
"files": {"tcpto": FILE, "tcpto6": FILE}, "tcpto": [RECORD...],
"tcpto6": [RECORD...]}; RECORD: {"slot", "address", "count",
"last_timeout" (epoch s), "last_timeout_utc" (ISO 8601 or null), "age"
(s, negative if in the future), "skip" ("yes", "no" or "depends-on-pid"),
"skip_ends" ({"min", "max"} epoch s, or null), "shadowed"}.  With --clear
and --clear-all, "action" is "clear" or "clear-all" (see the README).
"""

_MASK64 = (1 << 64) - 1
# tcpto.c: skipped while now - when < (60 + (getpid() & 31)) << 6.
SKIP_MIN = 60 << 6
SKIP_MAX = (60 + 31) << 6
_TABLES = {"tcpto": TCPTO, "tcpto6": TCPTO6}
_LOCKDIR = "queue/lock"

# qmail's error_str() (error_str.c), for qmail-tcpto's own error lines;
# any other errno is "unknown error", as there.
_ERRORS = {
    0: "no error", errno.EINTR: "interrupted system call",
    errno.ENOMEM: "out of memory", errno.ENOENT: "file does not exist",
    errno.ETXTBSY: "text busy", errno.EIO: "input/output error",
    errno.EEXIST: "file already exists", errno.ETIMEDOUT: "timed out",
    errno.EINPROGRESS: "operation in progress",
    errno.EAGAIN: "temporary failure", errno.EPIPE: "broken pipe",
    errno.EPERM: "permission denied", errno.EACCES: "access denied",
    errno.ESRCH: "no such process", errno.ENXIO: "device not configured",
    errno.E2BIG: "argument list too long",
    errno.ENOEXEC: "exec format error",
    errno.EBADF: "file descriptor not open",
    errno.ECHILD: "no child processes",
    errno.EDEADLK: "operation would cause deadlock",
    errno.EFAULT: "bad address", errno.ENOTBLK: "not a block device",
    errno.EBUSY: "device busy", errno.EXDEV: "cross-device link",
    errno.ENODEV: "device does not support operation",
    errno.ENOTDIR: "not a directory", errno.EISDIR: "is a directory",
    errno.EINVAL: "invalid argument",
    errno.ENFILE: "system cannot open more files",
    errno.EMFILE: "process cannot open more files",
    errno.ENOTTY: "not a tty", errno.EFBIG: "file too big",
    errno.ENOSPC: "out of disk space", errno.ESPIPE: "unseekable descriptor",
    errno.EROFS: "read-only file system", errno.EMLINK: "too many links",
    errno.ELOOP: "symbolic link loop",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOLCK: "no locks available",
    errno.ENOSYS: "system call not available",
    errno.EDQUOT: "disk quota exceeded", errno.ESTALE: "stale NFS file handle",
}


def error_str(exc):
    """qmail's error_str() text for an OSError (or an errno)."""
    number = exc if isinstance(exc, int) else exc.errno
    return _ERRORS.get(number, "unknown error")


def home_of(args):
    """(home directory, where it came from): --home, $QMAILHOME, default."""
    if args.home:
        return args.home, "--home"
    if os.environ.get("QMAILHOME"):
        return os.environ["QMAILHOME"], "$QMAILHOME"
    return DEFAULT_HOME, "default"


def _address(value):
    """argparse type of --clear: the address bytes (4 or 16)."""
    raw = os.fsencode(value)
    bare = raw[1:-1] if raw[:1] == b"[" and raw[-1:] == b"]" else raw
    ip = parse_ipv4(bare)
    if ip is None:
        ip = ipv6_literal(raw, bare=True)   # also normalises ::ffff:a.b.c.d
    if ip is None:
        raise argparse.ArgumentTypeError(
            f"not an IPv4 dotted quad or an IPv6 address: {value!r}")
    return ip


def add_arguments(parser):
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--clear", metavar="IP", type=_address,
                      help="zero the record(s) of this address (IPv4 or "
                           "IPv6), as qmail-tcpok zeroes the whole file")
    what.add_argument("--clear-all", action="store_true",
                      help="clear both tables, as qmail-tcpok does")
    parser.add_argument("--json", action="store_true",
                        help="one JSON document instead of text")


class _Error(Exception):
    """A step failed: *step* (open, lock, read, write) and the OSError."""

    def __init__(self, step, exc):
        super().__init__(step)
        self.step = step
        self.exc = exc


def _open_dir(path, dir_fd=None):
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                   dir_fd=dir_fd)


def _open(lock_fd, name, flags):
    return os.open(name, flags | os.O_NONBLOCK | os.O_CLOEXEC,
                   dir_fd=lock_fd)


def read_table(lock_fd, name, max_bytes):
    """The bytes of queue/lock/<name> as qmail-tcpto reads them.

    A write descriptor is opened and locked (flock LOCK_EX) while a
    read-only one reads at most *max_bytes*, as qmail-tcpto and tcpto.c
    do.  Where the write open is refused (EACCES, EPERM, EROFS: a user
    who may only read the file), the same flock is taken on the read
    descriptor instead (Linux's flock does not need write access), where
    qmail-tcpto gives up.  Returns (data, "write" or "read": the
    descriptor that held the lock); raises _Error.
    """
    fdlock = None
    try:
        fdlock = _open(lock_fd, name, os.O_WRONLY)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _Error("open", exc) from None
    try:
        try:
            fd = _open(lock_fd, name, os.O_RDONLY)
        except OSError as exc:
            raise _Error("open", exc) from None
        try:
            try:
                fcntl.flock(fd if fdlock is None else fdlock, fcntl.LOCK_EX)
            except OSError as exc:
                raise _Error("lock", exc) from None
            try:
                data = os.read(fd, max_bytes)
            except OSError as exc:
                raise _Error("read", exc) from None
        finally:
            os.close(fd)
    finally:
        if fdlock is not None:
            os.close(fdlock)
    return data, "read" if fdlock is None else "write"


def table_records(table, data):
    """[(slot, address bytes, signed count, time)] of every whole record."""
    return [(slot, bytes(record[:table.address]), table.count(record),
             table.when(record))
            for slot, record in enumerate(table.records(data))]


def skip_verdict(records, ip, now):
    """Whether a qmail-remote process skips *ip* now, as tcpto() decides.

    Only the first record holding the address counts.  Returns ("yes",
    "no" or "depends-on-pid", (first, last) epoch second the skipping ends,
    or None).
    """
    for _, address, count, when in records:
        if address == ip:
            if count < 2:
                return "no", None
            age = now - when
            ends = (when + SKIP_MIN, when + SKIP_MAX)
            if age < SKIP_MIN:
                return "yes", ends
            if age >= SKIP_MAX:
                return "no", ends
            return "depends-on-pid", ends
    return "no", None


def _utc(when):
    try:
        moment = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _listed(records, now):
    """The records qmail-tcpto prints (count >= 1), as JSON objects."""
    out = []
    seen = set()
    for slot, address, count, when in records:
        first = address not in seen
        seen.add(address)
        if count < 1:
            continue
        skip, ends = skip_verdict(records, address, now)
        out.append({
            "slot": slot,
            "address": address_text(address).decode("ascii"),
            "count": count,
            "last_timeout": when,
            "last_timeout_utc": _utc(when),
            "age": now - when,
            "skip": skip,
            "skip_ends": None if ends is None else
            {"min": ends[0], "max": ends[1]},
            "shadowed": not first,
        })
    return out


def _line(record, now):
    """qmail-tcpto's line for one record."""
    return "%s timed out %d seconds ago; # recent timeouts: %d" % (
        record["address"], (now - record["last_timeout"]) & _MASK64,
        record["count"])


def _file_info(name, status, error=None, size=None, lock=None):
    return {"path": f"{_LOCKDIR}/{name}", "status": status, "error": error,
            "bytes": size, "lock": lock}


def _list(home, out):
    now = int(time.time())
    files = {}
    listed = {"tcpto": [], "tcpto6": []}
    status = 0
    lock_fd = None
    try:
        home_fd = _open_dir(home)
        try:
            lock_fd = _open_dir(_LOCKDIR, home_fd)
        finally:
            os.close(home_fd)
    except OSError as exc:
        out.line("fatal: unable to chdir: " + error_str(exc))
        for name in _TABLES:
            files[name] = _file_info(name, "error",
                                     "unable to chdir: " + error_str(exc))
        status = 1
    try:
        for name, table in _TABLES.items():
            if lock_fd is None:
                break
            if name == "tcpto6":
                out.heading("IPv6 (queue/lock/tcpto6):")
            try:
                data, lock = read_table(lock_fd, name, table.max_bytes)
            except _Error as exc:
                missing = exc.exc.errno == errno.ENOENT
                text = f"unable to {exc.step} {name}: {error_str(exc.exc)}"
                files[name] = _file_info(
                    name, "missing" if missing else "error", text)
                if name == "tcpto":
                    out.line("fatal: " + text)
                    status = 1
                elif missing:
                    out.line("no IPv6 timeouts recorded: tcpto6 does not "
                             "exist (qmail-remote creates it at the first "
                             "IPv6 timeout)")
                else:
                    out.line(text)
                    status = 1
                continue
            files[name] = _file_info(name, "ok", size=len(data), lock=lock)
            listed[name] = _listed(table_records(table, data), now)
            for record in listed[name]:
                out.line(_line(record, now))
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    out.record("action", "list")
    out.record("now", now)
    out.record("skip_window", {"min": SKIP_MIN, "max": SKIP_MAX})
    out.record("files", files)
    out.record("tcpto", listed["tcpto"])
    out.record("tcpto6", listed["tcpto6"])
    return status


def _pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fatal(out, text):
    """A failed clear, on stderr as qmail-tcpok's (JSON: in the document)."""
    if not out.json:
        sys.stderr.write("qmailremote tcpto: fatal: " + text + "\n")
        sys.stderr.flush()


def _locked_write_fd(lock_fd, name):
    """qmail-tcpok's open_write + lock_ex; raises _Error."""
    try:
        fd = _open(lock_fd, name, os.O_WRONLY)
    except OSError as exc:
        raise _Error("write", exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        raise _Error("lock", exc) from None
    return fd


def _clear_one(lock_fd, ip, now):
    """Zero the records of *ip*; (file name, [cleared record objects])."""
    name = "tcpto" if len(ip) == 4 else "tcpto6"
    table = _TABLES[name]
    fd = _locked_write_fd(lock_fd, name)
    try:
        try:
            rfd = _open(lock_fd, name, os.O_RDONLY)
        except OSError as exc:
            raise _Error("read", exc) from None
        try:
            data = os.read(rfd, table.max_bytes)
        except OSError as exc:
            raise _Error("read", exc) from None
        finally:
            os.close(rfd)
        raw = table.records(data)
        cleared = []
        for slot, address, count, when in table_records(table, data):
            if address != ip or not any(raw[slot]):
                continue  # an all-zero record is no record
            try:
                _pwrite_all(fd, bytes(table.record), slot * table.record)
            except OSError as exc:
                raise _Error("write", exc) from None
            cleared.append({"slot": slot, "count": count,
                            "last_timeout": when,
                            "last_timeout_utc": _utc(when),
                            "age": now - when})
        return name, cleared
    finally:
        os.close(fd)


def _lock_dir(home):
    home_fd = _open_dir(home)
    try:
        return _open_dir(_LOCKDIR, home_fd)
    finally:
        os.close(home_fd)


def _clear(home, ip, out):
    now = int(time.time())
    shown = address_text(ip).decode("ascii")
    name = "tcpto" if len(ip) == 4 else "tcpto6"
    path = f"{_LOCKDIR}/{name}"
    out.record("action", "clear")
    out.record("address", shown)
    out.record("file", path)
    out.record("cleared", [])
    out.record("error", None)
    try:
        lock_fd = _lock_dir(home)
    except OSError as exc:
        text = f"unable to open {home}/{_LOCKDIR}: {error_str(exc)}"
        out.record("error", text)
        _fatal(out, text)
        return 2
    try:
        _, cleared = _clear_one(lock_fd, ip, now)
    except _Error as exc:
        if name == "tcpto6" and exc.step == "write" and \
                exc.exc.errno == errno.ENOENT:
            out.line(f"{shown} has no record: {path} does not exist; "
                     f"nothing cleared")
            return 1
        text = f"unable to {exc.step} {home}/{path}: {error_str(exc.exc)}"
        out.record("error", text)
        _fatal(out, text)
        return 2
    finally:
        os.close(lock_fd)
    out.record("cleared", cleared)
    if not cleared:
        out.line(f"{shown} has no record in {path}; nothing cleared")
        return 1
    for record in cleared:
        out.line(f"cleared {shown} in {path} (slot {record['slot']}: "
                 f"{record['count']} recent timeouts, the last "
                 f"{(now - record['last_timeout']) & _MASK64} seconds ago)")
    return 0


def _clear_all(home, out):
    files = {}
    out.record("action", "clear-all")
    out.record("files", files)
    try:
        lock_fd = _lock_dir(home)
    except OSError as exc:
        text = f"unable to open {home}/{_LOCKDIR}: {error_str(exc)}"
        for name in _TABLES:
            files[name] = {"path": f"{_LOCKDIR}/{name}", "status": "error",
                           "bytes": None, "error": text}
        _fatal(out, text)
        return 2
    status = 0
    try:
        for name, table in _TABLES.items():
            path = f"{_LOCKDIR}/{name}"
            info = files[name] = {"path": path, "status": "cleared",
                                  "bytes": None, "error": None}
            try:
                fd = _locked_write_fd(lock_fd, name)
                try:
                    try:
                        _pwrite_all(fd, bytes(table.max_bytes), 0)
                    except OSError as exc:
                        raise _Error("clear", exc) from None
                finally:
                    os.close(fd)
            except _Error as exc:
                if name == "tcpto6" and exc.exc.errno == errno.ENOENT:
                    info["status"] = "missing"
                    out.line(f"{path} does not exist: nothing to clear")
                    continue
                text = (f"unable to {exc.step} {home}/{path}: "
                        f"{error_str(exc.exc)}")
                info["status"], info["error"] = "error", text
                _fatal(out, text)
                status = 2
                continue
            info["bytes"] = table.max_bytes
            out.line(f"cleared {path} ({table.max_bytes} zero bytes)")
    finally:
        os.close(lock_fd)
    return status


def run(args, out):
    home, _ = home_of(args)
    if args.clear is not None:
        return _clear(home, args.clear, out)
    if args.clear_all:
        return _clear_all(home, out)
    return _list(home, out)
