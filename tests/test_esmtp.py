"""The ESMTP dialogue (issue 9): EHLO, SIZE, PIPELINING, SMTPUTF8, CHUNKING.

Every delivery goes through the public ``deliver()`` API with an
``smtproutes`` default route to a loopback server, as in test_session.py,
and every test compares the exact report bytes and the exact bytes the
server received.  The reply classes are 1.06's at every stage the two
dialogues share (reference sections 11-14); the ESMTP-only texts are
``perm_size``, ``perm_smtputf8`` and "failed on BDAT command".

A pipelining server here reads *every* pipelined command before it sends
any reply: a client that waited for a reply before its next command would
never get one (the run would end in a timeout, and the test would fail).
"""

import gc
import io
import os
import sys

import pytest

from qmailremote import deliver
from qmailremote.esmtp import EARLY_BDAT
from qmailremote.message import CHUNK
from smtpserver import (ScriptedServer, TeeSMTPServer, expect_data,
                        expect_line, read_bytes, read_some, read_to_eof,
                        send, stall, trickle)

IP = b"127.0.0.1"
SENDER = b"a@b.example"
RCPT = b"c@d.example"
# 16 bytes, 3 LFs, 1 line-start dot: 20 bytes on the wire in DATA mode
# (without the terminator), 19 in BDAT chunks.
MESSAGE = b"Subject: t\n\n.hi\n"
CRLF = MESSAGE.replace(b"\n", b"\r\n")              # 19 bytes, BDAT body
STUFFED = b"Subject: t\r\n\r\n..hi\r\n"             # 20 bytes, DATA body
DATA_SIZE, BDAT_SIZE = len(STUFFED), len(CRLF)
assert (DATA_SIZE, BDAT_SIZE) == (20, 19)

EHLO = b"EHLO me.example\r\n"
HELO = b"HELO me.example\r\n"
MAIL = b"MAIL FROM:<a@b.example>\r\n"
RCPT_LINE = b"RCPT TO:<c@d.example>\r\n"
QUIT = b"QUIT\r\n"
FINAL = b"250 ok queued\r\n"


def said(text):
    return b"Remote host said: " + text


K = b"K127.0.0.1 accepted message.\n" + said(b"250 ok queued\n") + b"\0"
GIVE_UP = b"DGiving up on 127.0.0.1.\n\0"
DIED = b"ZConnected to 127.0.0.1 but connection died. (#4.4.2)\n\0"
DUP = (b"ZConnected to 127.0.0.1 but connection died. Possible duplicate! "
       b"(#4.4.2)\n\0")
PARTIAL = b"DSMTP cannot transfer messages with partial final lines. " \
          b"(#5.6.2)\n\0"
UTF8_D = (b"DConnected to 127.0.0.1 but server does not support unicode in "
          b"email addresses. (#5.6.7)\n\0")
Z_HELO = b"ZConnected to 127.0.0.1 but my name was rejected.\n"
Z_GREETING = b"ZConnected to 127.0.0.1 but greeting failed.\n"
SENDER_REJ = b"Connected to 127.0.0.1 but sender was rejected.\n"
DATA_REJ = b"127.0.0.1 failed on DATA command.\n"
BDAT_REJ = b"127.0.0.1 failed on BDAT command.\n"
FINAL_REJ = b"127.0.0.1 failed after I sent the message.\n"


def size_d(size, limit):
    return (b"DConnected to 127.0.0.1 but the message is %d bytes, over the "
            b"server's SIZE limit of %d. (#5.3.4)\n\0" % (size, limit))


def ehlo(*keywords, name=b"mx.example"):
    """An EHLO reply: the server's name, then one line per keyword."""
    lines = [name, *keywords]
    return b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-",
                                      line)
                    for i, line in enumerate(lines))


def bdat(payload, last=True):
    """The wire bytes of one BDAT chunk."""
    return b"BDAT %d%s\r\n" % (len(payload), b" LAST" if last else b"") + \
        payload


def read_bdat(payload, last=True):
    """Server steps reading one BDAT chunk (its command checked exactly)."""
    return [expect_line(b"BDAT %d%s\r\n" % (len(payload),
                                            b" LAST" if last else b"")),
            read_bytes(len(payload))]


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    return tmp_path


def run(home, script, message=MESSAGE, recipients=(RCPT,), sender=SENDER,
        timeoutremote=None, finishes=True, nochunking=False, rcvbuf=None):
    """Deliver through a ScriptedServer; return (stdout bytes, server)."""
    control = home / "control"
    if nochunking:
        (control / "nochunking").write_bytes(b"")
    if timeoutremote is not None:
        (control / "timeoutremote").write_bytes(b"%d\n" % timeoutremote)
    with ScriptedServer(script, rcvbuf=rcvbuf) as srv:
        (control / "smtproutes").write_bytes(b":127.0.0.1:%d\n" % srv.port)
        result = deliver(b"example.org", sender, list(recipients), message,
                         home=str(home))
        if finishes:
            srv.wait_done()
    return result.render(), srv


def lockstep(caps, mail=b"250 ok\r\n", rcpts=(b"250 ok\r\n",),
             data=b"354 go\r\n", final=FINAL, greeting=b"220 ok\r\n"):
    """A server answering each command as it reads it (DATA mode)."""
    steps = [send(greeting), expect_line(EHLO), send(caps),
             expect_line(), send(mail)]
    for reply in rcpts:
        steps += [expect_line(), send(reply)]
    steps += [expect_line(b"DATA\r\n"), send(data), expect_data(),
              send(final), read_to_eof(QUIT)]
    return steps


# --- EHLO ------------------------------------------------------------------

def test_ehlo_without_keywords_is_the_lockstep_dialogue(home):
    out, srv = run(home, lockstep(b"250 mx.example\r\n"))
    assert out == b"r\0" + K
    assert srv.received[0] == (EHLO + MAIL + RCPT_LINE + b"DATA\r\n" +
                               STUFFED + b".\r\n" + QUIT)


def test_helohost_is_the_ehlo_argument(home):
    (home / "control" / "helohost").write_bytes(b"relay.example\n")
    script = lockstep(ehlo())
    script[1] = expect_line(b"EHLO relay.example\r\n")
    out, srv = run(home, script)
    assert out == b"r\0" + K
    assert srv.received[0].startswith(b"EHLO relay.example\r\nMAIL")


