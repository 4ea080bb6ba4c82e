"""SMTP AUTH helpers for test_auth.py: servers, a SCRAM verifier, a fake.

Nothing here trusts qmailremote's own AUTH code: the server sides are
written from the RFCs (RFC 4616 PLAIN, RFC 2195 CRAM-MD5, RFC 5802 and
RFC 7677 SCRAM-SHA-256) with ``hashlib``, ``hmac`` and ``base64``.

* :class:`ScramServer` is the server half of SCRAM-SHA-256: it answers a
  client-first-message, checks the client proof of the client-final
  message the way RFC 5802 section 3 has a server check it (recover the
  ClientKey from the proof, hash it, compare with the StoredKey) and
  computes the ServerSignature.  :func:`scram_steps` runs it as
  ScriptedServer steps.
* :class:`AuthTeeServer` is ``TeeSMTPServer`` (aiosmtpd) with aiosmtpd's
  own AUTH (``authenticator=``, its built-in PLAIN and LOGIN): an
  independent server implementation.  aiosmtpd 1.4 refuses every MAIL
  parameter it does not know, ``AUTH=`` included, although RFC 4954
  section 5 has a server that offers AUTH accept it; the server here
  records the parameter (``mail_auth``) and hands aiosmtpd the rest.
* :class:`AuthFakeSocket` is tests/fakesmtp.py's in-process server, which
  also answers ``AUTH`` and the lines of its exchange from a list.
* :func:`message_reports` splits qmail-remote's stdout into reports and
  checks the protocol: one K/Z/D, the last one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

from aiosmtpd.smtp import AuthResult

from fakesmtp import FakeSocket
from smtpserver import TeeSMTPServer, _TeeSMTP, call

__all__ = ["b64", "ehlo", "message_reports", "ScramServer", "scram_steps",
           "AuthTeeServer", "Authenticator", "AuthFakeSocket", "code_of"]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def ehlo(*keywords: bytes, name: bytes = b"mx.example") -> bytes:
    """An EHLO reply: the server's name, then one line per keyword."""
    lines = [name, *keywords]
    return b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-",
                                      line)
                    for i, line in enumerate(lines))


def message_reports(out: bytes) -> list[bytes]:
    """The reports of *out* (each without its NUL), checked: recipient
    reports (r, h, s) first, then exactly one message report (K, Z, D),
    the last one."""
    assert out.endswith(b"\0"), out
    reports = out[:-1].split(b"\0")
    letters = [r[:1] for r in reports]
    assert sum(letter in (b"K", b"Z", b"D") for letter in letters) == 1, out
    assert letters[-1] in (b"K", b"Z", b"D"), out
    assert all(letter in (b"r", b"h", b"s") for letter in letters[:-1]), out
    return reports


def code_of(reply: bytes) -> int | None:
    """The code a client takes from *reply*: its first three bytes, when
    they are digits (netqmail reads the code of the first line)."""
    if len(reply) >= 3 and reply[:3].isdigit():
        return int(reply[:3])
    return None


# --- SCRAM-SHA-256, the server side ------------------------------------------

