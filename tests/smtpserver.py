"""SMTP peers for tests: a scripted socket server and a teeing aiosmtpd.

qmail-remote is an SMTP client (spec sections 11-14), so its tests need
servers to talk to.  Both servers here listen on 127.0.0.1 with a port the
OS picks, run in background threads, and are used as context managers.

``ScriptedServer`` is a raw TCP server for misbehaviour: every accepted
connection runs a list of steps (send these bytes, read a line, reset, stall,
...) and records what the client sent::

    with ScriptedServer(smtp_script(final=b"451 try later\\r\\n")) as srv:
        run_client(port=srv.port)
        srv.wait_done()                  # scripts finished, no mismatch
        assert srv.received[0].endswith(b"\\r\\n.\\r\\nQUIT\\r\\n")

A list of step lists gives one script per successive connection instead.
Failures inside the server threads (a line that does not match, EOF where a
line was expected, an unexpected connection) are recorded, never raised
there; ``wait_done()`` or ``check()`` raise them as ``AssertionError`` in the
test thread, and so does leaving the ``with`` block if nobody looked.

``TeeSMTPServer`` is a real SMTP server (aiosmtpd) that records each
delivered message as aiosmtpd hands it over (un-dot-stuffed) and also tees
every byte received on each connection, so tests can check the exact wire
bytes, dot-stuffing and ``QUIT\\r\\n`` included::

    with TeeSMTPServer(final_reply="250 ok 1234 queued") as srv:
        run_client(port=srv.port)
        msg, = srv.wait_messages(1)
        srv.wait_closed(1)
        assert srv.raw[0].endswith(b"\\r\\n.\\r\\nQUIT\\r\\n")
"""

from __future__ import annotations

import asyncio
import re
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = [
    "ScriptedServer",
    "ConnRecord",
    "Step",
    "send",
    "expect_line",
    "expect_data",
    "read_some",
    "read_bytes",
    "close",
    "reset",
    "stall",
    "stop_reading",
    "trickle",
    "send_forever",
    "read_to_eof",
    "wait_event",
    "call",
    "smtp_script",
    "TeeSMTPServer",
    "Message",
]

#: Bytes asked of recv() at a time: large, so a body of tens of MB takes a
#: few hundred calls rather than millions.
RECV_SIZE = 256 * 1024

#: The end of an SMTP body (RFC 5321 4.1.1.4), when it is not at the very
#: start of the body.
DATA_END = b"\r\n.\r\n"

#: Seconds to wait for a server thread to finish after stop() woke it.
JOIN_TIMEOUT = 5.0

# ---------------------------------------------------------------------------
# ScriptedServer: steps


class _PeerGone(Exception):
    """The client closed or reset the connection while a step needed it."""


class Step:
    """One action of a script.  Steps hold no per-connection state."""

    #: The helper function that builds the step, for failure messages.
    name = "step"

    def run(self, conn: "_Conn") -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}()"


def _short(data: bytes, limit: int = 120) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit // 2]!r}...{data[-limit // 2:]!r} ({len(data)} bytes)"


def _matches(expected, got: bytes) -> bool:
    if isinstance(expected, re.Pattern):
        return expected.fullmatch(got) is not None
    return expected == got


class _Send(Step):
    def __init__(self, data: bytes):
        self.data = bytes(data)

    def run(self, conn):
        conn.sock.sendall(self.data)

    def __repr__(self):
        return f"send({_short(self.data)})"


class _ExpectLine(Step):
    def __init__(self, expected):
        self.expected = expected

    def run(self, conn):
        line = conn.read_line()
        conn.record.lines.append(line)
        if self.expected is not None and not _matches(self.expected, line):
            conn.fail(f"expected line {self.expected!r}, got {_short(line)}")

    def __repr__(self):
        return f"expect_line({'' if self.expected is None else repr(self.expected)})"


class _ExpectData(Step):
    def __init__(self, expected):
        self.expected = expected

    def run(self, conn):
        data = conn.read_data()
        conn.record.data.append(data)
        if self.expected is not None and not _matches(self.expected, data):
            want = _short(self.expected) if isinstance(self.expected, bytes) else repr(self.expected)
            conn.fail(f"expected data {want}, got {_short(data)}")

    def __repr__(self):
        return "expect_data()"


