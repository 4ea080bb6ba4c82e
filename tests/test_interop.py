"""Interop: the installed ``qmail-remote`` against real MTAs (issue 14, part 1).

Postfix, Exim and OpenSMTPD from Debian's packages, each run with a
configuration these tests write, on 127.0.0.1:25 inside a private network namespace
(tests/interop.py).  Each server is started once per module (one
namespace session runs every case of that server, then stops it by PID)
and the tests check each case's exact report bytes, exit status 0, empty
stderr, and what the server stored, byte for byte.

The packages conflict (one MTA at a time), so the tests are grouped by
server and each package is installed at most once per run.  Skips, with
the reason, when not root, without ``unshare``, or when ``apt-get`` cannot
install a package.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile

import pytest

import interop
from netns import netns_unavailable

pytestmark = [pytest.mark.interop, pytest.mark.netns]

SENDER = "a@b.example"


def header(name: str) -> bytes:
    # A full header block: no server needs to add From/Date/Message-ID.
    return (b"From: a@b.example\nTo: " + name.encode() + b"@example.com\n"
            b"Date: Mon, 30 Nov 2026 12:00:00 +0000\n"
            b"Message-ID: <" + name.encode() + b"@qr.example>\n"
            b"Subject: interop " + name.encode() + b"\n\n")


DOTS = b".\n..\n.x\n...\nline\n. \n.\n"
EIGHTBIT = bytes(range(0x80, 0x100)) + b"\n" + "h\u00e9llo w\u00f6rld \u2603\n".encode()
LONG = b"x" * 5000 + b"\n" + b"y" * 4999 + b"\n"


def big_body(size: int = 25 * 1024 * 1024) -> bytes:
    line = b"0123456789" * 7 + b"abcde\n"  # 76 bytes
    dotline = b"." + line[1:]
    block = (line * 49 + dotline)
    body = block * (size // len(block) + 1)
    return body[:size - 1] + b"\n"


def messages() -> dict[str, tuple[bytes, dict[str, bytes]]]:
    """Case name -> (message, control files) for the plain-delivery cases."""
    # No TLS: a named relay listed in notlshosts/.  (tlshosts/exhaustivelist
    # would not do: like qmail-tls, an IP literal gets opportunistic TLS anyway.)
    plain = {"notlshosts/mx.example": b""}
    nochunk = dict(plain, nochunking=b"")
    return {
        "dots_bdat": (header("dots_bdat") + DOTS, plain),
        "dots_data": (header("dots_data") + DOTS, nochunk),
        "eightbit": (header("eightbit") + EIGHTBIT, plain),
        "longline": (header("longline") + LONG, nochunk),
        "empty": (b"", plain),
        "big": (header("big") + big_body(), plain),
        "tls_opportunistic": (header("tls_opportunistic") + DOTS, {"tlsreport": b""}),
    }


TLS_RE = re.compile(rb"TLS (TLSv1\.[23]) (\S+)\n")


def unavailable(*pkgs: str) -> str | None:
    return netns_unavailable() or interop.ensure_packages(*pkgs)


def qmail_remote_or_fail() -> None:
    if not os.access(interop.qmail_remote(), os.X_OK):
        pytest.fail(f"{interop.qmail_remote()} is not installed: run `pip install .`",
                    pytrace=False)


def build_cases(base, ca) -> tuple[list[dict], dict[str, bytes]]:
    """The shared cases: homes and message files under *base*.

    Every case goes through the relay name mx.example (the test DNS server
    gives 127.0.0.1) except tls_opportunistic, which uses [127.0.0.1].
    """
    route = "mx.example"
    cases, msgs = [], {}
    ca_pem = ca.cert_pem.bytes()
    specs = {name: (msg, ctl, route, [name + "@example.com"])
             for name, (msg, ctl) in messages().items()}
    msg, ctl, _, rcpts = specs["tls_opportunistic"]
    specs["tls_opportunistic"] = (msg, ctl, "[127.0.0.1]", rcpts)
    plain_ctl = {"notlshosts/mx.example": b""}
    specs["unknown"] = (header("unknown") + b"hi\n", plain_ctl,
                        route, ["nobody@example.com", "unknown@example.com"])
    specs["tempfail_rcpt"] = (header("tempfail_rcpt") + b"hi\n", plain_ctl, route,
                              ["later@example.com", "tempfail_rcpt@example.com"])
    nochunk = dict(plain_ctl, nochunking=b"")
    for name, ctl in (("partial_bdat", plain_ctl), ("partial_data", nochunk)):
        specs[name] = (header(name) + b"no final newline", ctl, route, [name + "@example.com"])
    specs["tls_verified"] = (header("tls_verified") + b"verified\n",
                             {"tlsreport": b"", "tlshosts/mx.example.pem": ca_pem},
                             "mx.example", ["tls_verified@example.com"])
    for name, (msg, ctl, rt, rcpts) in specs.items():
        home = interop.make_home(str(base / "homes" / name), rt, **ctl)
        path = base / "msgs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(msg)
        msgs[name] = msg
        cases.append({"name": name, "home": home, "args": ["example.com", SENDER, *rcpts],
                      "stdin": str(path)})
    return cases, msgs


ZONE = {"mx.example": {"A": "127.0.0.1"}}
DELIVERY_CASES = [*messages(), "tls_verified"]
PARTIAL = b"r\0DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n\0"


@pytest.fixture(scope="module")
def workdirs():
    """Make directories the servers' users can reach (pytest's tmp is 0700)."""
    made = []

    def make(name: str) -> pathlib.Path:
        made.append(tempfile.mkdtemp(prefix=f"qmailremote-interop-{name}-"))
        os.chmod(made[-1], 0o755)
        return pathlib.Path(made[-1])

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def check_run(res: dict) -> None:
    assert res["stderr"] == b""
    assert res["returncode"] == 0


# ---------------------------------------------------------------------------
# Postfix


class PostfixSession:
    def __init__(self, d, results, msgs):
        self.d, self.results, self.msgs = d, results, msgs
        self.log = interop.read_log(os.path.join(d, "maillog"))

    def stored(self, name: str, n: int = 0) -> bytes:
        with open(os.path.join(self.d, "stored", f"{name}.{n}"), "rb") as f:
            return f.read()


@pytest.fixture(scope="module")
def postfix(workdirs):
    reason = unavailable("postfix")
    if reason:
        pytest.skip(reason)
    qmail_remote_or_fail()
    import trustme

    ca = trustme.CA()
    base = workdirs("postfix")
    d = str(base / "server")
    os.makedirs(d)
    interop.postfix_config(d, ca)
    cases, msgs = build_cases(base, ca)
    results = interop.run_session({"kind": "postfix", "dir": d, "cases": cases}, zone=ZONE)
    return PostfixSession(d, results, msgs)


def postfix_accepted(qid: str, msg: bytes | None, tls: bytes = b"", nrcpt: int = 1) -> bytes:
    """r... and K; *msg*: the message if it went by BDAT (Postfix counts its bytes)."""
    size = b"" if msg is None else b"%d bytes " % (len(msg) + msg.count(b"\n"))
    return (b"r\0" * nrcpt + b"K127.0.0.1 accepted message.\nRemote host said: "
            b"250 2.0.0 Ok: " + size + b"queued as " + qid.encode() + b"\n" + tls + b"\0")


def bdat(name: str, msg: bytes) -> bytes | None:
    """*msg* if the case went by BDAT (no control/nochunking), else None."""
    return None if name in ("dots_data", "longline") else msg


@pytest.mark.parametrize("name", DELIVERY_CASES)
def test_postfix_delivery(postfix, name):
    res = postfix.results[name]
    check_run(res)
    assert len(res["ids"]) == 1, res
    qid = res["ids"][0]
    tls = b""
    if name.startswith("tls_"):
        m = TLS_RE.search(res["stdout"])
        assert m, res["stdout"]
        tls = m.group(0)
        # The server saw the same TLS version and cipher.
        assert (f"TLS connection established from localhost[127.0.0.1]: "
                f"{m.group(1).decode()} with cipher {m.group(2).decode()}") in postfix.log
    assert res["stdout"] == postfix_accepted(qid, bdat(name, postfix.msgs[name]), tls)
    stored = postfix.stored(name)
    msg = postfix.msgs[name]
    if msg:
        # Postfix prepends its Received: header; the rest is the message, byte for byte.
        assert stored.endswith(msg)
        assert stored[:-len(msg)].startswith(b"Received: from qr.example (localhost [127.0.0.1])")
    else:
        # An empty message: Postfix's Received: header and nothing else.
        assert re.fullmatch(rb"Received: [^\n]*\n(?:\t[^\n]*\n)*", stored), stored


def test_postfix_unknown_recipient(postfix):
    res = postfix.results["unknown"]
    check_run(res)
    (qid,) = res["ids"]
    assert res["stdout"] == (
        b"h127.0.0.1 does not like recipient.\nRemote host said: 554 5.7.1 "
        b"<nobody@example.com>: Recipient address rejected: no such user\n\0"
        + postfix_accepted(qid, postfix.msgs["unknown"]))
    assert postfix.stored("unknown").endswith(postfix.msgs["unknown"])


def test_postfix_tempfail_recipient(postfix):
    res = postfix.results["tempfail_rcpt"]
    check_run(res)
    (qid,) = res["ids"]
    assert res["stdout"] == (
        b"s127.0.0.1 does not like recipient.\nRemote host said: 450 4.7.1 "
        b"<later@example.com>: Recipient address rejected: try later\n\0"
        + postfix_accepted(qid, postfix.msgs["tempfail_rcpt"]))


@pytest.mark.parametrize("name", ["partial_bdat", "partial_data"])
def test_postfix_partial_final_line(postfix, name):
    res = postfix.results[name]
    check_run(res)
    assert res["stdout"] == PARTIAL
    assert res["ids"] == []  # nothing stored


def test_postfix_plain_cases_used_no_tls(postfix):
    # Only the two TLS cases started TLS (notlshosts/ keeps the rest plain).
    assert postfix.log.count("TLS connection established from") == 2


# --- Postfix with SMTP AUTH (Cyrus SASL, sasldb)

PASSWORD = "s3cret:|pw"
MECHS = ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]


@pytest.fixture(scope="module")
def postfix_auth(workdirs):
    reason = unavailable("postfix", "sasl2-bin", "libsasl2-modules")
    if reason:
        pytest.skip(reason)
    import trustme

    ca = trustme.CA()
    base = workdirs("postfix-auth")
    d = str(base / "server")
    os.makedirs(d)
    interop.postfix_config(d, ca, auth=True, password=PASSWORD)
    cred = "127.0.0.1:25|relayuser|"
    specs = {m: (cred + PASSWORD, m) for m in MECHS}
    specs["wrong_password"] = (cred + "wrong", "SCRAM-SHA-256")
    specs["no_credentials"] = ("[127.0.0.1]", None)
    cases, msgs = [], {}
    for name, (route, mech) in specs.items():
        ctl = {"authmechanisms": mech.encode() + b"\n"} if mech else {}
        home = interop.make_home(str(base / "homes" / name), route, **ctl)
        msg = header(name) + b"auth " + name.encode() + b"\n"
        path = base / "msgs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(msg)
        msgs[name] = msg
        cases.append({"name": name, "home": home, "stdin": str(path),
                      "args": ["example.com", SENDER, "x@example.com"]})
    results = interop.run_session({"kind": "postfix", "dir": d, "cases": cases,
                                   "sasldb": os.path.join(d, "sasldb2")})
    return PostfixSession(d, results, msgs)


@pytest.mark.parametrize("mech", MECHS)
def test_postfix_auth(postfix_auth, mech):
    res = postfix_auth.results[mech]
    check_run(res)
    (qid,) = res["ids"]
    assert res["stdout"] == postfix_accepted(qid, postfix_auth.msgs[mech])
    assert postfix_auth.stored(mech).endswith(postfix_auth.msgs[mech])
    assert re.search(rf"{qid}: client=localhost\[127\.0\.0\.1\], sasl_method={mech}, "
                     r"sasl_username=relayuser", postfix_auth.log)


def test_postfix_auth_wrong_password(postfix_auth):
    res = postfix_auth.results["wrong_password"]
    check_run(res)
    assert res["ids"] == []
    assert res["stdout"] == (
        b"ZConnected to 127.0.0.1 but authentication was rejected (AUTH SCRAM-SHA-256).\n"
        b"Remote host said: 535 5.7.8 Error: authentication failed: authentication failure\n\0")
    assert PASSWORD.encode() not in res["stdout"]


def test_postfix_auth_required_no_credentials(postfix_auth):
    res = postfix_auth.results["no_credentials"]
    check_run(res)
    assert res["ids"] == []
    assert res["stdout"] == (
        b"h127.0.0.1 does not like recipient.\nRemote host said: 554 5.7.1 "
        b"<x@example.com>: Recipient address rejected: Access denied\n\0"
        b"DGiving up on 127.0.0.1.\n\0")


# ---------------------------------------------------------------------------
# Exim (installing it removes Postfix: these run after every Postfix test)


EXIM_MECHS = ["CRAM-MD5", "PLAIN", "LOGIN"]  # exim4-daemon-light: no SCRAM (gsasl)


class MaildirSession:
    def __init__(self, d, results, msgs, log):
        self.d, self.results, self.msgs = d, results, msgs
        self.log = interop.read_log(os.path.join(d, log))


@pytest.fixture(scope="module")
def exim(workdirs):
    reason = unavailable("exim4-daemon-light")
    if reason:
        pytest.skip(reason)
    qmail_remote_or_fail()
    import trustme

    ca = trustme.CA()
    base = workdirs("exim")
    d = str(base / "server")
    os.makedirs(d)
    cases, msgs = build_cases(base, ca)
    cred = "127.0.0.1:25|relayuser|"
    auth = {f"auth_{m.lower()}": (cred + PASSWORD, m) for m in EXIM_MECHS}
    auth["auth_wrong_password"] = (cred + "wrong", "CRAM-MD5")
    auth["auth_no_credentials"] = ("[127.0.0.1]", None)
    for name, (route, mech) in auth.items():
        ctl = {"authmechanisms": mech.encode() + b"\n"} if mech else {}
        home = interop.make_home(str(base / "homes" / name), route, **ctl)
        msgs[name] = header(name) + b"auth\n"
        (base / "msgs" / name).write_bytes(msgs[name])
        cases.append({"name": name, "home": home, "stdin": str(base / "msgs" / name),
                      "args": ["example.com", SENDER, name + "@example.com"]})
    interop.exim_config(d, ca, [c["name"] for c in cases], PASSWORD)
    results = interop.run_session({"kind": "exim", "dir": d, "cases": cases}, zone=ZONE)
    return MaildirSession(d, results, msgs, os.path.join("log", "mainlog"))


EXIM_ID = rb"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}"


def exim_accepted(stdout: bytes, nrcpt: int = 1) -> str:
    """Check the K report's shape; return Exim's message id."""
    m = re.fullmatch(rb"(?:r\0){%d}K127\.0\.0\.1 accepted message\.\nRemote host said: "
                     rb"(?:250- \d+ byte chunk, total \d+\n)?250 OK id=(" % nrcpt
                     + EXIM_ID + rb")\n(?:TLS TLSv1\.[23] \S+\n)?\0", stdout, re.S)
    assert m, stdout
    return m.group(1).decode()


MiB = 1 << 20


def exim_report(mid: str, msg: bytes | None, tls: bytes = b"", nrcpt: int = 1) -> bytes:
    """The exact r... K report; *msg*: the message if it went by BDAT.

    Exim answers ``BDAT n LAST`` with the chunk's size and the total first.
    The body goes in chunks of 1 MiB of message, each LF counting 2 bytes.
    """
    said = b""
    if msg is not None:
        wire = lambda b: len(b) + b.count(b"\n")  # noqa: E731
        last = msg[max(len(msg) - 1, 0) // MiB * MiB:]
        # An empty message goes as a lone ``BDAT 0 LAST`` (Postfix: "0 bytes
        # queued"); Exim's total then counts the empty line it adds: 2.
        total = wire(msg) if msg else 2
        said = b"250- %d byte chunk, total %d\n" % (wire(last), total)
    return (b"r\0" * nrcpt + b"K127.0.0.1 accepted message.\nRemote host said: " + said
            + b"250 OK id=" + mid.encode() + b"\n" + tls + b"\0")


def exim_line(log: str, mid: str) -> str:
    lines = [ln for ln in log.splitlines() if f"{mid} <= " in ln]
    assert len(lines) == 1, log
    assert f"{mid} Completed" in log
    return lines[0]


@pytest.mark.parametrize("name", DELIVERY_CASES)
def test_exim_delivery(exim, name):
    res = exim.results[name]
    check_run(res)
    mid = exim_accepted(res["stdout"])
    line = exim_line(exim.log, mid)
    chunked = bdat(name, b"") is not None
    assert (" K " in line) == chunked, line  # CHUNKING (BDAT) used
    tls = b""
    if name.startswith("tls_"):
        m = TLS_RE.search(res["stdout"])
        assert m, res["stdout"]
        tls = m.group(0)
        assert f" X=TLS{m.group(1).decode()[4:]}:" in line, line  # TLSv1.3 -> TLS1.3
    else:
        assert " X=" not in line
    msg = exim.msgs[name]
    assert res["stdout"] == exim_report(mid, bdat(name, msg), tls)
    (stored,) = interop.maildir_messages(exim.d, name)
    assert stored.startswith(b"Received: from [127.0.0.1] (helo=qr.example)\n")
    if msg:
        assert stored.endswith(msg)
    else:
        assert stored.endswith(b"\n\n") and stored.count(b"\n\n") == 1


def test_exim_unknown_recipient(exim):
    res = exim.results["unknown"]
    check_run(res)
    assert res["stdout"].startswith(
        b"h127.0.0.1 does not like recipient.\nRemote host said: 550 no such user\n\0")
    rest = res["stdout"][res["stdout"].index(b"\0") + 1:]
    assert rest == exim_report(exim_accepted(rest), exim.msgs["unknown"])
    (stored,) = interop.maildir_messages(exim.d, "unknown")
    assert stored.endswith(exim.msgs["unknown"])


def test_exim_tempfail_recipient(exim):
    res = exim.results["tempfail_rcpt"]
    check_run(res)
    first = b"s127.0.0.1 does not like recipient.\nRemote host said: 451 try later\n\0"
    assert res["stdout"].startswith(first)
    rest = res["stdout"][len(first):]
    assert rest == exim_report(exim_accepted(rest), exim.msgs["tempfail_rcpt"])
    (stored,) = interop.maildir_messages(exim.d, "tempfail_rcpt")
    assert stored.endswith(exim.msgs["tempfail_rcpt"])


@pytest.mark.parametrize("name", ["partial_bdat", "partial_data"])
def test_exim_partial_final_line(exim, name):
    res = exim.results[name]
    check_run(res)
    assert res["stdout"] == PARTIAL
    assert interop.maildir_messages(exim.d, name) == []  # nothing stored
    assert f"for {name}@example.com" not in exim.log


@pytest.mark.parametrize("mech", EXIM_MECHS)
def test_exim_auth(exim, mech):
    name = f"auth_{mech.lower()}"  # Exim lower-cases local parts
    res = exim.results[name]
    check_run(res)
    mid = exim_accepted(res["stdout"])
    assert res["stdout"] == exim_report(mid, exim.msgs[name])
    line = exim_line(exim.log, mid)
    driver = {"CRAM-MD5": "cram", "PLAIN": "plain", "LOGIN": "login"}[mech]
    assert f" A={driver}:relayuser " in line, line
    assert " X=TLS1.3:" in line  # credentials went inside TLS
    (stored,) = interop.maildir_messages(exim.d, name)
    assert stored.endswith(exim.msgs[name])


def test_exim_auth_wrong_password(exim):
    res = exim.results["auth_wrong_password"]
    check_run(res)
    assert res["stdout"] == (
        b"ZConnected to 127.0.0.1 but authentication was rejected (AUTH CRAM-MD5).\n"
        b"Remote host said: 535 Incorrect authentication data\n\0")
    assert interop.maildir_messages(exim.d, "auth_wrong_password") == []


def test_exim_auth_required_no_credentials(exim):
    res = exim.results["auth_no_credentials"]
    check_run(res)
    assert res["stdout"] == (
        b"h127.0.0.1 does not like recipient.\nRemote host said: 550 authentication "
        b"required\n\0DGiving up on 127.0.0.1.\n\0")
    assert interop.maildir_messages(exim.d, "auth_no_credentials") == []


# ---------------------------------------------------------------------------
# OpenSMTPD (installing it removes Exim).  Its STARTTLS fails on the server's
# side on Debian 12 (smtpd.log: "io-error: error:0A080006:SSL routines::EVP
# lib"; `openssl s_client -starttls smtp` fails the same way), which makes it
# a real-world check of the plaintext retry and of mandatory TLS holding mail.


@pytest.fixture(scope="module")
def opensmtpd(workdirs):
    reason = unavailable("opensmtpd")
    if reason:
        pytest.skip(reason)
    qmail_remote_or_fail()
    import trustme

    ca = trustme.CA()
    base = workdirs("opensmtpd")
    d = str(base / "server")
    os.makedirs(d)
    cases, msgs = build_cases(base, ca)
    interop.opensmtpd_config(d, ca, [c["name"] for c in cases])
    results = interop.run_session({"kind": "opensmtpd", "dir": d, "cases": cases}, zone=ZONE)
    return MaildirSession(d, results, msgs, "smtpd.log")


def opensmtpd_accepted(session, stdout: bytes, rcpt: str, nrcpt: int = 1) -> None:
    """*stdout* ends in the exact r... K for a message OpenSMTPD delivered to *rcpt*."""
    m = re.search(rb"(?:r\0){%d}K127\.0\.0\.1 accepted message\.\nRemote host said: "
                  rb"250 2\.0\.0 ([0-9a-f]{8}) Message accepted for delivery\n\0\Z" % nrcpt,
                  stdout)
    assert m, stdout
    msgid = m.group(1).decode()
    evp = re.search(rf"smtp envelope evpid=({msgid}[0-9a-f]{{8}}) from=<{SENDER}> "
                    rf"to=<{rcpt}>", session.log)
    assert evp, session.log
    assert re.search(rf"mda delivery evpid={evp.group(1)} .* result=Ok stat=Delivered",
                     session.log)


@pytest.mark.parametrize("name", [n for n in DELIVERY_CASES if n != "tls_verified"])
def test_opensmtpd_delivery(opensmtpd, name):
    res = opensmtpd.results[name]
    check_run(res)
    opensmtpd_accepted(opensmtpd, res["stdout"], name + "@example.com")
    msg = opensmtpd.msgs[name]
    (stored,) = interop.maildir_messages(opensmtpd.d, name)
    assert stored.startswith(
        b"Return-Path: <a@b.example>\nDelivered-To: " + name.encode()
        + b"@example.com\nReceived: from qr.example (localhost [127.0.0.1])\n")
    if msg:
        assert stored.endswith(msg)
    else:
        # An empty message: OpenSMTPD's header fields (it adds Date and
        # Message-ID), no empty line, no body.
        assert re.fullmatch(rb"(?:[A-Za-z-]+: [^\n]*\n(?:\t[^\n]*\n)*)+", stored), stored


def test_opensmtpd_failed_starttls_retried_in_plaintext(opensmtpd):
    # tls_opportunistic was delivered (test_opensmtpd_delivery), with a K
    # report without the TLS line: over the second, plaintext connection.
    # Every STARTTLS fails here: the two TLS cases' first connections.
    assert TLS_RE.search(opensmtpd.results["tls_opportunistic"]["stdout"]) is None
    assert opensmtpd.log.count('disconnected reason="io-error: ') == 2


def test_opensmtpd_mandatory_tls_holds_the_mail(opensmtpd):
    res = opensmtpd.results["tls_verified"]
    check_run(res)
    assert res["stdout"] == (b"ZTLS connect failed: tlsv1 alert internal error; "
                             b"connected to 127.0.0.1.\n\0")
    assert interop.maildir_messages(opensmtpd.d, "tls_verified") == []


def test_opensmtpd_unknown_and_tempfail_recipients(opensmtpd):
    res = opensmtpd.results["unknown"]
    check_run(res)
    first = (b"h127.0.0.1 does not like recipient.\nRemote host said: "
             b"550 Invalid recipient: <nobody@example.com>\n\0")
    assert res["stdout"].startswith(first)
    opensmtpd_accepted(opensmtpd, res["stdout"][len(first):], "unknown@example.com")
    res = opensmtpd.results["tempfail_rcpt"]
    check_run(res)
    first = b"s127.0.0.1 does not like recipient.\nRemote host said: 451 try later\n\0"
    assert res["stdout"].startswith(first)
    opensmtpd_accepted(opensmtpd, res["stdout"][len(first):], "tempfail_rcpt@example.com")
    for name in ("unknown", "tempfail_rcpt"):
        (stored,) = interop.maildir_messages(opensmtpd.d, name)
        assert stored.endswith(opensmtpd.msgs[name])


@pytest.mark.parametrize("name", ["partial_bdat", "partial_data"])
def test_opensmtpd_partial_final_line(opensmtpd, name):
    res = opensmtpd.results[name]
    check_run(res)
    assert res["stdout"] == PARTIAL
    assert interop.maildir_messages(opensmtpd.d, name) == []
    assert f"to=<{name}@example.com>" not in opensmtpd.log
