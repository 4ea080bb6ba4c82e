"""The SMTP dialogue against a scripted server (reference sections 11-14).

Every delivery goes through the public ``deliver()`` API with an
``smtproutes`` default route to the scripted server's loopback port, so
no DNS is involved.
"""

import pytest

from qmailremote import deliver
from smtpserver import (ScriptedServer, close, expect_data, expect_line,
                        read_to_eof, reset, send, smtp_script, stall,
                        stop_reading)

IP = b"127.0.0.1"


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    # netqmail 1.06's dialogue: these tests pin its bytes.
    (tmp_path / "control" / "noesmtp").write_bytes(b"")
    return tmp_path


def run(home, script, message=b"Subject: t\n\nhi\n", recipients=(b"c@d.example",),
        sender=b"a@b.example", timeoutremote=None, connections=None,
        finishes=True):
    """Deliver through a ScriptedServer; return (stdout bytes, server).

    A script that stalls never finishes on its own (*finishes* False): the
    server is then stopped as soon as the delivery returns.
    """
    with ScriptedServer(script) as srv:
        (home / "control" / "smtproutes").write_bytes(
            b":127.0.0.1:%d\n" % srv.port)
        if timeoutremote is not None:
            (home / "control" / "timeoutremote").write_bytes(
                b"%d\n" % timeoutremote)
        result = deliver(b"example.org", sender, list(recipients), message,
                         home=str(home))
        if finishes:
            srv.wait_done(connections=connections)
    return result.render(), srv


def said(text):
    return b"Remote host said: " + text


def test_verified_transcript(home):
    (home / "control" / "helohost").write_bytes(b"me.example\n")
    out, srv = run(home, smtp_script(
        greeting=b"220 mx.example ESMTP\r\n", helo=b"250 mx.example\r\n",
        data=b"354 go ahead\r\n", final=b"250 ok 1234 queued\r\n"))
    assert out == (b"r\0K127.0.0.1 accepted message.\n" +
                   said(b"250 ok 1234 queued\n") + b"\0")
    assert srv.received[0] == (
        b"HELO me.example\r\nMAIL FROM:<a@b.example>\r\n"
        b"RCPT TO:<c@d.example>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n"
        b"QUIT\r\n")


def stage_script(stage, reply):
    """A dialogue whose reply at *stage* is *reply*, then QUIT and EOF."""
    replies = dict(greeting=b"220 ok\r\n", helo=b"250 ok\r\n",
                   mail=b"250 ok\r\n", rcpt=b"250 ok\r\n", data=b"354 go\r\n",
                   final=b"250 ok queued\r\n")
    replies[stage] = reply
    order = ["greeting", "helo", "mail", "rcpt", "data", "final"]
    steps = [send(replies["greeting"])]
    for name in order[1:order.index(stage) + 1]:
        steps.append(expect_data() if name == "final" else expect_line())
        steps.append(send(replies[name]))
    steps.append(read_to_eof())
    return steps


Z_GREETING = b"ZConnected to 127.0.0.1 but greeting failed.\n"
Z_HELO = b"ZConnected to 127.0.0.1 but my name was rejected.\n"
MAIL = b"Connected to 127.0.0.1 but sender was rejected.\n"
DATA = b"127.0.0.1 failed on DATA command.\n"
FINAL = b"127.0.0.1 failed after I sent the message.\n"
K = b"K127.0.0.1 accepted message.\n"


