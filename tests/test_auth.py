"""SMTP AUTH to a relay with credentials (issue 11; qmailremote/auth.py).

Deliveries go through the public ``deliver()`` API with a route
``:127.0.0.1:<port>|user|password`` (or another dialect) in
``control/smtproutes`` or ``control/authsenders``, to a ScriptedServer
(exact wire bytes, broken servers), to aiosmtpd with its own AUTH
(tests/authfixtures.py ``AuthTeeServer``: an independent implementation
of PLAIN and LOGIN), or in-process to tests/fakesmtp.py's fake with AUTH
(``AuthFakeSocket``).  The server sides of CRAM-MD5 and SCRAM-SHA-256 are
written here from RFC 2195 and RFC 5802/7677, with the RFCs' own test
vectors as known answers.

Every delivery checks the report protocol (recipient reports, then
exactly one K/Z/D, the last: ``message_reports``) and that no report
holds the password.

Sections: 1. mechanisms;  2. failures;  3. never over plaintext;
4. control/authsenders;  5. the single-message-report invariant as a
property over random server answers.
"""

import base64
import hashlib
import hmac
import os
import re
import sys
import time
import types

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from authfixtures import (AuthFakeSocket, Authenticator, AuthTeeServer,
                          ScramServer, b64, code_of, ehlo, message_reports,
                          scram_steps)
from fakesmtp import DROP, Cut, Script
from qmailremote import auth, deliver, esmtp
from qmailremote.auth import Credentials, authenticate, credentials_for
from qmailremote.capabilities import Capabilities
from qmailremote.control import open_home
from qmailremote.message import Message
from qmailremote.report import Report
from qmailremote.routes import Route
from qmailremote.session import Session
from smtpserver import (ScriptedServer, call, close, expect_data,
                        expect_line, read_to_eof, send)
from netns import require_netns, run_in_netns
from tlsfixtures import Pki, starttls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IP = b"127.0.0.1"
SENDER = b"a@b.example"
RCPT = b"c@d.example"
MESSAGE = b"Subject: t\n\n.hi\n"
STUFFED = b"Subject: t\r\n\r\n..hi\r\n"

# ':' and '|' (sagredo and s/qmail keep all after the second '|') and a
# space; the indimail dialect gets one without the space.
USER = b"alice@relay.example"
PASSWORD = b"pa:ss|w0rd S3cret#"
SPACELESS = b"pa:ss|w0rd#S3cret"

EHLO = b"EHLO me.example\r\n"
HELO = b"HELO me.example\r\n"
STARTTLS = b"STARTTLS\r\n"
MAIL = b"MAIL FROM:<a@b.example>\r\n"
MAIL_AUTH = b"MAIL FROM:<a@b.example> AUTH=<>\r\n"
RCPT_LINE = b"RCPT TO:<c@d.example>\r\n"
DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
OK = b"250 ok\r\n"
FINAL = b"250 ok queued\r\n"
OK235 = b"235 2.7.0 Authentication successful\r\n"
CRLF = b"\r\n"

K = b"r\0K127.0.0.1 accepted message.\nRemote host said: 250 ok queued\n\0"
TEE_K = (b"r\0K127.0.0.1 accepted message.\n"
         b"Remote host said: 250 OK queued\n\0")
DIED = b"ZConnected to 127.0.0.1 but connection died. (#4.4.2)\n\0"
# What a delivery of MESSAGE sends after AUTH.
TRANSACTION = MAIL_AUTH + RCPT_LINE + DATA + STUFFED + b".\r\n" + QUIT


def plain_line(user=USER, password=PASSWORD):
    """RFC 4616, empty authzid, as the initial response of AUTH PLAIN."""
    return b"AUTH PLAIN " + b64(b"\0" + user + b"\0" + password) + CRLF


def z(text, said=b""):
    return b"ZConnected to 127.0.0.1 but " + text + b"\n" + said + b"\0"


def said(reply):
    return b"Remote host said: " + reply.replace(b"\r\n", b"\n")


def no_auth(relay=b"127.0.0.1"):
    return z(b"it offers no AUTH, and I have credentials for " + relay +
             b". (#4.7.0)")


def nonsense(mechanism):
    return z(b"its AUTH " + mechanism + b" challenge made no sense. (#4.7.0)")


def check(out, *secrets):
    """The report protocol, and no secret (nor its base64) in the output."""
    reports = message_reports(out)
    for secret in secrets or (PASSWORD, SPACELESS):
        assert secret not in out
        assert b64(secret) not in out
    return reports


# --- fixtures and helpers ----------------------------------------------------

@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    # Bounds a wrong wait (a failing test) to seconds; no test waits it out.
    (tmp_path / "control" / "timeoutremote").write_bytes(b"10\n")
    return tmp_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def put(home, name, data=b""):
    path = home / "control" / name
    path.write_bytes(data)
    return path


DIALECTS = {
    "sagredo": lambda port, user, password:
        b"127.0.0.1:%d|%s|%s" % (port, user, password),
    "sqmail": lambda port, user, password:
        b"127.0.0.1;%d|%s|%s" % (port, user, password),
    "indimail": lambda port, user, password:
        b"127.0.0.1:%d %s %s" % (port, user, password),
}


def route_value(port, dialect="sagredo", user=USER, password=PASSWORD):
    if dialect == "indimail" and password == PASSWORD:
        password = SPACELESS
    return DIALECTS[dialect](port, user, password)


def send_mail(home, sender=SENDER):
    return deliver(b"example.org", sender, [RCPT], MESSAGE,
                   home=str(home)).render()


def scripted(home, script, dialect="sagredo", user=USER, password=PASSWORD):
    """Deliver through a ScriptedServer routed (smtproutes, default route)
    with credentials; (stdout, server) once the script has finished."""
    with ScriptedServer(script) as srv:
        put(home, "smtproutes", b":" + route_value(srv.port, dialect, user,
                                                   password) + b"\n")
        out = send_mail(home)
        srv.wait_done()
    check(out, password)
    return out, srv


def opening(caps):
    return [send(b"220 mx.example ESMTP\r\n"), expect_line(EHLO), send(caps)]


def transaction(mail=MAIL_AUTH):
    """MAIL (with AUTH=<>), RCPT, DATA, the body and QUIT, lock-step."""
    return [expect_line(mail), send(OK), expect_line(RCPT_LINE), send(OK),
            expect_line(DATA), send(b"354 go\r\n"),
            expect_data(STUFFED + b".\r\n"), send(FINAL), read_to_eof(QUIT)]


