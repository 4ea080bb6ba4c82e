"""TLS for the ESMTP dialogue: qmail-tls's policy files, STARTTLS, SMTPS.

Which TLS a server gets is decided by the host name its address was found
for (the MX, or the smtproutes relay; never the recipient domain), with
Frederik Vermeulen's qmail-tls files under ``control/``, first match wins:

1. an IP literal has no name, hence no policy file: opportunistic;
2. ``tlshosts/<name>.pem``: TLS is mandatory, and the certificate must
   verify against the CA certificates in that file and match the name;
3. ``notlshosts/<name>``: no TLS;
4. ``tlsverify`` (ours, Postfix's ``verify``): as 2, against the CA file
   or directory its first line names, else the system's CA store;
5. ``tlshosts/exhaustivelist``: no TLS;
6. otherwise opportunistic: STARTTLS when offered, no certificate check.

An opportunistic handshake that fails (or a connection that dies between
``STARTTLS`` and the end of the handshake) is retried once in plaintext
on a new connection to the same address (:attr:`Starter.fell_back`);
mandatory TLS that cannot be had is a temporary failure, with qmail-tls's
report texts.  Port 465 is implicit TLS (the greeting comes after the
handshake) whatever the files say, and never falls back.
``control/clientcert.pem`` (certificate and key) is offered when a server
asks; ``control/tlsclientciphers`` is the OpenSSL cipher list (lines joined
with ``:``; TLS 1.2 and below: Python cannot set TLS 1.3 suites).  With
``control/tlsreport`` a K report gets a last line ``TLS <version> <cipher>``.

The name check is qmail-tls's: the certificate's dNSName entries, where
``*.`` stands for exactly one label; the first commonName only when there
is no dNSName.  The ``_ssl`` module is used directly: ``ssl.py`` adds
about 10 ms of imports to every delivery that uses TLS, and nothing here
needs it.
"""

import os
import stat

from .control import control_exists, first_line, read_control
from .errors import ConnectionDied
from .report import Report, outsafe, smtptext_said

__all__ = ["TlsControls", "Starter", "SMTPS_PORT"]

SMTPS_PORT = 465

# A Starter's mode: opportunistic, or mandatory (and verified).
MAY, MUST = "may", "must"

_NO_SSL = b"no TLS support in this Python"
# Longer names cannot be file names (NAME_MAX is 255 with ".pem" added).
_MAX_NAME = 250
# Bytes a host name may have to be sent as SNI.
_SNI_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz"
                       b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def _ssl_module():
    try:
        import _ssl
    except ImportError:
        return None
    return _ssl


def _text(data):
    """Printable ASCII for a report (spaces kept, unlike outsafe)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    return bytes(ch if 32 <= ch <= 126 else 63 for ch in data)


def error_reason(exc):
    """What qmail-tls's ssl_error_str() would say, from a Python error."""
    ssl = _ssl_module()
    if isinstance(exc, TimeoutError) or exc.__class__.__name__ == "timeout":
        return b"timed out"
    if ssl is not None and isinstance(exc, ssl.SSLError):
        if getattr(exc, "reason", None) == "UNEXPECTED_EOF_WHILE_READING":
            # Python 3.9 with OpenSSL 3; 3.10+ raise SSLEOFError, this text.
            return b"EOF occurred in violation of protocol"
        args = exc.args
        text = str(args[1] if len(args) > 1 else args[0] if args else "")
        if text.startswith("["):
            text = text.split("] ", 1)[-1]
        text = text.split(" (_ssl.c:", 1)[0]
        return _text(text or "TLS error")
    if isinstance(exc, OSError) and exc.errno:
        return _text(os.strerror(exc.errno))
    return _text(str(exc) or exc.__class__.__name__)


def _name_matches(pattern, name):
    """qmail-tls's match_partner(): exact, or ``*`` + the name's domain."""
    pattern = pattern.lower()
    name = name.lower()
    if pattern == name:
        return True
    if pattern.startswith("*"):
        dot = name.find(".")
        return pattern[1:] == (name[dot:] if dot >= 0 else "")
    return False


def check_name(cert, name):
    """None when *cert* (getpeercert()'s dict) is for *name*, else why not.

    The reason is the tail of qmail-tls's report, as bytes.
    """
    if not cert:
        return b"no certificate provided"
    dns = [value for kind, value in cert.get("subjectAltName", ())
           if kind == "DNS"]
    if dns:
        if any(_name_matches(value, name) for value in dns):
            return None
        return b"certificate contains no matching dNSNames"
    common = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and common is None:
                common = value
    if not common:
        return b"certificate contains no valid commonName"
    if _name_matches(common, name):
        return None
    return b"received certificate for " + outsafe(common.encode("utf-8",
                                                                "replace"))


def _sni(name):
    if name is None or not name or len(name) > 253 or name[:1] == b"." or \
            any(ch not in _SNI_BYTES for ch in name):
        return None
    return name.decode("ascii")


