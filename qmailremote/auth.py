"""SMTP AUTH (RFC 4954) to a relay that has credentials.

The credentials come from ``control/smtproutes`` or ``control/authsenders``
(:mod:`qmailremote.routes`).  After EHLO (and STARTTLS), the strongest
mechanism both sides have is used: SCRAM-SHA-256 (RFC 5802, RFC 7677),
CRAM-MD5, PLAIN (with its initial response: one round trip), LOGIN.
``control/authmechanisms`` (names separated by spaces or lines) restricts
the choice to those it lists.  After ``235`` the envelope is
``MAIL FROM:<s> AUTH=<>``.

Credentials are sent only inside TLS, unless the relay's address is a
loopback one or ``control/authplaintext`` exists.  Every way AUTH can fail
is a temporary failure (Z): a wrong password or a missing mechanism is the
admin's to fix, and the mail waits in the queue meanwhile, as Postfix's
``smtp_sasl_auth_soft_bounce`` (on by default) keeps it.  The forks'
``K…continuing without authentication`` report (which made qmail-rspawn
log a delivery that had not happened) and sagredo's silent wait when no
AUTH is offered are not copied.  No report, exception or repr holds the
password.
"""

import base64
import hashlib
import hmac
import os

from .control import control_exists, read_control
from .report import Report, smtptext_said

__all__ = ["Credentials", "credentials_for", "authenticate", "MECHANISMS"]

# Strongest first.
MECHANISMS = (b"SCRAM-SHA-256", b"CRAM-MD5", b"PLAIN", b"LOGIN")


class Credentials:
    """A user and a password for one relay, and what may carry them."""

    __slots__ = ("user", "password", "relay", "mechanisms", "plaintext_ok")

    def __init__(self, user, password, relay, mechanisms=MECHANISMS,
                 plaintext_ok=False):
        self.user = user
        self.password = password
        self.relay = relay
        self.mechanisms = tuple(mechanisms)
        # control/authplaintext: credentials may go without TLS.
        self.plaintext_ok = plaintext_ok

    def __repr__(self):
        return "Credentials(%r, <hidden>, %r)" % (self.user, self.relay)


def read_mechanisms(text):
    """control/authmechanisms: the known names it lists, strongest first."""
    wanted = {word.upper() for word in text.split()}
    return tuple(m for m in MECHANISMS if m in wanted)


def credentials_for(home_fd, route):
    """The route's :class:`Credentials`, with the AUTH control files."""
    mechanisms = read_control(home_fd, "authmechanisms")
    return Credentials(
        route.user, route.password, route.relay,
        MECHANISMS if mechanisms is None else read_mechanisms(mechanisms),
        control_exists(home_fd, "authplaintext"))


def _offered(caps):
    """The mechanisms of the EHLO's AUTH keyword, upper-case."""
    return [word.upper() for word in caps.keywords.get(b"AUTH", b"").split()]


def _z(session, text, said=b""):
    return Report("Z", b"Connected to " + session.ip + b" but " + text +
                  b"\n" + said)


def _loopback(ip_text):
    return ip_text.startswith(b"127.") or ip_text == b"::1"


def authenticate(session, caps, credentials, secure):
    """AUTH on *session*; returns when the server said 235.

    *secure*: the connection is inside TLS.  Any failure ends the dialogue
    with a Z report (a verdict), QUIT written.
    """
    if not (secure or credentials.plaintext_ok or _loopback(session.ip)):
        session.stop(_z(session, b"TLS could not be had, and I send the "
                        b"credentials for " + _safe(credentials.relay) +
                        b" only inside TLS. (#4.7.0)"))
    if caps is None or b"AUTH" not in caps.keywords:
        session.stop(_z(session, b"it offers no AUTH, and I have "
                        b"credentials for " + _safe(credentials.relay) +
                        b". (#4.7.0)"))
    offered = _offered(caps)
    for mechanism in credentials.mechanisms:
        if mechanism in offered:
            break
    else:
        session.stop(_z(session, b"it offers no AUTH mechanism I use (" +
                        b" ".join(_safe(m) for m in offered) +
                        b"). (#4.7.0)"))
    _EXCHANGES[mechanism](session, credentials, mechanism)


def _safe(text):
    return bytes(ch if 33 <= ch <= 126 else 63 for ch in text)


def _b64(data):
    return base64.b64encode(data)


def _challenge(session, text, mechanism):
    """The base64 data of a 334 reply's last line, decoded."""
    # The stored text ends each line with LF: the last line is before it.
    line = text.rstrip(b"\n").rsplit(b"\n", 1)[-1][4:].strip()
    try:
        return base64.b64decode(line, validate=True)
    except ValueError:
        _cancel(session, mechanism)


def _cancel(session, mechanism):
    """A challenge that makes no sense: ``*`` cancels (RFC 4954 4)."""
    session.write(b"*\r\n")
    session.flush()
    session.read()
    session.stop(_z(session, b"its AUTH " + mechanism + b" challenge "
                    b"made no sense. (#4.7.0)"))


