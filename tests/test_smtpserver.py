"""Tests of the SMTP test servers in tests/smtpserver.py.

The client side is a plain socket, written here, so these tests do not
depend on qmailremote.
"""

from __future__ import annotations

import errno
import re
import socket
import threading
import time

import pytest

from smtpserver import (
    ScriptedServer,
    TeeSMTPServer,
    call,
    close,
    expect_data,
    expect_line,
    read_bytes,
    read_some,
    read_to_eof,
    reset,
    send,
    send_forever,
    smtp_script,
    stall,
    stop_reading,
    trickle,
    wait_event,
)

BIG = 30 * 1024 * 1024


class Client:
    """A minimal SMTP client speaking qmail-remote's HELO dialogue."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def reply(self) -> bytes:
        """A whole reply, continuation lines included."""
        out = self.line()
        while out.splitlines()[-1][3:4] == b"-":
            out += self.line()
        return out

    def cmd(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def dialogue(port: int, body: bytes, rcpts=(b"c@d.example",), sender=b"a@b.example") -> list[bytes]:
    """Run HELO/MAIL/RCPT*/DATA/body/QUIT; *body* is sent as is (already
    dot-stuffed, terminator included).  Returns the replies read."""
    with Client(port) as c:
        replies = [c.reply(), c.cmd(b"HELO me.example\r\n"), c.cmd(b"MAIL FROM:<" + sender + b">\r\n")]
        for r in rcpts:
            replies.append(c.cmd(b"RCPT TO:<" + r + b">\r\n"))
        replies.append(c.cmd(b"DATA\r\n"))
        replies.append(c.cmd(body))
        c.sock.sendall(b"QUIT\r\n")
    return replies


def big_body(size: int = BIG, line: int = 1000) -> tuple[bytes, bytes]:
    """(content, wire) of about *size* bytes, with leading dots to stuff."""
    unit = b"." + b"x" * (line - 3) + b"\r\n"
    content = unit * (size // len(unit))
    wire = b"." + content.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    return content, wire


# ---------------------------------------------------------------------------
# ScriptedServer


def test_scripted_normal_dialogue_exact_bytes():
    script = smtp_script(greeting=b"220 mx.example ESMTP\r\n", final=b"250 ok 1234 queued\r\n")
    with ScriptedServer(script) as srv:
        replies = dialogue(srv.port, b"Subject: t\r\n\r\nhi\r\n.\r\n")
        srv.wait_done()
        assert replies == [b"220 mx.example ESMTP\r\n", b"250 ok\r\n", b"250 ok\r\n",
                           b"250 ok\r\n", b"354 go\r\n", b"250 ok 1234 queued\r\n"]
        assert srv.connections == 1
        assert srv.received == [
            b"HELO me.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
            b"DATA\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n"]
        rec = srv.records[0]
        assert rec.lines == [b"HELO me.example\r\n", b"MAIL FROM:<a@b.example>\r\n",
                             b"RCPT TO:<c@d.example>\r\n", b"DATA\r\n"]
        assert rec.data == [b"Subject: t\r\n\r\nhi\r\n.\r\n"]
        assert rec.tail == b"QUIT\r\n"


def test_scripted_empty_body_and_several_rcpts():
    script = smtp_script(rcpts=[b"250 a\r\n", b"550 no\r\n", b"451 later\r\n"])
    with ScriptedServer(script) as srv:
        replies = dialogue(srv.port, b".\r\n", rcpts=[b"x@y", b"z@y", b"w@y"])
        srv.wait_done()
        assert replies[3:6] == [b"250 a\r\n", b"550 no\r\n", b"451 later\r\n"]
        assert srv.records[0].data == [b".\r\n"]


def test_scripted_dot_stuffed_body_kept_raw():
    wire = b"..\r\n...x\r\n..\r\n.\r\n"
    with ScriptedServer(smtp_script()) as srv:
        dialogue(srv.port, wire)
        srv.wait_done()
        assert srv.records[0].data == [wire]


def test_scripted_expect_data_expectation():
    body = b"a\r\n..b\r\n.\r\n"
    script = [expect_line(b"DATA\r\n"), expect_data(body), send(b"250 ok\r\n"), expect_data(b"x\r\n.\r\n")]
    with ScriptedServer(script) as srv:
        with Client(srv.port) as c:
            assert c.cmd(b"DATA\r\n" + body) == b"250 ok\r\n"
            c.sock.sendall(b"y\r\n.\r\n")
        with pytest.raises(AssertionError, match=r"step 3 expect_data\(\): expected data b'x.*got b'y"):
            srv.wait_done()
        assert srv.records[0].data == [body, b"y\r\n.\r\n"]


def test_scripted_quit_required_by_default():
    with ScriptedServer(smtp_script()) as srv:
        with Client(srv.port) as c:
            for cmd in (b"HELO h\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<x@y>\r\n", b"DATA\r\n", b"hi\r\n.\r\n"):
                c.reply()
                c.sock.sendall(cmd)
            assert c.reply() == b"250 ok queued\r\n"
            c.sock.sendall(b"RSET\r\n")  # not QUIT
        with pytest.raises(AssertionError, match=r"QUIT.*RSET"):
            srv.wait_done()


def test_scripted_none_stops_script_for_custom_steps():
    script = smtp_script(mail=None) + [send(b"421 bye\r\n"), read_to_eof()]
    with ScriptedServer(script) as srv:
        with Client(srv.port) as c:
            assert c.reply() == b"220 ok\r\n"
            assert c.cmd(b"HELO h\r\n") == b"250 ok\r\n"
            assert c.cmd(b"MAIL FROM:<s@t>\r\n") == b"421 bye\r\n"
            c.sock.sendall(b"QUIT\r\n")
        srv.wait_done()
        assert srv.records[0].lines == [b"HELO h\r\n", b"MAIL FROM:<s@t>\r\n"]
        assert srv.records[0].tail == b"QUIT\r\n"
    assert smtp_script(greeting=None) == []
    assert len(smtp_script(final=None)) == len(smtp_script()) - 2


def test_scripted_5000_byte_line():
    long = b"HELO " + b"h" * 5000 + b"\r\n"
    with ScriptedServer([send(b"220 x\r\n"), expect_line(long), send(b"250 x\r\n")]) as srv:
        with Client(srv.port) as c:
            c.reply()
            assert c.cmd(long) == b"250 x\r\n"
        srv.wait_done()


def test_scripted_big_body():
    _, wire = big_body()
    with ScriptedServer(smtp_script()) as srv:
        replies = dialogue(srv.port, wire)
        srv.wait_done()
        assert replies[-1] == b"250 ok queued\r\n"
        data = srv.records[0].data[0]
        assert len(data) == len(wire) and data == wire


def test_scripted_expect_line_mismatch_surfaces_in_wait_done():
    with ScriptedServer([send(b"220 hi\r\n"), expect_line(b"HELO x\r\n"), send(b"250 ok\r\n")]) as srv:
        with Client(srv.port) as c:
            c.reply()
            c.sock.sendall(b"HELO y\r\n")
            # The script stops at the mismatch and closes: no 250.
            assert c.sock.recv(100) == b""
        with pytest.raises(AssertionError, match=r"step 1 expect_line.*HELO y"):
            srv.wait_done()
        srv.check()  # reported once, not again


def test_scripted_regex_expectation():
    with ScriptedServer([expect_line(re.compile(rb"HELO [a-z.]+\r\n"))] * 2) as srv:
        with Client(srv.port) as c:
            c.sock.sendall(b"HELO me.example\r\nHELO ME\r\n")
        with pytest.raises(AssertionError, match="step 1"):
            srv.wait_done()


def test_scripted_eof_while_expecting_line_is_failure():
    with ScriptedServer([send(b"220 hi\r\n"), expect_line()]) as srv:
        with Client(srv.port) as c:
            c.reply()
            c.sock.sendall(b"HEL")
        with pytest.raises(AssertionError, match=r"EOF while expecting a line.*HEL"):
            srv.wait_done()


def test_scripted_unreported_failure_raised_on_exit():
    with pytest.raises(AssertionError, match="expect_line"):
        with ScriptedServer([expect_line(b"A\r\n")]) as srv:
            with Client(srv.port) as c:
                c.sock.sendall(b"B\r\n")
                assert c.sock.recv(10) == b""


def test_scripted_wait_done_times_out_while_script_runs():
    with ScriptedServer([expect_line()]) as srv:
        c = Client(srv.port)
        with pytest.raises(AssertionError, match=r"not finished.*#0 at step 0"):
            srv.wait_done(timeout=0.2)
    # Interrupted by stop() while the client kept quiet: not a failure.
    assert srv.failures == []
    assert srv.records[0].done.is_set()
    c.close()


def test_scripted_wait_done_waits_for_accept():
    with ScriptedServer([send(b"x")]) as srv:
        with pytest.raises(AssertionError, match="0/1 connections"):
            srv.wait_done(timeout=0.1)


def test_scripted_reset_gives_econnreset():
    with ScriptedServer([send(b"220 hi\r\n"), expect_line(), reset()]) as srv:
        with Client(srv.port) as c:
            assert c.reply() == b"220 hi\r\n"
            c.sock.sendall(b"HELO x\r\n")
            with pytest.raises(ConnectionResetError):
                c.sock.recv(100)
        srv.wait_done()


def test_scripted_reset_after_some_body_bytes():
    script = smtp_script(data=None) + [send(b"354 go\r\n"), read_bytes(10), reset()]
    with ScriptedServer(script) as srv:
        with Client(srv.port) as c:
            c.reply()
            for cmd in (b"HELO h\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<x@y>\r\n"):
                c.cmd(cmd)
            assert c.cmd(b"DATA\r\n") == b"354 go\r\n"
            with pytest.raises(OSError) as info:
                for _ in range(10_000):
                    c.sock.sendall(b"y" * 65536)
            assert info.value.errno in (errno.ECONNRESET, errno.EPIPE)
        srv.wait_done()
        assert srv.records[0].chunks == [b"y" * 10]


def test_scripted_stall_then_close_on_exit():
    with ScriptedServer([send(b"220 hi\r\n"), stall()]) as srv:
        c = Client(srv.port, timeout=0.3)
        assert c.reply() == b"220 hi\r\n"
        with pytest.raises(socket.timeout):
            c.sock.recv(10)
    c.sock.settimeout(5)
    assert c.sock.recv(10) == b""  # FIN once the server stopped
    c.close()


def test_scripted_stop_reading_blocks_sendall():
    with ScriptedServer([send(b"220 hi\r\n"), stop_reading()], rcvbuf=4096) as srv:
        c = Client(srv.port, timeout=0.5)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        c.reply()
        sent = 0
        with pytest.raises(socket.timeout):
            for _ in range(4096):  # 256 MiB: far more than any buffer
                sent += c.sock.send(b"z" * 65536)
        assert sent < 64 * 1024 * 1024
    assert srv.received == [b""]
    c.close()


def test_scripted_trickle():
    greeting = b"220 slow\r\n"
    with ScriptedServer([trickle(greeting, 0.02), read_to_eof()]) as srv:
        with Client(srv.port) as c:
            start = time.monotonic()
            pieces = []
            while sum(map(len, pieces)) < len(greeting):
                pieces.append(c.sock.recv(100))
            elapsed = time.monotonic() - start
        srv.wait_done()
    assert b"".join(pieces) == greeting
    assert len(pieces) > 1
    assert elapsed >= 0.02 * (len(greeting) - 1) * 0.9


def test_scripted_trickle_peer_gone_is_quiet():
    with ScriptedServer([trickle(b"220 " + b"x" * 100 + b"\r\n", 0.01)]) as srv:
        with Client(srv.port) as c:
            assert c.sock.recv(1) == b"2"
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        srv.wait_done()
        assert srv.records[0].peer_gone


def test_scripted_send_forever_until_peer_goes():
    with ScriptedServer([send_forever(b"220-" + b"x" * 1000 + b"\r\n")]) as srv:
        with Client(srv.port) as c:
            got = 0
            while got < 5 * 1024 * 1024:
                got += len(c.sock.recv(1 << 20))
        srv.wait_done()
        assert srv.records[0].peer_gone
        # The last, failed sendall may have delivered part of a chunk.
        assert srv.records[0].sent_forever >= got - 1006


def test_scripted_send_forever_ends_on_stop():
    with ScriptedServer([send_forever(b"x" * 4096)]) as srv:
        c = Client(srv.port)
        c.sock.recv(10)
    assert srv.records[0].done.is_set()
    c.close()


def test_scripted_per_connection_scripts():
    scripts = [
        [send(b"421 busy\r\n"), close()],
        smtp_script(final=b"250 second\r\n"),
    ]
    with ScriptedServer(scripts) as srv:
        with Client(srv.port) as c:
            assert c.reply() == b"421 busy\r\n"
            assert c.sock.recv(10) == b""
        replies = dialogue(srv.port, b"x\r\n.\r\n")
        srv.wait_done()
        assert replies[-1] == b"250 second\r\n"
        assert srv.connections == 2
        assert srv.received[0] == b""
        assert srv.received[1].endswith(b"DATA\r\nx\r\n.\r\nQUIT\r\n")
        # A third connection has no script.
        with Client(srv.port) as c:
            assert c.sock.recv(10) == b""
        with pytest.raises(AssertionError, match="connection #2: unexpected"):
            srv.wait_done(connections=3)


def test_scripted_same_script_for_every_connection():
    with ScriptedServer([send(b"220 same\r\n"), read_to_eof()]) as srv:
        for i in range(3):
            with Client(srv.port) as c:
                assert c.reply() == b"220 same\r\n"
                c.sock.sendall(b"bye %d\r\n" % i)
        srv.wait_done(connections=3)
        assert srv.received == [b"bye 0\r\n", b"bye 1\r\n", b"bye 2\r\n"]


def test_scripted_read_some_wait_event_and_call():
    go = threading.Event()
    seen = []
    script = [read_some(100), wait_event(go), call(lambda conn: seen.append(conn.record.index)),
              send(b"go\r\n")]
    with ScriptedServer(script) as srv:
        with Client(srv.port, timeout=0.2) as c:
            c.sock.sendall(b"abc")
            with pytest.raises(socket.timeout):
                c.sock.recv(10)
            go.set()
            c.sock.settimeout(5)
            assert c.line() == b"go\r\n"
        srv.wait_done()
        assert srv.records[0].chunks == [b"abc"]
        assert seen == [0]


def test_scripted_wait_event_released_by_stop():
    with ScriptedServer([wait_event(threading.Event())]) as srv:
        c = Client(srv.port)
        srv.wait_connections(1)
    assert srv.records[0].done.is_set()
    c.close()


def test_scripted_no_thread_leak():
    before = set(threading.enumerate())
    with ScriptedServer([send(b"220\r\n"), stall()]) as srv:
        clients = [Client(srv.port) for _ in range(3)]
        srv.wait_connections(3)
        assert len(set(threading.enumerate()) - before) == 4  # accept + 3 scripts
    assert set(threading.enumerate()) - before == set()
    for c in clients:
        c.close()


def test_scripted_rejects_non_steps():
    with pytest.raises(TypeError):
        ScriptedServer([send(b"x"), b"not a step"])


# ---------------------------------------------------------------------------
# TeeSMTPServer


def test_tee_normal_dialogue_exact_bytes():
    with TeeSMTPServer(final_reply="250 ok 1234 queued") as srv:
        replies = dialogue(srv.port, b"Subject: t\r\n\r\nhi\r\n.\r\n")
        (msg,) = srv.wait_messages(1)
        srv.wait_closed(1)
        assert replies[0].startswith(b"220 tee.test ")
        assert replies[1:] == [b"250 tee.test\r\n", b"250 OK\r\n", b"250 OK\r\n",
                               b"354 End data with <CR><LF>.<CR><LF>\r\n", b"250 ok 1234 queued\r\n"]
        assert srv.raw == [
            b"HELO me.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
            b"DATA\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n"]
        assert msg.mail_from == "a@b.example"
        assert msg.rcpt_tos == ["c@d.example"]
        assert msg.content == b"Subject: t\r\n\r\nhi\r\n"
        assert msg.helo == "me.example"
        assert msg.connection == 0
        assert msg.peer[0] == "127.0.0.1"


def test_tee_dot_stuffing_undone_in_content_kept_in_raw():
    wire = b"..\r\n...x\r\n..\r\n a\r\n.\r\n"
    with TeeSMTPServer() as srv:
        dialogue(srv.port, wire)
        (msg,) = srv.wait_messages(1)
        srv.wait_closed(1)
        assert msg.content == b".\r\n..x\r\n.\r\n a\r\n"
        assert b"DATA\r\n" + wire + b"QUIT\r\n" in srv.raw[0]


def test_tee_keeps_odd_bytes():
    # Bare CR, CR CR LF, bare LF, NUL and 8-bit bytes pass through untouched.
    wire = b"a\rb\r\r\nc\nd\0\xe9\xff\r\n.\r\n"
    with TeeSMTPServer() as srv:
        dialogue(srv.port, wire)
        (msg,) = srv.wait_messages(1)
        assert msg.content == b"a\rb\r\r\nc\nd\0\xe9\xff\r\n"


def test_tee_empty_body_and_null_sender():
    with TeeSMTPServer() as srv:
        replies = dialogue(srv.port, b".\r\n", sender=b"")
        (msg,) = srv.wait_messages(1)
        assert replies[-1] == b"250 OK queued\r\n"
        assert msg.content == b""
        assert msg.mail_from == "<>"  # aiosmtpd keeps the brackets of the null sender


def test_tee_addresses_normalised_but_raw_exact():
    rcpts = [b"a b@c", b"@x,@y:u@v", b"\xe9@d"]
    with TeeSMTPServer() as srv:
        dialogue(srv.port, b".\r\n", rcpts=rcpts)
        (msg,) = srv.wait_messages(1)
        srv.wait_closed(1)
        # aiosmtpd parses addresses: quoting added, source route dropped,
        # 8-bit bytes as surrogate escapes.  The wire bytes stay exact.
        assert msg.rcpt_tos == ['"a b"@c', "u@v", "\udce9@d"]
        for r in rcpts:
            assert b"RCPT TO:<" + r + b">\r\n" in srv.raw[0]


def test_tee_5000_byte_lines():
    body = b"x" * 5000 + b"\r\n"
    rcpt = b"r" * 4000 + b"@d.example"
    with TeeSMTPServer() as srv:
        replies = dialogue(srv.port, body + b".\r\n", rcpts=[rcpt])
        (msg,) = srv.wait_messages(1)
        assert replies[-1] == b"250 OK queued\r\n"
        assert msg.content == body
        assert msg.rcpt_tos == [rcpt.decode()]


def test_tee_big_body():
    content, wire = big_body()
    with TeeSMTPServer() as srv:
        replies = dialogue(srv.port, wire)
        (msg,) = srv.wait_messages(1)
        srv.wait_closed(1)
        assert replies[-1] == b"250 OK queued\r\n"
        assert len(msg.content) == len(content) and msg.content == content
        raw = srv.raw[0]
        assert raw[raw.index(b"DATA\r\n") + 6:] == wire + b"QUIT\r\n"


def test_tee_configured_replies():
    with TeeSMTPServer(rcpt_replies={"bad@d": "550 no such user", "later@d": "451 later"},
                       final_reply=lambda m: f"250 got {len(m.rcpt_tos)}") as srv:
        replies = dialogue(srv.port, b"hi\r\n.\r\n", rcpts=[b"bad@d", b"ok@d", b"later@d"])
        (msg,) = srv.wait_messages(1)
        assert replies[3:6] == [b"550 no such user\r\n", b"250 OK\r\n", b"451 later\r\n"]
        assert replies[-1] == b"250 got 1\r\n"
        assert msg.rcpt_tos == ["ok@d"]


def test_tee_helo_and_mail_replies():
    with TeeSMTPServer(helo_reply="250 hello there", mail_reply="451 not now") as srv:
        with Client(srv.port) as c:
            c.reply()
            assert c.cmd(b"HELO h\r\n") == b"250 hello there\r\n"
            assert c.cmd(b"MAIL FROM:<a@b>\r\n") == b"451 not now\r\n"
            assert c.cmd(b"QUIT\r\n") == b"221 Bye\r\n"
        srv.wait_closed(1)
        assert srv.messages == []


def test_tee_multiple_connections_and_wait_closed():
    with TeeSMTPServer() as srv:
        dialogue(srv.port, b"one\r\n.\r\n")
        with Client(srv.port) as c:
            c.reply()
            c.cmd(b"HELO second\r\n")
            # Left open: only the first connection has closed.
            srv.wait_closed(1)
            with pytest.raises(AssertionError, match="1 of 2 connections closed"):
                srv.wait_closed(2, timeout=0.1)
        srv.wait_closed(2)
        dialogue(srv.port, b"three\r\n.\r\n")
        msgs = srv.wait_messages(2)
        srv.wait_closed(3)
        assert [m.connection for m in msgs] == [0, 2]
        assert [m.content for m in msgs] == [b"one\r\n", b"three\r\n"]
        assert srv.connections == 3
        assert srv.raw[1] == b"HELO second\r\n"
        assert srv.raw[2].endswith(b"three\r\n.\r\nQUIT\r\n")


def test_tee_wait_messages_timeout():
    with TeeSMTPServer() as srv:
        with pytest.raises(AssertionError, match="0 messages"):
            srv.wait_messages(1, timeout=0.1)


def test_tee_stop_with_open_connection_no_thread_leak():
    before = set(threading.enumerate())
    with TeeSMTPServer() as srv:
        c = Client(srv.port)
        c.reply()
        c.sock.sendall(b"HELO h\r\nDATA")  # mid-command
        c.line()
    assert set(threading.enumerate()) - before == set()
    c.sock.settimeout(5)
    assert c.sock.recv(10) == b""
    c.close()
