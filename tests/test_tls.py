"""TLS (qmailremote/tls.py): STARTTLS, SMTPS and qmail-tls's policy files.

Every delivery goes through the public ``deliver()`` API.  The policy key
is the name an address was found for, so most tests route with
``smtproutes`` ``example.com:mx.example:<port>`` and a loopback DNS server
(tests/dnsserver.py) that answers ``mx.example A 127.0.0.1``; an IP
literal relay has no name.  Servers are TeeSMTPServer (aiosmtpd, with a
STARTTLS context) for whole deliveries and ScriptedServer with the
:func:`tlsfixtures.starttls` step for exact wire bytes and misbehaviour.
Certificates come from a fresh trustme CA per run (tests/tlsfixtures.py);
nothing is read from or written to the repository.

Sections follow the behaviour list of the feature:

1. opportunistic STARTTLS;  2. STARTTLS refused;  3. plaintext retry
after a failed opportunistic handshake;  4. ``tlshosts/<name>.pem``;
5. ``tlshosts/exhaustivelist``;  6. ``notlshosts/<name>``;
7. ``clientcert.pem``;  8. ``tlsclientciphers``;  9. ``tlsreport``;
10. ``tlsverify``;  11. ``noesmtp``;  12. drops over TLS;  13. port 465
(implicit TLS) and the MX name as the key, in a private network
namespace (root only);  14. a large message over TLS.
"""

import base64
import datetime
import json
import os
import re
import ssl
import sys

import pytest

from dnsserver import DNSServer
from netns import require_netns, run_in_netns
from qmailremote import deliver
from qmailremote.mx import Resolver
from qmailremote.tls import check_name
from smtpserver import (ScriptedServer, TeeSMTPServer, close, expect_data,
                        expect_line, read_some, read_to_eof, reset, send,
                        stall, stop_reading)
import tlsfixtures
from tlsfixtures import (OneShotServer, Pki, serve_bdat, starttls,
                         subject_hash)

IP = b"127.0.0.1"
SENDER = b"a@b.example"
RCPT = b"c@example.com"
MESSAGE = b"Subject: t\n\n.hi\n"
STUFFED = b"Subject: t\r\n\r\n..hi\r\n"        # the DATA body, no terminator

EHLO = b"EHLO me.example\r\n"
HELO = b"HELO me.example\r\n"
STARTTLS = b"STARTTLS\r\n"
MAIL = b"MAIL FROM:<a@b.example>\r\n"
RCPT_LINE = b"RCPT TO:<c@example.com>\r\n"
DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
OK = b"250 ok\r\n"
FINAL = b"250 ok queued\r\n"
# What a plaintext delivery of MESSAGE sends after the greeting and EHLO.
TRANSACTION = MAIL + RCPT_LINE + DATA + STUFFED + b".\r\n" + QUIT

K = b"r\0K127.0.0.1 accepted message.\nRemote host said: 250 ok queued\n\0"
# aiosmtpd's reply to the final dot (TeeSMTPServer's default).
TEE_K = (b"r\0K127.0.0.1 accepted message.\n"
         b"Remote host said: 250 OK queued\n\0")
DIED = b"ZConnected to 127.0.0.1 but connection died. (#4.4.2)\n\0"
DUP = (b"ZConnected to 127.0.0.1 but connection died. Possible duplicate! "
       b"(#4.4.2)\n\0")
NOCONN = (b"ZSorry, I wasn't able to establish an SMTP connection. "
          b"(#4.4.1)\n\0")
PEM = b"control/tlshosts/mx.example.pem"
TLSVERIFY = b"control/tlsverify"

EXPIRED = datetime.datetime(2001, 1, 1)
TLS12 = ssl.TLSVersion.TLSv1_2


def ehlo(*keywords, name=b"mx.example"):
    """An EHLO reply: the server's name, then one line per keyword."""
    lines = [name, *keywords]
    return b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-",
                                      line)
                    for i, line in enumerate(lines))


CAPS_TLS = ehlo(b"STARTTLS")


def z_tls(text, connected, said=b""):
    """A qmail-tls Z report: ``<text>; connect(ing|ed) to 127.0.0.1.``."""
    return (b"Z" + text + (b"; connected to " if connected else
                           b"; connecting to ") + IP + b".\n" + said + b"\0")


# --- fixtures and helpers ----------------------------------------------------

@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def dns():
    with DNSServer() as srv:
        srv.add("mx.example", "A", "127.0.0.1")
        srv.add("a.b.example", "A", "127.0.0.1")
        yield srv
    assert srv.errors == []


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    # Bounds a wrong wait (a failing test) to seconds; no test waits it out.
    (tmp_path / "control" / "timeoutremote").write_bytes(b"10\n")
    return tmp_path


def put(home, name, data=b""):
    """control/<name> (folders made as needed) holding *data*."""
    path = home / "control" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def send_mail(home, dns, port, relay=b"mx.example", message=MESSAGE):
    """deliver() to example.com through ``example.com:<relay>:<port>``."""
    put(home, "smtproutes", b"example.com:%s:%d\n" % (relay, port))
    resolver = Resolver([(dns.host, dns.port)], timeout=1, attempts=1)
    return deliver(b"example.com", SENDER, [RCPT], message, home=str(home),
                   resolver=resolver).render()


def scripted(home, dns, script, relay=b"mx.example", message=MESSAGE,
             rcvbuf=None):
    """Deliver through a ScriptedServer; (report bytes, server) once the
    scripts of the client's connections have finished.  With one script
    per connection, tests check ``srv.connections`` themselves."""
    with ScriptedServer(script, rcvbuf=rcvbuf) as srv:
        out = send_mail(home, dns, srv.port, relay, message)
        # Every connection began with the server's greeting: all accepted.
        srv.wait_done(connections=srv.connections or 1)
    return out, srv


def tee(home, dns, relay=b"mx.example", message=MESSAGE, connections=1,
        **server):
    """Deliver through a TeeSMTPServer; (report bytes, server) once the
    client's connections are all closed; there must be *connections*."""
    with TeeSMTPServer(**server) as srv:
        out = send_mail(home, dns, srv.port, relay, message)
        # The server spoke first on every connection: all were accepted.
        srv.wait_closed(srv.connections)
        assert srv.connections == connections, out
    return out, srv


def before_tls(caps=CAPS_TLS):
    """Server steps up to the 220 to STARTTLS (the handshake comes next)."""
    return [send(b"220 mx.example ESMTP\r\n"), expect_line(EHLO), send(caps),
            expect_line(STARTTLS), send(b"220 go ahead\r\n")]


