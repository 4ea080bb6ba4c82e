"""Source-address binding (qmailremote/binding.py; issue 11, part 6).

``control/domainbindings`` (by envelope sender), ``control/outgoingip``
and ``control/helohostbyip``, read in the ESMTP profile only.  The first
sections test the parser and the lookup directly; the rest deliver
through the public ``deliver()`` API, with an ``smtproutes`` default
route to a ScriptedServer on 127.0.0.1, and check the peer address the
server saw.  On Linux every 127.x address works on ``lo`` without any
configuration, so binding 127.0.0.2 needs no network namespace; where it
does not work the delivery tests skip, saying why.  192.0.2.1 (TEST-NET-1)
is the address this host cannot bind.
"""

import os
import socket
import time

import pytest

from qmailremote import binding, deliver
from qmailremote.binding import (Source, lookup_binding, parse_ipv4,
                                 select_source, sender_keys)
from qmailremote.control import open_home
from qmailremote.report import (TEMP_CONTROL, Failure, Report, temp_badip,
                                temp_bind)
from qmailremote.session import connect
from smtpserver import (ScriptedServer, close, expect_data, expect_line,
                        read_to_eof, send, smtp_script)

SENDER = b"a@b.example"
RCPT = b"c@d.example"
MESSAGE = b"Subject: t\n\nhi\n"
EHLO = b"EHLO me.example\r\n"
HELO = b"HELO me.example\r\n"
K = b"r\0K127.0.0.1 accepted message.\nRemote host said: 250 ok queued\n\0"
UNBINDABLE = "192.0.2.1"


def _bindable(address):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
    except OSError:
        return False
    finally:
        sock.close()
    return True


needs_127_0_0_2 = pytest.mark.skipif(
    not _bindable("127.0.0.2"),
    reason="this host cannot bind 127.0.0.2 (not Linux's 127/8 on lo)")
needs_unbindable = pytest.mark.skipif(
    _bindable(UNBINDABLE), reason=f"{UNBINDABLE} is an address of this host")


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    # Bounds a wrong wait (a failing test) to seconds; no test waits it out.
    (tmp_path / "control" / "timeoutremote").write_bytes(b"10\n")
    return tmp_path


def put(home, name, data=b""):
    (home / "control" / name).write_bytes(data)


def unreadable(home, name):
    """control/<name> exists and cannot be read (a directory, even as
    root): a read is TEMP_CONTROL, a file never read changes nothing."""
    (home / "control" / name).mkdir()


def select(home, sender=SENDER):
    fd = open_home(str(home))
    try:
        return select_source(fd, sender)
    finally:
        os.close(fd)


def failure_of(home, sender=SENDER):
    with pytest.raises(Failure) as info:
        select(home, sender)
    return info.value.report


def ip(text):
    return socket.inet_aton(text)


# --- the dotted quad ---------------------------------------------------------

@pytest.mark.parametrize("text", [b"0.0.0.0", b"1.2.3.4", b"127.0.0.2",
                                  b"255.255.255.255", b"10.0.100.9"])
def test_parse_ipv4_accepts_dotted_quads(text):
    assert parse_ipv4(text) == socket.inet_aton(text.decode())


@pytest.mark.parametrize("text", [
    b"", b"1.2.3", b"1.2.3.4x", b"300.1.1.1", b"1.2.3.256", b"mail.example",
    b"1.2.3.4.5", b"1..3.4", b".1.2.3", b"1.2.3.", b" 1.2.3.4", b"1.2.3.4 ",
    b"1.2.3.4\r", b"+1.2.3.4", b"-1.2.3.4", b"01.2.3.4", b"1.2.3.010",
    b"0x7f.0.0.1", b"1234.1.1.1", b"2130706433", b"::1", b"1.2.3.4:25",
    "1.2.3.\u0664".encode(), b"\xd9\xa4.1.1.1",
])
def test_parse_ipv4_is_strict(text):
    assert parse_ipv4(text) is None


# --- the domainbindings lookup -----------------------------------------------

def test_sender_keys_order():
    assert sender_keys(b"a@mail.b.example") == [
        b"a@mail.b.example", b"mail.b.example", b".b.example", b".example",
        b""]


def test_sender_keys_domain_is_after_the_last_at():
    assert sender_keys(b"x@y@b.example") == [
        b"x@y@b.example", b"b.example", b".example", b""]


