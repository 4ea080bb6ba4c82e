"""Bulk sending from Python: :class:`Sender`.

``deliver()`` is one qmail-remote run: one host, one connection, one
message.  A :class:`Sender` sends many messages to many domains:

* a message's recipients are grouped by domain (case-insensitively); each
  group is one transaction, planned exactly as one qmail-remote run for
  that domain plans it (:func:`qmailremote.delivery.plan`: smtproutes,
  authsenders, CNAME canonicalisation, MX and address order, the "listed
  as MX" rule, tcpto), with all of the group's recipients;
* transactions run on ``concurrency`` threads (socket I/O and the kernel's
  encoding loops release the GIL);
* in the ESMTP profile a connection is kept after a transaction that
  reached its final reply, and the next transaction to the same address
  (same port, TLS policy, credentials, source address and HELO name) uses
  it: no connect, greeting, EHLO, STARTTLS or AUTH again; with PIPELINING
  and CHUNKING a small message then costs one round trip.  A transaction
  that failed midway is followed by RSET (lock-step servers only: with
  PIPELINING, replies may still be on their way, so the connection is
  closed).  Kept connections are closed after ``idle`` seconds unused or
  ``per_connection`` transactions; one that the server closed meanwhile
  is noticed before it is used, and one that dies before the server
  answered anything of the transaction (it answers MAIL before it can
  take a message) is replaced and the transaction made again; after
  that, the drop is reported as qmail-remote reports it;
* under ``control/noesmtp`` every transaction is a qmail-remote run of its
  own: 1.06's dialogue, a connection each, QUIT.

Every recipient gets an :class:`Outcome`: qmail's recipient letter and
text, the message report (``K``/``Z``/``D``) with the same texts the
drop-in prints, the server's address and whether TLS was used.  Nothing
raises for a failed delivery; temporary failures are returned, never
retried (README, "Bulk sending").

Control files are read when the Sender is made (``reload()`` reads them
again), except those :func:`qmailremote.delivery.plan` reads once the
route is known (``addresspreference``, the AUTH files), read per
transaction; ``queue/lock/tcpto`` is read and updated per connection
attempt, as qmail-remote does.
"""

import os
import select
import threading
import time

from .control import open_home, read_controls
from .delivery import _bytes, ipme_of, plan, source_for
from .report import (TEMP_NOCONN, TEMP_NOMEM, Failure, Report, Result,
                     internal_error)

__all__ = ["Sender", "Outcome", "Progress"]


class Outcome:
    """What happened to one recipient of one message.

    ``letter`` is qmail's recipient report letter (``r`` accepted, ``h``
    refused for good, ``s`` refused for now) or None when the transaction
    ended before its ``RCPT``; ``text`` that report's text.
    ``message_letter`` and ``message_text`` are the transaction's message
    report (``K``, ``Z``, ``D``), ``host`` the server's address (text) or
    None, ``tls`` whether the connection was encrypted.  The texts are
    the bytes qmail-remote prints, without the letter and the NUL.
    """

    __slots__ = ("recipient", "letter", "text", "message_letter",
                 "message_text", "host", "tls")

    def __init__(self, recipient, letter, text, message_letter,
                 message_text, host, tls):
        self.recipient = recipient
        self.letter = letter
        self.text = text
        self.message_letter = message_letter
        self.message_text = message_text
        self.host = host
        self.tls = tls

    @property
    def delivered(self):
        """Accepted by the server: qmail-send's success."""
        return self.letter == "r" and self.message_letter == "K"

    @property
    def permanent(self):
        """A bounce: the recipient or the message refused for good."""
        if self.delivered:
            return False
        return self.letter == "h" or (self.letter != "s" and
                                      self.message_letter == "D")

    @property
    def temporary(self):
        """Worth another try later (qmail-send would retry)."""
        return not self.delivered and not self.permanent

    def __repr__(self):
        return (f"Outcome({self.recipient!r}, {self.letter!r}, "
                f"{self.message_letter!r}, host={self.host!r}, "
                f"tls={self.tls!r})")


