"""``qmailremote probe`` (qmailremote/tools/probe.py).

Every probe runs in-process through ``qmailremote.tools.main`` against
loopback servers on ports the system picks: a ScriptedServer (exact bytes,
misbehaviour) reached through ``control/smtproutes`` or ``--port``, with a
fresh trustme CA for TLS (tests/tlsfixtures.py), and the fake DNS server
of tests/dnsserver.py handed to the probe through ``probe.RESOLVER``.  MX
tests use 127.0.0.2 and 127.0.0.3, which reach the loopback interface
without being addresses of this host (ipme holds 127.0.0.1 only).  The
"system" CA store is whatever ``SSL_CERT_FILE``/``SSL_CERT_DIR`` name,
set per test.

What a probe must never do is checked on the servers' side: no ``MAIL``,
``RCPT``, ``DATA``, ``BDAT`` or ``AUTH`` ever reaches them, and the tcpto
file is the same, byte for byte and in its time stamps, after a probe.
"""

import datetime
import json
import os
import re
import struct
import time

import _ssl
import pytest

from dnsserver import DNSServer
from qmailremote.mx import Resolver
from qmailremote.tools import main, probe
from smtpserver import (ScriptedServer, close, expect_line, read_some,
                        read_to_eof, send, stall)
from tlsfixtures import Pki, starttls

EHLO = b"EHLO me.example\r\n"
HELO = b"HELO me.example\r\n"
STARTTLS = b"STARTTLS\r\n"
QUIT = b"QUIT\r\n"
GREETING = b"220 mx.example ESMTP\r\n"
FORBIDDEN = (b"MAIL", b"RCPT", b"DATA", b"BDAT", b"AUTH", b"RSET", b"VRFY")
EXPIRED = datetime.datetime(2001, 1, 1)
PASSWORD = "s3cr3t-Pa55"
# Python 3.10+: the chain as the server sent it; 3.9: the leaf alone, with a
# note (probe._chain).
HAS_CHAIN = hasattr(_ssl._SSLSocket, "get_unverified_chain")
CHAIN_NOTE = ("  chain note: chain not available in this Python: "
              "the server's certificate alone\n")


def ehlo(*keywords, name=b"mx.example"):
    """An EHLO reply: the server's name, then one line per keyword."""
    lines = [name, *keywords]
    return b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-",
                                      line)
                    for i, line in enumerate(lines))


# --- fixtures and helpers ----------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    # Bounds a wrong wait (a failing test) to seconds; no test waits it out.
    (tmp_path / "control" / "timeoutremote").write_bytes(b"10\n")
    (tmp_path / "control" / "timeoutconnect").write_bytes(b"10\n")
    return tmp_path


@pytest.fixture
def dns(monkeypatch):
    with DNSServer() as srv:
        srv.add("mx.example", "A", "127.0.0.1")
        monkeypatch.setattr(probe, "RESOLVER",
                            Resolver([(srv.host, srv.port)], timeout=1,
                                     attempts=1))
        yield srv
    assert srv.errors == []


@pytest.fixture
def nodns(monkeypatch):
    """No DNS at all: any query fails the test."""
    class Refuse:
        def query(self, qname, qtype):
            raise AssertionError(f"unexpected DNS query {qname!r} {qtype}")
    monkeypatch.setattr(probe, "RESOLVER", Refuse())


@pytest.fixture
def system_store(monkeypatch, tmp_path, pki):
    """Point OpenSSL's default CA paths at files the test chooses."""
    def trust(ca_pem):
        path = tmp_path / "system-ca.pem"
        path.write_bytes(ca_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(path))
        empty = tmp_path / "system-ca.d"
        empty.mkdir(exist_ok=True)
        monkeypatch.setenv("SSL_CERT_DIR", str(empty))
    trust(pki.rogue.cert_pem.bytes())       # by default: not our CA
    return trust


def put(home, name, data=b""):
    path = home / "control" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def route(home, port, relay="127.0.0.1", extra=""):
    put(home, "smtproutes", f"example.test:{relay}:{port}{extra}\n".encode())