@pytest.mark.parametrize("stage, reply, expected", [
    # Greeting: exactly 220 (a 4th byte other than '-' still ends the code).
    ("greeting", b"221 bye\r\n", Z_GREETING + said(b"221 bye\n")),
    ("greeting", b"421 busy\r\n", Z_GREETING + said(b"421 busy\n")),
    ("greeting", b"554 no\r\n", Z_GREETING + said(b"554 no\n")),
    ("greeting", b"abc\r\n", Z_GREETING + said(b"abc\n")),
    ("greeting", b"21:\r\n", Z_GREETING + said(b"21:\n")),   # 220 in 1.06
    ("greeting", b"554-a\r\n220 c\r\n", Z_GREETING + said(b"554-a\n220 c\n")),
    # HELO: exactly 250.
    ("helo", b"251 ok\r\n", Z_HELO + said(b"251 ok\n")),
    ("helo", b"550 no\r\n", Z_HELO + said(b"550 no\n")),
    # MAIL: 5xx D, 4xx Z, below 400 accepted, non-digits Z (deviation 2).
    ("mail", b"550 no\r\n", b"D" + MAIL + said(b"550 no\n")),
    ("mail", b"451 later\r\n", b"Z" + MAIL + said(b"451 later\n")),
    ("mail", b"abc\r\n", b"Z" + MAIL + said(b"abc\n")),
    ("mail", b"4x9\r\n", b"Z" + MAIL + said(b"4x9\n")),
    # RCPT: every recipient rejected gives up.
    ("rcpt", b"550 no such user\r\n",
     b"h127.0.0.1 does not like recipient.\n" + said(b"550 no such user\n") +
     b"\0DGiving up on 127.0.0.1.\n"),
    ("rcpt", b"450 try later\r\n",
     b"s127.0.0.1 does not like recipient.\n" + said(b"450 try later\n") +
     b"\0DGiving up on 127.0.0.1.\n"),
    ("rcpt", b"abc\r\n",
     b"s127.0.0.1 does not like recipient.\n" + said(b"abc\n") +
     b"\0DGiving up on 127.0.0.1.\n"),
    # DATA.
    ("data", b"554 no\r\n", b"r\0D" + DATA + said(b"554 no\n")),
    ("data", b"451 later\r\n", b"r\0Z" + DATA + said(b"451 later\n")),
    ("data", b" 35\r\n", b"r\0Z" + DATA + said(b" 35\n")),
    # Final reply.
    ("final", b"554 rejected\r\n", b"r\0D" + FINAL + said(b"554 rejected\n")),
    ("final", b"451 later\r\n", b"r\0Z" + FINAL + said(b"451 later\n")),
    ("final", b"abc\r\n", b"r\0Z" + FINAL + said(b"abc\n")),
    ("final", b"25\r\n", b"r\0Z" + FINAL + said(b"25\n")),
    ("final", b" 25\r\n", b"r\0Z" + FINAL + said(b" 25\n")),
    ("final", b"999 odd\r\n", b"r\0D" + FINAL + said(b"999 odd\n")),
    ("final", b"000 odd\r\n", b"r\0" + K + said(b"000 odd\n")),
    ("final", b"250-first\r\n550 second\r\n",
     b"r\0" + K + said(b"250-first\n550 second\n")),
])
def test_stage_replies(home, stage, reply, expected):
    out, srv = run(home, stage_script(stage, reply))
    assert out == expected + b"\0"
    # Every verdict ends with QUIT written (and never awaited).
    assert srv.received[0].endswith(b"QUIT\r\n")


@pytest.mark.parametrize("reply", [b"199 odd\r\n", b"354 odd\r\n"])
def test_mail_below_400_is_accepted(home, reply):
    out, _ = run(home, smtp_script(mail=reply))
    assert out == b"r\0" + K + said(b"250 ok queued\n") + b"\0"


def test_non_digit_mail_code_below_400_is_temporary(home):
    out, _ = run(home, stage_script("mail", b"2:0 odd\r\n"))
    assert out == b"Z" + MAIL + said(b"2:0 odd\n") + b"\0"


@pytest.mark.parametrize("reply", [b"199 x\r\n", b"354 x\r\n", b"250 x\r\n"])
def test_rcpt_below_400_is_r(home, reply):
    out, _ = run(home, smtp_script(rcpts=[reply]))
    assert out.startswith(b"r\0K")


def test_data_250_starts_the_body(home):
    out, srv = run(home, smtp_script(data=b"250 go\r\n"))
    assert out.startswith(b"r\0K")
    assert srv.records[0].data == [b"Subject: t\r\n\r\nhi\r\n.\r\n"]


def test_mixed_recipients(home):
    script = smtp_script(rcpts=[b"250 ok\r\n", b"550 no\r\n", b"451 busy\r\n"])
    out, srv = run(home, script, recipients=[b"a@x", b"b@x", b"c@x"])
    assert out == (b"r\0h127.0.0.1 does not like recipient.\n" +
                   said(b"550 no\n") + b"\0s127.0.0.1 does not like "
                   b"recipient.\n" + said(b"451 busy\n") + b"\0" + K +
                   said(b"250 ok queued\n") + b"\0")
    assert srv.records[0].lines[2:5] == [b"RCPT TO:<a@x>\r\n",
                                         b"RCPT TO:<b@x>\r\n",
                                         b"RCPT TO:<c@x>\r\n"]


