"""A fast loopback SMTP sink for benchmarks.

Speaks just enough SMTP for qmail-remote, smtplib and aiosmtplib (HELO or
EHLO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT) and counts body bytes
instead of keeping them.  It is an ESMTP server whose EHLO reply offers,
per option:

* ``size``: ``None`` (default) does not offer SIZE; ``0`` offers it with no
  limit; ``n > 0`` offers ``SIZE n``, and a ``MAIL ... SIZE=m`` with
  ``m > n`` gets ``552 5.3.4`` (RFC 1870);
* ``pipelining``: PIPELINING (RFC 2920).  Whatever is offered, every
  complete command line in the input buffer is answered, in order, and the
  replies go out in one write when the sink is about to wait for input,
  as a real server flushes them;
* ``chunking``: CHUNKING (RFC 3030): ``BDAT n [LAST]`` reads exactly *n*
  bytes and answers ``250`` for each chunk; the message ends at ``LAST``;
* ``smtputf8``: SMTPUTF8 (RFC 6531);
* ``tls``: STARTTLS (RFC 3207), with a certificate made at start-up
  (see below); after the handshake the EHLO reply no longer offers it;
* 8BITMIME is always offered.

The body of DATA is read with ``recv_into`` on a large reused buffer,
looking for the end of data only across chunk boundaries (and within a
read that ends in LF, for a client that pipelines commands behind the end
of data: see ``_body``); BDAT data is read
straight into the same buffer, at most what the chunk has left, so the
next command stays in the socket.  Either way it runs near memchr speed and
is not the bottleneck.  One thread per connection.

With ``tls``, ``STARTTLS`` is answered ``220``, any input pipelined behind
it is dropped (RFC 3207), and the connection is wrapped with a server
``ssl.SSLContext``; every later read is an ``SSLSocket.recv_into`` of the
same 1 MiB buffer (OpenSSL hands over at most one 16 KiB record a call, and
releases the GIL while it decrypts); the socket gets TCP_NODELAY first.
QUIT under TLS is answered, then the sink sends its close_notify
(``unwrap``) before closing.  The certificate is for ``localhost``
and ``127.0.0.1``, issued at start-up by a throw-away CA: with ``trustme``
when it is importable, else with ``cryptography``, else with the
``openssl`` command; ECDSA P-256 (trustme's default), so the server's
handshake costs little.  ``ca_pem`` holds the CA certificate (PEM) for a
client that wants to verify; no key or certificate is written anywhere
lasting (a temporary file while the context loads it).

Counters (totals over all connections): ``messages`` and ``body_bytes``
(DATA: everything after the DATA line through ``.\\r\\n``; BDAT: the sum
of the chunk sizes), ``received`` (every byte read from any client:
commands and body, after decryption, added when the connection ends),
``connections``, ``closed`` (connections ended), ``refused`` (MAIL
refused for SIZE), ``tls`` (handshakes completed) and ``tls_versions``
(``{(version, cipher): count}``).
"""

import os
import socket
import subprocess
import tempfile
import threading
import time

__all__ = ["Sink", "server_tls"]

_CHUNK = 1 << 20
_CARRY = 4 << 10    # bytes of a DATA body kept across reads (see _body)
_END = b"\r\n.\r\n"


def _pems_trustme():
    import trustme
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    return (leaf.private_key_and_cert_chain_pem.bytes(),
            ca.cert_pem.bytes())


def _pems_cryptography():
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            "sink benchmark CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name)
          .issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return (key_pem + leaf.public_bytes(pem) + ca.public_bytes(pem),
            ca.public_bytes(pem))


def _pems_openssl():
    """A self-signed certificate (it is its own CA) from the command."""
    with tempfile.TemporaryDirectory(prefix="sink-tls-") as tmp:
        key, cert = os.path.join(tmp, "key"), os.path.join(tmp, "cert")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
             "/CN=localhost", "-addext",
             "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", key, "-out", cert],
            check=True, capture_output=True)
        with open(key, "rb") as f:
            key_pem = f.read()
        with open(cert, "rb") as f:
            cert_pem = f.read()
    return key_pem + cert_pem, cert_pem


def server_tls():
    """A server ``ssl.SSLContext`` with a fresh certificate: (ctx, ca_pem,
    how the certificate was made)."""
    import ssl
    for how, make in (("trustme", _pems_trustme),
                      ("cryptography", _pems_cryptography),
                      ("openssl", _pems_openssl)):
        try:
            chain, ca_pem = make()
            break
        except (ImportError, OSError, subprocess.CalledProcessError):
            continue
    else:
        raise RuntimeError("no way to make a certificate: pip install "
                           "trustme (or cryptography), or install openssl")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain() takes only a path: the key lives in a private
    # temporary file for as long as it takes to load it.
    with tempfile.NamedTemporaryFile(prefix="sink-tls-", suffix=".pem") as f:
        f.write(chain)
        f.flush()
        ctx.load_cert_chain(f.name)
    return ctx, ca_pem, how