def refused_end():
    """After a refusal: QUIT and nothing else (no MAIL)."""
    return [read_to_eof(QUIT)]


def login_steps(user=USER, password=PASSWORD, final=OK235):
    return [expect_line(b"AUTH LOGIN\r\n"), send(b"334 VXNlcm5hbWU6\r\n"),
            expect_line(b64(user) + CRLF), send(b"334 UGFzc3dvcmQ6\r\n"),
            expect_line(b64(password) + CRLF), send(final)]


def cram_steps(user=USER, password=PASSWORD, final=OK235):
    """CRAM-MD5 (RFC 2195): a fresh challenge, the HMAC checked here."""
    def exchange(conn):
        line = conn.read_line()
        conn.record.lines.append(line)
        if line != b"AUTH CRAM-MD5\r\n":
            conn.fail(f"expected AUTH CRAM-MD5, got {line!r}")
        challenge = b"<%d.%d@mx.example>" % (int.from_bytes(os.urandom(4),
                                                            "big"),
                                             time.time_ns())
        conn.sock.sendall(b"334 " + b64(challenge) + CRLF)
        line = conn.read_line()
        conn.record.lines.append(line)
        digest = hmac.new(password, challenge, hashlib.md5).hexdigest()
        expected = b64(user + b" " + digest.encode()) + CRLF
        if line != expected:
            conn.fail(f"CRAM-MD5 response {line!r}, expected {expected!r}")
        conn.sock.sendall(final)
    exchange.__name__ = "cram_steps"
    return [call(exchange)]


def good_steps(mechanism):
    """The server's side of a successful exchange, ending with 235."""
    if mechanism == b"SCRAM-SHA-256":
        return [scram_steps(ScramServer(USER, PASSWORD)),
                expect_line(CRLF), send(OK235)]
    if mechanism == b"CRAM-MD5":
        return cram_steps()
    if mechanism == b"PLAIN":
        return [expect_line(plain_line()), send(OK235)]
    return login_steps()


# --- 1. mechanisms -----------------------------------------------------------

@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_plain_initial_response_is_one_round_trip(home, dialect):
    password = SPACELESS if dialect == "indimail" else PASSWORD
    script = [*opening(ehlo(b"AUTH PLAIN")),
              expect_line(plain_line(password=password)), send(OK235),
              *transaction()]
    out, srv = scripted(home, script, dialect)
    assert out == K
    # One AUTH line, one reply, then MAIL: one round trip.
    assert srv.received[0] == EHLO + plain_line(password=password) + \
        TRANSACTION
    assert base64.b64decode(plain_line(password=password)[11:]) == \
        b"\0alice@relay.example\0" + password


def test_login(home):
    out, srv = scripted(home, [*opening(ehlo(b"AUTH LOGIN")), *login_steps(),
                               *transaction()])
    assert out == K
    assert srv.received[0] == (EHLO + b"AUTH LOGIN\r\n" + b64(USER) + CRLF +
                               b64(PASSWORD) + CRLF + TRANSACTION)


def test_cram_md5_rfc2195_known_answer(home):
    """RFC 2195 section 2's example, byte for byte."""
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    script = [*opening(ehlo(b"AUTH CRAM-MD5")),
              expect_line(b"AUTH CRAM-MD5\r\n"),
              send(b"334 " + b64(challenge) + CRLF),
              expect_line(b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"
                          b"\r\n"),
              send(OK235), *transaction()]
    out, _ = scripted(home, script, user=b"tim", password=b"tanstaaftanstaaf")
    assert out == K


def test_cram_md5_fresh_challenge(home):
    out, srv = scripted(home, [*opening(ehlo(b"AUTH CRAM-MD5")),
                               *cram_steps(), *transaction()])
    assert out == K
    assert srv.records[0].lines[1] == b"AUTH CRAM-MD5\r\n"
    assert srv.received[0].startswith(EHLO + b"AUTH CRAM-MD5\r\n")


def test_scram_sha256_rfc7677_known_answer(home, monkeypatch):
    """RFC 7677 section 3's exchange, byte for byte: the client nonce is
    made the RFC's (the only random input of the client)."""
    nonce = b"rOprNGfwEbeRWgbNEkqO"
    monkeypatch.setattr(auth, "os", types.SimpleNamespace(
        urandom=lambda n: base64.b64decode(nonce)))
    server_first = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    client_final = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)"
                    b"hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    server_final = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    script = [*opening(ehlo(b"AUTH SCRAM-SHA-256")),
              expect_line(b"AUTH SCRAM-SHA-256 " +
                          b64(b"n,,n=user,r=" + nonce) + CRLF),
              send(b"334 " + b64(server_first) + CRLF),
              expect_line(b64(client_final) + CRLF),
              send(b"334 " + b64(server_final) + CRLF),
              expect_line(CRLF), send(OK235), *transaction()]
    out, _ = scripted(home, script, user=b"user", password=b"pencil")
    assert out == K
    assert b"pencil" not in out


@pytest.mark.parametrize("user", [USER, b"we,ird=user", b"=2C"])
def test_scram_sha256_against_an_rfc5802_server(home, user):
    """The server checks the client proof and the saslname escaping."""
    server = ScramServer(user, PASSWORD)
    script = [*opening(ehlo(b"AUTH SCRAM-SHA-256")), scram_steps(server),
              expect_line(CRLF), send(OK235), *transaction()]
    out, srv = scripted(home, script, user=user)
    assert out == K
    assert srv.records[0].scram.proof_ok
    escaped = user.replace(b"=", b"=3D").replace(b",", b"=2C")
    assert server.client_first_bare.startswith(b"n=" + escaped + b",r=")


def test_scram_wrong_server_signature_is_cancelled(home):
    """A v= that is not the ServerSignature: ``*``, a Z, no MAIL."""
    wrong = lambda server: (b"334 " + b64(b"v=" + b64(bytes(32))) + CRLF)
    script = [*opening(ehlo(b"AUTH SCRAM-SHA-256")),
              scram_steps(ScramServer(USER, PASSWORD), server_final=wrong),
              expect_line(b"*\r\n"), send(b"501 5.7.0 Auth aborted\r\n"),
              read_to_eof(QUIT)]
    out, srv = scripted(home, script)
    assert out == nonsense(b"SCRAM-SHA-256")
    assert srv.records[0].scram.proof_ok
    assert b"MAIL" not in srv.received[0]