def test_short_continuation_puts_parser_out_of_step(home):
    script = [send(b"220-a\r\nxy\r\n220 ok\r\n"), expect_line(), read_to_eof()]
    out, _ = run(home, script)
    assert out == Z_HELO + said(b"220 ok\n") + b"\0"


def test_valid_greeting_with_fourth_digit(home):
    out, _ = run(home, smtp_script(greeting=b"2200 hi\r\n"))
    assert out.startswith(b"r\0K")


def test_reply_text_is_capped_at_5000_bytes(home):
    long_reply = b"554 " + b"x" * 6000 + b"\r\n"
    out, _ = run(home, stage_script("final", long_reply))
    text = (b"554 " + b"x" * 6000)[:5000]
    assert out == b"r\0D" + FINAL + said(text) + b"\0"


def test_reply_printing_drops_cr_and_shows_nul(home):
    out, _ = run(home, stage_script("final", b"250 a\rb\0c\xe9\x01d\r\r\n"))
    assert out == b"r\0" + K + said(b"250 ab?c\xe9\x01d\n") + b"\0"


DIED = b"ZConnected to 127.0.0.1 but connection died. (#4.4.2)\n\0"
NOCONN = (b"ZSorry, I wasn't able to establish an SMTP connection. "
          b"(#4.4.1)\n\0")
DUP = (b"ZConnected to 127.0.0.1 but connection died. Possible duplicate! "
       b"(#4.4.2)\n\0")


@pytest.mark.parametrize("where, expected", [
    (0, DIED),                     # greeting
    (1, DIED),                     # HELO reply
    (2, DIED),                     # MAIL reply
    (3, DIED),                     # 1st RCPT reply: no recipient report
    (4, b"r\0" + DIED),            # 2nd RCPT reply
    (5, b"r\0r\0" + DIED),         # DATA reply
    (6, b"r\0r\0" + DUP),          # final reply
])
@pytest.mark.parametrize("fault", ["close", "reset"])
def test_drops(home, where, expected, fault):
    script = smtp_script(rcpts=[b"250 ok\r\n", b"250 ok\r\n"])
    # smtp_script: send greeting, then (expect_line, send) pairs, then
    # expect_data, send final.  Cut it where the reply would be sent.
    cut = 0 if where == 0 else 2 * where
    if where == 6:
        cut = 12  # after expect_data
    steps = script[:cut] + [close() if fault == "close" else reset()]
    out, _ = run(home, steps, recipients=[b"a@x", b"b@x"])
    if where == 0 and fault == "reset" and out == NOCONN:
        return  # the RST beat connect()'s confirmation: netqmail races too
    assert out == expected


@pytest.mark.parametrize("where, expected", [
    (0, DIED), (4, b"r\0" + DIED), (5, b"r\0r\0" + DIED), (6, b"r\0r\0" + DUP),
])
def test_silence_past_timeoutremote(home, where, expected):
    script = smtp_script(rcpts=[b"250 ok\r\n", b"250 ok\r\n"])
    cut = 12 if where == 6 else 2 * where
    out, _ = run(home, script[:cut] + [stall()], recipients=[b"a@x", b"b@x"],
                 timeoutremote=1, finishes=False)
    assert out == expected