class _Late:
    """A connection's replies, each written when it is due, while the sink
    goes on reading (a server far away: its input is not held up by the
    replies' trip).  One thread: reads wait in ``poll`` until input comes
    or the next reply is due."""

    def __init__(self):
        import collections
        self._due = collections.deque()     # (when, socket, bytes)

    def send(self, sock, data, due):
        self._due.append((due, sock, data))

    def _write_due(self, now):
        while self._due and self._due[0][0] <= now:
            _, sock, data = self._due.popleft()
            sock.sendall(data)

    def wait_input(self, sock):
        """Write replies as they fall due until *sock* has input."""
        import select
        poller = select.poll()      # not select(): descriptors past 1024
        poller.register(sock, select.POLLIN)
        while True:
            now = time.monotonic()
            self._write_due(now)
            if getattr(sock, "pending", lambda: 0)():
                return          # TLS: decrypted bytes already buffered
            timeout = None if not self._due else \
                max(0, int((self._due[0][0] - now) * 1000) + 1)
            if poller.poll(timeout):
                return

    def drain(self):
        """Write everything queued, each when it is due."""
        while self._due:
            wait = self._due[0][0] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._write_due(time.monotonic())

    close = drain


class Sink:
    """``with Sink(...) as sink:`` listens on ``sink.port`` (127.0.0.1,
    or *host*: an IPv6 address such as ``::1`` works too)."""

    def __init__(self, host="127.0.0.1", port=0, *, size=None,
                 pipelining=False, chunking=False, smtputf8=False,
                 tls=False, auth=False, delay=0.0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        # Deep enough for 255 deliveries connecting at once: an overflow
        # drops a SYN, and its retransmission costs the client a second.
        self._listener.listen(1024)
        self.host, self.port = self._listener.getsockname()[:2]
        self.size = size
        # Seconds each batch of replies waits after the input it answers
        # (the greeting: after the accept), written by a thread of the
        # connection's own while it reads on: a server that far away.
        self.delay = delay
        lines = [b"sink", b"8BITMIME"]
        if size is not None:
            lines.append(b"SIZE %d" % size if size else b"SIZE")
        if pipelining:
            lines.append(b"PIPELINING")
        if chunking:
            lines.append(b"CHUNKING")
        if smtputf8:
            lines.append(b"SMTPUTF8")
        if auth:
            lines.append(b"AUTH PLAIN LOGIN")
        self.ehlo_reply = self.ehlo_tls = self._ehlo(lines)
        self.tls_context = self.ca_pem = self.cert_maker = None
        if tls:
            self.tls_context, self.ca_pem, self.cert_maker = server_tls()
            self.ehlo_reply = self._ehlo(lines + [b"STARTTLS"])
        self.messages = 0
        self.body_bytes = 0
        self.received = 0
        self.connections = 0
        self.refused = 0
        self.closed = 0
        self.tls = 0
        self.tls_versions = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._listener.close()

    @staticmethod
    def _ehlo(lines):
        return b"".join(
            b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", line)
            for i, line in enumerate(lines))

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        with self._lock:
            self.connections += 1
        received = [0]
        wrapped = []            # the TLS socket, after STARTTLS
        try:
            with conn:
                self._dialogue(conn, received, wrapped)
        except (ConnectionError, OSError):
            pass
        finally:
            for tls in wrapped:
                tls.close()
            with self._lock:
                self.received += received[0]
                self.closed += 1

    def _dialogue(self, conn, received, wrapped):
        late = []
        try:
            self._talk(conn, received, wrapped, late)
        finally:
            for writer in late:
                writer.close()

    def _talk(self, conn, received, wrapped, lates):
        buf = bytearray(_CARRY + _CHUNK)
        view = memoryview(buf)
        pending = bytearray()   # input read but not yet consumed
        out = []                # replies not yet written

        delay = self.delay
        heard = [time.monotonic()]   # when the input being answered came
        late = _Late() if delay else None
        if late is not None:
            lates.append(late)

        def send(data):
            """Replies: now, or *delay* after the input they answer."""
            if late is None:
                conn.sendall(data)
            else:
                late.send(conn, data, heard[0] + delay)

        def fill():
            """Flush the replies, then wait for more input; False at EOF."""
            if out:
                send(b"".join(out))
                out.clear()
            if late is not None:
                late.wait_input(conn)
            n = conn.recv_into(view)
            if delay:
                heard[0] = time.monotonic()
            received[0] += n
            if n:
                pending.extend(view[:n])
            return n

        out.append(b"220 sink ready\r\n")
        chunked = 0             # BDAT bytes of the message so far
        while True:
            end = pending.find(b"\n")
            if end < 0:
                if not fill():
                    return
                continue
            line = bytes(pending[:end + 1])
            del pending[:end + 1]
            verb = line[:4].upper()
            if verb == b"DATA":
                out.append(b"354 go ahead\r\n")
                first = bytes(pending)
                pending.clear()
                if out:
                    send(b"".join(out))
                    out.clear()
                if late is not None:
                    late.drain()    # the body comes after the 354 arrives
                size, rest = self._body(conn, buf, first, received)
                if delay:
                    heard[0] = time.monotonic()
                pending.extend(rest)
                self._count(size)
                out.append(b"250 ok %d bytes\r\n" % size)
            elif verb == b"BDAT":
                words = line.split()
                try:
                    n = int(words[1])
                except (IndexError, ValueError):
                    out.append(b"501 5.5.4 syntax: BDAT n [LAST]\r\n")
                    continue
                last = len(words) > 2 and words[2].upper() == b"LAST"
                take = min(n, len(pending))
                del pending[:take]
                remaining = n - take
                if remaining and out:
                    conn.sendall(b"".join(out))
                    out.clear()
                while remaining:
                    got = conn.recv_into(view, min(remaining, _CHUNK))
                    if not got:
                        return
                    received[0] += got
                    remaining -= got
                chunked += n
                if last:
                    self._count(chunked)
                    out.append(b"250 ok %d bytes\r\n" % chunked)
                    chunked = 0
                else:
                    out.append(b"250 ok %d octets\r\n" % n)
            elif verb == b"MAIL":
                chunked = 0
                out.append(self._mail(line))
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                conn.sendall(b"".join(out))
                if wrapped:
                    # close_notify: openssl s_client takes a TLS close
                    # without one for an error (exit status 1)
                    conn.unwrap()
                return
            elif verb == b"AUTH" and line[4:5] == b" ":
                # Any credentials do: the round trip is what is measured.
                # (LOGIN would take two more; qmail-remote picks PLAIN.)
                out.append(b"235 2.7.0 authenticated\r\n")
            elif verb == b"EHLO":
                out.append(self.ehlo_tls if wrapped else self.ehlo_reply)
            elif verb == b"STAR" and line[:8].upper() == b"STARTTLS" and \
                    self.tls_context is not None and not wrapped:
                out.append(b"220 2.0.0 ready to start TLS\r\n")
                send(b"".join(out))
                out.clear()
                if late is not None:
                    late.drain()
                pending.clear()     # pipelined behind STARTTLS: dropped
                # OpenSSL writes the session tickets after the handshake in
                # writes of their own, and the reply to the next EHLO after
                # them: Nagle would hold those for the client's delayed ACK
                # (~40 ms a connection).  Plaintext replies go out in one
                # write per wait for input and never meet it.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = self.tls_context.wrap_socket(conn, server_side=True)
                wrapped.append(conn)
                key = (conn.version(), conn.cipher()[0])
                with self._lock:
                    self.tls += 1
                    self.tls_versions[key] = \
                        self.tls_versions.get(key, 0) + 1
            else:
                out.append(b"250 ok\r\n")

    def _mail(self, line):
        if self.size:
            for word in line.split()[1:]:
                if word[:5].upper() == b"SIZE=" and word[5:].isdigit() and \
                        int(word[5:]) > self.size:
                    with self._lock:
                        self.refused += 1
                    return b"552 5.3.4 message size exceeds fixed limit\r\n"
        return b"250 ok\r\n"

    def _count(self, size):
        with self._lock:
            self.messages += 1
            self.body_bytes += size

    @staticmethod
    def _body(conn, buf, first, received):
        """Read through the end of data: (body size, bytes read past it).

        Dot-stuffing keeps ``\\r\\n.\\r\\n`` out of the body, and a
        client that waits for the reply after ``.\\r\\n`` leaves the end of
        data at the end of what has been received so far: the fast path
        looks only at the last bytes of each read.  A client that sends
        commands right behind the end (``openssl s_client`` fed a file that
        ends in QUIT) stops with the LF of a command, so a read that ends in
        LF and not at the end of data is searched for it, with the last
        ``_CARRY`` bytes of the stream before it (kept at the front of the
        buffer, 4 KiB copied per read): the commands may come in a read of
        their own.  About one read in 77 of a body of CRLF lines ends in LF.
        """
        # "\r\n" stands for the end of the DATA line: ".\r\n" alone is an
        # empty body.
        start = b"\r\n" + first
        at = start.find(_END)
        if at >= 0:
            return at + 3, first[at + 3:]
        size = len(first)
        carry = start[-_CARRY:]
        # zeros before a short carry: they cannot be part of the end
        buf[:_CARRY] = bytes(_CARRY - len(carry)) + carry
        view = memoryview(buf)
        into = view[_CARRY:]
        while True:
            n = conn.recv_into(into)
            if not n:
                raise ConnectionError("client went away mid-body")
            received[0] += n
            stop = _CARRY + n
            if view[stop - 5:stop] == _END:
                return size + n, b""
            if buf[stop - 1] == 10:
                at = buf.find(_END, 0, stop)
                if at >= 0:
                    end = at + 5
                    return size + end - _CARRY, bytes(view[end:stop])
            size += n
            buf[:_CARRY] = view[n:stop].tobytes()