def _step(session, mechanism, *parts):
    """Send one line of the exchange; the reply, failures ended here."""
    reply = session.command(*parts, b"\r\n")
    code, text, digits = reply
    if digits and code in (235, 334):
        return reply
    _refused(session, mechanism, reply)


def _refused(session, mechanism, reply):
    code, text, digits = reply
    said = smtptext_said(text)
    if digits and code == 432:
        what = b"password expired (AUTH " + mechanism + b")."
    elif digits and code == 534:
        what = b"authentication mechanism too weak (AUTH " + mechanism + \
            b")."
    else:
        what = b"authentication was rejected (AUTH " + mechanism + b")."
    session.stop(Report("Z", b"Connected to " + session.ip + b" but " +
                        what + b"\n" + said))


def _done(session, mechanism, reply):
    if reply[0] != 235:
        _refused(session, mechanism, reply)


def _plain(session, credentials, mechanism):
    token = b"\0" + credentials.user + b"\0" + credentials.password
    reply = _step(session, mechanism, b"AUTH PLAIN ", _b64(token))
    if reply[0] == 334:         # a challenge after the whole response
        _cancel(session, mechanism)
    _done(session, mechanism, reply)


def _login(session, credentials, mechanism):
    reply = _step(session, mechanism, b"AUTH LOGIN")
    if reply[0] == 334:
        reply = _step(session, mechanism, _b64(credentials.user))
    if reply[0] == 334:
        reply = _step(session, mechanism, _b64(credentials.password))
    _done(session, mechanism, reply)


def _cram_md5(session, credentials, mechanism):
    reply = _step(session, mechanism, b"AUTH CRAM-MD5")
    if reply[0] == 334:
        challenge = _challenge(session, reply[1], mechanism)
        digest = hmac.new(credentials.password, challenge,
                          hashlib.md5).hexdigest().encode("ascii")
        reply = _step(session, mechanism,
                      _b64(credentials.user + b" " + digest))
    _done(session, mechanism, reply)


def _scram_name(user):
    return user.replace(b"=", b"=3D").replace(b",", b"=2C")


def _scram_sha256(session, credentials, mechanism):
    """RFC 5802 with SHA-256, no channel binding (``n,,``).

    The user and the password are used as their bytes (no SASLprep: they
    are already what the admin wrote).  The server's signature is checked;
    a wrong one ends the dialogue before MAIL.
    """
    nonce = base64.b64encode(os.urandom(18))
    first_bare = b"n=" + _scram_name(credentials.user) + b",r=" + nonce
    reply = _step(session, mechanism, b"AUTH SCRAM-SHA-256 ",
                  _b64(b"n,," + first_bare))
    if reply[0] != 334:
        if reply[0] == 235:
            session.stop(_z(session, b"it did not prove its identity "
                            b"(AUTH " + mechanism + b"). (#4.7.0)"))
        _done(session, mechanism, reply)
    server_first = _challenge(session, reply[1], mechanism)
    fields = _scram_fields(server_first)
    try:
        combined = fields[b"r"]
        salt = base64.b64decode(fields[b"s"], validate=True)
        rounds = int(fields[b"i"])
    except (KeyError, ValueError):
        _cancel(session, mechanism)
    if not combined.startswith(nonce) or not 1 <= rounds <= 1 << 20:
        _cancel(session, mechanism)
    salted = hashlib.pbkdf2_hmac("sha256", credentials.password, salt,
                                 rounds)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    final_bare = b"c=biws,r=" + combined
    message = first_bare + b"," + server_first + b"," + final_bare
    signature = hmac.new(stored, message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    reply = _step(session, mechanism,
                  _b64(final_bare + b",p=" + base64.b64encode(proof)))
    if reply[0] != 334:
        # The server must prove it knows the password (RFC 5802 3): a
        # 235 without its signature could come from anyone.
        if reply[0] == 235:
            session.stop(_z(session, b"it did not prove its identity "
                            b"(AUTH " + mechanism + b"). (#4.7.0)"))
        _done(session, mechanism, reply)
    server_final = _scram_fields(_challenge(session, reply[1], mechanism))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = base64.b64encode(hmac.new(server_key, message,
                                         hashlib.sha256).digest())
    if not hmac.compare_digest(server_final.get(b"v", b""), expected):
        _cancel(session, mechanism)
    _done(session, mechanism, _step(session, mechanism, b""))


def _scram_fields(data):
    fields = {}
    for part in data.split(b","):
        key, eq, value = part.partition(b"=")
        if eq and len(key) == 1:
            fields.setdefault(key, value)
    return fields


_EXCHANGES = {
    b"SCRAM-SHA-256": _scram_sha256,
    b"CRAM-MD5": _cram_md5,
    b"PLAIN": _plain,
    b"LOGIN": _login,
}