class Progress:
    """What :class:`Sender` has done so far, passed to ``progress``."""

    __slots__ = ("messages", "bytes", "in_flight", "failed", "total")

    def __init__(self, total):
        self.messages = 0      # messages whose every transaction ended
        self.bytes = 0         # message bytes of the transactions accepted
        self.in_flight = 0     # transactions running
        self.failed = 0        # messages with a recipient not delivered
        self.total = total     # messages given (None: an open iterable)

    def copy(self):
        other = Progress(self.total)
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        return other

    def __repr__(self):
        return (f"Progress(messages={self.messages}, bytes={self.bytes}, "
                f"in_flight={self.in_flight}, failed={self.failed})")


def _groups(recipients):
    """The recipients by domain, case-insensitively, in first-seen order:
    ``[(host, [recipient, ...])]``, the host as first written."""
    groups = {}
    for recipient in recipients:
        at = recipient.rfind(b"@")
        host = recipient[at + 1:] if at >= 0 else b""
        groups.setdefault(host.lower(), (host, []))[1].append(recipient)
    return list(groups.values())


class _Message:
    """One message's outcomes as its transactions end; once all have,
    :attr:`outcomes` is in the order the recipients were given (and
    nothing else is kept: 10,000 results stay small)."""

    __slots__ = ("outcomes", "order", "left")

    def __init__(self, recipients, transactions):
        self.outcomes = []
        self.order = recipients
        self.left = transactions

    def add(self, outcomes):
        """A transaction's outcomes; True when they were the last."""
        self.outcomes.extend(outcomes)
        self.left -= 1
        if self.left:
            return False
        by_recipient = {}
        for outcome in self.outcomes:
            by_recipient.setdefault(outcome.recipient, []).append(outcome)
        self.outcomes = [by_recipient[r].pop(0) for r in self.order]
        self.order = None
        return True