def transaction(mail=MAIL, final=FINAL):
    """Server steps for MAIL, RCPT, DATA, the body and QUIT (lock-step)."""
    return [expect_line(mail), send(OK), expect_line(RCPT_LINE), send(OK),
            expect_line(DATA), send(b"354 go\r\n"),
            expect_data(STUFFED + b".\r\n"), send(final), read_to_eof(QUIT)]


def tls_delivery(tls, caps_after=ehlo()):
    """A whole delivery after STARTTLS, with the TLS server *tls*."""
    return [*before_tls(), starttls(tls), expect_line(EHLO), send(caps_after),
            *transaction()]


def plain_delivery(caps=CAPS_TLS):
    """A whole delivery in plaintext; STARTTLS offered but never used."""
    return [send(b"220 mx.example ESMTP\r\n"), expect_line(EHLO), send(caps),
            *transaction()]


def tls_report_line(record):
    return b"TLS %s %s\n" % (record.tls.version.encode(),
                             record.tls.cipher.encode())


# --- 1. opportunistic STARTTLS -----------------------------------------------

def test_opportunistic_starttls_wire_and_sni(home, dns, pki):
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, tls_context=tls.context)
    msg, = srv.messages
    assert out == TEE_K
    assert msg.tls in ("TLSv1.3", "TLSv1.2")
    assert msg.content == MESSAGE.replace(b"\n", b"\r\n")
    # The server's bytes, decrypted: EHLO again after the handshake.
    assert srv.raw == [EHLO + STARTTLS + EHLO + TRANSACTION]
    assert tls.snis == ["mx.example"]


@pytest.mark.parametrize("kind", ["self-signed", "wrong-name", "untrusted",
                                  "expired", "no-name"])
def test_opportunistic_checks_no_certificate(home, dns, pki, kind):
    cert = {
        "self-signed": lambda: pki.leaf("mx.example", self_signed=True),
        "wrong-name": lambda: pki.leaf("other.example"),
        "untrusted": lambda: pki.leaf("mx.example", issuer=pki.rogue),
        "expired": lambda: pki.leaf("mx.example", not_after=EXPIRED),
        "no-name": lambda: pki.leaf(),
    }[kind]()
    tls = pki.server(cert)
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is not None
    assert srv.raw == [EHLO + STARTTLS + EHLO + TRANSACTION]


@pytest.mark.parametrize("relay", [b"127.0.0.1", b"[127.0.0.1]"])
def test_ip_literal_relay_is_opportunistic_without_sni(home, dns, pki, relay):
    tls = pki.server(pki.leaf("mx.example", issuer=pki.rogue))
    # No name, no policy: even tlsverify does not apply to a literal.
    put(home, "tlsverify")
    out, srv = tee(home, dns, relay=relay, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is not None
    assert tls.snis == [None]
    assert dns.queries == []


def test_starttls_not_offered_is_plaintext(home, dns):
    out, srv = tee(home, dns)
    assert out == TEE_K
    assert srv.messages[0].tls is None
    assert srv.raw == [EHLO + TRANSACTION]


def test_capabilities_are_those_of_the_ehlo_after_starttls(home, dns, pki):
    """SIZE offered only after TLS: MAIL carries SIZE=; PIPELINING offered
    only before TLS: not used."""
    tls = pki.server(pki.leaf("mx.example"))
    script = [*before_tls(ehlo(b"PIPELINING", b"STARTTLS")), starttls(tls),
              expect_line(EHLO), send(ehlo(b"SIZE 1000")),
              *transaction(mail=b"MAIL FROM:<a@b.example> SIZE=20\r\n")]
    out, srv = scripted(home, dns, script)
    assert out == K
    assert srv.records[0].tls.version in ("TLSv1.3", "TLSv1.2")
    assert srv.received[0] == (EHLO + STARTTLS + EHLO +
                               b"MAIL FROM:<a@b.example> SIZE=20\r\n" +
                               TRANSACTION[len(MAIL):])


def test_ehlo_refused_helo_without_starttls(home, dns):
    script = [send(b"220 ok\r\n"), expect_line(EHLO), send(b"502 no\r\n"),
              expect_line(HELO), send(OK), *transaction()]
    out, srv = scripted(home, dns, script)
    assert out == K
    assert srv.received[0] == EHLO + HELO + TRANSACTION


# --- 2. STARTTLS refused -----------------------------------------------------

@pytest.mark.parametrize("reply", [b"454 TLS not available\r\n",
                                   b"502 unimplemented\r\n",
                                   b"554-no\r\n554 really not\r\n"])
def test_starttls_refused_goes_on_in_plaintext_same_connection(home, dns,
                                                               reply):
    # The first EHLO's SIZE is used: no second EHLO.
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(ehlo(b"STARTTLS", b"SIZE 1000")), expect_line(STARTTLS),
              send(reply),
              *transaction(mail=b"MAIL FROM:<a@b.example> SIZE=20\r\n")]
    out, srv = scripted(home, dns, script)
    assert out == K
    assert srv.connections == 1
    assert srv.received[0] == (EHLO + STARTTLS +
                               b"MAIL FROM:<a@b.example> SIZE=20\r\n" +
                               TRANSACTION[len(MAIL):])


# --- 3. the plaintext retry --------------------------------------------------

# Each fault strikes once the ClientHello was read (the server's bytes
# cannot then arrive with the 220 and be dropped unread with it), but the
# close right after the 220.
HANDSHAKE_FAULTS = {
    "garbage": [read_some(65536), send(b"garbage garbage\r\n")],
    "smtp-reply": [read_some(65536), send(b"500 what?\r\n")],
    "alert": [read_some(65536), send(b"\x15\x03\x03\x00\x02\x02\x28")],
    "close": [read_some(65536), close()],
    "reset": [read_some(65536), reset()],
    "close-at-once": [close()],
}


@pytest.mark.parametrize("fault", list(HANDSHAKE_FAULTS))
def test_failed_opportunistic_handshake_retries_in_plaintext(home, dns, fault):
    first = [*before_tls(), *HANDSHAKE_FAULTS[fault]]
    out, srv = scripted(home, dns, [first, plain_delivery()])
    assert out == K
    assert srv.connections == 2
    assert srv.received[0].startswith(EHLO + STARTTLS)
    if fault != "close-at-once":
        assert srv.records[0].chunks[0][:2] == b"\x16\x03"  # ClientHello
    # The retry offers STARTTLS again, and it is not used.
    assert srv.received[1] == EHLO + TRANSACTION