@pytest.mark.parametrize("when", ["after-client-final", "after-client-first"])
def test_scram_success_without_server_signature_is_not_trusted(home, when):
    """A server that says 235 without ever sending ``v=`` has not proved
    it knows the password (RFC 5802 section 3: the client authenticates
    the server by the ServerSignature; auth.py: "The server's signature is
    checked").  An impostor on the path needs only that 235: nothing may
    be handed to it.  Expected: a Z before MAIL, QUIT."""
    if when == "after-client-final":
        exchange = [scram_steps(ScramServer(USER, PASSWORD),
                                server_final=lambda server: OK235)]
    else:
        exchange = [expect_line(re.compile(rb"AUTH SCRAM-SHA-256 \S+\r\n")),
                    send(OK235)]
    # The next line is QUIT, or (wrongly) MAIL: either way the server
    # hangs up then, so a wrong client fails at once, not by a timeout.
    script = [*opening(ehlo(b"AUTH SCRAM-SHA-256")), *exchange,
              expect_line(), close()]
    out, srv = scripted(home, script)
    assert b"MAIL" not in srv.received[0]
    assert srv.received[0].endswith(QUIT)
    assert out.startswith(b"ZConnected to 127.0.0.1 but ")
    assert b"SCRAM-SHA-256" in out


@pytest.mark.parametrize("offered, mechanism", [
    (b"AUTH LOGIN PLAIN CRAM-MD5 SCRAM-SHA-256", b"SCRAM-SHA-256"),
    (b"AUTH SCRAM-SHA-256 LOGIN", b"SCRAM-SHA-256"),
    (b"AUTH LOGIN PLAIN CRAM-MD5", b"CRAM-MD5"),
    (b"AUTH LOGIN PLAIN", b"PLAIN"),
    (b"AUTH PLAIN LOGIN XOAUTH2", b"PLAIN"),
    (b"AUTH login", b"LOGIN"),
    (b"auth cram-md5 plain", b"CRAM-MD5"),
    (b"AUTH=LOGIN PLAIN", b"PLAIN"),
    (b"AUTH GSSAPI SCRAM-SHA-1 LOGIN", b"LOGIN"),
])
def test_strongest_offered_first(home, offered, mechanism):
    out, srv = scripted(home, [*opening(ehlo(b"8BITMIME", offered)),
                               *good_steps(mechanism), *transaction()])
    assert out == K
    assert srv.received[0].startswith(EHLO + b"AUTH " + mechanism)


@pytest.mark.parametrize("authmechanisms, mechanism", [
    (b"PLAIN\n", b"PLAIN"),
    (b"login", b"LOGIN"),
    (b"LOGIN PLAIN\n", b"PLAIN"),
    (b"cram-md5\nplain\n", b"CRAM-MD5"),
    (b"XOAUTH2 PLAIN\n", b"PLAIN"),
    (b"  scram-sha-256 \t\n", b"SCRAM-SHA-256"),
])
def test_authmechanisms_restricts(home, authmechanisms, mechanism):
    put(home, "authmechanisms", authmechanisms)
    offered = ehlo(b"AUTH LOGIN PLAIN CRAM-MD5 SCRAM-SHA-256")
    out, srv = scripted(home, [*opening(offered), *good_steps(mechanism),
                               *transaction()])
    assert out == K
    assert srv.received[0].startswith(EHLO + b"AUTH " + mechanism)


def test_authmechanisms_with_nothing_usable(home):
    put(home, "authmechanisms", b"XOAUTH2 GSSAPI\n")
    out, srv = scripted(home, [*opening(ehlo(b"AUTH LOGIN PLAIN")),
                               read_to_eof(QUIT)])
    assert out == z(b"it offers no AUTH mechanism I use (LOGIN PLAIN). "
                    b"(#4.7.0)")
    assert srv.received[0] == EHLO + QUIT


def test_mail_parameters_with_auth(home):
    """SIZE= and SMTPUTF8 come before AUTH=<>."""
    mail = b'MAIL FROM:<"\xc3\xa9"@b.example> SIZE=20 SMTPUTF8 AUTH=<>\r\n'
    script = [*opening(ehlo(b"SIZE 1000", b"SMTPUTF8", b"AUTH PLAIN")),
              expect_line(plain_line()), send(OK235), *transaction(mail)]
    with ScriptedServer(script) as srv:
        put(home, "smtproutes", b":" + route_value(srv.port) + b"\n")
        out = send_mail(home, sender=b"\xc3\xa9@b.example")
        srv.wait_done()
    check(out)
    assert out == K


def test_pipelining_auth_lockstep_then_envelope_pipelined(home):
    """AUTH waits for its reply; MAIL, RCPT and DATA then go in one
    write: the server reads all three before it answers any (a client
    that waited for the MAIL reply would never get it)."""
    script = [*opening(ehlo(b"PIPELINING", b"AUTH PLAIN")),
              expect_line(plain_line()), send(OK235),
              expect_line(MAIL_AUTH), expect_line(RCPT_LINE),
              expect_line(DATA), send(OK + OK + b"354 go\r\n"),
              expect_data(STUFFED + b".\r\n"), send(FINAL),
              read_to_eof(QUIT)]
    out, srv = scripted(home, script)
    assert out == K
    assert srv.received[0] == EHLO + plain_line() + TRANSACTION


def session_run(fake, creds, ip=IP):
    """esmtp.dialogue on *fake*, with *creds*: (stdout, fake)."""
    result = Session(fake, ip, 30).run(esmtp.dialogue, b"me.example",
                                       SENDER, [RCPT], Message(MESSAGE),
                                       True, None, creds)
    out = result.render()
    check(out, creds.password)
    assert fake.closed and not fake.starved and not fake.unknown
    return out


def test_pipelining_auth_writes(home):
    """The same, write by write: AUTH alone in a write made after the
    EHLO reply was read; MAIL, RCPT and DATA in one write made after the
    235 was read."""
    fake = AuthFakeSocket(Script(ehlo=ehlo(b"PIPELINING", b"AUTH PLAIN")),
                          [OK235])
    out = session_run(fake, Credentials(USER, PASSWORD, IP))
    assert out.endswith(b"K127.0.0.1 accepted message.\n"
                        b"Remote host said: 250 queued\n\0")
    sends = {verb: i for verb, _, i in fake.commands}
    assert len({sends[b"EHLO"], sends[b"AUTH"], sends[b"MAIL"]}) == 3
    assert sends[b"MAIL"] == sends[b"RCPT"] == sends[b"DATA"]
    assert fake.sends[sends[b"AUTH"]][0] >= fake.reply_end("ehlo")
    assert fake.sends[sends[b"MAIL"]][0] >= fake.reply_end("auth")
    assert fake.mail_line == MAIL_AUTH


