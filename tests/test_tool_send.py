"""``qmailremote send`` and the hooks it uses: deliver(progress=,
transcript=) (issue 14).

The tool runs the same deliver() as qmail-remote against a TeeSMTPServer
on loopback (port chosen by the OS) through a route; the hooks are
checked to see what went on the wire, and to change nothing when unused.
"""

import io
import json
import os
import re
import subprocess
import sys

import pytest

from qmailremote import tools
from qmailremote.delivery import deliver
from qmailremote.tools.send import Transcript
from qmailremote.tools.output import Output
from smtpserver import TeeSMTPServer

MESSAGE = b"Subject: hello\n\nline one\n.dot line\nlast\n"


@pytest.fixture
def home(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    (control / "me").write_bytes(b"me.example\n")
    (control / "timeoutconnect").write_bytes(b"5\n")
    (control / "timeoutremote").write_bytes(b"10\n")
    return tmp_path


def route(home, port):
    (home / "control" / "smtproutes").write_bytes(
        b"example.test:127.0.0.1:%d\n" % port)


def send_tool(home, args, message=MESSAGE, capsys=None, tmp_path=None):
    path = home / "message"
    path.write_bytes(message)
    with pytest.raises(SystemExit) as caught:
        tools.main(["--home", str(home), "--color", "never", "send",
                    "--file", str(path), *args])
    return caught.value.code


# ---------------------------------------------------------------------------
# The tool

def test_send_prints_reports_readably(home, capsys):
    with TeeSMTPServer() as srv:
        route(home, srv.port)
        status = send_tool(home, ["example.test", "s@example.org",
                                  "a@example.test", "b@example.test"])
        srv.wait_closed(1)
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("Recipients\n"
                          "  ok      a@example.test: accepted\n"
                          "  ok      b@example.test: accepted\n"
                          "Message\n"
                          "  ok      delivered: 127.0.0.1 accepted "
                          "message. / Remote host said: 250 ")
    assert "\0" not in out
    msg, = srv.messages
    assert msg.rcpt_tos == ["a@example.test", "b@example.test"]


def test_send_transcript_shows_the_dialogue_and_sizes_the_body(home,
                                                                 capsys):
    (home / "control" / "nochunking").write_bytes(b"")
    with TeeSMTPServer() as srv:
        route(home, srv.port)
        status = send_tool(home, ["--transcript", "example.test",
                                  "s@example.org", "a@example.test"])
        srv.wait_closed(1)
    out = capsys.readouterr().out.split("\n")
    assert status == 0
    assert out[0] == "-- connecting to 127.0.0.1 port %d" % srv.port
    assert out[1].startswith("S: 220 ")
    assert "C: EHLO me.example" in out
    assert "C: MAIL FROM:<s@example.org>" in out or any(
        line.startswith("C: MAIL FROM:<s@example.org> ") for line in out)
    assert "C: RCPT TO:<a@example.test>" in out
    assert "C: DATA" in out
    wire = len(MESSAGE) + MESSAGE.count(b"\n") + 1   # CRLF, one dot doubled
    assert "C: [%d bytes of message]" % wire in out
    body = out.index("C: [%d bytes of message]" % wire)
    assert out[body + 1] == "C: ."
    assert out[body + 2].startswith("S: 250 ")
    assert "C: QUIT" in out
    assert "line one" not in "\n".join(out)   # the body is not printed


def test_send_transcript_bdat(home, capsys):
    from smtpserver import ScriptedServer, expect_line, read_bytes, send
    wire = len(MESSAGE) + MESSAGE.count(b"\n")
    steps = [send(b"220 x ESMTP\r\n"), expect_line(re.compile(rb"EHLO .*\r\n")),
             send(b"250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
             expect_line(re.compile(rb"MAIL .*\r\n")),
             expect_line(re.compile(rb"RCPT .*\r\n")),
             expect_line(b"BDAT %d LAST\r\n" % wire), read_bytes(wire),
             send(b"250 ok\r\n250 ok\r\n250 done\r\n"),
             expect_line(b"QUIT\r\n"), send(b"221 bye\r\n")]
    with ScriptedServer(steps) as srv:
        route(home, srv.port)
        status = send_tool(home, ["--transcript", "example.test",
                                  "s@example.org", "a@example.test"])
        srv.wait_done()
    out = capsys.readouterr().out.split("\n")
    assert status == 0
    assert "C: BDAT %d LAST" % wire in out
    i = out.index("C: BDAT %d LAST" % wire)
    assert out[i + 1] == "C: [%d bytes of message]" % wire
    assert out[i + 2:i + 5] == ["S: 250 ok", "S: 250 ok", "S: 250 done"]


def test_send_json(home, capsys):
    with TeeSMTPServer() as srv:
        route(home, srv.port)
        status = send_tool(home, ["--json", "--transcript", "example.test",
                                  "s@example.org", "a@example.test"])
        srv.wait_closed(1)
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    assert doc["recipients"] == [{"address": "a@example.test",
                                  "letter": "r", "verdict": "accepted",
                                  "text": ""}]
    assert doc["message"]["letter"] == "K"
    assert doc["message"]["text"].startswith("127.0.0.1 accepted message.")
    kinds = {line["kind"] for line in doc["transcript"]}
    assert kinds == {"note", "C", "S"}
    assert all(isinstance(line["text"], str) for line in doc["transcript"])


@pytest.mark.parametrize("reply, letter, status", [
    ("550 no such user", "h", 1), ("450 try later", "s", 75)])
def test_send_refused_recipient_status(home, capsys, reply, letter, status):
    from smtpserver import ScriptedServer, expect_line, send
    steps = [send(b"220 x ESMTP\r\n"), expect_line(re.compile(rb"EHLO .*\r\n")),
             send(b"250 x\r\n"), expect_line(re.compile(rb"MAIL .*\r\n")),
             send(b"250 ok\r\n"), expect_line(re.compile(rb"RCPT .*\r\n")),
             send(reply.encode() + b"\r\n"), expect_line(b"QUIT\r\n"),
             send(b"221 bye\r\n")]
    with ScriptedServer(steps) as srv:
        route(home, srv.port)
        got = send_tool(home, ["example.test", "s@example.org",
                               "a@example.test"])
        srv.wait_done()
    out = capsys.readouterr().out
    assert got == status
    assert ("a@example.test: refused (%s) -- 127.0.0.1 does not like "
            "recipient. Remote host said: %s" % (
                "permanent" if letter == "h" else "temporary", reply)) in out


def test_send_unreachable_is_a_temporary_failure(home, capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there now
    route(home, port)
    status = send_tool(home, ["--transcript", "example.test",
                              "s@example.org", "a@example.test"])
    out = capsys.readouterr().out
    assert status == 75
    assert "-- 127.0.0.1: unreachable\n" in out
    assert "  warning deferred (temporary): Sorry, I wasn't able to " \
           "establish an SMTP connection. (#4.4.1)\n" in out
    assert "  warning a@example.test: not tried\n" in out


def test_send_usage_error_without_recipient(home, capsys):
    with pytest.raises(SystemExit) as caught:
        tools.main(["--home", str(home), "send", "example.test", "s@x"])
    assert caught.value.code == 2


def test_send_refuses_a_terminal_on_stdin(home):
    """Run as a process with a pseudo-terminal on stdin: a clear error."""
    import pty
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "qmailremote.tools",
                            "--home", str(home), "send", "example.test",
                            "s@x", "r@example.test"], stdin=follower,
                           capture_output=True, timeout=30,
                           env={**os.environ, "PYTHONPATH": os.path.dirname(
                               os.path.dirname(os.path.dirname(
                                   os.path.abspath(tools.__file__))))})
    finally:
        os.close(leader)
        os.close(follower)
    assert p.returncode == 2
    assert b"give the message on stdin" in p.stderr
    assert b"Traceback" not in p.stderr


# ---------------------------------------------------------------------------
# deliver()'s hooks

def test_progress_reports_every_byte_and_the_total(home, tmp_path):
    big = b"".join(b"%07d ..................................................\n"
                   % i for i in range(40000))   # ~2.3 MB: several chunks
    path = tmp_path / "big"
    path.write_bytes(big)
    calls = []
    with TeeSMTPServer() as srv:
        route(home, srv.port)
        result = deliver(b"example.test", b"s@example.org",
                         [b"a@example.test"], str(path), home=str(home),
                         progress=lambda done, total: calls.append(
                             (done, total)))
        srv.wait_closed(1)
    assert result.accepted
    assert calls[0] == (0, len(big))
    assert calls[-1] == (len(big), len(big))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert len(calls) > 2


def test_progress_of_a_pipe_has_no_total(home):
    calls = []
    r, w = os.pipe()
    os.write(w, MESSAGE)
    os.close(w)
    try:
        with TeeSMTPServer() as srv:
            route(home, srv.port)
            result = deliver(b"example.test", b"s@example.org",
                             [b"a@example.test"], r, home=str(home),
                             progress=lambda d, t: calls.append((d, t)))
            srv.wait_closed(1)
    finally:
        os.close(r)
    assert result.accepted
    assert calls[0] == (0, None) and calls[-1] == (len(MESSAGE), None)


def test_hooks_change_nothing_on_the_wire(home):
    """The same delivery with and without the hooks: identical bytes."""
    raws = []
    for hooks in ({}, {"progress": lambda d, t: None,
                       "transcript": lambda k, d: None}):
        with TeeSMTPServer() as srv:
            route(home, srv.port)
            result = deliver(b"example.test", b"s@example.org",
                             [b"a@example.test"], MESSAGE, home=str(home),
                             **hooks)
            srv.wait_closed(1)
        assert result.accepted
        raws.append(srv.raw[0])
    assert raws[0] == raws[1]


def test_transcript_sees_every_byte(home):
    seen = {"C": bytearray(), "S": bytearray()}

    def tap(kind, data):
        if kind in seen:
            seen[kind] += data
    with TeeSMTPServer() as srv:
        route(home, srv.port)
        deliver(b"example.test", b"s@example.org", [b"a@example.test"],
                MESSAGE, home=str(home), transcript=tap)
        srv.wait_closed(1)
    assert bytes(seen["C"]) == srv.raw[0]
    assert seen["S"].startswith(b"220 ")


def test_a_raising_hook_is_a_temporary_failure(home):
    def boom(done, total):
        raise RuntimeError("hook bug")
    with TeeSMTPServer() as srv:
        route(home, srv.port)
        result = deliver(b"example.test", b"s@example.org",
                         [b"a@example.test"], MESSAGE, home=str(home),
                         progress=boom)
    assert result.message.letter == "Z"


# ---------------------------------------------------------------------------
# The transcript parser on its own

def transcript_of(*events):
    out = io.StringIO()
    t = Transcript(Output(out, "never"))
    for kind, data in events:
        t(kind, data)
    return out.getvalue().split("\n")[:-1]


def test_body_split_anywhere_is_one_size():
    body = b"a\r\n..b\r\nc\r\n"
    stream = b"DATA\r\n"
    for cut in range(1, len(body) + 5):
        whole = body + b".\r\nQUIT\r\n"
        lines = transcript_of(("C", stream), ("S", b"354 go\r\n"),
                              ("C", whole[:cut]), ("C", whole[cut:]))
        assert lines == ["C: DATA", "S: 354 go",
                         "C: [%d bytes of message]" % len(body), "C: .",
                         "C: QUIT"], cut


def test_empty_body_and_bdat_payload_with_pipelined_commands():
    assert transcript_of(("C", b"DATA\r\n"), ("S", b"354 go\r\n"),
                         ("C", b".\r\n")) == [
        "C: DATA", "S: 354 go", "C: [0 bytes of message]", "C: ."]
    assert transcript_of(
        ("C", b"MAIL FROM:<s>\r\nRCPT TO:<r>\r\nBDAT 7 LAST\r\nab\r\n"),
        ("C", b"c\r\nQUIT\r\n"), ("S", b"250 ok\r\n250 ok\r\n250 done\r\n"),
    ) == ["C: MAIL FROM:<s>", "C: RCPT TO:<r>", "C: BDAT 7 LAST",
          "C: [7 bytes of message]", "C: QUIT", "S: 250 ok", "S: 250 ok",
          "S: 250 done"]


def test_multiline_354_continuation_does_not_start_the_body():
    lines = transcript_of(("C", b"DATA\r\n"), ("S", b"354-wait\r\n"),
                          ("S", b"354 go\r\n"), ("C", b"x\r\n.\r\n"))
    assert lines[-2:] == ["C: [3 bytes of message]", "C: ."]


def test_non_utf8_is_escaped_not_fatal():
    assert transcript_of(("S", b"220 caf\xe9\r\n")) == ["S: 220 caf\\xe9"]