class _ReadSome(Step):
    def __init__(self, n: int):
        self.n = n

    def run(self, conn):
        conn.record.chunks.append(conn.read_some(self.n))

    def __repr__(self):
        return f"read_some({self.n})"


class _ReadBytes(Step):
    def __init__(self, n: int):
        self.n = n

    def run(self, conn):
        conn.record.chunks.append(conn.read_exactly(self.n))

    def __repr__(self):
        return f"read_bytes({self.n})"


class _Close(Step):
    name = "close"
    def run(self, conn):
        conn.close_gracefully()


class _Reset(Step):
    name = "reset"
    def run(self, conn):
        conn.close_with_reset()


class _Stall(Step):
    name = "stall"
    def run(self, conn):
        conn.stopping.wait()


class _StopReading(_Stall):
    name = "stop_reading"


class _Trickle(Step):
    def __init__(self, data: bytes, interval: float):
        self.data = bytes(data)
        self.interval = interval

    def run(self, conn):
        try:
            for i in range(len(self.data)):
                if i and conn.stopping.wait(self.interval):
                    return
                conn.sock.sendall(self.data[i:i + 1])
        except OSError:
            # The client going away mid-trickle (e.g. its timeout fired) is
            # the behaviour under test, not a script failure.
            conn.record.peer_gone = True
            raise _PeerGone from None

    def __repr__(self):
        return f"trickle({_short(self.data)}, {self.interval})"


class _SendForever(Step):
    def __init__(self, chunk: bytes):
        self.chunk = bytes(chunk)
        if not self.chunk:
            raise ValueError("send_forever needs a non-empty chunk")

    def run(self, conn):
        try:
            while not conn.stopping.is_set():
                conn.sock.sendall(self.chunk)
                conn.record.sent_forever += len(self.chunk)
        except OSError:
            conn.record.peer_gone = True
            raise _PeerGone from None

    def __repr__(self):
        return f"send_forever({_short(self.chunk)})"


class _ReadToEof(Step):
    def __init__(self, expected):
        self.expected = expected

    def run(self, conn):
        tail = conn.read_to_eof()
        conn.record.tail = tail
        if self.expected is not None and not _matches(self.expected, tail):
            conn.fail(f"expected {self.expected!r} before EOF, got {_short(tail)}")

    def __repr__(self):
        return f"read_to_eof({'' if self.expected is None else repr(self.expected)})"


class _WaitEvent(Step):
    name = "wait_event"
    def __init__(self, event: threading.Event):
        self.event = event

    def run(self, conn):
        # ScriptedServer.stop() sets the event too, so this always ends.
        self.event.wait()


class _Call(Step):
    def __init__(self, fn: Callable[["_Conn"], None]):
        self.fn = fn

    def run(self, conn):
        self.fn(conn)

    def __repr__(self):
        return f"call({getattr(self.fn, '__name__', self.fn)!r})"


def send(data: bytes) -> Step:
    """Write *data* to the client."""
    return _Send(data)


def expect_line(expected: "bytes | re.Pattern[bytes] | None" = None) -> Step:
    """Read one line (through LF) and record it in ``record.lines``.

    With *expected* (bytes, or a compiled bytes regex that must fullmatch),
    a different line is recorded as a failure and the script stops.
    """
    return _ExpectLine(expected)


def expect_data(expected: "bytes | re.Pattern[bytes] | None" = None) -> Step:
    """Read an SMTP body through its terminator and record it in ``record.data``.

    The recorded bytes are the raw, dot-stuffed wire bytes, terminator
    (``\\r\\n.\\r\\n``, or ``.\\r\\n`` for an empty body) included.
    """
    return _ExpectData(expected)


def read_some(n: int) -> Step:
    """Read up to *n* bytes (one recv) into ``record.chunks``; EOF is a failure."""
    return _ReadSome(n)


def read_bytes(n: int) -> Step:
    """Read exactly *n* bytes into ``record.chunks``; EOF first is a failure."""
    return _ReadBytes(n)


def close() -> Step:
    """Close gracefully (FIN).  Linux sends RST instead if client bytes are
    still unread, as for any server."""
    return _Close()


