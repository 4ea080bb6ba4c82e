"""Hostile servers: huge or endless replies, and a trickling one.

Reference section 12 (a reply is read to its end, only 5000 bytes of text
are kept) and section 10 (timeoutremote bounds each read, not a reply).
Memory is bounded: the huge-reply runs go through ``python -m qmailremote``
in a subprocess whose peak RSS (``ru_maxrss`` from ``wait4``) must stay
below a generous limit.  That is a memory bound, not a timing assertion.
Run with ``-s`` to see the figures.

Measuring it takes care: Linux keeps, across ``execve``, the high-water
RSS of the memory image being replaced (``exec_mmap`` ->
``setmax_mm_hiwater_rss``).  A child that pytest spawns (vfork + exec)
therefore reports *pytest's* peak RSS, which grows with the test data
(a 10 MB reply built in this process showed up as an 86 MiB "child").  So
the command is started by a tiny launcher (LAUNCHER): it forks and execs
the command and reports the command's wait4 rusage; the figure is the
command's own peak, inflated at most by the launcher's few MiB.
"""

import os
import subprocess
import sys

import pytest

import qmailremote
from qmailremote import deliver
from smtpserver import (ScriptedServer, call, read_to_eof, send, smtp_script,
                        trickle)

HOST = b"example.org"
SENDER = b"a@b.example"
RECIPIENT = b"c@d.example"
MESSAGE = b"Subject: t\n\nhi\n"
MB = 1024 * 1024

#: Peak RSS allowed for a run that was sent 50 MB (generous: an idle run
#: of the command is well under half of it).
RSS_LIMIT_KB = 100 * 1024

DIED = b"ZConnected to 127.0.0.1 but connection died. (#4.4.2)\n\0"

PACKAGE_ROOT = os.path.dirname(os.path.dirname(qmailremote.__file__))


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    # netqmail 1.06's dialogue: these tests pin its bytes.
    (tmp_path / "control" / "noesmtp").write_bytes(b"")
    return tmp_path


def configure(home, port, timeoutremote=10):
    (home / "control" / "smtproutes").write_bytes(b":127.0.0.1:%d\n" % port)
    (home / "control" / "timeoutremote").write_bytes(b"%d\n" % timeoutremote)


def send_stream(first, chunk, total, last=b""):
    """A step: send *first*, then *chunk* until *total* bytes, then *last*.

    Every byte must be taken by the client: a client that gives up early
    makes sendall fail, which the server records as a failure.
    """
    def stream(conn):
        conn.sock.sendall(first)
        sent = len(first)
        while sent < total:
            conn.sock.sendall(chunk)
            sent += len(chunk)
        conn.sock.sendall(last)
        conn.record.sent_forever = sent + len(last)
    return call(stream)


# Forks and execs argv[2:], inheriting fds 0-2, and writes "status maxrss"
# (wait4 of that child) to the file argv[1].
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d %d" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))
"""


def run_cli(home, tmp_path, timeout=60.0):
    """Run the command (through LAUNCHER) against the configured route.

    Returns (exit status, stdout, stderr, peak RSS in KiB).
    """
    env = dict(os.environ)
    env["QMAILHOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [PACKAGE_ROOT, env.get("PYTHONPATH")] if p)
    (tmp_path / "message").write_bytes(MESSAGE)
    usage_file = tmp_path / "usage"
    with open(tmp_path / "message", "rb") as stdin, \
            open(tmp_path / "stdout", "w+b") as out, \
            open(tmp_path / "stderr", "w+b") as err:
        launcher = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(usage_file),
             sys.executable, "-m", "qmailremote", HOST, SENDER, RECIPIENT],
            stdin=stdin, stdout=out, stderr=err, env=env, timeout=timeout)
        assert launcher.returncode == 0
        out.seek(0)
        err.seek(0)
        status, rss = map(int, usage_file.read_text().split())
        return status, out.read(), err.read(), rss


def report_rss(what, kb):
    print(f"\n[peak RSS] {what}: {kb / 1024:.1f} MiB")


def test_baseline_rss(home, tmp_path):
    """A normal delivery through the command, for comparison."""
    with ScriptedServer(smtp_script()) as srv:
        configure(home, srv.port)
        status, out, err, rss = run_cli(home, tmp_path)
        srv.wait_done()
    assert (status, err) == (0, b"")
    assert out.startswith(b"r\0K127.0.0.1 accepted message.\n")
    report_rss("normal delivery (baseline)", rss)


def test_50mb_greeting_without_newline(home, tmp_path):
    total = 50 * MB
    script = [send_stream(b"220 ", b"x" * 65536, total)]  # then FIN
    with ScriptedServer(script) as srv:
        configure(home, srv.port)
        status, out, err, rss = run_cli(home, tmp_path)
        srv.wait_done(timeout=30)
    report_rss("50 MB greeting line without LF", rss)
    assert srv.records[0].sent_forever >= total
    assert (status, err) == (0, b"")
    assert out == DIED
    assert rss < RSS_LIMIT_KB


def test_50mb_of_continuation_lines(home, tmp_path):
    total = 50 * MB
    line = b"220-" + b"y" * 1018 + b"\r\n"
    assert len(line) == 1024
    script = [send_stream(b"220-hello\r\n", line * 64, total)]  # then FIN
    with ScriptedServer(script) as srv:
        configure(home, srv.port)
        status, out, err, rss = run_cli(home, tmp_path)
        srv.wait_done(timeout=30)
    report_rss("50 MB of 220- continuation lines", rss)
    assert srv.records[0].sent_forever >= total
    assert (status, err) == (0, b"")
    assert out == DIED
    assert rss < RSS_LIMIT_KB


def test_10mb_mail_reply_text_is_capped(home, tmp_path):
    """A complete 10 MB MAIL reply: code from the first line, 5000 bytes of
    text kept (CR dropped, no newline added), then QUIT."""
    first = b"550-sender refused, details follow\r\n"
    lines = b"".join(b"550-detail line %07d of a very long reply\r\n" % i
                     for i in range(10 * MB // 44))
    last = b"550 end\r\n"
    reply = first + lines + last
    assert len(reply) > 10 * MB
    script = smtp_script(mail=None) + [
        send(reply), read_to_eof(b"QUIT\r\n")]
    with ScriptedServer(script) as srv:
        configure(home, srv.port)
        status, out, err, rss = run_cli(home, tmp_path)
        srv.wait_done(timeout=30)
    report_rss("10 MB MAIL reply of 550- lines", rss)
    text = reply.replace(b"\r", b"")[:5000]
    assert len(text) == 5000 and not text.endswith(b"\n")
    assert (status, err) == (0, b"")
    assert out == (b"DConnected to 127.0.0.1 but sender was rejected.\n"
                   b"Remote host said: " + text + b"\0")
    assert rss < RSS_LIMIT_KB


def test_trickled_greeting_within_per_read_timeout(home):
    """One byte every 0.3 s for 3 s with timeoutremote 1: every single read
    completes in time, so the delivery goes through (section 10)."""
    greeting = b"220 hello\r\n"
    script = [trickle(greeting, 0.3)] + smtp_script()[1:]
    with ScriptedServer(script) as srv:
        configure(home, srv.port, timeoutremote=1)
        out = deliver(HOST, SENDER, [RECIPIENT], MESSAGE,
                      home=str(home)).render()
        srv.wait_done()
    assert srv.records[0].lines[0] == b"HELO me.example\r\n"
    assert out == (b"r\0K127.0.0.1 accepted message.\n"
                   b"Remote host said: 250 ok queued\n\0")