# --- 1b. aiosmtpd's own AUTH -------------------------------------------------

def tee(home, dialect="sagredo", password=PASSWORD, **server):
    """Deliver through an AuthTeeServer; (stdout, server) once closed."""
    with AuthTeeServer(**server) as srv:
        put(home, "smtproutes", b":" + route_value(srv.port, dialect,
                                                   password=password) + b"\n")
        out = send_mail(home)
        srv.wait_closed(1)
        assert srv.connections == 1
    check(out, password)
    return out, srv


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_aiosmtpd_plain(home, dialect):
    password = SPACELESS if dialect == "indimail" else PASSWORD
    users = Authenticator({USER: password})
    out, srv = tee(home, dialect, password, authenticator=users)
    assert out == TEE_K
    assert users.calls == [("PLAIN", USER, password)]
    assert srv.mail_auth == [("<>", True)]
    assert srv.messages[0].content == MESSAGE.replace(b"\n", b"\r\n")
    assert srv.raw[0].startswith(EHLO + plain_line(password=password) +
                                 MAIL_AUTH)


def test_aiosmtpd_login(home):
    users = Authenticator({USER: PASSWORD})
    out, srv = tee(home, authenticator=users,
                   auth_exclude_mechanism=["PLAIN"])
    assert out == TEE_K
    assert users.calls == [("LOGIN", USER, PASSWORD)]
    assert srv.mail_auth == [("<>", True)]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_aiosmtpd_wrong_password(home, mechanism):
    users = Authenticator({USER: b"another password"})
    exclude = ["PLAIN"] if mechanism == "LOGIN" else []
    out, srv = tee(home, authenticator=users, auth_exclude_mechanism=exclude)
    assert out == z(b"authentication was rejected (AUTH %s)." %
                    mechanism.encode(),
                    said(b"535 5.7.8 Authentication credentials invalid\r\n"))
    assert users.calls == [(mechanism, USER, PASSWORD)]
    assert srv.messages == [] and srv.mail_auth == []
    assert srv.raw[0].endswith(QUIT) and b"MAIL" not in srv.raw[0]


@pytest.mark.parametrize("reply, text", [
    ("432 4.7.12 A password transition is needed",
     b"password expired (AUTH PLAIN)."),
    ("534 5.7.9 Authentication mechanism is too weak",
     b"authentication mechanism too weak (AUTH PLAIN)."),
    ("454 4.7.0 Temporary authentication failure",
     b"authentication was rejected (AUTH PLAIN)."),
])
def test_aiosmtpd_refusals(home, reply, text):
    users = Authenticator({}, reply=reply)
    out, srv = tee(home, authenticator=users)
    assert out == z(text, said(reply.encode() + CRLF))
    assert srv.messages == [] and srv.mail_auth == []
    assert srv.raw[0] == EHLO + plain_line() + QUIT


# --- 2. failures -------------------------------------------------------------

@pytest.mark.parametrize("caps, steps, report", [
    (b"AUTH PLAIN", [expect_line(plain_line()),
                     send(b"535 5.7.8 Credentials invalid\r\n")],
     z(b"authentication was rejected (AUTH PLAIN).",
       said(b"535 5.7.8 Credentials invalid\r\n"))),
    (b"AUTH PLAIN", [expect_line(plain_line()),
                     send(b"535-5.7.8 no\r\n535 5.7.8 really not\r\n")],
     z(b"authentication was rejected (AUTH PLAIN).",
       said(b"535-5.7.8 no\r\n535 5.7.8 really not\r\n"))),
    (b"AUTH LOGIN", login_steps(final=b"432 4.7.12 transition needed\r\n"),
     z(b"password expired (AUTH LOGIN).",
       said(b"432 4.7.12 transition needed\r\n"))),
    (b"AUTH PLAIN", [expect_line(plain_line()),
                     send(b"534 5.7.9 too weak\r\n")],
     z(b"authentication mechanism too weak (AUTH PLAIN).",
       said(b"534 5.7.9 too weak\r\n"))),
    (b"AUTH CRAM-MD5", cram_steps(final=b"534 5.7.9 too weak\r\n"),
     z(b"authentication mechanism too weak (AUTH CRAM-MD5).",
       said(b"534 5.7.9 too weak\r\n"))),
    (b"AUTH PLAIN", [expect_line(plain_line()),
                     send(b"454 4.7.0 Temporary authentication failure\r\n")],
     z(b"authentication was rejected (AUTH PLAIN).",
       said(b"454 4.7.0 Temporary authentication failure\r\n"))),
    (b"AUTH CRAM-MD5", cram_steps(final=b"535 5.7.8 bad\r\n"),
     z(b"authentication was rejected (AUTH CRAM-MD5).",
       said(b"535 5.7.8 bad\r\n"))),
    (b"AUTH LOGIN", [expect_line(b"AUTH LOGIN\r\n"),
                     send(b"504 5.5.4 unrecognized\r\n")],
     z(b"authentication was rejected (AUTH LOGIN).",
       said(b"504 5.5.4 unrecognized\r\n"))),
    (b"AUTH PLAIN", [expect_line(plain_line()), send(b"xyz odd\r\n")],
     z(b"authentication was rejected (AUTH PLAIN).", said(b"xyz odd\r\n"))),
    (b"AUTH PLAIN", [expect_line(plain_line()), send(OK)],
     z(b"authentication was rejected (AUTH PLAIN).", said(OK))),
    # 334 to PLAIN's initial response: the exchange cannot go on, and
    # "*" ends it (RFC 4954 4) before QUIT.
    (b"AUTH PLAIN", [expect_line(plain_line()), send(b"334 \r\n"),
                     expect_line(b"*\r\n"), send(b"501 5.7.0 aborted\r\n")],
     nonsense(b"PLAIN")),
    (b"AUTH SCRAM-SHA-256",
     [scram_steps(ScramServer(USER, PASSWORD),
                  server_final=lambda s: b"535 5.7.8 no\r\n")],
     z(b"authentication was rejected (AUTH SCRAM-SHA-256).",
       said(b"535 5.7.8 no\r\n"))),
], ids=["535", "535-multiline", "432-login", "534", "534-cram", "454",
        "535-cram", "504-login", "non-digit", "250", "334-to-plain",
        "535-scram"])