def test_sender_keys_without_at_or_empty():
    assert sender_keys(b"postmaster") == [b"postmaster", b""]
    assert sender_keys(b"")[-1] == b""


ALL_FORMS = [b":10.0.0.4", b".example:10.0.0.3", b"b.example:10.0.0.2",
             b"a@b.example:10.0.0.1"]


@pytest.mark.parametrize("sender,expected", [
    (b"a@b.example", b"10.0.0.1"),        # the whole address first
    (b"z@b.example", b"10.0.0.2"),        # then the domain
    (b"a@c.b.example", b"10.0.0.3"),      # .example: a suffix, not the domain
    (b"a@other.test", b"10.0.0.4"),       # the empty key: every sender
    (b"", b"10.0.0.4"),                   # the null sender too
])
def test_lookup_key_forms_and_precedence(sender, expected):
    assert lookup_binding(ALL_FORMS, sender) == expected
    # File order does not matter, only the key form.
    assert lookup_binding(ALL_FORMS[::-1], sender) == expected


def test_lookup_suffixes_longest_first():
    entries = [b".example:10.0.0.2", b".b.example:10.0.0.1"]
    assert lookup_binding(entries, b"a@c.b.example") == b"10.0.0.1"
    assert lookup_binding(entries, b"a@c.d.example") == b"10.0.0.2"


def test_lookup_dot_domain_does_not_match_the_domain_itself():
    assert lookup_binding([b".b.example:10.0.0.1"], b"a@b.example") is None


def test_lookup_is_case_insensitive():
    entries = [b"A@B.Example:10.0.0.1", b".EXAMPLE:10.0.0.2"]
    assert lookup_binding(entries, b"a@b.EXAMPLE") == b"10.0.0.1"
    assert lookup_binding(entries, b"x@Y.example") == b"10.0.0.2"


def test_lookup_later_duplicate_wins():
    entries = [b"b.example:10.0.0.1", b"B.EXAMPLE:10.0.0.2"]
    assert lookup_binding(entries, b"a@b.example") == b"10.0.0.2"


def test_lookup_no_match_and_lines_without_colon():
    assert lookup_binding([b"b.example", b"c.example:10.0.0.1"],
                          b"a@b.example") is None
    assert lookup_binding([], b"a@b.example") is None


def test_lookup_empty_value_is_a_match():
    assert lookup_binding([b":10.0.0.1", b"b.example:"],
                          b"a@b.example") == b""


# --- select_source: the three files ------------------------------------------

def test_no_files_no_binding(home):
    assert select(home) is None


@pytest.mark.parametrize("data", [b"", b"\n", b"0.0.0.0\n", b"  \t\n",
                                  b"0.0.0.0"])
def test_outgoingip_system_picks(home, data):
    put(home, "outgoingip", data)
    assert select(home) is None


def test_outgoingip_first_line_only(home):
    put(home, "outgoingip", b"10.0.0.1 \t\n10.0.0.2\n")
    assert select(home) == Source(ip("10.0.0.1"), b"control/outgoingip")


def test_outgoingip_any_sender(home):
    put(home, "outgoingip", b"10.0.0.1\n")
    for sender in (b"", b"x@y.z", b"postmaster"):
        assert select(home, sender).text == b"10.0.0.1"


@pytest.mark.parametrize("data", [b"1.2.3\n", b"1.2.3.4x\n", b"300.1.1.1\n",
                                  b"mail.example\n", b"#10.0.0.1\n",
                                  b"10.0.0.1\r\n"])
def test_outgoingip_bad_address(home, data):
    put(home, "outgoingip", data)
    report = failure_of(home)
    assert report == temp_badip(b"control/outgoingip")
    assert report.render() == \
        b"Zinvalid ipaddr in control/outgoingip (#4.3.0)\n\0"


def test_domainbindings_wins_over_outgoingip(home):
    put(home, "domainbindings", b"# comment\nb.example:10.0.0.2\n")
    put(home, "outgoingip", b"10.0.0.1\n")
    assert select(home) == Source(ip("10.0.0.2"), b"control/domainbindings")
    assert select(home, b"a@other.example") == \
        Source(ip("10.0.0.1"), b"control/outgoingip")


def test_domainbindings_match_does_not_read_outgoingip(home):
    put(home, "domainbindings", b":10.0.0.2\n")
    unreadable(home, "outgoingip")
    assert select(home).text == b"10.0.0.2"