def run(capsys, home, *args, destination="example.test"):
    """(exit status, stdout) of ``qmailremote --home H probe ...``."""
    argv = ["--home", str(home), "probe", destination, *args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err == ""
    return exit_info.value.code, captured.out


def run_json(capsys, home, *args, destination="example.test"):
    status, out = run(capsys, home, "--json", *args,
                      destination=destination)
    return status, json.loads(out)


def served(srv, connections=None):
    """Wait for the server's scripts; what each connection received."""
    srv.wait_done(connections=connections or max(srv.connections, 1))
    for received in srv.received:
        for line in received.split(b"\r\n"):
            assert line[:4].upper() not in FORBIDDEN, received
    return srv.received


def normalise(text, home, *ports):
    text = text.replace(str(home), "HOME")
    for port in ports:
        text = re.sub(rf"\b{port}\b", "PORT", text)
    return text


def plain(caps=ehlo(b"PIPELINING", b"SIZE 10240000", b"8BITMIME")):
    """A server script: greeting, EHLO, then QUIT and the close."""
    return [send(GREETING), expect_line(EHLO), send(caps), read_to_eof(QUIT)]


def before_tls(caps=ehlo(b"STARTTLS")):
    return [send(GREETING), expect_line(EHLO), send(caps),
            expect_line(STARTTLS), send(b"220 go ahead\r\n")]


def tls_session(tls, caps_after=ehlo(b"PIPELINING", b"AUTH PLAIN LOGIN")):
    """Greeting, EHLO, STARTTLS, the handshake, EHLO again, QUIT."""
    return [*before_tls(), starttls(tls), expect_line(EHLO),
            send(caps_after), read_to_eof(QUIT)]


def chain_only(tls):
    """The probe's second connection after a failed verification: it
    fetches the chain and says QUIT inside TLS."""
    return [*before_tls(), starttls(tls), read_to_eof(QUIT)]


# --- golden text -------------------------------------------------------------

GOLDEN_ROUTE = """\
qmailremote probe example.test
  qmail home: HOME
  profile: ESMTP (the default; no control/noesmtp)
  helohost: me.example (control/helohost or control/me)
  timeouts: connect 10 s, each read 10 s (control/timeoutconnect, control/timeoutremote)

Route
  control/smtproutes: key "example.test" matches
  relay: 127.0.0.1, port PORT

DNS
  IP literal: 127.0.0.1: no DNS

Addresses, in the order qmail-remote would try them
  control/addresspreference: ipv4: each preference's IPv4 addresses before its IPv6 ones
  listed as MX: a route: the "listed as MX" rule does not apply
  try      127.0.0.1: IP literal

Connection
  connect  127.0.0.1 port PORT
  TLS policy: opportunistic (an IP literal has no name): STARTTLS when offered, the certificate is not checked
  SNI: none
  S: 220 mx.example ESMTP
  C: EHLO me.example
  S: 250-mx.example
  S: 250-PIPELINING
  S: 250-SIZE 10240000
  S: 250 8BITMIME
  -- the server does not offer STARTTLS: plaintext
  C: QUIT

Server
  SIZE: limit 10240000 bytes: a larger message bounces before MAIL
  PIPELINING: offered: MAIL, RCPT and DATA in one write
  CHUNKING: not offered: DATA
  SMTPUTF8: not offered: a sender or recipient with 8-bit bytes would bounce
  STARTTLS: not offered
  AUTH: not offered

TLS
  TLS: not used: the server does not offer STARTTLS

Verdict
  ok      a delivery could start: 127.0.0.1 accepted EHLO
"""


def test_golden_plain_esmtp_through_a_route(capsys, home, nodns):
    with ScriptedServer(plain()) as srv:
        route(home, srv.port)
        status, out = run(capsys, home)
        assert served(srv) == [EHLO + QUIT]
    assert status == 0
    assert normalise(out, home, srv.port) == GOLDEN_ROUTE


GOLDEN_NOESMTP = """\
qmailremote probe example.test
  qmail home: HOME
  profile: netqmail 1.06 (control/noesmtp exists): HELO, no extension, no TLS, no AUTH, IPv4 only
  helohost: me.example (control/helohost or control/me)
  timeouts: connect 10 s, each read 10 s (control/timeoutconnect, control/timeoutremote)
  sender: <a@b.example>

Route
  control/authsenders: not read (noesmtp)
  control/smtproutes: key "example.test" matches
  relay: mx.example, port PORT
  credentials: user "alice": ignored under noesmtp

DNS
  A mx.example: answer, 1 record
  mx.example: 127.0.0.1

Addresses, in the order qmail-remote would try them
  listed as MX: a route: the "listed as MX" rule does not apply
  try      127.0.0.1: mx.example, preference 0

Connection
  connect  127.0.0.1 port PORT
  TLS policy: none under noesmtp
  S: 220 mx.example ESMTP
  C: HELO me.example
  S: 250 mx.example
  C: QUIT

Server
  HELO: accepted: netqmail 1.06's MAIL FROM would be next; no extension is used

Verdict
  ok      a delivery could start: 127.0.0.1 accepted HELO
"""


def test_golden_noesmtp(capsys, home, dns):
    """HELO, no AAAA query, no TLS, the route's credentials ignored."""
    put(home, "noesmtp")
    put(home, "authsenders", b":127.0.0.9:25|bob|" + PASSWORD.encode() +
        b"\n")
    script = [send(GREETING), expect_line(HELO), send(b"250 mx.example\r\n"),
              read_to_eof(QUIT)]
    with ScriptedServer(script) as srv:
        route(home, srv.port, relay="mx.example",
              extra=f"|alice|{PASSWORD}")
        status, out = run(capsys, home, "--sender", "a@b.example")
        assert served(srv) == [HELO + QUIT]
    assert status == 0
    assert normalise(out, home, srv.port) == GOLDEN_NOESMTP
    assert dns.count("mx.example", "AAAA") == 0
    assert PASSWORD not in out


GOLDEN_TLS = """\
qmailremote probe example.test
  qmail home: HOME
  profile: ESMTP (the default; no control/noesmtp)
  helohost: me.example (control/helohost or control/me)
  timeouts: connect 10 s, each read 10 s (control/timeoutconnect, control/timeoutremote)

Route
  control/smtproutes: key "example.test" matches
  relay: mx.example, port PORT

DNS
  A mx.example: answer, 1 record
  AAAA mx.example: hard failure (no such name, or no record of that type)
  mx.example: 127.0.0.1

Addresses, in the order qmail-remote would try them
  control/addresspreference: ipv4: each preference's IPv4 addresses before its IPv6 ones
  listed as MX: a route: the "listed as MX" rule does not apply
  try      127.0.0.1: mx.example, preference 0

Connection
  connect  127.0.0.1 port PORT
  TLS policy: opportunistic (no policy file for mx.example): STARTTLS when offered, the certificate is not checked
  SNI: mx.example
  S: 220 mx.example ESMTP
  C: EHLO me.example
  S: 250-mx.example
  S: 250 STARTTLS
  C: STARTTLS
  S: 220 go ahead
  -- TLS VERSION CIPHER
  -- the certificate would verify against the system CA store (qmail-remote does not check it here)
  C: EHLO me.example
  S: 250-mx.example
  S: 250-PIPELINING
  S: 250 AUTH PLAIN LOGIN
  C: QUIT

Server (capabilities after STARTTLS)
  SIZE: not offered
  PIPELINING: offered: MAIL, RCPT and DATA in one write
  CHUNKING: not offered: DATA
  SMTPUTF8: not offered: a sender or recipient with 8-bit bytes would bounce
  STARTTLS: TLS is on
  AUTH: PLAIN LOGIN

TLS
  version: VERSION
  cipher: CIPHER
  chain: 1 certificate, as the server sent them
    0: O=tlsfixtures, CN=mx.example
       names: CN mx.example; DNS mx.example, *.mx.example
       issuer: O=trustme v1.2.1, OU=Testing CA #RANDOM
       expires 3000-01-01 (in DAYS days)
  ok      would verify: against the system CA store (qmail-remote does not check in opportunistic mode)

Verdict
  ok      a delivery could start: 127.0.0.1 accepted EHLO
"""


def test_golden_opportunistic_tls(capsys, home, dns, pki, system_store):
    system_store(pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example", "*.mx.example", cn="mx.example"))
    with ScriptedServer(tls_session(tls)) as srv:
        route(home, srv.port, relay="mx.example")
        status, out = run(capsys, home)
        assert served(srv) == [EHLO + STARTTLS + EHLO + QUIT]
    assert status == 0
    info = srv.records[0].tls
    out = normalise(out, home, srv.port)
    out = out.replace(info.version, "VERSION").replace(info.cipher, "CIPHER")
    out = re.sub(r"Testing CA #\S+", "Testing CA #RANDOM", out)
    out = re.sub(r"\(in \d+ days\)", "(in DAYS days)", out)
    out = re.sub(r"trustme v[\d.]+", "trustme v1.2.1", out)
    if not HAS_CHAIN:
        out = out.replace(CHAIN_NOTE, "", 1)
    assert out == GOLDEN_TLS


# --- JSON --------------------------------------------------------------------

TOP_KEYS = {
    "destination": str, "home": str, "profile": str, "helohost": str,
    "sender": str, "source": (dict, type(None)), "route": (dict, type(None)),
    "port": int, "timeouts": dict, "recipient_domain": (dict, type(None)),
    "mx": dict, "addresses": list, "connection": (dict, type(None)),
    "transcript": list, "capabilities": (dict, type(None)),
    "capabilities_before_tls": (dict, type(None)),
    "tls": (dict, type(None)), "auth": (dict, type(None)), "verdict": dict,
}
TLS_KEYS = {
    "policy": str, "policy_file": (str, type(None)), "host": (str, type(None)),
    "sni": (str, type(None)), "implicit": bool, "used": bool,
    "version": (str, type(None)), "cipher": (str, type(None)),
    "chain": (list, type(None)), "chain_note": (str, type(None)),
    "verified": (bool, type(None)), "against": (str, type(None)),
    "checked_by_qmail_remote": bool, "verify_error": (str, type(None)),
    "fallback": (str, type(None)), "not_used": (str, type(None)),
}
CERT_KEYS = {
    "subject": str, "issuer": str, "cn": list, "dns": list, "ip": list,
    "not_before": str, "not_after": str, "expired": bool,
    "not_yet_valid": bool, "days_left": int,
}
CAPS_KEYS = {
    "server": str, "keywords": dict, "size": bool,
    "size_limit": (int, type(None)), "pipelining": bool, "chunking": bool,
    "smtputf8": bool, "starttls": bool, "auth": (list, type(None)),
}


def check_keys(doc, schema):
    assert set(doc) == set(schema), set(doc) ^ set(schema)
    for key, kind in schema.items():
        assert isinstance(doc[key], kind), (key, doc[key])
        assert not (kind is int and isinstance(doc[key], bool)), key


def test_json_schema(capsys, home, dns, pki):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example"))
    with ScriptedServer(tls_session(tls)) as srv:
        route(home, srv.port, relay="mx.example",
              extra=f"|alice|{PASSWORD}")
        status, doc = run_json(capsys, home)
        served(srv)
    assert status == 0
    check_keys(doc, TOP_KEYS)
    assert doc["profile"] == "esmtp" and doc["port"] == srv.port
    check_keys(doc["route"], {"file": str, "key": str, "relay": str,
                              "port": int, "credentials": bool,
                              "user": (str, type(None))})
    assert doc["route"] == {"file": "control/smtproutes",
                            "key": "example.test", "relay": "mx.example",
                            "port": srv.port, "credentials": True,
                            "user": "alice"}
    check_keys(doc["mx"], {"lookup": str, "records": (list, type(None)),
                           "null_mx": bool, "equal_preferences": bool,
                           "hosts": list, "queries": list})
    assert doc["mx"]["lookup"] == "relay"
    assert doc["mx"]["queries"] == [
        {"name": "mx.example", "type": "A", "result": "answer",
         "answers": 1},
        {"name": "mx.example", "type": "AAAA", "result": "hard",
         "answers": 0}]
    assert doc["mx"]["hosts"] == [{"host": "mx.example", "preference": 0,
                                   "addresses": ["127.0.0.1"],
                                   "failure": None}]
    address, = doc["addresses"]
    check_keys(address, {"ip": str, "preference": int,
                         "host": (str, type(None)), "family": int,
                         "decision": str, "detail": (str, type(None))})
    assert address["decision"] == "connected"
    check_keys(doc["connection"], {"ip": str, "port": int,
                                   "host": (str, type(None)),
                                   "connections": int,
                                   "retried_in_plaintext": bool})
    for entry in doc["transcript"]:
        check_keys(entry, {"connection": int, "dir": str, "text": str})
    assert [(e["dir"], e["text"]) for e in doc["transcript"]
            if e["dir"] != "info"] == [
        ("S", "220 mx.example ESMTP"), ("C", "EHLO me.example"),
        ("S", "250-mx.example"), ("S", "250 STARTTLS"), ("C", "STARTTLS"),
        ("S", "220 go ahead"), ("C", "EHLO me.example"),
        ("S", "250-mx.example"), ("S", "250-PIPELINING"),
        ("S", "250 AUTH PLAIN LOGIN"), ("C", "QUIT")]
    check_keys(doc["capabilities"], CAPS_KEYS)
    check_keys(doc["capabilities_before_tls"], CAPS_KEYS)
    assert doc["capabilities"]["auth"] == ["PLAIN", "LOGIN"]
    assert doc["capabilities_before_tls"]["starttls"] is True
    check_keys(doc["tls"], TLS_KEYS)
    assert doc["tls"]["version"] == srv.records[0].tls.version
    assert doc["tls"]["cipher"] == srv.records[0].tls.cipher
    assert doc["tls"]["verified"] is True
    assert doc["tls"]["against"] == "control/tlshosts/mx.example.pem"
    cert, = doc["tls"]["chain"]
    check_keys(cert, CERT_KEYS)
    check_keys(doc["auth"], {"user": str, "mechanisms": list,
                             "offered": (list, type(None)),
                             "mechanism": (str, type(None)),
                             "inside_tls": bool, "attempted": bool})
    assert doc["auth"]["mechanism"] == "PLAIN"
    assert doc["auth"]["attempted"] is False
    check_keys(doc["verdict"], {"status": int, "delivery_could_start": bool,
                                "summary": str,
                                "report": (dict, type(None))})
    assert doc["verdict"]["status"] == 0 and doc["verdict"]["report"] is None
    assert PASSWORD not in json.dumps(doc)


def test_json_failure_has_the_report(capsys, home, dns):
    status, doc = run_json(capsys, home, destination="nowhere.test")
    assert status == 1
    check_keys(doc, TOP_KEYS)
    assert doc["verdict"]["report"] == {
        "letter": "D",
        "text": "Sorry, I couldn't find any host named nowhere.test. "
                "(#5.1.2)"}
    assert doc["connection"] is None and doc["addresses"] == []


# --- exit statuses and usage -------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["probe"], ["probe", "x", "--port", "0"],
    ["probe", "x", "--port", "70000"],
    ["probe", "x", "--port", "25x"], ["probe", "x", "--timeout", "-1"],
    ["probe", "x", "--timeout", "nan"], ["probe", "x", "--bogus"],
])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "usage:" in captured.err and "Traceback" not in captured.err


