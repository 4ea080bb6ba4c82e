#!/usr/bin/env python3
"""Differential run: C netqmail 1.06 qmail-remote against qmailremote.

Every scenario is run through both programs with the same arguments, the
same stdin and the same control files, each talking to a scripted SMTP
server on 127.0.0.1.  Three things are compared:

  (a) the bytes written to stdout (the ``\\0``-terminated reports),
  (b) the exact bytes each server connection received, up to the moment the
      client closed it (or the server stopped reading),
  (c) the exit status.

Each scenario ends as MATCH, EXPECTED-DEVIATION <n> (a documented deviation
of section 16 of the behaviour spec, checked against the output the spec
predicts for qmailremote), or MISMATCH, for which both outputs and both wire
captures are printed.

Usage::

    QMAILREMOTE_DIFF_C=/path/to/qmail-remote \\
    QMAILREMOTE_DIFF_C_HOME=/its/compiled/in/home \\
    python scripts/differential.py [-k SUBSTRING] [-v] [--list]

The C program reads its control files from its compiled-in home, so that
home is used for both programs (qmailremote gets it as ``QMAILHOME``).  A
home containing ``queue/`` is refused: this tool is for a scratch build,
never a live qmail.  The control files it touches (me, helohost,
timeoutremote, timeoutconnect, smtproutes) are backed up first and restored
at the end, also on Ctrl-C or SIGTERM.

Every route is ``control/smtproutes`` pointing at the server's port on
127.0.0.1, so no DNS is used.  Servers listen on 127.0.0.1 with a port the
OS picks; both programs of a scenario talk to the same listening socket
(the port is part of the control files, which must be identical).

Deviation 3 (a failed QUIT write) is made deterministic by stopping the
client with SIGSTOP while the last byte of a reply and an RST arrive, and
continuing it afterwards; one plain-race variant is kept as well, and may be
MATCH or EXPECTED-DEVIATION 3 from run to run.

The exit status is 0 if there was no MISMATCH, 1 otherwise, 2 for a setup
error.
"""

from __future__ import annotations

import dataclasses
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from diffkit import (ControlBackup, choose_scenarios, scratch_home, short,
                     sigterm_interrupts, summarise)

REPO = Path(__file__).resolve().parent.parent
IP = b"127.0.0.1"
# noesmtp: both programs speak netqmail 1.06's dialogue (qmailremote's
# default is ESMTP; the C binary ignores the file).
CONTROL_FILES = ("me", "helohost", "timeoutremote", "timeoutconnect", "smtproutes",
                 "noesmtp")

#: How long a client may run before it is killed (seconds).
CLIENT_TIMEOUT = 40.0
#: Socket timeout inside the server threads (a safety net, never hit normally).
SERVER_SOCK_TIMEOUT = 45.0

DEV4_OUT = b"DSorry, I won't send an address with a CR or LF in it. (#5.1.3)\n\0"
DIED = b"ZConnected to 127.0.0.1 but connection died. (#4.4.2)\n\0"
DIED_DUP = b"ZConnected to 127.0.0.1 but connection died. Possible duplicate! (#4.4.2)\n\0"


# ---------------------------------------------------------------------------
# The scripted server
#
# The server is reactive: it answers each command line by its verb (HELO,
# MAIL, RCPT, DATA, QUIT), so it follows whatever path the client takes
# (including a client that quits early, and an out-of-step parser).  A reply
# is either bytes to send or a list of actions:
#
#   ("send", bytes)           write bytes
#   ("sleep", seconds)
#   ("trickle", bytes, secs)  write one byte at a time, secs apart
#   ("readn", n)              read exactly n more bytes from the client
#   ("close",)                FIN; the connection ends
#   ("reset",)                RST (SO_LINGER 0); the connection ends
#   ("silent",)               never answer: keep reading (and recording)
#                             until the client closes
#   ("stopread",)             never read again until the client has exited
#
# After DATA's reply the server reads the body through its terminator (or
# EOF), then sends the final reply; ``body=`` replaces that body reading with
# actions.  QUIT gets no reply: the server reads on until EOF.  Every byte the
# server reads is recorded.

Reply = Union[bytes, Sequence[tuple]]


@dataclasses.dataclass
class Dialogue:
    greeting: Reply = b"220 ok\r\n"
    helo: Reply = b"250 ok\r\n"
    mail: Reply = b"250 ok\r\n"
    rcpts: Sequence[Reply] = (b"250 ok\r\n",)
    data: Reply = b"354 go\r\n"
    body: Optional[Sequence[tuple]] = None
    final: Reply = b"250 ok 1234 queued\r\n"
    other: Reply = b"502 unknown command\r\n"


class _Ended(Exception):
    """The connection is over (closed by either side)."""