class TlsControls:
    """The TLS control files of one delivery, read when first needed."""

    def __init__(self, home_fd):
        self._home_fd = home_fd
        self._read = False
        self._contexts = {}

    def _load(self):
        if self._read:
            return
        fd = self._home_fd
        self.exhaustive = control_exists(fd, "tlshosts/exhaustivelist")
        verify = first_line(fd, "tlsverify")
        self.verify = verify is not None
        self.verify_ca = os.fsdecode(verify) if verify else None
        self.report = control_exists(fd, "tlsreport")
        self.clientcert = control_exists(fd, "clientcert.pem")
        ciphers = read_control(fd, "tlsclientciphers")
        self.ciphers = None
        if ciphers:
            lines = [line for line in ciphers.split(b"\n") if line]
            self.ciphers = b":".join(lines).decode("ascii", "replace")
        self._read = True

    def starter(self, name, port):
        """The :class:`Starter` for one connection, or None for no TLS."""
        self._load()
        implicit = port == SMTPS_PORT
        if name is not None and (len(name) > _MAX_NAME or b"/" in name or
                                 b"\0" in name):
            name_key = None       # no file can be named after it
        else:
            name_key = name
        if name_key is not None:
            pem = self._find(b"tlshosts/", name_key, b".pem")
            if pem is not None:
                return Starter(self, name, MUST, b"control/" + pem, implicit)
            if self._find(b"notlshosts/", name_key, b"") is not None:
                return Starter(self, name, MAY, None, True) if implicit \
                    else None
            if self.verify:
                return Starter(self, name, MUST, b"control/tlsverify",
                               implicit)
            if self.exhaustive and not implicit:
                return None
        return Starter(self, name, MAY, None, implicit)

    def _find(self, folder, name, suffix):
        """control/<folder><name><suffix> as the name is, else lower-case."""
        for key in dict.fromkeys((name, name.lower())):
            path = folder + key + suffix
            if control_exists(self._home_fd, os.fsdecode(path)):
                return path
        return None

    def context(self, ca_label):
        """An SSL context: verifying against *ca_label*'s CAs, or not."""
        if ca_label in self._contexts:
            return self._contexts[ca_label]
        ssl = _ssl_module()
        if ssl is None:
            raise _SetupError(b"TLS error initializing ctx", _NO_SSL)
        try:
            ctx = ssl._SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            # Python 3.9 sets it by default with OpenSSL 3: a peer closing
            # without close_notify would look like a clean close.
            ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
            ctx.check_hostname = False      # qmail-tls's own check, later
            ctx.minimum_version = ssl.PROTO_TLSv1_2
            ctx.set_ciphers(self.ciphers or "DEFAULT")
        except (ssl.SSLError, ValueError) as exc:
            if self.ciphers and isinstance(exc, ssl.SSLError):
                raise _SetupError(b"TLS unable to use "
                                  b"control/tlsclientciphers", exc) from None
            raise _SetupError(b"TLS error initializing ctx", exc) from None
        if ca_label is None:
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self._load_cas(ctx, ca_label)
        if self.clientcert:
            try:
                ctx.load_cert_chain(self._file("control/clientcert.pem"))
            except (OSError, ValueError) as exc:
                raise _SetupError(b"TLS unable to load control/clientcert.pem",
                                  exc) from None
            ctx.post_handshake_auth = True
        self._contexts[ca_label] = ctx
        return ctx

    def _load_cas(self, ctx, ca_label):
        # Paths are relative to the home: the context loads them by name.
        if ca_label == b"control/tlsverify":
            where = self.verify_ca
            try:
                if where is None:
                    ctx.set_default_verify_paths()
                elif os.path.isdir(self._path(where)):
                    ctx.load_verify_locations(capath=self._path(where))
                else:
                    ctx.load_verify_locations(cafile=self._file(where))
            except (OSError, ValueError) as exc:
                raise _SetupError(b"TLS unable to load " +
                                  _text(where or "the system CA store"),
                                  exc) from None
            return
        try:
            ctx.load_verify_locations(cafile=self._file(
                os.fsdecode(ca_label)))
        except (OSError, ValueError) as exc:
            raise _SetupError(b"TLS unable to load " + ca_label, exc) from None

    def _path(self, path):
        """*path* as the process can open it (relative: from the home)."""
        if os.path.isabs(path):
            return path
        return "/proc/self/fd/%d/%s" % (self._home_fd, path)

    def _file(self, path):
        """_path(*path*), which must be a regular file: OpenSSL opens it
        blocking, so a FIFO would hang the delivery for ever."""
        path = self._path(path)
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError("not a regular file")
        return path


class _SetupError(Exception):
    def __init__(self, what, why):
        super().__init__(what)
        self.what = what
        self.why = why if isinstance(why, bytes) else error_reason(why)