def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _attributes(message: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for part in message.split(b","):
        key, eq, value = part.partition(b"=")
        assert eq and len(key) == 1, f"not a SCRAM attribute: {part!r}"
        out.append((key, value))
    return out


def _saslname(name: bytes) -> bytes:
    """RFC 5802 section 5.1: ``=2C`` and ``=3D`` decoded; any other ``=``
    is an error."""
    assert re.fullmatch(rb"(?:[^=,]|=2C|=3D)*", name), name
    return name.replace(b"=2C", b",").replace(b"=3D", b"=")


class ScramServer:
    """The server half of one SCRAM-SHA-256 exchange (RFC 5802, 7677).

    *server_nonce*, *salt* and *iterations* make the server-first-message;
    the password is what the server's verifiers are computed from.  After
    :meth:`final`, ``proof_ok`` says whether the client proof verified and
    ``signature`` is the ServerSignature (the ``v=`` value, base64).
    """

    def __init__(self, user: bytes, password: bytes, *,
                 salt: bytes | None = None, iterations: int = 4096,
                 server_nonce: bytes | None = None):
        self.user = user
        self.salt = os.urandom(16) if salt is None else salt
        self.iterations = iterations
        self.server_nonce = (b64(os.urandom(18)) if server_nonce is None
                             else server_nonce)
        salted = hashlib.pbkdf2_hmac("sha256", password, self.salt,
                                     iterations)
        self.stored_key = _h(_hmac(salted, b"Client Key"))
        self.server_key = _hmac(salted, b"Server Key")
        self.client_first_bare = None
        self.server_first = None
        self.proof_ok = None
        self.signature = None

    def first(self, client_first: bytes) -> bytes:
        """The server-first-message for *client_first* (decoded)."""
        gs2, _, bare = client_first.partition(b",,")
        # No channel binding, no authzid: "n,,".
        assert gs2 == b"n", f"gs2 header {gs2!r}"
        attrs = _attributes(bare)
        assert [k for k, _ in attrs] == [b"n", b"r"], attrs
        assert _saslname(attrs[0][1]) == self.user, attrs
        nonce = attrs[1][1]
        assert nonce and all(33 <= c <= 126 and c != 44 for c in nonce), nonce
        self.client_nonce = nonce
        self.client_first_bare = bare
        self.server_first = (b"r=" + nonce + self.server_nonce + b",s=" +
                             b64(self.salt) + b",i=%d" % self.iterations)
        return self.server_first

    def final(self, client_final: bytes) -> bytes:
        """Check the client-final-message; the server-final ``v=...``."""
        without_proof, sep, proof = client_final.rpartition(b",p=")
        assert sep, client_final
        attrs = _attributes(without_proof)
        assert attrs == [(b"c", b64(b"n,,")),
                         (b"r", self.client_nonce + self.server_nonce)], attrs
        auth_message = (self.client_first_bare + b"," + self.server_first +
                        b"," + without_proof)
        client_signature = _hmac(self.stored_key, auth_message)
        proof = base64.b64decode(proof, validate=True)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        self.proof_ok = (len(proof) == 32 and
                         hmac.compare_digest(_h(client_key), self.stored_key))
        self.signature = b64(_hmac(self.server_key, auth_message))
        return b"v=" + self.signature


def scram_steps(server: ScramServer, *, server_final=None):
    """ScriptedServer step: ``AUTH SCRAM-SHA-256 <client-first>``, the
    server-first challenge, the client-final line, then the 334 with the
    server-final message (or *server_final(server)*, raw reply bytes
    CRLF included, instead of it).  A client proof that does not verify
    is a script failure; ``record.scram`` is the :class:`ScramServer`.
    """
    def exchange(conn):
        conn.record.scram = server
        line = conn.read_line()
        conn.record.lines.append(line)
        match = re.fullmatch(rb"AUTH SCRAM-SHA-256 ([A-Za-z0-9+/=]+)\r\n",
                             line)
        if match is None:
            conn.fail(f"expected AUTH SCRAM-SHA-256 <b64>, got {line!r}")
        first = server.first(base64.b64decode(match.group(1), validate=True))
        conn.sock.sendall(b"334 " + b64(first) + b"\r\n")
        line = conn.read_line()
        conn.record.lines.append(line)
        if line == b"*\r\n":
            conn.fail("the client cancelled (*) after a valid server-first "
                      f"message {first!r}")
        if not line.endswith(b"\r\n"):
            conn.fail(f"client-final not CRLF-terminated: {line!r}")
        try:
            client_final = base64.b64decode(line[:-2], validate=True)
        except ValueError:
            conn.fail(f"client-final is not base64: {line!r}")
        v = server.final(client_final)
        if not server.proof_ok:
            conn.fail("the client proof does not verify")
        reply = (b"334 " + b64(v) + b"\r\n" if server_final is None
                 else server_final(server))
        conn.sock.sendall(reply)
    exchange.__name__ = "scram_steps"
    return call(exchange)


# --- aiosmtpd with its own AUTH ----------------------------------------------

class Authenticator:
    """aiosmtpd ``authenticator=``: accepts *users* (login -> password),
    or answers every attempt with *reply* (an SMTP reply text such as
    ``"432 4.7.12 A password transition is needed"``).  ``calls`` holds
    ``(mechanism, login, password)`` per attempt."""

    def __init__(self, users: dict[bytes, bytes], reply: str | None = None):
        self.users = dict(users)
        self.reply = reply
        self.calls: list[tuple[str, bytes, bytes]] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        login, password = auth_data.login, auth_data.password
        self.calls.append((mechanism, login, password))
        if self.reply is not None:
            return AuthResult(success=False, handled=False, message=self.reply)
        ok = login in self.users and self.users[login] == password
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class _AuthTeeSMTP(_TeeSMTP):
    _AUTH_PARAM = re.compile(r"\s+AUTH=(\S*)", re.IGNORECASE)

    async def smtp_MAIL(self, arg):
        if arg is not None:
            match = self._AUTH_PARAM.search(arg)
            self._tee_server.mail_auth.append(
                (match.group(1) if match else None,
                 bool(self.session.authenticated)))
            if match is not None:
                arg = arg[:match.start()] + arg[match.end():]
        await super().smtp_MAIL(arg)


class AuthTeeServer(TeeSMTPServer):
    """TeeSMTPServer with aiosmtpd's AUTH (PLAIN and LOGIN built in).

    *authenticator* is an :class:`Authenticator`; *auth_require_tls*
    (aiosmtpd's default is True) offers AUTH only inside TLS;
    *auth_exclude_mechanism* leaves mechanisms out.  ``mail_auth`` holds,
    per MAIL command, ``(AUTH= value or None, authenticated)``.
    """

    def __init__(self, *, authenticator, auth_require_tls=False,
                 auth_exclude_mechanism=(), **kwargs):
        super().__init__(**kwargs)
        self.authenticator = authenticator
        self.auth_require_tls = auth_require_tls
        self.auth_exclude_mechanism = list(auth_exclude_mechanism)
        self.mail_auth: list[tuple[str | None, bool]] = []

    def _factory(self):
        return _AuthTeeSMTP(
            self, self._handler,
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=self.enable_SMTPUTF8,
            hostname=self.hostname,
            ident="AuthTeeServer",
            timeout=self.timeout,
            loop=self._loop,
            tls_context=self.tls_context,
            require_starttls=False,
            authenticator=self.authenticator,
            auth_require_tls=self.auth_require_tls,
            auth_exclude_mechanism=self.auth_exclude_mechanism,
        )


# --- the in-process fake, with AUTH ------------------------------------------

class AuthFakeSocket(FakeSocket):
    """:class:`fakesmtp.FakeSocket` that also answers SMTP AUTH.

    The ``AUTH`` line and every line of its exchange get the next entry of
    *auth_replies* (bytes, DROP, Cut, or a callable ``f(line, fake)``
    returning one of those); past its end, *auth_default*.  A reply whose
    first three bytes are ``334`` keeps the exchange going: the next line
    is a response (or ``*``).  ``QUIT`` always ends it.

    ``auth_lines`` holds the lines of the exchange; ``log`` is the order
    of events, ``("auth", line, reply)`` and ``("mail", line, None)``.
    """

    def __init__(self, script, auth_replies=(), pieces=None,
                 auth_default=None):
        from fakesmtp import DROP
        self.auth_replies = list(auth_replies)
        self.auth_default = DROP if auth_default is None else auth_default
        self.auth_lines = []
        self.log = []
        self._in_auth = False
        super().__init__(script, pieces)

    def _command(self, line):
        if line.upper() == b"QUIT\r\n" or not (
                self._in_auth or line[:5].upper() == b"AUTH "):
            self._in_auth = False
            if line[:4].upper() == b"MAIL":
                self.log.append(("mail", line, None))
            return super()._command(line)
        self.commands.append((b"AUTH" if not self._in_auth else b"SASL",
                              line, len(self.sends) - 1))
        index = len(self.auth_lines)
        self.auth_lines.append(line)
        entry = (self.auth_replies[index] if index < len(self.auth_replies)
                 else self.auth_default)
        if callable(entry):
            entry = entry(line, self)
        self.log.append(("auth", line, entry))
        self._in_auth = isinstance(entry, bytes) and entry[:3] == b"334"
        self._queue(entry, "auth")
