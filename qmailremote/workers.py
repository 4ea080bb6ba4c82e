"""How qmail-rspawn runs deliveries: warm workers, or the command.

:class:`WarmBackend` (the default) keeps a pool of worker processes forked
from the spawner once everything a delivery touches is imported (the
compiled kernel, ssl, the resolver...).  A worker runs one delivery at a
time -- the same :func:`qmailremote.cli.run` the ``qmail-remote`` command
runs, with the message descriptor qmail-rspawn opened, passed over a Unix
socket -- and sends back the bytes qmail-remote would have printed.  So a
delivery that crashes the interpreter (a fault in the kernel, an abort)
kills one worker and costs only that delivery: the spawner sees the
socket close and reports ``qmail-remote crashed.``, as C qmail-rspawn
reports a qmail-remote killed by a signal; the other workers go on.  A
delivery that hangs holds its worker, as a hanging qmail-remote holds its
slot under C.  The pool grows on demand up to the spawn limit; a worker is
retired after :data:`RECYCLE` deliveries (bounding whatever a long-lived
interpreter accumulates), and when a delivery ends, workers idle for a
minute are retired (one is kept).

:class:`ExecBackend` (``QMAILREMOTE_RSPAWN_EXEC=1``) does what netqmail's
qmail-rspawn does: one ``qmail-remote`` process per delivery, found on
``PATH``, the message on its stdin, stdout and stderr into a pipe.
"""

import errno
import os
import socket
import time

from .rspawn import ERR_FORK, ERR_PIPE

__all__ = ["WarmBackend", "ExecBackend", "preload", "RECYCLE"]

RECYCLE = 10000          # deliveries per worker before it is replaced
_IDLE_SECONDS = 60       # idle workers beyond recent need retire after this
_READ = 1 << 16

# error_temp(): the errno values after which C's child exits 111.
_TEMPORARY = {getattr(errno, name) for name in (
    "EINTR", "ENOMEM", "ETXTBSY", "EIO", "ETIMEDOUT", "EWOULDBLOCK",
    "EAGAIN", "EDEADLK", "EBUSY", "ENFILE", "EMFILE", "EFBIG", "ENOSPC",
    "ENETDOWN", "ENETUNREACH", "ENETRESET", "ECONNABORTED", "ECONNRESET",
    "ENOBUFS", "ETOOMANYREFS", "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH",
    "EPROCLIM", "EUSERS", "EDQUOT", "ESTALE", "ENOLCK") if hasattr(errno,
                                                                  name)}


def preload():
    """Import everything a delivery touches, before any worker forks."""
    import random  # noqa: F401 -- mx imports it at the first query
    from . import (_kernel, addresses, auth, binding, capabilities,  # noqa
                   cli, control, delivery, esmtp, message, mx, report,
                   routes, session, tcpto, tls)
    tls._ssl_module()
    try:
        import hashlib  # noqa: F401 -- AUTH's SCRAM and CRAM-MD5
        import hmac  # noqa: F401
    except ImportError:
        pass


class _Worker:
    __slots__ = ("pid", "sock", "slot", "buffer", "done", "idle_since")

    def __init__(self, pid, sock):
        self.pid = pid
        self.sock = sock
        self.slot = None
        self.buffer = bytearray()
        self.done = 0
        self.idle_since = time.monotonic()


def _worker_main(sock):
    """A worker's life: one job at a time until the socket closes."""
    import signal
    from .cli import run
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
        except OSError:
            break
        if not msg:
            break
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            break
        host, sender, recip = msg.split(b"\0")[:3]
        try:
            output = run([host, sender, recip], fds[0])
        finally:
            os.close(fds[0])
        try:
            sock.sendall(len(output).to_bytes(4, "big") + output)
        except OSError:
            break
    os._exit(0)