class Starter:
    """TLS for one connection: the policy, then what happened.

    ``mode`` is MAY or MUST; ``ca_label`` names the CA certificates of a
    MUST (``control/tlshosts/<name>.pem`` or ``control/tlsverify``), the
    file named in the reports.
    """

    def __init__(self, controls, name, mode, ca_label, implicit):
        self._controls = controls
        self.name = name
        self.mode = mode
        self.ca_label = ca_label
        self.implicit = implicit
        self.fell_back = False  # the opportunistic handshake failed
        self.version = None
        self.cipher = None

    # -- report texts (qmail-tls's, typos fixed) --------------------------

    def _quit(self, session, text, connected, said=b""):
        """qmail-tls's TLS_QUIT: ``; connect(ing|ed) to <ip>.``."""
        tail = b"; connected to " if connected else b"; connecting to "
        return Report("Z", text + tail + session.ip + b".\n" + said)

    # -- the dialogue's steps ---------------------------------------------

    def after_ehlo(self, session, caps):
        """STARTTLS after EHLO, when the policy and the server allow.

        *caps* is the EHLO's :class:`Capabilities`, or None when EHLO was
        refused.  Returns True when TLS is now on (EHLO must be sent
        again), False to go on in plaintext; ends the dialogue (a verdict)
        when mandatory TLS cannot be had.
        """
        if caps is None or not caps.starttls:
            if self.mode == MUST:
                session.stop(self._quit(session, b"No TLS achieved while " +
                                        self.ca_label + b" exists", False))
            return False
        context = self._context(session)
        if context is None:
            return False
        session.write(b"STARTTLS\r\n")
        session.flush()
        try:
            code, text, digits = session.read()
        except ConnectionDied:
            if self.mode == MAY:
                self._fail(session, True, b"connection died")
            raise
        if code != 220 or not digits:
            if self.mode == MUST:
                session.stop(self._quit(
                    session, b"STARTTLS rejected while " + self.ca_label +
                    b" exists", False, smtptext_said(text)))
            return False
        self._handshake(session, context, fallback=self.mode == MAY)
        return True

    def start_implicit(self, session):
        """SMTPS: the handshake before the greeting; no fallback."""
        context = self._context(session)
        if context is None:
            session.abort(self._quit(session, b"TLS error initializing "
                                     b"ctx: " + _NO_SSL, False))
        self._handshake(session, context, fallback=False)

    def first_exchange(self, session, step):
        """``step()``, the first exchange under STARTTLS's TLS (EHLO again).

        A TLS 1.3 server refuses the client's certificate (or its absence)
        only after the client's side of the handshake is done, in reply to
        what the client sends next: a connection that dies here counts as
        a failed handshake, with the plaintext retry when opportunistic.
        """
        try:
            return step()
        except ConnectionDied as exc:
            cause = exc.__context__
            self._fail(session, self.mode == MAY,
                       error_reason(cause) if cause is not None
                       else b"connection died")

    def _context(self, session):
        """The SSL context, None when Python has no TLS (opportunistic:
        plaintext); a file that cannot be loaded ends the dialogue."""
        try:
            return self._controls.context(
                self.ca_label if self.mode == MUST else None)
        except _SetupError as exc:
            if exc.why == _NO_SSL and self.mode == MAY:
                return None
            session.stop(self._quit(session, exc.what + b": " + exc.why,
                                    False))

    def _handshake(self, session, context, fallback):
        if not session.channel.usable:
            self._fail(session, fallback, b"timed out")
        ssl = _ssl_module()
        try:
            tls = context._wrap_socket(session.sock, False, _sni(self.name))
            tls.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            session.abort(self._quit(
                session, b"TLS unable to verify server with " +
                self.ca_label + b": " +
                _text(exc.verify_message or error_reason(exc)), True))
        except (OSError, ValueError) as exc:
            self._fail(session, fallback, error_reason(exc))
        session.switch(tls)
        if self.mode == MUST:
            problem = check_name(tls.getpeercert(),
                                 self.name.decode("ascii", "replace"))
            if problem is not None:
                session.stop(self._quit(
                    session, b"TLS unable to verify server " +
                    outsafe(self.name) + b": " + problem, True))
        self.version = tls.version()
        cipher = tls.cipher()
        self.cipher = cipher[0] if cipher else None

    def _fail(self, session, fallback, reason):
        """The handshake failed: qmail-tls's Z, or (opportunistic) the
        plaintext retry that :attr:`fell_back` asks the caller for."""
        self.fell_back = fallback
        session.abort(self._quit(session, b"TLS connect failed: " + reason,
                                 True))

    def report_line(self):
        """The ``control/tlsreport`` line for a K report, or b""."""
        if not self._controls.report or self.version is None:
            return b""
        return b"TLS " + _text(self.version) + b" " + \
            _text(self.cipher or "") + b"\n"