def closed_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_reachable_address_exit_1(capsys, home, nodns):
    port = closed_port()
    route(home, port)
    status, out = run(capsys, home)
    assert status == 1
    assert f"failed   127.0.0.1 port {port}: connection refused" in out
    assert out.endswith(
        "  qmail-remote would report (Z, temporary: the mail stays queued "
        "and is retried):\n"
        "    Sorry, I wasn't able to establish an SMTP connection. "
        "(#4.4.1)\n")


def test_greeting_refused_exit_1_and_quit(capsys, home, nodns):
    script = [send(b"421 busy, try later\r\n"), read_to_eof(QUIT)]
    with ScriptedServer(script) as srv:
        route(home, srv.port)
        status, out = run(capsys, home)
        assert served(srv) == [QUIT]
    assert status == 1
    assert out.endswith(
        "    Connected to 127.0.0.1 but greeting failed.\n"
        "    Remote host said: 421 busy, try later\n")
    assert "  S: 421 busy, try later\n  C: QUIT\n" in out


def test_ehlo_refused_helo_accepted_exit_0(capsys, home, nodns):
    script = [send(GREETING), expect_line(EHLO), send(b"502 no EHLO\r\n"),
              expect_line(HELO), send(b"250 hi\r\n"), read_to_eof(QUIT)]
    with ScriptedServer(script) as srv:
        route(home, srv.port)
        status, doc = run_json(capsys, home)
        assert served(srv) == [EHLO + HELO + QUIT]
    assert status == 0
    assert doc["capabilities"] is None
    assert doc["verdict"]["summary"] == \
        "127.0.0.1 accepted HELO (after EHLO was refused)"