def test_refusal_is_one_z_then_quit(home, caps, steps, report):
    out, srv = scripted(home, [*opening(ehlo(caps)), *steps,
                               *refused_end()])
    assert out == report
    assert b"MAIL" not in srv.received[0]
    assert srv.received[0].endswith(QUIT)


@pytest.mark.parametrize("caps", [
    ehlo(), ehlo(b"PIPELINING", b"SIZE 1000", b"STARTTLSX"),
    ehlo(b"AUTHX PLAIN"), ehlo(b"X-AUTH PLAIN"),
])
def test_no_auth_offered_is_an_immediate_z(home, caps):
    """sagredo sends nothing then and waits out timeoutremote (10 s here):
    the Z must come at once."""
    # A client that waited would report the timeout, not this.
    put(home, "timeoutremote", b"30\n")
    out, srv = scripted(home, [*opening(caps), read_to_eof(QUIT)])
    assert out == no_auth()
    assert srv.received[0] == EHLO + QUIT


def test_no_auth_names_the_relay_safely():
    """The report names the relay (bytes outside 33..126 as '?'), never
    the password."""
    report, fake = direct(IP, Credentials(USER, PASSWORD, b"my relay\xff"),
                          False, caps=ehlo())
    assert report == Report("Z", no_auth(b"my?relay?")[1:-1])
    assert fake.sent == QUIT


@pytest.mark.parametrize("offered, listed", [
    (b"AUTH GSSAPI NTLM XOAUTH2", b"GSSAPI NTLM XOAUTH2"),
    (b"auth gssapi", b"GSSAPI"),
    (b"AUTH", b""),
    (b"AUTH SCRAM-SHA-1 DIGEST-MD5", b"SCRAM-SHA-1 DIGEST-MD5"),
])
def test_no_common_mechanism(home, offered, listed):
    out, srv = scripted(home, [*opening(ehlo(offered)), read_to_eof(QUIT)])
    assert out == z(b"it offers no AUTH mechanism I use (" + listed +
                    b"). (#4.7.0)")
    assert srv.received[0] == EHLO + QUIT


def test_ehlo_refused_then_helo_then_no_auth(home):
    script = [send(b"220 ok\r\n"), expect_line(EHLO),
              send(b"502 5.5.1 unimplemented\r\n"), expect_line(HELO),
              send(OK), read_to_eof(QUIT)]
    out, srv = scripted(home, script)
    assert out == no_auth()
    assert srv.received[0] == EHLO + HELO + QUIT


@pytest.mark.parametrize("mechanism, challenge", [
    (b"CRAM-MD5", b"334 !!! not base64 !!!\r\n"),
    (b"CRAM-MD5", b"334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U\r\n"),  # no pad
    (b"SCRAM-SHA-256", b"334 %%%\r\n"),
    (b"SCRAM-SHA-256", b"334 " + b64(b"nonsense") + CRLF),
    (b"SCRAM-SHA-256", b"334 " + b64(b"r=not-my-nonce,s=c2FsdA==,i=4096") +
     CRLF),
    (b"SCRAM-SHA-256", b"334 \r\n"),
])
def test_garbage_challenge_is_cancelled(home, mechanism, challenge):
    first = (b"AUTH CRAM-MD5\r\n" if mechanism == b"CRAM-MD5" else
             re.compile(rb"AUTH SCRAM-SHA-256 [A-Za-z0-9+/=]+\r\n"))
    script = [*opening(ehlo(b"AUTH " + mechanism)), expect_line(first),
              send(challenge), expect_line(b"*\r\n"),
              send(b"501 5.7.0 Auth aborted\r\n"), read_to_eof(QUIT)]
    out, srv = scripted(home, script)
    assert out == nonsense(mechanism)
    assert b"MAIL" not in srv.received[0]


@pytest.mark.parametrize("caps, steps", [
    (b"AUTH PLAIN", [expect_line(plain_line()), close()]),
    (b"AUTH PLAIN", [expect_line(plain_line()), send(b"235 2.7.0 o"),
                     close()]),
    (b"AUTH CRAM-MD5", [expect_line(b"AUTH CRAM-MD5\r\n"),
                        send(b"334 %%%\r\n"), expect_line(b"*\r\n"),
                        close()]),
], ids=["drop", "cut", "drop-after-cancel"])
def test_drop_during_auth(home, caps, steps):
    out, srv = scripted(home, [*opening(ehlo(caps)), *steps])
    assert out == DIED
    assert b"MAIL" not in srv.received[0]


# --- 3. never over plaintext -------------------------------------------------

def direct(ip, creds, secure, auth_replies=(OK235,),
           caps=ehlo(b"AUTH PLAIN LOGIN")):
    """auth.authenticate() alone on a Session with *ip* over the fake;
    a K ``authenticated`` report when it returns.  (report, fake)."""
    # No greeting: authenticate() reads nothing before its own AUTH.
    fake = AuthFakeSocket(Script(greeting=b""), auth_replies)
    capabilities = Capabilities.from_ehlo(caps.replace(b"\r\n", b"\n")
                                          .rstrip(b"\n"))

    def dialogue(session):
        authenticate(session, capabilities, creds, secure)
        return Report("K", b"authenticated\n")
    result = Session(fake, ip, 30).run(dialogue)
    out = result.render()
    check(out, creds.password)
    assert fake.closed and not fake.starved
    return result.message, fake


@pytest.mark.parametrize("ip", [b"192.0.2.7", b"10.0.0.1", b"128.0.0.1",
                                b"172.16.0.1"])
@pytest.mark.parametrize("relay, named", [
    (b"smarthost.example", b"smarthost.example"),
    (b"[192.0.2.7]", b"[192.0.2.7]"),
    (b"odd host\xff", b"odd?host?"),
])
def test_no_tls_no_credentials_off_loopback(ip, relay, named):
    report, fake = direct(ip, Credentials(USER, PASSWORD, relay), False)
    assert report == Report("Z", b"Connected to " + ip + b" but TLS could "
                            b"not be had, and I send the credentials for " +
                            named + b" only inside TLS. (#4.7.0)\n")
    assert fake.auth_lines == []
    assert fake.sent == QUIT


def test_no_tls_is_checked_before_the_offer(home):
    """Off loopback without TLS, even a server without AUTH gets the TLS
    text: the credentials' rule comes first."""
    report, fake = direct(b"192.0.2.7", Credentials(USER, PASSWORD, b"r"),
                          False, caps=ehlo())
    assert b"TLS could not be had" in report.text
    assert fake.sent == QUIT