@pytest.mark.parametrize("reply", [
    b"500 unrecognized\r\n", b"502 not implemented\r\n", b"421 busy\r\n",
    b"251 odd\r\n", b"abc\r\n", b"25\r\n",
    # A rejected EHLO advertises nothing, whatever its text says.
    b"550-mx.example\r\n550-SIZE 10\r\n550 PIPELINING\r\n",
])
def test_ehlo_rejected_then_helo_accepted(home, reply):
    script = [send(b"220 ok\r\n"), expect_line(EHLO), send(reply),
              expect_line(HELO), send(b"250 ok\r\n"),
              expect_line(MAIL), send(b"250 ok\r\n"),
              expect_line(RCPT_LINE), send(b"250 ok\r\n"),
              expect_line(b"DATA\r\n"), send(b"354 go\r\n"),
              expect_data(STUFFED + b".\r\n"), send(FINAL),
              read_to_eof(QUIT)]
    out, srv = run(home, script)
    assert out == b"r\0" + K
    # 1.06's bytes after the EHLO: no SIZE=, no pipelining, no BDAT.
    assert srv.received[0] == (EHLO + HELO + MAIL + RCPT_LINE + b"DATA\r\n" +
                               STUFFED + b".\r\n" + QUIT)


@pytest.mark.parametrize("helo", [
    b"550 go away\r\n", b"421 busy\r\n", b"251 odd\r\n", b"xyz\r\n",
    b"220 wrong\r\n", b"550-first\r\n250 second\r\n",
])
def test_ehlo_rejected_then_helo_rejected(home, helo):
    script = [send(b"220 ok\r\n"), expect_line(EHLO), send(b"502 no\r\n"),
              expect_line(HELO), send(helo), read_to_eof(QUIT)]
    out, srv = run(home, script)
    assert out == Z_HELO + said(helo.replace(b"\r\n", b"\n")) + b"\0"
    assert srv.received[0] == EHLO + HELO + QUIT


@pytest.mark.parametrize("greeting", [
    b"554 no\r\n", b"421 busy\r\n", b"250 ok\r\n", b"abc\r\n",
])
def test_greeting_not_220_is_106s_z(home, greeting):
    out, srv = run(home, [send(greeting), read_to_eof(QUIT)])
    assert out == Z_GREETING + said(greeting.replace(b"\r\n", b"\n")) + b"\0"
    assert srv.received[0] == QUIT      # no EHLO


def test_ehlo_multiline_250_then_capabilities(home):
    """'250-' continuation lines of the EHLO reply are all read first."""
    caps = b"250-mx.example hello\r\n250-8BITMIME\r\n250-SIZE 1000\r\n" \
           b"250 HELP\r\n"
    out, srv = run(home, lockstep(caps))
    assert out == b"r\0" + K
    assert srv.received[0].startswith(
        EHLO + b"MAIL FROM:<a@b.example> SIZE=20\r\n")


@pytest.mark.parametrize("line", [
    b"SIZE 1000", b"size 1000", b"Size=1000", b"SIZE   1000  ",
    b"SIZE=", b"size",
])
def test_size_keyword_odd_case_and_spacing(home, line):
    out, srv = run(home, lockstep(ehlo(line, b"HELP")))
    assert out == b"r\0" + K
    assert srv.received[0].startswith(
        EHLO + b"MAIL FROM:<a@b.example> SIZE=20\r\n")


@pytest.mark.parametrize("line", [b"SIZE 19", b"size=19", b"Size    19"])
def test_size_limit_odd_spacing_is_parsed(home, line):
    out, srv = run(home, [send(b"220 ok\r\n"), expect_line(EHLO),
                          send(ehlo(line)), read_to_eof(QUIT)])
    assert out == size_d(DATA_SIZE, 19)
    assert srv.received[0] == EHLO + QUIT


def test_keyword_on_the_first_line_is_the_server_name(home):
    """The first line of the reply names the server: no keyword there."""
    out, srv = run(home, lockstep(b"250 SIZE 10\r\n"))
    assert out == b"r\0" + K
    assert srv.received[0].startswith(EHLO + MAIL)