def test_helo_refused_under_noesmtp_exit_1(capsys, home, nodns):
    put(home, "noesmtp")
    script = [send(GREETING), expect_line(HELO), send(b"550 go away\r\n"),
              read_to_eof(QUIT)]
    with ScriptedServer(script) as srv:
        route(home, srv.port)
        status, doc = run_json(capsys, home)
        assert served(srv) == [HELO + QUIT]
    assert status == 1
    assert doc["verdict"]["report"] == {
        "letter": "Z",
        "text": "Connected to 127.0.0.1 but my name was rejected.\n"
                "Remote host said: 550 go away"}
    assert doc["tls"]["policy"] == "off"


# --- servers that misbehave, inputs that are odd: never a traceback ----------

MISBEHAVIOUR = {
    "hang up at once": ([close()], "the server closed the connection"),
    "garbage, then hang up": (
        [send(b"\x00\xff garbage \x1b[31m"), close()],
        "S: \\x00\\xff garbage \\x1b[31m [no line end]"),
    "not a reply code": ([send(b"hello there\r\n"), read_to_eof(QUIT)],
                         "S: hello there"),
    "EHLO answer cut": ([send(GREETING), expect_line(EHLO),
                         send(b"250-mx.example\r\n250-PIPE"), close()],
                        "S: 250-PIPE [no line end]"),
}


@pytest.mark.parametrize("case", list(MISBEHAVIOUR))
def test_misbehaving_servers(capsys, home, nodns, case):
    script, shown = MISBEHAVIOUR[case]
    with ScriptedServer(script) as srv:
        route(home, srv.port)
        status, out = run(capsys, home)
        served(srv)
    assert status == 1
    assert shown in out
    assert "qmail-remote would report (Z, temporary" in out
    if case == "not a reply code":
        assert "    Connected to 127.0.0.1 but greeting failed.\n" \
               "    Remote host said: hello there\n" in out
    elif case != "garbage, then hang up":
        assert "    Connected to 127.0.0.1 but connection died. " \
               "(#4.4.2)" in out


def test_endless_reply_is_given_up(capsys, home, nodns):
    from smtpserver import send_forever
    script = [send(GREETING), expect_line(EHLO),
              send_forever(b"250-" + b"x" * 1020 + b"\r\n")]
    with ScriptedServer(script) as srv:
        route(home, srv.port)
        status, doc = run_json(capsys, home)
    assert status == 1
    assert "more than 1 MiB" in doc["verdict"]["summary"]
    said = [e for e in doc["transcript"] if e["dir"] == "S"]
    assert len(said) == 400
    assert doc["transcript"][-1]["text"].endswith("more lines from the "
                                                  "server not shown")


def test_silent_server_times_out(capsys, home, nodns):
    with ScriptedServer([send(GREETING), stall()]) as srv:
        route(home, srv.port)
        status, out = run(capsys, home, "--timeout", "0.2")
    assert status == 1
    assert "timeouts: connect 0.2 s, each read 0.2 s (--timeout)" in out
    assert "-- connection failed: timed out" in out
    assert "Connected to 127.0.0.1 but connection died. (#4.4.2)" in out


@pytest.mark.parametrize("destination, report", [
    ("a..b", "Sorry, I couldn't find any host named a..b. (#5.1.2)"),
    ("x" * 300, "Sorry, I couldn't find any host named " + "x" * 300 +
     ". (#5.1.2)"),
    ("\udcff\udc80.example", "Sorry, I couldn't find any host named "
     "??.example. (#5.1.2)"),
    ("bad host\tname", "Sorry, I couldn't find any host named "
     "bad?host?name. (#5.1.2)"),
    ("[1.2.3.4", "Sorry, I couldn't find any host named [1.2.3.4. "
     "(#5.1.2)"),
])
def test_odd_destinations(capsys, home, dns, destination, report):
    status, doc = run_json(capsys, home, destination=destination)
    assert status == 1
    assert doc["verdict"]["report"] == {"letter": "D", "text": report}


def test_odd_destination_text_is_escaped(capsys, home, dns):
    status, out = run(capsys, home, destination="\udcffx\x1b[2J.example")
    assert status == 1
    assert "\x1b" not in out
    assert "qmailremote probe \\xffx\\x1b[2J.example" in out


@pytest.mark.parametrize("setup, report", [
    (lambda home: put(home, "smtproutes/x"),
     "Unable to read control files. (#4.3.0)"),
    (lambda home: (home / "control" / "me").unlink(),
     "Unable to read control files. (#4.3.0)"),
    (lambda home: put(home, "addresspreference", b"ipv5\n"),
     "Sorry, control/addresspreference must say ipv4, ipv6 or any. "
     "(#4.3.0)"),
    (lambda home: put(home, "outgoingip", b"1.2.3\n"),
     "invalid ipaddr in control/outgoingip (#4.3.0)"),
])
def test_control_file_problems(capsys, home, nodns, setup, report):
    setup(home)
    status, doc = run_json(capsys, home)
    assert status == 1
    assert doc["verdict"]["report"]["text"] == report


def test_missing_home(capsys, tmp_path):
    status, out = run(capsys, tmp_path / "nowhere")
    assert status == 1
    assert "    Unable to switch to home directory. (#4.3.0)\n" in out


def test_sender_with_a_line_feed(capsys, home, nodns):
    status, doc = run_json(capsys, home, "--sender", "a\n@b")
    assert status == 1
    assert doc["verdict"]["report"]["letter"] == "D"
    assert "CR or LF" in doc["verdict"]["report"]["text"]


# --- credentials -------------------------------------------------------------

@pytest.mark.parametrize("dialect", ["|alice|{}", ";{port}|alice|{}",
                                     " alice {}"])
def test_credentials_shown_never_the_password(capsys, home, nodns, dialect):
    with ScriptedServer(plain(ehlo(b"AUTH CRAM-MD5 PLAIN"))) as srv:
        value = dialect.format(PASSWORD, port=srv.port)
        if dialect.startswith(";"):
            put(home, "smtproutes", f"example.test:127.0.0.1{value}\n"
                .encode())
        else:
            route(home, srv.port, extra=value)
        status, out = run(capsys, home)
        _, doc = run_json(capsys, home)
        assert served(srv, 2) == [EHLO + QUIT, EHLO + QUIT]
    assert status == 0
    for text in (out, json.dumps(doc)):
        assert PASSWORD not in text
        assert "alice" in text
    assert 'credentials: user "alice" (password not shown)' in out
    assert 'qmail-remote would authenticate as "alice" with CRAM-MD5 ' \
           'without TLS (a loopback relay)' in out
    assert doc["auth"]["offered"] == ["CRAM-MD5", "PLAIN"]


def test_credentials_and_no_auth_offered(capsys, home, nodns):
    with ScriptedServer(plain()) as srv:
        route(home, srv.port, extra=f"|alice|{PASSWORD}")
        status, doc = run_json(capsys, home)
        assert served(srv) == [EHLO + QUIT]
    assert status == 1
    assert doc["verdict"]["report"] == {
        "letter": "Z",
        "text": "Connected to 127.0.0.1 but it offers no AUTH, and I have "
                "credentials for 127.0.0.1. (#4.7.0)"}