@pytest.mark.parametrize("value", [b"0.0.0.0", b""])
def test_domainbindings_system_picks_overrides_outgoingip(home, value):
    put(home, "domainbindings", b"b.example:" + value + b"\n")
    put(home, "outgoingip", b"10.0.0.1\n")
    assert select(home) is None
    assert select(home, b"a@c.example").text == b"10.0.0.1"


def test_domainbindings_bad_address_names_the_file(home):
    put(home, "domainbindings", b"a@b.example:10.0.0.256\n")
    put(home, "outgoingip", b"10.0.0.1\n")
    assert failure_of(home).render() == \
        b"Zinvalid ipaddr in control/domainbindings (#4.3.0)\n\0"


def test_domainbindings_bad_line_for_another_sender_is_not_used(home):
    put(home, "domainbindings", b"c.example:bogus\nb.example:10.0.0.2\n")
    assert select(home).text == b"10.0.0.2"


def test_helohostbyip_names_the_bound_address(home):
    put(home, "outgoingip", b"10.0.0.1\n")
    put(home, "helohostbyip",
        b"10.0.0.2:two.example\n10.0.0.1:one.example\n")
    assert select(home) == Source(ip("10.0.0.1"), b"control/outgoingip",
                                  b"one.example")


def test_helohostbyip_later_duplicate_wins_and_empty_is_no_name(home):
    put(home, "outgoingip", b"10.0.0.1\n")
    put(home, "helohostbyip", b"10.0.0.1:old.example\n10.0.0.1:new.example\n")
    assert select(home).helohost == b"new.example"
    put(home, "helohostbyip", b"10.0.0.1:\n")
    assert select(home).helohost is None
    put(home, "helohostbyip", b"10.0.0.3:other.example\n")
    assert select(home).helohost is None


def test_helohostbyip_not_read_without_a_bound_address(home):
    unreadable(home, "helohostbyip")
    assert select(home) is None
    put(home, "outgoingip", b"0.0.0.0\n")
    assert select(home) is None


@pytest.mark.parametrize("name", ["domainbindings", "outgoingip",
                                  "helohostbyip"])
def test_unreadable_file_is_temp_control(home, name):
    if name == "helohostbyip":
        put(home, "outgoingip", b"10.0.0.1\n")   # so that it is read
    unreadable(home, name)
    assert failure_of(home) == TEMP_CONTROL


def test_source_text_and_reports():
    source = Source(ip("192.0.2.1"), b"control/domainbindings")
    assert source.text == b"192.0.2.1"
    assert source.unbindable() == temp_bind(b"192.0.2.1",
                                            b"control/domainbindings")
    assert source.unbindable().render() == (
        b"ZUnable to bind to 192.0.2.1 from control/domainbindings. "
        b"(#4.3.0)\n\0")
    assert temp_badip(b"control/outgoingip") == Report(
        "Z", b"invalid ipaddr in control/outgoingip (#4.3.0)\n")


# --- connect() ---------------------------------------------------------------

@needs_127_0_0_2
def test_connect_binds_the_source():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        source = Source(ip("127.0.0.2"), b"control/outgoingip")
        sock, timed_out = connect(ip("127.0.0.1"), port, 5, source)
        assert timed_out is None
        try:
            peer, _ = listener.accept()
            with peer:
                assert peer.getpeername() == sock.getsockname()
                assert peer.getpeername()[0] == "127.0.0.2"
        finally:
            sock.close()


@needs_unbindable
def test_connect_bind_failure_raises_and_closes_the_socket():
    before = len(os.listdir("/proc/self/fd"))
    source = Source(ip(UNBINDABLE), b"control/outgoingip")
    with pytest.raises(Failure) as info:
        connect(ip("127.0.0.1"), 9, 5, source)
    assert info.value.report == temp_bind(b"192.0.2.1", b"control/outgoingip")
    assert len(os.listdir("/proc/self/fd")) == before


@needs_127_0_0_2
@pytest.mark.skipif(binding._BIND_NO_PORT is None,
                    reason="no IP_BIND_ADDRESS_NO_PORT on this system")
def test_bind_leaves_the_port_to_connect():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        Source(ip("127.0.0.2"), b"control/outgoingip").bind(sock)
        assert sock.getsockname() == ("127.0.0.2", 0)


# --- whole deliveries --------------------------------------------------------

