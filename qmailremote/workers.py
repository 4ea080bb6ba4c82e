"""How qmail-rspawn runs deliveries: warm workers, or the command.

:class:`WarmBackend` (the default) keeps a pool of worker processes forked
from the spawner once everything a delivery touches is imported (the
compiled kernel, ssl, threading, the resolver...).  A worker runs up to
``per_worker`` deliveries at once, each on a thread of its own -- the
same :func:`qmailremote.cli.run` the ``qmail-remote`` command runs, with
the message descriptor qmail-rspawn opened, passed over a Unix socket --
and sends back, tagged with the slot, the bytes qmail-remote would have
printed.  Threads cut the memory a delivery costs: a forked CPython
dirties about 2 MiB of the heap it shares with the spawner (reference
counts), a thread a few hundred KiB.

What one delivery does wrong stays its own: an exception or MemoryError
is its report; a hang holds its thread; a fault reading its message (a
mapped file truncated meanwhile) is turned back by the kernel's fault
guard into that delivery's "Unable to read message.".  What kills the
whole process -- a crash in CPython or OpenSSL, the OOM killer -- costs
every delivery of that worker: the spawner sees the socket close and
reports each as ``qmail-remote crashed.``, as C qmail-rspawn reports a
qmail-remote killed by a signal; the other workers go on.  With
``per_worker`` 1 that is the one delivery.  The pool grows on demand up
to the spawn limit; a worker is retired after :data:`RECYCLE` deliveries
(bounding whatever a long-lived interpreter accumulates), and when a
delivery ends, workers idle for a minute are retired (one is kept).

:class:`ExecBackend` (``QMAILREMOTE_RSPAWN_EXEC=1``) does what netqmail's
qmail-rspawn does: one ``qmail-remote`` process per delivery, found on
``PATH``, the message on its stdin, stdout and stderr into a pipe.
"""

import errno
import os
import socket
import time

from .rspawn import ERR_FORK, ERR_PIPE

__all__ = ["WarmBackend", "ExecBackend", "preload", "per_worker_setting",
           "RECYCLE", "PER_WORKER"]

RECYCLE = 10000          # deliveries per worker before it is replaced
PER_WORKER = 8           # deliveries a worker runs at once, by default
_FDS_WORKER = 8          # a worker's own descriptors, with room to spare
_FDS_PER_DELIVERY = 6    # the most one delivery holds at once, and spare
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
    import queue  # noqa: F401 -- a worker's threads
    import random  # noqa: F401 -- mx imports it at the first query
    import threading  # noqa: F401
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
    __slots__ = ("pid", "sock", "slots", "buffer", "done", "idle_since")

    def __init__(self, pid, sock):
        self.pid = pid
        self.sock = sock
        self.slots = set()     # the deliveries it is running
        self.buffer = bytearray()
        self.done = 0          # deliveries finished or handed over
        self.idle_since = time.monotonic()


def _job(sock):
    """The next job from the spawner: ``(slot, argv, fd)``, or None when
    the spawner has gone (or sent something that is not a job)."""
    try:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
    except OSError:
        return None
    if not msg or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    host, sender, recip = msg[1:].split(b"\0")[:3]
    return msg[0], [host, sender, recip], fds[0]


def _result(job):
    """Run one delivery; the frame that carries its output back: slot,
    length (4 bytes, big-endian), the bytes qmail-remote prints."""
    from .cli import INTERRUPTED, run
    slot, argv, fd = job
    try:
        output = run(argv, fd)
    except BaseException:   # a thread must report its slot whatever happens
        output = INTERRUPTED
    finally:
        os.close(fd)
    return bytes((slot,)) + len(output).to_bytes(4, "big") + output


def _worker_main(sock, per_worker):
    """A worker's life: jobs until the socket closes, *per_worker* at a
    time (each on its own thread when more than one)."""
    import signal
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    if per_worker == 1:
        while True:
            job = _job(sock)
            if job is None:
                break
            try:
                sock.sendall(_result(job))
            except OSError:
                break
    else:
        _threaded(sock, per_worker)
    os._exit(0)


def _threaded(sock, count):
    """Up to *count* delivery threads fed from this one; the spawner never
    hands a worker more jobs than that.  A thread is started only when a
    job finds every thread busy -- counted from the handing over of a job
    to its end, so that a thread between taking a job and starting it is
    busy (each one's stack stays resident once used).  At the socket's
    end the running deliveries finish and are sent, then the worker
    exits."""
    import queue
    import threading
    jobs = queue.SimpleQueue()
    sending = threading.Lock()
    threads = []
    outstanding = [0]        # jobs handed to the threads and not finished
    counting = threading.Lock()

    def deliver():
        while True:
            job = jobs.get()
            if job is None:
                return
            frame = _result(job)
            # Free before the report goes: the spawner may answer it with
            # the next job at once, which this thread then takes.
            with counting:
                outstanding[0] -= 1
            with sending:
                try:
                    sock.sendall(frame)
                except OSError:   # the spawner is gone: nobody to report to
                    os._exit(0)

    while True:
        job = _job(sock)
        if job is None:
            break
        with counting:
            outstanding[0] += 1
            busy = outstanding[0] > len(threads)
        if busy and len(threads) < count:
            thread = threading.Thread(target=deliver, daemon=True)
            thread.start()
            threads.append(thread)
        jobs.put(job)
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join()