class _Peer:
    def __init__(self, sock: socket.socket, rec: bytearray, client_done: threading.Event,
                 client_pid=lambda: 0):
        self.client_pid = client_pid
        self.sock = sock
        self.rec = rec
        self.client_done = client_done
        self.buf = bytearray()
        self.eof = False
        self.closed = False
        self.notes: list[str] = []

    def fill(self, n: int = 256 * 1024) -> bool:
        if self.eof or self.closed:
            return False
        try:
            chunk = self.sock.recv(n)
        except socket.timeout:
            self.notes.append("server recv timed out")
            self.eof = True
            return False
        except OSError as e:
            self.notes.append(f"server recv: {e!r}")
            self.eof = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.rec += chunk
        self.buf += chunk
        return True

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def line(self) -> Optional[bytes]:
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                return self.take(i + 1)
            start = len(self.buf)
            if not self.fill():
                return None

    def body(self) -> Optional[bytes]:
        scanned = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                return self.take(3)
            i = self.buf.find(b"\r\n.\r\n", max(0, scanned - 4))
            if i >= 0:
                return self.take(i + 5)
            scanned = len(self.buf)
            if not self.fill():
                return None

    def readn(self, n: int) -> None:
        while len(self.buf) < n:
            if not self.fill(n - len(self.buf)):
                raise _Ended
        self.take(n)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.notes.append(f"server send: {e!r}")
            raise _Ended

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def drain(self) -> None:
        while self.fill():
            pass

    def act(self, reply: Reply) -> None:
        if isinstance(reply, (bytes, bytearray)):
            reply = [("send", bytes(reply))]
        for a in reply:
            kind = a[0]
            if kind == "send":
                self.send(a[1])
            elif kind == "sleep":
                time.sleep(a[1])
            elif kind == "trickle":
                for i in range(len(a[1])):
                    if i:
                        time.sleep(a[2])
                    self.send(a[1][i:i + 1])
            elif kind == "readn":
                self.readn(a[1])
            elif kind == "close":
                self.close()
                raise _Ended
            elif kind == "reset":
                self.reset()
                raise _Ended
            elif kind == "silent":
                self.drain()
                raise _Ended
            elif kind == "frozen_reset":
                # Stop the client, send the last bytes of the reply and reset,
                # then let the client go on: it reads a complete reply that
                # is already followed by an RST, so its QUIT write fails.
                pid = self.client_pid()
                os.kill(pid, signal.SIGSTOP)
                try:
                    self.send(a[1])
                    time.sleep(0.05)
                    self.reset()
                    time.sleep(0.2)
                finally:
                    os.kill(pid, signal.SIGCONT)
                raise _Ended
            elif kind == "stopread":
                self.client_done.wait(CLIENT_TIMEOUT + 5)
                self.reset()
                raise _Ended
            else:  # pragma: no cover - a bug in a scenario
                raise ValueError(f"unknown action {a!r}")

    def converse(self, dlg: Dialogue) -> None:
        self.act(dlg.greeting)
        nrcpt = 0
        while True:
            line = self.line()
            if line is None:
                return
            verb = line[:4].upper()
            if verb == b"HELO":
                reply = dlg.helo
            elif verb == b"MAIL":
                reply = dlg.mail
            elif verb == b"RCPT":
                reply = dlg.rcpts[min(nrcpt, len(dlg.rcpts) - 1)]
                nrcpt += 1
            elif verb == b"DATA":
                self.act(dlg.data)
                if dlg.body is not None:
                    self.act(dlg.body)
                elif self.body() is None:
                    return
                reply = dlg.final
            elif verb == b"QUIT":
                return
            else:
                reply = dlg.other
            self.act(reply)


