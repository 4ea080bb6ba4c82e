"""``qmailremote probe``: what qmail-remote would do for a destination.

Step by step, without sending mail: the profile and the helohost, the
route (``control/authsenders`` by ``--sender``, then
``control/smtproutes``), the DNS lookups and the MX set, the addresses in
the order qmail-remote would try them with the decision for each (the
"listed as MX" rule with ipme, tcpto skips, read only), then, for the first
address that connects, the SMTP dialogue up to where ``MAIL`` would go:
greeting, EHLO and its capabilities, STARTTLS as the TLS policy files say
(the certificate chain as the server sent it, and whether it verifies),
the EHLO after TLS; then ``QUIT``.  ``MAIL``, ``RCPT``, ``DATA`` and
``AUTH`` are never sent, and tcpto is only read (nothing of the qmail
home is written).

The decisions are made by the product's own modules (control, routes, mx,
addresses, tcpto, tls, capabilities, report and the reply parser of the
kernel); this module only drives them and shows what they decided.  When
qmail-remote would fail, the report it would print is shown.

Tests hand the probe a :class:`qmailremote.mx.Resolver` through
:func:`probe` (or by setting :data:`RESOLVER`); there is no option for it.
"""

import errno
import os
import select
import socket
import time

# A qmailremote.mx.Resolver to use instead of /etc/resolv.conf's servers
# (tests set it; None: the system's, read when the first query is made).
RESOLVER = None

# The probe gives up on a reply longer than this (qmail-remote would keep
# reading as long as the server sends).
_MAX_REPLY_BYTES = 1 << 20
# Transcript lines shown from the server, at most (the rest is counted).
_MAX_SAID_LINES = 400
_MAX_LINE_SHOWN = 1000
_QTYPES = {1: "A", 5: "CNAME", 15: "MX", 28: "AAAA"}
_SUBJECT_KEYS = {"commonName": "CN", "organizationName": "O",
                 "organizationalUnitName": "OU", "countryName": "C",
                 "localityName": "L", "stateOrProvinceName": "ST",
                 "emailAddress": "emailAddress", "domainComponent": "DC"}
_PREFERENCE_TEXT = {
    b"ipv4": "each preference's IPv4 addresses before its IPv6 ones",
    b"ipv6": "each preference's IPv6 addresses before its IPv4 ones",
    b"any": "each preference's addresses alternating, IPv6 first",
}
_HARD_TEXT = "hard failure (no such name, or no record of that type)"
_SOFT_TEXT = ("soft failure (no answer, SERVFAIL, REFUSED or a malformed "
              "answer)")


def _port(text):
    import argparse
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def _seconds(text):
    import argparse
    import math
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def add_arguments(parser):
    parser.add_argument("destination", metavar="DOMAIN|HOST",
                        help="the host argument qmail-remote would get: a "
                             "mail domain, a host name or an IP literal")
    parser.add_argument("--port", type=_port, metavar="N",
                        help="connect to this port instead of the one "
                             "qmail-remote would use (25, or the route's)")
    parser.add_argument("--sender", metavar="ADDR",
                        help="the envelope sender (control/authsenders and "
                             "control/domainbindings route by it; default "
                             "the null sender <>)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document instead of text")
    parser.add_argument("--timeout", type=_seconds, metavar="S",
                        help="seconds for the connection and for each read "
                             "(default: control/timeoutconnect and "
                             "control/timeoutremote, as qmail-remote)")


def run(args, out):
    return probe(args.destination, out, home=args.home, port=args.port,
                 sender=args.sender, timeout=args.timeout, resolver=RESOLVER)


def probe(destination, out, *, home=None, port=None, sender=None,
          timeout=None, resolver=None):
    """Probe *destination* (str or bytes), writing to *out* (an Output).

    *resolver* is a :class:`qmailremote.mx.Resolver` (default: the name
    servers of ``/etc/resolv.conf``).  Returns the exit status: 0 when a
    server accepted EHLO or HELO, 1 when qmail-remote would fail.
    """
    return _Probe(out, destination, home, port, sender, timeout,
                  resolver).run()


# -- text helpers ---------------------------------------------------------

def _show(data):
    """Bytes as text: printable ASCII kept, every other byte as ``\\xNN``;
    a str keeps its printable characters, the others escaped."""
    if data is None:
        return None
    if isinstance(data, str):
        return "".join(ch if ch.isprintable()
                       else ch.encode("unicode_escape",
                                      "backslashreplace").decode("ascii")
                       for ch in data)
    return "".join(chr(b) if 32 <= b < 127 else "\\x%02x" % b
                   for b in bytes(data))


def _bytes(text):
    if isinstance(text, bytes):
        return text
    return os.fsencode(text)


def _report_doc(report):
    text = _show(report.text.rstrip(b"\n")).replace("\\x0a", "\n")
    return {"letter": report.letter, "text": text}


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- internal control flow ------------------------------------------------

class _Stop(Exception):
    """qmail-remote would end the delivery here with *report*.

    *quit*: QUIT is written first (netqmail's quit()), else the connection
    is dropped as it is.  *fetch_chain*: the probe connects once more to
    show the certificate chain the failed handshake did not leave.
    """

    def __init__(self, report, quit=False, fetch_chain=False, what=None):
        super().__init__(report)
        self.report = report
        self.quit = quit
        self.fetch_chain = fetch_chain
        if what is None:
            what = "TLS could not be had as the policy requires" if \
                report.text.startswith((b"TLS ", b"No TLS", b"STARTTLS")) \
                else "see the report"
        self.what = what