def reset() -> Step:
    """Close with RST (SO_LINGER on, linger time 0)."""
    return _Reset()


def stall() -> Step:
    """Do nothing, keeping the socket open, until the server is stopped."""
    return _Stall()


def stop_reading() -> Step:
    """Never read again, keeping the socket open, until the server is stopped.

    Once the kernel buffers are full the client's writes block.  Pass
    ``rcvbuf=`` to ``ScriptedServer`` to make that happen sooner.
    """
    return _StopReading()


def trickle(data: bytes, interval: float) -> Step:
    """Send *data* one byte at a time, *interval* seconds apart.

    The client going away ends the script quietly (``record.peer_gone``).
    """
    return _Trickle(data, interval)


def send_forever(chunk: bytes) -> Step:
    """Send *chunk* again and again until the client goes away or the server
    stops (``record.sent_forever`` counts the bytes written)."""
    return _SendForever(chunk)


def read_to_eof(expected: "bytes | re.Pattern[bytes] | None" = None) -> Step:
    """Read until the client closes; the bytes go to ``record.tail``.

    A reset from the client also ends the read (``record.reset_by_peer``).
    """
    return _ReadToEof(expected)


def wait_event(event: threading.Event) -> Step:
    """Block until the test sets *event*.  Stopping the server sets it."""
    return _WaitEvent(event)


def call(fn: Callable[["_Conn"], None]) -> Step:
    """Run ``fn(conn)`` in the connection thread (escape hatch; ``conn.sock``
    is the socket, ``conn.fail(msg)`` records a failure)."""
    return _Call(fn)


def smtp_script(
    greeting: bytes | None = b"220 ok\r\n",
    helo: bytes | None = b"250 ok\r\n",
    mail: bytes | None = b"250 ok\r\n",
    rcpts: Sequence[bytes | None] | None = (b"250 ok\r\n",),
    data: bytes | None = b"354 go\r\n",
    final: bytes | None = b"250 ok queued\r\n",
    quit: bool | None = True,
) -> list[Step]:
    """Steps for a normal dialogue as qmail-remote speaks it (spec section 11).

    The server sends *greeting*, then reads one command line before sending
    each of *helo*, *mail*, one reply per element of *rcpts*, and *data*;
    then it reads the body (``expect_data``) and sends *final*.  With
    ``quit=True`` it then requires exactly ``QUIT\\r\\n`` followed by EOF;
    with ``quit=False`` it only records whatever comes before EOF.

    ``None`` for a reply stops the script right after the command line that
    reply would answer was read (``greeting=None`` gives an empty script;
    ``final=None`` stops after the body; ``quit=None`` after *final*), so
    custom steps can be appended.  The command lines land in
    ``record.lines``, the body in ``record.data``.
    """
    steps: list[Step] = []
    if greeting is None:
        return steps
    steps.append(send(greeting))
    replies = [helo, mail, *(rcpts if rcpts is not None else [None]), data]
    for reply in replies:
        steps.append(expect_line())
        if reply is None:
            return steps
        steps.append(send(reply))
    steps.append(expect_data())
    if final is None:
        return steps
    steps.append(send(final))
    if quit is None:
        return steps
    steps.append(read_to_eof(b"QUIT\r\n" if quit else None))
    return steps


# ---------------------------------------------------------------------------
# ScriptedServer: connections


@dataclass
class ConnRecord:
    """What one connection saw.  Read it after ``wait_done()``."""

    index: int
    peer: tuple
    _received: list = field(default_factory=list, repr=False)
    #: Lines read by expect_line, in order.
    lines: list = field(default_factory=list)
    #: Bodies read by expect_data (raw, terminator included).
    data: list = field(default_factory=list)
    #: Results of read_some / read_bytes.
    chunks: list = field(default_factory=list)
    #: What read_to_eof read (None if it did not run).
    tail: bytes | None = None
    #: The client reset the connection during read_to_eof.
    reset_by_peer: bool = False
    #: The client went away during trickle / send_forever.
    peer_gone: bool = False
    #: Bytes written by send_forever.
    sent_forever: int = 0
    #: Index of the step running (or that failed); len(script) once done.
    step: int = 0
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def received(self) -> bytes:
        """Every byte read from the client so far, in order."""
        return b"".join(list(self._received))