def test_credentials_and_no_common_mechanism(capsys, home, nodns):
    put(home, "authmechanisms", b"SCRAM-SHA-256\n")
    with ScriptedServer(plain(ehlo(b"AUTH LOGIN PLAIN"))) as srv:
        route(home, srv.port, extra=f"|alice|{PASSWORD}")
        status, doc = run_json(capsys, home)
        served(srv)
    assert status == 1
    assert doc["verdict"]["report"]["text"] == (
        "Connected to 127.0.0.1 but it offers no AUTH mechanism I use "
        "(LOGIN PLAIN). (#4.7.0)")


def test_authsenders_by_sender(capsys, home, nodns):
    with ScriptedServer(plain(ehlo(b"AUTH PLAIN"))) as srv:
        put(home, "authsenders",
            f"@b.example:127.0.0.1:{srv.port}|bob|{PASSWORD}\n".encode())
        put(home, "smtproutes", b"example.test:127.0.0.9:25\n")
        status, doc = run_json(capsys, home, "--sender", "a@b.example")
        served(srv)
    assert status == 0
    assert doc["route"] == {"file": "control/authsenders", "key": "@b.example",
                            "relay": "127.0.0.1", "port": srv.port,
                            "credentials": True, "user": "bob"}
    assert doc["auth"]["mechanism"] == "PLAIN"
    assert PASSWORD not in json.dumps(doc)


def test_authsenders_without_sender_is_the_null_sender(capsys, home, nodns):
    with ScriptedServer(plain()) as srv:
        put(home, "authsenders", b"@b.example:127.0.0.9:25\n")
        route(home, srv.port)
        status, out = run(capsys, home)
        served(srv)
    assert status == 0
    assert "  control/authsenders: no key matches sender <> (give --sender " \
           "ADDR for another sender)\n" in out
    assert '  control/smtproutes: key "example.test" matches\n' in out


# --- DNS ---------------------------------------------------------------------

def mx_zone(dns, *records):
    dns.add("example.test", "MX", *records)


def test_mx_order_listed_as_mx_and_dropped(capsys, home, dns):
    """MX 10 at 127.0.0.2 (a server), MX 20 at 127.0.0.1 (this host): the
    "listed as MX" rule drops preference 20 and up."""
    mx_zone(dns, "20 me.example.test.", "10 mx1.example.test.",
            "30 mx3.example.test.")
    dns.add("mx1.example.test", "A", "127.0.0.2")
    dns.add("me.example.test", "A", "127.0.0.1")
    dns.add("mx3.example.test", "A", "127.0.0.3")
    with ScriptedServer(plain(), host="127.0.0.2") as srv:
        status, out = run(capsys, home, "--port", str(srv.port))
        _, doc = run_json(capsys, home, "--port", str(srv.port))
        served(srv, 2)
    assert status == 0
    assert "  MX records: 10 mx1.example.test, 20 me.example.test, " \
           "30 mx3.example.test\n" in out
    assert "order: MX hosts of equal preference" not in out
    assert "  listed as MX: 127.0.0.1, an address of this host, is listed " \
           "at preference 20: only addresses of a better (lower) " \
           "preference are tried\n" in out
    assert "  try      127.0.0.2: mx1.example.test, preference 10\n" \
           "  dropped  127.0.0.1: me.example.test, preference 20 (listed " \
           "as MX: 127.0.0.1 (this host) is at preference 20)\n" \
           "  dropped  127.0.0.3: mx3.example.test, preference 30 (listed " \
           "as MX: 127.0.0.1 (this host) is at preference 20)\n" in out
    assert f"port: {srv.port} (--port; qmail-remote would use 25)" in out
    assert [(a["ip"], a["preference"], a["decision"])
            for a in doc["addresses"]] == [
        ("127.0.0.2", 10, "connected"), ("127.0.0.1", 20, "dropped"),
        ("127.0.0.3", 30, "dropped")]
    assert doc["mx"]["records"] == [
        {"preference": 20, "host": "me.example.test"},
        {"preference": 10, "host": "mx1.example.test"},
        {"preference": 30, "host": "mx3.example.test"}]
    assert doc["recipient_domain"] == {"canonical": "example.test",
                                       "alias": False, "soft": False}


def test_equal_preferences_are_a_fresh_draw(capsys, home, dns):
    mx_zone(dns, "10 a.example.test.", "10 b.example.test.")
    dns.add("a.example.test", "A", "127.0.0.2")
    dns.add("b.example.test", "A", "127.0.0.3")
    port = closed_port()
    status, out = run(capsys, home, "--port", str(port))
    assert status == 1
    assert "  order: MX hosts of equal preference are tried in a random " \
           "order drawn afresh by every run; below is this run's draw\n" in out
    tried = re.findall(r"try      (127\.0\.0\.\d)", out)
    assert sorted(tried) == ["127.0.0.2", "127.0.0.3"]
    failed = re.findall(r"failed   (127\.0\.0\.\d) port", out)
    assert failed == tried          # tried in the order shown


@pytest.mark.parametrize("preference, order", [
    (None, ["127.0.0.2", "::1"]), (b"ipv6", ["::1", "127.0.0.2"])])
def test_address_preference_orders_families(capsys, home, dns, preference,
                                            order):
    """A relay with an IPv4 and an IPv6 address (a route: the "listed as
    MX" rule does not apply), on a port nobody listens on."""
    if preference is not None:
        put(home, "addresspreference", preference + b"\n")
    dns.add("dual.example", "A", "127.0.0.2")
    dns.add("dual.example", "AAAA", "::1")
    route(home, closed_port(), relay="dual.example")
    status, doc = run_json(capsys, home)
    assert status == 1
    assert [a["ip"] for a in doc["addresses"]] == order
    assert [a["family"] for a in doc["addresses"]] == \
        [6 if ":" in ip else 4 for ip in order]
    assert [a["decision"] for a in doc["addresses"]] == ["failed", "failed"]
    assert doc["mx"]["hosts"][0]["addresses"] == ["127.0.0.2", "::1"]


def test_everything_listed_as_mx(capsys, home, dns):
    mx_zone(dns, "10 me.example.test.")
    dns.add("me.example.test", "A", "127.0.0.1")
    status, doc = run_json(capsys, home, "--port", str(closed_port()))
    assert status == 1
    assert doc["verdict"]["report"] == {
        "letter": "D",
        "text": "Sorry. Although I'm listed as a best-preference MX or A for "
                "that host,\nit isn't in my control/locals file, so I don't "
                "treat it as local. (#5.4.6)"}
    assert [a["decision"] for a in doc["addresses"]] == ["dropped"]
    assert doc["connection"] is None