def test_all_extensions_in_odd_case(home):
    """pipelining / chunking / smtputf8 in lower and mixed case, '='."""
    caps = ehlo(b"pipelining", b"Chunking", b"smtpUTF8=", b"sIzE=100")
    # 1.06's quote.c quotes a local part with 8-bit bytes: still valid
    # under RFC 6531 (a quoted-string may hold UTF-8).
    mail = b'MAIL FROM:<"\xc3\xa9"@b.example> SIZE=19 SMTPUTF8\r\n'
    script = [send(b"220 ok\r\n"), expect_line(EHLO), send(caps),
              expect_line(mail), expect_line(RCPT_LINE), *read_bdat(CRLF),
              send(b"250 a\r\n250 b\r\n" + FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script, sender=b"\xc3\xa9@b.example",
                   timeoutremote=2)
    assert out == b"r\0" + K
    assert srv.received[0] == EHLO + mail + RCPT_LINE + bdat(CRLF) + QUIT


# --- SIZE ------------------------------------------------------------------

def size_script(limit_line, mail_line):
    return [send(b"220 ok\r\n"), expect_line(EHLO), send(ehlo(limit_line)),
            expect_line(mail_line), send(b"250 ok\r\n"),
            expect_line(RCPT_LINE), send(b"250 ok\r\n"),
            expect_line(b"DATA\r\n"), send(b"354 go\r\n"),
            expect_data(STUFFED + b".\r\n"), send(FINAL), read_to_eof(QUIT)]


@pytest.mark.parametrize("limit", [
    b"SIZE %d" % DATA_SIZE,             # equal: sent
    b"SIZE %d" % (DATA_SIZE + 1),       # above
    b"SIZE 10485760",
    b"SIZE",                            # no number: no limit
    b"SIZE 0",                          # RFC 1870: no fixed maximum
    b"SIZE 123456789012345678901234567890",  # absurdly long: no limit
    b"SIZE junk",
])
def test_size_sent(home, limit):
    mail = b"MAIL FROM:<a@b.example> SIZE=%d\r\n" % DATA_SIZE
    out, srv = run(home, size_script(limit, mail))
    assert out == b"r\0" + K
    assert srv.received[0] == (EHLO + mail + RCPT_LINE + b"DATA\r\n" +
                               STUFFED + b".\r\n" + QUIT)


def test_size_one_below_is_refused_before_mail(home):
    out, srv = run(home, [send(b"220 ok\r\n"), expect_line(EHLO),
                          send(ehlo(b"SIZE %d" % (DATA_SIZE - 1))),
                          read_to_eof(QUIT)])
    assert out == size_d(DATA_SIZE, DATA_SIZE - 1)
    assert srv.received[0] == EHLO + QUIT


def test_size_counts_stuffed_dots_only_in_data_mode(home):
    """19 bytes as BDAT chunks, 20 with the stuffed dot: a limit of 19."""
    caps = ehlo(b"SIZE %d" % BDAT_SIZE, b"CHUNKING")
    mail = b"MAIL FROM:<a@b.example> SIZE=%d\r\n" % BDAT_SIZE
    script = [send(b"220 ok\r\n"), expect_line(EHLO), send(caps),
              expect_line(mail), send(b"250 ok\r\n"),
              expect_line(RCPT_LINE), send(b"250 ok\r\n"),
              *read_bdat(CRLF), send(FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script)
    assert out == b"r\0" + K
    assert srv.received[0] == EHLO + mail + RCPT_LINE + bdat(CRLF) + QUIT


def test_size_with_nochunking_counts_the_stuffed_dots(home):
    out, srv = run(home, [send(b"220 ok\r\n"), expect_line(EHLO),
                          send(ehlo(b"SIZE %d" % BDAT_SIZE, b"CHUNKING")),
                          read_to_eof(QUIT)], nochunking=True)
    assert out == size_d(DATA_SIZE, BDAT_SIZE)
    assert srv.received[0] == EHLO + QUIT


def test_size_refusal_of_a_big_message_sends_under_1kb(home):
    message = (b"y" * 99 + b"\n") * 20000         # 2,000,000 bytes
    wire = len(message) + 20000
    out, srv = run(home, [send(b"220 ok\r\n"), expect_line(EHLO),
                          send(ehlo(b"PIPELINING", b"SIZE 1000000",
                                    b"CHUNKING")),
                          read_to_eof(QUIT)], message=message)
    assert out == size_d(wire, 1000000)
    assert srv.received[0] == EHLO + QUIT
    assert len(srv.received[0]) < 1024


def test_size_552_to_mail_stays_sender_rejected(home):
    out, srv = run(home, [send(b"220 ok\r\n"), expect_line(EHLO),
                          send(ehlo(b"SIZE")),
                          expect_line(), send(b"552 too big\r\n"),
                          read_to_eof(QUIT)])
    assert out == b"D" + SENDER_REJ + said(b"552 too big\n") + b"\0"
    assert srv.received[0] == (
        EHLO + b"MAIL FROM:<a@b.example> SIZE=20\r\n" + QUIT)


def test_size_of_a_path_source(home, tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(MESSAGE)
    mail = b"MAIL FROM:<a@b.example> SIZE=20\r\n"
    out, srv = run(home, size_script(b"SIZE", mail), message=str(path))
    assert out == b"r\0" + K
    assert srv.received[0].startswith(EHLO + mail)


def test_size_of_a_descriptor_counts_from_its_offset(home, tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(b"skipped\n" + MESSAGE)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 8, os.SEEK_SET)
        mail = b"MAIL FROM:<a@b.example> SIZE=20\r\n"
        out, srv = run(home, size_script(b"SIZE", mail), message=fd)
    finally:
        os.close(fd)
    assert out == b"r\0" + K
    assert srv.received[0] == (EHLO + mail + RCPT_LINE + b"DATA\r\n" +
                               STUFFED + b".\r\n" + QUIT)


def _pipe_with(data):
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


@pytest.mark.parametrize("kind", ["pipe", "file object"])
def test_no_size_for_a_non_regular_source(home, kind):
    source = _pipe_with(MESSAGE) if kind == "pipe" else io.BytesIO(MESSAGE)
    try:
        # Even a limit below the message's size cannot be checked.
        out, srv = run(home, size_script(b"SIZE 5", MAIL), message=source)
    finally:
        if kind == "pipe":
            os.close(source)
    assert out == b"r\0" + K
    assert srv.received[0] == (EHLO + MAIL + RCPT_LINE + b"DATA\r\n" +
                               STUFFED + b".\r\n" + QUIT)


# --- PIPELINING: equivalence with the lock-step dialogue ---------------------

R2 = [b"c@d.example", b"e@f.example"]
OK = b"250 ok\r\n"
GO = b"354 go\r\n"
NO = b"503 no valid recipients\r\n"


def _accepted(reply):
    return reply[:3].isdigit() and int(reply[:3]) < 400


def _expected_wire(mode, mail, rcpts, data, final_sent):
    """What the client sends for these replies, in *mode*."""
    cmds = (b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
            b"RCPT TO:<e@f.example>\r\n")
    body = STUFFED + b".\r\n"
    if mode != "lockstep":
        wire = EHLO + cmds + b"DATA\r\n"
        if not _accepted(mail):
            return wire + QUIT
        if not any(_accepted(r) for r in rcpts):
            return wire + (b".\r\n" if _accepted(data) else b"") + QUIT
        if not _accepted(data):
            return wire + QUIT
        return wire + body + (QUIT if final_sent else b"")
    if not _accepted(mail):
        return EHLO + b"MAIL FROM:<a@b.example>\r\n" + QUIT
    if not any(_accepted(r) for r in rcpts):
        return EHLO + cmds + QUIT
    if not _accepted(data):
        return EHLO + cmds + b"DATA\r\n" + QUIT
    return EHLO + cmds + b"DATA\r\n" + body + (QUIT if final_sent else b"")


def _script(mode, mail, rcpts, data, final):
    if mode == "lockstep":
        steps = [send(b"220 ok\r\n"), expect_line(EHLO), send(ehlo(b"8BITMIME")),
                 expect_line(), send(mail)]
        if not _accepted(mail):
            return steps + [read_to_eof()]
        for reply in rcpts:
            steps += [expect_line(), send(reply)]
        if not any(_accepted(r) for r in rcpts):
            return steps + [read_to_eof()]
        steps += [expect_line(b"DATA\r\n"), send(data)]
        if not _accepted(data):
            return steps + [read_to_eof()]
        return steps + [expect_data(), send(final), read_to_eof()]
    replies = mail + b"".join(rcpts) + data
    steps = [send(b"220 ok\r\n"), expect_line(EHLO),
             send(ehlo(b"PIPELINING", b"8BITMIME")),
             # Every command is read before any reply goes out.
             expect_line(), expect_line(), expect_line(),
             expect_line(b"DATA\r\n"),
             trickle(replies, 0.001) if mode == "trickle" else send(replies)]
    if _accepted(mail) and any(map(_accepted, rcpts)) and _accepted(data):
        steps += [expect_data(), send(final)]
    return steps + [read_to_eof()]


SCENARIOS = [
    # (id, mail, rcpt replies, data, final, expected stdout)
    ("accepted", OK, [OK, OK], GO, FINAL, b"r\0r\0" + K),
    ("mail-550", b"550 no\r\n", [NO, NO], NO, FINAL,
     b"D" + SENDER_REJ + said(b"550 no\n") + b"\0"),
    ("mail-451", b"451 later\r\n", [NO, NO], NO, FINAL,
     b"Z" + SENDER_REJ + said(b"451 later\n") + b"\0"),
    ("mail-garbage", b"x50 ?\r\n", [NO, NO], NO, FINAL,
     b"Z" + SENDER_REJ + said(b"x50 ?\n") + b"\0"),
    ("mail-multiline", b"250-a\r\n250 b\r\n", [OK, OK], GO, FINAL,
     b"r\0r\0" + K),
    ("rcpt1-550", OK, [b"550 unknown\r\n", OK], GO, FINAL,
     b"h127.0.0.1 does not like recipient.\n" + said(b"550 unknown\n") +
     b"\0r\0" + K),
    ("rcpt2-450", OK, [OK, b"450 later\r\n"], GO, FINAL,
     b"r\0s127.0.0.1 does not like recipient.\n" + said(b"450 later\n") +
     b"\0" + K),
    ("rcpt-garbage", OK, [b"2x0 what\r\n", OK], GO, FINAL,
     b"s127.0.0.1 does not like recipient.\n" + said(b"2x0 what\n") +
     b"\0r\0" + K),
    ("all-rcpt-refused-data-503", OK, [b"550 a\r\n", b"451 b\r\n"], NO, FINAL,
     b"h127.0.0.1 does not like recipient.\n" + said(b"550 a\n") +
     b"\0s127.0.0.1 does not like recipient.\n" + said(b"451 b\n") + b"\0" +
     GIVE_UP),
    ("all-rcpt-refused-data-354", OK, [b"550 a\r\n", b"550 b\r\n"], GO, FINAL,
     b"h127.0.0.1 does not like recipient.\n" + said(b"550 a\n") +
     b"\0h127.0.0.1 does not like recipient.\n" + said(b"550 b\n") + b"\0" +
     GIVE_UP),
    ("data-554", OK, [OK, OK], b"554 no\r\n", FINAL,
     b"r\0r\0D" + DATA_REJ + said(b"554 no\n") + b"\0"),
    ("data-451", OK, [OK, b"550 x\r\n"], b"451 later\r\n", FINAL,
     b"r\0h127.0.0.1 does not like recipient.\n" + said(b"550 x\n") +
     b"\0Z" + DATA_REJ + said(b"451 later\n") + b"\0"),
    ("final-554", OK, [OK, OK], GO, b"554 rejected\r\n",
     b"r\0r\0D" + FINAL_REJ + said(b"554 rejected\n") + b"\0"),
    ("final-451", OK, [OK, OK], GO, b"451 later\r\n",
     b"r\0r\0Z" + FINAL_REJ + said(b"451 later\n") + b"\0"),
    ("final-garbage", OK, [OK, OK], GO, b"2x0 odd\r\n",
     b"r\0r\0Z" + FINAL_REJ + said(b"2x0 odd\n") + b"\0"),
]


@pytest.mark.parametrize("mode", ["lockstep", "pipelined", "trickle"])
@pytest.mark.parametrize("name, mail, rcpts, data, final, expected",
                         SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_pipelining_equivalence(home, mode, name, mail, rcpts, data, final,
                                expected):
    out, srv = run(home, _script(mode, mail, rcpts, data, final),
                   recipients=R2, timeoutremote=3)
    assert out == expected
    wire = _expected_wire(mode, mail, rcpts, data, True)
    if mode == "trickle" and srv.records[0].peer_gone:
        # The client stopped reading early and left while the server was
        # still trickling: its QUIT was written but never read.
        assert not _accepted(mail) or not _accepted(data)
        assert srv.received[0] + QUIT == wire
    else:
        assert srv.received[0] == wire


def test_pipelined_commands_in_one_write(home):
    """MAIL, both RCPTs and DATA arrive together, in one segment."""
    batch = (b"MAIL FROM:<a@b.example> SIZE=20\r\nRCPT TO:<c@d.example>\r\n"
             b"RCPT TO:<e@f.example>\r\nDATA\r\n")
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"PIPELINING", b"SIZE")),
              read_some(65536), send(OK + OK + OK + GO),
              expect_data(STUFFED + b".\r\n"), send(FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script, recipients=R2, timeoutremote=3)
    assert out == b"r\0r\0" + K
    assert srv.records[0].chunks == [batch]


def test_pipelining_server_answering_one_by_one(home):
    """Advertises PIPELINING, answers each command as it reads it."""
    script = lockstep(ehlo(b"PIPELINING"), rcpts=(OK, b"550 no\r\n"))
    out, srv = run(home, script, recipients=R2, timeoutremote=3)
    assert out == (b"r\0h127.0.0.1 does not like recipient.\n" +
                   said(b"550 no\n") + b"\0" + K)
    assert srv.received[0] == (
        EHLO + MAIL + RCPT_LINE + b"RCPT TO:<e@f.example>\r\nDATA\r\n" +
        STUFFED + b".\r\n" + QUIT)


def test_pipelining_server_one_reply_short_times_out(home):
    """A reply missing from the batch: the client waits, then gives up."""
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"PIPELINING")),
              expect_line(), expect_line(), expect_line(), expect_line(),
              send(OK + OK), stall()]       # the second RCPT's is missing
    out, srv = run(home, script, recipients=R2, timeoutremote=1,
                   finishes=False)
    assert out == b"r\0" + DIED
    assert srv.received[0] == (EHLO + MAIL + RCPT_LINE +
                               b"RCPT TO:<e@f.example>\r\nDATA\r\n")


