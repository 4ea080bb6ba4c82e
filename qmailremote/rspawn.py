"""``qmail-rspawn``: netqmail 1.06's spawner for remote deliveries.

qmail-send starts one qmail-rspawn and talks to it over two pipes
(netqmail ``spawn.c`` and ``qmail-rspawn.c``); this module speaks that
protocol byte for byte:

* at start: ``chdir`` to ``$QMAILHOME/queue/mess`` (exit 111 when it
  cannot), tcpto clean-up as ``tcpto_clean()`` does (1024 zero bytes over
  ``../lock/tcpto``, and 2048 over ``../lock/tcpto6`` when it exists), then
  one byte on fd 1: the spawn limit;
* commands on fd 0, in any fragmentation: a slot byte, the message id,
  NUL, the sender, NUL, the recipient, NUL; every check of ``docmd()``,
  with its texts;
* for every finished delivery, on fd 1: the slot byte, the report
  ``report()`` makes of qmail-remote's output, NUL;
* EOF on fd 0: the running deliveries finish and are reported, then exit 0.

Deliveries run in warm worker processes (:mod:`qmailremote.workers`):
no interpreter starts per delivery.  ``QMAILREMOTE_RSPAWN_EXEC=1`` makes
it run the ``qmail-remote`` command instead, as the C one does.  The
spawn limit is 120 (netqmail's ``conf-spawn``), or
``QMAILREMOTE_SPAWN_LIMIT`` (1 to 255).
"""

import os
import select
import signal
import sys

__all__ = ["main", "report", "Spawner", "DEFAULT_LIMIT"]

DEFAULT_LIMIT = 120
_CMD_READ = 1024

# docmd()'s texts.
_ERR_NOMEM = b"Zqmail-spawn out of memory. (#4.3.0)\n"
_ERR_TOO_BIG = b"ZInternal error: delnum too big. (#4.3.5)\n"
_ERR_IN_USE = b"ZInternal error: delnum in use. (#4.3.5)\n"
_ERR_NONNUMERIC = b"DInternal error: messid has nonnumerics. (#5.3.5)\n"
_ERR_LONG = b"DInternal error: messid too long. (#5.3.5)\n"
_ERR_SHORT = b"DInternal error: messid too short. (#5.3.5)\n"
_ERR_NOAT = b"DSorry, address must include host name. (#5.1.3)\n"
_ERR_OPEN = b"Zqmail-spawn unable to open message. (#4.3.0)\n"
_ERR_FSTAT = b"Zqmail-spawn unable to fstat message. (#4.3.0)\n"
_ERR_TYPE = b"ZSorry, message has wrong type. (#4.3.5)\n"
_ERR_OWNER = b"ZSorry, message has wrong owner. (#4.3.5)\n"
ERR_PIPE = b"Zqmail-spawn unable to create pipe. (#4.3.0)\n"
ERR_FORK = b"Zqmail-spawn unable to fork. (#4.3.0)\n"


def report(wstat, output):
    """qmail-rspawn.c ``report()``: qmail-remote's output as one report.

    *wstat* is the wait status of the delivery (0: exited 0).
    """
    if wstat & 0x7F:
        return b"Zqmail-remote crashed.\n"
    code = (wstat >> 8) & 0xFF
    if code == 111:
        return b"ZUnable to run qmail-remote.\n"
    if code:
        return b"DUnable to run qmail-remote.\n"
    s = bytes(output)
    if not s:
        return b"Zqmail-remote produced no output.\n"
    result = -1
    j = 0
    for k in range(len(s)):
        if not s[k]:
            if s[j] == 75:      # K
                result = 1
                break
            if s[j] == 90:      # Z
                result = 0
                break
            if s[j] == 68:      # D
                break
            j = k + 1
    orr = result
    if s[0] == 115:             # s
        orr = 0
    elif s[0] == 104:           # h
        orr = -1
    out = bytearray(b"KZD"[(1, 0, -1).index(orr):][:1])
    k = s.find(b"\0", 1)
    if k >= 0:
        out += s[1:k]
        k += 1
        if result <= orr and k < len(s) and s[k] in b"ZDK":
            end = s.find(b"\0", k + 1)
            out += s[k + 1:end if end >= 0 else len(s)]
    return bytes(out)


