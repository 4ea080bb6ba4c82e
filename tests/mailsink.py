"""A recording SMTP server for the bulk-sending tests.

Real TCP on 127.0.0.1 (a port the OS picks), a thread per connection.  It
speaks ESMTP with PIPELINING and CHUNKING (each may be turned off), reads
``DATA`` bodies (un-stuffing dots) and ``BDAT`` chunks, and records, per
connection, every transaction: ``(mail, [rcpt...], body)`` with the
addresses as sent and the body as the message's bytes (CRLF lines).  It
counts connections open at once (``peak``), can close a connection after
a number of transactions (``drop_after``: the client can see it before its
next transaction) or at the next ``MAIL`` after a number of them
(``hangup_at_mail``: it cannot), and can refuse recipients (``refuse``:
local part -> reply).  With ``keep_bodies=False`` a body is recorded as
its length; with ``tls`` (a server ``ssl.SSLContext``) it offers
STARTTLS and counts ``handshakes`` (``break_tls``: it hangs up instead
of the handshake); with ``auth`` (user, password) it offers AUTH PLAIN
and counts ``logins``.  Used as a context manager.
"""

import socket
import threading

__all__ = ["MailSink"]


class _Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.secure = False

    def line(self):
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            if not self._more():
                return None

    def exactly(self, n):
        while len(self.buf) < n:
            if not self._more():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def until(self, marker):
        while True:
            end = self.buf.find(marker)
            if end >= 0:
                data = bytes(self.buf[:end])
                del self.buf[:end + len(marker)]
                return data
            if not self._more():
                return None

    def _more(self):
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            return False
        self.buf += data
        return bool(data)

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            pass


class MailSink:
    def __init__(self, *, pipelining=True, chunking=True, drop_after=None,
                 hangup_at_mail=None, refuse=None,
                 final=b"250 ok queued\r\n", host="127.0.0.1",
                 keep_bodies=True, tls=None, break_tls=False, auth=None):
        self.pipelining = pipelining
        self.auth = auth            # (user, password): AUTH PLAIN offered
        self.logins = 0
        self.break_tls = break_tls  # hang up instead of the handshake
        self.tls = tls             # a server SSLContext: STARTTLS offered
        self.handshakes = 0
        self.keep_bodies = keep_bodies
        self.hangup_at_mail = hangup_at_mail
        self.chunking = chunking
        self.drop_after = drop_after
        self.refuse = refuse or {}
        self.final = final
        self.lock = threading.Lock()
        self.connections = []     # per connection: [transaction, ...]
        self.open = 0
        self.peak = 0
        self.rsets = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(256)
        self.host, self.port = self._listener.getsockname()
        self._threads = []

    def __enter__(self):
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        return self

    def __exit__(self, *exc):
        self._listener.close()

    @property
    def transactions(self):
        with self.lock:
            return [t for conn in self.connections for t in conn]

    def _accept(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            # Replies to pipelined commands are written one by one: Nagle
            # would hold each after the first for the client's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.open += 1
                self.peak = max(self.peak, self.open)
                record = []
                self.connections.append(record)
            threading.Thread(target=self._serve, args=(sock, record),
                             daemon=True).start()

    def _serve(self, sock, record):
        conn = _Conn(sock)
        try:
            self._dialogue(conn, record)
        finally:
            with self.lock:
                self.open -= 1
            conn.sock.close()
            sock.close()

    def _dialogue(self, conn, record):
        conn.send(b"220 sink\r\n")
        mail, rcpts, chunks = None, [], []
        while True:
            line = conn.line()
            if line is None:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                if verb == b"HELO":
                    conn.send(b"250 sink\r\n")
                    continue
                lines = [b"sink"]
                if self.tls is not None and not conn.secure:
                    lines.append(b"STARTTLS")
                if self.auth is not None:
                    lines.append(b"AUTH PLAIN")
                if self.pipelining:
                    lines.append(b"PIPELINING")
                if self.chunking:
                    lines.append(b"CHUNKING")
                conn.send(b"".join(
                    b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-",
                                      text) for i, text in enumerate(lines)))
            elif verb == b"MAIL":
                if self.hangup_at_mail is not None and \
                        len(record) >= self.hangup_at_mail:
                    return      # gone between two transactions, unseen
                mail, rcpts, chunks = line[10:], [], []
                conn.send(b"250 ok\r\n")
            elif verb == b"RCPT":
                address = line[8:]
                local = address.strip(b"<>").split(b"@")[0]
                reply = self.refuse.get(local)
                if reply is None:
                    rcpts.append(address)
                    reply = b"250 ok\r\n"
                conn.send(reply)
            elif verb == b"DATA":
                if mail is None or not rcpts:
                    conn.send(b"554 no valid recipients\r\n")
                    continue
                conn.send(b"354 go\r\n")
                body = conn.until(b"\r\n.\r\n")
                if body is None:
                    return
                body = body + b"\r\n"
                body = b"\r\n".join(l[1:] if l.startswith(b".") else l
                                    for l in body.split(b"\r\n"))
                if not self._end(conn, record, mail, rcpts, body):
                    return
                mail, rcpts = None, []
            elif verb == b"BDAT":
                parts = line.split()
                data = conn.exactly(int(parts[1]))
                if data is None:
                    return
                chunks.append(data)
                if len(parts) > 2 and parts[2].upper() == b"LAST":
                    if mail is None or not rcpts:
                        conn.send(b"554 no valid recipients\r\n")
                    elif not self._end(conn, record, mail, rcpts,
                                       b"".join(chunks)):
                        return
                    mail, rcpts, chunks = None, [], []
                else:
                    conn.send(b"250 chunk\r\n")
            elif line.upper() == b"STARTTLS" and self.tls is not None:
                conn.send(b"220 go ahead\r\n")
                if self.break_tls:
                    return
                try:
                    conn.sock = self.tls.wrap_socket(conn.sock,
                                                     server_side=True)
                except OSError:
                    return
                conn.buf.clear()
                conn.secure = True
                with self.lock:
                    self.handshakes += 1
            elif line[:11].upper() == b"AUTH PLAIN " and self.auth:
                import base64
                user, password = self.auth
                given = base64.b64decode(line[11:])
                if given == b"\0" + user + b"\0" + password:
                    with self.lock:
                        self.logins += 1
                    conn.send(b"235 ok\r\n")
                else:
                    conn.send(b"535 no\r\n")
            elif verb == b"RSET":
                mail, rcpts, chunks = None, [], []
                with self.lock:
                    self.rsets += 1
                conn.send(b"250 reset\r\n")
            elif verb == b"QUIT":
                conn.send(b"221 bye\r\n")
                return
            else:
                conn.send(b"502 unknown\r\n")

    def _end(self, conn, record, mail, rcpts, body):
        """A transaction's end: recorded, answered; False to hang up."""
        with self.lock:
            record.append((mail, list(rcpts),
                           body if self.keep_bodies else len(body)))
        conn.send(self.final)
        return self.drop_after is None or len(record) < self.drop_after