def test_pipelined_replies_split_mid_line(home):
    """Replies cut at odd places across segments, multi-line among them."""
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"PIPELINING")),
              expect_line(), expect_line(), expect_line(b"DATA\r\n"),
              send(b"250-sender\r\n25"), send(b"0 ok\r\n250 rc"),
              send(b"pt ok\r\n35"), send(b"4 go\r\n"),
              expect_data(STUFFED + b".\r\n"), send(FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script, timeoutremote=3)
    assert out == b"r\0" + K


# --- SMTPUTF8 --------------------------------------------------------------

UTF8_ADDR = b"j\xc3\xb6rg@b\xc3\xbccher.example"
# As it goes on the wire: quote.c quotes the 8-bit local part.
UTF8_WIRE = b'"j\xc3\xb6rg"@b\xc3\xbccher.example'
UTF8_DOMAIN = b"jorg@b\xc3\xbccher.example"   # sent as it is


def wire(address):
    return {UTF8_ADDR: UTF8_WIRE, b"\xe9@b.example": b'"\xe9"@b.example'}.get(
        address, address)
RECEIVED = (b"Received: from a.example by b.example with UTF8SMTPS id 1;\n"
            b"  Mon, 1 Jan 2024 00:00:00 +0000\n")


@pytest.mark.parametrize("needs, sender, rcpt, message", [
    ("sender", UTF8_ADDR, RCPT, MESSAGE),
    ("recipient", SENDER, UTF8_ADDR, MESSAGE),
    ("header", SENDER, RCPT, RECEIVED + MESSAGE),
    ("folded header", SENDER, RCPT,
     b"Received: from a.example\n\tby b.example\n\twith utf8smtp;\n" +
     MESSAGE),
    ("latin-1 byte", b"\xe9@b.example", RCPT, MESSAGE),
    ("domain only", SENDER, UTF8_DOMAIN, MESSAGE),
])
@pytest.mark.parametrize("offered", [True, False])
def test_smtputf8_needed(home, needs, sender, rcpt, message, offered):
    if not offered:
        out, srv = run(home, [send(b"220 ok\r\n"), expect_line(EHLO),
                              send(ehlo(b"8BITMIME", b"SIZE")),
                              read_to_eof(QUIT)],
                       sender=sender, recipients=[rcpt], message=message)
        assert out == UTF8_D
        assert srv.received[0] == EHLO + QUIT
        return
    mail = b"MAIL FROM:<%s> SMTPUTF8\r\n" % wire(sender)
    rcpt_line = b"RCPT TO:<%s>\r\n" % wire(rcpt)
    body = message.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    out, srv = run(home, lockstep(ehlo(b"SMTPUTF8")), sender=sender,
                   recipients=[rcpt], message=message)
    assert out == b"r\0" + K
    assert srv.received[0] == (EHLO + mail + rcpt_line + b"DATA\r\n" + body +
                               b".\r\n" + QUIT)