def test_drop_between_starttls_and_its_reply_retries_in_plaintext(home, dns):
    first = [send(b"220 ok\r\n"), expect_line(EHLO), send(CAPS_TLS),
             expect_line(STARTTLS), close()]
    out, srv = scripted(home, dns, [first, plain_delivery()])
    assert out == K
    assert srv.connections == 2
    assert srv.received == [EHLO + STARTTLS, EHLO + TRANSACTION]


def test_failed_handshake_with_a_real_tls_server_retries(home, dns, pki):
    """A real TLS server with no cipher in common (TLS 1.2 only, and
    ``tlsclientciphers`` names another suite): the handshake fails with an
    alert, and the retry is in plaintext."""
    put(home, "tlsclientciphers", b"ECDHE-ECDSA-AES128-GCM-SHA256\n")
    tls = pki.server(pki.leaf("mx.example"), max_version=TLS12,
                     ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    first = [*before_tls(), starttls(tls, fails=True)]
    out, srv = scripted(home, dns, [first, plain_delivery()])
    assert out == K
    assert srv.connections == 2
    assert "no shared cipher" in str(srv.records[0].tls_error)
    assert srv.received[1] == EHLO + TRANSACTION


def test_handshake_timeout_retries_in_plaintext(home, dns):
    """The server never answers the ClientHello: after timeoutremote the
    handshake has failed, and the retry is in plaintext."""
    put(home, "timeoutremote", b"1\n")
    first = [*before_tls(), read_some(65536), stall()]
    with ScriptedServer([first, plain_delivery()]) as srv:
        out = send_mail(home, dns, srv.port)
        srv.wait_connections(2)
        assert srv.records[1].done.wait(10)
    assert out == K
    assert srv.received[1] == EHLO + TRANSACTION


def garbage_after_client_hello(server, sock):
    """A OneShotServer handler: STARTTLS accepted, then no TLS at all."""
    sock.sendall(b"220 ok\r\n")
    assert server.read_line(sock) == EHLO
    sock.sendall(CAPS_TLS)
    assert server.read_line(sock) == STARTTLS
    sock.sendall(b"220 go ahead\r\n")
    assert sock.recv(65536)[:2] == b"\x16\x03"      # the ClientHello
    sock.sendall(b"garbage garbage\r\n")


def test_failed_retry_connection_is_noconn(home, dns):

    with OneShotServer(garbage_after_client_hello) as srv:
        out = send_mail(home, dns, srv.port)
        srv.join()
    assert out == NOCONN
    assert bytes(srv.received) == EHLO + STARTTLS


def test_failed_retry_connection_goes_to_the_next_address(home, dns):
    """mx.example has two addresses; the first fails the handshake, then
    refuses the retry: the second address gets the message, with STARTTLS
    tried again (opportunistic) and refused there."""

    second = [send(b"220 two\r\n"), expect_line(EHLO), send(CAPS_TLS),
              expect_line(STARTTLS), send(b"454 not today\r\n"),
              *transaction()]
    dns.add("two.example", "A", "127.0.0.1", "127.0.0.2")
    for _ in range(5):          # the second server's port must be free here
        with ScriptedServer(second, host="127.0.0.2") as other:
            try:
                first = OneShotServer(garbage_after_client_hello,
                                      port=other.port)
            except OSError:
                continue
            with first:
                out = send_mail(home, dns, other.port, relay=b"two.example")
                first.join()
                other.wait_done()
            break
    else:
        pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")
    assert out == K.replace(b"127.0.0.1", b"127.0.0.2")
    assert bytes(first.received) == EHLO + STARTTLS
    assert other.received == [EHLO + STARTTLS + TRANSACTION]


# --- 4. control/tlshosts/<name>.pem ------------------------------------------

def test_tlshosts_good_certificate_delivers_over_tls(home, dns, pki):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls in ("TLSv1.3", "TLSv1.2")
    assert srv.raw == [EHLO + STARTTLS + EHLO + TRANSACTION]
    assert tls.snis == ["mx.example"]


def test_tlshosts_starttls_not_offered(home, dns, pki):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    out, srv = tee(home, dns)
    assert out == z_tls(b"No TLS achieved while " + PEM + b" exists", False)
    assert srv.messages == []
    assert srv.raw == [EHLO + QUIT]


def test_tlshosts_ehlo_refused(home, dns, pki):
    """Mandatory TLS is refused before HELO."""
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    out, srv = scripted(home, dns, [send(b"220 ok\r\n"), expect_line(EHLO),
                                    send(b"502 no\r\n"), read_to_eof(QUIT)])
    assert out == z_tls(b"No TLS achieved while " + PEM + b" exists", False)
    assert srv.received == [EHLO + QUIT]


def test_tlshosts_starttls_rejected(home, dns, pki):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    script = [send(b"220 ok\r\n"), expect_line(EHLO), send(CAPS_TLS),
              expect_line(STARTTLS), send(b"454 TLS not available\r\n"),
              read_to_eof(QUIT)]
    out, srv = scripted(home, dns, script)
    assert out == z_tls(b"STARTTLS rejected while " + PEM + b" exists", False,
                        b"Remote host said: 454 TLS not available\n")
    assert srv.received == [EHLO + STARTTLS + QUIT]


@pytest.mark.parametrize("kind, reason", [
    ("untrusted", b"unable to get local issuer certificate"),
    ("self-signed", b"self-signed certificate"),
    ("expired", b"certificate has expired"),
])
def test_tlshosts_chain_not_verified(home, dns, pki, kind, reason):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    cert = {
        "untrusted": lambda: pki.leaf("mx.example", issuer=pki.rogue),
        "self-signed": lambda: pki.leaf("mx.example", self_signed=True),
        "expired": lambda: pki.leaf("mx.example", not_after=EXPIRED),
    }[kind]()
    out, srv = scripted(home, dns, [*before_tls(),
                                    starttls(pki.server(cert), fails=True)])
    assert out == z_tls(b"TLS unable to verify server with " + PEM + b": " +
                        reason, True)
    # No plaintext after STARTTLS, no second connection.
    assert srv.received == [EHLO + STARTTLS]
    assert srv.connections == 1


@pytest.mark.parametrize("names, cn, reason", [
    (("other.example",), None, b"certificate contains no matching dNSNames"),
    # A matching CN does not count when there are dNSNames.
    (("other.example",), "mx.example",
     b"certificate contains no matching dNSNames"),
    ((), "other.example", b"received certificate for other.example"),
    ((), None, b"certificate contains no valid commonName"),
])
def test_tlshosts_name_mismatch(home, dns, pki, names, cn, reason):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf(*names, cn=cn))
    out, srv = scripted(home, dns, [*before_tls(), starttls(tls),
                                    read_to_eof(QUIT)])
    assert out == z_tls(b"TLS unable to verify server mx.example: " + reason,
                        True)
    # QUIT goes out over TLS (the server reads it decrypted).
    assert srv.received == [EHLO + STARTTLS + QUIT]
    assert srv.records[0].tls is not None


