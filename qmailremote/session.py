"""One connection attempt and one SMTP conversation, stage by stage.

Mirrors netqmail 1.06 ``timeoutconn`` and ``smtp()`` (reference sections
10-14): HELO, MAIL FROM, lock-step RCPT TO, DATA, the body through the
kernel, the final reply, then ``QUIT`` written and never awaited.  That
dialogue is :func:`classic` (the ``control/noesmtp`` profile); the ESMTP
one (``esmtp.py``) is built from the same :class:`Session` stages.
``timeoutremote`` bounds every single read and write on the socket, not a
whole reply.  Deviations 2 (a reply code that is not three digits is a
temporary failure) and 3 (a failed QUIT leaves the verdict alone) apply.
"""

import errno
import select
import time

try:
    # The C module under `socket`: the same calls without socket.py's enum
    # and selectors imports, which cost several ms of every run's start-up.
    import _socket as socket
except ImportError:  # not CPython
    import socket

from ._kernel import HUGESMTPTEXT, ReplyReader, Writer
from .errors import ConnectionDied, PartialLineError
from .report import (PERM_PARTIALLINE, TEMP_NOMEM, TEMP_OSERR, TEMP_READ,
                     Failure, Result, dropped, internal_error, recipient_report,
                     stage_report)

__all__ = ["connect", "Session", "classic"]
# How much of a reply is asked for per read (smtpfrom's buffer is 128
# bytes; replies are parsed byte-exactly whatever this is).
_REPLY_READ = 1 << 16


class _TcpSocket(socket.socket):
    """The C socket, with the weak reference slot TLS (``_ssl``) needs."""

    __slots__ = ("__weakref__",)


def _writable(sock, timeout):
    """timeoutconn's select() for writing, through poll().

    select() cannot watch a descriptor >= FD_SETSIZE (1024), which a bulk
    sender holding many files open reaches.  Any event (POLLOUT, POLLERR,
    POLLHUP) ends the wait, as select() reports each as writable.  poll()
    takes a C int of milliseconds, so a longer timeout waits in slices.
    """
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        ms = max(0, min(int(left * 1000) + (left > 0), (1 << 31) - 1))
        if poller.poll(ms):
            return True
        if time.monotonic() >= deadline:
            return False


def connect(ip, port, timeout, source=None):
    """timeoutconn(): (socket, None) on success, else (None, timed_out).

    *ip* is 4 bytes (IPv4) or 16 (IPv6): one socket of that family.
    *source* (a :class:`qmailremote.binding.Source`) is bound, port 0,
    before the connect when it is of the same family.  Raises
    Failure(TEMP_OSERR) when no socket can be made, and
    Failure(source.unbindable()) when the bind fails.
    """
    if len(ip) == 4:
        family, address = socket.AF_INET, (socket.inet_ntoa(ip), port)
    else:
        family = socket.AF_INET6
        address = (socket.inet_ntop(family, ip), port, 0, 0)
    try:
        sock = _TcpSocket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:
            # No IPv6 in this kernel: this address cannot be reached.
            return None, False
        raise Failure(TEMP_OSERR) from None
    if source is not None and len(source.ip) == len(ip):
        try:
            source.bind(sock)
        except OSError:
            sock.close()
            raise Failure(source.unbindable()) from None
    try:
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            if timeout < 0:
                err = errno.EINVAL  # select() rejects a negative timeout
            elif not _writable(sock, timeout):
                err = errno.ETIMEDOUT  # the connect attempt goes on
            else:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as exc:
        err = exc.errno or errno.EIO
    if err:
        sock.close()
        return None, err == errno.ETIMEDOUT
    # Commands go out one at a time and wait for their replies, so Nagle's
    # algorithm only delays: it held the last small body write until the
    # server's delayed ACK (~40 ms per message).  The bytes are unchanged.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return sock, None