@pytest.mark.parametrize("ip, secure, plaintext_ok", [
    (b"192.0.2.7", True, False),        # inside TLS
    (b"192.0.2.7", False, True),        # control/authplaintext
    (b"127.0.0.1", False, False),       # loopback
    (b"127.1.2.3", False, False),       # all of 127/8 is loopback
])
def test_when_credentials_may_go(ip, secure, plaintext_ok):
    creds = Credentials(USER, PASSWORD, b"relay.example",
                        plaintext_ok=plaintext_ok)
    report, fake = direct(ip, creds, secure)
    assert report == Report("K", b"authenticated\n")
    assert fake.auth_lines == [plain_line()]
    assert fake.sent == plain_line()


def test_credentials_for_reads_the_control_files(home):
    route = Route(b"relay.example", 587, USER, PASSWORD)
    fd = open_home(str(home))
    try:
        plain = credentials_for(fd, route)
        put(home, "authplaintext")
        put(home, "authmechanisms", b"login\ncram-md5 bogus\n")
        lifted = credentials_for(fd, route)
    finally:
        os.close(fd)
    assert (plain.user, plain.password, plain.relay) == (USER, PASSWORD,
                                                         b"relay.example")
    assert not plain.plaintext_ok
    assert plain.mechanisms == (b"SCRAM-SHA-256", b"CRAM-MD5", b"PLAIN",
                                b"LOGIN")
    assert lifted.plaintext_ok
    assert lifted.mechanisms == (b"CRAM-MD5", b"LOGIN")
    for creds in (plain, lifted):
        assert "S3cret" not in repr(creds) and "S3cret" not in str(creds)


@pytest.mark.netns
@pytest.mark.parametrize("authplaintext", [False, True])
def test_non_loopback_relay_in_a_private_netns(tmp_path, authplaintext):
    """The rule end to end, root only: a relay on 192.0.2.7 (an address
    on lo inside a private network namespace, no STARTTLS) gets no
    credentials, unless control/authplaintext exists."""
    require_netns()
    control = tmp_path / "qmail" / "control"
    control.mkdir(parents=True)
    (control / "me").write_bytes(b"me.example\n")
    (control / "smtproutes").write_bytes(
        b":192.0.2.7:2525|" + USER + b"|" + PASSWORD + b"\n")
    if authplaintext:
        (control / "authplaintext").write_bytes(b"")
    r = run_in_netns({
        "command": [sys.executable, "-m", "qmailremote", "example.org",
                    SENDER.decode(), RCPT.decode()],
        "cwd": ROOT, "env": {"QMAILHOME": str(tmp_path / "qmail")},
        "stdin": MESSAGE, "timeout": 20, "dns": False,
        "ip": [["addr", "add", "192.0.2.7/32", "dev", "lo"]],
        "smtp": [{"addr": "192.0.2.7", "port": 2525, "replies": {
            "EHLO": "250-{addr}\n250 AUTH PLAIN LOGIN",
            "OTHER": "235 2.7.0 ok"}}],
    })
    assert (r.returncode, r.timed_out, r.stderr) == (0, False, b"")
    check(r.stdout)
    wire = r.server("192.0.2.7", 2525).sessions
    if authplaintext:
        assert r.stdout == (b"r\0K192.0.2.7 accepted message.\n"
                            b"Remote host said: 250 ok 192.0.2.7\n\0")
        assert wire == [EHLO + plain_line() + TRANSACTION]
    else:
        assert r.stdout == (b"ZConnected to 192.0.2.7 but TLS could not be "
                            b"had, and I send the credentials for 192.0.2.7 "
                            b"only inside TLS. (#4.7.0)\n\0")
        assert wire == [EHLO + QUIT]


def test_auth_only_after_starttls_with_aiosmtpd(home, pki):
    """aiosmtpd offers AUTH only inside TLS (its auth_require_tls): the
    decrypted bytes are EHLO, STARTTLS, EHLO, AUTH, MAIL."""
    tls = pki.server(pki.leaf("mx.example"))
    users = Authenticator({USER: PASSWORD})
    out, srv = tee(home, authenticator=users, auth_require_tls=True,
                   tls_context=tls.context)
    assert out == TEE_K
    assert srv.messages[0].tls in ("TLSv1.3", "TLSv1.2")
    assert users.calls == [("PLAIN", USER, PASSWORD)]
    assert srv.raw == [EHLO + STARTTLS + EHLO + plain_line() + TRANSACTION]


def test_auth_offered_before_tls_only_counts_after(home, pki):
    """The capabilities are those of the EHLO after STARTTLS: AUTH
    offered only before it is not offered."""
    tls = pki.server(pki.leaf("mx.example"))
    script = [*opening(ehlo(b"STARTTLS", b"AUTH PLAIN")),
              expect_line(STARTTLS), send(b"220 go ahead\r\n"), starttls(tls),
              expect_line(EHLO), send(ehlo(b"PIPELINING")), read_to_eof(QUIT)]
    out, srv = scripted(home, script)
    assert out == no_auth()
    assert srv.records[0].tls is not None
    assert srv.received[0] == EHLO + STARTTLS + EHLO + QUIT


def test_scripted_auth_inside_tls(home, pki):
    tls = pki.server(pki.leaf("mx.example"))
    script = [*opening(ehlo(b"STARTTLS")), expect_line(STARTTLS),
              send(b"220 go ahead\r\n"), starttls(tls), expect_line(EHLO),
              send(ehlo(b"AUTH LOGIN CRAM-MD5")), *cram_steps(),
              *transaction()]
    out, srv = scripted(home, script)
    assert out == K
    assert srv.records[0].tls is not None
    assert srv.received[0].startswith(EHLO + STARTTLS + EHLO +
                                      b"AUTH CRAM-MD5\r\n")


# --- 4. control/authsenders --------------------------------------------------

def two_servers(home, auth_script, other_script=(), authsenders=None,
                smtproutes=None, sender=SENDER):
    """*auth_script* on server A, *other_script* on server B; the files
    are built by *authsenders(portA)* / *smtproutes(portB)*."""
    with ScriptedServer(auth_script) as a, \
            ScriptedServer(list(other_script)) as b:
        if authsenders is not None:
            put(home, "authsenders", authsenders(a.port))
        if smtproutes is not None:
            put(home, "smtproutes", smtproutes(b.port))
        out = send_mail(home, sender=sender)
        for srv in (a, b):
            if srv.connections:
                srv.wait_done()
    check(out)
    return out, a, b