def test_alias_domain_turns_the_listed_rule_off(capsys, home, monkeypatch):
    """Recipients at a CNAME: qmail-remote tries every MX, even this host."""
    with DNSServer(chase_cname=True) as dns:
        dns.add("example.test", "CNAME", "real.example.")
        dns.add("real.example", "MX", "10 me.example.")
        dns.add("me.example", "A", "127.0.0.1")
        monkeypatch.setattr(probe, "RESOLVER",
                            Resolver([(dns.host, dns.port)], timeout=1,
                                     attempts=1))
        with ScriptedServer(plain()) as srv:
            status, out = run(capsys, home, "--port", str(srv.port))
            served(srv)
    assert status == 0
    assert "  recipients: @example.test is an alias of real.example: " \
           "recipients there are rewritten" in out
    assert "listed as MX: the recipient domain is an alias: the \"listed " \
           "as MX\" rule does not apply" in out
    assert "  try      127.0.0.1: me.example, preference 10\n" in out


def test_no_mx_uses_the_host_addresses(capsys, home, dns):
    dns.add("example.test", "A", "127.0.0.2")
    with ScriptedServer(plain(), host="127.0.0.2") as srv:
        status, doc = run_json(capsys, home, "--port", str(srv.port))
        served(srv)
    assert status == 0
    assert doc["mx"]["records"] is None
    assert doc["mx"]["hosts"] == [{"host": "example.test", "preference": 0,
                                   "addresses": ["127.0.0.2"],
                                   "failure": None}]


@pytest.mark.parametrize("behaviour, letter, text", [
    ({"rcode": "SERVFAIL"}, "Z", "CNAME lookup failed temporarily. "
     "(#4.4.3)"),
    ({"rcode": "SERVFAIL", "rdtype": "MX"}, "Z",
     "Sorry, I couldn't find any host by that name. (#4.1.2)"),
    ({"rcode": "NXDOMAIN"}, "D", "Sorry, I couldn't find any host named "
     "example.test. (#5.1.2)"),
])
def test_dns_failures(capsys, home, dns, behaviour, letter, text):
    dns.behave("example.test", "rcode", **behaviour)
    status, doc = run_json(capsys, home)
    assert status == 1
    assert doc["verdict"]["report"] == {"letter": letter, "text": text}


def test_mx_host_without_address_is_passed_over(capsys, home, dns):
    mx_zone(dns, "10 broken.example.test.", "20 b.example.test.")
    dns.behave("broken.example.test", "rcode", rcode="SERVFAIL")
    dns.add("b.example.test", "A", "127.0.0.2")
    with ScriptedServer(plain(), host="127.0.0.2") as srv:
        status, out = run(capsys, home, "--port", str(srv.port))
        served(srv)
    assert status == 0
    assert "  broken.example.test (preference 10): no address: soft failure " \
           "(no answer, SERVFAIL, REFUSED or a malformed answer); passed " \
           "over while other MX hosts have addresses\n" in out
    assert "  A broken.example.test: soft failure" in out


@pytest.mark.parametrize("noesmtp", [False, True])
def test_null_mx(capsys, home, dns, noesmtp):
    if noesmtp:
        put(home, "noesmtp")
    mx_zone(dns, "0 .")
    status, out = run(capsys, home)
    assert status == 1
    if noesmtp:
        assert out.endswith("(D, permanent: the mail bounces):\n"
                            "    Sorry, I couldn't find a mail exchanger or "
                            "IP address. (#5.4.4)\n")
    else:
        assert '  null MX: example.test publishes "0 ." (RFC 7505): it ' \
               'accepts no mail\n' in out
        assert out.endswith("(D, permanent: the mail bounces):\n"
                            "    Sorry, example.test does not accept mail "
                            "(null MX). (#5.1.10)\n")
        # Nothing more is looked up.
        assert dns.count(rdtype="A") == dns.count(rdtype="AAAA") == 0


def test_ip_literal_needs_no_dns(capsys, home, nodns):
    with ScriptedServer(plain(), host="127.0.0.2") as srv:
        status, out = run(capsys, home, "--port", str(srv.port),
                          destination="[127.0.0.2]")
        served(srv)
    assert status == 0
    assert "  IP literal: [127.0.0.2]: no DNS\n" in out
    assert "  try      127.0.0.2: IP literal\n" in out


def test_own_ip_literal_is_listed_as_mx(capsys, home, nodns):
    status, doc = run_json(capsys, home, destination="[127.0.0.1]")
    assert status == 1
    assert doc["verdict"]["report"]["text"].startswith(
        "Sorry. Although I'm listed as a best-preference MX or A")


# --- tcpto (read only) -------------------------------------------------------

def tcpto_record(ip, count, when):
    return bytes(ip) + struct.pack("b", count) + b"\0\0\0" + \
        (when & 0xFFFFFFFF).to_bytes(4, "little") + b"\0" * 4


def test_tcpto_skip_shown_and_tcpto_untouched(capsys, home, dns):
    """127.0.0.2 timed out twice just now: skipped.  127.0.0.3 has one
    timeout on record, which the connection qmail-remote makes would
    clear: the probe leaves it."""
    lock = home / "queue" / "lock"
    lock.mkdir(parents=True)
    now = int(time.time())
    data = (tcpto_record([127, 0, 0, 2], 2, now) +
            tcpto_record([127, 0, 0, 3], 1, now - 3600) + bytes(16 * 62))
    (lock / "tcpto").write_bytes(data)
    os.utime(lock / "tcpto", ns=(1_000_000_000, 2_000_000_000))
    before = os.stat(lock / "tcpto")
    mx_zone(dns, "10 a.example.test.", "20 b.example.test.")
    dns.add("a.example.test", "A", "127.0.0.2")
    dns.add("b.example.test", "A", "127.0.0.3")
    with ScriptedServer(plain(), host="127.0.0.3") as srv:
        status, out = run(capsys, home, "--port", str(srv.port))
        _, doc = run_json(capsys, home, "--port", str(srv.port))
        served(srv, 2)
    assert status == 0
    assert "  skipped  127.0.0.2: tcpto: timed out recently (read only; " \
           "qmail-remote skips it for 64 to 97 minutes after the second " \
           "timeout)\n" in out
    assert f"  connect  127.0.0.3 port {srv.port}\n" in out
    assert [a["decision"] for a in doc["addresses"]] == ["skipped",
                                                         "connected"]
    after = os.stat(lock / "tcpto")
    assert (lock / "tcpto").read_bytes() == data
    assert (after.st_mtime_ns, after.st_ctime_ns, after.st_size) == \
        (before.st_mtime_ns, before.st_ctime_ns, before.st_size)
    assert not (lock / "tcpto6").exists()


# --- TLS: policies and verification ------------------------------------------