def _cpus():
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def per_worker_setting():
    """``QMAILREMOTE_RSPAWN_PER_WORKER`` (1-255), else :data:`PER_WORKER`;
    then no more than the descriptor limit allows.

    Threads share their process's descriptors: a delivery holds up to
    :data:`_FDS_PER_DELIVERY` at once (message, home, connection, and a
    resolver socket or tcpto's two files), a worker :data:`_FDS_WORKER`
    of its own.  More than one needs the compiled kernel, whose fault
    guard keeps a fault reading a message to that delivery; the pure twin
    has none.
    """
    from ._kernel import COMPILED
    if not COMPILED:
        return 1
    text = os.environ.get("QMAILREMOTE_RSPAWN_PER_WORKER", "")
    value = int(text) if text.isdigit() and 1 <= int(text) <= 255 \
        else PER_WORKER
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            value = min(value, (soft - _FDS_WORKER) // _FDS_PER_DELIVERY)
    except (ImportError, OSError, ValueError):
        pass
    return max(value, 1)


class WarmBackend:
    """Deliveries in pre-imported worker processes (module doc)."""

    def __init__(self, per_worker=1):
        import gc
        preload()
        self.per_worker = per_worker
        self.spread = _cpus() if per_worker > 1 else 1
        self.idle = []       # workers running nothing
        self.open = {}       # socket fd -> worker running some, with room
        self.busy = {}       # socket fd -> worker running at least one
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
                _worker_main(child, self.per_worker)
            finally:
                os._exit(0)
        child.close()
        return _Worker(pid, parent)

    def _pick(self):
        """A worker with room: an idle one; a new one while fewer are busy
        than there are CPUs (threads of one process share one GIL); the
        least busy with room; else a new one (or docmd()'s error text)."""
        if self.idle:
            return self.idle.pop()
        if self.open and len(self.busy) >= self.spread:
            return min(self.open.values(), key=lambda w: len(w.slots))
        worker = self._fork()
        if isinstance(worker, bytes) and self.open:
            return min(self.open.values(), key=lambda w: len(w.slots))
        return worker

    def start(self, slot, fd, host, sender, recip):
        """Hand the delivery to a worker: None, or docmd()'s error text."""
        job = bytes((slot,)) + b"\0".join((host, sender, recip, b""))
        while True:
            worker = self._pick()
            if isinstance(worker, bytes):
                return worker
            try:
                socket.send_fds(worker.sock, [job], [fd])
                break
            except OSError:   # the worker died (OOM killer...): another
                if worker.slots:   # its end, read as EOF, reports them
                    self.open.pop(worker.sock.fileno(), None)
                else:
                    self._retire(worker)
        worker.slots.add(slot)
        worker.done += 1
        key = worker.sock.fileno()
        self.busy[key] = worker
        if len(worker.slots) < self.per_worker and worker.done < RECYCLE:
            self.open[key] = worker
        else:
            self.open.pop(key, None)
        return None

    def fds(self):
        return set(self.busy)

    def readable(self, fd):
        """Output from a worker: the deliveries it finished, as (slot,
        wait status, output); all of its deliveries when it died."""
        worker = self.busy[fd]
        try:
            data = worker.sock.recv(_READ)
        except OSError:
            data = b""
        if not data:
            # The worker died: its wait status is each delivery's.
            del self.busy[fd]
            self.open.pop(fd, None)
            worker.sock.close()
            wstat = self._wait(worker.pid)
            return [(slot, wstat, b"") for slot in sorted(worker.slots)]
        buffer = worker.buffer
        buffer += data
        finished = []
        while len(buffer) >= 5:
            end = 5 + int.from_bytes(buffer[1:5], "big")
            if len(buffer) < end:
                break
            slot = buffer[0]
            finished.append((slot, 0, bytes(buffer[5:end])))
            del buffer[:end]
            worker.slots.discard(slot)
        if finished:
            self._settle(worker)
        return finished

    def _settle(self, worker):
        """After deliveries ended: back to idle (or retired), or room."""
        key = worker.sock.fileno()
        if worker.slots:
            if worker.done < RECYCLE:
                self.open[key] = worker
            return
        del self.busy[key]
        self.open.pop(key, None)
        if worker.done >= RECYCLE:
            self._retire(worker)
        else:
            worker.idle_since = time.monotonic()
            self.idle.append(worker)
            self._trim()

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

    def readable(self, fd):
        entry = self.slots[fd]
        try:
            data = os.read(fd, 128)
        except OSError:
            return []   # "read error on a readable pipe? be serious"
        if data:
            entry[3] += data
            return []
        if entry[2] is not None:
            return []   # EOF before death: a grandchild closed it
        del self.slots[fd]
        os.close(fd)
        return [(entry[0], entry[4], bytes(entry[3]))]

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