def deliver_to(home, script=None, sender=SENDER, connects=True):
    """deliver() through a ScriptedServer on 127.0.0.1; (report, server)."""
    with ScriptedServer(script or smtp_script()) as srv:
        put(home, "smtproutes", b":127.0.0.1:%d\n" % srv.port)
        out = deliver(b"example.org", sender, [RCPT], MESSAGE,
                      home=str(home)).render()
        if connects:
            srv.wait_done(connections=srv.connections or 1)
    if not connects:
        assert srv.connections == 0
    return out, srv


def peers(srv):
    return [record.peer[0] for record in srv.records]


@needs_127_0_0_2
def test_outgoingip_binds_the_connection(home):
    put(home, "outgoingip", b"127.0.0.2\n")
    out, srv = deliver_to(home)
    assert out == K
    assert peers(srv) == ["127.0.0.2"]
    # helohost is unchanged without helohostbyip.
    assert srv.records[0].lines[:2] == [EHLO, b"MAIL FROM:<a@b.example>\r\n"]


def test_without_files_the_system_picks(home):
    put(home, "helohostbyip", b"127.0.0.1:no.example\n0.0.0.0:no.example\n")
    out, srv = deliver_to(home)
    assert out == K
    assert peers(srv) == ["127.0.0.1"]
    assert srv.records[0].lines[0] == EHLO


def test_outgoingip_any_address_is_no_bind(home):
    put(home, "outgoingip", b"0.0.0.0\n")
    put(home, "helohostbyip", b"0.0.0.0:no.example\n")
    out, srv = deliver_to(home)
    assert out == K
    assert srv.records[0].lines[0] == EHLO


@needs_127_0_0_2
@pytest.mark.parametrize("entry,sender", [
    (b"a@b.example", SENDER),
    (b"b.example", SENDER),
    (b".example", b"a@c.b.example"),
    (b"", b""),
    (b"A@B.EXAMPLE", SENDER),
], ids=["address", "domain", "suffix", "empty-key", "case"])
def test_domainbindings_bind_by_sender(home, entry, sender):
    put(home, "domainbindings",
        b"other.example:127.0.0.3\n" + entry + b":127.0.0.2\n")
    put(home, "outgoingip", b"127.0.0.4\n")
    out, srv = deliver_to(home, sender=sender)
    assert out == K
    assert peers(srv) == ["127.0.0.2"]
    # HELO is not set to the sender's domain (indimail does that).
    assert srv.records[0].lines[0] == EHLO


@needs_127_0_0_2
def test_domainbindings_no_match_falls_back_to_outgoingip(home):
    put(home, "domainbindings", b"other.example:127.0.0.3\n")
    put(home, "outgoingip", b"127.0.0.2\n")
    out, srv = deliver_to(home)
    assert out == K
    assert peers(srv) == ["127.0.0.2"]


@needs_127_0_0_2
def test_domainbindings_key_is_the_sender_as_given(home):
    """The key is the argument, not the quoted form MAIL FROM carries."""
    put(home, "domainbindings", b"a b@b.example:127.0.0.2\n")
    script = smtp_script()
    out, srv = deliver_to(home, script, sender=b"a b@b.example")
    assert out == K
    assert peers(srv) == ["127.0.0.2"]
    assert srv.records[0].lines[1] == b'MAIL FROM:<"a b"@b.example>\r\n'


@needs_127_0_0_2
def test_helohostbyip_changes_the_ehlo_line(home):
    put(home, "helohost", b"helo.example\n")
    put(home, "domainbindings", b"b.example:127.0.0.2\n")
    put(home, "helohostbyip", b"127.0.0.2:bound.example\n")
    out, srv = deliver_to(home)
    assert out == K
    assert peers(srv) == ["127.0.0.2"]
    assert srv.records[0].lines[0] == b"EHLO bound.example\r\n"


@needs_127_0_0_2
def test_helohostbyip_is_also_the_helo_after_a_refused_ehlo(home):
    put(home, "outgoingip", b"127.0.0.2\n")
    put(home, "helohostbyip", b"127.0.0.2:bound.example\n")
    script = [send(b"220 ok\r\n"), expect_line(b"EHLO bound.example\r\n"),
              send(b"502 no\r\n"), expect_line(b"HELO bound.example\r\n"),
              send(b"250 ok\r\n"), *smtp_script()[3:]]
    out, srv = deliver_to(home, script)
    assert out == K
    assert peers(srv) == ["127.0.0.2"]