@pytest.mark.parametrize("key", [
    b"a@b.example", b"@b.example", b".example", b"", b"A@B.EXAMPLE",
    b"@B.Example", b".EXAMPLE",
])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_authsenders_take_precedence(home, key, dialect):
    password = SPACELESS if dialect == "indimail" else PASSWORD
    script = [*opening(ehlo(b"AUTH PLAIN")),
              expect_line(plain_line(password=password)), send(OK235),
              *transaction()]
    out, a, b = two_servers(
        home, script,
        authsenders=lambda port: b"other@b.example:127.0.0.1:1|x|y\n" +
        key + b":" + route_value(port, dialect) + b"\n",
        smtproutes=lambda port: b":127.0.0.1:%d|bob|other\n" % port)
    assert out == K
    assert (a.connections, b.connections) == (1, 0)


# Keys for the sender a@mail.b.example, most specific first.
SENDER_KEYS = [b"a@mail.b.example", b"@mail.b.example", b".b.example",
               b".example", b""]
# Keys that are no suffix the lookup tries: they must never match.
DECOYS = [b"mail.b.example", b"@b.example", b"b.example", b"a@mail",
          b"x@mail.b.example"]


@pytest.mark.parametrize("chosen", range(len(SENDER_KEYS)))
def test_authsenders_longest_first(home, chosen):
    """The most specific key present wins; every less specific one and
    every decoy names a closed port (a delivery through it would fail)."""
    script = [*opening(ehlo(b"AUTH PLAIN")), expect_line(plain_line()),
              send(OK235),
              *transaction(b"MAIL FROM:<a@mail.b.example> AUTH=<>\r\n")]
    with ScriptedServer(script) as srv:
        lines = [SENDER_KEYS[chosen] + b":" + route_value(srv.port) + b"\n"]
        lines += [k + b":127.0.0.1:1|x|y\n"
                  for k in SENDER_KEYS[chosen + 1:] + DECOYS]
        # File order does not matter: the best key is written last here.
        put(home, "authsenders", b"".join(reversed(lines)))
        out = send_mail(home, sender=b"a@mail.b.example")
        srv.wait_done()
    check(out)
    assert out == K


def test_authsenders_without_credentials_routes_without_auth(home):
    """The route's relay is used, and no AUTH (though offered): the MAIL
    has no AUTH=.  The smtproutes credentials are not used either."""
    script = [*opening(ehlo(b"AUTH PLAIN LOGIN")), *transaction(MAIL)]
    out, a, b = two_servers(
        home, script,
        authsenders=lambda port: b"@b.example:127.0.0.1:%d\n" % port,
        smtproutes=lambda port: b":127.0.0.1:%d|bob|%s\n" % (port, PASSWORD))
    assert out == K
    assert (a.connections, b.connections) == (1, 0)
    assert a.received[0] == EHLO + MAIL + RCPT_LINE + DATA + STUFFED + \
        b".\r\n" + QUIT


def test_authsenders_no_match_falls_back_to_smtproutes(home):
    script = [*opening(ehlo(b"AUTH PLAIN")),
              expect_line(plain_line(b"bob", b"bob's:pw")), send(OK235),
              *transaction()]
    out, a, b = two_servers(
        home, [], script,
        authsenders=lambda port: b"x@b.example:127.0.0.1:%d|u|p\n"
        b"@other.example:127.0.0.1:%d|u|p\n" % (port, port),
        smtproutes=lambda port: b":127.0.0.1:%d|bob|bob's:pw\n" % port)
    assert out == K
    assert (a.connections, b.connections) == (0, 1)


def test_authsenders_ignored_under_noesmtp(home):
    """control/noesmtp: 1.06's dialogue, authsenders not read, no AUTH."""
    put(home, "noesmtp")
    classic = [send(b"220 ok\r\n"), expect_line(HELO), send(OK),
               *transaction(MAIL)]
    out, a, b = two_servers(
        home, [], classic,
        authsenders=lambda port: b":127.0.0.1:%d|u|%s\n" % (port, PASSWORD),
        smtproutes=lambda port: b":127.0.0.1:%d\n" % port)
    assert out == K
    assert (a.connections, b.connections) == (0, 1)


def test_smtproutes_credentials_under_noesmtp_are_not_used(home):
    put(home, "noesmtp")
    classic = [send(b"220 ok\r\n"), expect_line(HELO), send(OK),
               *transaction(MAIL)]
    out, srv = scripted(home, classic)
    assert out == K
    assert srv.received[0] == HELO + MAIL + RCPT_LINE + DATA + STUFFED + \
        b".\r\n" + QUIT


# --- 5. the single-message-report invariant ----------------------------------

MECHANISMS = [b"SCRAM-SHA-256", b"CRAM-MD5", b"PLAIN", b"LOGIN"]


def _scram_first(iterations):
    def reply(line, fake):
        fake.scram = None
        try:
            _, mech, data = line.rstrip(b"\r\n").split(b" ")
            assert mech == b"SCRAM-SHA-256"
            server = ScramServer(USER, PASSWORD, iterations=iterations)
            first = server.first(base64.b64decode(data, validate=True))
        except (AssertionError, ValueError):
            return b"334 " + b64(b"r=,s=,i=1") + CRLF
        fake.scram = server
        return b"334 " + b64(first) + CRLF
    reply.__name__ = f"scram_first({iterations})"
    return reply


def _scram_final(good):
    def reply(line, fake):
        server = getattr(fake, "scram", None)
        try:
            assert server is not None
            v = server.final(base64.b64decode(line.rstrip(b"\r\n"),
                                              validate=True))
            assert server.proof_ok
        except (AssertionError, ValueError):
            return b"535 5.7.8 bad proof\r\n"
        if not good:
            v = b"v=" + b64(bytes(32))
        return b"334 " + b64(v) + CRLF
    reply.__name__ = f"scram_final({good})"
    return reply


def _cram_challenge(line, fake):
    return b"334 " + b64(b"<12345.678@mx.example>") + CRLF


