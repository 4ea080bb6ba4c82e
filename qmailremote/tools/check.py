"""``qmailremote check``: the installation as qmail will run qmail-remote.

Every value shown is what the product's own code makes of the files
(:mod:`qmailremote.control`, ``routes``, ``binding``, ``addresses``,
``tls``, ``auth``, ``mx``): the value qmail-remote would use.  This module
only reads the files again to say *why* (lines ignored, errors) and checks
what qmail-remote cannot check for itself: access by its user (by the
owner, group and mode bits against that user's uid and groups, not by
access() as root), certificate expiry, the installed command's start-up.

A line is ``ok``, ``warning`` or ``FAIL``.  FAIL means qmail-remote would
defer deliveries (all of them, or a whole class: a sender, a route, every
TLS session) until the admin fixes it; the exit status is then 1.
Warnings leave it 0.  Passwords are never printed: a credentials line is
shown as its key, relay, port, syntax and user only.
"""

import argparse
import errno
import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

from .. import mx
from ..addresses import read_preference
from ..auth import MECHANISMS, read_mechanisms
from ..binding import Source, parse_ipv4
from ..control import (control_exists, first_line, open_home, parse_int,
                       read_control, read_controls, read_nonblocking,
                       route_entries, strip_trailing)
from ..report import Failure
from ..routes import build_table, parse_route
from ..tcpto import TCPTO, TCPTO6
from ..tls import TlsControls, error_reason
from .tcpto import home_of, read_table, skip_verdict, table_records

__all__ = ["add_arguments", "run", "RESOLV_CONF", "installed_command"]


_EPILOG = """\
Shows the home directory, every control file qmail-remote reads (present
or not, the value it yields, each line it ignores and why), credentials
(route, syntax and user; never a password), the TLS files (parse, key
match, expiry), the tcpto files, resolv.conf, the kernel and the installed
command's start-up time.

Exit status: 0 when a delivery could work (warnings allowed), 1 when
something would make qmail-remote defer deliveries (a FAIL line).
"""

# Where qmail-remote reads its name servers (tests point this elsewhere).
RESOLV_CONF = mx.RESOLV_CONF
DEFAULT_USER = "qmailr"
USAGE_OUTPUT = b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0"
WARN_DAYS = 30
_DAY = 86400

EVERY = "qmail-remote defers every delivery (Unable to read control files.)"
# The files only the ESMTP profile reads, in the order they are shown.
ESMTP_ONLY = ("authsenders", "domainbindings", "outgoingip", "helohostbyip",
              "addresspreference", "authmechanisms", "authplaintext",
              "tlsverify", "tlsreport", "clientcert.pem", "tlsclientciphers",
              "tlshosts/", "notlshosts/", "nochunking")


def add_arguments(parser):
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--user", metavar="NAME", default=DEFAULT_USER,
                        help="the user qmail-remote runs as (default: "
                             f"{DEFAULT_USER}); access is checked for it")
    parser.add_argument("--runs", metavar="N", type=int, default=7,
                        help="start-up timing runs (default 7)")
    parser.add_argument("--no-timing", action="store_true",
                        help="do not time the installed qmail-remote")
    parser.add_argument("--json", action="store_true",
                        help="one JSON document instead of text")


# -- small helpers ---------------------------------------------------------

def show(data):
    """Bytes as a quoted, printable ASCII string (\\xNN for the rest)."""
    return '"' + escape(data) + '"'


def escape(data):
    out = []
    for ch in data:
        if ch == 34 or ch == 92:
            out.append("\\" + chr(ch))
        elif ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif 32 <= ch <= 126:
            out.append(chr(ch))
        else:
            out.append("\\x%02x" % ch)
    return "".join(out)


_C_ESCAPES = {10: "\\n", 13: "\\r", 9: "\\t"}


def _safe_key(key):
    """A key up to its first space or ``|``: never part of a secret."""
    cut = min([i for i in (key.find(b" "), key.find(b"|")) if i >= 0],
              default=-1)
    return key if cut < 0 else key[:cut] + b"..."


def _why(exc):
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or exc.__class__.__name__


class User:
    """The user qmail-remote runs as, for access checks by mode bits."""

    def __init__(self, name):
        self.name = name
        try:
            entry = pwd.getpwnam(name)
        except (KeyError, UnicodeError, ValueError):
            self.exists = False
            self.uid = None
            self.gids = []
            return
        self.exists = True
        self.uid = entry.pw_uid
        try:
            gids = os.getgrouplist(name, entry.pw_gid)
        except OSError:
            gids = [entry.pw_gid]
        self.gids = sorted(set(gids))

    def may(self, st, want):
        """Whether the mode bits of *st* give this user *want* (r, w, x).

        uid 0 may read and write anything, and search any directory
        (DAC override), as the kernel decides; ACLs are not looked at.
        """
        if not self.exists:
            return None
        if self.uid == 0:
            return "x" not in want or stat.S_ISDIR(st.st_mode) or \
                bool(st.st_mode & 0o111)
        if st.st_uid == self.uid:
            shift = 6
        elif st.st_gid in self.gids:
            shift = 3
        else:
            shift = 0
        bits = {"r": 4, "w": 2, "x": 1}
        return all(st.st_mode >> shift & bits[w] for w in want)

    def describe(self):
        if not self.exists:
            return f"no user {self.name} here"
        names = []
        for gid in self.gids:
            try:
                names.append(grp.getgrgid(gid).gr_name)
            except KeyError:
                names.append(str(gid))
        return f"uid {self.uid}, groups {', '.join(names)}"


def owner_mode(st):
    def name(table, key):
        try:
            return table(key)[0]
        except KeyError:
            return str(key)
    return (f"{name(pwd.getpwuid, st.st_uid)}:{name(grp.getgrgid, st.st_gid)}"
            f" {stat.S_IMODE(st.st_mode):04o}")


def _split_pem(data):
    return re.findall(rb"-----BEGIN CERTIFICATE-----\r?\n.*?"
                      rb"-----END CERTIFICATE-----", data, re.S)


def decode_certs(data):
    """[(subject CN or name, notAfter epoch, notAfter text)] of the PEM
    certificates in *data* (bytes); undecodable blocks are skipped."""
    import ssl
    certs = []
    for block in _split_pem(data):
        with tempfile.NamedTemporaryFile(suffix=".pem") as tmp:
            tmp.write(block + b"\n")
            tmp.flush()
            try:
                decoded = ssl._ssl._test_decode_cert(tmp.name)
                not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
            except (ssl.SSLError, OSError, ValueError, KeyError):
                continue
        subject = ""
        for rdn in decoded.get("subject", ()):
            for key, value in rdn:
                if key == "commonName" and not subject:
                    subject = value
        if not subject:
            subject = ",".join(f"{k}={v}" for rdn in decoded.get("subject", ())
                               for k, v in rdn) or "(no subject)"
        certs.append((subject, int(not_after), decoded["notAfter"]))
    return certs