@needs_127_0_0_2
def test_helohostbyip_other_address_leaves_helohost(home):
    put(home, "outgoingip", b"127.0.0.2\n")
    put(home, "helohostbyip", b"127.0.0.3:other.example\n")
    out, srv = deliver_to(home)
    assert out == K
    assert srv.records[0].lines[0] == EHLO


@needs_127_0_0_2
def test_plaintext_retry_after_failed_handshake_is_bound_too(home):
    """Both connect() calls get the source: the retry after a failed
    opportunistic STARTTLS handshake comes from the same address."""
    put(home, "outgoingip", b"127.0.0.2\n")
    put(home, "helohostbyip", b"127.0.0.2:bound.example\n")
    ehlo_line = b"EHLO bound.example\r\n"
    caps = b"250-mx.example\r\n250 STARTTLS\r\n"
    first = [send(b"220 ok\r\n"), expect_line(ehlo_line), send(caps),
             expect_line(b"STARTTLS\r\n"), send(b"220 go ahead\r\n"),
             close()]
    second = [send(b"220 ok\r\n"), expect_line(ehlo_line), send(caps),
              expect_line(b"MAIL FROM:<a@b.example>\r\n"),
              send(b"250 ok\r\n"), expect_line(b"RCPT TO:<c@d.example>\r\n"),
              send(b"250 ok\r\n"), expect_line(b"DATA\r\n"),
              send(b"354 go\r\n"), expect_data(), send(b"250 ok queued\r\n"),
              read_to_eof(b"QUIT\r\n")]
    out, srv = deliver_to(home, [first, second])
    assert out == K
    assert srv.connections == 2
    assert peers(srv) == ["127.0.0.2", "127.0.0.2"]


@needs_unbindable
@pytest.mark.parametrize("name,data", [
    ("outgoingip", b"192.0.2.1\n"),
    ("domainbindings", b"b.example:192.0.2.1\n"),
])
def test_unbindable_address_gives_the_bind_report(home, name, data):
    put(home, name, data)
    put(home, "helohostbyip", b"192.0.2.1:x.example\n")
    out, _ = deliver_to(home, connects=False)
    assert out == (b"ZUnable to bind to 192.0.2.1 from control/" +
                   name.encode() + b". (#4.3.0)\n\0")


@needs_unbindable
def test_bind_failure_leaves_tcpto_alone(home):
    """No connection was tried: the record of the server's address keeps
    its count (an answered connect clears it, a failed one adds to it)."""
    (home / "queue" / "lock").mkdir(parents=True)
    tcpto = home / "queue" / "lock" / "tcpto"
    record = (ip("127.0.0.1") + b"\1\0\0\0" +
              int(time.time()).to_bytes(4, "little") + b"\0" * 4)
    tcpto.write_bytes(record + b"\0" * (1024 - len(record)))
    before = tcpto.read_bytes()
    put(home, "outgoingip", b"192.0.2.1\n")
    out, _ = deliver_to(home, connects=False)
    assert out.startswith(b"ZUnable to bind to 192.0.2.1 ")
    assert tcpto.read_bytes() == before


@pytest.mark.parametrize("name,data", [
    ("outgoingip", b"1.2.3\n"),
    ("outgoingip", b"mail.example\n"),
    ("domainbindings", b":300.1.1.1\n"),
    ("domainbindings", b"a@b.example:1.2.3.4x\n"),
])
def test_bad_address_gives_the_invalid_report(home, name, data):
    put(home, name, data)
    out, _ = deliver_to(home, connects=False)
    assert out == (b"Zinvalid ipaddr in control/" + name.encode() +
                   b" (#4.3.0)\n\0")


def test_unreadable_domainbindings_is_temp_control(home):
    unreadable(home, "domainbindings")
    out, _ = deliver_to(home, connects=False)
    assert out == TEMP_CONTROL.render()


def test_noesmtp_reads_none_of_the_files(home):
    """Under control/noesmtp: a garbage outgoingip, an unreadable
    domainbindings and a helohostbyip for every address change nothing:
    1.06's HELO dialogue, from the address the system picks."""
    put(home, "noesmtp")
    put(home, "outgoingip", b"garbage\n")
    unreadable(home, "domainbindings")
    put(home, "helohostbyip", b"127.0.0.1:no.example\n")
    out, srv = deliver_to(home)
    assert out == K
    assert peers(srv) == ["127.0.0.1"]
    assert srv.records[0].lines == [
        HELO, b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<c@d.example>\r\n",
        b"DATA\r\n"]