class WarmBackend:
    """Deliveries in pre-imported worker processes (module doc)."""

    def __init__(self):
        import gc
        preload()
        self.idle = []
        self.busy = {}       # socket fd -> worker
        self.status = {}     # pid -> wait status of a busy worker reaped
        gc.collect()
        gc.freeze()          # fewer copy-on-write pages in the workers

    def _fork(self):
        try:
            parent, child = socket.socketpair(socket.AF_UNIX,
                                              socket.SOCK_STREAM)
        except OSError:
            return ERR_PIPE
        try:
            pid = os.fork()
        except OSError:
            parent.close()
            child.close()
            return ERR_FORK
        if pid == 0:
            try:
                parent.close()
                _worker_main(child)
            finally:
                os._exit(0)
        child.close()
        return _Worker(pid, parent)

    def start(self, slot, fd, host, sender, recip):
        """Hand the delivery to a worker: None, or docmd()'s error text."""
        job = b"\0".join((host, sender, recip, b""))
        while True:
            worker = self.idle.pop() if self.idle else self._fork()
            if isinstance(worker, bytes):
                return worker
            try:
                socket.send_fds(worker.sock, [job], [fd])
                break
            except OSError:   # an idle worker died (OOM killer...): next
                self._retire(worker)
        worker.slot = slot
        worker.buffer.clear()
        self.busy[worker.sock.fileno()] = worker
        return None

    def fds(self):
        return set(self.busy)

    def slot_of(self, fd):
        return self.busy[fd].slot

    def readable(self, fd):
        """Output from a worker: the finished (slot, wstat, output), or
        None while its report is incomplete."""
        worker = self.busy[fd]
        try:
            data = worker.sock.recv(_READ)
        except OSError:
            data = b""
        if not data:
            # The worker died mid-delivery: its wait status says how.
            del self.busy[fd]
            worker.sock.close()
            return worker.slot, self._wait(worker.pid), b""
        worker.buffer += data
        buffer = worker.buffer
        if len(buffer) < 4 or len(buffer) - 4 < int.from_bytes(buffer[:4],
                                                                 "big"):
            return None
        del self.busy[fd]
        output = bytes(buffer[4:])
        worker.done += 1
        slot = worker.slot
        worker.slot = None
        if worker.done >= RECYCLE:
            self._retire(worker)
        else:
            worker.idle_since = time.monotonic()
            self.idle.append(worker)
            self._trim()
        return slot, 0, output

    def _trim(self):
        """Retire workers idle for a minute (one is kept)."""
        now = time.monotonic()
        for worker in [w for w in self.idle[:-1]
                       if now - w.idle_since >= _IDLE_SECONDS]:
            self.idle.remove(worker)
            self._retire(worker)

    @staticmethod
    def _retire(worker):
        worker.sock.close()   # the worker's recv ends: it exits (reaped)

    def _wait(self, pid):
        """The wait status of a worker whose socket closed mid-delivery.

        It has died (the usual case: its status is real) or, through a
        bug, closed its socket and lives on: then it is killed, and the
        delivery is a crash either way.
        """
        if pid in self.status:
            return self.status.pop(pid)
        try:
            os.kill(pid, 9)   # a zombie ignores it; its status stays
            _, wstat = os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            wstat = self.status.pop(pid, 9)
        return wstat or 9

    def reap(self):
        """SIGCHLD: collect exited workers (no zombie); nothing finishes
        here -- a busy worker's end shows as its socket closing."""
        while True:
            try:
                pid, wstat = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if any(w.pid == pid for w in self.busy.values()):
                self.status[pid] = wstat
            else:
                self.status.pop(pid, None)
                for worker in [w for w in self.idle if w.pid == pid]:
                    self.idle.remove(worker)
                    worker.sock.close()

    def close(self):
        """Retire every worker and reap it: no orphan, no zombie."""
        for worker in self.idle:
            worker.sock.close()
        for worker in self.idle:
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
        self.idle = []


class ExecBackend:
    """C qmail-rspawn's way: a ``qmail-remote`` process per delivery."""

    def __init__(self):
        self.slots = {}      # read fd -> [slot, pid, write fd, output, wstat]
        self.by_pid = {}

    def start(self, slot, fd, host, sender, recip):
        try:
            r, w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            return ERR_PIPE
        entry = [slot, None, w, bytearray(), None]
        argv = [b"qmail-remote", host, sender, recip]
        try:
            try:
                pid = self._spawn(b"qmail-remote", argv, fd, w)
            except OSError as exc:
                if exc.errno != errno.ENOEXEC:
                    raise
                # execvp's fallback, which posix_spawnp lacks: a file
                # without "#!" runs under /bin/sh.
                import shutil
                path = shutil.which("qmail-remote")
                if path is None:
                    raise
                pid = self._spawn(b"/bin/sh", [b"sh", os.fsencode(path),
                                               *argv[1:]], fd, w)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:   # no process to be had
                os.close(r)
                os.close(w)
                return ERR_FORK
            # C's child could not exec: it exits 111 or 100.
            os.close(w)
            entry[2] = None
            entry[4] = (111 if exc.errno in _TEMPORARY else 100) << 8
            self.slots[r] = entry
            return None
        entry[1] = pid
        self.slots[r] = entry
        self.by_pid[pid] = r
        return None

    @staticmethod
    def _spawn(program, argv, fd, w):
        """posix_spawnp with the C child's fds and signal state: the
        message on 0, the pipe on 1 and 2, SIGCHLD blocked (the C spawner
        forks with it blocked), SIGXFSZ at its default (CPython ignores
        it; an ignored signal stays ignored across exec)."""
        import signal
        return os.posix_spawnp(
            program, argv, os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, 0),
                          (os.POSIX_SPAWN_DUP2, w, 1),
                          (os.POSIX_SPAWN_DUP2, w, 2)],
            setsigdef=(signal.SIGXFSZ,), setsigmask=(signal.SIGCHLD,))

    def fds(self):
        return set(self.slots)

    def slot_of(self, fd):
        return self.slots[fd][0]

    def readable(self, fd):
        entry = self.slots[fd]
        try:
            data = os.read(fd, 128)
        except OSError:
            return None   # "read error on a readable pipe? be serious"
        if data:
            entry[3] += data
            return None
        if entry[2] is not None:
            return None   # EOF before death: a grandchild closed it
        del self.slots[fd]
        os.close(fd)
        return entry[0], entry[4], bytes(entry[3])

    def reap(self):
        while True:
            try:
                pid, wstat = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            r = self.by_pid.pop(pid, None)
            if r is None:
                continue
            entry = self.slots[r]
            entry[4] = wstat
            if entry[2] is not None:
                os.close(entry[2])   # now EOF can come: the child is dead
                entry[2] = None

    def close(self):
        pass