class _Shared:
    """One message, read by each of its transactions from the start.

    Bytes are shared, not copied; a path is opened by each transaction
    (and mapped when large, as qmail-remote maps it); a descriptor or a
    file object of a regular file is reopened through ``/proc/self/fd``
    at the offset it had, so that each transaction reads the same bytes;
    anything else (a pipe) is read once, whole.
    """

    __slots__ = ("source", "offset", "size")

    def __init__(self, message):
        self.offset = None
        if isinstance(message, (bytes, bytearray, memoryview)):
            self.source = message
            self.size = memoryview(message).nbytes
            return
        if isinstance(message, (str, os.PathLike)):
            self.source = message
            try:
                self.size = os.stat(message).st_size
            except OSError:
                self.size = 0
            return
        if self._reopenable(message):
            return
        from .message import Message
        whole = Message(message)
        try:
            self.source = b"".join(bytes(c) for c in whole.chunks())
        except OSError:
            self.source = b""
        finally:
            whole.close()
        self.size = len(self.source)

    def _reopenable(self, message):
        """A regular file's descriptor, or file object: noted to be
        reopened at its offset.  False for anything else."""
        import stat
        try:
            if isinstance(message, int):
                fd = message
                offset = os.lseek(fd, 0, os.SEEK_CUR)
            else:
                fd = message.fileno()
                if getattr(message, "writable", lambda: False)():
                    message.flush()
                offset = message.tell()
            info = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        self.source = "/proc/self/fd/%d" % fd
        self.offset = offset
        self.size = max(info.st_size - offset, 0)
        return True

    def open(self):
        """What one transaction reads: bytes, a path, or a descriptor of
        its own (the caller closes it); OSError when it cannot."""
        if self.offset is None:
            return self.source
        fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.lseek(fd, self.offset, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
        return fd


_LOOKAHEAD = 512   # transactions read ahead of the threads, at least


class _Jobs:
    """The transactions waiting for a thread, at most *limit* of them.

    A thread asks for one to the domain of its last (its connection
    there is likely kept) and gets that domain's oldest; otherwise, or
    when that domain has none, the oldest of all.  Reading ahead of the
    threads lets a kept connection carry a domain's next messages when
    there are more domains than connections; *limit* bounds the memory.
    """

    def __init__(self, limit):
        import collections
        self._deque = collections.deque
        self.limit = limit
        self.cond = threading.Condition()
        self.all = collections.deque()      # [taken, domain, job], in order
        self.by_domain = {}                 # domain -> deque of the same
        self.count = 0
        self.closed = False

    def put(self, domain, job):
        entry = [False, domain, job]
        with self.cond:
            while self.count >= self.limit:
                self.cond.wait()
            self.all.append(entry)
            self.by_domain.setdefault(domain, self._deque()).append(entry)
            self.count += 1
            self.cond.notify()

    def get(self, domain=None):
        """The next job (for *domain* first), or None when all are done."""
        with self.cond:
            while True:
                mine = self.by_domain.get(domain)
                if mine:
                    entry = mine.popleft()
                else:
                    while self.all and self.all[0][0]:
                        self.all.popleft()
                    if not self.all:
                        if self.closed:
                            return None
                        self.cond.wait()
                        continue
                    entry = self.all.popleft()
                    mine = self.by_domain[entry[1]]
                    mine.popleft()          # the same entry: its oldest
                if not mine:
                    del self.by_domain[entry[1]]
                job, entry[0], entry[2] = entry[2], True, None
                self.count -= 1
                self.cond.notify_all()
                return job

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _Connection:
    """A kept connection: its session, capabilities, TLS, use count."""

    __slots__ = ("key", "session", "caps", "starter", "used", "idle_since")

    def __init__(self, key, session, starter):
        self.key = key
        self.session = session
        self.caps = None
        self.starter = starter
        self.used = 0
        self.idle_since = 0.0

    @property
    def stale(self):
        """The server spoke or closed while nobody asked: not usable."""
        poller = select.poll()
        poller.register(self.session.sock, select.POLLIN | select.POLLPRI)
        try:
            return bool(poller.poll(0))
        except OSError:
            return True

    def close(self, quit=True):
        if quit:
            self.session.quit()
        self.session.sock.close()


class _Pool:
    """Open connections: at most *limit* in all, *per_host* per key; idle
    ones are kept for reuse (and closed, oldest first, to make room).  A
    connection is closed before its place is given to another, so the
    limits hold for sockets, not only for this bookkeeping."""

    def __init__(self, limit, per_host, idle, per_connection):
        self.limit = limit
        self.per_host = per_host
        self.idle_time = idle
        self.per_connection = per_connection
        self.cond = threading.Condition()
        self.idle = {}       # key -> [connection], most recent last
        self.count = {}      # key -> connections open (idle or in use)
        self.total = 0

    def acquire(self, key):
        """An idle connection for *key*, or None with a place reserved to
        open one (release_slot() if that fails)."""
        with self.cond:
            while True:
                self._expire(time.monotonic())
                kept = self.idle.get(key)
                if kept:
                    return kept.pop()
                if self.count.get(key, 0) < self.per_host:
                    if self.total >= self.limit:
                        victim = self._oldest_idle()
                        if victim is None:
                            self.cond.wait()
                            continue
                        self._close(victim)
                    self.count[key] = self.count.get(key, 0) + 1
                    self.total += 1
                    return None
                self.cond.wait()

    def _oldest_idle(self):
        best = None
        for kept in self.idle.values():
            if kept and (best is None or kept[0].idle_since <
                         best.idle_since):
                best = kept[0]
        if best is not None:
            self.idle[best.key].remove(best)
        return best

    def _close(self, conn, quit=True):
        """QUIT (unread) and close, then give its place up."""
        conn.close(quit)
        self.count[conn.key] -= 1
        self.total -= 1

    def _expire(self, now):
        for kept in self.idle.values():
            while kept and now - kept[0].idle_since >= self.idle_time:
                self._close(kept.pop(0))

    def release_slot(self, key):
        """A reserved place that no connection took."""
        with self.cond:
            self.count[key] -= 1
            self.total -= 1
            self.cond.notify_all()

    def release(self, conn, keep, quit=True):
        """Back to the idle set when *keep* (and it has transactions
        left), else closed -- with QUIT when *quit*."""
        with self.cond:
            if keep and conn.used < self.per_connection:
                conn.idle_since = time.monotonic()
                self.idle.setdefault(conn.key, []).append(conn)
            else:
                self._close(conn, quit)
            self.cond.notify_all()

    def close_all(self):
        with self.cond:
            for kept in self.idle.values():
                while kept:
                    self._close(kept.pop())
            self.cond.notify_all()


class Sender:
    """Sends messages as qmail-remote would, many at once (module doc).

    *home* and *resolver* are :func:`qmailremote.deliver`'s.
    *concurrency* bounds the connections open at once (and the threads
    that use them); *per_host* the connections to one server address;
    *idle* is how long, in seconds, a kept connection may wait for its
    next transaction, *per_connection* how many transactions it carries.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, *, home=None, resolver=None, concurrency=32,
                 per_host=4, idle=30.0, per_connection=100):
        if concurrency < 1 or per_host < 1 or per_connection < 1:
            raise ValueError("concurrency, per_host and per_connection "
                             "must be at least 1")
        self._home = home
        self._resolver = resolver
        self._resolver_lock = threading.Lock()
        self.concurrency = concurrency
        self._pool = _Pool(concurrency, per_host, idle, per_connection)
        self._hosts = {}
        self._home_fd = None
        self.reload()

    # -- set-up -------------------------------------------------------------

    def reload(self):
        """Read the control files (and the interfaces, for ipme) again."""
        from .tls import TlsControls
        home_fd = open_home(self._home)
        try:
            controls = read_controls(home_fd)
        except BaseException:
            os.close(home_fd)
            raise
        old, self._home_fd = self._home_fd, home_fd
        self._controls = controls
        self._me = None
        self._tls = TlsControls(home_fd) if controls.esmtp else None
        if old is not None:
            os.close(old)

    def close(self):
        """QUIT and close every kept connection; the Sender is done."""
        self._pool.close_all()
        if self._home_fd is not None:
            os.close(self._home_fd)
            self._home_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _resolver_of(self):
        with self._resolver_lock:
            if self._resolver is None:
                from .mx import Resolver
                self._resolver = Resolver.from_system()
            return self._resolver

    def _me_of(self):
        if self._me is None:
            self._me = ipme_of(self._controls.esmtp)
        return self._me

    # -- sending ------------------------------------------------------------

    def send(self, sender, recipients, message, *, progress=None):
        """One message to *recipients*: a list of :class:`Outcome`, one per
        recipient, in their order.  *message* is bytes, a path, a file
        descriptor (read from its current offset, once per domain: a
        regular file) or a binary file (the same)."""
        return self.send_many([(sender, recipients, message)],
                              progress=progress)[0]

    def send_many(self, messages, *, progress=None):
        """Many messages: *messages* is an iterable of ``(sender,
        recipients, message)``, consumed as the work goes (transactions
        are read ahead of the threads, up to 512 or 16 per thread, so
        that a kept connection can carry its domain's next messages).
        Returns, in the same order, each message's list of
        :class:`Outcome`.  *progress(Progress)* is called from the
        sending threads after each transaction."""
        try:
            total = len(messages)
        except TypeError:
            total = None
        state = Progress(total)
        lock = threading.Lock()
        results = []
        jobs = _Jobs(max(_LOOKAHEAD, 16 * self.concurrency))

        def finished(slot, outcomes, size):
            with lock:
                state.in_flight -= 1
                state.bytes += size
                if slot.add(outcomes):
                    state.messages += 1
                    if not all(o.delivered for o in slot.outcomes):
                        state.failed += 1
                snapshot = state.copy() if progress is not None else None
            if snapshot is not None:
                try:
                    progress(snapshot)
                except Exception:   # the caller's bug loses no result
                    pass

        def work():
            domain = None
            while True:
                job = jobs.get(domain)
                if job is None:
                    return
                slot, sender, host, group, message = job
                domain = host.lower()
                with lock:
                    state.in_flight += 1
                outcomes = self._transaction(sender, host, group, message)
                sent = outcomes[0].message_letter == "K" if outcomes else 0
                finished(slot, outcomes, message.size if sent else 0)

        threads = [threading.Thread(target=work, daemon=True)
                   for _ in range(self.concurrency)]
        for thread in threads:
            thread.start()
        try:
            for sender, recipients, message in messages:
                sender = _bytes(sender)
                recipients = [_bytes(r) for r in recipients]
                groups = _groups(recipients) if recipients else [(b"", [])]
                message = _Shared(message)
                slot = _Message(recipients, len(groups))
                results.append(slot)
                for host, group in groups:
                    jobs.put(host.lower(), (slot, sender, host, group,
                                            message))
        finally:
            jobs.close()
            for thread in threads:
                thread.join()
        return [slot.outcomes for slot in results]

    # -- one transaction ------------------------------------------------------

    def _transaction(self, sender, host, recipients, message):
        """One group: its outcomes (one per recipient)."""
        from .message import Message
        try:
            opened = message.open()
            source = Message(opened)
        except OSError:
            opened = source = None
        try:
            if source is None:
                from .report import TEMP_READ
                raise Failure(TEMP_READ)
            result, ip, tls = self._deliver(sender, host, recipients, source)
        except Failure as failure:
            result, ip, tls = Result(failure.recipients,
                                     failure.report), None, False
        except MemoryError:
            result, ip, tls = Result([], TEMP_NOMEM), None, False
        except Exception:
            # A bug must cost this transaction only, with a report.
            result, ip, tls = Result([], internal_error(False)), None, False
        finally:
            if source is not None:
                source.close()
            if isinstance(opened, int):
                os.close(opened)
        outcomes = []
        if ip is not None:
            # one str per server, not per transaction
            ip = self._hosts.setdefault(ip, ip.decode("ascii"))
        reports = result.recipients
        for i, recipient in enumerate(recipients):
            report = reports[i] if i < len(reports) else None
            outcomes.append(Outcome(
                recipient, report.letter if report else None,
                report.text if report else None, result.message.letter,
                result.message.text, ip, tls))
        return outcomes

    def _deliver(self, sender, host, recipients, message):
        """deliver()'s _run with kept connections: (Result, ip, tls)."""
        from .tcpto import TcpTo

        controls = self._controls
        if not recipients:
            from .report import PERM_USAGE
            raise Failure(PERM_USAGE)
        home_fd = self._home_fd
        source, helohost = source_for(home_fd, controls, sender)
        if controls.esmtp:
            message.count_ahead()
        where = plan(home_fd, controls, host, sender, recipients,
                     self._me_of, self._resolver_of)
        tcpto, tls = TcpTo(home_fd), self._tls   # per run, as 1.06's
        port = where.port
        for ip, name in where.candidates:
            if tcpto.skip(ip):
                continue
            starter = tls.starter(name, port) if tls is not None else None
            starter_key = None if starter is None else (
                starter.mode, starter.ca_label, starter.implicit, name)
            credentials = where.credentials
            key = (ip, port, starter_key,
                   None if credentials is None else
                   (credentials.user, credentials.password,
                    credentials.mechanisms, credentials.plaintext_ok),
                   source.ip if source is not None else None, helohost)
            if controls.esmtp:
                outcome = self._on_connection(key, ip, port, source,
                                              helohost, where, message,
                                              tcpto, starter)
            else:
                outcome = self._classic(key, ip, port, source, helohost,
                                        where, message, tcpto)
            if outcome is not None:
                return outcome
        raise Failure(TEMP_NOCONN)

    def _classic(self, key, ip, port, source, helohost, where, message,
                 tcpto):
        """noesmtp: a qmail-remote run's connection and 1.06's dialogue,
        within the pool's limits; None when *ip* cannot be reached."""
        from .mx import ip_text
        from .session import classic
        self._pool.acquire(key)   # a slot: classic connections are never kept
        conn = self._connect(key, ip, port, source, None, tcpto)
        if conn is None:
            return None
        try:
            result = conn.session.run(classic, helohost, where.sender,
                                      where.recipients, message)
        finally:
            self._pool.release_slot(key)   # run() said QUIT and closed
        return result, ip_text(ip), False

    def _on_connection(self, key, ip, port, source, helohost, where,
                       message, tcpto, starter):
        """The transaction on a kept connection to *ip*, or a new one (TLS
        by *starter*): its (Result, ip text, tls), or None when *ip*
        cannot be reached."""
        from .mx import ip_text

        controls = self._controls
        pool = self._pool
        for attempt in range(2):
            conn = pool.acquire(key)
            reused = conn is not None
            if reused and conn.stale:
                pool.release(conn, False, quit=False)
                conn = pool.acquire(key)
                reused = conn is not None
            if conn is None:
                conn = self._connect(key, ip, port, source, starter, tcpto)
                if conn is None:
                    return None
            session = conn.session
            result, ended, usable = session.transact(
                _stepper(conn, helohost, where, message, controls))
            conn.used += 1
            used = conn.starter
            if conn.caps is None and used is not None and used.fell_back:
                # The opportunistic handshake failed: once more, in clear,
                # as qmail-remote does, in the same place in the pool
                # (that connection is not kept).
                conn.close(quit=False)
                again = self._connect(key, ip, port, source, None, tcpto)
                if again is None:
                    return None
                result, _, usable = again.session.transact(
                    _stepper(again, helohost, where, message, controls))
                pool.release(again, False, quit=usable)
                return result, ip_text(ip), False
            if reused and attempt == 0 and not usable and \
                    not session.replies:
                # A kept connection that died before the server answered
                # anything of this transaction (it answers MAIL before it
                # can take a message): once more, on a new connection.
                pool.release(conn, False, quit=False)
                continue
            keep = usable and conn.caps is not None and (
                ended or (not conn.caps.pipelining and session.reset()))
            pool.release(conn, keep, quit=usable)
            tls = used is not None and used.version is not None
            if tls and result.accepted:
                result.message = Report("K", result.message.text +
                                        used.report_line())
            return result, ip_text(ip), tls
        return None

    def _connect(self, key, ip, port, source, starter, tcpto):
        """A new connection (its pool slot already reserved), or None."""
        from .mx import ip_text
        from .session import Session, connect
        controls = self._controls
        try:
            sock, timed_out = connect(ip, port, controls.timeoutconnect,
                                      source)
        except BaseException:
            self._pool.release_slot(key)
            raise
        if sock is None:
            self._pool.release_slot(key)
            tcpto.update(ip, timed_out)
            return None
        tcpto.update(ip, False)
        session = Session(sock, ip_text(ip), controls.timeoutremote)
        return _Connection(key, session, starter)


def _stepper(conn, helohost, where, message, controls):
    """The transaction on *conn*, opened first (greeting, EHLO, TLS, AUTH)
    when it is new."""
    from .esmtp import opening, transaction

    def step(session):
        if conn.caps is None:
            conn.caps = opening(session, helohost, conn.starter,
                                where.credentials)
        return transaction(session, conn.caps, where.sender,
                           where.recipients, message, controls.chunking,
                           where.credentials is not None)
    return step