def installed_command():
    """The installed ``qmail-remote``: next to sys.executable, else PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which("qmail-remote")


# -- the checker -----------------------------------------------------------

class Checker:
    def __init__(self, out, args):
        self.out = out
        self.args = args
        self.user = User(args.user)
        self.now = int(time.time())
        self.checks = []
        self.controls = {}
        self.certificates = []
        self.section_name = None
        self.first_section = True
        self.home_fd = None
        self.esmtp = True
        self.bound = []
        self.credentials = []
        self.plaintext = False
        self.tcpto_missing = False

    # output ---------------------------------------------------------------

    def section(self, title):
        if not self.first_section:
            self.out.line()
        self.first_section = False
        self.section_name = title
        self.out.heading(title)

    def status(self, kind, label, detail="", notes=()):
        self.out.status(kind, label, detail)
        for note in notes:
            self.out.line(" " * 12 + note)
        self.checks.append({"section": self.section_name, "status": kind,
                            "label": label, "detail": detail,
                            "notes": list(notes)})

    def control(self, name, kind, detail, present, read=True, value=None,
                default=False, ignored=(), notes=(), user_readable=None,
                lines=()):
        """One control file's line.  *ignored* and *lines* are (line
        number, text) pairs, shown in line order before the *notes*."""
        merged = sorted(list(ignored) + list(lines), key=lambda x: x[0])
        self.status(kind, "control/" + name, detail,
                    [text for _, text in merged] + list(notes))
        self.controls[name] = {
            "file": "control/" + name, "present": present, "read": read,
            "value": value, "default": default, "status": kind,
            "ignored": [{"line": line, "reason": text}
                        for line, text in ignored],
            "user_readable": user_readable,
        }

    # file access ----------------------------------------------------------

    def stat(self, path):
        """os.stat of *path* under the home; None when absent; OSError."""
        try:
            return os.stat(path, dir_fd=self.home_fd)
        except FileNotFoundError:
            return None

    def raw(self, name):
        """(stat or None, bytes or None, error text or None) of control/name.

        An error means qmail-remote could not read it either (running as
        this process); a missing file is (None, None, None).
        """
        path = "control/" + name
        try:
            st = self.stat(path)
        except OSError as exc:
            return None, None, _why(exc)
        if st is None:
            return None, None, None
        try:
            return st, read_nonblocking(path, self.home_fd), None
        except OSError as exc:
            return st, None, _why(exc)

    def user_access(self, st, want="r"):
        """(user may, note or None) for a file qmail-remote's user needs."""
        may = self.user.may(st, want)
        if may is False:
            verb = {"r": "read", "rw": "read and write",
                    "x": "search"}.get(want, want)
            return False, (f"{self.user.name} cannot {verb} it "
                           f"({owner_mode(st)})")
        return may, None

    # sections -------------------------------------------------------------

    def run(self):
        # Every key of the JSON document, whatever is reached.
        for key, empty in (("profile", None), ("controls", self.controls),
                           ("routes", []), ("authsenders", []),
                           ("tcpto", {}), ("resolver", None),
                           ("kernel", None), ("startup", None)):
            self.out.record(key, empty)
        ok = self.check_home()
        if ok:
            try:
                self.check_controls()
                self.check_tcpto()
            finally:
                os.close(self.home_fd)
        self.guard("DNS", self.check_resolver)
        self.guard("qmail-remote", self.check_program)
        return self.verdict()

    def guard(self, title, function):
        try:
            function()
        except Exception as exc:  # a bug here must not hide the rest
            self.status("bad", title, "could not be checked: " +
                        exc.__class__.__name__ + ": " + _why(exc))

    def check_home(self):
        home, source = home_of(self.args)
        self.home = home
        self.section("Home")
        doc = {"path": home, "source": source, "opens": False, "error": None}
        self.out.record("home", doc)
        self.out.record("user", {"name": self.user.name,
                                 "exists": self.user.exists,
                                 "uid": self.user.uid,
                                 "gids": self.user.gids})
        try:
            self.home_fd = open_home(home)
        except Failure:
            try:
                os.stat(home)
                why = "not a directory" if not os.path.isdir(home) else \
                    "cannot be opened"
            except OSError as exc:
                why = _why(exc)
            doc["error"] = why
            self.status("bad", f"{home} (from {source})",
                        f"{why}: qmail-remote defers every delivery "
                        "(Unable to switch to home directory.)")
            return False
        doc["opens"] = True
        self.status("ok", f"{home} (from {source})", "opens")
        if not self.user.exists:
            self.status("warn", f"user {self.user.name}",
                        "does not exist: access by qmail-remote's user is "
                        "not checked (--user NAME)")
        else:
            self.check_path(home)
        return True

    def check_path(self, home):
        """The user must search every directory down to control/."""
        real = os.path.realpath(home)
        dirs = []
        path = real
        while True:
            dirs.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        blocked = None
        for path in reversed(dirs):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not self.user.may(st, "x"):
                blocked = (path, st)
                break
        if blocked is None:
            try:
                st = self.stat("control")
            except OSError:
                st = None
            if st is not None and not self.user.may(st, "x"):
                blocked = (os.path.join(real, "control"), st)
        user = f"user {self.user.name} ({self.user.describe()})"
        if blocked is not None:
            path, st = blocked
            self.status("bad", user, f"cannot enter {path} ({owner_mode(st)})"
                        ": qmail-remote defers every delivery")
        else:
            self.status("ok", user, "can enter the home and control/")

    # control files --------------------------------------------------------

    def check_controls(self):
        self.section("Control files")
        fd = self.home_fd
        try:
            self.controls_value = read_controls(fd)
            self.controls_error = None
        except Failure:
            self.controls_value = None
            self.controls_error = "Unable to read control files."
        try:
            self.esmtp = not control_exists(fd, "noesmtp")
        except Failure:
            self.esmtp = True
        self.out.record("profile", "esmtp" if self.esmtp else "noesmtp")
        self.guard("control/me", self.check_me_helohost)
        for name, default in (("timeoutremote", 1200),
                              ("timeoutconnect", 60)):
            self.guard("control/" + name,
                       lambda n=name, d=default: self.check_timeout(n, d))
        self.guard("control/noesmtp", self.check_noesmtp)
        self.routes_json = {"smtproutes": [], "authsenders": []}
        self.guard("control/smtproutes",
                   lambda: self.check_routes("smtproutes"))
        if self.controls_error and all(
                c["status"] == "ok" for c in self.checks):
            self.status("bad", "control files", "qmail-remote defers every "
                        "delivery: " + self.controls_error)
        if self.esmtp:
            self.section("ESMTP")
            self.guard("control/nochunking", self.check_nochunking)
            self.guard("control/authsenders",
                       lambda: self.check_routes("authsenders"))
            self.guard("control/domainbindings", self.check_bindings)
            self.guard("control/helohostbyip", self.check_helohostbyip)
            self.guard("control/addresspreference", self.check_preference)
            self.guard("control/authmechanisms", self.check_auth)
            self.section("TLS")
            self.guard("TLS", self.check_tls)
        else:
            self.section("Not read under control/noesmtp")
            for name in ESMTP_ONLY:
                self.guard("control/" + name,
                           lambda n=name: self.not_read(n))
        self.out.record("controls", self.controls)
        self.out.record("routes", self.routes_json["smtproutes"])
        self.out.record("authsenders", self.routes_json["authsenders"])

    def present_line(self, name, st, error, consequence=EVERY):
        """(kind, detail, user_readable, notes) for a present file.

        With *error* (this process cannot read it) the detail says so and
        the caller shows nothing more; when only qmail-remote's user cannot
        read it, a note says so and the caller goes on to show the value.
        """
        if error is not None:
            if st is not None and error == os.strerror(errno.EACCES) and \
                    os.geteuid() != 0 and self.user.may(st, "r"):
                return "warn", (f"this process cannot read it ({error}), "
                                f"but {self.user.name} may: run the check as "
                                "root to see its value"), True, []
            return "bad", f"cannot be read ({error}): {consequence}", None, []
        may, note = self.user_access(st)
        if may is False:
            return "bad", "", False, [f"{note}: {consequence}"]
        return "ok", "", may, []

    def check_me_helohost(self):
        """control/me and control/helohost: the EHLO/HELO name."""
        values, lines = {}, {}
        for name in ("me", "helohost"):
            st, data, error = self.raw(name)
            if st is None and error is None:
                values[name] = None             # absent
                continue
            kind, detail, readable, notes = self.present_line(name, st, error)
            if error is not None:
                values[name] = False            # present, unusable
                lines[name] = (kind, detail, True, None, notes, readable)
                continue
            value = first_line(self.home_fd, name)
            values[name] = value
            if not value:
                kind = _worse(kind, "warn")
                notes = notes + ["its first line is empty: an empty name"]
            lines[name] = (kind, show(value), True, escape(value), notes,
                           readable)
        me, helohost = values["me"], values["helohost"]
        if me is None:
            if helohost is None:
                lines["me"] = ("bad", "absent, and so is control/helohost: "
                               "qmail-remote defers every delivery (Unable "
                               "to read control files.)", False, None, [],
                               None)
            else:
                lines["me"] = ("ok", "absent (control/helohost names this "
                               "host)", False, None, [], None)
        if helohost is None:
            if me:
                lines["helohost"] = ("ok", "absent: the EHLO/HELO name is "
                                     f"control/me's, {show(me)}", False,
                                     escape(me), [], None)
            else:
                lines["helohost"] = ("ok", "absent: the EHLO/HELO name is "
                                     "control/me's", False, None, [], None)
        for name in ("me", "helohost"):
            kind, detail, present, value, notes, readable = lines[name]
            self.control(name, kind, detail, present, value=value,
                         default=name == "helohost" and not present,
                         notes=notes, user_readable=readable)

    def check_timeout(self, name, default):
        st, data, error = self.raw(name)
        if st is None and error is None:
            self.control(name, "ok", f"absent: {default} s (the default)",
                         False, value=default, default=True)
            return
        kind, detail, readable, notes = self.present_line(name, st, error)
        if error is not None:
            self.control(name, kind, detail, True, notes=notes,
                         user_readable=readable)
            return
        line = first_line(self.home_fd, name)
        value = parse_int(line, default)
        digits = re.match(rb"[0-9]*", line).group()
        if not digits:
            kind = _worse(kind, "warn")
            detail = (f"{show(line)} does not start with a digit: "
                      f"{default} s (the default)")
        else:
            detail = f"{value} s"
            if digits != line:
                notes.append(f"{show(line)} is read as {value} (the digits "
                             "at its start)")
        if value <= 0:
            kind = "bad"
            what = "read and write" if name == "timeoutremote" else "connect"
            detail += (f": every {what} fails at once" if value < 0 else
                       f": qmail-remote does not wait for any {what}")
        self.control(name, kind, detail, True, value=value,
                     default=not digits, notes=notes, user_readable=readable)

    def check_noesmtp(self):
        self.flag("noesmtp", "present: netqmail 1.06's dialogue (HELO, no "
                  "extension, IPv4 only); the files under \"Not read under "
                  "control/noesmtp\" are not read", "absent: the ESMTP "
                  "dialogue (STARTTLS, AUTH, IPv6, ...)",
                  "qmail-remote defers every delivery")

    def flag(self, name, if_present, if_absent,
             consequence="qmail-remote defers every ESMTP delivery"):
        """A file whose existence is all that counts (control_exists)."""
        try:
            present = control_exists(self.home_fd, name)
        except Failure:
            try:
                os.stat("control/" + name, dir_fd=self.home_fd)
                why = "?"
            except OSError as exc:
                why = _why(exc)
            self.control(name, "bad", f"cannot be looked at ({why}): "
                         f"{consequence} (Unable to read control files.)",
                         True)
            return None
        self.control(name, "ok", if_present if present else if_absent,
                     present, value=present, default=not present)
        return present

    def check_nochunking(self):
        self.flag("nochunking", "present: DATA even where BDAT is offered",
                  "absent: BDAT where the server offers CHUNKING")

    def not_read(self, name):
        if name.endswith("/"):
            st = self.stat("control/" + name[:-1])
        else:
            try:
                st = self.stat("control/" + name)
            except OSError:
                st = None
        self.control(name, "ok", ("present" if st is not None else "absent")
                     + ", not read", st is not None, read=False)

    # smtproutes, authsenders, domainbindings, helohostbyip ---------------

    @staticmethod
    def walk(data):
        """control_readfile + constmap, line by line.

        Returns ([(line, where, entry)], [(line, reason, kind)]) where
        *where* names the line (and the part, when a NUL splits it).
        """
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        entries, ignored = [], []
        for number, raw in enumerate(lines, 1):
            line = strip_trailing(raw)
            if not line:
                ignored.append((number, f"line {number}: empty, ignored",
                                "ok"))
            elif line[0] == 35:
                ignored.append((number, f"line {number}: a comment (#), "
                                "ignored", "ok"))
            elif line[0] == 0:
                ignored.append((number, f"line {number}: starts with a NUL "
                                "byte, ignored whole", "warn"))
            else:
                parts = line.split(b"\0")
                if len(parts) > 1:
                    ignored.append((number, f"line {number}: a NUL byte "
                                    f"splits it into {len(parts)} entries",
                                    "warn"))
                for i, part in enumerate(parts):
                    where = f"line {number}" if len(parts) == 1 else \
                        f"line {number} (part {i + 1})"
                    entries.append((number, where, part))
        return entries, ignored

    def table(self, name, data):
        """(effective [(line, where, key, value)], ignored, table) with the
        product's build_table as the authority on the result."""
        entries, ignored = self.walk(data)
        product = build_table(route_entries(data))
        if [e for _, _, e in entries] != route_entries(data):
            raise AssertionError("line walk disagrees with route_entries")
        last = {}
        for number, where, entry in entries:
            key, colon, value = entry.partition(b":")
            if not colon:
                ignored.append((number, f"{where}: no ':', ignored", "warn"))
                continue
            lower = key.lower()
            if lower in last:
                old = last[lower]
                ignored.append((old[0], f"{old[1]}: key "
                                f"{show(_safe_key(old[2]))} is shadowed by "
                                f"{where}", "warn"))
            last[lower] = (number, where, key, value)
        effective = sorted(last.values(), key=lambda item: item[0])
        for _, _, key, value in effective:
            if product.get(key.lower()) != value:
                raise AssertionError("table disagrees with build_table")
        ignored.sort(key=lambda item: item[0])
        return effective, ignored, product

    def read_table_file(self, name):
        """(present, data or None, kind, detail, readable, notes)."""
        st, data, error = self.raw(name)
        if st is None and error is None:
            return False, None, "ok", "absent", None, []
        kind, detail, readable, notes = self.present_line(name, st, error)
        return True, data if error is None else None, kind, detail, \
            readable, notes

    @staticmethod
    def dialect(value):
        bar, space = value.find(b"|"), value.find(b" ")
        if bar >= 0 and (space < 0 or bar < space):
            return "s/qmail" if b";" in value[:bar] else "sagredo"
        return "indimail"

    def check_routes(self, name):
        present, data, kind, detail, readable, notes = \
            self.read_table_file(name)
        if data is None:
            self.control(name, kind, detail, present, notes=notes,
                         user_readable=readable)
            return
        effective, ignored, _ = self.table(name, data)
        lines = []
        worst = kind
        routes = self.routes_json[name]
        has_secret = False
        for number, where, key, value in effective:
            if name == "smtproutes":
                shown_key = show(_safe_key(key)) if key else \
                    "(empty key: every other host)"
            else:
                shown_key = show(_safe_key(key)) if key else \
                    "(empty key: every other sender)"
            item = {"line": number, "key": escape(_safe_key(key)),
                    "mx": not value, "relay": None, "port": None,
                    "credentials": None}
            routes.append(item)
            if not value:
                lines.append((number, f"{where}: {shown_key} -> MX (empty "
                                      "value)"))
                continue
            route = parse_route(value, brackets=self.esmtp)
            # A relay never holds a space or "|"; one that does is a
            # mistyped credentials line, and is cut there (its "password"
            # is never shown).
            relay = _safe_key(route.relay)
            item["relay"], item["port"] = escape(relay), route.port
            text = f"{where}: {shown_key} -> {show(relay)} port " \
                f"{route.port}"
            if relay != route.relay:
                worst = _worse(worst, "warn")
                text += " (the relay holds a space or '|': no such host; " \
                    "credentials need a user and a password)"
            if route.port == 0:
                worst = _worse(worst, "warn")
                text += " (port 0: every connection fails)"
            elif route.port == 465 and self.esmtp:
                text += " (SMTPS: implicit TLS)"
            if route.has_credentials:
                has_secret = True
                dialect = self.dialect(value)
                item["credentials"] = {"dialect": dialect,
                                       "user": escape(route.user),
                                       "used": self.esmtp}
                text += f", AUTH as {show(route.user)} ({dialect} syntax)"
                if not self.esmtp:
                    text += ", ignored under noesmtp"
                else:
                    self.credentials.append((where, name, route))
            lines.append((number, text))
        for _, _, level in ignored:
            worst = _worse(worst, level)
        count = len(routes)
        summary = _entries(count)
        st = self.stat("control/" + name)
        if has_secret and st is not None and st.st_mode & 0o004:
            worst = _worse(worst, "warn")
            notes = notes + [f"holds passwords and every user can read it "
                             f"({owner_mode(st)}): chmod 640, group qmail"]
        self.control(name, worst, summary, True, value=count,
                     ignored=[(n, t) for n, t, _ in ignored], lines=lines,
                     notes=notes, user_readable=readable)

    def check_bindings(self):
        fd = self.home_fd
        present, data, kind, detail, readable, notes = \
            self.read_table_file("domainbindings")
        catch_all = False
        if data is None:
            self.control("domainbindings", kind, detail, present,
                         notes=notes, user_readable=readable)
        else:
            effective, ignored, _ = self.table("domainbindings", data)
            worst = kind
            lines = []
            for number, where, key, value in effective:
                catch_all = catch_all or not key
                label = show(_safe_key(key)) if key else \
                    "(empty key: every other sender)"
                level, text = self.address(value, b"control/domainbindings",
                                           "these senders' deliveries")
                worst = _worse(worst, level)
                lines.append((number, f"{where}: {label} -> {text}"))
            for _, _, level in ignored:
                worst = _worse(worst, level)
            self.control("domainbindings", worst,
                         _entries(len(effective)), True,
                         value=len(effective),
                         ignored=[(n, t) for n, t, _ in ignored],
                         lines=lines, notes=notes, user_readable=readable)
        st, raw, error = self.raw("outgoingip")
        if st is None and error is None:
            self.control("outgoingip", "ok", "absent: the system picks the "
                         "source address", False, default=True)
            return
        kind, detail, readable, notes = self.present_line("outgoingip", st,
                                                          error)
        if error is not None:
            self.control("outgoingip", kind, detail, True, notes=notes,
                         user_readable=readable)
            return
        value = first_line(fd, "outgoingip")
        if catch_all:
            self.control("outgoingip", "ok", f"{show(value)}, never read: "
                         "domainbindings has an empty key", True,
                         value=escape(value), read=False,
                         user_readable=readable)
            return
        level, text = self.address(
            value, b"control/outgoingip",
            "the deliveries of every sender no domainbindings line matches"
            if present else "every delivery")
        self.control("outgoingip", _worse(kind, level), text, True,
                     value=escape(value),
                     notes=notes, user_readable=readable)

    def address(self, value, file, whom):
        """(kind, text) for an address to bind, as binding._address sees
        it, and whether bind() takes it."""
        if not value:
            return "ok", "empty: the system picks the source address"
        ip = parse_ipv4(value)
        if ip is None:
            return "bad", (f"{show(value)} is not a dotted quad: qmail-"
                           f"remote defers {whom} (invalid ipaddr "
                           f"in {file.decode()})")
        if ip == b"\0\0\0\0":
            return "ok", "0.0.0.0: the system picks the source address"
        source = Source(ip, file)
        self.bound.append(source.text)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            source.bind(sock)
        except OSError as exc:
            return "bad", (f"{show(value)}: bind() fails ({_why(exc)}): "
                           f"qmail-remote defers {whom} (Unable to "
                           "bind)")
        finally:
            sock.close()
        return "ok", f"{show(value)} (bind() works)"

    def check_helohostbyip(self):
        present, data, kind, detail, readable, notes = \
            self.read_table_file("helohostbyip")
        if data is None:
            self.control("helohostbyip", kind, detail, present, notes=notes,
                         user_readable=readable)
            return
        effective, ignored, _ = self.table("helohostbyip", data)
        worst = kind
        lines = []
        for number, where, key, value in effective:
            text = f"{where}: {show(key)} -> " + \
                (show(value) if value else "(empty: helohost kept)")
            if key not in self.bound:
                text += " (never used: no file binds this address)"
            lines.append((number, text))
        for _, _, level in ignored:
            worst = _worse(worst, level)
        self.control("helohostbyip", worst, _entries(len(effective)) +
                     " (read only when an address is bound)", True,
                     value=len(effective),
                     ignored=[(n, t) for n, t, _ in ignored],
                     lines=lines, notes=notes, user_readable=readable)

    def check_preference(self):
        st, data, error = self.raw("addresspreference")
        if st is None and error is None:
            self.control("addresspreference", "ok", "absent: ipv4 (the "
                         "default)", False, value="ipv4", default=True)
            return
        kind, detail, readable, notes = self.present_line(
            "addresspreference", st, error)
        if error is not None:
            self.control("addresspreference", kind, detail, True,
                         notes=notes, user_readable=readable)
            return
        try:
            value = read_preference(self.home_fd)
        except Failure:
            line = first_line(self.home_fd, "addresspreference")
            self.control("addresspreference", "bad", f"{show(line)}: "
                         "qmail-remote defers every delivery (Sorry, control/"
                         "addresspreference must say ipv4, ipv6 or any.)",
                         True, value=escape(line), notes=notes,
                         user_readable=readable)
            return
        self.control("addresspreference", kind, value.decode(), True,
                     value=value.decode(), default=not strip_trailing(
                         data.split(b"\n", 1)[0]),
                     notes=notes, user_readable=readable)

    def check_auth(self):
        st, data, error = self.raw("authmechanisms")
        credentials = bool(self.credentials)
        if st is None and error is None:
            self.control("authmechanisms", "ok", "absent: " + " ".join(
                m.decode() for m in MECHANISMS), False,
                value=[m.decode() for m in MECHANISMS], default=True)
        else:
            # Read only for a route with credentials (auth.credentials_for).
            kind, detail, readable, notes = self.present_line(
                "authmechanisms", st, error, "every delivery through a route "
                "with credentials is deferred (Unable to read control files.)"
                if credentials else "no route has credentials, so it is not "
                "read")
            if not credentials and kind == "bad":
                kind = "warn"
            if error is not None:
                self.control("authmechanisms", kind, detail, True,
                             notes=notes, user_readable=readable)
            else:
                chosen = read_mechanisms(data)
                unknown = sorted({w.upper() for w in data.split()} -
                                 set(MECHANISMS))
                if unknown:
                    notes.append("not a mechanism qmail-remote uses, "
                                 "ignored: " + " ".join(
                                     escape(w) for w in unknown))
                if not chosen:
                    kind = _worse(kind, "bad" if credentials else "warn")
                    detail = "names no mechanism qmail-remote uses: every " \
                        "AUTH fails"
                else:
                    detail = " ".join(m.decode() for m in chosen)
                self.control("authmechanisms", kind, detail, True,
                             value=[m.decode() for m in chosen], notes=notes,
                             user_readable=readable)
        self.plaintext = bool(self.flag(
            "authplaintext", "present: credentials may go without TLS",
            "absent: credentials go only inside TLS (or to a loopback "
            "address)", "every delivery through a route with credentials "
            "is deferred"))

    # TLS ------------------------------------------------------------------

    def check_tls(self):
        import ssl
        fd = self.home_fd
        controls = TlsControls(fd)
        try:
            controls.starter(None, 25)      # reads the TLS control files
        except Failure:
            # Some file cannot be read, and qmail-remote defers every ESMTP
            # delivery; the lines below say which.  The values are then
            # taken one by one, as TlsControls reads them.
            controls = _TlsValues(fd)
        self.check_tlsverify(controls)
        # tlsreport
        self.flag("tlsreport", "present: a K report after TLS names the "
                  "version and cipher", "absent")
        # clientcert.pem
        self.check_clientcert(controls)
        # tlsclientciphers
        st, data, error = self.raw("tlsclientciphers")
        if st is None and error is None:
            self.control("tlsclientciphers", "ok", "absent: DEFAULT (the "
                         "system policy)", False, value=None, default=True)
        else:
            kind, detail, readable, notes = self.present_line(
                "tlsclientciphers", st, error)
            ciphers = controls.ciphers
            if error is not None:
                pass
            elif not ciphers:
                detail = "empty: DEFAULT (the system policy)"
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                try:
                    ctx.set_ciphers(ciphers)
                    older = [c for c in ctx.get_ciphers()
                             if c.get("protocol") != "TLSv1.3"]
                    detail = show(ciphers.encode("ascii", "replace")) + \
                        f" ({len(older)} ciphers for TLS 1.2 and below; " \
                        "TLS 1.3 keeps its own suites)"
                except ValueError as exc:
                    kind = "bad"
                    detail = (f"{show(ciphers.encode('ascii', 'replace'))}: "
                              f"{escape(error_reason(exc))}: every TLS "
                              "delivery is deferred (TLS error initializing "
                              "ctx)")
                except ssl.SSLError as exc:
                    kind = "bad"
                    detail = (f"{show(ciphers.encode('ascii', 'replace'))}: "
                              f"{escape(error_reason(exc))}: every TLS "
                              "delivery is deferred (TLS unable to use "
                              "control/tlsclientciphers)")
            self.control("tlsclientciphers", kind, detail, True,
                         value=ciphers, notes=notes, user_readable=readable)
        self.check_tlshosts(controls)

    def check_tlsverify(self, controls):
        import ssl
        st, data, error = self.raw("tlsverify")
        if st is None and error is None:
            self.control("tlsverify", "ok", "absent: opportunistic TLS with "
                         "hosts that have no tlshosts/ file", False,
                         value=None, default=True)
            return
        kind, detail, readable, notes = self.present_line("tlsverify", st,
                                                          error)
        if error is not None:
            self.control("tlsverify", kind, detail, True, notes=notes,
                         user_readable=readable)
            return
        where = controls.verify_ca
        label = where or "the system CA store"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        must = ": TLS is mandatory and verified with every named host"
        try:
            if where is None:
                ctx.set_default_verify_paths()
                detail = "the system CA store" + must
                paths = ssl.get_default_verify_paths()
                notes.append(f"{ctx.cert_store_stats()['x509_ca']} CA "
                             f"certificates loaded from {paths.cafile}, "
                             f"and {paths.capath} as a CA directory")
            else:
                path = self.path(where)
                is_dir = os.path.isdir(path)
                if is_dir:
                    ctx.load_verify_locations(capath=path)
                    detail = f"CA directory {show(os.fsencode(where))}" + must
                    names = os.listdir(path)
                    hashed = [n for n in names
                              if re.fullmatch(r"[0-9a-f]{8}\.r?\d+", n)]
                    notes.append(f"{len(hashed)} subject-hash names (of "
                                 f"{len(names)} entries)")
                    if not hashed:
                        kind = "bad"
                        notes.append("no subject-hash names (openssl rehash"
                                     "): no certificate verifies, every "
                                     "TLS delivery to a named host is "
                                     "deferred")
                else:
                    _regular(path)
                    ctx.load_verify_locations(cafile=path)
                    detail = f"CA file {show(os.fsencode(where))}" + must
                    kind = _worse(kind, self.cert_file(
                        "tlsverify: " + where, path, notes))
                may, note = self.user_access(os.stat(path),
                                             "rx" if is_dir else "r")
                if may is False:
                    kind = "bad"
                    notes.append(note + ": every TLS delivery to a named "
                                 "host is deferred")
        except (OSError, ValueError, ssl.SSLError) as exc:
            kind = "bad"
            detail = (f"{escape(os.fsencode(label))}: "
                      f"{escape(error_reason(exc))}: every delivery to a "
                      f"named host is deferred (TLS unable to load "
                      f"{escape(os.fsencode(label))})")
        self.control("tlsverify", kind, detail, True, value=where,
                     notes=notes, user_readable=readable)

    def path(self, where):
        """A TLS path as qmail-remote opens it (relative: from the home)."""
        if os.path.isabs(where):
            return where
        return "/proc/self/fd/%d/%s" % (self.home_fd, where)

    def cert_file(self, label, path, notes):
        """Decode the certificates of a PEM file into *notes*; the worst
        kind for their expiry."""
        with open(path, "rb") as handle:
            data = handle.read(1 << 22)
        certs = decode_certs(data)
        if not certs:
            notes.append("no PEM certificate in it")
            return "bad"
        worst = "ok"
        for subject, when, text in certs:
            days = (when - self.now) // _DAY
            self.certificates.append({
                "file": label, "subject": subject, "not_after": text,
                "not_after_epoch": when, "days_left": days})
            if when <= self.now:
                worst = _worse(worst, "bad")
                state = "EXPIRED"
            elif days < WARN_DAYS:
                worst = _worse(worst, "warn")
                state = f"expires in {days} days"
            else:
                state = f"{days} days left"
            notes.append(f"{subject}: not after "
                         f"{time.strftime('%Y-%m-%d', time.gmtime(when))} "
                         f"({state})")
        return worst

    def check_clientcert(self, controls):
        import ssl
        st, data, error = self.raw("clientcert.pem")
        if st is None and error is None:
            self.control("clientcert.pem", "ok", "absent: no client "
                         "certificate", False, default=True)
            return
        kind, detail, readable, notes = self.present_line(
            "clientcert.pem", st, error, "every TLS delivery is deferred "
            "(TLS unable to load control/clientcert.pem)")
        if error is not None:
            self.control("clientcert.pem", kind, detail, True, notes=notes,
                         user_readable=readable)
            return
        if not stat.S_ISREG(st.st_mode):
            self.control("clientcert.pem", "bad", "not a regular file: "
                         "every TLS delivery is deferred, or waits for ever "
                         "on a FIFO", True, notes=notes,
                         user_readable=readable)
            return
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_cert_chain(self.path("control/clientcert.pem"))
        except (OSError, ValueError, ssl.SSLError) as exc:
            self.control("clientcert.pem", "bad", escape(error_reason(exc)) +
                         ": every TLS delivery is deferred (TLS unable to "
                         "load control/clientcert.pem)", True, notes=notes,
                         user_readable=readable)
            return
        notes.append("certificate and key load; the key matches")
        kind = _worse(kind, self.cert_file(
            "control/clientcert.pem", self.path("control/clientcert.pem"),
            notes))
        if st.st_mode & 0o004:
            kind = _worse(kind, "warn")
            notes.append(f"holds a private key and every user can read it "
                         f"({owner_mode(st)})")
        self.control("clientcert.pem", kind, "sent when a server asks",
                     True, value=True, notes=notes, user_readable=readable)

    def check_tlshosts(self, controls):
        import ssl
        for folder in ("tlshosts", "notlshosts"):
            name = folder + "/"
            try:
                st = self.stat("control/" + folder)
            except OSError as exc:
                self.control(name, "bad", f"cannot be looked at "
                             f"({_why(exc)}): qmail-remote defers every "
                             "delivery to a named host", True)
                continue
            if st is None:
                self.control(name, "ok", "absent", False, value=[],
                             default=True)
                continue
            if not stat.S_ISDIR(st.st_mode):
                whom = "every ESMTP delivery" if folder == "tlshosts" \
                    else "every delivery to a named host"
                self.control(name, "bad", "not a directory: every look-up "
                             f"in it fails, and qmail-remote defers {whom} "
                             "(Unable to read control files.)", True)
                continue
            if self.user.may(st, "x") is False:
                self.control(name, "bad", f"{self.user.name} cannot search "
                             f"it ({owner_mode(st)}): qmail-remote defers "
                             "every delivery to a named host", True)
                continue
            try:
                entries = sorted(os.listdir(self.path("control/" + folder)))
            except OSError as exc:
                self.control(name, "bad", f"cannot be listed ({_why(exc)})",
                             True)
                continue
            notes = []
            kind = "ok"
            values = []
            for entry in entries:
                shown = escape(os.fsencode(entry))
                if folder == "tlshosts":
                    if entry == "exhaustivelist":
                        notes.append("exhaustivelist: TLS only with hosts "
                                     "that have a .pem here")
                        continue
                    if not entry.endswith(".pem"):
                        notes.append(f"{shown}: not <host>.pem, never read")
                        continue
                    host = entry[:-4]
                else:
                    host = entry
                values.append(escape(os.fsencode(host)))
                sub = []
                if host != host.lower():
                    kind = _worse(kind, "warn")
                    sub.append("has upper case: used only when DNS gives "
                               "the name in exactly this case (name it in "
                               "lower case)")
                if folder == "notlshosts":
                    notes.append(f"{shown}: no TLS with this host")
                    notes.extend("  " + line for line in sub)
                    continue
                path = self.path(f"control/tlshosts/{entry}")
                if not os.path.exists(path):
                    kind = _worse(kind, "warn")
                    notes.append(f"{shown}: a dangling link: qmail-remote "
                                 "takes it as absent")
                    values.pop()
                    continue
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                try:
                    _regular(path)
                    ctx.load_verify_locations(cafile=path)
                    level = self.cert_file("control/tlshosts/" + entry,
                                           path, sub)
                except (OSError, ValueError, ssl.SSLError) as exc:
                    level = "bad"
                    sub.append(f"{escape(error_reason(exc))}: deliveries to "
                               f"{escape(os.fsencode(host))} are deferred "
                               "(TLS unable to load)")
                try:
                    fst = os.stat(path)
                    may, why = self.user_access(fst)
                    if may is False:
                        level = "bad"
                        sub.append(why + ": deliveries to " +
                                   escape(os.fsencode(host)) +
                                   " are deferred")
                except OSError:
                    pass
                kind = _worse(kind, level)
                notes.append(f"{shown}: TLS mandatory, verified with these "
                             "CA certificates")
                notes.extend("  " + line for line in sub)
            many = "" if len(values) == 1 else "s"
            if folder == "tlshosts":
                detail = f"{len(values)} host file{many}" + \
                    (", exhaustivelist" if controls.exhaustive else "")
            else:
                detail = f"{len(values)} host{many} without TLS"
            self.control(name, kind, detail, True, value=values, notes=notes)
        self.check_credentials_tls(controls)

    def check_credentials_tls(self, controls):
        """Credentials that can never be sent: no TLS with their relay."""
        for where, name, route in self.credentials:
            relay = route.relay
            literal = mx.ip_literal(relay) is not None or relay[:1] == b"["
            try:
                starter = controls.starter(None if literal else relay,
                                           route.port)
            except Failure:
                continue  # the TLS files' own lines say FAIL
            loopback = relay.startswith((b"127.", b"[127.", b"[::1]",
                                         b"[IPv6:::1]"))
            if starter is None and not self.plaintext and not loopback:
                self.status("warn", f"AUTH to {show(relay)}",
                            f"control/{name} {where}: no TLS with this relay "
                            "(notlshosts/ or exhaustivelist) and no control/"
                            "authplaintext: the credentials are never sent "
                            "and its deliveries are deferred, unless it "
                            "resolves to a loopback address")

    # tcpto ----------------------------------------------------------------

    def check_tcpto(self):
        self.section("tcpto")
        doc = {}
        self.out.record("tcpto", doc)
        try:
            lock_st = self.stat("queue/lock")
        except OSError:
            lock_st = None
        lock_fd = None
        if lock_st is not None and stat.S_ISDIR(lock_st.st_mode):
            try:
                lock_fd = os.open("queue/lock", os.O_PATH | os.O_DIRECTORY |
                                  os.O_CLOEXEC, dir_fd=self.home_fd)
            except OSError:
                lock_fd = None
        try:
            for name, table, expected in (("tcpto", TCPTO, 1024),
                                          ("tcpto6", TCPTO6, 2048)):
                self.guard("queue/lock/" + name, lambda n=name, t=table,
                           e=expected: self.tcpto_file(doc, lock_fd, lock_st,
                                                       n, t, e))
        finally:
            if lock_fd is not None:
                os.close(lock_fd)

    def tcpto_file(self, doc, lock_fd, lock_st, name, table, expected):
        path = "queue/lock/" + name
        info = doc[name] = {"path": path, "present": False, "bytes": None,
                            "regular": None, "user_readable": None,
                            "user_writable": None, "records": None,
                            "skipped_now": None}
        try:
            st = self.stat(path)
        except OSError as exc:
            self.status("warn", path, f"cannot be looked at ({_why(exc)})")
            return
        if name == "tcpto6" and not self.esmtp:
            info["present"] = st is not None
            self.status("ok", path, ("present" if st is not None else
                                     "absent") + ", not used under "
                        "control/noesmtp (IPv4 only)")
            return
        if st is None:
            if name == "tcpto":
                self.status("warn", path, "absent: qmail-remote does not "
                            "remember IPv4 timeouts (qmail's setup makes it:"
                            " 1024 zero bytes, owner qmailr, group qmail, "
                            "mode 0644)")
                self.tcpto_missing = True
                return
            if self.tcpto_missing:
                self.status("warn", path, "absent, and it is created only "
                            "next to queue/lock/tcpto, which is absent too")
                return
            can = lock_st is not None and self.user.may(lock_st, "wx")
            if can is False:
                self.status("warn", path, "absent, and qmail-remote's user "
                            f"cannot create it: {self.user.name} cannot "
                            f"write queue/lock ({owner_mode(lock_st)}); "
                            "IPv6 timeouts are not remembered",
                            [f"make it: cd {self.home} && head -c 2048 "
                             f"/dev/zero > {path} && chown --reference="
                             f"queue/lock/tcpto {path} && chmod --reference="
                             f"queue/lock/tcpto {path}"])
            else:
                self.status("ok", path, "absent: qmail-remote creates it at "
                            "the first IPv6 timeout")
            return
        info["present"] = True
        info["bytes"] = st.st_size
        info["regular"] = stat.S_ISREG(st.st_mode)
        kind = "ok"
        notes = []
        if not stat.S_ISREG(st.st_mode):
            self.status("warn", path, "not a regular file: qmail-remote "
                        "does not remember timeouts")
            return
        size = st.st_size
        record = table.record
        if size < record:
            kind = "warn"
            notes.append(f"shorter than one record ({record} bytes): "
                         "disabled")
        elif size % record:
            kind = "warn"
            notes.append(f"not a whole number of {record}-byte records: the "
                         "last bytes are ignored")
        if size > table.max_bytes:
            kind = "warn"
            notes.append(f"longer than {table.max_bytes} bytes: the rest is "
                         "ignored")
        elif size != expected and size >= record:
            notes.append(f"{size // record} records (qmail's size is "
                         f"{expected} bytes, {expected // record} records)")
        readable = self.user.may(st, "r")
        writable = self.user.may(st, "w")
        info["user_readable"], info["user_writable"] = readable, writable
        if readable is False or writable is False:
            kind = "warn"
            verb = "read and write" if readable is writable else \
                "read" if readable is False else "write"
            notes.append(f"{self.user.name} cannot {verb} it "
                         f"({owner_mode(st)}): qmail-remote does not "
                         "remember timeouts")
        if lock_fd is not None:
            try:
                data, _ = read_table(lock_fd, name, table.max_bytes)
            except Exception as exc:   # tools.tcpto._Error: an OSError
                notes.append("cannot be read: " + _why(getattr(exc, "exc",
                                                               exc)))
                kind = "warn"
            else:
                records = table_records(table, data)
                timed = [r for r in records if r[2] >= 1]
                skipped = [r for r in timed
                           if skip_verdict(records, r[1], self.now)[0] !=
                           "no"]
                info["records"] = len(timed)
                info["skipped_now"] = len(skipped)
                notes.append(f"{len(timed)} addresses with recent timeouts, "
                             f"{len(skipped)} skipped now (qmailremote "
                             "tcpto lists them)")
        self.status(kind, path, f"{size} bytes, {owner_mode(st)}", notes)

    # resolv.conf ----------------------------------------------------------

    def check_resolver(self):
        self.section("DNS")
        path = RESOLV_CONF
        resolver = mx.Resolver.from_system(path)
        try:
            data = read_nonblocking(path)
            present, error = True, None
        except FileNotFoundError:
            data, present, error = b"", False, None
        except OSError as exc:
            data, present, error = b"", True, _why(exc)
        listed = [line.split() for line in data.splitlines()]
        listed = [w for w in listed if len(w) > 1 and w[0] == b"nameserver"]
        servers = [host for host, _ in resolver.nameservers]
        default = not any(mx.is_address(words[1]) for words in listed)
        notes = []
        kind = "ok"
        if error is not None:
            kind = "warn"
            notes.append(f"cannot be read ({error}): the defaults apply")
        elif not present:
            kind = "warn"
            notes.append("absent: the defaults apply")
        if default:
            notes.append("no usable nameserver line: 127.0.0.1 (glibc's "
                         "default)")
        if len(listed) > 3:
            notes.append(f"{len(listed)} nameserver lines: only the first "
                         "3 usable ones count")
        detail = (f"name servers {', '.join(servers)}; timeout "
                  f"{resolver.timeout} s, attempts {resolver.attempts}")
        self.status(kind, path, detail, notes)
        self.out.record("resolver", {
            "path": path, "present": present, "nameservers": servers,
            "default_nameserver": default, "timeout": resolver.timeout,
            "attempts": resolver.attempts})

    # the program ----------------------------------------------------------

    def check_program(self):
        self.section("qmail-remote")
        from .. import _kernel
        compiled = bool(_kernel.COMPILED)
        pure_env = bool(os.environ.get("QMAILREMOTE_NO_EXTENSIONS"))
        module = "qmailremote._fast" if compiled else "qmailremote._fast_py"
        self.out.record("kernel", {"compiled": compiled, "module": module,
                                   "no_extensions": pure_env})
        if compiled:
            self.status("ok", "kernel", f"compiled ({module})")
        else:
            why = "QMAILREMOTE_NO_EXTENSIONS is set" if pure_env else \
                "the compiled extension does not import"
            self.status("warn", "kernel", f"pure Python ({module}): {why}; "
                        "large messages take several times longer")
        command = installed_command()
        self.check_home_bin(command)
        self.check_startup(command)

    def check_home_bin(self, command):
        home, _ = home_of(self.args)
        path = os.path.join(home, "bin", "qmail-remote")
        if not os.path.lexists(path):
            self.status("warn", path, "absent: qmail runs qmail-remote "
                        "through its PATH, which begins with this directory")
            return
        real = os.path.realpath(path)
        if command is not None and real == os.path.realpath(command):
            self.status("ok", path, f"is this installation's ({real})")
        else:
            self.status("warn", path, f"is {real}, not this installation's "
                        "qmail-remote" + (f" ({command})" if command else ""))

    def check_startup(self, command):
        doc = {"command": command, "runs": 0, "median_ms": None,
               "python_median_ms": None, "output_ok": None, "skipped": None}
        self.out.record("startup", doc)
        if command is None:
            doc["skipped"] = "qmail-remote is not installed"
            self.status("warn", "start-up", "not timed: no installed "
                        "qmail-remote next to this Python or on PATH")
            return
        if self.args.no_timing:
            doc["skipped"] = "--no-timing"
            self.status("ok", "start-up", "not timed (--no-timing)")
            return
        runs = max(1, self.args.runs)
        ours, python, outputs = [], [], set()
        baseline = [sys.executable, "-I", "-S", "-c", "pass"]
        for _ in range(runs):
            started = time.perf_counter()
            try:
                done = subprocess.run([command], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, timeout=30)
            except (OSError, subprocess.SubprocessError) as exc:
                doc["skipped"] = "cannot run: " + _why(exc)
                self.status("bad", "start-up", f"{command} cannot run "
                            f"({_why(exc)})")
                return
            ours.append(time.perf_counter() - started)
            outputs.add((done.returncode, done.stdout, done.stderr))
            started = time.perf_counter()
            subprocess.run(baseline, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
            python.append(time.perf_counter() - started)
        doc["runs"] = runs
        doc["median_ms"] = round(_median(ours) * 1000, 1)
        doc["python_median_ms"] = round(_median(python) * 1000, 1)
        good = outputs == {(0, USAGE_OUTPUT, b"")}
        doc["output_ok"] = good
        detail = (f"{doc['median_ms']:.1f} ms median of {runs} ({command}, "
                  f"too few arguments); python -I -S -c pass: "
                  f"{doc['python_median_ms']:.1f} ms")
        if good:
            self.status("ok", "start-up", detail)
        else:
            status, stdout, stderr = sorted(outputs)[0]
            self.status("bad", "start-up", detail, [
                f"expected exit status 0 and {show(USAGE_OUTPUT)}; got "
                f"{status} and {show(stdout[:200])}" +
                (f", stderr {show(stderr[:200])}" if stderr else "")])

    # verdict --------------------------------------------------------------

    def verdict(self):
        failures = sum(1 for c in self.checks if c["status"] == "bad")
        warnings = sum(1 for c in self.checks if c["status"] == "warn")
        self.out.record("checks", self.checks)
        self.out.record("certificates", self.certificates)
        plural = "s" if warnings != 1 else ""
        if failures:
            text = (f"FAIL: {failures} problem{'s' if failures != 1 else ''}"
                    f" would make qmail-remote defer deliveries; {warnings} "
                    f"warning{plural}")
        else:
            text = f"ok: a delivery could work; {warnings} warning{plural}"
        self.out.record("verdict", {"ok": not failures, "failures": failures,
                                    "warnings": warnings, "text": text})
        self.out.line()
        self.out.line("verdict: " + text, "bad" if failures else "ok")
        return 1 if failures else 0


class _TlsValues:
    """TlsControls' values one file at a time, when one cannot be read.

    Each is what TlsControls reads; a file that fails counts as absent
    here (its own line says FAIL).  starter() is unavailable: qmail-remote
    gets no further either.
    """

    def __init__(self, fd):
        self.failed = True
        self.exhaustive = _quiet(lambda: control_exists(
            fd, "tlshosts/exhaustivelist"), False)
        verify = _quiet(lambda: first_line(fd, "tlsverify"), None)
        self.verify = verify is not None
        self.verify_ca = os.fsdecode(verify) if verify else None
        self.report = _quiet(lambda: control_exists(fd, "tlsreport"), False)
        self.clientcert = _quiet(lambda: control_exists(fd, "clientcert.pem"),
                                 False)
        ciphers = _quiet(lambda: read_control(fd, "tlsclientciphers"), None)
        self.ciphers = None
        if ciphers:
            self.ciphers = b":".join(
                line for line in ciphers.split(b"\n") if line
            ).decode("ascii", "replace")

    def starter(self, name, port):
        raise Failure(None)


def _regular(path):
    """Raise OSError unless *path* is a regular file: OpenSSL would wait
    for ever on a FIFO."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")


def _quiet(function, default):
    try:
        return function()
    except Failure:
        return default


_ORDER = {"ok": 0, "warn": 1, "bad": 2}


def _worse(a, b):
    return a if _ORDER[a] >= _ORDER[b] else b


def _entries(count):
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def _median(values):
    values = sorted(values)
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2


def run(args, out):
    return Checker(out, args).run()