@pytest.mark.parametrize("message", [
    MESSAGE,
    # Not a Received field, or not in the header block, or no "with UTF8".
    b"X-Received: from a by b with UTF8SMTP\n" + MESSAGE,
    b"Subject: t\n\nReceived: from a by b with UTF8SMTP\n",
    b"Received: from a by b with ESMTP; utf8 text\n" + MESSAGE,
    # 8-bit bytes in the header or body alone do not need SMTPUTF8.
    b"Subject: \xc3\xa9t\xc3\xa9\n\n\xff\xfe\n",
])
@pytest.mark.parametrize("offered", [True, False])
def test_smtputf8_not_needed(home, message, offered):
    caps = ehlo(b"SMTPUTF8") if offered else ehlo(b"8BITMIME")
    out, srv = run(home, lockstep(caps), message=message)
    assert out == b"r\0" + K
    body = message.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    # 8-bit bodies go as they are: no BODY=, no conversion.
    assert srv.received[0] == (EHLO + MAIL + RCPT_LINE + b"DATA\r\n" + body +
                               b".\r\n" + QUIT)


def test_smtputf8_after_size(home):
    mail = b"MAIL FROM:<%s> SIZE=%d SMTPUTF8\r\n" % (UTF8_WIRE, DATA_SIZE)
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"SIZE 20", b"SMTPUTF8")),
              expect_line(mail), send(OK), expect_line(), send(OK), expect_line(b"DATA\r\n"),
              send(GO), expect_data(STUFFED + b".\r\n"), send(FINAL),
              read_to_eof(QUIT)]
    out, srv = run(home, script, sender=UTF8_ADDR)
    assert out == b"r\0" + K
    assert srv.received[0] == (EHLO + mail + RCPT_LINE + b"DATA\r\n" +
                               STUFFED + b".\r\n" + QUIT)


def test_smtputf8_needed_after_helo_fallback(home):
    out, srv = run(home, [send(b"220 ok\r\n"), expect_line(EHLO),
                          send(b"500 what\r\n"), expect_line(HELO),
                          send(OK), read_to_eof(QUIT)],
                   recipients=[UTF8_ADDR])
    assert out == UTF8_D
    assert srv.received[0] == EHLO + HELO + QUIT


def test_smtputf8_is_checked_before_size(home):
    """Both refusals apply: the SMTPUTF8 one is reported."""
    out, srv = run(home, [send(b"220 ok\r\n"), expect_line(EHLO),
                          send(ehlo(b"SIZE 1")), read_to_eof(QUIT)],
                   sender=UTF8_ADDR)
    assert out == UTF8_D
    assert srv.received[0] == EHLO + QUIT


# --- CHUNKING --------------------------------------------------------------

DOTTY = b"Subject: dots\n\n.\n..x\n.\n"      # stuffed in DATA, not in BDAT


def test_bdat_lockstep(home):
    crlf = DOTTY.replace(b"\n", b"\r\n")
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"CHUNKING")), expect_line(MAIL), send(OK),
              expect_line(RCPT_LINE), send(OK), *read_bdat(crlf),
              send(FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script, message=DOTTY)
    assert out == b"r\0" + K
    # No dot-stuffing, no terminator.
    assert srv.received[0] == EHLO + MAIL + RCPT_LINE + bdat(crlf) + QUIT


def test_nochunking_sends_data(home):
    out, srv = run(home, lockstep(ehlo(b"CHUNKING")), message=DOTTY,
                   nochunking=True)
    assert out == b"r\0" + K
    assert srv.received[0] == (
        EHLO + MAIL + RCPT_LINE + b"DATA\r\n" +
        b"Subject: dots\r\n\r\n..\r\n...x\r\n..\r\n.\r\n" + QUIT)


@pytest.mark.parametrize("pipelining", [False, True])
def test_bdat_empty_message(home, pipelining):
    caps = ehlo(b"PIPELINING", b"CHUNKING") if pipelining else \
        ehlo(b"CHUNKING")
    if pipelining:
        script = [send(b"220 ok\r\n"), expect_line(EHLO), send(caps),
                  expect_line(MAIL), expect_line(RCPT_LINE),
                  expect_line(b"BDAT 0 LAST\r\n"), send(OK + OK + FINAL),
                  read_to_eof(QUIT)]
    else:
        script = [send(b"220 ok\r\n"), expect_line(EHLO), send(caps),
                  expect_line(MAIL), send(OK), expect_line(RCPT_LINE),
                  send(OK), expect_line(b"BDAT 0 LAST\r\n"), send(FINAL),
                  read_to_eof(QUIT)]
    out, srv = run(home, script, message=b"", timeoutremote=3)
    assert out == b"r\0" + K
    assert srv.received[0] == (EHLO + MAIL + RCPT_LINE + b"BDAT 0 LAST\r\n" +
                               QUIT)