class Server:
    """One listening socket on 127.0.0.1; one *run* per client program."""

    def __init__(self, dialogue: Dialogue, port: int = 0):
        self.dialogue = dialogue
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]

    def _wait_pid(self) -> int:
        if not self.pid_known.wait(10):
            raise RuntimeError("client pid not known")
        return self.pid

    def begin(self) -> None:
        self.pid = 0
        self.pid_known = threading.Event()
        self.records: list[bytearray] = []
        self.notes: list[str] = []
        self.threads: list[threading.Thread] = []
        self.client_done = threading.Event()
        self.stop = threading.Event()
        self.acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self.acceptor.start()

    def _accept_loop(self) -> None:
        while True:
            stopping = self.stop.is_set()
            r, _, _ = select.select([self.listener], [], [], 0 if stopping else 0.02)
            if r:
                sock, _ = self.listener.accept()
                self._spawn(sock)
            elif stopping:
                return

    def _spawn(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        sock.settimeout(SERVER_SOCK_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rec = bytearray()
        self.records.append(rec)
        peer = _Peer(sock, rec, self.client_done, self._wait_pid)

        def run():
            try:
                peer.converse(self.dialogue)
                peer.drain()
            except _Ended:
                pass
            except Exception as e:  # never let a thread die noisily
                peer.notes.append(f"server error: {type(e).__name__}: {e}")
            finally:
                if not peer.closed:
                    peer.close()
                self.notes.extend(peer.notes)

        t = threading.Thread(target=run, daemon=True)
        self.threads.append(t)
        t.start()

    def end(self) -> list[bytes]:
        """Call after the client exited: collect what every connection received."""
        self.client_done.set()
        self.stop.set()
        self.acceptor.join(10)
        for t in self.threads:
            t.join(SERVER_SOCK_TIMEOUT + 5)
            if t.is_alive():
                self.notes.append("server thread still running")
        return [bytes(r) for r in self.records]

    def close(self) -> None:
        self.listener.close()


# ---------------------------------------------------------------------------
# Scenarios

STD_ARGS = (b"dest.example", b"a@b.example", b"c@d.example")
TWO_ARGS = (b"dest.example", b"a@b.example", b"c@d.example", b"e@f.example")
STD_BODY = b"Subject: t\n\nhi\n"
STD_BODY_WIRE = b"Subject: t\r\n\r\nhi\r\n.\r\n"
OK = b"250 ok\r\n"
DIR = object()  # control "file" that is a directory

DEFAULT_CONTROL = {
    "noesmtp": b"",
    "me": b"me.example\n",
    "helohost": b"hh.example\n",
    "timeoutremote": b"10\n",
    "timeoutconnect": None,
    "smtproutes": b":127.0.0.1:{P}\n",
}


@dataclasses.dataclass
class Scenario:
    name: str
    group: str
    args: Sequence[bytes] = STD_ARGS
    stdin: tuple = ("file", STD_BODY)
    server: Optional[Dialogue] = dataclasses.field(default_factory=Dialogue)
    control: dict = dataclasses.field(default_factory=dict)
    #: Section 16 deviation this scenario may show (2, 3 or 4).
    dev: Optional[int] = None
    #: What the spec says qmailremote prints / sends under that deviation.
    py_out: Optional[bytes] = None
    py_wire: Optional[list] = None
    #: What C prints when deviation 3 bites (the QUIT write failed).
    c_alt: Optional[bytes] = None
    note: str = ""


@dataclasses.dataclass
class RunResult:
    out: bytes
    rc: int
    err: bytes
    wire: list
    elapsed: float
    notes: list


def reply_text(reply: bytes) -> bytes:
    """The 'Remote host said' text for a single reply (spec 12.5-12.6)."""
    t = reply.replace(b"\r", b"")[:5000]
    return t.replace(b"\0", b"?")


def std_wire(stage: str) -> list:
    """Wire bytes of the standard one-recipient dialogue when the client
    quits right after *stage*'s reply."""
    parts = [b"HELO hh.example\r\n", b"MAIL FROM:<a@b.example>\r\n",
             b"RCPT TO:<c@d.example>\r\n", b"DATA\r\n", STD_BODY_WIRE]
    n = {"mail": 2, "rcpt": 3, "data": 4, "final": 5}[stage]
    return [b"".join(parts[:n]) + b"QUIT\r\n"]


def dev2_out(stage: str, reply: bytes) -> bytes:
    said = b"Remote host said: " + reply_text(reply) + b"\0"
    return {
        "mail": b"ZConnected to 127.0.0.1 but sender was rejected.\n" + said,
        "rcpt": b"s127.0.0.1 does not like recipient.\n" + said + b"DGiving up on 127.0.0.1.\n\0",
        "data": b"r\0Z127.0.0.1 failed on DATA command.\n" + said,
        "final": b"r\0Z127.0.0.1 failed after I sent the message.\n" + said,
    }[stage]


def dlg_for(stage: str, reply: Reply, **kw) -> Dialogue:
    if stage == "rcpt":
        return Dialogue(rcpts=(reply,), **kw)
    return Dialogue(**{stage: reply}, **kw)


def build_scenarios() -> list[Scenario]:
    S: list[Scenario] = []
    add = S.append

    # -- section 1: usage ---------------------------------------------------
    for n in range(3):
        add(Scenario(f"usage/{n}-args", "usage", args=STD_ARGS[:n], server=None))

    # -- section 13: blast table --------------------------------------------
    blast_rows = [
        b"", b"\n", b"x\n\n\n", b".\n..x\n.\n", b"..\n", b" .\n", b".\r\n",
        b"\r\n.\r\n", b"a\r\n.\r\nb\r\n", b"a\r\n.\nb\n", b"a\rb\rc\n",
        b"a\r\r\nb\n", b"a\r.\r\nRCPT TO:<evil@x>\r\n", b"a\n.\r\nRCPT TO:<evil@x>\n",
        b"\xe9\xff\x80\n", b"a\0b\n", b"x" * 5000 + b"\n",
        b"abc", b"abc\r", b"\r", b".", b"a\n.", b"y" * 3000,
    ]
    for body in blast_rows:
        label = repr(body) if len(body) < 40 else f"{body[:1]!r}*{len(body)}"
        add(Scenario(f"blast/{label}", "blast", stdin=("file", body)))
    # Buffer edges and bigger bodies (not in the table, same rules).
    rnd = random.Random(1206)
    alphabet = b"ab.\n\r\0\xe9 ." + b"\n" * 4
    big = bytes(rnd.choice(alphabet) for _ in range(300_000)) + b"\n"
    extras = {
        "y*1023 no LF": b"y" * 1023, "y*1024 no LF": b"y" * 1024,
        "y*1025 no LF": b"y" * 1025, "y*2048 no LF": b"y" * 2048,
        "y*2049 no LF": b"y" * 2049, "x*1022+LF": b"x" * 1022 + b"\n",
        "x*1023+LF": b"x" * 1023 + b"\n", "x*1024+LF": b"x" * 1024 + b"\n",
        "'.\\n'*3000": b".\n" * 3000, "random 300k": big,
        "random 300k partial": big[:-1],
    }
    for label, body in extras.items():
        add(Scenario(f"blast/{label}", "blast", stdin=("file", body)))
    for label, body in {"std": STD_BODY, "abc": b"abc", "y*3000": b"y" * 3000,
                        "random 300k": big, "empty": b""}.items():
        add(Scenario(f"blast/pipe {label}", "blast", stdin=("pipe", body)))

    # -- section 12 / 11: reply codes at every stage ------------------------
    nondigit = [b"abc x\r\n", b"4x9 x\r\n", b" 25 x\r\n", b"0a0 x\r\n", b"2:0 x\r\n",
                b"25\r\n", b"22\r\n"]
    digit_by_stage = {
        "greeting": [b"000 x\r\n", b"999 x\r\n", b"221 bye\r\n", b"421 busy\r\n",
                     b"554 no\r\n", b"2200 hi\r\n", b"220\r\n"],
        "helo": [b"000 x\r\n", b"999 x\r\n", b"251 x\r\n", b"550 no\r\n", b"220 x\r\n"],
        "mail": [b"000 x\r\n", b"999 x\r\n", b"199 x\r\n", b"354 x\r\n", b"450 later\r\n",
                 b"550 no\r\n"],
        "rcpt": [b"000 x\r\n", b"999 x\r\n", b"199 x\r\n", b"354 x\r\n", b"251 fwd\r\n",
                 b"450 later\r\n", b"550 no\r\n"],
        "data": [b"000 x\r\n", b"999 x\r\n", b"250 x\r\n", b"199 x\r\n", b"450 later\r\n",
                 b"554 no\r\n"],
        "final": [b"000 x\r\n", b"999 x\r\n", b"199 x\r\n", b"354 x\r\n", b"450 later\r\n",
                  b"554 no\r\n", b"250\r\n"],
    }
    for stage, digits in digit_by_stage.items():
        for reply in nondigit + digits:
            sc = Scenario(f"code/{stage}/{reply!r}", "codes", server=dlg_for(stage, reply))
            if stage not in ("greeting", "helo") and not reply[:3].isdigit():
                sc.dev = 2
                sc.py_out = dev2_out(stage, reply)
                sc.py_wire = std_wire(stage)
            add(sc)

    # Multi-line, out of step, odd bytes, long replies.
    multi = [
        ("greeting", b"220-a\r\n220-b\r\n220 c\r\n"),
        ("greeting", b"554-a\r\n220 c\r\n"),
        ("greeting", b"220-a\r\nxy\r\n220 ok\r\n"),          # out of step
        ("greeting", b"220 ok\n"),                            # bare LF
        ("greeting", b"220-a\n\n\n-b\n220 ok\r\n"),           # LF among the 3 skipped bytes
        ("greeting", b"220-a\r\n-\r\n220 ok\r\n"),
        ("greeting", b"554 " + b"g" * 6000 + b"\r\n"),
        ("helo", b"250-x\r\n550 y\r\n"),
        ("helo", b"250 ok\n"),
        ("mail", b"550-no\r\n250 yes\r\n"),
        ("mail", b"250-a\r\nb\r\n250 c\r\n"),                 # short continuation
        ("rcpt", b"550-no\r\n550 really\r\n"),
        ("rcpt", b"".join(b"550-" + b"r" * 95 + b"\r\n" for _ in range(60)) + b"550 end\r\n"),
        ("data", b"354-a\r\n354 b\r\n"),
        ("final", b"250-first\r\n550 second\r\n"),
        ("final", b"250 a\rb\0c\xe9\x01d\r\r\n"),
        ("final", b"250 " + b"x" * 6000 + b"\r\n"),
        ("final", b"250 " + b"\r" * 3000 + b"x" * 6000 + b"\r\n"),
        ("final", b"250 " + b"x" * 4995 + b"\r\n"),
        ("final", b"250 " + b"x" * 4996 + b"\r\n"),
        ("final", b"451 " + b"\0" * 10 + b"\xff\r\n"),
    ]
    for stage, reply in multi:
        label = repr(reply) if len(reply) < 50 else f"{reply[:12]!r}...({len(reply)} bytes)"
        add(Scenario(f"reply/{stage}/{label}", "replies", server=dlg_for(stage, reply)))

    # -- section 6: address quoting -----------------------------------------
    quoting = [b"a b@x", b"@x", b"@", b"a@", b"a@b@x", b".a@x", b"a.@x", b"a..b@x",
               b'a"b@x', b"a\\b@x", "é@x".encode(), b"\xff\xfe@x", b"a\tb@x", b"a\x7fb@x",
               b"a,b@x", b"a:b@x", b"a;b@x", b"a<b@x", b"a>b@x", b"a[b@x", b"a]b@x",
               b"a(b)@X.Example.", b"!#$%&'*+-/=?^_`{|}~.x@y", b"a.b+c=d/e@[1.2.3.4]",
               b"", b"bare word with space", b"a@b c", b"a\\@x", b'"a"@x', b"a.b.c@x"]
    for arg in quoting:
        add(Scenario(f"quote/{arg!r}", "quoting", args=(b"dest.example", arg, arg)))
    add(Scenario("quote/all rows as recipients", "quoting",
                 args=(b"dest.example", b"a@b.example", *quoting)))
    dev4 = [
        ("sender local CRLF", (b"dest.example", b"a\r\nRSET@x", b"c@d.example")),
        ("recip local CRLF", (b"dest.example", b"a@b.example", b"a\r\nRSET@x")),
        ("recip domain CRLF", (b"dest.example", b"a@b.example", b"c@x\r\nRSET")),
        ("sender no-@ LF", (b"dest.example", b"a\nb", b"c@d.example")),
        ("recip bare CR", (b"dest.example", b"a@b.example", b"a\rb@x")),
        ("2nd of 3 recips LF", (b"dest.example", b"a@b.example", b"c@d", b"e\n@f", b"g@h")),
    ]
    for label, args in dev4:
        add(Scenario(f"quote/dev4 {label}", "quoting", args=args, dev=4, py_out=DEV4_OUT,
                     py_wire=[], server=Dialogue(rcpts=(OK, OK, OK))))
    add(Scenario("quote/host with CR (not checked)", "quoting",
                 args=(b"dest.example\r", b"a@b.example", b"c@d.example")))

    # -- section 4: control files -------------------------------------------
    def ctl(name, control, **kw):
        add(Scenario(f"control/{name}", "control", control=control, **kw))

    ctl("helohost CRLF", {"helohost": b"hh.example\r\n"})
    ctl("helohost leading blanks", {"helohost": b"  h h \t \n"})
    ctl("helohost empty", {"helohost": b""})
    ctl("helohost two lines, no final LF", {"helohost": b"h1 \t\nh2"})
    ctl("helohost missing, me used", {"helohost": None, "me": b"me.example \t\nsecond\n"})
    ctl("helohost missing, me CR", {"helohost": None, "me": b"me.example\r\n"})
    ctl("helohost 8-bit and NUL", {"helohost": b"h\xe9\0h\n"})
    ctl("me missing, helohost present", {"me": None})
    ctl("me and helohost missing", {"me": None, "helohost": None})
    for f in CONTROL_FILES:
        ctl(f"{f} is a directory", {f: DIR})
    ctl("timeoutremote abc", {"timeoutremote": b"abc\n"})
    ctl("timeoutremote '  2'", {"timeoutremote": b"  2\n"})
    ctl("timeoutremote -5", {"timeoutremote": b"-5\n"})
    ctl("timeoutremote empty", {"timeoutremote": b""})
    slow = Dialogue(greeting=[("sleep", 0.5), ("send", b"220 ok\r\n")])
    silent_greeting = Dialogue(greeting=[("silent",)])
    ctl("timeoutremote 2junk, silent", {"timeoutremote": b"2junk\n"}, server=silent_greeting)
    ctl("timeoutremote 2CR, silent", {"timeoutremote": b"2\r\n"}, server=silent_greeting)
    ctl("timeoutremote 4294967298, silent", {"timeoutremote": b"4294967298\n"},
        server=silent_greeting)
    ctl("timeoutremote 0, slow greeting", {"timeoutremote": b"0\n"}, server=slow)
    ctl("timeoutremote 4294967295, slow greeting", {"timeoutremote": b"4294967295\n"},
        server=slow)
    ctl("timeoutremote 2147483648, slow greeting", {"timeoutremote": b"2147483648\n"},
        server=slow)
    ctl("timeoutconnect 0", {"timeoutconnect": b"0\n"})
    ctl("timeoutconnect junk", {"timeoutconnect": b"junk\n"})
    ctl("timeoutconnect 4294967296", {"timeoutconnect": b"4294967296\n"})

    routes = {
        "comments and blank lines": b"# comment\n\n#:127.0.0.1:1\n\n:127.0.0.1:{P}\n\n",
        "CRLF line ends": b"# c\r\n:127.0.0.1:{P}\r\n",
        "duplicate keys, last wins": b":127.0.0.1:1\n:127.0.0.1:{P}\n",
        "duplicate keys differing in case": b"DEST.example:127.0.0.1:1\ndest.EXAMPLE:127.0.0.1:{P}\n",
        "port 2501x form": b":127.0.0.1:{P}x\n",
        "port modulo 65536": b":127.0.0.1:{P65536}\n",
        "port modulo 65536, junk": b":127.0.0.1:{P131072}junk\n",
        "empty port -> 0": b":127.0.0.1:\n",
        "+port -> 0": b":127.0.0.1:+{P}\n",
        "space port -> 0": b":127.0.0.1: {P}\n",
        "no port -> 25": b":127.0.0.1\n",
        "final line without LF": b"#x\n:127.0.0.1:{P}",
        "line without colon ignored": b"garbage\n:127.0.0.1:{P}\n",
        "trailing blanks stripped": b":127.0.0.1:{P} \t \n",
        "bracket literal relay": b":[127.0.0.1]:{P}\n",
        "relay 127.0.0.257": b":127.0.0.257:{P}\n",
        "relay 127.000.000.001": b":127.000.000.001:{P}\n",
        "exact key beats empty": b":127.0.0.1:1\ndest.example:127.0.0.1:{P}\n",
        "leading space key not matched": b" dest.example:127.0.0.1:1\n:127.0.0.1:{P}\n",
        "uppercase key": b"DEST.EXAMPLE:127.0.0.1:{P}\n:127.0.0.1:1\n",
        "suffix key": b".example:127.0.0.1:{P}\n:127.0.0.1:1\n",
        "third colon kept in port": b":127.0.0.1:{P}:9\n",
    }
    for label, text in routes.items():
        ctl(f"smtproutes {label}", {"smtproutes": text})
    ctl("smtproutes suffix longest first", {
        "smtproutes": b".b.example:127.0.0.1:{P}\n.example:127.0.0.1:1\n:127.0.0.1:1\n"},
        args=(b"x.a.b.example", b"a@b.example", b"c@d.example"))
    ctl("smtproutes trailing-dot host, key '.'", {
        "smtproutes": b".:127.0.0.1:{P}\n:127.0.0.1:1\n"},
        args=(b"dest.example.", b"a@b.example", b"c@d.example"))
    ctl("smtproutes host of one space", {"smtproutes": b" :127.0.0.1:{P}\n:127.0.0.1:1\n"},
        args=(b" ", b"a@b.example", b"c@d.example"))
    ctl("smtproutes empty value ends search (literal host is me)", {
        "smtproutes": b"127.0.0.1:\n:127.0.0.1:{P}\n"},
        args=(b"127.0.0.1", b"a@b.example", b"c@[1.2.3.4]"))
    ctl("smtproutes empty value, all aliases -> port 25", {
        "smtproutes": b"127.0.0.1:\n:127.0.0.1:{P}\n"},
        args=(b"127.0.0.1", b"a@b.example", b"cnameexample"))
    ctl("no smtproutes, literal host is me", {"smtproutes": None},
        args=(b"[127.0.0.1]", b"a@b.example", b"c@[1.2.3.4]"))
    ctl("no smtproutes, 0.0.0.0 is me", {"smtproutes": None},
        args=(b"0.0.0.0", b"a@b.example", b"c@[1.2.3.4]"))
    ctl("route to relay 0.0.0.0 is used", {"smtproutes": b":0.0.0.0:{P}\n"})

    # -- multiple recipients -------------------------------------------------
    three = (b"dest.example", b"a@b.example", b"r1@x", b"r2@x", b"r3@x")
    four = three + (b"r4@x",)
    add(Scenario("rcpts/250 450 550", "rcpts", args=three,
                 server=Dialogue(rcpts=(OK, b"450 later\r\n", b"550 no\r\n"))))
    add(Scenario("rcpts/550 450 250", "rcpts", args=three,
                 server=Dialogue(rcpts=(b"550 no\r\n", b"450 later\r\n", OK))))
    add(Scenario("rcpts/450 251 550 199", "rcpts", args=four,
                 server=Dialogue(rcpts=(b"450 a\r\n", b"251 b\r\n", b"550 c\r\n", b"199 d\r\n"))))
    add(Scenario("rcpts/all rejected (Giving up)", "rcpts", args=three,
                 server=Dialogue(rcpts=(b"550 no\r\n", b"450-later\r\n450 really\r\n", b"553 x\r\n"))))
    add(Scenario("rcpts/all rejected then DATA never sent", "rcpts", args=TWO_ARGS,
                 server=Dialogue(rcpts=(b"550 a\r\n", b"551 b\r\n"))))
    add(Scenario("rcpts/mixed then final 451", "rcpts", args=three,
                 server=Dialogue(rcpts=(OK, b"550 no\r\n", OK), final=b"451 later\r\n")))
    add(Scenario("rcpts/mixed then DATA 554", "rcpts", args=three,
                 server=Dialogue(rcpts=(b"550 no\r\n", OK), data=b"554 no data\r\n")))
    add(Scenario("rcpts/same recipient twice", "rcpts",
                 args=(b"dest.example", b"a@b.example", b"c@d", b"c@d")))

    # -- section 14: drops, silence, possible duplicate ---------------------
    t2 = {"timeoutremote": b"2\n"}
    big20 = (b"0123456789" * 7 + b"\n") * (20 * 1024 * 1024 // 71)
    big2 = big20[: 2 * 1024 * 1024 // 71 * 71]
    big300k = big20[: 300 * 1024 // 71 * 71]

    def drop(name, dlg, stdin=("file", STD_BODY), args=TWO_ARGS, **kw):
        add(Scenario(f"drop/{name}", "drops", args=args, server=dlg, control=dict(t2),
                     stdin=stdin, **kw))

    for how in ("close", "silent", "reset"):
        act = [(how,)]
        drop(f"{how} at greeting", Dialogue(greeting=act))
        drop(f"{how} at HELO", Dialogue(helo=act))
        drop(f"{how} at MAIL", Dialogue(mail=act))
        drop(f"{how} at 1st RCPT", Dialogue(rcpts=(act,)))
        drop(f"{how} at 2nd RCPT", Dialogue(rcpts=(OK, act)))
        drop(f"{how} at DATA", Dialogue(rcpts=(OK, OK), data=act))
        drop(f"{how} at final", Dialogue(rcpts=(OK, OK), final=act))
    drop("close mid-greeting", Dialogue(greeting=[("send", b"220 o"), ("close",)]))
    drop("close mid-greeting continuation", Dialogue(greeting=[("send", b"220-a\r\n"), ("close",)]))
    drop("close mid MAIL code", Dialogue(mail=[("send", b"25"), ("close",)]))
    drop("close mid final reply", Dialogue(rcpts=(OK, OK), final=[("send", b"250-part\r\n"), ("close",)]))
    drop("close before final LF", Dialogue(rcpts=(OK, OK), final=[("send", b"250 ok\r"), ("close",)]))
    drop("silent mid final reply", Dialogue(rcpts=(OK, OK), final=[("send", b"250 ok"), ("silent",)]))
    drop("close after final reply (QUIT still written)",
         Dialogue(rcpts=(OK, OK), final=[("send", b"250 ok\r\n"), ("close",)]))
    for label, body in (("20 MB", big20), ("2 MB", big2), ("300 KB", big300k)):
        drop(f"reset 10 bytes into a {label} body",
             Dialogue(rcpts=(OK, OK), body=[("readn", 10), ("reset",)]), stdin=("file", body))
    drop("server stops reading a 20 MB body",
         Dialogue(rcpts=(OK, OK), body=[("stopread",)]), stdin=("file", big20))
    drop("close 10 bytes into a 2 MB body (pipe)",
         Dialogue(rcpts=(OK, OK), body=[("readn", 10), ("close",)]), stdin=("pipe", big2))
    drop("trickled greeting (1 byte / 0.35 s) is not a timeout",
         Dialogue(greeting=[("trickle", b"220 ok\r\n", 0.35)]))

    # Deviation 3: a verdict, then the QUIT write fails.  First a plain race
    # (the server resets right after its reply; 1.06 loses it some of the
    # time), then deterministic versions: the client is stopped (SIGSTOP)
    # while the last byte of the reply and an RST arrive, so it reads a whole
    # reply and then fails to write QUIT.
    drop("dev3 race: final 250 then RST", Dialogue(rcpts=(OK, OK), final=[("send", b"250 ok 1\r\n"), ("reset",)]),
         dev=3, py_out=b"r\0r\0K127.0.0.1 accepted message.\nRemote host said: 250 ok 1\n\0",
         c_alt=b"r\0r\0" + DIED)
    for stage, reply, verdict_head in (
        ("final", b"250 ok 1\r\n", b"r\0r\0K127.0.0.1 accepted message.\n"),
        ("final", b"250-a\r\n250 ok 2\r\n", b"r\0r\0K127.0.0.1 accepted message.\n"),
        ("final", b"554 no\r\n", b"r\0r\0D127.0.0.1 failed after I sent the message.\n"),
        ("final", b"451 later\r\n", b"r\0r\0Z127.0.0.1 failed after I sent the message.\n"),
        ("data", b"554 no\r\n", b"r\0r\0D127.0.0.1 failed on DATA command.\n"),
        ("data", b"451 later\r\n", b"r\0r\0Z127.0.0.1 failed on DATA command.\n"),
        ("mail", b"550 no\r\n", b"DConnected to 127.0.0.1 but sender was rejected.\n"),
        ("mail", b"450 later\r\n", b"ZConnected to 127.0.0.1 but sender was rejected.\n"),
        ("helo", b"550 no\r\n", b"ZConnected to 127.0.0.1 but my name was rejected.\n"),
        ("greeting", b"421 busy\r\n", b"ZConnected to 127.0.0.1 but greeting failed.\n"),
    ):
        verdict = verdict_head + b"Remote host said: " + reply_text(reply) + b"\0"
        dlg = Dialogue(rcpts=(OK, OK), **{stage: [("send", reply[:-1]), ("frozen_reset", reply[-1:])]})
        prefix = b"r\0r\0" if stage in ("final", "data") else b""
        drop(f"dev3 {stage} {reply!r}, QUIT write fails", dlg, dev=3, py_out=verdict,
             c_alt=prefix + DIED)
    giving = b"h127.0.0.1 does not like recipient.\nRemote host said: 550 no\n\0"
    drop("dev3 Giving up, QUIT write fails",
         Dialogue(rcpts=([("send", b"550 no\r"), ("frozen_reset", b"\n")],)), args=STD_ARGS,
         dev=3, py_out=giving + b"DGiving up on 127.0.0.1.\n\0", c_alt=giving + DIED)

    # -- stdin -----------------------------------------------------------------
    add(Scenario("stdin/unreadable (write-only fd)", "stdin", stdin=("wronly",)))
    add(Scenario("stdin/write-only fd, DATA rejected", "stdin", stdin=("wronly",),
                 server=Dialogue(data=b"554 no\r\n")))
    add(Scenario("stdin/unreadable (a directory)", "stdin", stdin=("dir",)))
    add(Scenario("stdin/unreadable, DATA rejected", "stdin", stdin=("dir",),
                 server=Dialogue(data=b"554 no\r\n")))
    add(Scenario("stdin/unreadable, two recipients one rejected", "stdin", stdin=("dir",),
                 args=TWO_ARGS, server=Dialogue(rcpts=(b"550 no\r\n", OK))))
    return S


# ---------------------------------------------------------------------------
# Control files


class ControlFiles(ControlBackup):
    """The scratch home's control files, written per scenario."""

    def __init__(self, home: Path):
        super().__init__(home, CONTROL_FILES, "differential")

    def write(self, control: dict, port: int) -> None:
        for name in CONTROL_FILES:
            value = control.get(name, DEFAULT_CONTROL[name])
            p = self.dir / name
            self.remove(p)
            if value is None:
                continue
            if value is DIR:
                p.mkdir()
                continue
            value = (value.replace(b"{P}", b"%d" % port)
                     .replace(b"{P65536}", b"%d" % (port + 65536))
                     .replace(b"{P131072}", b"%d" % (port + 131072)))
            p.write_bytes(value)


# ---------------------------------------------------------------------------
# Running one client


def run_client(cmd: list, env: dict, stdin: tuple, tmp: Path, on_start=None) -> tuple:
    kind = stdin[0]
    data = None
    fd = None
    if kind == "file":
        path = tmp / "message"
        path.write_bytes(stdin[1])
        fd = os.open(path, os.O_RDONLY)
    elif kind == "dir":
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    elif kind == "wronly":
        path = tmp / "message"
        path.write_bytes(STD_BODY)
        fd = os.open(path, os.O_WRONLY)
    elif kind == "closed":
        fd = subprocess.DEVNULL
    elif kind == "pipe":
        data = stdin[1]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=fd if fd is not None else subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp,
                         preexec_fn=(lambda: os.close(0)) if kind == "closed" else None)
    if on_start is not None:
        on_start(p.pid)
    if fd is not None and fd >= 0:
        os.close(fd)
    notes = []
    try:
        out, err = p.communicate(data, timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        notes.append(f"client killed after {CLIENT_TIMEOUT}s")
    return out, p.returncode, err, time.monotonic() - t0, notes


def run_one(sc: Scenario, which: str, cmd0: list, env: dict, server: Optional[Server],
            controls: ControlFiles, tmp: Path) -> RunResult:
    controls.write(sc.control, server.port if server else 1)
    if server:
        server.begin()
    def on_start(pid):
        if server:
            server.pid = pid
            server.pid_known.set()
    out, rc, err, elapsed, notes = run_client(cmd0 + list(sc.args), env, sc.stdin, tmp, on_start)
    wire: list = []
    if server:
        wire = server.end()
        notes += server.notes
    return RunResult(out, rc, err, wire, elapsed, notes)


# ---------------------------------------------------------------------------
# Comparison and reporting


def classify(sc: Scenario, c: RunResult, p: RunResult) -> str:
    same_out, same_wire, same_rc = c.out == p.out, c.wire == p.wire, c.rc == p.rc
    if same_out and same_wire and same_rc:
        return "MATCH"
    if not same_rc:
        return "MISMATCH"
    if sc.dev == 2 and p.out == sc.py_out and p.wire == sc.py_wire:
        return "EXPECTED-DEVIATION 2"
    if sc.dev == 3 and same_wire and p.out == sc.py_out and c.out == sc.c_alt:
        return "EXPECTED-DEVIATION 3"
    if sc.dev == 4 and p.out == DEV4_OUT and p.wire == []:
        return "EXPECTED-DEVIATION 4"
    return "MISMATCH"


def first_diff(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def describe(sc: Scenario, c: RunResult, p: RunResult) -> str:
    lines = [f"--- {sc.name}", f"    args: {[bytes(a) for a in sc.args]!r}"]
    if sc.stdin[0] in ("file", "pipe"):
        lines.append(f"    stdin ({sc.stdin[0]}): {short(sc.stdin[1], 200)}")
    else:
        lines.append(f"    stdin: {sc.stdin[0]}")
    if sc.control:
        shown = {k: ("<dir>" if v is DIR else v) for k, v in sc.control.items()}
        lines.append(f"    control: {shown!r}")
    for label, r in (("C ", c), ("Py", p)):
        lines.append(f"    {label} exit={r.rc} time={r.elapsed:.2f}s out={r.out!r}")
        for i, w in enumerate(r.wire):
            lines.append(f"    {label} wire[{i}] = {short(w)}")
        if not r.wire:
            lines.append(f"    {label} wire: no connection")
        if r.err:
            lines.append(f"    {label} stderr: {short(r.err, 400)}")
        for n in r.notes:
            lines.append(f"    {label} note: {n}")
    if c.out != p.out:
        lines.append(f"    stdout differs at byte {first_diff(c.out, p.out)}")
    if c.wire != p.wire:
        if len(c.wire) != len(p.wire):
            lines.append(f"    connections: C {len(c.wire)}, Py {len(p.wire)}")
        for i, (a, b) in enumerate(zip(c.wire, p.wire)):
            if a != b:
                k = first_diff(a, b)
                lines.append(f"    wire[{i}] differs at byte {k}: C {a[max(0, k - 40):k + 60]!r}"
                             f" vs Py {b[max(0, k - 40):k + 60]!r} (lengths {len(a)} / {len(b)})")
    if sc.dev and sc.py_out is not None:
        lines.append(f"    spec-predicted Py out under deviation {sc.dev}: {sc.py_out!r}")
    if sc.dev and sc.py_wire is not None:
        lines.append(f"    spec-predicted Py wire under deviation {sc.dev}: {sc.py_wire!r}")
    return "\n".join(lines)


def main(argv=None) -> int:
    chosen = choose_scenarios(__doc__, build_scenarios(), argv)
    if chosen is None:
        return 0
    opts, scenarios = chosen
    c_bin, home = scratch_home("differential")

    base_env = {k: v for k, v in os.environ.items()
                if k not in ("QMAILHOME", "QMAILREMOTE_DIFF_C", "QMAILREMOTE_DIFF_C_HOME")}
    c_env = dict(base_env)
    py_env = dict(base_env)
    pp = os.environ.get("PYTHONPATH")
    py_env["PYTHONPATH"] = str(REPO) + (os.pathsep + pp if pp else "")
    py_env["QMAILHOME"] = str(home)
    c_cmd = [c_bin]
    py_cmd = [sys.executable, "-m", "qmailremote"]

    controls = ControlFiles(home)
    controls.backup()

    results = []
    t_start = time.monotonic()
    try:
        with sigterm_interrupts(), \
                tempfile.TemporaryDirectory(prefix="qmr-diff-") as tmpname:
            tmp = Path(tmpname)
            width = max(len(s.name) for s in scenarios)
            for sc in scenarios:
                server = Server(sc.server) if sc.server is not None else None
                try:
                    c = run_one(sc, "C", c_cmd, c_env, server, controls, tmp)
                    p = run_one(sc, "Py", py_cmd, py_env, server, controls, tmp)
                finally:
                    if server:
                        server.close()
                verdict = classify(sc, c, p)
                results.append((sc, verdict, c, p))
                flag = "" if not (c.err or p.err) else "  [stderr output]"
                print(f"{sc.name:<{width}}  {verdict:<21}  C {c.elapsed:5.2f}s  "
                      f"Py {p.elapsed:5.2f}s{flag}", flush=True)
                if opts.verbose:
                    print(describe(sc, c, p), flush=True)
    except KeyboardInterrupt:
        print("\ndifferential: interrupted", file=sys.stderr)
        return 130
    finally:
        controls.restore()
    return summarise(results, describe, opts.verbose, t_start)


if __name__ == "__main__":
    sys.exit(main())