class _Channel:
    """The socket as the kernel sees it: send and recv with timeoutremote.

    A timeout of 0 means "do not wait"; a negative one makes every
    operation fail, as netqmail's select() with a negative timeout does.
    After STARTTLS the bytes go through the TLS object (:meth:`switch`).
    With a *tap*, ``tap("C", bytes)`` sees every byte sent and
    ``tap("S", bytes)`` every byte received (inside TLS: the plaintext);
    without one nothing is wrapped.
    """

    def __init__(self, sock, timeout, tap=None):
        self._sock = sock
        self._tap = tap
        self._write, self._read = self._tapped(sock.send, sock.recv)
        self.usable = timeout >= 0
        if self.usable:
            sock.settimeout(timeout)

    def _tapped(self, write, read):
        tap = self._tap
        if tap is None:
            return write, read

        def tapped_write(data):
            sent = write(data)
            tap("C", bytes(data[:sent]))
            return sent

        def tapped_read(size):
            data = read(size)
            tap("S", data)
            return data
        return tapped_write, tapped_read

    def switch(self, transport):
        """Send and receive through *transport*'s ``write`` and ``read``."""
        self._write, self._read = self._tapped(transport.write,
                                               transport.read)

    def send(self, data):
        if not self.usable:
            raise ConnectionDied()
        sent = 0
        try:
            with memoryview(data) as view:
                while sent < len(view):
                    sent += self._write(view[sent:])
        except OSError:
            raise ConnectionDied() from None

    def failed(self):
        """Whether the connection already has an error (the peer reset)."""
        try:
            return bool(self._sock.getsockopt(socket.SOL_SOCKET,
                                              socket.SO_ERROR))
        except OSError:
            return True

    def recv(self):
        if not self.usable:
            raise ConnectionDied()
        try:
            return self._read(_REPLY_READ)
        except OSError:
            raise ConnectionDied() from None


class _Verdict(Exception):
    """A stage ended the conversation with a message report (quit())."""

    def __init__(self, report, quit=True):
        super().__init__(report)
        self.report = report
        self.quit = quit