def ca_ou(ca):
    """The organizational unit of a trustme CA ("Testing CA #...")."""
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    return cert.subject.get_attributes_for_oid(
        x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value


def tls_route(home, srv):
    route(home, srv.port, relay="mx.example")


@pytest.mark.parametrize("case", ["good", "expired", "wrong name",
                                  "untrusted"])
def test_mandatory_tls_verification(capsys, home, dns, pki, case):
    """control/tlshosts/mx.example.pem: the verdict and the chain for a
    good certificate, an expired one, one for another name and one from
    an untrusted CA."""
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    leaf = {"good": lambda: pki.leaf("mx.example"),
            "expired": lambda: pki.leaf("mx.example", not_after=EXPIRED),
            "wrong name": lambda: pki.leaf("other.example", cn="mx.example"),
            "untrusted": lambda: pki.leaf("mx.example", issuer=pki.rogue),
            }[case]()
    tls = pki.server(leaf)
    if case in ("expired", "untrusted"):
        # The verifying handshake fails; the probe comes back for the chain.
        scripts = [[*before_tls(), starttls(tls, fails=True)],
                   chain_only(tls)]
    elif case == "wrong name":
        scripts = [[*before_tls(), starttls(tls), read_to_eof(QUIT)]]
    else:
        scripts = [tls_session(tls)]
    with ScriptedServer(scripts) as srv:
        tls_route(home, srv)
        status, doc = run_json(capsys, home)
        received = served(srv, len(scripts))
    assert srv.connections == len(scripts)
    t = doc["tls"]
    assert t["policy"] == "mandatory"
    assert t["against"] == "control/tlshosts/mx.example.pem"
    assert t["checked_by_qmail_remote"] is True
    assert t["sni"] == "mx.example"
    cert, = t["chain"]
    assert cert["dns"] == (["other.example"] if case == "wrong name"
                           else ["mx.example"])
    assert cert["expired"] is (case == "expired")
    if case == "expired":
        assert cert["not_after"] == "2001-01-01T00:00:00Z"
        assert cert["days_left"] < -9000
    else:
        assert cert["not_after"] == "3000-01-01T00:00:00Z"
        assert cert["days_left"] > 300000
    issuer = pki.rogue if case == "untrusted" else pki.ca
    assert cert["issuer"].endswith(", OU=" + ca_ou(issuer))
    report = doc["verdict"]["report"]
    if case == "good":
        assert status == 0 and t["verified"] is True and report is None
        assert received == [EHLO + STARTTLS + EHLO + QUIT]
        return
    assert status == 1 and t["verified"] is False
    why = {"expired": "certificate has expired",
           "untrusted": "unable to get local issuer certificate",
           "wrong name": "certificate contains no matching dNSNames"}[case]
    assert t["verify_error"] == why
    if case == "wrong name":
        text = f"TLS unable to verify server mx.example: {why}; " \
               f"connected to 127.0.0.1."
        assert received == [EHLO + STARTTLS + QUIT]
    else:
        text = f"TLS unable to verify server with " \
               f"control/tlshosts/mx.example.pem: {why}; connected to " \
               f"127.0.0.1."
        assert received[0] == EHLO + STARTTLS
        assert received[1] == EHLO + STARTTLS + QUIT
    assert report == {"letter": "Z", "text": text}


def test_untrusted_chain_names_its_issuer(capsys, home, dns, pki):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example", issuer=pki.rogue))
    scripts = [[*before_tls(), starttls(tls, fails=True)], chain_only(tls)]
    with ScriptedServer(scripts) as srv:
        tls_route(home, srv)
        status, out = run(capsys, home)
        served(srv, 2)
    assert status == 1
    assert re.search(r"\n       issuer: O=trustme v[\d.]+, OU=" +
                     re.escape(ca_ou(pki.rogue)) + "\n", out)
    assert "  FAIL    does not verify: against " \
           "control/tlshosts/mx.example.pem: unable to get local issuer " \
           "certificate\n" in out
    assert "-- the probe connects again, without checking the certificate, " \
           "to show the chain\n" in out


@pytest.mark.parametrize("trusted", [True, False])
def test_opportunistic_would_verify(capsys, home, dns, pki, system_store,
                                    trusted):
    """Opportunistic TLS: qmail-remote does not check; the probe says
    whether the system store would verify.  When it would not, the probe
    connects again to do what qmail-remote does."""
    if trusted:
        system_store(pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example"))
    scripts = [tls_session(tls)] if trusted else \
        [[*before_tls(), starttls(tls, fails=True)], tls_session(tls)]
    with ScriptedServer(scripts) as srv:
        tls_route(home, srv)
        status, doc = run_json(capsys, home)
        received = served(srv, len(scripts))
    assert status == 0
    t = doc["tls"]
    assert t["policy"] == "opportunistic" and t["used"] is True
    assert t["checked_by_qmail_remote"] is False
    assert t["against"] == "the system CA store"
    assert t["verified"] is trusted
    assert t["chain"][0]["dns"] == ["mx.example"]
    assert received[-1] == EHLO + STARTTLS + EHLO + QUIT
    assert doc["connection"]["connections"] == len(scripts)
    if not trusted:
        assert t["verify_error"] == "unable to get local issuer certificate"


def test_opportunistic_name_mismatch_would_not_verify(capsys, home, dns, pki,
                                                      system_store):
    system_store(pki.ca_pem)
    tls = pki.server(pki.leaf("other.example"))
    with ScriptedServer(tls_session(tls)) as srv:
        tls_route(home, srv)
        status, out = run(capsys, home)
        served(srv)
    assert status == 0
    assert "  warning would not verify: against the system CA store: " \
           "certificate contains no matching dNSNames (qmail-remote does " \
           "not check in opportunistic mode)\n" in out


def test_tlsverify_ca_file(capsys, home, dns, pki):
    ca = put(home, "testca.pem", pki.ca_pem)
    put(home, "tlsverify", str(ca).encode() + b"\n")
    tls = pki.server(pki.leaf("mx.example"))
    with ScriptedServer(tls_session(tls)) as srv:
        tls_route(home, srv)
        status, doc = run_json(capsys, home)
        served(srv)
    assert status == 0
    assert doc["tls"]["policy"] == "mandatory"
    assert doc["tls"]["policy_file"] == "control/tlsverify"
    assert doc["tls"]["against"] == f"{ca} (control/tlsverify)"
    assert doc["tls"]["verified"] is True


def test_mandatory_without_starttls(capsys, home, dns, pki):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    with ScriptedServer(plain()) as srv:
        tls_route(home, srv)
        status, doc = run_json(capsys, home)
        assert served(srv) == [EHLO + QUIT]
    assert status == 1
    assert doc["verdict"]["report"] == {
        "letter": "Z",
        "text": "No TLS achieved while control/tlshosts/mx.example.pem "
                "exists; connecting to 127.0.0.1."}


def test_mandatory_starttls_refused(capsys, home, dns, pki):
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    script = [send(GREETING), expect_line(EHLO), send(ehlo(b"STARTTLS")),
              expect_line(STARTTLS), send(b"454 TLS not available\r\n"),
              read_to_eof(QUIT)]
    with ScriptedServer(script) as srv:
        tls_route(home, srv)
        status, doc = run_json(capsys, home)
        assert served(srv) == [EHLO + STARTTLS + QUIT]
    assert status == 1
    assert doc["verdict"]["report"]["text"] == (
        "STARTTLS rejected while control/tlshosts/mx.example.pem exists; "
        "connecting to 127.0.0.1.\nRemote host said: 454 TLS not available")


def test_opportunistic_starttls_refused_goes_on(capsys, home, dns):
    script = [send(GREETING), expect_line(EHLO), send(ehlo(b"STARTTLS")),
              expect_line(STARTTLS), send(b"454 not now\r\n"),
              read_to_eof(QUIT)]
    with ScriptedServer(script) as srv:
        tls_route(home, srv)
        status, doc = run_json(capsys, home)
        assert served(srv) == [EHLO + STARTTLS + QUIT]
    assert status == 0
    assert doc["tls"]["used"] is False
    assert doc["tls"]["not_used"] == "the server refused STARTTLS"


def test_failed_handshake_is_retried_in_plaintext(capsys, home, dns):
    first = [*before_tls(), read_some(65536), send(b"garbage\r\n")]
    with ScriptedServer([first, plain(ehlo(b"STARTTLS"))]) as srv:
        tls_route(home, srv)
        status, out = run(capsys, home)
        received = served(srv, 2)
    assert status == 0
    assert received[0].startswith(EHLO + STARTTLS)
    assert received[1] == EHLO + QUIT
    assert "qmail-remote connects again and delivers in plaintext" in out
    assert f"  connect  127.0.0.1 port {srv.port} (plaintext retry)\n" in out
    assert "  TLS: not used: the handshake failed (" in out


def test_notlshosts(capsys, home, dns):
    put(home, "notlshosts/mx.example")
    with ScriptedServer(plain(ehlo(b"STARTTLS"))) as srv:
        tls_route(home, srv)
        status, out = run(capsys, home)
        assert served(srv) == [EHLO + QUIT]
    assert status == 0
    assert "  TLS policy: none: no STARTTLS " \
           "(control/notlshosts/mx.example)\n" in out


# --- colour ------------------------------------------------------------------

def test_colour_only_when_asked(capsys, home, nodns):
    with ScriptedServer(plain()) as srv:
        route(home, srv.port)
        _, piped = run(capsys, home)
        with pytest.raises(SystemExit):
            main(["--home", str(home), "--color", "always", "probe",
                  "example.test"])
        coloured = capsys.readouterr().out
        served(srv, 2)
    assert "\x1b[" not in piped
    assert "\x1b[36mC: EHLO me.example\x1b[0m" in coloured
    assert "\x1b[35mS: 220 mx.example ESMTP\x1b[0m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == piped


@pytest.mark.skipif(not HAS_CHAIN, reason="no _SSLSocket.get_unverified_chain "
                    "(Python < 3.10): the probe shows the leaf alone")
def test_chain_with_an_intermediate(capsys, home, dns, pki):
    """The chain as the server sends it: the leaf, then the intermediate;
    it verifies against the root in the .pem."""
    from tlsfixtures import ServerTls
    intermediate = pki.ca.create_child_ca()
    leaf = intermediate.issue_cert("mx.example", "*.mx.example")
    tls = ServerTls(pki.write(b"".join(p.bytes()
                                       for p in leaf.cert_chain_pems)),
                    pki.write(leaf.private_key_pem.bytes()))
    put(home, "tlshosts/mx.example.pem", pki.ca_pem)
    with ScriptedServer(tls_session(tls)) as srv:
        tls_route(home, srv)
        status, out = run(capsys, home)
        _, doc = run_json(capsys, home)
        served(srv, 2)
    assert status == 0
    first, second = doc["tls"]["chain"]
    assert first["dns"] == ["mx.example", "*.mx.example"]
    assert second["dns"] == [] and "Testing CA" in second["subject"]
    assert first["issuer"] == second["subject"]
    assert doc["tls"]["verified"] is True
    assert "  chain: 2 certificates, as the server sent them\n" in out
    assert "       names: DNS mx.example, *.mx.example\n" in out
    assert "  ok      verified: against control/tlshosts/mx.example.pem\n" \
        in out


@pytest.mark.parametrize("greeting", [GREETING, b"421 busy\r\n"])
def test_implicit_tls(capsys, home, dns, pki, monkeypatch, system_store,
                      greeting):
    """SMTPS: the handshake before the greeting.  Port 465 is played by
    the test server's port (tls.SMTPS_PORT patched): no fixed port."""
    import qmailremote.tls
    system_store(pki.ca_pem)
    tls = pki.server(pki.leaf("mx.example"))
    if greeting == GREETING:
        script = [starttls(tls), send(greeting), expect_line(EHLO),
                  send(ehlo(b"PIPELINING")), read_to_eof(QUIT)]
    else:
        script = [starttls(tls), send(greeting), read_to_eof(QUIT)]
    with ScriptedServer(script) as srv:
        monkeypatch.setattr(qmailremote.tls, "SMTPS_PORT", srv.port)
        tls_route(home, srv)
        status, doc = run_json(capsys, home)
        received = served(srv)
    assert doc["tls"]["implicit"] is True and doc["tls"]["used"] is True
    assert doc["tls"]["verified"] is True
    assert doc["tls"]["version"] == srv.records[0].tls.version
    if greeting == GREETING:
        assert status == 0 and received == [EHLO + QUIT]
        assert doc["capabilities"]["pipelining"] is True
    else:
        assert status == 1 and received == [QUIT]
        assert doc["verdict"]["report"] == {
            "letter": "Z",
            "text": "TLS Connected to 127.0.0.1 but greeting failed.\n"
                    "Remote host said: 421 busy"}


def test_chain_degrades_without_get_unverified_chain(pki):
    """Pythons without ``get_unverified_chain``: the leaf alone, decoded
    with ``_ssl._test_decode_cert``; without a certificate, a note."""
    import ssl

    der = ssl.PEM_cert_to_DER_cert(pki.leaf("mx.example").chain_pem.decode())

    class OldTls:
        def getpeercert(self, binary=False):
            return der

    class NoCert:
        def getpeercert(self, binary=False):
            return None

    chain, note = probe._chain(OldTls())
    assert [c["dns"] for c in chain] == [["mx.example"]]
    assert chain[0]["not_after"] == "3000-01-01T00:00:00Z"
    assert note.startswith("chain not available in this Python")
    assert probe._chain(NoCert()) == (None, "the server sent no certificate")


def test_long_lines_are_cut_for_display(capsys, home, nodns):
    long = b"250-" + b"K" * 5000 + b"\r\n"
    with ScriptedServer(plain(long + b"250 PIPELINING\r\n")) as srv:
        route(home, srv.port)
        status, doc = run_json(capsys, home)
        served(srv)
    assert status == 0
    said = [e["text"] for e in doc["transcript"] if e["dir"] == "S"]
    assert said[1] == "250-" + "K" * 996 + " [... cut]"
    assert said[2] == "250 PIPELINING"
    assert doc["capabilities"]["pipelining"] is True


def test_eight_bit_sender_without_smtputf8(capsys, home, nodns):
    with ScriptedServer(plain()) as srv:
        route(home, srv.port)
        status, doc = run_json(capsys, home, "--sender",
                               "j\u00fcrgen@b.example")
        served(srv)
    assert status == 1
    assert doc["verdict"]["report"] == {
        "letter": "D",
        "text": "Connected to 127.0.0.1 but server does not support unicode "
                "in email addresses. (#5.6.7)"}