@pytest.mark.parametrize("names, cn", [
    (("mx.example",), None),
    (("other.example", "MX.Example"), None),      # any one, any case
    (("*.example",), None),                       # one label
    ((), "mx.example"),                           # CN without SAN
])
def test_tlshosts_name_match_delivers(home, dns, pki, names, cn):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf(*names, cn=cn))
    out, srv = scripted(home, dns, tls_delivery(tls))
    assert out == K
    assert srv.received == [EHLO + STARTTLS + EHLO + TRANSACTION]


def test_tlshosts_wildcard_is_one_label_only(home, dns, pki):
    put(home, "tlshosts/a.b.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf("*.example"))
    out, srv = scripted(home, dns, [*before_tls(), starttls(tls),
                                    read_to_eof(QUIT)], relay=b"a.b.example")
    assert out == z_tls(b"TLS unable to verify server a.b.example: "
                        b"certificate contains no matching dNSNames", True)
    assert tls.snis == ["a.b.example"]


@pytest.mark.parametrize("tail, reason", [
    ([read_some(65536), send(b"garbage garbage\r\n")],
     b"wrong version number"),
    ([read_some(65536), close()], b"EOF occurred in violation of protocol"),
    ([read_some(65536), reset()], b"Connection reset by peer"),
])
def test_tlshosts_handshake_failure_is_z_without_retry(home, dns, pki, tail,
                                                       reason):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    out, srv = scripted(home, dns, [*before_tls(), *tail])
    assert out == z_tls(b"TLS connect failed: " + reason, True)
    assert srv.connections == 1
    assert srv.received[0].startswith(EHLO + STARTTLS + b"\x16\x03")


def test_tlshosts_handshake_timeout(home, dns, pki):
    put(home, "timeoutremote", b"1\n")
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    with ScriptedServer([*before_tls(), read_some(65536), stall()]) as srv:
        out = send_mail(home, dns, srv.port)
    assert out == z_tls(b"TLS connect failed: timed out", True)
    assert srv.connections == 1


def test_tlshosts_unloadable_pem(home, dns):
    put(home, "tlshosts/mx.example.pem", b"garbage\n")
    out, srv = scripted(home, dns, [send(b"220 ok\r\n"), expect_line(EHLO),
                                    send(CAPS_TLS), read_to_eof(QUIT)])
    assert re.fullmatch(rb"ZTLS unable to load control/tlshosts/mx\.example"
                        rb"\.pem: [^;\n]+; connecting to 127\.0\.0\.1\.\n\0",
                        out), out
    assert srv.received == [EHLO + QUIT]


@pytest.mark.parametrize("filename", ["mx.example", "MX.Example"])
def test_tlshosts_found_as_given_or_lower_case(home, dns, pki, filename):
    """The relay MX.Example: its file is MX.Example.pem or mx.example.pem,
    and the report names the file found."""
    put(home, f"tlshosts/{filename}.pem", pki.ca_pem)
    out, srv = tee(home, dns, relay=b"MX.Example")
    assert out == z_tls(b"No TLS achieved while control/tlshosts/" +
                        filename.encode() + b".pem exists", False)
    assert srv.raw == [EHLO + QUIT]


def test_tlshosts_mixed_case_name_verifies(home, dns, pki):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, relay=b"MX.Example", tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is not None
    assert [name.lower() for name in tls.snis] == ["mx.example"]


def test_recipient_domain_is_never_the_policy_key(home, dns, pki):
    """example.com is the recipient domain and the smtproutes key, not the
    name the address was found for: its .pem is not looked at."""
    put(home, "tlshosts/example.com.pem", pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example", issuer=pki.rogue))
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is not None


# check_name, with getpeercert()-shaped dictionaries

def _cert(dns=(), cn=None, ips=()):
    cert = {"subject": ((("organizationName", "x"),),)}
    if cn is not None:
        cert["subject"] += ((("commonName", cn),),)
    if dns or ips:
        cert["subjectAltName"] = tuple(("DNS", d) for d in dns) + \
            tuple(("IP Address", i) for i in ips)
    return cert


@pytest.mark.parametrize("cert, name, expected", [
    (_cert(dns=["mx.example"]), "mx.example", None),
    (_cert(dns=["MX.EXAMPLE"]), "mx.Example", None),
    (_cert(dns=["a.example", "mx.example"]), "mx.example", None),
    (_cert(dns=["*.example"]), "mx.example", None),
    (_cert(dns=["*.example"]), "a.b.example", b"certificate contains no "
                                              b"matching dNSNames"),
    (_cert(dns=["*.example"]), "example", b"certificate contains no "
                                          b"matching dNSNames"),
    (_cert(dns=["*.b.example"]), "a.b.example", None),
    (_cert(dns=["mx.example.org"]), "mx.example", b"certificate contains no "
                                                  b"matching dNSNames"),
    (_cert(dns=["other.example"], cn="mx.example"), "mx.example",
     b"certificate contains no matching dNSNames"),
    # Only IP addresses in the SAN: the CN decides.
    (_cert(ips=["127.0.0.1"], cn="mx.example"), "mx.example", None),
    (_cert(cn="mx.example"), "mx.example", None),
    (_cert(cn="*.example"), "mx.example", None),
    (_cert(cn="other.example"), "mx.example",
     b"received certificate for other.example"),
    (_cert(cn="bad name\x01"), "mx.example",
     b"received certificate for bad?name?"),
    (_cert(), "mx.example", b"certificate contains no valid commonName"),
    ({"subject": ((("commonName", "first.example"),),
                  (("commonName", "mx.example"),))}, "mx.example",
     b"received certificate for first.example"),
    ({}, "mx.example", b"no certificate provided"),
])
def test_check_name(cert, name, expected):
    assert check_name(cert, name) == expected


# --- 5. control/tlshosts/exhaustivelist --------------------------------------

def test_exhaustivelist_host_without_pem_gets_no_tls(home, dns, pki):
    put(home, "tlshosts/exhaustivelist")
    put(home, "tlshosts/other.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is None
    assert srv.raw == [EHLO + TRANSACTION]
    assert tls.snis == []


def test_exhaustivelist_host_with_pem_is_mandatory(home, dns, pki):
    put(home, "tlshosts/exhaustivelist")
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    out, srv = tee(home, dns)
    assert out == z_tls(b"No TLS achieved while " + PEM + b" exists", False)
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is not None


def test_exhaustivelist_ip_literal_stays_opportunistic(home, dns, pki):
    put(home, "tlshosts/exhaustivelist")
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, relay=b"[127.0.0.1]", tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is not None


# --- 6. control/notlshosts/<name> --------------------------------------------

@pytest.mark.parametrize("filename", ["mx.example", "MX.Example"])
def test_notlshosts_no_starttls(home, dns, pki, filename):
    put(home, f"notlshosts/{filename}")
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, relay=b"MX.Example", tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is None
    assert srv.raw == [EHLO + TRANSACTION]


def test_notlshosts_other_host_unaffected(home, dns, pki):
    put(home, "notlshosts/other.example")
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is not None


def test_pem_wins_over_notlshosts(home, dns, pki):
    put(home, "notlshosts/mx.example")
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    out, srv = tee(home, dns)
    assert out == z_tls(b"No TLS achieved while " + PEM + b" exists", False)
    assert srv.raw == [EHLO + QUIT]


# --- 7. control/clientcert.pem -----------------------------------------------

def client_ca_server(pki, **options):
    return pki.server(pki.leaf("mx.example"), client_ca=pki.write(pki.ca_pem),
                      **options)


def _subject(cert):
    return {key: value for rdn in cert["subject"] for key, value in rdn}


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_clientcert_offered_when_asked(home, dns, pki, version):
    put(home, "clientcert.pem", pki.client("client.example").pem)
    tls = client_ca_server(pki)
    tls.context.minimum_version = getattr(ssl.TLSVersion, version)
    tls.context.maximum_version = getattr(ssl.TLSVersion, version)
    out, srv = tee(home, dns, tls_context=tls.context)
    msg, = srv.messages
    assert out == TEE_K
    assert msg.tls == version.replace("_", ".")
    assert _subject(msg.client_cert)["commonName"] == "client.example"


def test_clientcert_with_mandatory_tls(home, dns, pki):
    put(home, "clientcert.pem", pki.client().pem)
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    out, srv = tee(home, dns, tls_context=client_ca_server(pki).context)
    assert out == TEE_K
    assert srv.messages[0].client_cert is not None


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_no_clientcert_when_required_retries_in_plaintext(home, dns, pki,
                                                         version):
    """The server insists on a client certificate: the opportunistic
    handshake fails, and the message goes in plaintext on a new
    connection (where the server cannot ask for one)."""
    tls = client_ca_server(pki)
    tls.context.minimum_version = getattr(ssl.TLSVersion, version)
    tls.context.maximum_version = getattr(ssl.TLSVersion, version)
    out, srv = tee(home, dns, tls_context=tls.context, connections=2)
    assert out == TEE_K
    msg, = srv.messages
    assert msg.tls is None
    assert srv.raw[0].startswith(EHLO + STARTTLS)
    assert srv.raw[1] == EHLO + TRANSACTION


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_no_clientcert_when_required_with_mandatory_tls(home, dns, pki,
                                                        version):
    """Mandatory TLS, and the server rejects the client for want of a
    certificate: qmail-tls's "TLS connect failed", no retry."""
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    tls = client_ca_server(pki)
    tls.context.minimum_version = getattr(ssl.TLSVersion, version)
    tls.context.maximum_version = getattr(ssl.TLSVersion, version)
    out, srv = tee(home, dns, tls_context=tls.context)
    assert re.fullmatch(rb"ZTLS connect failed: [^;\n]+; connected to "
                        rb"127\.0\.0\.1\.\n\0", out), out
    assert srv.messages == []


def test_unloadable_clientcert(home, dns):
    put(home, "clientcert.pem", b"garbage\n")
    out, srv = scripted(home, dns, [send(b"220 ok\r\n"), expect_line(EHLO),
                                    send(CAPS_TLS), read_to_eof(QUIT)])
    assert re.fullmatch(rb"ZTLS unable to load control/clientcert\.pem: "
                        rb"[^;\n]+; connecting to 127\.0\.0\.1\.\n\0",
                        out), out
    assert srv.received == [EHLO + QUIT]


def test_clientcert_without_its_key(home, dns, pki):
    put(home, "clientcert.pem", pki.client().chain_pem)
    out, srv = scripted(home, dns, [send(b"220 ok\r\n"), expect_line(EHLO),
                                    send(CAPS_TLS), read_to_eof(QUIT)])
    assert out.startswith(b"ZTLS unable to load control/clientcert.pem: ")
    assert srv.received == [EHLO + QUIT]


# --- 8. control/tlsclientciphers ---------------------------------------------

@pytest.mark.parametrize("lines, negotiated", [
    (b"ECDHE-ECDSA-AES128-GCM-SHA256\n", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    # Lines are joined with ':': the second line's suite is the one the
    # server accepts.
    (b"ECDHE-ECDSA-CHACHA20-POLY1305\nECDHE-ECDSA-AES128-SHA256\n",
     "ECDHE-ECDSA-AES128-SHA256"),
])
def test_tlsclientciphers(home, dns, pki, lines, negotiated):
    put(home, "tlsclientciphers", lines)
    put(home, "tlsreport")
    tls = pki.server(pki.leaf("mx.example"), max_version=TLS12,
                     ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:"
                             "ECDHE-ECDSA-AES128-SHA256:"
                             "ECDHE-ECDSA-AES256-GCM-SHA384")
    out, srv = scripted(home, dns, tls_delivery(tls))
    record = srv.records[0]
    assert (record.tls.version, record.tls.cipher) == ("TLSv1.2", negotiated)
    assert out == K[:-1] + b"TLS TLSv1.2 " + negotiated.encode() + b"\n\0"


def test_without_tlsclientciphers_the_server_picks(home, dns, pki):
    """The control case of the test above: without the file the server's
    preferred suite (AES256 first) is used, not the file's."""
    put(home, "tlsreport")
    tls = pki.server(pki.leaf("mx.example"), max_version=TLS12,
                     ciphers="ECDHE-ECDSA-AES256-GCM-SHA384:"
                             "ECDHE-ECDSA-AES128-GCM-SHA256")
    out, srv = scripted(home, dns, tls_delivery(tls))
    assert srv.records[0].tls.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert out == K[:-1] + b"TLS TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384\n\0"


def test_tlsclientciphers_openssl_rejects(home, dns):
    put(home, "tlsclientciphers", b"NOT-A-CIPHER\n")
    out, srv = scripted(home, dns, [send(b"220 ok\r\n"), expect_line(EHLO),
                                    send(CAPS_TLS), read_to_eof(QUIT)])
    # The reason is OpenSSL's text, not a Python tuple's repr.
    assert re.fullmatch(rb"ZTLS unable to use control/tlsclientciphers: "
                        rb"[A-Za-z][^;\n()'\"]*; connecting to 127\.0\.0\.1"
                        rb"\.\n\0", out), out
    assert srv.received == [EHLO + QUIT]


# --- 9. control/tlsreport ----------------------------------------------------

def test_tlsreport_adds_the_tls_line(home, dns, pki):
    put(home, "tlsreport")
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = scripted(home, dns, tls_delivery(tls))
    assert out == K[:-1] + tls_report_line(srv.records[0]) + b"\0"
    assert srv.records[0].tls.version in ("TLSv1.3", "TLSv1.2")


def test_without_tlsreport_k_is_the_plaintext_text(home, dns, pki):
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = scripted(home, dns, tls_delivery(tls))
    assert out == K
    assert srv.records[0].tls is not None


def test_tlsreport_plaintext_delivery_has_no_tls_line(home, dns):
    put(home, "tlsreport")
    out, srv = scripted(home, dns, plain_delivery(caps=ehlo()))
    assert out == K


def test_tlsreport_starttls_refused_has_no_tls_line(home, dns):
    put(home, "tlsreport")
    script = [*before_tls()[:-1], send(b"454 not now\r\n"), *transaction()]
    out, srv = scripted(home, dns, script)
    assert out == K
    assert srv.received == [EHLO + STARTTLS + TRANSACTION]


def test_tlsreport_after_plaintext_retry_has_no_tls_line(home, dns):
    put(home, "tlsreport")
    first = [*before_tls(), read_some(65536), reset()]
    out, srv = scripted(home, dns, [first, plain_delivery()])
    assert out == K
    assert srv.connections == 2


# --- 10. control/tlsverify ---------------------------------------------------

def test_tlsverify_empty_uses_the_system_store(home, dns, pki):
    put(home, "tlsverify")
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = scripted(home, dns, [*before_tls(), starttls(tls, fails=True)])
    assert out == z_tls(b"TLS unable to verify server with " + TLSVERIFY +
                        b": unable to get local issuer certificate", True)
    assert srv.received == [EHLO + STARTTLS]


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_tlsverify_ca_file(home, dns, pki, where):
    ca = put(home, "testca.pem", pki.ca_pem)
    put(home, "tlsverify", (str(ca) if where == "absolute"
                            else "control/testca.pem").encode() + b"\n")
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = scripted(home, dns, tls_delivery(tls))
    assert out == K
    assert srv.received == [EHLO + STARTTLS + EHLO + TRANSACTION]


@pytest.mark.parametrize("hashed", [True, False])
def test_tlsverify_ca_directory(home, dns, pki, hashed):
    """A directory of CAs is looked up by subject hash (``<hash>.0``): with
    the hashed name the server verifies, under any other name it does not."""
    name = subject_hash(pki.ca_pem) + ".0" if hashed else "testca.pem"
    put(home, "cadir/" + name, pki.ca_pem)
    put(home, "tlsverify", b"control/cadir\n")
    tls = pki.server(pki.leaf("mx.example"))
    if hashed:
        out, srv = scripted(home, dns, tls_delivery(tls))
        assert out == K
    else:
        out, srv = scripted(home, dns, [*before_tls(),
                                        starttls(tls, fails=True)])
        assert out == z_tls(b"TLS unable to verify server with " +
                            TLSVERIFY + b": unable to get local issuer "
                            b"certificate", True)


def test_tlsverify_untrusted_server(home, dns, pki):
    put(home, "testca.pem", pki.ca_pem)
    put(home, "tlsverify", b"control/testca.pem\n")
    tls = pki.server(pki.leaf("mx.example", issuer=pki.rogue))
    out, srv = scripted(home, dns, [*before_tls(), starttls(tls, fails=True)])
    assert out == z_tls(b"TLS unable to verify server with " + TLSVERIFY +
                        b": unable to get local issuer certificate", True)


def test_tlsverify_name_mismatch(home, dns, pki):
    put(home, "testca.pem", pki.ca_pem)
    put(home, "tlsverify", b"control/testca.pem\n")
    tls = pki.server(pki.leaf("other.example"))
    out, srv = scripted(home, dns, [*before_tls(), starttls(tls),
                                    read_to_eof(QUIT)])
    assert out == z_tls(b"TLS unable to verify server mx.example: "
                        b"certificate contains no matching dNSNames", True)


def test_tlsverify_starttls_not_offered(home, dns):
    put(home, "tlsverify")
    out, srv = tee(home, dns)
    assert out == z_tls(b"No TLS achieved while " + TLSVERIFY + b" exists",
                        False)
    assert srv.raw == [EHLO + QUIT]


def test_tlsverify_missing_ca_file(home, dns):
    put(home, "tlsverify", b"control/nosuchca.pem\n")
    out, srv = scripted(home, dns, [send(b"220 ok\r\n"), expect_line(EHLO),
                                    send(CAPS_TLS), read_to_eof(QUIT)])
    assert out == z_tls(b"TLS unable to load control/nosuchca.pem: "
                        b"No such file or directory", False)
    assert srv.received == [EHLO + QUIT]


def test_tlsverify_notlshosts_exempts(home, dns, pki):
    put(home, "tlsverify")
    put(home, "notlshosts/mx.example")
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.raw == [EHLO + TRANSACTION]


def test_pem_wins_over_tlsverify(home, dns, pki):
    put(home, "tlsverify")                        # the system store: fails
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is not None


# --- 11. control/noesmtp -----------------------------------------------------

@pytest.mark.parametrize("policy", ["none", "tlshosts", "tlsverify"])
def test_noesmtp_has_no_tls(home, dns, pki, policy):
    put(home, "noesmtp")
    if policy == "tlshosts":
        put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    elif policy == "tlsverify":
        put(home, "tlsverify")
    put(home, "tlsreport")
    tls = pki.server(pki.leaf("mx.example"))
    out, srv = tee(home, dns, tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls is None
    assert srv.raw == [HELO + TRANSACTION]


# --- 12. drops over TLS ------------------------------------------------------

BIG_LINE = b"x" * 75 + b"\n"
BIG_MESSAGE = BIG_LINE * (12 * 1024 * 1024 // len(BIG_LINE))


def _until_data(tls):
    return [*before_tls(), starttls(tls), expect_line(EHLO), send(ehlo()),
            expect_line(MAIL), send(OK), expect_line(RCPT_LINE), send(OK),
            expect_line(DATA), send(b"354 go\r\n")]


@pytest.mark.parametrize("fault", ["close", "reset"])
def test_drop_mid_body_over_tls(home, dns, pki, fault):
    tls = pki.server(pki.leaf("mx.example"))
    script = [*_until_data(tls), read_some(65536),
              close() if fault == "close" else reset()]
    out, srv = scripted(home, dns, script, message=BIG_MESSAGE,
                        rcvbuf=64 * 1024)
    assert out == b"r\0" + DIED
    assert srv.connections == 1


@pytest.mark.parametrize("fault", ["close", "reset"])
def test_drop_after_the_final_dot_over_tls(home, dns, pki, fault):
    tls = pki.server(pki.leaf("mx.example"))
    script = [*_until_data(tls), expect_data(STUFFED + b".\r\n"),
              close() if fault == "close" else reset()]
    out, srv = scripted(home, dns, script)
    assert out == b"r\0" + DUP
    assert srv.connections == 1


def test_drop_before_mail_reply_over_tls(home, dns, pki):
    tls = pki.server(pki.leaf("mx.example"))
    script = [*before_tls(), starttls(tls), expect_line(EHLO), send(ehlo()),
              expect_line(MAIL), reset()]
    out, srv = scripted(home, dns, script)
    assert out == DIED
    # No retry in plaintext once TLS is up.
    assert srv.connections == 1


def test_stall_mid_body_over_tls_times_out(home, dns, pki):
    put(home, "timeoutremote", b"1\n")
    tls = pki.server(pki.leaf("mx.example"))
    script = [*_until_data(tls), stop_reading()]
    with ScriptedServer(script, rcvbuf=64 * 1024) as srv:
        out = send_mail(home, dns, srv.port, message=BIG_MESSAGE)
    assert out == b"r\0" + DIED


# --- 13. port 465 and the MX name, in a private network namespace ------------

def _netns_cases(pki, base):
    """(name, home, host, servers, zone) of every netns delivery."""
    leaf = pki.leaf
    rogue = pki.rogue

    def home(name, routes=None, **files):
        path = base / name
        (path / "control").mkdir(parents=True)
        (path / "control" / "me").write_bytes(b"me.example\n")
        (path / "control" / "timeoutremote").write_bytes(b"10\n")
        if routes is not None:
            (path / "control" / "smtproutes").write_bytes(routes)
        for file, data in files.items():
            target = path / "control" / file.replace("__", "/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return str(path)

    def server(addr, kind, cert=None, port=465):
        return {"addr": addr, "port": port, "kind": kind,
                "cert": cert.chain_pem.decode() if cert else None,
                "key": cert.key_pem.decode() if cert else None}

    ca = pki.ca_pem
    return [
        ("smtps-verified",
         home("smtps-verified", b"example.com:relay1.example:465\n",
              **{"tlshosts__relay1.example.pem": ca}),
         "example.com",
         [server("127.0.0.11", "smtps", leaf("relay1.example"))]),
        ("smtps-plain-server",
         home("smtps-plain-server", b"example.com:relay2.example:465\n"),
         "example.com", [server("127.0.0.12", "plain")]),
        ("smtps-greeting-421",
         home("smtps-greeting-421", b"example.com:relay3.example:465\n"),
         "example.com",
         [server("127.0.0.13", "smtps_421", leaf("relay3.example"))]),
        ("smtps-literal",
         home("smtps-literal", b"example.com:127.0.0.14:465\n",
              tlsverify=b"", tlsreport=b""),
         "example.com",
         [server("127.0.0.14", "smtps",
                 leaf("relay4.example", issuer=rogue))]),
        ("smtps-unverified",
         home("smtps-unverified", b"example.com:relay5.example:465\n",
              **{"tlshosts__relay5.example.pem": ca}),
         "example.com",
         [server("127.0.0.15", "smtps_reject",
                 leaf("relay5.example", issuer=rogue))]),
        ("smtps-notlshosts",
         home("smtps-notlshosts", b"example.com:relay6.example:465\n",
              **{"notlshosts__relay6.example": b""}),
         "example.com",
         [server("127.0.0.16", "smtps", leaf("relay6.example",
                                             issuer=rogue))]),
        ("mx-name-verified",
         home("mx-name-verified", **{"tlshosts__mx1.example.test.pem": ca}),
         "one.example.test",
         [server("127.0.0.21", "starttls", leaf("mx1.example.test"),
                 port=25)]),
        ("mx-name-enforced",
         home("mx-name-enforced", **{"tlshosts__mx2.example.test.pem": ca}),
         "two.example.test",
         [server("127.0.0.22", "starttls_reject",
                 leaf("mx2.example.test", issuer=rogue), port=25)]),
        ("recipient-domain-ignored",
         home("recipient-domain-ignored",
              **{"tlshosts__three.example.test.pem": ca}),
         "three.example.test",
         [server("127.0.0.23", "starttls",
                 leaf("mx3.example.test", issuer=rogue), port=25)]),
    ]


NETNS_ZONE = {
    "relay1.example": {"A": "127.0.0.11"},
    "relay2.example": {"A": "127.0.0.12"},
    "relay3.example": {"A": "127.0.0.13"},
    "relay5.example": {"A": "127.0.0.15"},
    "relay6.example": {"A": "127.0.0.16"},
    "one.example.test": {"MX": ["10 mx1.example.test."]},
    "mx1.example.test": {"A": "127.0.0.21"},
    "two.example.test": {"MX": ["10 mx2.example.test."]},
    "mx2.example.test": {"A": "127.0.0.22"},
    "three.example.test": {"MX": ["10 mx3.example.test."]},
    "mx3.example.test": {"A": "127.0.0.23"},
}


@pytest.fixture(scope="module")
def netns_runs(pki, tmp_path_factory):
    """Every netns delivery, in one child inside one private namespace:
    {name: (report bytes, [server results])}."""
    require_netns()
    base = tmp_path_factory.mktemp("netns-tls")
    cases = _netns_cases(pki, base)
    spec = {"tmp": str(base), "cases": [
        {"home": home, "host": host, "rcpts": ["c@" + host],
         "message": "Subject: t\n\n.hi\n", "servers": servers}
        for _, home, host, servers in cases]}
    r = run_in_netns({"command": [sys.executable, tlsfixtures.__file__],
                      "stdin": json.dumps(spec), "zone": NETNS_ZONE,
                      "timeout": 60})
    assert not r.timed_out, r.stderr
    assert (r.returncode, r.dns_errors) == (0, []), r.stderr
    results = json.loads(r.stdout)
    out = {}
    for (name, *_), result in zip(cases, results):
        servers = [{"received": [base64.b64decode(x) for x in s["received"]],
                    "tls": s["tls"], "snis": s["snis"],
                    "failures": s["failures"]} for s in result["servers"]]
        out[name] = (base64.b64decode(result["report"]), servers)
    return out


def _accepted(ip):
    return (b"r\0K" + ip + b" accepted message.\nRemote host said: 250 ok " +
            ip + b"\n\0")


NETNS_TRANSACTION = (b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@%s>\r\nDATA\r\n"
                     + STUFFED + b".\r\nQUIT\r\n")


@pytest.mark.netns
def test_smtps_verified_greeting_after_handshake(netns_runs):
    out, (srv,) = netns_runs["smtps-verified"]
    assert srv["failures"] == []
    assert out == _accepted(b"127.0.0.11")
    # Decrypted: no STARTTLS, EHLO once, the greeting came after TLS.
    assert srv["received"] == [EHLO + NETNS_TRANSACTION % b"example.com"]
    assert srv["tls"][0][0] in ("TLSv1.3", "TLSv1.2")
    assert srv["snis"] == ["relay1.example"]


@pytest.mark.netns
def test_smtps_plaintext_server_fails_without_retry(netns_runs):
    out, (srv,) = netns_runs["smtps-plain-server"]
    assert re.fullmatch(rb"ZTLS connect failed: [^;\n]+; connected to "
                        rb"127\.0\.0\.12\.\n\0", out), out
    assert len(srv["received"]) == 1                # no plaintext retry
    assert srv["received"][0].startswith(b"\x16\x03")   # a ClientHello
    assert b"EHLO" not in srv["received"][0]


@pytest.mark.netns
def test_smtps_greeting_not_220(netns_runs):
    out, (srv,) = netns_runs["smtps-greeting-421"]
    assert srv["failures"] == []
    assert out == (b"ZTLS Connected to 127.0.0.13 but greeting failed.\n"
                   b"Remote host said: 421 busy\n\0")
    assert srv["received"] == [QUIT]


@pytest.mark.netns
def test_smtps_ip_literal_is_unverified_without_sni(netns_runs):
    out, (srv,) = netns_runs["smtps-literal"]
    assert srv["failures"] == []
    version, cipher = srv["tls"][0]
    # (This home has control/tlsreport: the K report's last line.)
    assert out == _accepted(b"127.0.0.14")[:-1] + b"TLS %s %s\n\0" % (
        version.encode(), cipher.encode())
    assert srv["snis"] == [None]


@pytest.mark.netns
def test_smtps_tlshosts_unverified(netns_runs):
    out, (srv,) = netns_runs["smtps-unverified"]
    assert srv["failures"] == []
    assert out == (b"ZTLS unable to verify server with control/tlshosts/"
                   b"relay5.example.pem: unable to get local issuer "
                   b"certificate; connected to 127.0.0.15.\n\0")
    assert len(srv["received"]) == 1


@pytest.mark.netns
def test_smtps_is_tls_even_for_notlshosts(netns_runs):
    out, (srv,) = netns_runs["smtps-notlshosts"]
    assert srv["failures"] == []
    assert out == _accepted(b"127.0.0.16")
    assert srv["tls"][0] is not None


@pytest.mark.netns
def test_mx_name_is_the_policy_key(netns_runs):
    out, (srv,) = netns_runs["mx-name-verified"]
    assert srv["failures"] == []
    assert out == _accepted(b"127.0.0.21")
    assert srv["received"] == [EHLO + STARTTLS + EHLO +
                               NETNS_TRANSACTION % b"one.example.test"]
    assert srv["snis"] == ["mx1.example.test"]
    out, (srv,) = netns_runs["mx-name-enforced"]
    assert srv["failures"] == []
    assert out == (b"ZTLS unable to verify server with control/tlshosts/"
                   b"mx2.example.test.pem: unable to get local issuer "
                   b"certificate; connected to 127.0.0.22.\n\0")


@pytest.mark.netns
def test_mx_recipient_domain_pem_is_ignored(netns_runs):
    out, (srv,) = netns_runs["recipient-domain-ignored"]
    assert srv["failures"] == []
    assert out == _accepted(b"127.0.0.23")
    assert srv["tls"][0] is not None
    assert srv["snis"] == ["mx3.example.test"]


# --- 14. a large message over TLS --------------------------------------------

def _large_message():
    """About 8 MiB: lines of many lengths, a third starting with dots."""
    lines = []
    size = 0
    i = 0
    while size < 8 << 20:
        line = b"." * (i % 3 == 0) + b".." * (i % 7 == 0) + \
            b"line %d " % i + b"abcdefghij" * (i % 23) + b"\n"
        lines.append(line)
        size += len(line)
        i += 1
    return b"Subject: big\n\n" + b"".join(lines)


@pytest.fixture(scope="module")
def large():
    return _large_message()


def test_large_message_data_over_starttls_is_byte_exact(home, dns, pki,
                                                        large):
    out, plain = tee(home, dns, message=large)
    assert out == TEE_K
    tls = pki.server(pki.leaf("mx.example"))
    out, secure = tee(home, dns, message=large, tls_context=tls.context)
    assert out == TEE_K
    assert secure.messages[0].tls is not None
    assert plain.messages[0].tls is None
    assert secure.messages[0].content == plain.messages[0].content == \
        large.replace(b"\n", b"\r\n")


def test_large_message_bdat_over_starttls_is_byte_exact(home, dns, pki,
                                                        large):
    tls = pki.server(pki.leaf("mx.example"))
    script = [*before_tls(), starttls(tls), expect_line(EHLO),
              send(ehlo(b"CHUNKING")), expect_line(MAIL), send(OK),
              expect_line(RCPT_LINE), send(OK), serve_bdat(),
              read_to_eof(QUIT)]
    out, srv = scripted(home, dns, script, message=large)
    assert out == K
    record = srv.records[0]
    assert record.tls is not None
    assert len(record.chunks) > 1                 # several BDAT chunks
    assert record.data == [large.replace(b"\n", b"\r\n")]



@pytest.mark.parametrize("name", ["clientcert.pem",
                                  "tlshosts/mx.example.pem"])
def test_fifo_tls_file_is_unloadable_not_a_hang(home, dns, name):
    """OpenSSL opens these files blocking: a FIFO with no writer would
    hang the delivery for ever.  It is refused as a broken file is."""
    (home / "control" / "tlshosts").mkdir(exist_ok=True)
    os.mkfifo(home / "control" / name)
    out, srv = scripted(home, dns, [send(b"220 ok\r\n"), expect_line(EHLO),
                                    send(CAPS_TLS), read_to_eof(QUIT)])
    assert re.fullmatch(rb"ZTLS unable to load control/" +
                        re.escape(name.encode()) +
                        rb": [^;\n]*not a regular file[^;\n]*; connecting "
                        rb"to 127\.0\.0\.1\.\n\0", out), out
    assert srv.received == [EHLO + QUIT]