def test_server_that_stops_reading_body_is_a_drop_without_warning(home):
    script = smtp_script(data=b"354 go\r\n", final=None)[:-1] + [stop_reading()]
    message = (b"x" * 75 + b"\n") * (20 * 1024 * 1024 // 76)
    out, _ = run(home, script, message=message, timeoutremote=1,
                 finishes=False)
    assert out == b"r\0" + DIED


def test_reset_mid_body_is_a_drop_without_warning(home):
    script = smtp_script(final=None)[:-1] + [reset()]
    message = (b"x" * 75 + b"\n") * (20 * 1024 * 1024 // 76)
    out, _ = run(home, script, message=message)
    assert out == b"r\0" + DIED


def test_reset_after_final_reply_keeps_verdict(home):
    # Deviation 3: a failed QUIT write does not change K.
    script = smtp_script(quit=None) + [reset()]
    out, _ = run(home, script)
    assert out == b"r\0" + K + said(b"250 ok queued\n") + b"\0"


def test_timeoutremote_zero_drops_when_reply_is_not_there(home):
    out, _ = run(home, [stall()], timeoutremote=0, finishes=False)
    assert out == DIED


@pytest.mark.parametrize("value", [b"4294967295", b"2147483648"])
def test_negative_timeoutremote_drops(home, value):
    (home / "control" / "timeoutremote").write_bytes(value + b"\n")
    with ScriptedServer([send(b"220 ok\r\n"), read_to_eof()]) as srv:
        (home / "control" / "smtproutes").write_bytes(
            b":127.0.0.1:%d\n" % srv.port)
        out = deliver(b"example.org", b"a@b", [b"c@d"], b"",
                      home=str(home)).render()
        srv.wait_done()
    assert out == DIED


@pytest.mark.parametrize("message, wire", [
    (b"", b".\r\n"),
    (b"\n", b"\r\n.\r\n"),
    (b"x\n\n\n", b"x\r\n\r\n\r\n.\r\n"),
    (b".\n..x\n.\n", b"..\r\n...x\r\n..\r\n.\r\n"),
    (b".\r\n", b"..\r\r\n.\r\n"),
    (b"a\r.\r\nRCPT TO:<evil@x>\r\n", b"a\r.\r\r\nRCPT TO:<evil@x>\r\r\n.\r\n"),
    (b"a\0b\n", b"a\0b\r\n.\r\n"),
    (b"x" * 5000 + b"\n", b"x" * 5000 + b"\r\n.\r\n"),
])
def test_body_on_the_wire(home, message, wire):
    out, srv = run(home, smtp_script(), message=message)
    assert out.startswith(b"r\0K")
    assert srv.records[0].data == [wire]


PARTIAL = (b"r\0DSMTP cannot transfer messages with partial final lines. "
           b"(#5.6.2)\n\0")


@pytest.mark.parametrize("message, sent", [
    (b"abc", b""), (b"abc\r", b""), (b"\r", b""), (b".", b""), (b"a\n.", b""),
    (b"y" * 3000, b"y" * 2048),
])
def test_partial_final_line(home, message, sent):
    script = smtp_script(final=None)[:-1] + [read_to_eof()]
    out, srv = run(home, script, message=message)
    assert out == PARTIAL
    body = srv.received[0].split(b"DATA\r\n", 1)[1]
    assert body == sent  # no terminator, no QUIT


class Unreadable:
    def readinto(self, view):
        raise OSError(5, "Input/output error")


def test_unreadable_message(home):
    script = smtp_script(final=None)[:-1] + [read_to_eof()]
    out, srv = run(home, script, message=Unreadable())
    assert out == b"r\0ZUnable to read message. (#4.3.0)\n\0"
    assert srv.received[0].endswith(b"DATA\r\n")


def test_unreadable_message_not_noticed_when_data_rejected(home):
    out, _ = run(home, stage_script("data", b"554 no\r\n"),
                 message=Unreadable())
    assert out == b"r\0D" + DATA + said(b"554 no\n") + b"\0"


def test_address_quoting_on_the_wire(home):
    out, srv = run(home, smtp_script(), sender=b"a b@x",
                   recipients=[b'q"t@y'])
    assert srv.records[0].lines[1:3] == [b'MAIL FROM:<"a b"@x>\r\n',
                                         b'RCPT TO:<"q\\"t"@y>\r\n']


def test_helohost_bytes_sent_raw(home):
    (home / "control" / "helohost").write_bytes(b"hh.example\r\n")
    _, srv = run(home, smtp_script())
    assert srv.records[0].lines[0] == b"HELO hh.example\r\r\n"


def test_only_the_first_connection_is_used(home):
    # Any connected server gets the whole dialogue; there is no retry.
    out, srv = run(home, [send(b"421 busy\r\n"), read_to_eof()])
    assert srv.connections == 1
    assert out == Z_GREETING + said(b"421 busy\n") + b"\0"