class _Conn:
    """The per-connection side of a script run: socket, read buffer, record."""

    def __init__(self, server: "ScriptedServer", sock: socket.socket, record: ConnRecord):
        self.server = server
        self.sock = sock
        self.record = record
        self.stopping = server._stopping
        self.buf = bytearray()
        self.eof = False
        self.closed = False
        self.lock = threading.Lock()

    # -- reading -----------------------------------------------------------

    def _fill(self, size: int = RECV_SIZE) -> bool:
        """Append one recv to the buffer; False at EOF."""
        if self.eof:
            return False
        chunk = self.sock.recv(size)
        if not chunk:
            self.eof = True
            return False
        self.record._received.append(chunk)
        self.buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _eof_failure(self, wanted: str) -> None:
        self.fail(f"EOF while {wanted}; unconsumed bytes {_short(bytes(self.buf))}")

    def read_line(self) -> bytes:
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                return self._take(i + 1)
            start = len(self.buf)
            if not self._fill():
                self._eof_failure("expecting a line")

    def read_data(self) -> bytes:
        scanned = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                return self._take(3)
            # Only the new tail (plus a terminator's width of overlap) is
            # searched, so a big body costs linear time.
            i = self.buf.find(DATA_END, max(0, scanned - len(DATA_END) + 1))
            if i >= 0:
                return self._take(i + len(DATA_END))
            scanned = len(self.buf)
            if not self._fill():
                self._eof_failure("expecting the body and its terminator")

    def read_some(self, n: int) -> bytes:
        if not self.buf and not self._fill(n):
            self._eof_failure(f"reading up to {n} bytes")
        return self._take(n)

    def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill(max(n - len(self.buf), 1)):
                self._eof_failure(f"reading {n} bytes")
        return self._take(n)

    def read_to_eof(self) -> bytes:
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            self.record.reset_by_peer = True
        return self._take(len(self.buf))

    # -- failures and closing ---------------------------------------------

    def fail(self, message: str) -> None:
        raise _ScriptFailure(message)

    def close_gracefully(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.sock.close()

    def close_with_reset(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    def interrupt(self) -> None:
        """Wake a recv or send blocked in the connection thread (server stop)."""
        with self.lock:
            if not self.closed:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _ScriptFailure(Exception):
    pass


class ScriptedServer:
    """A threaded TCP server on 127.0.0.1:0 that plays scripts of steps.

    *script* is either one list of steps, run for every connection, or a
    list of step lists, one per successive connection (a connection beyond
    the last script is a failure and is closed at once).  When a script
    ends, the connection is closed gracefully if no step closed it.

    *rcvbuf*, if given, is set as SO_RCVBUF on the listening socket (and so
    inherited by connections) to make ``stop_reading`` block clients sooner.
    """

    def __init__(
        self,
        script: Sequence[Step] | Sequence[Sequence[Step]],
        *,
        host: str = "127.0.0.1",
        rcvbuf: int | None = None,
    ):
        script = list(script)
        self.per_connection = bool(script) and not isinstance(script[0], Step)
        self.scripts = [list(s) for s in script] if self.per_connection else [script]
        for s in self.scripts:
            for step in s:
                if not isinstance(step, Step):
                    raise TypeError(f"not a step: {step!r}")
        self.host = host
        self.rcvbuf = rcvbuf
        self.port = 0
        self.records: list[ConnRecord] = []
        self._conns: list[_Conn] = []
        self._threads: list[threading.Thread] = []
        self._failures: list[str] = []
        self._reported = 0
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> "ScriptedServer":
        self._wake_r, self._wake_w = socket.socketpair()
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf is not None:
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        lst.bind((self.host, 0))
        lst.listen(64)
        self._listener = lst
        self.port = lst.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"ScriptedServer-accept:{self.port}", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Wake stalled steps, close every socket and join every thread."""
        if self._stopping.is_set() or self._listener is None:
            return
        self._stopping.set()
        for s in self.scripts:
            for step in s:
                if isinstance(step, _WaitEvent):
                    step.event.set()
        self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(JOIN_TIMEOUT)
        with self._cond:
            conns = list(self._conns)
            threads = list(self._threads)
        for conn in conns:
            conn.interrupt()
        for t in threads:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                self._failures.append(f"{t.name} did not finish after stop")
        if self._listener is not None:
            self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None:
            self.check()

    # -- threads -----------------------------------------------------------

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        sock, peer = self._listener.accept()
                    except OSError as e:  # pragma: no cover - defensive
                        self._failures.append(f"accept failed: {e!r}")
                        return
                    self._spawn(sock, peer)
        finally:
            sel.close()

    def _spawn(self, sock: socket.socket, peer) -> None:
        sock.setblocking(True)
        # Replies and trickled bytes must leave at once, not wait for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._cond:
            index = len(self.records)
            record = ConnRecord(index=index, peer=peer)
            conn = _Conn(self, sock, record)
            t = threading.Thread(target=self._run_script, args=(conn,),
                                 name=f"ScriptedServer-conn{index}:{self.port}", daemon=True)
            self.records.append(record)
            self._conns.append(conn)
            self._threads.append(t)
            t.start()
            self._cond.notify_all()

    def _run_script(self, conn: _Conn) -> None:
        record = conn.record
        index = record.index
        try:
            if index >= len(self.scripts) and self.per_connection:
                self._fail(f"connection #{index}: unexpected, only {len(self.scripts)} scripts")
                return
            script = self.scripts[index if self.per_connection else 0]
            for record.step, step in enumerate(script):
                if conn.closed and not isinstance(step, (_Close, _Reset)):
                    self._fail(f"connection #{index} step {record.step} {step!r}: socket already closed")
                    return
                try:
                    step.run(conn)
                except _PeerGone:
                    return
                except _ScriptFailure as e:
                    self._fail(f"connection #{index} step {record.step} {step!r}: {e}")
                    return
                except OSError as e:
                    self._fail(f"connection #{index} step {record.step} {step!r}: {e!r}")
                    return
            record.step = len(script)
        except BaseException as e:  # never let a thread print a traceback
            self._fail(f"connection #{index}: {type(e).__name__}: {e}")
        finally:
            conn.close_gracefully()
            with self._cond:
                record.done.set()
                self._cond.notify_all()

    def _fail(self, message: str) -> None:
        # A failure caused by stop() shutting the socket is not the client's.
        if not self._stopping.is_set():
            with self._cond:
                self._failures.append(message)

    # -- results -----------------------------------------------------------

    @property
    def connections(self) -> int:
        """How many connections were accepted."""
        return len(self.records)

    @property
    def received(self) -> list[bytes]:
        """All bytes received, one entry per connection, in accept order."""
        return [r.received for r in list(self.records)]

    @property
    def failures(self) -> list[str]:
        """Every failure recorded so far (reported or not)."""
        return list(self._failures)

    def check(self) -> None:
        """Raise AssertionError for failures not raised before."""
        with self._cond:
            new = self._failures[self._reported:]
            self._reported = len(self._failures)
        if new:
            raise AssertionError("ScriptedServer: " + "\n".join(new))

    def wait_connections(self, n: int, timeout: float = 10.0) -> None:
        """Wait until at least *n* connections have been accepted."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.records) >= n, timeout):
                raise AssertionError(
                    f"ScriptedServer: {len(self.records)} connections accepted, expected {n}")

    def wait_done(self, timeout: float = 10.0, connections: int | None = None) -> None:
        """Wait for *connections* accepts and for every accepted script to end,
        then ``check()``.

        *connections* defaults to the number of scripts given per connection,
        or to 1 for a single shared script.  Waiting for the accept matters:
        a client can finish before the server thread has called accept().
        """
        if connections is None:
            connections = len(self.scripts) if self.per_connection else 1
        deadline = time.monotonic() + timeout

        def finished() -> bool:
            return (len(self.records) >= connections
                    and all(r.done.is_set() for r in self.records))

        with self._cond:
            ok = self._cond.wait_for(finished, max(0.0, deadline - time.monotonic()))
            records = list(self.records)
        if not ok:
            self.check()
            busy = [f"#{r.index} at step {r.step}" for r in records if not r.done.is_set()]
            raise AssertionError(
                f"ScriptedServer: scripts not finished after {timeout}s: "
                f"{len(records)}/{connections} connections accepted; still running: {busy}")
        self.check()


# ---------------------------------------------------------------------------
# TeeSMTPServer


@dataclass
class Message:
    """One message as aiosmtpd delivered it."""

    mail_from: str
    rcpt_tos: list[str]
    #: The body, un-dot-stuffed, without the terminator (bytes).
    content: bytes
    peer: tuple
    #: The HELO argument of the session.
    helo: str | None
    #: Index of the connection (into ``TeeSMTPServer.raw``).
    connection: int
    #: The TLS version the message came under; None in plaintext.
    tls: str | None = None
    #: The client certificate the server verified (getpeercert()), if any.
    client_cert: dict | None = None


class _Handler:
    """aiosmtpd hooks: configurable replies, and the message log."""

    def __init__(self, server: "TeeSMTPServer"):
        self.server = server

    async def handle_HELO(self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str):
        session.host_name = hostname
        return self.server.helo_reply or f"250 {smtp.hostname}"

    async def handle_MAIL(self, smtp, session, envelope, address, mail_options):
        reply = self.server.mail_reply
        if reply is None or reply[:1] in ("1", "2", "3"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply or "250 OK"

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):
        reply = self.server.rcpt_replies.get(address)
        if reply is None or reply[:1] in ("1", "2", "3"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply or "250 OK"

    async def handle_DATA(self, smtp, session, envelope):
        srv = self.server
        tls = smtp.transport.get_extra_info("ssl_object")
        msg = Message(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            content=bytes(envelope.original_content),
            peer=session.peer,
            helo=session.host_name,
            connection=smtp._tee_index,
            tls=tls.version() if tls is not None else None,
            client_cert=(tls.getpeercert() or None) if tls is not None else None,
        )
        # Recorded before the reply goes out: once the client has read the
        # final reply, the message is in srv.messages.
        with srv._cond:
            srv.messages.append(msg)
            srv._cond.notify_all()
        final = srv.final_reply
        if callable(final):
            final = final(msg)
        return final or "250 OK queued"


class _TeeSMTP(SMTP):
    """aiosmtpd's SMTP protocol, teeing every received byte."""

    def __init__(self, server: "TeeSMTPServer", handler, **kwargs):
        self._tee_server = server
        self._tee_index = -1
        # Read by SMTP.__init__ as the StreamReader limit and by DATA as the
        # longest body line; qmail-remote sends lines of any length (sect. 13).
        self.line_length_limit = server.line_limit
        # HELO sessions check commands against command_size_limit.
        self.command_size_limit = server.line_limit
        super().__init__(handler, **kwargs)

    def connection_made(self, transport):
        if self._tee_index < 0:
            self._tee_index = self._tee_server._connection_made(self, transport)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._tee_server._chunks[self._tee_index].append(data)
        super().data_received(data)

    def connection_lost(self, exc):
        try:
            super().connection_lost(exc)
        finally:
            self._tee_server._connection_lost(self)


class TeeSMTPServer:
    """aiosmtpd on 127.0.0.1:0 in a thread, recording messages and raw bytes.

    *final_reply* answers the final dot (a string, or a callable taking the
    ``Message`` and returning one); *rcpt_replies* maps addresses (as
    between the angle brackets) to RCPT replies; *mail_reply* and
    *helo_reply* replace those replies.  A reply starting 1, 2 or 3 still
    records the address in the envelope.  *line_limit* bounds command and
    body lines (default 1 GiB, i.e. no limit that matters).
    *data_size_limit* (default None: no limit, no ``SIZE`` keyword) is
    aiosmtpd's: advertised as ``SIZE n`` in the EHLO reply and enforced.
    *tls_context* offers STARTTLS with that server context; *ssl_context*
    makes every connection TLS from its first byte (SMTPS).  Either way
    ``raw`` holds the bytes as the server read them after decryption, and
    each ``Message.tls`` is the TLS version the message came under (None in
    plaintext).

    Caveats, from aiosmtpd: ``Message.mail_from`` / ``rcpt_tos`` are parsed
    addresses, not wire bytes (``<>`` stays ``"<>"``, ``a b@c`` becomes
    ``'"a b"@c'``, source routes are dropped, 8-bit bytes are surrogate
    escapes; ``a@b>junk`` or ``<<a@b>>`` are refused with 501/553), so
    compare exact addresses against ``raw``.  ``HELO`` with an empty
    argument gets 501.  EHLO works too, but qmail-remote never sends it.
    """

    def __init__(
        self,
        *,
        hostname: str = "tee.test",
        final_reply: "str | Callable[[Message], str] | None" = None,
        rcpt_replies: dict[str, str] | None = None,
        mail_reply: str | None = None,
        helo_reply: str | None = None,
        line_limit: int = 1 << 30,
        enable_SMTPUTF8: bool = True,
        timeout: float = 60.0,
        data_size_limit: int | None = None,
        tls_context=None,
        ssl_context=None,
    ):
        self.host = "127.0.0.1"
        self.port = 0
        self.hostname = hostname
        self.final_reply = final_reply
        self.rcpt_replies = dict(rcpt_replies or {})
        self.mail_reply = mail_reply
        self.helo_reply = helo_reply
        self.line_limit = line_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self.timeout = timeout
        self.data_size_limit = data_size_limit
        # STARTTLS (aiosmtpd's tls_context) and implicit TLS (the whole
        # connection, as on port 465): ssl.SSLContext objects or None.
        self.tls_context = tls_context
        self.ssl_context = ssl_context
        self.messages: list[Message] = []
        self.closed = 0
        self._chunks: list[list[bytes]] = []
        self._protocols: set[_TeeSMTP] = set()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._handler = _Handler(self)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- connection bookkeeping (event loop thread) -------------------------

    def _connection_made(self, proto: _TeeSMTP, transport) -> int:
        with self._cond:
            self._chunks.append([])
            self._protocols.add(proto)
            self._cond.notify_all()
            return len(self._chunks) - 1

    def _connection_lost(self, proto: _TeeSMTP) -> None:
        with self._cond:
            if proto in self._protocols:
                self._protocols.discard(proto)
                self.closed += 1
                self._cond.notify_all()

    def _factory(self) -> _TeeSMTP:
        return _TeeSMTP(
            self, self._handler,
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=self.enable_SMTPUTF8,
            hostname=self.hostname,
            ident="TeeSMTPServer",
            timeout=self.timeout,
            loop=self._loop,
            tls_context=self.tls_context,
            require_starttls=False,
        )

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "TeeSMTPServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready), name=f"TeeSMTPServer:{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join(JOIN_TIMEOUT)
            raise RuntimeError("TeeSMTPServer failed to start") from self._error
        return self

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(loop.create_server(
                self._factory, sock=sock, ssl=self.ssl_context))
        except BaseException as e:
            self._error = e
            sock.close()
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        with self._cond:
            protos = list(self._protocols)
        for proto in protos:
            if proto.transport is not None:
                proto.transport.abort()
        await self._server.wait_closed()
        # Let connection_lost callbacks run, then cancel what is left.
        await asyncio.sleep(0)
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def stop(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(JOIN_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> "TeeSMTPServer":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()

    # -- results -----------------------------------------------------------

    @property
    def connections(self) -> int:
        """How many connections were accepted."""
        return len(self._chunks)

    @property
    def raw(self) -> list[bytes]:
        """Every byte received, one entry per connection, in accept order.

        Complete for a connection once it has closed (``wait_closed``).
        """
        with self._cond:
            chunks = [list(c) for c in self._chunks]
        return [b"".join(c) for c in chunks]

    def wait_messages(self, n: int, timeout: float = 10.0) -> list[Message]:
        """Wait until at least *n* messages were delivered; return them all."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= n, timeout):
                raise AssertionError(
                    f"TeeSMTPServer: {len(self.messages)} messages after {timeout}s, expected {n}")
            return list(self.messages)

    def wait_closed(self, n: int = 1, timeout: float = 10.0) -> None:
        """Wait until at least *n* connections were accepted and have closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.closed >= n, timeout):
                raise AssertionError(
                    f"TeeSMTPServer: {self.closed} of {len(self._chunks)} connections "
                    f"closed after {timeout}s, expected {n}")
