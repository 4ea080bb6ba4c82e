"""Report texts and rendering (reference section 3)."""

import pytest

from qmailremote import report
from qmailremote.report import Report, Result


@pytest.mark.parametrize("host, shown", [
    (b"", b"Sorry, I couldn't find any host named . (#5.1.2)\n"),
    (b"nx.example.", b"Sorry, I couldn't find any host named nx.example.. "
                     b"(#5.1.2)\n"),
    (b"n x\x7f\xc3\xa9.example", b"Sorry, I couldn't find any host named "
                                 b"n?x???.example. (#5.1.2)\n"),
])
def test_perm_dns_outsafe(host, shown):
    assert report.perm_dns(host) == Report("D", shown)


def test_rendering_example():
    result = Result([Report("r")], report.stage_report(
        "K", b"", b"127.0.0.1", b" accepted message",
        b"250 ok 1234 queued\n"))
    assert result.render() == (b"r\0K127.0.0.1 accepted message.\n"
                               b"Remote host said: 250 ok 1234 queued\n\0")
    assert result.accepted


def test_smtptext_nul_printed_as_question_mark():
    said = report.smtptext_said(b"250 ab\0c\xe9\x01d\n")
    assert said == b"Remote host said: 250 ab?c\xe9\x01d\n"


def test_empty_smtptext_prints_nothing():
    assert report.stage_report("D", b"Giving up on ", b"1.2.3.4", b"",
                               b"").render() == b"DGiving up on 1.2.3.4.\n\0"


@pytest.mark.parametrize("code, digits, letter", [
    (250, True, "r"), (199, True, "r"), (354, True, "r"), (0, True, "r"),
    (450, True, "s"), (550, True, "h"), (999, True, "h"),
    (5451, False, "s"), (215, False, "s"), (490, False, "s"),
])
def test_recipient_letters(code, digits, letter):
    got = report.recipient_report(code, digits, b"10.0.0.1", b"x\n")
    assert got.letter == letter
    if letter != "r":
        assert got.text == (b"10.0.0.1 does not like recipient.\n"
                            b"Remote host said: x\n")
    else:
        assert got.text == b""


@pytest.mark.parametrize("critical, text", [
    (False, b"Connected to 1.2.3.4 but connection died. (#4.4.2)\n"),
    (True, b"Connected to 1.2.3.4 but connection died. Possible duplicate! "
           b"(#4.4.2)\n"),
])
def test_dropped(critical, text):
    assert report.dropped(b"1.2.3.4", critical) == Report("Z", text)


def test_fixed_texts_end_in_newline_and_have_codes():
    for name in dir(report):
        value = getattr(report, name)
        if isinstance(value, Report):
            assert value.text.endswith(b")\n") and b"(#" in value.text, name
            assert value.letter in "ZD", name


@pytest.mark.parametrize("letter, temporary, permanent", [
    ("r", False, False), ("K", False, False), ("s", True, False),
    ("Z", True, False), ("h", False, True), ("D", False, True),
])
def test_report_kinds(letter, temporary, permanent):
    r = Report(letter, b"x\n")
    assert (r.temporary, r.permanent) == (temporary, permanent)