# Lines of 100 bytes: 1 MiB chunk boundaries fall mid-line.
BIG = b"".join(b"%099d\n" % i for i in range(25000))
assert len(BIG) == 2500000 and CHUNK == 1 << 20


def big_chunks(message=BIG):
    """The message's BDAT payloads, one per 1 MiB of input, CRLF lines."""
    return [message[i:i + CHUNK].replace(b"\n", b"\r\n")
            for i in range(0, len(message), CHUNK)]


def big_lockstep_script(parts):
    """A lock-step CHUNKING server with SIZE, taking BIG in *parts*."""
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"CHUNKING", b"SIZE")),
              expect_line(b"MAIL FROM:<a@b.example> SIZE=2525000\r\n"),
              send(OK), expect_line(RCPT_LINE), send(OK)]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        script += [*read_bdat(part, last), send(FINAL if last else OK)]
    script += [read_to_eof(QUIT)]
    return script


def test_bdat_last_chunk_of_a_mapped_file_is_released(home, tmp_path,
                                                      monkeypatch):
    """The LAST chunk, cut at the surveyed size, must not keep the file's
    mapping exported: closing it then fails in a generator's cleanup,
    which Python prints to stderr ("Exception ignored")."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    path = tmp_path / "message"
    path.write_bytes(BIG)
    out, srv = run(home, big_lockstep_script(big_chunks()), message=str(path))
    gc.collect()
    assert out == b"r\0" + K
    assert [u.exc_value for u in unraisable] == []


def test_bdat_several_chunks_lockstep(home):
    parts = big_chunks()
    assert len(parts) == 3
    out, srv = run(home, big_lockstep_script(parts), message=BIG)
    assert out == b"r\0" + K
    assert srv.received[0] == (
        EHLO + b"MAIL FROM:<a@b.example> SIZE=2525000\r\n" + RCPT_LINE +
        bdat(parts[0], False) + bdat(parts[1], False) + bdat(parts[2]) + QUIT)
    assert sum(map(len, parts)) == 2525000


def test_bdat_exact_chunk_multiple_has_no_empty_last(home):
    message = (b"x" * 63 + b"\n") * (2 * CHUNK // 64)     # exactly 2 MiB
    parts = big_chunks(message)
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"CHUNKING")), expect_line(MAIL), send(OK),
              expect_line(RCPT_LINE), send(OK),
              *read_bdat(parts[0], False), send(OK),
              *read_bdat(parts[1], True), send(FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script, message=message)
    assert out == b"r\0" + K
    assert srv.received[0].endswith(bdat(parts[1]) + QUIT)


def test_bdat_several_chunks_pipelined(home):
    """With PIPELINING the chunks go out before their replies are read."""
    parts = big_chunks()
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"CHUNKING", b"PIPELINING")),
              expect_line(MAIL), expect_line(RCPT_LINE), send(OK + OK),
              *read_bdat(parts[0], False), *read_bdat(parts[1], False),
              *read_bdat(parts[2]), send(OK + OK + FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script, message=BIG, timeoutremote=3)
    assert out == b"r\0" + K
    assert srv.received[0] == (
        EHLO + MAIL + RCPT_LINE + bdat(parts[0], False) +
        bdat(parts[1], False) + bdat(parts[2]) + QUIT)


def _refusal_script(parts, refused_at, reply, pipelining):
    caps = ehlo(b"CHUNKING", *([b"PIPELINING"] if pipelining else []))
    steps = [send(b"220 ok\r\n"), expect_line(EHLO), send(caps),
             expect_line(MAIL)]
    if pipelining:
        steps += [expect_line(RCPT_LINE), send(OK + OK)]
        for i, part in enumerate(parts):
            steps += read_bdat(part, i == len(parts) - 1)
        replies = [OK] * refused_at + [reply]
        return steps + [send(b"".join(replies)), read_to_eof()]
    steps += [send(OK), expect_line(RCPT_LINE), send(OK)]
    for i, part in enumerate(parts):
        steps += read_bdat(part, i == len(parts) - 1)
        if i == refused_at:
            return steps + [send(reply), read_to_eof()]
        steps += [send(OK)]
    raise AssertionError("refused_at beyond the last chunk")


@pytest.mark.parametrize("pipelining", [False, True],
                         ids=["lockstep", "pipelined"])
@pytest.mark.parametrize("refused_at, reply, expected", [
    (0, b"554 no\r\n", b"D" + BDAT_REJ + said(b"554 no\n")),
    (0, b"451 later\r\n", b"Z" + BDAT_REJ + said(b"451 later\n")),
    (1, b"552 too much\r\n", b"D" + BDAT_REJ + said(b"552 too much\n")),
    (1, b"4\x00x\r\n", b"Z" + BDAT_REJ + said(b"4?x\n")),
    (2, b"554 rejected\r\n", b"D" + FINAL_REJ + said(b"554 rejected\n")),
    (2, b"451 later\r\n", b"Z" + FINAL_REJ + said(b"451 later\n")),
    (2, FINAL, b"K127.0.0.1 accepted message.\n" + said(b"250 ok queued\n")),
], ids=["first-5xx", "first-4xx", "middle-5xx", "middle-garbage",
        "last-5xx", "last-4xx", "last-ok"])
def test_bdat_refused_at_each_chunk(home, pipelining, refused_at, reply,
                                    expected):
    parts = big_chunks()
    out, srv = run(home, _refusal_script(parts, refused_at, reply,
                                         pipelining),
                   message=BIG, timeoutremote=3)
    assert out == b"r\0" + expected + b"\0"
    # Every verdict writes QUIT; lock-step, nothing follows the refused
    # chunk; pipelined, every chunk was already out.
    sent = parts if pipelining else parts[:refused_at + 1]
    assert srv.received[0] == (
        EHLO + MAIL + RCPT_LINE +
        b"".join(bdat(p, i == 2) for i, p in enumerate(sent)) + QUIT)


@pytest.mark.parametrize("pipelining", [False, True])
def test_bdat_partial_final_line_is_refused_before_any_chunk(home,
                                                             pipelining):
    caps = ehlo(b"CHUNKING", *([b"PIPELINING"] if pipelining else []))
    if pipelining:
        steps = [expect_line(MAIL), expect_line(RCPT_LINE), send(OK + OK)]
    else:
        steps = [expect_line(MAIL), send(OK), expect_line(RCPT_LINE),
                 send(OK)]
    script = [send(b"220 ok\r\n"), expect_line(EHLO), send(caps), *steps,
              read_to_eof()]
    out, srv = run(home, script, message=b"Subject: t\n\nno newline",
                   timeoutremote=3)
    assert out == b"r\0" + PARTIAL
    # No BDAT at all, no LAST, and (as 1.06) no QUIT.
    assert srv.received[0] == EHLO + MAIL + RCPT_LINE


def test_bdat_partial_final_line_of_an_unsurveyed_source(home):
    """A file object has no survey: its chunks go out, never LAST."""
    caps = ehlo(b"CHUNKING")
    message = b"Subject: t\n\nno newline"
    payload = message.replace(b"\n", b"\r\n")
    script = [send(b"220 ok\r\n"), expect_line(EHLO), send(caps),
              expect_line(MAIL), send(OK), expect_line(RCPT_LINE), send(OK),
              *read_bdat(payload, False), send(OK), read_to_eof()]
    out, srv = run(home, script, message=io.BytesIO(message))
    assert out == b"r\0" + PARTIAL
    assert srv.received[0] == EHLO + MAIL + RCPT_LINE + bdat(payload, False)
    assert b"LAST" not in srv.received[0]


def test_bdat_unsurveyed_source_ends_with_bdat_0_last(home):
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"CHUNKING", b"SIZE 5")), expect_line(MAIL), send(OK),
              expect_line(RCPT_LINE), send(OK), *read_bdat(CRLF, False),
              send(OK), expect_line(b"BDAT 0 LAST\r\n"), send(FINAL),
              read_to_eof(QUIT)]
    fd = _pipe_with(MESSAGE)
    try:
        out, srv = run(home, script, message=fd)
    finally:
        os.close(fd)
    assert out == b"r\0" + K
    assert srv.received[0] == (EHLO + MAIL + RCPT_LINE + bdat(CRLF, False) +
                               b"BDAT 0 LAST\r\n" + QUIT)


# --- early BDAT: BDAT n LAST in the same write as MAIL and RCPT -------------

def early_script(message, replies, tail=None):
    payload = message.replace(b"\n", b"\r\n")
    return [send(b"220 ok\r\n"), expect_line(EHLO),
            send(ehlo(b"PIPELINING", b"CHUNKING")),
            expect_line(MAIL), expect_line(RCPT_LINE), *read_bdat(payload),
            send(replies), tail or read_to_eof(QUIT)]


def test_early_bdat_in_one_segment(home):
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"PIPELINING", b"CHUNKING", b"SIZE")),
              read_some(65536), send(OK + OK + FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script, timeoutremote=3)
    assert out == b"r\0" + K
    assert srv.records[0].chunks == [
        b"MAIL FROM:<a@b.example> SIZE=19\r\n" + RCPT_LINE + bdat(CRLF)]


@pytest.mark.parametrize("size, early", [
    (EARLY_BDAT, True), (EARLY_BDAT + 64, False)])
def test_early_bdat_threshold(home, size, early):
    """Told apart by a refused MAIL: early, the message is already out."""
    message = (b"z" * 63 + b"\n") * (size // 64)
    assert len(message) == size
    payload = message.replace(b"\n", b"\r\n")
    head = [send(b"220 ok\r\n"), expect_line(EHLO),
            send(ehlo(b"PIPELINING", b"CHUNKING")),
            expect_line(MAIL), expect_line(RCPT_LINE)]
    if early:
        script = head + [*read_bdat(payload), send(b"550 no\r\n" + NO + NO),
                         read_to_eof(QUIT)]
    else:
        script = head + [send(b"550 no\r\n" + NO), read_to_eof(QUIT)]
    out, srv = run(home, script, message=message, timeoutremote=3)
    assert out == b"D" + SENDER_REJ + said(b"550 no\n") + b"\0"
    assert srv.received[0] == (EHLO + MAIL + RCPT_LINE +
                               (bdat(payload) if early else b"") + QUIT)


@pytest.mark.parametrize("replies, expected", [
    (OK + OK + FINAL, b"r\0" + K),
    (b"451 later\r\n" + NO + NO,
     b"Z" + SENDER_REJ + said(b"451 later\n") + b"\0"),
    (OK + b"550 unknown\r\n" + b"554 no valid recipients\r\n",
     b"h127.0.0.1 does not like recipient.\n" + said(b"550 unknown\n") +
     b"\0" + GIVE_UP),
    (OK + OK + b"554 spam\r\n",
     b"r\0D" + FINAL_REJ + said(b"554 spam\n") + b"\0"),
    (OK + OK + b"452 full\r\n",
     b"r\0Z" + FINAL_REJ + said(b"452 full\n") + b"\0"),
], ids=["ok", "mail-451", "rcpt-refused", "last-554", "last-452"])
def test_early_bdat_replies(home, replies, expected):
    out, srv = run(home, early_script(MESSAGE, replies), timeoutremote=3)
    assert out == expected
    assert srv.received[0] == EHLO + MAIL + RCPT_LINE + bdat(CRLF) + QUIT


def test_early_bdat_refused_recipients_trickled(home):
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"PIPELINING", b"CHUNKING")),
              expect_line(MAIL), expect_line(RCPT_LINE),
              expect_line(b"RCPT TO:<e@f.example>\r\n"), *read_bdat(CRLF),
              trickle(OK + b"550 a\r\n550 b\r\n554 no rcpt\r\n", 0.001),
              read_to_eof(QUIT)]
    out, srv = run(home, script, recipients=[RCPT, b"e@f.example"],
                   timeoutremote=3)
    assert out == (b"h127.0.0.1 does not like recipient.\n" +
                   said(b"550 a\n") + b"\0h127.0.0.1 does not like "
                   b"recipient.\n" + said(b"550 b\n") + b"\0" + GIVE_UP)
    assert srv.received[0] == (EHLO + MAIL + RCPT_LINE +
                               b"RCPT TO:<e@f.example>\r\n" + bdat(CRLF) +
                               QUIT)


# --- drops at the new stages ------------------------------------------------
# (The full matrix of faults x ESMTP stages is in test_faults.py.)

def test_drop_waiting_for_the_last_reply_is_a_possible_duplicate(home):
    script = early_script(MESSAGE, OK + OK, tail=read_to_eof(b""))
    out, srv = run(home, script, timeoutremote=3)
    assert out == b"r\0" + DUP


# --- against aiosmtpd ---------------------------------------------------------

def tee_deliver(home, srv, message, sender=SENDER, recipients=(RCPT,)):
    (home / "control" / "smtproutes").write_bytes(
        b":127.0.0.1:%d\n" % srv.port)
    return deliver(b"example.org", sender, list(recipients), message,
                   home=str(home)).render()


def test_aiosmtpd_end_to_end(home):
    message = DOTTY + b"8-bit \xc3\xa9\xff body\n" + b"x" * 5000 + b"\n"
    with TeeSMTPServer(data_size_limit=10 << 20,
                       final_reply="250 ok 1 queued") as srv:
        out = tee_deliver(home, srv, message)
        msg, = srv.wait_messages(1)
        srv.wait_closed(1)
        raw = srv.raw[0]
    assert out == (b"r\0K127.0.0.1 accepted message.\n" +
                   said(b"250 ok 1 queued\n") + b"\0")
    crlf = message.replace(b"\n", b"\r\n")
    stuffed = crlf.replace(b"\r\n.", b"\r\n..")
    size = len(stuffed)
    assert raw == (EHLO + b"MAIL FROM:<a@b.example> SIZE=%d\r\n" % size +
                   RCPT_LINE + b"DATA\r\n" + stuffed + b".\r\n" + QUIT)
    # What aiosmtpd stored is the input with CRLF lines, byte for byte.
    assert msg.content == crlf
    assert (msg.mail_from, msg.rcpt_tos) == ("a@b.example", ["c@d.example"])


def test_aiosmtpd_size_limit(home):
    with TeeSMTPServer(data_size_limit=DATA_SIZE - 1) as srv:
        out = tee_deliver(home, srv, MESSAGE)
        srv.wait_closed(1)
        raw = srv.raw[0]
        assert srv.messages == []
    assert out == size_d(DATA_SIZE, DATA_SIZE - 1)
    assert raw == EHLO + QUIT


def test_aiosmtpd_size_limit_equal(home):
    with TeeSMTPServer(data_size_limit=DATA_SIZE) as srv:
        out = tee_deliver(home, srv, MESSAGE)
        msg, = srv.wait_messages(1)
    assert out.startswith(b"r\0K")
    assert msg.content == CRLF


def test_aiosmtpd_smtputf8_recipient(home):
    with TeeSMTPServer() as srv:
        out = tee_deliver(home, srv, MESSAGE, recipients=[UTF8_ADDR])
        msg, = srv.wait_messages(1)
        srv.wait_closed(1)
        raw = srv.raw[0]
    assert out.startswith(b"r\0K")
    assert raw == (EHLO + b"MAIL FROM:<a@b.example> SMTPUTF8\r\n" +
                   b"RCPT TO:<%s>\r\n" % UTF8_WIRE + b"DATA\r\n" + STUFFED +
                   b".\r\n" + QUIT)
    # (aiosmtpd parses the address: the quotes are gone.)
    assert msg.rcpt_tos == [UTF8_ADDR.decode("utf-8")]


def test_aiosmtpd_without_smtputf8(home):
    with TeeSMTPServer(enable_SMTPUTF8=False) as srv:
        out = tee_deliver(home, srv, MESSAGE, sender=UTF8_ADDR)
        srv.wait_closed(1)
        raw = srv.raw[0]
    assert out == UTF8_D
    assert raw == EHLO + QUIT


# --- control/noesmtp ------------------------------------------------------

def test_noesmtp_is_106s_wire(home):
    (home / "control" / "noesmtp").write_bytes(b"yes\n")
    script = [send(b"220 ok\r\n"), expect_line(HELO),
              send(ehlo(b"PIPELINING", b"CHUNKING", b"SIZE 1")),
              expect_line(MAIL), send(OK), expect_line(RCPT_LINE), send(OK),
              expect_line(b"DATA\r\n"), send(GO),
              expect_data(STUFFED + b".\r\n"), send(FINAL), read_to_eof(QUIT)]
    out, srv = run(home, script, sender=SENDER)
    assert out == b"r\0" + K
    assert srv.received[0] == (HELO + MAIL + RCPT_LINE + b"DATA\r\n" +
                               STUFFED + b".\r\n" + QUIT)


def test_noesmtp_with_8bit_address_still_sends(home):
    (home / "control" / "noesmtp").write_bytes(b"")
    out, srv = run(home, [send(b"220 ok\r\n"), expect_line(HELO), send(OK),
                          expect_line(), send(OK), expect_line(), send(OK),
                          expect_line(b"DATA\r\n"), send(GO), expect_data(),
                          send(FINAL), read_to_eof(QUIT)],
                   sender=UTF8_ADDR)
    assert out == b"r\0" + K
    assert srv.received[0].startswith(HELO + b"MAIL FROM:<%s>\r\n" % UTF8_WIRE)


# --- long EHLO replies -------------------------------------------------------

def test_size_limit_past_5000_bytes_of_ehlo_text_is_not_truncated(home):
    # A report keeps 5000 bytes of reply text; EHLO keywords need more.
    filler = b"250-X-" + b"a" * 4974 + b"\r\n"      # 4981 bytes stored
    caps = b"250-mx\r\n" + filler + b"250-SIZE 10000000\r\n250 HELP\r\n"
    message = b"Subject: t\n\n" + b"x" * 2000 + b"\n"
    out, srv = run(home, lockstep(caps), message=message)
    assert out == b"r\0" + K
    assert srv.received[0].startswith(
        EHLO + b"MAIL FROM:<a@b.example> SIZE=2016\r\n")


def test_keyword_cut_at_the_reply_text_cap_is_left_out(home):
    # 65536 bytes of text are kept; a SIZE line cut there must not become a
    # smaller limit (the message would bounce), so that line is ignored.
    filler = b"250-X-" + b"a" * 65512 + b"\r\n"
    # Stored (CR dropped): 65526 bytes, then "250-SIZE 1" fills the cap.
    assert len(b"250-mx\n" + filler.replace(b"\r", b"")) == 65536 - 10
    caps = b"250-mx\r\n" + filler + b"250-SIZE 10000000\r\n250 HELP\r\n"
    out, srv = run(home, lockstep(caps))
    assert out == b"r\0" + K
    assert srv.received[0].startswith(EHLO + MAIL)   # no SIZE= at all