class Session:
    """One SMTP conversation with the server at *ip_text*.

    The stages every dialogue shares live here: commands and replies, the
    verdicts of netqmail's ``quit()``, the DATA body, the critical window,
    ``QUIT``.  :meth:`run` drives a dialogue (:func:`classic`, or
    :func:`qmailremote.esmtp.dialogue`) and never raises for anything the
    peer or the message does; it returns the :class:`Result`.
    """

    def __init__(self, sock, ip_text, timeout, tap=None):
        self.sock = sock
        self.ip = ip_text
        self.tap = tap
        self.channel = channel = _Channel(sock, timeout, tap)
        self.writer = Writer(channel.send)
        self._replies = ReplyReader(channel.recv)
        self.recipients = []
        self.critical = False
        self.ended = False
        self.replies = 0        # replies read (in this transaction)

    def run(self, dialogue, *args):
        """``dialogue(self, *args)``: returns a report or raises a verdict."""
        try:
            try:
                report = dialogue(self, *args)
            except _Verdict as verdict:
                report = verdict.report
                if verdict.quit:
                    self.quit()
            except ConnectionDied:
                report = dropped(self.ip, self.critical)
            except MemoryError:
                raise Failure(TEMP_NOMEM, self.recipients) from None
            except Exception:
                # A bug must not lose the recipient reports or the warning.
                raise Failure(internal_error(self.critical),
                              self.recipients) from None
        finally:
            self.sock.close()
        return Result(self.recipients, report)

    def transact(self, step, *args):
        """``step(self, *args)`` on a connection that is kept: no QUIT, no
        close.  Returns ``(result, ended, usable)``: *ended* when the
        transaction reached its final reply (K or not: every reply has been
        read, the next MAIL may follow); *usable* when the connection is
        still fit for QUIT or RSET (a reply stage ended it, not a drop or a
        half-sent body).  The caller keeps, resets or closes it.
        """
        self.recipients = []
        self.critical = False
        self.ended = False
        self.replies = 0
        usable = False
        try:
            report = step(self, *args)
        except _Verdict as verdict:
            report = verdict.report
            usable = verdict.quit
        except ConnectionDied:
            report = dropped(self.ip, self.critical)
        except MemoryError:
            report = TEMP_NOMEM
        except Exception:
            report = internal_error(self.critical)
        return Result(self.recipients, report), self.ended, usable

    def reset(self):
        """RSET: whether the server took it (the connection is then fit
        for another transaction)."""
        try:
            code, _, digits = self.command(b"RSET\r\n")
        except ConnectionDied:
            return False
        return code == 250 and digits

    # -- commands and replies -------------------------------------------

    def write(self, *parts):
        """Buffer a command; nothing is sent until :meth:`flush`."""
        for part in parts:
            self.writer.write(part)

    def flush(self):
        self.writer.flush()

    def read(self, limit=HUGESMTPTEXT):
        """The next reply: ``(code, text, digits)``, text cut at *limit*."""
        reply = self._replies.read(limit)
        self.replies += 1
        return reply

    def command(self, *parts):
        self.write(*parts)
        self.flush()
        return self.read()

    def switch(self, transport):
        """STARTTLS: every later byte goes through *transport*.

        Replies the server sent before it (in plaintext, after the reply
        that started TLS) are dropped unread: they could be an attacker's.
        """
        self.channel.switch(transport)
        self._replies = ReplyReader(self.channel.recv)
        if self.tap is not None:
            cipher = transport.cipher()
            self.tap("tls", ("%s %s" % (transport.version(),
                                        cipher[0] if cipher else "")
                             ).encode("ascii", "replace"))

    # -- verdicts ---------------------------------------------------------

    def stop(self, report):
        """End the dialogue with *report*: ``QUIT`` is written, not read."""
        raise _Verdict(report)

    def abort(self, report):
        """End the dialogue with *report*, the connection unusable: no QUIT."""
        raise _Verdict(report, quit=False)

    def verdict(self, reply, prepend, append):
        """MAIL, DATA and final replies: D at 5xx, Z at 4xx (and non-digit)."""
        code, text, digits = reply
        if not digits or 400 <= code < 500:
            self.stop(stage_report("Z", prepend, self.ip, append, text))
        if code >= 500:
            self.stop(stage_report("D", prepend, self.ip, append, text))

    def greeting(self, prepend=b"Connected to "):
        code, text, digits = self.read()
        if code != 220 or not digits:
            self.stop(stage_report("Z", prepend, self.ip,
                                   b" but greeting failed", text))

    def helo(self, helohost):
        code, text, digits = self.command(b"HELO ", helohost, b"\r\n")
        if code != 250 or not digits:
            self.stop(stage_report("Z", b"Connected to ", self.ip,
                                   b" but my name was rejected", text))

    def mail_reply(self, reply):
        self.verdict(reply, b"Connected to ", b" but sender was rejected")

    def rcpt_reply(self, reply):
        code, text, digits = reply
        self.recipients.append(recipient_report(code, digits, self.ip, text))

    @property
    def accepted_any(self):
        """Whether some recipient was accepted (an ``r`` report)."""
        return any(r.letter == "r" for r in self.recipients)

    def give_up(self):
        # The recipient reports already said what the server said.
        self.stop(stage_report("D", b"Giving up on ", self.ip, b"", b""))

    def data_reply(self, reply):
        self.verdict(reply, b"", b" failed on DATA command")

    def final_reply(self, reply):
        """The reply to the end of the message: the critical window closes."""
        self.critical = False
        self.ended = True
        self.verdict(reply, b"", b" failed after I sent the message")
        self.stop(stage_report("K", b"", self.ip, b" accepted message",
                               reply[1]))

    # -- the body ---------------------------------------------------------

    def data_body(self, message):
        """blast(): the message through the kernel, then ``.\\r\\n``.

        Returns a report when the body cannot be sent (no QUIT follows).
        """
        writer = self.writer
        writer.begin_body()
        sent_last = False
        try:
            for chunk in message.chunks():
                before = writer.sent
                writer.body(chunk)
                # netqmail writes each 1024-byte block as soon as it is
                # full, before it reads on, so those bytes go out now: only
                # the tail and ".\r\n" are sent inside the critical window.
                writer.flush_committed()
                sent_last = writer.sent > before
        except OSError:  # the message, not the socket: that is ConnectionDied
            return TEMP_READ
        # netqmail would still be writing those last blocks, 1024 bytes a
        # call, when a reset sent in answer to them arrives, and one of its
        # writes would fail outside the window.  One large send here can
        # succeed just before the reset lands, so look before opening it.
        if sent_last and self.channel.failed():
            raise ConnectionDied()
        try:
            writer.end_body()
        except PartialLineError:
            return PERM_PARTIALLINE
        self.critical = True
        writer.flush()
        return None

    def body_and_final(self, message):
        """The DATA body, then the final reply (a verdict is raised).

        Returns a report when the body cannot be sent (no QUIT follows).
        """
        report = self.data_body(message)
        if report is not None:
            return report
        self.final_reply(self.read())

    def quit(self):
        """Write QUIT, never read its reply; a failure changes nothing."""
        try:
            self.writer.write(b"QUIT\r\n")
            self.writer.flush()
        except ConnectionDied:
            pass


def classic(session, helohost, sender, recipients, message):
    """netqmail 1.06's ``smtp()``: HELO and lock-step commands."""
    session.greeting()
    session.helo(helohost)
    session.mail_reply(session.command(b"MAIL FROM:<", sender, b">\r\n"))
    for recipient in recipients:
        session.rcpt_reply(session.command(b"RCPT TO:<", recipient,
                                           b">\r\n"))
    if not session.accepted_any:
        session.give_up()
    session.data_reply(session.command(b"DATA\r\n"))
    return session.body_and_final(message)
