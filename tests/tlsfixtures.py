"""TLS helpers for test_tls.py: a test CA, server contexts, server steps.

Nothing here is committed key material: :class:`Pki` makes a fresh
``trustme`` CA (and a second, untrusted one) per test session, and issues
leaf certificates of any shape with ``cryptography`` (SAN or not, a
commonName or not, expired, self-signed).  PEM files go to a temporary
directory, because ``ssl`` loads certificate chains from files only.
:func:`subject_hash` names a CA file as a CA directory (capath) wants it.

Server side:

* :class:`ServerTls` is a server ``ssl.SSLContext`` that records the SNI
  name of every ClientHello (``None`` when the client sent none);
* :func:`starttls` is a ``ScriptedServer`` step that wraps the connection
  in TLS (after the server's ``220`` to STARTTLS, or first thing for
  SMTPS) and records the outcome on the connection's record
  (``record.tls``: version, cipher and client certificate, or
  ``record.tls_error``); every later step reads and writes cleartext;
* :func:`serve_bdat` answers BDAT chunks up to ``LAST``;
* :class:`OneShotServer` accepts one connection and then closes its
  listening socket, so that a second connection is refused;
* :func:`smtps_child` is the program ``test_tls.py`` runs inside a private
  network namespace (tests/netns.py) for ports 465 and 25, where the
  servers must listen on fixed ports (:class:`FixedPortServer`, with the
  scripts of :func:`netns_script`).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import socket
import ssl
import sys
import threading
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

if __name__ == "__main__":          # the netns child: the source tree first
    sys.path[:0] = [ROOT, HERE]

import trustme                                       # noqa: E402
from cryptography import x509                        # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID            # noqa: E402

from smtpserver import ScriptedServer, call          # noqa: E402

__all__ = ["Cert", "Pki", "ServerTls", "TlsInfo", "subject_hash", "starttls",
           "serve_bdat", "OneShotServer", "FixedPortServer", "netns_script",
           "smtps_child"]

# Long before and long after any test run.
_NOT_BEFORE = datetime.datetime(2000, 1, 1)
_NOT_AFTER = datetime.datetime(3000, 1, 1)


@dataclass
class Cert:
    """A certificate (its chain: the leaf; the root is not sent) and its
    private key, both PEM."""

    chain_pem: bytes
    key_pem: bytes

    @property
    def pem(self) -> bytes:
        """Certificate and key in one file (``control/clientcert.pem``)."""
        return self.chain_pem + self.key_pem


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    """A fresh test CA (``ca``), an untrusted one (``rogue``), and leaves.

    *directory* receives the PEM files the server contexts load.
    """

    def __init__(self, directory):
        self.dir = str(directory)
        self.ca = trustme.CA()
        self.rogue = trustme.CA()
        self._files = 0

    @property
    def ca_pem(self) -> bytes:
        """The trusted CA's certificate (a ``tlshosts/<name>.pem``)."""
        return self.ca.cert_pem.bytes()

    def leaf(self, *names: str, cn: str | None = None,
             issuer: "trustme.CA | None" = None, self_signed: bool = False,
             not_after: datetime.datetime = _NOT_AFTER) -> Cert:
        """A leaf certificate with dNSName SANs *names* (none: no SAN
        extension at all) and subject commonName *cn* (None: no CN).

        Issued by *issuer* (default: the trusted CA), or self-signed.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsfixtures")]
        if cn is not None:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        subject = x509.Name(attrs)
        if self_signed:
            issuer_name, issuer_key = subject, key
        else:
            ca = issuer or self.ca
            issuer_name = x509.load_pem_x509_certificate(
                ca.cert_pem.bytes()).subject
            issuer_key = serialization.load_pem_private_key(
                ca.private_key_pem.bytes(), None)
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(issuer_name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(_NOT_BEFORE).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False,
                                                        path_length=None),
                                  critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in names]), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        return Cert(cert.public_bytes(serialization.Encoding.PEM), _pem(key))

    def client(self, cn: str = "client.example") -> Cert:
        """A client certificate from the trusted CA (trustme's own)."""
        leaf = self.ca.issue_cert(cn, common_name=cn)
        return Cert(b"".join(p.bytes() for p in leaf.cert_chain_pems),
                    leaf.private_key_pem.bytes())

    def write(self, data: bytes, suffix: str = ".pem") -> str:
        """*data* in a new file of the PEM directory; its path."""
        self._files += 1
        path = os.path.join(self.dir, f"{self._files}{suffix}")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def server(self, cert: Cert, **options) -> "ServerTls":
        """A :class:`ServerTls` presenting *cert* (see its options)."""
        return ServerTls(self.write(cert.chain_pem), self.write(cert.key_pem),
                         **options)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_oid(dotted: str) -> bytes:
    first, second, *rest = (int(x) for x in dotted.split("."))
    out = bytearray([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def subject_hash(cert_pem: bytes) -> str:
    """OpenSSL's ``X509_NAME_hash`` of the subject (``openssl x509 -hash``):
    the file name (``<hash>.0``) a CA directory (capath) needs.

    SHA-1 of the canonical encoding: each RDN as a DER SET, values as
    UTF8String, trimmed, inner whitespace runs made one space, ASCII
    lower-cased; no outer SEQUENCE header.  Single-valued RDNs of text
    attributes only (which is what trustme's names are).
    """
    import hashlib

    name = x509.load_pem_x509_certificate(cert_pem).subject
    canon = bytearray()
    for rdn in name.rdns:
        attrs = b""
        for attr in rdn:
            value = " ".join(str(attr.value).split()).encode("utf-8")
            value = bytes(c + 32 if 65 <= c <= 90 else c for c in value)
            attrs += _der(0x30, _der_oid(attr.oid.dotted_string) +
                          _der(0x0C, value))
        canon += _der(0x31, attrs)
    digest = hashlib.sha1(bytes(canon)).digest()
    return "%08x" % int.from_bytes(digest[:4], "little")


class ServerTls:
    """A server-side ``ssl.SSLContext`` that logs the SNI it is sent.

    *max_version* caps the protocol (e.g. ``ssl.TLSVersion.TLSv1_2``);
    *ciphers* restricts the TLS 1.2 suites; *client_ca* (a PEM path)
    makes a client certificate from that CA mandatory.
    """

    def __init__(self, certfile, keyfile, *, max_version=None, ciphers=None,
                 client_ca=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        if max_version is not None:
            ctx.maximum_version = max_version
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=client_ca)
        #: The server name of each ClientHello, in order (None: no SNI).
        self.snis: list[str | None] = []
        ctx.sni_callback = self._sni
        self.context = ctx

    def _sni(self, sslobj, name, ctx):
        self.snis.append(name)


@dataclass
class TlsInfo:
    """What the server saw of one completed handshake."""

    version: str
    cipher: str
    client_cert: dict | None


def starttls(tls: ServerTls, fails: bool = False):
    """A ScriptedServer step: the TLS handshake, as the server.

    On success ``record.tls`` is a :class:`TlsInfo` and the script goes on
    in cleartext over TLS.  With *fails* the handshake must fail (the
    error lands in ``record.tls_error``) and this must be the last step;
    a handshake that succeeds then is a script failure, and so is one that
    fails without *fails*.
    """
    def handshake(conn):
        conn.record.tls = None
        conn.record.tls_error = None
        try:
            wrapped = tls.context.wrap_socket(conn.sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            conn.record.tls_error = exc
            if not fails:
                conn.fail(f"server handshake failed: {exc!r}")
            return
        conn.sock = wrapped
        conn.record.tls = TlsInfo(wrapped.version(), wrapped.cipher()[0],
                                  wrapped.getpeercert() or None)
        if fails:
            conn.fail("the handshake succeeded, a failure was expected")
    handshake.__name__ = "starttls"
    return call(handshake)


_BDAT = re.compile(rb"BDAT ([0-9]+)( LAST)?\r\n")


def serve_bdat(reply: bytes = b"250 ok\r\n",
               final: bytes = b"250 ok queued\r\n"):
    """A ScriptedServer step: BDAT chunks up to ``LAST``, each answered.

    The payload (CRLF lines, no dot-stuffing) goes to ``record.data``,
    the chunk sizes to ``record.chunks``.
    """
    def bdat(conn):
        payload = bytearray()
        while True:
            line = conn.read_line()
            conn.record.lines.append(line)
            match = _BDAT.fullmatch(line)
            if match is None:
                conn.fail(f"expected BDAT, got {line[:80]!r}")
            size = int(match.group(1))
            payload += conn.read_exactly(size)
            conn.record.chunks.append(size)
            if match.group(2):
                conn.sock.sendall(final)
                break
            conn.sock.sendall(reply)
        conn.record.data.append(bytes(payload))
    bdat.__name__ = "serve_bdat"
    return call(bdat)


class OneShotServer:
    """127.0.0.1, a port the OS picks (or *port*), one connection only.

    The listening socket is closed as soon as the connection is accepted,
    so any later connection to the port is refused.  *handler(sock)* runs
    in a thread; an exception there is kept in ``error`` (``join`` raises
    it as AssertionError).  ``received`` is what *handler* read through
    :meth:`read_line`.
    """

    def __init__(self, handler, port: int = 0):
        self.handler = handler
        self.received = bytearray()
        self.error: BaseException | None = None
        self._buf = bytearray()
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._listener.close()
        self._thread.join(10)

    def _run(self):
        try:
            sock, _ = self._listener.accept()
        except OSError as exc:
            self.error = exc
            return
        self._listener.close()
        with sock:
            try:
                self.handler(self, sock)
            except BaseException as exc:        # reported by join()
                self.error = exc

    def read_line(self, sock) -> bytes:
        """One line from *sock* (EOF first: AssertionError)."""
        while b"\n" not in self._buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(
                    f"EOF before a line: {bytes(self._buf)!r}")
            self.received += chunk
            self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf[:] = rest
        return line + b"\n"

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("OneShotServer: the handler did not finish")
        if self.error is not None:
            raise AssertionError(f"OneShotServer: {self.error!r}")


# ---------------------------------------------------------------------------
# Port 465, inside a private network namespace


class FixedPortServer(ScriptedServer):
    """A ScriptedServer on *host*:*port*: only for a private netns.

    ``ScriptedServer.start`` binds port 0; this binds the port given,
    then lets ScriptedServer run as usual.
    """

    def __init__(self, script, *, host: str, port: int):
        super().__init__(script, host=host)
        self.fixed_port = port

    def start(self):
        """ScriptedServer.start, with the fixed port instead of port 0."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener = socket.create_server((self.host, self.fixed_port))
        self.port = self.fixed_port
        self._accept_thread = threading.Thread(target=self._accept_loop,
                                               daemon=True)
        self._accept_thread.start()
        return self


def netns_script(kind: str, tls: ServerTls | None, addr: str):
    """The ScriptedServer script of one netns server, by *kind*.

    ``smtps``: implicit TLS, then a whole delivery; ``smtps_421``: implicit
    TLS, then a 421 greeting; ``smtps_reject``: an implicit TLS handshake
    the client must abort; ``plain``: a cleartext greeting, then whatever
    comes; ``starttls``: a delivery after STARTTLS; ``starttls_reject``:
    STARTTLS, then a handshake the client must abort.
    """
    from smtpserver import expect_data, expect_line, read_to_eof, send

    ok = b"250 ok\r\n"
    delivery = [expect_line(re.compile(rb"MAIL FROM:<.*>\r\n")), send(ok),
                expect_line(re.compile(rb"RCPT TO:<.*>\r\n")), send(ok),
                expect_line(b"DATA\r\n"), send(b"354 go\r\n"), expect_data(),
                send(b"250 ok " + addr.encode() + b"\r\n"),
                read_to_eof(b"QUIT\r\n")]
    ehlo = [expect_line(b"EHLO me.example\r\n"),
            send(b"250-" + addr.encode() + b"\r\n250 PIPELINING\r\n")]
    before_tls = [send(b"220 " + addr.encode() + b"\r\n"),
                  expect_line(b"EHLO me.example\r\n"),
                  send(b"250-" + addr.encode() + b"\r\n250 STARTTLS\r\n"),
                  expect_line(b"STARTTLS\r\n"), send(b"220 go ahead\r\n")]
    scripts = {
        "smtps": lambda: [starttls(tls),
                          send(b"220 " + addr.encode() + b"\r\n"),
                          *ehlo, *delivery],
        "smtps_421": lambda: [starttls(tls), send(b"421 busy\r\n"),
                              read_to_eof(b"QUIT\r\n")],
        "smtps_reject": lambda: [starttls(tls, fails=True)],
        "plain": lambda: [send(b"220 plain\r\n"), read_to_eof()],
        "starttls": lambda: [*before_tls, starttls(tls), *ehlo, *delivery],
        "starttls_reject": lambda: [*before_tls, starttls(tls, fails=True)],
    }
    return scripts[kind]()


def smtps_child() -> None:
    """Inside the netns: start the servers, deliver, print what happened.

    stdin: ``{"tmp": a scratch directory, "cases": [{"home", "host",
    "rcpts", "message", "servers": [{"addr", "port", "kind", "cert",
    "key"}]}]}`` (PEM as text; *kind* as in :func:`netns_script`).
    stdout: per case ``{"report": b64, "servers": [{"received":
    [b64 per connection], "tls": [[version, cipher] or None],
    "snis": [...], "failures": [...]}]}``.
    """
    from qmailremote import deliver

    spec = json.load(sys.stdin)
    pem_dir = os.path.join(spec["tmp"], "child-pem")
    os.makedirs(pem_dir, exist_ok=True)
    out = []
    for number, case in enumerate(spec["cases"]):
        servers = []
        for index, server in enumerate(case["servers"]):
            tls = None
            if server.get("cert"):
                paths = []
                for part in ("cert", "key"):
                    path = os.path.join(pem_dir, f"{number}-{index}-{part}")
                    with open(path, "w") as f:
                        f.write(server[part])
                    paths.append(path)
                tls = ServerTls(*paths)
            srv = FixedPortServer(netns_script(server["kind"], tls,
                                                server["addr"]),
                                  host=server["addr"], port=server["port"])
            servers.append((srv.start(), tls))
        try:
            result = deliver(case["host"].encode(), b"a@b.example",
                             [r.encode() for r in case["rcpts"]],
                             case["message"].encode(), home=case["home"])
            for srv, _ in servers:
                if srv.connections:
                    try:
                        srv.wait_done(connections=srv.connections)
                    except AssertionError:
                        pass                # kept in srv.failures
        finally:
            for srv, _ in servers:
                srv.stop()
        out.append({
            "report": base64.b64encode(result.render()).decode(),
            "servers": [{
                "received": [base64.b64encode(r).decode()
                             for r in srv.received],
                "tls": [[r.tls.version, r.tls.cipher]
                        if getattr(r, "tls", None) else None
                        for r in srv.records],
                "snis": tls.snis if tls is not None else [],
                "failures": srv.failures,
            } for srv, tls in servers],
        })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    smtps_child()