GOOD = {
    b"PLAIN": [OK235],
    b"LOGIN": [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", OK235],
    b"CRAM-MD5": [_cram_challenge, OK235],
    # server-first, server-final, then 235 to the client's empty response.
    b"SCRAM-SHA-256": [_scram_first(4096), _scram_final(True), OK235],
}

AUTH_CODES = st.sampled_from([b"235", b"334", b"432", b"454", b"500",
                              b"501", b"504", b"530", b"534", b"535",
                              b"538", b"250", b"220", b"421", b"999",
                              b"100", b"23x", b"\xff\xff\xff", b"  5"])
# Server texts never hold '#', which every password here does.
TEXTS = st.binary(max_size=16).map(
    lambda b: b.replace(b"\n", b"").replace(b"#", b""))


@st.composite
def auth_reply(draw):
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        code = draw(AUTH_CODES)
        lines = draw(st.lists(TEXTS, min_size=1, max_size=2))
        return b"".join(code + (b" " if i == len(lines) - 1 else b"-") +
                        text + draw(st.sampled_from([b"\r\n", b"\n"]))
                        for i, text in enumerate(lines))
    if kind == 4:
        return b"334 " + b64(draw(st.binary(max_size=40))) + CRLF
    if kind == 5:
        return b"334 " + draw(TEXTS) + CRLF
    if kind == 6:
        return draw(st.sampled_from([_scram_first(1), _scram_first(4096),
                                     _scram_final(True), _scram_final(False),
                                     _cram_challenge]))
    if kind == 7:
        return DROP
    if kind == 8:
        reply = draw(st.sampled_from([OK235, b"334 VXNlcm5hbWU6\r\n",
                                      b"535 5.7.8 no\r\n"]))
        return Cut(reply[:draw(st.integers(0, len(reply) - 1))])
    return OK235


@st.composite
def auth_scripts(draw, mechanism):
    """The server's AUTH replies: often a good exchange for *mechanism*
    (the one the client should pick, or any when None), spoiled at one
    step now and then; else random replies."""
    if draw(st.integers(0, 3)):
        if mechanism is None or not draw(st.integers(0, 4)):
            mechanism = draw(st.sampled_from(MECHANISMS))
        replies = list(GOOD[mechanism])
        if not draw(st.integers(0, 2)):
            at = draw(st.integers(0, len(replies)))
            replies[at:at + 1] = [draw(auth_reply())]
        if not draw(st.integers(0, 5)):
            replies = replies[:draw(st.integers(0, len(replies)))]
    else:
        replies = draw(st.lists(auth_reply(), max_size=5))
    return replies


@st.composite
def offers(draw):
    """EHLO: refused, without AUTH, or AUTH with a random list."""
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return b"502 no\r\n", None
    extra = draw(st.lists(st.sampled_from([b"PIPELINING", b"SIZE 100000",
                                           b"CHUNKING", b"8BITMIME"]),
                          unique=True))
    if kind == 1:
        return ehlo(*extra), None
    names = draw(st.lists(st.sampled_from(MECHANISMS + [
        b"GSSAPI", b"XOAUTH2", b"NTLM", b"SCRAM-SHA-1"]), unique=True,
        min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=5))
    names = [n.lower() if draw(st.booleans()) else n for n in names]
    keyword = draw(st.sampled_from([b"AUTH ", b"AUTH=", b"auth "]))
    return ehlo(*extra, keyword + b" ".join(names)), [n.upper() for n in
                                                      names]


def outcome(last):
    """A label for the statistics: the message report's letter and gist."""
    for gist in (b"TLS could not", b"offers no AUTH,", b"no AUTH mechanism",
                 b"rejected (AUTH", b"expired", b"too weak", b"no sense",
                 b"died", b"sender"):
        if gist in last:
            return last[:1].decode() + " " + gist.decode()
    return last[:1].decode()


ALLOWED = st.one_of(st.none(), st.none(),
                    st.lists(st.sampled_from(MECHANISMS), min_size=1,
                             max_size=3, unique=True))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(offer=offers(), allowed=ALLOWED,
       ip=st.sampled_from([b"127.0.0.1", b"127.9.9.9", b"192.0.2.7"]),
       plaintext_ok=st.booleans(),
       mail=st.sampled_from([OK, OK, OK, b"451 later\r\n", b"550 no\r\n"]),
       pieces=st.sampled_from([[], [1], [3, 7]]), data=st.data())
def test_one_message_report_whatever_the_server_says(offer, allowed, ip,
                                                     plaintext_ok, mail,
                                                     pieces, data):
    caps, offered = offer
    mechanisms = MECHANISMS if allowed is None else \
        [m for m in MECHANISMS if m in allowed]
    usable = [m for m in mechanisms if offered and m in offered]
    replies = data.draw(auth_scripts(usable[0] if usable else None),
                        label="auth replies")
    creds = Credentials(USER, PASSWORD, b"relay.example", mechanisms,
                        plaintext_ok)
    fake = AuthFakeSocket(Script(ehlo=caps, mail=mail), replies, pieces)
    out = session_run(fake, creds, ip)             # one report, no password
    last = out[:-1].split(b"\0")[-1]
    event(outcome(last))
    assert b"internal error" not in out

    # The mechanism: the strongest of those offered that may be used.
    may_send = ip.startswith(b"127.") or plaintext_ok
    if not may_send:
        assert fake.auth_lines == []
        assert b"TLS could not be had" in last
    elif offered is None:
        assert fake.auth_lines == []
        assert last == b"ZConnected to " + ip + b" but it offers no AUTH, " \
            b"and I have credentials for relay.example. (#4.7.0)\n"
    elif not usable:
        assert fake.auth_lines == []
        assert b"offers no AUTH mechanism I use" in last
    else:
        assert fake.auth_lines[0].startswith(b"AUTH " + usable[0])
        if usable[0] == b"PLAIN":
            assert fake.auth_lines[0] == plain_line()

    # MAIL only after 235, with AUTH=<>; K only after MAIL.
    auth_replies = [reply for kind, _, reply in fake.log if kind == "auth"]
    mails = [line for kind, line, _ in fake.log if kind == "mail"]
    if mails:
        assert isinstance(auth_replies[-1], bytes)
        assert code_of(auth_replies[-1]) == 235
        assert len(mails) == 1
        assert mails[0].startswith(MAIL[:-2])
        assert mails[0].endswith(b" AUTH=<>\r\n")
        kinds = [kind for kind, _, _ in fake.log]
        assert kinds.index("mail") == len(auth_replies)
    if last[:1] == b"K":
        assert mails
    elif not mails and not fake.dropped:
        # A verdict before MAIL: QUIT is the last thing written.
        assert fake.sent.endswith(QUIT)