def _tcpto_clean():
    """tcpto_clean(), from queue/mess; and tcpto6 (ours) when it exists."""
    for path, size in (("../lock/tcpto", 1024), ("../lock/tcpto6", 2048)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            zeros = memoryview(bytes(size))
            while zeros:
                zeros = zeros[os.write(fd, zeros):]
        except OSError:
            pass  # "if it fails, bummer"
        finally:
            os.close(fd)


class _Output:
    """fd 1 as spawn.c's ``okwrite``: a failed write (not EINTR) stops all
    writing, and the deliveries go on."""

    def __init__(self, fd=1):
        self.fd = fd
        self.writing = True

    def write(self, data):
        view = memoryview(data)
        while view and self.writing:
            try:
                view = view[os.write(self.fd, view):]
            except InterruptedError:
                continue
            except BlockingIOError:
                select.select([], [self.fd], [])
            except OSError:
                self.writing = False
                try:
                    os.close(self.fd)
                except OSError:
                    pass


class Spawner:
    """The protocol: command parsing, docmd()'s checks, reports, slots.

    *backend* runs deliveries (qmailremote.workers): ``start(slot, fd,
    host, sender, recip)`` returns None or a docmd() error text, and
    finished deliveries come back through :meth:`finished`.
    """

    def __init__(self, backend, limit, qmailq_uid, out):
        self.backend = backend
        self.limit = limit
        self.uid = qmailq_uid
        self.out = out
        self.used = [False] * limit
        self.stage = 0
        self.delnum = 0
        self.fields = [bytearray(), bytearray(), bytearray()]

    def busy(self):
        return any(self.used)

    def feed(self, data):
        """getcmd(): consume command bytes in any fragmentation."""
        for ch in data:
            if self.stage == 0:
                self.delnum = ch
                self.fields[0].clear()
                self.stage = 1
                continue
            field = self.fields[self.stage - 1]
            field.append(ch)
            if ch:
                continue
            if self.stage < 3:
                self.fields[self.stage].clear()
                self.stage += 1
            else:
                try:
                    self._docmd()
                except MemoryError:
                    self._err(_ERR_NOMEM)
                self.stage = 0

    def _err(self, text):
        self.out.write(bytes((self.delnum,)) + text + b"\0")

    def _docmd(self):
        messid, sender, recip = (bytes(f) for f in self.fields)
        delnum = self.delnum
        if delnum >= self.limit:
            return self._err(_ERR_TOO_BIG)
        if self.used[delnum]:
            return self._err(_ERR_IN_USE)
        # The fields end with their NUL, as the C strings do.
        for i, ch in enumerate(messid):
            if ch and (not i or ch != 47) and not 48 <= ch <= 57:  # '/'
                return self._err(_ERR_NONNUMERIC)
        if len(messid) > 100:
            return self._err(_ERR_LONG)
        if not messid[0]:
            return self._err(_ERR_SHORT)
        recip_c = recip[:recip.index(b"\0")]
        at = recip_c.rfind(b"@")
        if at < 0:
            return self._err(_ERR_NOAT)
        path = messid[:messid.index(b"\0")]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return self._err(_ERR_OPEN)
        try:
            try:
                st = os.fstat(fd)
            except OSError:
                return self._err(_ERR_FSTAT)
            if (st.st_mode & 0o170000) != 0o100000:
                return self._err(_ERR_TYPE)
            if st.st_uid != self.uid:
                return self._err(_ERR_OWNER)
            host = recip_c[at + 1:]
            problem = self.backend.start(
                delnum, fd, host, sender[:sender.index(b"\0")], recip_c)
        finally:
            os.close(fd)
        if problem is not None:
            return self._err(problem)
        self.used[delnum] = True

    def finished(self, slot, wstat, output):
        """A delivery ended: its report, as qmail-rspawn writes it."""
        self.used[slot] = False
        self.out.write(bytes((slot,)) + report(wstat, output) + b"\0")


def _limit():
    text = os.environ.get("QMAILREMOTE_SPAWN_LIMIT", "")
    if text.isdigit() and 1 <= int(text) <= 255:
        return int(text)
    return DEFAULT_LIMIT


def _qmailq_uid():
    """auto_uidq: the qmailq user's uid (QMAILREMOTE_QMAILQ names
    another user), or None."""
    import pwd
    try:
        return pwd.getpwnam(os.environ.get("QMAILREMOTE_QMAILQ") or
                            "qmailq").pw_uid
    except KeyError:
        return None


def serve(spawner, backend, wakeup):
    """spawn.c main(): poll commands, deliveries and SIGCHLD.

    In each round, as in spawn.c: the children that died are reaped, then
    commands are read, then the deliveries' output, in slot order.
    """
    reading = True
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(wakeup, select.POLLIN)
    watched = set()
    while True:
        if not reading and not spawner.busy():
            return
        fds = backend.fds()
        for fd in watched - fds:
            poller.unregister(fd)
        for fd in fds - watched:
            poller.register(fd, select.POLLIN)
        watched = fds
        try:
            ready = {fd for fd, _ in poller.poll()}
        except InterruptedError:
            continue
        if wakeup in ready:
            try:
                os.read(wakeup, 512)
            except OSError:
                pass
            backend.reap()
        if 0 in ready and reading:
            try:
                data = os.read(0, _CMD_READ)
            except InterruptedError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                reading = False
                poller.unregister(0)
            elif data:
                spawner.feed(data)
        done = []
        for fd in ready & watched:
            done += backend.readable(fd)
        for finished in sorted(done, key=lambda d: d[0]):
            spawner.finished(*finished)


def main():
    """The ``qmail-rspawn`` command."""
    from .control import DEFAULT_HOME
    home = os.environ.get("QMAILHOME") or DEFAULT_HOME
    try:
        os.chdir(home)
        os.chdir("queue/mess")
    except OSError:
        os._exit(111)
    uid = _qmailq_uid()
    if uid is None:
        os._exit(111)
    limit = _limit()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    from . import workers
    if os.environ.get("QMAILREMOTE_RSPAWN_EXEC"):
        backend = workers.ExecBackend()
    else:
        backend = workers.WarmBackend(workers.per_worker_setting())
    _tcpto_clean()
    out = _Output()
    out.write(bytes((limit,)))
    spawner = Spawner(backend, limit, uid, out)
    try:
        serve(spawner, backend, r)
    except KeyboardInterrupt:
        os._exit(111)
    backend.close()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