class _Fallback(Exception):
    """The opportunistic handshake failed: qmail-remote connects again and
    goes on in plaintext."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class _Recheck(Exception):
    """The probe's own check against the system CA store failed the
    handshake: connect again and do what qmail-remote does (no check)."""


class _TooMuch(Exception):
    """The server sent more than the probe reads for one reply."""


class _Recorder:
    """The resolver the lookups see: every query and its outcome, logged."""

    def __init__(self, resolver):
        self._resolver = resolver
        self.log = []

    def query(self, qname, qtype):
        if self._resolver is None:
            from ..mx import Resolver
            self._resolver = Resolver.from_system()
        result = self._resolver.query(qname, qtype)
        self.log.append((qname, qtype, result))
        return result


def _answer_count(wire):
    return int.from_bytes(wire[6:8], "big") if len(wire) >= 8 else 0


def _mx_records(wire):
    """[(preference, name)] of an MX answer, for display; None if broken.

    The lookup itself (mx.lookup_mx) decides; this only shows the set.
    """
    from ..mx import name_from_wire
    try:
        qdcount = int.from_bytes(wire[4:6], "big")
        ancount = int.from_bytes(wire[6:8], "big")
        pos = 12
        for _ in range(qdcount):
            pos += name_from_wire(wire, pos)[1] + 4
        found = []
        for _ in range(ancount):
            pos += name_from_wire(wire, pos)[1]
            if pos + 10 > len(wire):
                return None
            rrtype = int.from_bytes(wire[pos:pos + 2], "big")
            rdlength = int.from_bytes(wire[pos + 8:pos + 10], "big")
            pos += 10
            if rrtype == 15:
                if rdlength < 3 or pos + 2 > len(wire):
                    return None
                found.append((int.from_bytes(wire[pos:pos + 2], "big"),
                              name_from_wire(wire, pos + 2)[0]))
            pos += rdlength
        return found
    except (ValueError, IndexError):
        return None


def _route_key(table, text, separators):
    """The key a route lookup matches (the whole text, then each suffix
    starting at one of *separators*, then the empty key), or None."""
    for i in range(len(text) + 1):
        if i == 0 or i == len(text) or text[i] in separators:
            key = text[i:].lower()
            if key in table:
                return key
    return None


def _sni(name):
    """The SNI qmail-remote sends for *name* (tls._sni's rule)."""
    from .. import tls
    rule = getattr(tls, "_sni", None)
    if rule is not None:
        return rule(name)
    try:
        return name.decode("ascii") if name else None
    except UnicodeDecodeError:
        return None


# -- certificates ---------------------------------------------------------

def _cert_time(text):
    import ssl
    try:
        return ssl.cert_time_to_seconds(text)
    except (ValueError, TypeError, OverflowError):
        return None


def _iso(seconds):
    if seconds is None:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (ValueError, OverflowError, OSError):
        return None


def _name_text(rdns):
    parts = []
    for rdn in rdns or ():
        for key, value in rdn:
            parts.append(f"{_SUBJECT_KEYS.get(key, key)}={_show(value)}")
    return ", ".join(parts)


def _cert_doc(info, now):
    """A certificate's names and dates from getpeercert()-style *info*."""
    cns = [_show(value) for rdn in info.get("subject", ())
           for key, value in rdn if key == "commonName"]
    sans = info.get("subjectAltName", ())
    not_before = _cert_time(info.get("notBefore"))
    not_after = _cert_time(info.get("notAfter"))
    return {
        "subject": _name_text(info.get("subject")),
        "issuer": _name_text(info.get("issuer")),
        "cn": cns,
        "dns": [_show(value) for kind, value in sans if kind == "DNS"],
        "ip": [_show(value) for kind, value in sans if kind == "IP Address"],
        "not_before": _iso(not_before),
        "not_after": _iso(not_after),
        "expired": not_after is not None and not_after < now,
        "not_yet_valid": not_before is not None and not_before > now,
        "days_left": None if not_after is None
        else int((not_after - now) // 86400),
    }


def _decode_der(der):
    """getpeercert()-style info of one DER certificate, or None.

    ``ssl._ssl._test_decode_cert`` reads a PEM file, so one is written
    to a private temporary file and removed at once.
    """
    import ssl
    import tempfile
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(ssl.DER_cert_to_PEM_cert(der))
        return decode(path)
    except (OSError, ValueError):
        return None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _chain(tls):
    """(the chain as the server sent it, as docs, or None; why not).

    Python 3.10+ has ``_SSLSocket.get_unverified_chain()`` (private); on
    others the leaf alone is decoded, or nothing.
    """
    now = time.time()
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is not None:
        try:
            certs = getter()
        except (ValueError, OSError):
            certs = None
        if certs:
            docs = []
            for cert in certs:
                info = None
                if hasattr(cert, "get_info"):
                    try:
                        info = cert.get_info()
                    except (ValueError, OSError):
                        info = None
                if info is None:
                    try:
                        info = _decode_der(cert.public_bytes(2))  # DER
                    except (ValueError, OSError, TypeError):
                        info = None
                docs.append(_cert_doc(info or {}, now))
            return docs, None
    try:
        der = tls.getpeercert(True)
    except (ValueError, OSError):
        der = None
    if not der:
        return None, "the server sent no certificate"
    info = _decode_der(der)
    if info is None:
        return None, "chain not available in this Python"
    return [_cert_doc(info, now)], ("chain not available in this Python: "
                                    "the server's certificate alone")


def _error_reason(exc):
    from ..tls import error_reason
    try:
        return error_reason(exc)
    except Exception:  # noqa: BLE001 - a reason is only for display
        return _show(str(exc) or exc.__class__.__name__).encode()


# -- one connection -------------------------------------------------------

def _connect(ip, port, timeout, source):
    """timeoutconn: (socket, None, False), or (None, why, timed_out).

    Raises _Stop when the source address cannot be bound (qmail-remote
    ends the delivery there).
    """
    family = socket.AF_INET if len(ip) == 4 else socket.AF_INET6
    address = socket.inet_ntop(family, ip)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:
            return None, "no IPv6 in this kernel", False
        from ..report import TEMP_OSERR
        raise _Stop(TEMP_OSERR) from None
    if source is not None and len(source.ip) == len(ip):
        try:
            source.bind(sock)
        except OSError:
            sock.close()
            raise _Stop(source.unbindable()) from None
    try:
        sock.setblocking(False)
        err = sock.connect_ex((address, port))
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            if timeout < 0:
                err = errno.EINVAL
            else:
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                deadline = time.monotonic() + timeout
                while True:
                    left = deadline - time.monotonic()
                    ms = max(0, min(int(left * 1000) + (left > 0),
                                    (1 << 31) - 1))
                    if poller.poll(ms):
                        err = sock.getsockopt(socket.SOL_SOCKET,
                                              socket.SO_ERROR)
                        break
                    if time.monotonic() >= deadline:
                        err = errno.ETIMEDOUT
                        break
    except OSError as exc:
        err = exc.errno or errno.EIO
    if err:
        sock.close()
        if err == errno.ETIMEDOUT:
            return None, f"timed out after {timeout:g} s", True
        return None, os.strerror(err).lower(), False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return sock, None, False


class _Conversation:
    """One SMTP connection: commands out, replies in, both logged.

    Replies are parsed by the product's kernel (``ReplyReader``: netqmail
    ``smtpcode()``), so codes and texts are those qmail-remote sees.  Every
    byte the server sends is shown, line by line, as it arrives.
    """

    def __init__(self, probe, sock, ip_text, timeout):
        from .._kernel import ReplyReader
        self.probe = probe
        self.sock = sock
        self.ip = ip_text
        self.usable = timeout >= 0
        if self.usable:
            sock.settimeout(timeout)
        self._read = sock.recv
        self._write = sock.send
        self._reader_class = ReplyReader
        self.reader = ReplyReader(self._recv)
        self._partial = bytearray()
        self._cut = False           # the line being read is too long
        self._since_reply = 0
        self.tls = None
        self.error = None       # why the connection died, for the report

    def _recv(self):
        if not self.usable:
            self.error = b"timed out"
            return b""
        try:
            data = self._read(65536)
        except (OSError, ValueError) as exc:
            self.error = _error_reason(exc)
            self.flush_partial()
            self.probe.event(f"connection failed: {_show(self.error)}")
            from ..errors import ConnectionDied
            raise ConnectionDied() from exc
        if not data:
            self.flush_partial()
            self.probe.event("the server closed the connection")
            return data
        self._since_reply += len(data)
        self._log_in(data)
        if self._since_reply > _MAX_REPLY_BYTES:
            self.flush_partial()
            raise _TooMuch()
        return data

    def _log_in(self, data):
        """Show the server's bytes line by line; a line is shown up to
        _MAX_LINE_SHOWN bytes, the rest of it is dropped."""
        start = 0
        while start < len(data):
            lf = data.find(b"\n", start)
            end = len(data) if lf < 0 else lf
            room = _MAX_LINE_SHOWN + 1 - len(self._partial)
            if room > 0:
                self._partial += data[start:min(end, start + room)]
            if len(self._partial) > _MAX_LINE_SHOWN:
                del self._partial[_MAX_LINE_SHOWN:]
                self._cut = True
            if lf < 0:
                break
            line = bytes(self._partial)
            if line.endswith(b"\r") and not self._cut:
                line = line[:-1]
            self.probe.said(line, cut=self._cut)
            self._partial.clear()
            self._cut = False
            start = lf + 1

    def flush_partial(self):
        """A line the server has not ended (yet): shown as it is."""
        if self._partial or self._cut:
            self.probe.said(bytes(self._partial), cut=self._cut,
                            partial=True)
            self._partial.clear()
            self._cut = False

    def read(self, limit=None):
        """The next reply: (code, text, digits), as qmail-remote reads it."""
        from .._kernel import HUGESMTPTEXT
        self._since_reply = 0
        reply = self.reader.read(HUGESMTPTEXT if limit is None else limit)
        return reply

    def send(self, line):
        """Write one command line (CRLF included) and log it."""
        from ..errors import ConnectionDied
        self.flush_partial()
        self.probe.sent(line.rstrip(b"\r\n"))
        if not self.usable:
            self.error = b"timed out"
            raise ConnectionDied()
        try:
            view = memoryview(line)
            while view:
                view = view[self._write(view):]
        except (OSError, ValueError) as exc:
            self.error = _error_reason(exc)
            self.probe.event(f"write failed: {_show(self.error)}")
            raise ConnectionDied() from exc

    def command(self, line, limit=None):
        self.send(line)
        return self.read(limit)

    def switch(self, tls):
        """After the handshake: bytes through *tls*; the replies the server
        sent in plaintext before it are dropped unread, as qmail-remote
        drops them."""
        self.tls = tls
        self._read = tls.read
        self._write = tls.write
        self._partial.clear()
        self.reader = self._reader_class(self._recv)

    def quit(self):
        """QUIT, written and not waited for (as qmail-remote)."""
        from ..errors import ConnectionDied
        try:
            self.send(b"QUIT\r\n")
        except ConnectionDied:
            pass

    def close(self):
        self.flush_partial()
        try:
            self.sock.close()
        except OSError:
            pass


# -- the probe --------------------------------------------------------------

class _Probe:

    def __init__(self, out, destination, home, port, sender, timeout,
                 resolver):
        self.out = out
        self.host = _bytes(destination)
        self.home = home
        self.port_option = port
        self.sender_given = sender is not None
        self.sender = _bytes(sender) if sender is not None else b""
        self.timeout_option = timeout
        self.resolver = _Recorder(resolver)
        self.home_fd = None
        self.connection_no = 0
        self.said_lines = 0
        self.said_hidden = 0
        self.verify_may = True      # the probe's own check, first try
        self.tls_doc = None
        self.doc = {
            "destination": _show(self.host),
            "home": None,
            "profile": None,
            "helohost": None,
            "sender": _show(self.sender),
            "source": None,
            "route": None,
            "port": None,
            "timeouts": None,
            "recipient_domain": None,
            "mx": None,
            "addresses": [],
            "connection": None,
            "transcript": [],
            "capabilities": None,
            "capabilities_before_tls": None,
            "tls": None,
            "auth": None,
            "verdict": None,
        }

    # -- output ---------------------------------------------------------

    def heading(self, text):
        self.out.line()
        self.out.heading(text)

    def item(self, label, value):
        self.out.item(label, value)

    def mark(self, kind, word, text):
        style = {"try": "ok", "ok": "ok", "skip": "warn", "warn": "warn",
                 "bad": "bad", "drop": "dim"}[kind]
        self.out.line(f"  {self.out.paint(style, f'{word:8}')} {text}")

    def _transcript(self, direction, text):
        self.doc["transcript"].append({"connection": self.connection_no,
                                       "dir": direction, "text": text})

    def said(self, line, cut=False, partial=False):
        text = _show(line)
        if cut:
            text += " [... cut]"
        if partial:
            text += " [no line end]"
        if self.said_lines >= _MAX_SAID_LINES:
            if not self.said_hidden:
                self.event(f"over {_MAX_SAID_LINES} lines from the server: "
                           f"the rest is not shown")
            self.said_hidden += 1
            return
        self.said_lines += 1
        self._transcript("S", text)
        self.out.line("  " + self.out.paint("said", "S: " + text))

    def sent(self, line):
        text = _show(line)
        self._transcript("C", text)
        self.out.line("  " + self.out.paint("sent", "C: " + text))

    def event(self, text):
        self._transcript("info", text)
        self.out.line("  " + self.out.paint("dim", "-- " + text))

    def verdict(self, status, summary, report=None):
        self.doc["verdict"] = {
            "status": status,
            "delivery_could_start": status == 0,
            "summary": summary,
            "report": _report_doc(report) if report is not None else None,
        }
        self.heading("Verdict")
        self.out.status("ok" if status == 0 else "bad",
                        "a delivery could start" if status == 0
                        else "qmail-remote would fail", summary)
        if report is not None:
            meaning = {"Z": "temporary: the mail stays queued and is retried",
                       "D": "permanent: the mail bounces",
                       "K": "accepted"}.get(report.letter, "")
            lines = _report_doc(report)["text"].split("\n")
            self.out.line(f"  qmail-remote would report ({report.letter}, "
                          f"{meaning}):")
            for line in lines:
                self.out.line("    " + line)

    # -- the steps --------------------------------------------------------

    def run(self):
        from ..report import TEMP_NOMEM, Failure
        status = 1
        try:
            status = self._run()
        except _Stop as stop:
            self.verdict(1, stop.what, stop.report)
        except Failure as failure:
            self.verdict(1, "see the report", failure.report)
        except MemoryError:
            self.verdict(1, "out of memory", TEMP_NOMEM)
        except (KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as exc:  # noqa: BLE001 - never a traceback
            self.verdict(1, "the probe itself failed: %s: %s" % (
                exc.__class__.__name__, _show(str(exc))))
        finally:
            if self.home_fd is not None:
                os.close(self.home_fd)
            if self.said_hidden:
                self.doc["transcript"].append({
                    "connection": self.connection_no, "dir": "info",
                    "text": f"{self.said_hidden} more lines from the server "
                            f"not shown"})
            for key, value in self.doc.items():
                self.out.record(key, value)
        return status

    def _run(self):
        from ..control import DEFAULT_HOME, open_home, read_controls
        from ..delivery import mangle
        from ..report import PERM_CRLF

        home = self.home
        if home is None:
            home = os.environ.get("QMAILHOME") or DEFAULT_HOME
        self.doc["home"] = _show(os.fsencode(home))
        self.out.heading(f"qmailremote probe {_show(self.host)}")
        self.item("qmail home", _show(os.fsencode(home)))
        self.home_fd = open_home(home)
        controls = read_controls(self.home_fd)
        self.controls = controls
        esmtp = controls.esmtp
        self.doc["profile"] = "esmtp" if esmtp else "noesmtp"
        self.item("profile", "ESMTP (the default; no control/noesmtp)"
                  if esmtp else "netqmail 1.06 (control/noesmtp exists): "
                  "HELO, no extension, no TLS, no AUTH, IPv4 only")
        source = None
        if esmtp:
            from ..binding import select_source
            source = select_source(self.home_fd, self.sender)
            if source is not None and source.helohost is not None:
                controls.helohost = source.helohost
        self.source = source
        self.doc["helohost"] = _show(controls.helohost)
        helo_from = "control/helohostbyip" if source is not None and \
            source.helohost is not None else "control/helohost or control/me"
        self.item("helohost", f"{_show(controls.helohost)} ({helo_from})")
        if source is not None:
            self.doc["source"] = {"ip": _show(source.text),
                                  "file": _show(source.file)}
            self.item("source address", f"{_show(source.text)} "
                      f"({_show(source.file)}; IPv4 connections)")
        connect_timeout = self.timeout_option \
            if self.timeout_option is not None else controls.timeoutconnect
        read_timeout = self.timeout_option \
            if self.timeout_option is not None else controls.timeoutremote
        self.connect_timeout, self.read_timeout = connect_timeout, \
            read_timeout
        self.doc["timeouts"] = {"connect": connect_timeout,
                                "read": read_timeout}
        why = " (--timeout)" if self.timeout_option is not None else \
            " (control/timeoutconnect, control/timeoutremote)"
        self.item("timeouts", f"connect {connect_timeout:g} s, each read "
                  f"{read_timeout:g} s{why}")
        if b"\r" in self.sender or b"\n" in self.sender:
            raise _Stop(PERM_CRLF)
        self.mangled_sender = mangle(self.sender)
        if self.sender_given:
            self.item("sender", f"<{_show(self.mangled_sender)}>")

        route = self._route(controls)
        preference = None
        if esmtp:
            from ..addresses import read_preference
            preference = read_preference(self.home_fd)
        from ..mx import ipme
        try:
            me = ipme(esmtp)
        except OSError:
            from ..report import TEMP_OSERR
            raise _Stop(TEMP_OSERR) from None

        self.heading("DNS")
        all_aliases = False
        if route is None:
            all_aliases = self._canonical()
        self._queries_before = len(self.resolver.log)
        addresses = self._lookup(route, esmtp)
        if preference is not None:
            from ..addresses import order
            addresses = order(addresses, preference)
        return self._connect_loop(route, addresses, me, all_aliases,
                                  preference)

    def _route(self, controls):
        from ..routes import (SMTP_PORT, build_table, find_route,
                              find_sender_route)
        self.heading("Route")
        route = None
        doc = None
        if controls.authsenders:
            table = build_table(controls.authsenders)
            key = _route_key(table, self.mangled_sender, (46, 64))
            route = find_sender_route(table, self.mangled_sender,
                                      brackets=True)
            who = f"<{_show(self.mangled_sender)}>" + (
                "" if self.sender_given else " (give --sender ADDR for "
                "another sender)")
            if route is not None:
                doc = {"file": "control/authsenders", "key": _show(key)}
                self.item("control/authsenders", f"sender {who} matches "
                          f"key \"{_show(key)}\"")
            elif key is not None:
                self.item("control/authsenders", f"sender {who} matches "
                          f"key \"{_show(key)}\" with an empty value: "
                          f"control/smtproutes next")
            else:
                self.item("control/authsenders", f"no key matches sender "
                          f"{who}")
        elif not controls.esmtp:
            self.item("control/authsenders", "not read (noesmtp)")
        if route is None:
            table = build_table(controls.routes)
            key = _route_key(table, self.host, (46,))
            route = find_route(table, self.host, brackets=controls.esmtp)
            if route is not None:
                doc = {"file": "control/smtproutes", "key": _show(key)}
                self.item("control/smtproutes", f"key \"{_show(key)}\" "
                          f"matches")
            elif key is not None:
                self.item("control/smtproutes", f"key \"{_show(key)}\" "
                          f"matches with an empty relay: delivery by MX")
            else:
                self.item("control/smtproutes", "no key matches: delivery "
                          "by MX")
        port = route.port if route is not None else SMTP_PORT
        if route is not None:
            doc.update({"relay": _show(route.relay), "port": route.port,
                        "credentials": route.has_credentials,
                        "user": _show(route.user)})
            self.item("relay", f"{_show(route.relay)}, port {route.port}")
            if route.has_credentials:
                if controls.esmtp:
                    self.item("credentials", f"user \"{_show(route.user)}\" "
                              f"(password not shown): qmail-remote would "
                              f"AUTH after EHLO; the probe never does")
                else:
                    self.item("credentials", f"user \"{_show(route.user)}\""
                              f": ignored under noesmtp")
        self.doc["route"] = doc
        self.port = self.port_option if self.port_option is not None \
            else port
        self.doc["port"] = self.port
        if self.port_option is not None and self.port_option != port:
            self.item("port", f"{self.port} (--port; qmail-remote would use "
                      f"{port})")
        elif route is None:
            self.item("port", str(self.port))
        self.route = route
        return route

    def _canonical(self):
        """CNAME canonicalisation of a recipient at the destination."""
        from ..mx import SOFT, canonicalise
        from ..report import TEMP_DNSCANON
        result = canonicalise(self.resolver, self.host)
        self._show_queries()
        if result == SOFT:
            self.doc["recipient_domain"] = {"canonical": None,
                                            "alias": None, "soft": True}
            raise _Stop(TEMP_DNSCANON, what="the DNS lookup failed")
        domain, rounds = result
        alias = rounds != 0
        self.doc["recipient_domain"] = {"canonical": _show(domain),
                                        "alias": alias, "soft": False}
        if alias:
            self.item("recipients", f"@{_show(self.host)} is an alias of "
                      f"{_show(domain)}: recipients there are rewritten, "
                      f"and every MX address may be tried (the \"listed as "
                      f"MX\" rule does not drop any)" if rounds is not None
                      else f"@{_show(self.host)}: CNAME chain too long "
                      f"(10 rounds), ends at {_show(domain)}")
        else:
            self.item("recipients", f"@{_show(self.host)} is not an alias "
                      f"(recipients are assumed to be at the destination)")
        return alias

    def _show_queries(self):
        log = self.resolver.log
        shown = getattr(self, "_queries_shown", 0)
        from ..mx import HARD, SOFT
        for name, qtype, result in log[shown:]:
            if result == HARD:
                text = _HARD_TEXT
            elif result == SOFT:
                text = _SOFT_TEXT
            else:
                text = "answer, " + _plural(_answer_count(result), "record")
            self.item(f"{_QTYPES.get(qtype, qtype)} {_show(name)}", text)
        self._queries_shown = len(log)

    def _queries_doc(self):
        from ..mx import HARD, SOFT
        docs = []
        for name, qtype, result in self.resolver.log:
            docs.append({"name": _show(name),
                         "type": _QTYPES.get(qtype, str(qtype)),
                         "result": "hard" if result == HARD else
                         "soft" if result == SOFT else "answer",
                         "answers": _answer_count(result)
                         if isinstance(result, bytes) else 0})
        return docs

    def _lookup(self, route, esmtp):
        """delivery.py's address lookup, shown: [(ip, pref, name)]."""
        from ..mx import HARD, NULLMX, SOFT, lookup_ip, lookup_mx
        from ..report import PERM_NOMX, TEMP_DNS, perm_dns, perm_nullmx
        mx = {"lookup": "relay" if route is not None else "mx",
              "records": None, "null_mx": False, "equal_preferences": False,
              "hosts": [], "queries": []}
        self.doc["mx"] = mx
        soft = False
        try:
            if route is not None:
                found = lookup_ip(self.resolver, route.relay, esmtp)
            else:
                found = lookup_mx(self.resolver, self.host, esmtp, esmtp)
            self._show_queries()
            if found == NULLMX:
                mx["null_mx"] = True
                mx["records"] = [{"preference": 0, "host": "."}]
                self.item("null MX", f"{_show(self.host)} publishes "
                          f"\"0 .\" (RFC 7505): it accepts no mail")
                raise _Stop(perm_nullmx(self.host), what="null MX")
            if found not in (HARD, SOFT) and route is None:
                found, soft = found
            if found not in (HARD, SOFT) and found and found[0][2] is None \
                    and not self.resolver.log[self._queries_before:]:
                mx["lookup"] = "literal"
                what = route.relay if route is not None else self.host
                self.item("IP literal", f"{_show(what)}: no DNS")
            else:
                self._show_hosts(route, found, mx)
            if found == SOFT:
                raise _Stop(TEMP_DNS, what="the DNS lookup failed")
            if found == HARD:
                raise _Stop(perm_dns(route.relay if route is not None
                                     else self.host),
                            what="the DNS lookup failed")
            if not found:
                raise _Stop(TEMP_DNS if soft else PERM_NOMX,
                            what="no address found")
            return found
        finally:
            mx["queries"] = self._queries_doc()

    def _show_hosts(self, route, found, mx):
        """The MX set (or the relay, or the host) and each name's addresses.
        """
        from ..mx import HARD, SOFT, ip_text
        log = self.resolver.log[self._queries_before:]
        records = None
        if route is None:
            for name, qtype, result in log:
                if qtype == 15 and name == self.host and \
                        isinstance(result, bytes):
                    records = _mx_records(result)
            if records:
                mx["records"] = [{"preference": p, "host": _show(n)}
                                 for p, n in records]
                prefs = [p for p, _ in records]
                mx["equal_preferences"] = len(set(prefs)) < len(prefs)
                self.item("MX records", ", ".join(
                    f"{p} {_show(n)}" for p, n in sorted(records)))
                if mx["equal_preferences"]:
                    self.item("order", "MX hosts of equal preference are "
                              "tried in a random order drawn afresh by "
                              "every run; below is this run's draw")
            elif found not in (HARD, SOFT) or \
                    any(q == 15 and r == HARD for _, q, r in log):
                self.item("MX records", f"none: the addresses of "
                          f"{_show(self.host)} itself are used")
        if found in (HARD, SOFT):
            found = []
        # Each name once, in the order lookup_mx asked for them (for equal
        # preferences, this run's draw), then by preference.
        prefs = {}
        for p, n in records or ():
            prefs.setdefault(n, p)
        names = []
        for name, qtype, _ in log:
            if qtype in (1, 28) and name not in names and \
                    (not records or name in prefs):
                names.append(name)
        for _, _, name in found:
            if name not in names:
                names.append(name)
        for name in prefs:
            if name not in names:
                names.append(name)
        names.sort(key=lambda n: prefs.get(n, 0))
        by_name = {}
        for ip, _, name in found:
            by_name.setdefault(name, []).append(ip)
        for name in names:
            ips = by_name.get(name, [])
            results = [r for n, t, r in log if n == name and t in (1, 28)]
            host = {"host": _show(name), "preference": prefs.get(name, 0),
                    "addresses": [_show(ip_text(ip)) for ip in ips],
                    "failure": None}
            if not ips:
                if SOFT in results:
                    host["failure"] = "soft"
                elif results and all(r == HARD for r in results):
                    host["failure"] = "hard"
                else:
                    host["failure"] = "no usable address"
            mx["hosts"].append(host)
            label = "IP literal" if name is None else _show(name)
            if name in prefs:
                label += f" (preference {prefs[name]})"
            if ips:
                value = ", ".join(host["addresses"])
                if SOFT in results:
                    value += " (one lookup failed softly)"
            elif host["failure"] == "soft":
                value = "no address: " + _SOFT_TEXT + (
                    "; passed over while other MX hosts have addresses"
                    if records else "")
            elif host["failure"] == "hard":
                value = "no address: " + _HARD_TEXT
            else:
                value = "no usable address in the answer"
            self.item(label, value)

    def _connect_loop(self, route, addresses, me, all_aliases, preference):
        from ..mx import ip_text
        from ..report import PERM_AMBIGMX, TEMP_NOCONN
        from ..tcpto import TcpTo

        self.heading("Addresses, in the order qmail-remote would try them")
        if preference is not None:
            self.item("control/addresspreference",
                      f"{_show(preference)}: {_PREFERENCE_TEXT[preference]}")
        from ..delivery import listed_as_mx
        prefme, listed = listed_as_mx(addresses, me, route, all_aliases)
        rule = None
        if route is not None:
            rule = "a route: the \"listed as MX\" rule does not apply"
        if all_aliases:
            rule = "the recipient domain is an alias: the \"listed as MX\" " \
                "rule does not apply"
        if rule is not None:
            self.item("listed as MX", rule)
        elif listed is not None:
            self.item("listed as MX", f"{_show(ip_text(listed))}, an address "
                      f"of this host, is listed at preference {prefme}: only "
                      f"addresses of a better (lower) preference are tried")
        entries = []
        for ip, pref, name in addresses:
            entry = {"ip": _show(ip_text(ip)), "preference": pref,
                     "host": _show(name), "family": 4 if len(ip) == 4 else 6,
                     "decision": "try", "detail": None}
            where = f"{entry['ip']}: " + (
                f"{entry['host']}, preference {pref}" if name is not None
                else "IP literal")
            if pref >= prefme:
                entry["decision"] = "dropped"
                entry["detail"] = (f"listed as MX: {_show(ip_text(listed))} "
                                   f"(this host) is at preference {prefme}")
                self.mark("drop", "dropped", where + " (" +
                          entry["detail"] + ")")
            else:
                self.mark("try", "try", where)
            entries.append((ip, name, entry))
            self.doc["addresses"].append(entry)
        candidates = [(ip, name, e) for ip, name, e in entries
                      if e["decision"] == "try"]
        if not candidates:
            raise _Stop(PERM_AMBIGMX, what="this host is a best MX (listed "
                        "as MX)")

        tcpto = TcpTo(self.home_fd)
        tls = None
        if self.controls.esmtp:
            from ..tls import TlsControls
            tls = TlsControls(self.home_fd)
        self.tlsc = tls
        self.credentials = None
        if tls is not None and route is not None and route.has_credentials:
            from ..auth import credentials_for
            self.credentials = credentials_for(self.home_fd, route)
        self.heading("Connection")
        for index, (ip, name, entry) in enumerate(candidates):
            if tcpto.skip(ip):
                entry["decision"] = "skipped"
                entry["detail"] = ("tcpto: timed out recently (read only; "
                                   "qmail-remote skips it for 64 to 97 "
                                   "minutes after the second timeout)")
                self.mark("skip", "skipped", f"{entry['ip']}: "
                          f"{entry['detail']}")
                continue
            starter = tls.starter(name, self.port) if tls is not None \
                else None
            done = self._attempt(ip, name, entry, starter)
            if done is None:
                continue
            for _, _, rest in candidates[index + 1:]:
                rest["decision"] = "not reached"
            return done
        raise _Stop(TEMP_NOCONN, what="no address could be connected to")

    # -- connecting and talking -------------------------------------------

    def _open(self, ip, entry, again=None):
        from ..mx import ip_text
        self.connection_no += 1
        sock, why, timed_out = _connect(ip, self.port, self.connect_timeout,
                                        self.source)
        label = f"{_show(ip_text(ip))} port {self.port}"
        if again:
            label += f" ({again})"
        if sock is None:
            entry["decision"] = "timed out" if timed_out else "failed"
            entry["detail"] = why + (" (qmail-remote would count it in "
                                     "tcpto)" if timed_out else "")
            self.mark("bad", "failed", f"{label}: {entry['detail']}")
            self._transcript("info", f"connect {label}: {why}")
            return None
        entry["decision"] = "connected"
        entry["detail"] = None
        self.mark("ok", "connect", label)
        self._transcript("info", f"connected to {label}")
        return _Conversation(self, sock, ip_text(ip), self.read_timeout)

    def _attempt(self, ip, name, entry, starter):
        """Talk to *ip*; None when it did not connect (try the next one),
        else the exit status."""
        from ..mx import ip_text
        conv = self._open(ip, entry)
        if conv is None:
            return None
        # A new address (after a failed plaintext retry): a new story.
        self.tls_doc = None
        self.verify_may = True
        self.doc["connection"] = {"ip": _show(ip_text(ip)), "port": self.port,
                                  "host": _show(name), "connections": 1,
                                  "retried_in_plaintext": False}
        self._tls_policy(starter, name)
        while True:
            try:
                return self._converse(conv, ip, starter)
            except _Fallback as fallback:
                # Only with a starter: the retry has none, so this ends.
                self.event("the opportunistic TLS handshake failed ("
                           f"{_show(fallback.reason)}): qmail-remote "
                           "connects again and delivers in plaintext")
                self.tls_doc["fallback"] = _show(fallback.reason)
                self.tls_doc["not_used"] = "the handshake failed (" + \
                    _show(fallback.reason) + "); qmail-remote retries in " \
                    "plaintext"
                starter = None
                again = "plaintext retry"
            except _Recheck:
                # Raised once at most: the check is not made again.
                self.event("the probe connects again to do what "
                           "qmail-remote does: TLS without checking the "
                           "certificate")
                self.verify_may = False
                again = "again, as qmail-remote"
            conv = self._open(ip, entry, again)
            if conv is None:
                if starter is None:
                    return None     # qmail-remote tries the next address
                self.verdict(1, "could not connect again after the probe's "
                             "own certificate check")
                return 1
            self.doc["connection"]["connections"] += 1
            if starter is None:
                self.doc["connection"]["retried_in_plaintext"] = True

    def _converse(self, conv, ip, starter):
        """The dialogue on *conv* up to MAIL; the exit status."""
        from ..errors import ConnectionDied
        from ..report import dropped
        try:
            if self.controls.esmtp:
                caps = self._esmtp(conv, starter)
            else:
                self._greeting(conv)
                self._helo(conv)
                caps = None
            return self._ready(conv, caps)
        except _Stop as stop:
            if stop.quit:
                conv.quit()
            conv.close()
            if stop.fetch_chain:
                self._fetch_chain(ip, starter)
            self._tls_summary(failed=True)
            self.verdict(1, stop.what, stop.report)
            return 1
        except ConnectionDied:
            conv.close()
            self._tls_summary(failed=True)
            self.verdict(1, "the connection died", dropped(conv.ip, False))
            return 1
        except _TooMuch:
            conv.close()
            self.verdict(1, "the server sent more than 1 MiB without "
                         "ending a reply; the probe gave up (qmail-remote "
                         "would keep reading)")
            return 1
        finally:
            conv.close()

    def _greeting(self, conv, prepend=b"Connected to "):
        from ..report import stage_report
        code, text, digits = conv.read()
        if code != 220 or not digits:
            raise _Stop(stage_report("Z", prepend, conv.ip,
                                     b" but greeting failed", text),
                        quit=True, what="the greeting was refused")

    def _helo(self, conv):
        from ..report import stage_report
        code, text, digits = conv.command(b"HELO " +
                                          self.controls.helohost + b"\r\n")
        if code != 250 or not digits:
            raise _Stop(stage_report("Z", b"Connected to ", conv.ip,
                                     b" but my name was rejected", text),
                        quit=True, what="HELO was refused")

    def _ehlo(self, conv):
        from .._kernel import MAX_REPLY_TEXT
        from ..capabilities import Capabilities
        code, text, digits = conv.command(b"EHLO " +
                                          self.controls.helohost + b"\r\n",
                                          MAX_REPLY_TEXT)
        if code == 250 and digits:
            return Capabilities.from_ehlo(text, len(text) >= MAX_REPLY_TEXT), \
                text
        self.event("EHLO refused: qmail-remote says HELO on the same "
                   "connection and uses no extension")
        return None, text

    def _hello(self, conv):
        from ..capabilities import NONE
        caps, text = self._ehlo(conv)
        if caps is None:
            self._helo(conv)
            return NONE, None
        return caps, text

    def _esmtp(self, conv, starter):
        """esmtp._open, shown: (capabilities, EHLO text or None)."""
        from ..capabilities import NONE
        if starter is not None and starter.implicit:
            self._start_implicit(conv, starter)
            self._greeting(conv, b"TLS Connected to ")
            return self._hello(conv)
        self._greeting(conv)
        caps, text = self._ehlo(conv)
        if starter is not None and self._after_ehlo(conv, starter, caps,
                                                    text):
            return self._first_exchange(conv, starter)
        if caps is None:
            self._helo(conv)
            return NONE, None
        return caps, text

    # -- TLS ----------------------------------------------------------------

    def _tls_policy(self, starter, name):
        """The policy qmail-remote would apply to this connection."""
        from ..tls import MUST
        if self.tls_doc is not None:
            return
        doc = {"policy": None, "policy_file": None, "host": _show(name),
               "sni": None, "implicit": False, "used": False,
               "version": None, "cipher": None, "chain": None,
               "chain_note": None, "verified": None, "against": None,
               "checked_by_qmail_remote": False, "verify_error": None,
               "fallback": None, "not_used": None}
        self.tls_doc = doc
        if not self.controls.esmtp:
            doc["policy"] = "off"
            self.item("TLS policy", "none under noesmtp")
            self.doc["tls"] = doc
            return
        self.doc["tls"] = doc
        if starter is None:
            doc["policy"] = "none"
            doc["not_used"] = "the policy says no TLS"
            why = "control/tlshosts/exhaustivelist, and no .pem for this " \
                "host"
            for key in (name or b"", (name or b"").lower()):
                if self._exists(b"notlshosts/" + key):
                    why = "control/notlshosts/" + _show(key)
                    break
            doc["policy_file"] = why.split(",")[0]
            self.item("TLS policy", f"none: no STARTTLS ({why})")
            return
        doc["sni"] = _sni(starter.name)
        doc["implicit"] = bool(starter.implicit)
        if starter.mode == MUST:
            doc["policy"] = "mandatory"
            doc["policy_file"] = _show(starter.ca_label)
            doc["against"] = self._against(starter)
            doc["checked_by_qmail_remote"] = True
            self.item("TLS policy", f"mandatory and verified "
                      f"({_show(starter.ca_label)}): the chain must verify "
                      f"against {doc['against']} and the name must match "
                      f"{_show(name)}")
        else:
            doc["policy"] = "opportunistic"
            doc["against"] = "the system CA store"
            reason = "an IP literal has no name" if name is None else \
                f"no policy file for {_show(name)}"
            self.item("TLS policy", f"opportunistic ({reason}): STARTTLS "
                      f"when offered, the certificate is not checked")
        if starter.implicit:
            self.item("implicit TLS", f"port {self.port}: the handshake "
                      f"comes before the greeting (SMTPS)")
        self.item("SNI", doc["sni"] or "none")

    def _exists(self, name):
        from ..control import control_exists
        try:
            return control_exists(self.home_fd, os.fsdecode(name))
        except Exception:  # noqa: BLE001 - display only
            return False

    def _against(self, starter):
        if starter.ca_label == b"control/tlsverify":
            where = getattr(self.tlsc, "verify_ca", None)
            return ("the system CA store (control/tlsverify is empty)"
                    if not where else f"{_show(where)} (control/tlsverify)")
        return _show(starter.ca_label)

    def _context(self, starter, ip):
        """qmail-remote's SSL context for *starter*; _Stop when a file
        cannot be loaded; None when this Python has no TLS (opportunistic:
        plaintext)."""
        from ..report import Report
        from ..tls import MUST
        try:
            return self.tlsc.context(
                starter.ca_label if starter.mode == MUST else None)
        except Exception as exc:  # noqa: BLE001 - tls._SetupError
            what = getattr(exc, "what", None)
            why = getattr(exc, "why", None)
            if what is None:
                raise
            if why == b"no TLS support in this Python" and \
                    starter.mode != MUST:
                self.tls_doc["not_used"] = "this Python has no TLS"
                self.event("this Python has no TLS: plaintext")
                return None
            raise _Stop(Report("Z", what + b": " + (why or b"") +
                               b"; connecting to " + ip + b".\n"),
                        quit=True) from None

    def _system_context(self):
        """A context like qmail-remote's opportunistic one, but verifying
        against the system CA store: the probe's own check.  None when it
        cannot be made."""
        import ssl
        tls = self.tlsc
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(getattr(tls, "ciphers", None) or "DEFAULT")
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.set_default_verify_paths()
            if getattr(tls, "clientcert", False):
                ctx.load_cert_chain("/proc/self/fd/%d/control/clientcert.pem"
                                    % self.home_fd)
                ctx.post_handshake_auth = True
        except (OSError, ValueError) as exc:
            self.tls_doc["verify_error"] = "the system CA store could not " \
                "be used: " + _show(_error_reason(exc))
            return None
        return ctx

    def _after_ehlo(self, conv, starter, caps, text):
        """tls.Starter.after_ehlo, shown: True when TLS is now on."""
        from ..errors import ConnectionDied
        from ..report import Report, smtptext_said
        from ..tls import MAY, MUST
        if caps is not None:
            self._caps_doc(caps, text, "capabilities_before_tls")
        if caps is None or not caps.starttls:
            if starter.mode == MUST:
                raise _Stop(Report("Z", b"No TLS achieved while " +
                                   starter.ca_label + b" exists; connecting "
                                   b"to " + conv.ip + b".\n"), quit=True)
            self.tls_doc["not_used"] = "EHLO was refused" if caps is None \
                else "the server does not offer STARTTLS"
            self.event(self.tls_doc["not_used"] + ": plaintext")
            return False
        context = self._context(starter, conv.ip)
        if context is None:
            return False
        try:
            code, text, digits = conv.command(b"STARTTLS\r\n")
        except ConnectionDied:
            if starter.mode == MAY:
                raise _Fallback(b"connection died") from None
            raise
        if code != 220 or not digits:
            if starter.mode == MUST:
                raise _Stop(Report("Z", b"STARTTLS rejected while " +
                                   starter.ca_label + b" exists; connecting "
                                   b"to " + conv.ip + b".\n" +
                                   smtptext_said(text)), quit=True)
            self.tls_doc["not_used"] = "the server refused STARTTLS"
            self.event("STARTTLS refused: qmail-remote goes on in plaintext "
                       "on this connection")
            return False
        self._handshake(conv, starter, context, fallback=starter.mode == MAY)
        return True

    def _start_implicit(self, conv, starter):
        from ..report import Report
        context = self._context(starter, conv.ip)
        if context is None:
            raise _Stop(Report("Z", b"TLS error initializing ctx: no TLS "
                               b"support in this Python; connecting to " +
                               conv.ip + b".\n"))
        self._handshake(conv, starter, context, fallback=False)

    def _handshake(self, conv, starter, context, fallback):
        import ssl
        from ..report import Report, outsafe
        from ..tls import MUST, check_name
        doc = self.tls_doc
        checking = starter.mode != MUST and self.verify_may
        ctx = self._system_context() if checking else None
        if ctx is None:
            checking = False
            ctx = context
        tail = b"; connected to " + conv.ip + b".\n"
        if not conv.usable:
            if fallback:
                raise _Fallback(b"timed out")
            raise _Stop(Report("Z", b"TLS connect failed: timed out" + tail))
        try:
            tls = ctx._wrap_socket(conv.sock, False, _sni(starter.name))
            tls.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            message = _show(exc.verify_message or _error_reason(exc))
            doc["verified"] = False
            doc["verify_error"] = message
            if checking:
                self.event(f"TLS handshake (the probe checking against the "
                           f"system CA store): {message}")
                raise _Recheck() from None
            self.event(f"TLS handshake: the certificate does not verify: "
                       f"{message}")
            raise _Stop(Report("Z", b"TLS unable to verify server with " +
                               starter.ca_label + b": " +
                               message.encode("ascii", "replace") + tail),
                        fetch_chain=True) from None
        except (OSError, ValueError) as exc:
            reason = _error_reason(exc)
            self.event(f"TLS handshake failed: {_show(reason)}")
            if fallback:
                raise _Fallback(reason) from None
            raise _Stop(Report("Z", b"TLS connect failed: " + reason +
                               tail)) from None
        conv.switch(tls)
        self._record_tls(tls)
        if starter.mode == MUST:
            problem = check_name(tls.getpeercert(),
                                 starter.name.decode("ascii", "replace"))
            if problem is not None:
                doc["verified"] = False
                doc["verify_error"] = _show(problem)
                self.event(f"the chain verifies, the name does not: "
                           f"{_show(problem)}")
                raise _Stop(Report("Z", b"TLS unable to verify server " +
                                   outsafe(starter.name) + b": " + problem +
                                   tail), quit=True)
            doc["verified"] = True
            self.event(f"the certificate verifies against {doc['against']} "
                       f"and matches {_show(starter.name)}")
        elif checking:
            if starter.name is None:
                doc["verified"] = True
                doc["verify_error"] = None
                self.event("the chain would verify against the system CA "
                           "store (no name to match: an IP literal)")
            else:
                problem = check_name(tls.getpeercert(),
                                     starter.name.decode("ascii", "replace"))
                doc["verified"] = problem is None
                doc["verify_error"] = _show(problem)
                self.event("the certificate would verify against the "
                           "system CA store" + (
                               "" if problem is None else
                               f", but not the name: {_show(problem)}") +
                           " (qmail-remote does not check it here)")

    def _record_tls(self, tls):
        doc = self.tls_doc
        doc["used"] = True
        try:
            doc["version"] = tls.version()
            cipher = tls.cipher()
            doc["cipher"] = cipher[0] if cipher else None
        except (OSError, ValueError):
            pass
        doc["chain"], doc["chain_note"] = _chain(tls)
        self.event(f"TLS {doc['version']} {doc['cipher']}")

    def _first_exchange(self, conv, starter):
        """EHLO again inside TLS (tls.Starter.first_exchange)."""
        from ..errors import ConnectionDied
        from ..report import Report
        from ..tls import MAY
        try:
            return self._hello(conv)
        except ConnectionDied:
            reason = conv.error or b"connection died"
            if starter.mode == MAY:
                raise _Fallback(reason) from None
            raise _Stop(Report("Z", b"TLS connect failed: " + reason +
                               b"; connected to " + conv.ip +
                               b".\n")) from None

    def _fetch_chain(self, ip, starter):
        """After a failed verification: the chain, on a new connection
        without the check (the probe's own; qmail-remote stops there)."""
        from ..errors import ConnectionDied
        doc = self.tls_doc
        self.event("the probe connects again, without checking the "
                   "certificate, to show the chain")
        conv = self._open(ip, {}, "to fetch the chain")
        if conv is None:
            doc["chain_note"] = "chain not available: could not connect " \
                "again"
            return
        self.doc["connection"]["connections"] += 1
        verified, error = doc["verified"], doc["verify_error"]
        try:
            context = self.tlsc.context(None)
            if not starter.implicit:
                self._greeting(conv)
                self._ehlo(conv)
                code, _, digits = conv.command(b"STARTTLS\r\n")
                if code != 220 or not digits:
                    raise ConnectionDied()
            tls = context._wrap_socket(conv.sock, False, _sni(starter.name))
            tls.do_handshake()
            conv.switch(tls)
            self._record_tls(tls)
            conv.quit()
        except Exception:  # noqa: BLE001 - only for display
            doc["chain_note"] = "chain not available: the connection to " \
                "fetch it failed"
        finally:
            doc["verified"], doc["verify_error"] = verified, error
            conv.close()

    # -- after EHLO/HELO ------------------------------------------------------

    def _caps_doc(self, caps, text, key):
        auth = caps.keywords.get(b"AUTH")
        name = text.split(b"\n", 1)[0][4:] if text else b""
        doc = {
            "server": _show(name),
            "keywords": {_show(k): _show(v) for k, v in
                         caps.keywords.items()},
            "size": caps.size_offered,
            "size_limit": caps.size_limit or None,
            "pipelining": caps.pipelining,
            "chunking": caps.chunking,
            "smtputf8": caps.smtputf8,
            "starttls": caps.starttls,
            "auth": None if auth is None else
            [_show(m.upper()) for m in auth.split()],
        }
        self.doc[key] = doc
        return doc

    def _ready(self, conv, caps_text):
        """EHLO or HELO accepted: QUIT instead of MAIL, then what
        qmail-remote would do next."""
        from ..report import perm_smtputf8
        if caps_text is None:        # noesmtp: HELO
            conv.quit()
            conv.close()
            self.heading("Server")
            self.item("HELO", "accepted: netqmail 1.06's MAIL FROM would be "
                      "next; no extension is used")
            self.verdict(0, f"{_show(conv.ip)} accepted HELO")
            return 0
        caps, text = caps_text
        secure = conv.tls is not None
        auth_report, auth_lines = self._auth(conv.ip, caps, secure)
        conv.quit()
        conv.close()
        if text is not None:
            doc = self._caps_doc(caps, text, "capabilities")
        else:
            doc = None
            self.doc["capabilities"] = None
        self.heading("Server" + (" (capabilities after STARTTLS)"
                                 if secure else ""))
        if doc is None:
            self.item("EHLO", "refused; HELO accepted: no extension is used")
        else:
            if caps.size_offered:
                self.item("SIZE", f"limit {caps.size_limit} bytes: a larger "
                          "message bounces before MAIL" if caps.size_limit
                          else "offered, no limit")
            else:
                self.item("SIZE", "not offered")
            self.item("PIPELINING", "offered: MAIL, RCPT and DATA in one "
                      "write" if caps.pipelining else "not offered: "
                      "lock-step commands")
            if caps.chunking:
                self.item("CHUNKING", "offered: the body in BDAT chunks"
                          if self.controls.chunking else "offered, but "
                          "control/nochunking: DATA")
            else:
                self.item("CHUNKING", "not offered: DATA")
            self.item("SMTPUTF8", "offered" if caps.smtputf8 else
                      "not offered: a sender or recipient with 8-bit bytes "
                      "would bounce")
            self.item("STARTTLS", "TLS is on" if secure else "offered"
                      if caps.starttls else "not offered")
            self.item("AUTH", " ".join(doc["auth"]) if doc["auth"]
                      else "not offered" if doc["auth"] is None
                      else "offered with no mechanism")
        self._tls_summary()
        if auth_lines:
            self.heading("AUTH (never attempted by the probe)")
            for line in auth_lines:
                self.item("AUTH", line)
        if auth_report is not None:
            self.verdict(1, "AUTH could not be done", auth_report)
            return 1
        if max(self.mangled_sender, default=0) > 127 and not caps.smtputf8:
            self.verdict(1, "the sender has 8-bit bytes and the server "
                         "does not offer SMTPUTF8", perm_smtputf8(conv.ip))
            return 1
        self.verdict(0, f"{_show(conv.ip)} accepted EHLO" if doc is not None
                     else f"{_show(conv.ip)} accepted HELO (after EHLO was "
                     f"refused)")
        return 0

    def _tls_summary(self, failed=False):
        """The TLS section; after a failure only when TLS had begun."""
        doc = self.tls_doc
        if doc is None or doc["policy"] in ("off", None):
            return
        if failed and not (doc["used"] or doc["verify_error"] or
                           doc["fallback"]):
            return
        self.heading("TLS")
        if not doc["used"] and not failed:
            self.item("TLS", "not used: " + (
                "the policy says no TLS" if doc["policy"] == "none" else
                doc["not_used"] or "no TLS"))
        self._show_tls(doc)

    def _show_tls(self, doc):
        if doc["version"]:
            self.item("version", doc["version"])
            self.item("cipher", doc["cipher"])
        if doc["chain"]:
            total = len(doc["chain"])
            self.item("chain", f"{_plural(total, 'certificate')}, as the "
                      f"server sent them")
            for number, cert in enumerate(doc["chain"]):
                subject = cert["subject"] or "(empty subject)"
                self.out.line(f"    {number}: {subject}")
                names = []
                if cert["cn"]:
                    names.append("CN " + ", ".join(cert["cn"]))
                if cert["dns"]:
                    names.append("DNS " + ", ".join(cert["dns"]))
                if cert["ip"]:
                    names.append("IP " + ", ".join(cert["ip"]))
                self.out.line("       names: " + ("; ".join(names) or
                                                  "none"))
                self.out.line(f"       issuer: {cert['issuer']}")
                expiry = (cert["not_after"] or "?")[:10]
                if cert["expired"]:
                    state = self.out.paint("bad", f"EXPIRED {expiry} "
                                           f"({-cert['days_left']} days ago)")
                elif cert["not_yet_valid"]:
                    state = self.out.paint("bad", "not valid before " +
                                           (cert["not_before"] or "?")[:10])
                else:
                    state = f"expires {expiry} (in {cert['days_left']} days)"
                self.out.line(f"       {state}")
        if doc["chain_note"]:
            self.item("chain note", doc["chain_note"])
        if doc["chain"] is None and not doc["chain_note"] and doc["used"]:
            self.item("chain", "chain not available")
        if doc["verified"] is not None:
            if doc["checked_by_qmail_remote"]:
                self.out.status("ok" if doc["verified"] else "bad",
                                "verified" if doc["verified"] else
                                "does not verify",
                                f"against {doc['against']}" + (
                                    f": {doc['verify_error']}"
                                    if doc["verify_error"] else ""))
            else:
                self.out.status("ok" if doc["verified"] else "warn",
                                "would verify" if doc["verified"] else
                                "would not verify",
                                f"against {doc['against']}" + (
                                    f": {doc['verify_error']}"
                                    if doc["verify_error"] else "") +
                                " (qmail-remote does not check in "
                                "opportunistic mode)")
        elif doc["verify_error"]:
            self.item("verification", doc["verify_error"])

    def _auth(self, ip, caps, secure):
        """What AUTH would do: (the report when it would fail, else None;
        lines saying so).  auth.authenticate's checks, without a byte
        sent."""
        from ..report import Report, outsafe
        creds = self.credentials
        if creds is None:
            return None, []
        offered = [m.upper() for m in caps.keywords.get(b"AUTH",
                                                         b"").split()]
        doc = {"user": _show(creds.user),
               "mechanisms": [_show(m) for m in creds.mechanisms],
               "offered": [_show(m) for m in offered] if
               b"AUTH" in caps.keywords else None,
               "mechanism": None, "inside_tls": secure, "attempted": False}
        self.doc["auth"] = doc
        loopback = ip.startswith(b"127.") or ip == b"::1"

        def z(text):
            return Report("Z", b"Connected to " + ip + b" but " + text +
                          b"\n")
        if not (secure or creds.plaintext_ok or loopback):
            return z(b"TLS could not be had, and I send the credentials "
                     b"for " + outsafe(creds.relay) + b" only inside TLS. "
                     b"(#4.7.0)"), [
                "no TLS, the relay is not a loopback address, and "
                "control/authplaintext does not exist: the credentials "
                "would not be sent"]
        if b"AUTH" not in caps.keywords:
            return z(b"it offers no AUTH, and I have credentials for " +
                     outsafe(creds.relay) + b". (#4.7.0)"), [
                "the server offers no AUTH"]
        for mechanism in creds.mechanisms:
            if mechanism in offered:
                break
        else:
            return z(b"it offers no AUTH mechanism I use (" +
                     b" ".join(outsafe(m) for m in offered) +
                     b"). (#4.7.0)"), [
                "no mechanism in common (qmail-remote uses " +
                " ".join(doc["mechanisms"]) + ")"]
        doc["mechanism"] = _show(mechanism)
        return None, [
            f"qmail-remote would authenticate as \"{_show(creds.user)}\" "
            f"with {_show(mechanism)}" + (
                " inside TLS" if secure else
                " without TLS (a loopback relay)" if loopback else
                " without TLS (control/authplaintext)")]
