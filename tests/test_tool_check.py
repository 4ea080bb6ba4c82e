"""``qmailremote check``: the installation as qmail will run qmail-remote.

Each test builds a qmail home of its own (in a 0755 directory under /tmp,
so that access by another user can be judged by the mode bits) and runs
the check in-process.  Golden texts are compared whole, with only what
must vary replaced: the home's path (HOME), the owner of the files
(OWNER), certificate dates (DATE) and the kernel line, which depends on
QMAILREMOTE_NO_EXTENSIONS.
"""

import datetime
import grp
import json
import os
import pwd
import re
import shutil
import stat
import sys
import tempfile

import pytest

from qmailremote import _kernel, tools
from qmailremote.tools import check

PASSWORDS = (b"Pa55-w0rd-sagredo", b"pw-s/qmail-|:;x", b"indimail-pw-77",
             b"authsenders-pw-42", b"shadowed-pw-13", b"nocolon-pw-99")


def _owner():
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    return f"{user}:{group}"


OWNER = _owner()
KERNEL = ("  ok      kernel: compiled (qmailremote._fast)\n"
          if _kernel.COMPILED else
          "  warning kernel: pure Python (qmailremote._fast_py): "
          "QMAILREMOTE_NO_EXTENSIONS is set; large messages take several "
          "times longer\n")
KERNEL_WARNINGS = 0 if _kernel.COMPILED else 1


@pytest.fixture
def home(monkeypatch):
    """A minimal qmail home: control/me, a 1024-byte tcpto, resolv.conf."""
    path = tempfile.mkdtemp(prefix="qmailremote-check-")
    os.chmod(path, 0o755)
    for sub in ("control", "queue/lock"):
        os.makedirs(os.path.join(path, sub))
    write(path, "control/me", b"mx.example.com\n")
    write(path, "queue/lock/tcpto", bytes(1024))
    write(path, "resolv.conf", b"# test\nnameserver 192.0.2.53\n"
          b"nameserver ::1\noptions timeout:3 attempts:4\n")
    monkeypatch.setattr(check, "RESOLV_CONF",
                        os.path.join(path, "resolv.conf"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write(home, name, data, mode=0o644):
    path = os.path.join(home, name)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return path


def run(capsys, home, *argv, user="root", timing=False):
    args = ["--home", home, "check", "--user", user]
    if not timing:
        args.append("--no-timing")
    with pytest.raises(SystemExit) as exc:
        tools.main(args + list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err == ""
    assert "could not be checked" not in captured.out
    return exc.value.code, captured.out


def normal(text, home):
    text = text.replace(home, "HOME").replace(OWNER, "OWNER")
    text = re.sub(r"\d{4}-\d\d-\d\d", "DATE", text)
    return text.replace(KERNEL, "KERNEL\n")


def root_line():
    return (f"  ok      user root ({check.User('root').describe()}): can enter"
            " the home and control/\n")


def tail(warnings, failures=0):
    warnings += 1 + KERNEL_WARNINGS     # HOME/bin/qmail-remote, the kernel
    plural = "" if warnings == 1 else "s"
    if failures:
        verdict = (f"FAIL: {failures} problem{'s' if failures > 1 else ''} "
                   "would make qmail-remote defer deliveries; "
                   f"{warnings} warning{plural}")
    else:
        verdict = f"ok: a delivery could work; {warnings} warning{plural}"
    return ("\n"
            "qmail-remote\n"
            "KERNEL\n"
            "  warning HOME/bin/qmail-remote: absent: qmail runs qmail-remote "
            "through its PATH, which begins with this directory\n"
            "  ok      start-up: not timed (--no-timing)\n"
            "\n"
            f"verdict: {verdict}\n")


DNS = ("\n"
       "DNS\n"
       "  ok      HOME/resolv.conf: name servers 192.0.2.53, ::1; timeout 3 s,"
       " attempts 4\n")

TCPTO = ("\n"
         "tcpto\n"
         "  ok      queue/lock/tcpto: 1024 bytes, OWNER 0644\n"
         "            0 addresses with recent timeouts, 0 skipped now "
         "(qmailremote tcpto lists them)\n"
         "  ok      queue/lock/tcpto6: absent: qmail-remote creates it at the "
         "first IPv6 timeout\n")

TLS_ABSENT = (
    "\n"
    "TLS\n"
    "  ok      control/tlsverify: absent: opportunistic TLS with hosts that "
    "have no tlshosts/ file\n"
    "  ok      control/tlsreport: absent\n"
    "  ok      control/clientcert.pem: absent: no client certificate\n"
    "  ok      control/tlsclientciphers: absent: DEFAULT (the system "
    "policy)\n"
    "  ok      control/tlshosts/: absent\n"
    "  ok      control/notlshosts/: absent\n")


def test_minimal_home_golden(capsys, home):
    status, out = run(capsys, home)
    assert status == 0
    assert normal(out, home) == (
        "Home\n"
        "  ok      HOME (from --home): opens\n" + root_line() +
        "\n"
        "Control files\n"
        "  ok      control/me: \"mx.example.com\"\n"
        "  ok      control/helohost: absent: the EHLO/HELO name is "
        "control/me's, \"mx.example.com\"\n"
        "  ok      control/timeoutremote: absent: 1200 s (the default)\n"
        "  ok      control/timeoutconnect: absent: 60 s (the default)\n"
        "  ok      control/noesmtp: absent: the ESMTP dialogue (STARTTLS, "
        "AUTH, IPv6, ...)\n"
        "  ok      control/smtproutes: absent\n"
        "\n"
        "ESMTP\n"
        "  ok      control/nochunking: absent: BDAT where the server offers "
        "CHUNKING\n"
        "  ok      control/authsenders: absent\n"
        "  ok      control/domainbindings: absent\n"
        "  ok      control/outgoingip: absent: the system picks the source "
        "address\n"
        "  ok      control/helohostbyip: absent\n"
        "  ok      control/addresspreference: absent: ipv4 (the default)\n"
        "  ok      control/authmechanisms: absent: SCRAM-SHA-256 CRAM-MD5 "
        "PLAIN LOGIN\n"
        "  ok      control/authplaintext: absent: credentials go only inside "
        "TLS (or to a loopback address)\n" + TLS_ABSENT + TCPTO + DNS +
        tail(0))


SMTPROUTES = (
    b"example.com:relay.example.net\n"
    b"# a comment\n"
    b"\n"
    b"   \t\n"
    b"nocolon-host|user|" + PASSWORDS[5] + b"\n"
    b".example.org:[IPv6:2001:db8::1]:2525\n"
    b"example.com:relay2.example.net:587|alice|" + PASSWORDS[0] + b"\n"
    b"first\0x.com:smarthost:26\n"
    b"\0starts-with-nul:relay\n"
    b":relay.isp.net:587 bob " + PASSWORDS[2] + b" extra\n"
    b"sq.example:sq.relay;465|carol|" + PASSWORDS[1] + b"\n"
    b"EXAMPLE.NET:old.relay:25|dave|" + PASSWORDS[4] + b"\n"
    b"example.net:\n"
    b"zero.example:relay0:0\n")


def test_smtproutes_golden(capsys, home):
    write(home, "control/smtproutes", SMTPROUTES, 0o640)
    write(home, "control/timeoutremote", b"30s\n")
    write(home, "control/timeoutconnect", b"soon\n")
    write(home, "control/helohost", b"helo.example.com  \t\n")
    status, out = run(capsys, home)
    assert status == 0
    text = normal(out, home)
    start = text.index("Control files")
    end = text.index("\nESMTP")
    assert text[start:end] == (
        "Control files\n"
        "  ok      control/me: \"mx.example.com\"\n"
        "  ok      control/helohost: \"helo.example.com\"\n"
        "  ok      control/timeoutremote: 30 s\n"
        "            \"30s\" is read as 30 (the digits at its start)\n"
        "  warning control/timeoutconnect: \"soon\" does not start with a "
        "digit: 60 s (the default)\n"
        "  ok      control/noesmtp: absent: the ESMTP dialogue (STARTTLS, "
        "AUTH, IPv6, ...)\n"
        "  warning control/smtproutes: 7 entries\n"
        "            line 1: key \"example.com\" is shadowed by line 7\n"
        "            line 2: a comment (#), ignored\n"
        "            line 3: empty, ignored\n"
        "            line 4: empty, ignored\n"
        "            line 5: no ':', ignored\n"
        "            line 6: \".example.org\" -> \"[IPv6:2001:db8::1]\" port "
        "2525\n"
        "            line 7: \"example.com\" -> \"relay2.example.net\" port "
        "587, AUTH as \"alice\" (sagredo syntax)\n"
        "            line 8: a NUL byte splits it into 2 entries\n"
        "            line 8 (part 1): no ':', ignored\n"
        "            line 8 (part 2): \"x.com\" -> \"smarthost\" port 26\n"
        "            line 9: starts with a NUL byte, ignored whole\n"
        "            line 10: (empty key: every other host) -> "
        "\"relay.isp.net\" port 587, AUTH as \"bob\" (indimail syntax)\n"
        "            line 11: \"sq.example\" -> \"sq.relay\" port 465 (SMTPS: "
        "implicit TLS), AUTH as \"carol\" (s/qmail syntax)\n"
        "            line 12: key \"EXAMPLE.NET\" is shadowed by line 13\n"
        "            line 13: \"example.net\" -> MX (empty value)\n"
        "            line 14: \"zero.example\" -> \"relay0\" port 0 (port 0: "
        "every connection fails)\n")
    assert tail(2) in text


def test_noesmtp_golden(capsys, home):
    write(home, "control/smtproutes", SMTPROUTES, 0o600)
    write(home, "control/noesmtp", b"")
    write(home, "control/addresspreference", b"bogus\n")   # not read
    write(home, "control/outgoingip", b"not-an-address\n")  # not read
    os.mkdir(os.path.join(home, "control", "tlshosts"))
    status, out = run(capsys, home)
    assert status == 0
    text = normal(out, home)
    assert "  ok      control/noesmtp: present: netqmail 1.06's dialogue " \
        "(HELO, no extension, IPv4 only); the files under \"Not read under " \
        "control/noesmtp\" are not read\n" in text
    # 1.06 reads the bracketed relay its own way; credentials are ignored.
    assert "line 6: \".example.org\" -> \"[IPv6\" port 2001\n" in text
    assert "AUTH as \"alice\" (sagredo syntax), ignored under noesmtp\n" in \
        text
    start = text.index("Not read under control/noesmtp\n")
    end = text.index("\ntcpto")
    assert text[start:end] == (
        "Not read under control/noesmtp\n"
        "  ok      control/authsenders: absent, not read\n"
        "  ok      control/domainbindings: absent, not read\n"
        "  ok      control/outgoingip: present, not read\n"
        "  ok      control/helohostbyip: absent, not read\n"
        "  ok      control/addresspreference: present, not read\n"
        "  ok      control/authmechanisms: absent, not read\n"
        "  ok      control/authplaintext: absent, not read\n"
        "  ok      control/tlsverify: absent, not read\n"
        "  ok      control/tlsreport: absent, not read\n"
        "  ok      control/clientcert.pem: absent, not read\n"
        "  ok      control/tlsclientciphers: absent, not read\n"
        "  ok      control/tlshosts/: present, not read\n"
        "  ok      control/notlshosts/: absent, not read\n"
        "  ok      control/nochunking: absent, not read\n")
    assert "  ok      queue/lock/tcpto6: absent, not used under " \
        "control/noesmtp (IPv4 only)\n" in text
    assert "ESMTP\n" not in text and "\nTLS\n" not in text


def test_no_password_is_ever_printed(capsys, home):
    write(home, "control/smtproutes", SMTPROUTES, 0o644)
    write(home, "control/authsenders",
          b"@example.com:relay.a:587|erin|" + PASSWORDS[3] + b"\n"
          b"x@y:relay.b:587|erin|" + PASSWORDS[4] + b"\n"
          b"x@y:relay.c:25\n"
          b"bad line with " + PASSWORDS[5] + b"\n"
          b"z@y:relay.d " + PASSWORDS[5] + b"\n"
          b"w@y:relay.e:25|" + PASSWORDS[5] + b"\n")
    for profile in ("esmtp", "noesmtp"):
        if profile == "noesmtp":
            write(home, "control/noesmtp", b"")
        for argv in ((), ("--json",)):
            status, out = run(capsys, home, *argv)
            data = out.encode()
            for password in PASSWORDS:
                assert password not in data, (profile, argv, password)
                assert password.decode() not in json.dumps(out)
            if argv:
                document = json.loads(out)
                users = [r["credentials"]["user"]
                         for r in document["routes"] if r["credentials"]]
                assert users == ["alice", "bob", "carol"]
    # The credentials are still described: route, syntax and user.
    write(home, "control/noesmtp", b"")
    os.unlink(os.path.join(home, "control", "noesmtp"))
    status, out = run(capsys, home)
    assert "line 1: \"@example.com\" -> \"relay.a\" port 587, AUTH as " \
        "\"erin\" (sagredo syntax)" in out
    assert "line 5: \"z@y\" -> \"relay.d...\" port 25 (the relay holds a " \
        "space or '|': no such host; credentials need a user and a " \
        "password)\n" in out
    assert "line 6: \"w@y\" -> \"relay.e\" port 25\n" in out
    assert "holds passwords and every user can read it (OWNER 0644): chmod " \
        "640, group qmail" in normal(out, home)


def test_user_checks_by_mode_bits(capsys, home):
    """As root, --user nobody is judged by owner, group and mode bits."""
    write(home, "control/smtproutes", b"example.com:relay\n", 0o600)
    write(home, "control/helohost", b"helo.example\n", 0o640)
    status, out = run(capsys, home, user="nobody")
    if os.getuid() == pwd.getpwnam("nobody").pw_uid:
        pytest.skip("running as nobody")
    assert status == 1
    text = normal(out, home)
    assert "  ok      user nobody (" in text
    assert "can enter the home and control/\n" in text
    assert ("  FAIL    control/smtproutes: 1 entry\n"
            "            line 1: \"example.com\" -> \"relay\" port 25\n"
            "            nobody cannot read it (OWNER 0600): qmail-remote "
            "defers every delivery (Unable to read control files.)\n") in text
    assert ("  FAIL    control/helohost: \"helo.example\"\n"
            "            nobody cannot read it (OWNER 0640): qmail-remote "
            "defers every delivery (Unable to read control files.)\n") in text
    assert ("  warning queue/lock/tcpto: 1024 bytes, OWNER 0644\n"
            "            nobody cannot write it (OWNER 0644): qmail-remote "
            "does not remember timeouts\n") in text
    assert "  warning queue/lock/tcpto6: absent, and qmail-remote's user " \
        "cannot create it: nobody cannot write queue/lock (OWNER 0755); " \
        "IPv6 timeouts are not remembered\n" in text
    assert "verdict: FAIL: 2 problems would make qmail-remote defer " \
        "deliveries" in text


def test_user_who_cannot_enter_the_home(capsys, home):
    os.chmod(os.path.join(home, "control"), 0o700)
    status, out = run(capsys, home, user="nobody")
    assert status == 1
    assert f"cannot enter {os.path.realpath(home)}/control (" in out
    assert ": qmail-remote defers every delivery\n" in out


def test_user_that_does_not_exist(capsys, home):
    status, out = run(capsys, home, user="no-such-user-qmr")
    assert status == 0
    assert "  warning user no-such-user-qmr: does not exist: access by " \
        "qmail-remote's user is not checked (--user NAME)\n" in out
    assert tail(1) in normal(out, home)


def test_group_bits_apply_to_the_users_groups():
    user = check.User("nobody")
    entry = pwd.getpwnam("nobody")
    other = entry.pw_uid + 1

    def st(uid, gid, mode):
        return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, gid, 0, 0,
                               0, 0))
    assert user.may(st(entry.pw_uid, 0, 0o600), "rw")
    assert not user.may(st(entry.pw_uid, entry.pw_gid, 0o060), "r")  # owner
    assert user.may(st(other, entry.pw_gid, 0o640), "r")
    assert not user.may(st(other, entry.pw_gid, 0o640), "w")
    assert not user.may(st(other, other, 0o640), "r")
    assert user.may(st(other, other, 0o644), "r")
    root = check.User("root")
    assert root.may(st(other, other, 0o000), "rw")
    assert check.User("no-such-user-qmr").may(st(0, 0, 0o777), "r") is None


# -- what makes qmail-remote defer every delivery ---------------------------

@pytest.mark.parametrize("setup, expected", [
    (lambda h: os.unlink(os.path.join(h, "control", "me")),
     "  FAIL    control/me: absent, and so is control/helohost: qmail-remote"
     " defers every delivery (Unable to read control files.)\n"),
    (lambda h: write(h, "control/addresspreference", b"IPv5\n"),
     "  FAIL    control/addresspreference: \"IPv5\": qmail-remote defers "
     "every delivery (Sorry, control/addresspreference must say ipv4, ipv6 "
     "or any.)\n"),
    (lambda h: write(h, "control/outgoingip", b"010.0.0.1\n"),
     "  FAIL    control/outgoingip: \"010.0.0.1\" is not a dotted quad: "
     "qmail-remote defers every delivery (invalid ipaddr in "
     "control/outgoingip)\n"),
    (lambda h: write(h, "control/outgoingip", b"192.0.2.254\n"),
     "  FAIL    control/outgoingip: \"192.0.2.254\": bind() fails (Cannot "
     "assign requested address): qmail-remote defers every delivery "
     "(Unable to bind)\n"),
    (lambda h: os.mkdir(os.path.join(h, "control", "helohost")),
     "  FAIL    control/helohost: cannot be read (Is a directory): "
     "qmail-remote defers every delivery (Unable to read control files.)\n"),
    (lambda h: write(h, "control/timeoutremote", b"4294967291\n"),
     "  FAIL    control/timeoutremote: -5 s: every read and write fails at "
     "once\n"),
    (lambda h: write(h, "control/timeoutconnect", b"0\n"),
     "  FAIL    control/timeoutconnect: 0 s: qmail-remote does not wait for "
     "any connect\n"),
    (lambda h: write(h, "control/timeoutremote", b"4294967296\n"),
     "  FAIL    control/timeoutremote: 0 s: qmail-remote does not wait for "
     "any read and write\n"),
    (lambda h: write(h, "control/tlshosts", b"a file\n"),
     "  FAIL    control/tlshosts/: not a directory: every look-up in it "
     "fails, and qmail-remote defers every ESMTP delivery (Unable to read "
     "control files.)\n"),
    (lambda h: write(h, "control/tlsclientciphers", b"NO-SUCH-CIPHER\n"),
     "  FAIL    control/tlsclientciphers: \"NO-SUCH-CIPHER\": No cipher can "
     "be selected.: every TLS delivery is deferred (TLS unable to use "
     "control/tlsclientciphers)\n"),
])
def test_failures_exit_1(capsys, home, setup, expected):
    setup(home)
    status, out = run(capsys, home)
    assert status == 1
    assert expected in out
    assert out.rstrip("\n").splitlines()[-1].startswith("verdict: FAIL: ")


def test_missing_home(capsys, tmp_path):
    status, out = run(capsys, str(tmp_path / "nowhere"))
    assert status == 1
    assert normal(out, str(tmp_path)).startswith(
        "Home\n"
        "  FAIL    HOME/nowhere (from --home): No such file or directory: "
        "qmail-remote defers every delivery (Unable to switch to home "
        "directory.)\n\nDNS\n")


def test_home_from_the_environment(capsys, home, monkeypatch):
    monkeypatch.setenv("QMAILHOME", home)
    with pytest.raises(SystemExit) as exc:
        tools.main(["check", "--user", "root", "--no-timing"])
    assert exc.value.code == 0
    assert f"  ok      {home} (from $QMAILHOME): opens\n" in \
        capsys.readouterr().out


def test_bindings_golden(capsys, home):
    write(home, "control/domainbindings",
          b"example.com:127.0.0.1\n"
          b".example.org:0.0.0.0\n"
          b"x@y:1.2.3\n"
          b"# comment\n"
          b"z.example:\n")
    write(home, "control/outgoingip", b"127.0.0.1\n")
    write(home, "control/helohostbyip", b"127.0.0.1:local.example\n"
          b"10.9.9.9:never.example\n127.0.0.1:\n")
    status, out = run(capsys, home)
    assert status == 1
    start = out.index("  FAIL    control/domainbindings")
    end = out.index("  ok      control/addresspreference")
    assert out[start:end] == (
        "  FAIL    control/domainbindings: 4 entries\n"
        "            line 1: \"example.com\" -> \"127.0.0.1\" (bind() "
        "works)\n"
        "            line 2: \".example.org\" -> 0.0.0.0: the system picks "
        "the source address\n"
        "            line 3: \"x@y\" -> \"1.2.3\" is not a dotted quad: "
        "qmail-remote defers these senders' deliveries (invalid ipaddr in "
        "control/domainbindings)\n"
        "            line 4: a comment (#), ignored\n"
        "            line 5: \"z.example\" -> empty: the system picks the "
        "source address\n"
        "  ok      control/outgoingip: \"127.0.0.1\" (bind() works)\n"
        "  warning control/helohostbyip: 2 entries (read only when an address"
        " is bound)\n"
        "            line 1: key \"127.0.0.1\" is shadowed by line 3\n"
        "            line 2: \"10.9.9.9\" -> \"never.example\" (never used: "
        "no file binds this address)\n"
        "            line 3: \"127.0.0.1\" -> (empty: helohost kept)\n")


def test_outgoingip_never_read_behind_a_catch_all_binding(capsys, home):
    write(home, "control/domainbindings", b":127.0.0.1\n")
    write(home, "control/outgoingip", b"garbage\n")
    status, out = run(capsys, home)
    assert status == 0
    assert "  ok      control/outgoingip: \"garbage\", never read: " \
        "domainbindings has an empty key\n" in out


def test_auth_files(capsys, home):
    write(home, "control/smtproutes", b":relay.example:587|u|" +
          PASSWORDS[0] + b"\n", 0o640)
    write(home, "control/authmechanisms", b"plain\nlogin  FOO\n")
    write(home, "control/authplaintext", b"")
    status, out = run(capsys, home)
    assert status == 0
    assert ("  ok      control/authmechanisms: PLAIN LOGIN\n"
            "            not a mechanism qmail-remote uses, ignored: FOO\n"
            "  ok      control/authplaintext: present: credentials may go "
            "without TLS\n") in out
    write(home, "control/authmechanisms", b"GSSAPI\n")
    status, out = run(capsys, home)
    assert status == 1
    assert "  FAIL    control/authmechanisms: names no mechanism " \
        "qmail-remote uses: every AUTH fails\n" in out
    os.unlink(os.path.join(home, "control", "smtproutes"))
    status, out = run(capsys, home)
    assert status == 0
    assert "  warning control/authmechanisms: names no mechanism" in out


def test_credentials_that_can_never_be_sent(capsys, home):
    write(home, "control/smtproutes", b"x.example:relay.example:587|u|" +
          PASSWORDS[0] + b"\n:127.0.0.1:25|u|" + PASSWORDS[1] + b"\n", 0o640)
    os.mkdir(os.path.join(home, "control", "notlshosts"))
    write(home, "control/notlshosts/relay.example", b"")
    status, out = run(capsys, home)
    assert status == 0
    assert "  warning AUTH to \"relay.example\": control/smtproutes line 1: " \
        "no TLS with this relay (notlshosts/ or exhaustivelist) and no " \
        "control/authplaintext: the credentials are never sent and its " \
        "deliveries are deferred, unless it resolves to a loopback " \
        "address\n" in out
    assert "AUTH to \"127.0.0.1\"" not in out
    write(home, "control/authplaintext", b"")
    status, out = run(capsys, home)
    assert "AUTH to" not in out


# -- TLS files ----------------------------------------------------------------

def make_cert(common_name, days, key=None, ca=False):
    """(certificate PEM, key PEM): self-signed, valid *days* more days (and
    12 hours, so that the whole days left are exactly *days*)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=400))
            .not_valid_after(now + datetime.timedelta(days=days, hours=12))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                           critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_golden(capsys, home):
    cert, key = make_cert("client.example", 10)
    write(home, "control/clientcert.pem", cert + key, 0o640)
    ca, _ = make_cert("Test CA", 3650, ca=True)
    old_ca, _ = make_cert("Old CA", -2, ca=True)
    os.mkdir(os.path.join(home, "control", "tlshosts"))
    write(home, "control/tlshosts/mx.example.com.pem", ca)
    write(home, "control/tlshosts/MX2.example.com.pem", ca + old_ca)
    write(home, "control/tlshosts/junk.pem", b"\0\xff junk \x80" * 9)
    write(home, "control/tlshosts/exhaustivelist", b"")
    write(home, "control/tlshosts/README", b"")
    os.mkfifo(os.path.join(home, "control", "tlshosts", "fifo.pem"))
    os.symlink("nowhere", os.path.join(home, "control", "tlshosts",
                                       "gone.example.pem"))
    os.mkdir(os.path.join(home, "control", "notlshosts"))
    write(home, "control/notlshosts/plain.example", b"")
    write(home, "control/ca.pem", ca)
    write(home, "control/tlsverify", b"control/ca.pem\n")
    write(home, "control/tlsclientciphers",
          b"ECDHE-ECDSA-AES128-GCM-SHA256\n\nECDHE-RSA-AES128-GCM-SHA256\n")
    write(home, "control/tlsreport", b"")
    status, out = run(capsys, home)
    assert status == 1
    text = normal(out, home)
    start = text.index("\nTLS\n")
    end = text.index("\ntcpto\n")
    assert text[start:end] == (
        "\n"
        "TLS\n"
        "  ok      control/tlsverify: CA file \"control/ca.pem\": TLS is "
        "mandatory and verified with every named host\n"
        "            Test CA: not after DATE (3650 days left)\n"
        "  ok      control/tlsreport: present: a K report after TLS names "
        "the version and cipher\n"
        "  warning control/clientcert.pem: sent when a server asks\n"
        "            certificate and key load; the key matches\n"
        "            client.example: not after DATE (expires in 10 days)\n"
        "  ok      control/tlsclientciphers: \"ECDHE-ECDSA-AES128-GCM-SHA256:"
        "ECDHE-RSA-AES128-GCM-SHA256\" (2 ciphers for TLS 1.2 and below; "
        "TLS 1.3 keeps its own suites)\n"
        "  FAIL    control/tlshosts/: 4 host files, exhaustivelist\n"
        "            MX2.example.com.pem: TLS mandatory, verified with these "
        "CA certificates\n"
        "              has upper case: used only when DNS gives the name in "
        "exactly this case (name it in lower case)\n"
        "              Test CA: not after DATE (3650 days left)\n"
        "              Old CA: not after DATE (EXPIRED)\n"
        "            README: not <host>.pem, never read\n"
        "            exhaustivelist: TLS only with hosts that have a .pem "
        "here\n"
        "            fifo.pem: TLS mandatory, verified with these CA "
        "certificates\n"
        "              not a regular file: deliveries to fifo are deferred "
        "(TLS unable to load)\n"
        "            gone.example.pem: a dangling link: qmail-remote takes it "
        "as absent\n"
        "            junk.pem: TLS mandatory, verified with these CA "
        "certificates\n"
        "              no certificate or crl found: deliveries to junk are "
        "deferred (TLS unable to load)\n"
        "            mx.example.com.pem: TLS mandatory, verified with these "
        "CA certificates\n"
        "              Test CA: not after DATE (3650 days left)\n"
        "  ok      control/notlshosts/: 1 host without TLS\n"
        "            plain.example: no TLS with this host\n")
    document = json.loads(run(capsys, home, "--json")[1])
    certificates = document["certificates"]
    assert {c["file"] for c in certificates} == {
        "tlsverify: control/ca.pem", "control/clientcert.pem",
        "control/tlshosts/MX2.example.com.pem",
        "control/tlshosts/mx.example.com.pem"}
    for cert in certificates:
        assert set(cert) == {"file", "subject", "not_after",
                             "not_after_epoch", "days_left"}
        assert isinstance(cert["not_after_epoch"], int)
    assert [c["days_left"] for c in certificates
            if c["subject"] == "client.example"] == [10]
    assert [c["days_left"] < 0 for c in certificates
            if c["subject"] == "Old CA"] == [True]


@pytest.mark.parametrize("content, expected", [
    ("expired", "  FAIL    control/clientcert.pem: sent when a server asks\n"
                "            certificate and key load; the key matches\n"
                "            client.example: not after DATE (EXPIRED)\n"),
    ("mismatch", "  FAIL    control/clientcert.pem: key values mismatch: "
                 "every TLS delivery is deferred (TLS unable to load "
                 "control/clientcert.pem)\n"),
    ("garbage", "  FAIL    control/clientcert.pem: "),
    ("key only", "  FAIL    control/clientcert.pem: "),
    ("world", "  warning control/clientcert.pem: sent when a server asks\n"
              "            certificate and key load; the key matches\n"
              "            client.example: not after DATE (365 days left)\n"
              "            holds a private key and every user can read it "
              "(OWNER 0644)\n"),
    ("directory", "  FAIL    control/clientcert.pem: cannot be read (Is a "
                  "directory): every TLS delivery is deferred (TLS unable to "
                  "load control/clientcert.pem)\n"),
    ("fifo", "  FAIL    control/clientcert.pem: not a regular file: every "
             "TLS delivery is deferred, or waits for ever on a FIFO\n"),
])
def test_clientcert_problems(capsys, home, content, expected):
    path = os.path.join(home, "control", "clientcert.pem")
    cert, key = make_cert("client.example", 365)
    if content == "expired":
        cert, key = make_cert("client.example", -1)
        write(home, "control/clientcert.pem", cert + key, 0o600)
    elif content == "mismatch":
        write(home, "control/clientcert.pem",
              cert + make_cert("other", 365)[1], 0o600)
    elif content == "garbage":
        write(home, "control/clientcert.pem", os.urandom(300) + b"\0", 0o600)
    elif content == "key only":
        write(home, "control/clientcert.pem", key, 0o600)
    elif content == "world":
        write(home, "control/clientcert.pem", cert + key, 0o644)
    elif content == "directory":
        os.mkdir(path)
    else:
        os.mkfifo(path)
    status, out = run(capsys, home)
    assert status == (0 if content == "world" else 1)
    assert expected in normal(out, home)


def test_tlsverify_variants(capsys, home):
    write(home, "control/tlsverify", b"\n")
    status, out = run(capsys, home)
    assert status == 0
    assert "  ok      control/tlsverify: the system CA store: TLS is " \
        "mandatory and verified with every named host\n" in out
    os.mkdir(os.path.join(home, "cas"))
    write(home, "control/tlsverify", b"cas\n")
    status, out = run(capsys, home)
    assert status == 1
    assert ("  FAIL    control/tlsverify: CA directory \"cas\": TLS is "
            "mandatory and verified with every named host\n"
            "            0 subject-hash names (of 0 entries)\n"
            "            no subject-hash names (openssl rehash): no "
            "certificate verifies, every TLS delivery to a named host is "
            "deferred\n") in out
    write(home, "control/tlsverify", os.path.join(home, "nowhere.pem")
          .encode() + b"\n")
    status, out = run(capsys, home)
    assert status == 1
    assert "  FAIL    control/tlsverify: HOME/nowhere.pem: No such file or " \
        "directory: every delivery to a named host is deferred (TLS unable " \
        "to load HOME/nowhere.pem)\n" in normal(out, home)
    write(home, "control/garbage.pem", b"-----BEGIN CERTIFICATE-----\n"
          b"AAAA\n-----END CERTIFICATE-----\n")
    write(home, "control/tlsverify", b"control/garbage.pem\n")
    status, out = run(capsys, home)
    assert status == 1
    assert "  FAIL    control/tlsverify: control/garbage.pem: " in out


# -- broken inputs ------------------------------------------------------------

JUNK = bytes(range(256)) * 3 + b"\n\0\n\xff:\xfe\n"


@pytest.mark.parametrize("name", [
    "me", "helohost", "timeoutremote", "timeoutconnect", "smtproutes",
    "authsenders", "domainbindings", "outgoingip", "helohostbyip",
    "addresspreference", "authmechanisms", "tlsverify", "clientcert.pem",
    "tlsclientciphers"])
@pytest.mark.parametrize("kind", ["junk", "directory", "fifo", "loop"])
def test_broken_control_files_never_crash(capsys, home, name, kind):
    path = os.path.join(home, "control", name)
    if os.path.exists(path):
        os.unlink(path)
    if kind == "junk":
        write(home, "control/" + name, JUNK)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)                     # no writer: must not hang
    else:
        os.symlink(name, path)              # ELOOP
    status, out = run(capsys, home)
    assert status in (0, 1)
    line = [x for x in out.splitlines() if f" control/{name}:" in x][0]
    if kind in ("directory", "loop"):
        if name == "authmechanisms":    # read only for credentials: none
            assert line.startswith("  warning ")
            assert "no route has credentials, so it is not read" in line
        else:
            assert line.startswith("  FAIL    ")
            assert status == 1
    document = json.loads(run(capsys, home, "--json")[1])
    assert document["verdict"]["ok"] is (status == 0)


@pytest.mark.parametrize("name", ["queue/lock/tcpto", "queue/lock/tcpto6"])
@pytest.mark.parametrize("kind", ["directory", "fifo", "short", "partial",
                                  "long"])
def test_broken_tcpto_files(capsys, home, name, kind):
    path = os.path.join(home, name)
    if name.endswith("tcpto") or kind in ("directory", "fifo"):
        if os.path.exists(path):
            os.unlink(path)
    size = {"tcpto": 16, "tcpto6": 32}[os.path.basename(path)]
    if kind == "directory":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "short":
        write(home, name, b"\1" * (size - 1))
    elif kind == "partial":
        write(home, name, bytes(size * 3 + 5))
    else:
        write(home, name, bytes(size * 64 + size))
    status, out = run(capsys, home)
    assert status == 0
    line = [x for x in out.splitlines() if f" {name}:" in x][0]
    assert line.startswith("  warning ")
    following = out[out.index(line):].split("\n  ", 2)[1]
    expected = {
        "directory": "not a regular file",
        "fifo": "not a regular file",
        "short": f"shorter than one record ({size} bytes): disabled",
        "partial": f"not a whole number of {size}-byte records",
        "long": f"longer than {size * 64} bytes: the rest is ignored",
    }[kind]
    assert expected in line + following


def test_tcpto_summary_counts_skipped_addresses(capsys, home):
    import time
    now = int(time.time())
    records = b""
    for ip, count, age in (([10, 0, 0, 1], 2, 10), ([10, 0, 0, 2], 1, 10),
                           ([10, 0, 0, 3], 5, 9000)):
        records += bytes(ip) + bytes([count, 0, 0, 0]) + \
            (now - age).to_bytes(4, "little") + bytes(4)
    write(home, "queue/lock/tcpto", records + bytes(1024 - len(records)))
    status, out = run(capsys, home)
    assert "            3 addresses with recent timeouts, 1 skipped now " \
        "(qmailremote tcpto lists them)\n" in out
    os.unlink(os.path.join(home, "queue/lock/tcpto"))
    status, out = run(capsys, home)
    assert status == 0
    assert "  warning queue/lock/tcpto: absent: qmail-remote does not " \
        "remember IPv4 timeouts" in out
    assert "  warning queue/lock/tcpto6: absent, and it is created only " \
        "next to queue/lock/tcpto, which is absent too\n" in out


def test_resolv_conf(capsys, home, monkeypatch):
    monkeypatch.setattr(check, "RESOLV_CONF", os.path.join(home, "none"))
    status, out = run(capsys, home)
    assert status == 0
    assert (f"  warning {home}/none: name servers 127.0.0.1; timeout 5 s, "
            "attempts 2\n"
            "            absent: the defaults apply\n"
            "            no usable nameserver line: 127.0.0.1 (glibc's "
            "default)\n") in out
    write(home, "resolv.conf", b"nameserver 1.1.1.1\nnameserver bogus\n"
          b"nameserver 2.2.2.2\nnameserver 3.3.3.3\nnameserver 4.4.4.4\n"
          b"options timeout:99 attempts:0\n")
    monkeypatch.setattr(check, "RESOLV_CONF",
                        os.path.join(home, "resolv.conf"))
    status, out = run(capsys, home)
    assert ("name servers 1.1.1.1, 2.2.2.2, 3.3.3.3; timeout 30 s, attempts "
            "1\n"
            "            5 nameserver lines: only the first 3 usable ones "
            "count\n") in out


# -- the program -------------------------------------------------------------

def test_kernel_line(capsys, home, monkeypatch):
    monkeypatch.setattr(_kernel, "COMPILED", False)
    monkeypatch.delenv("QMAILREMOTE_NO_EXTENSIONS", raising=False)
    status, out = run(capsys, home)
    assert status == 0
    assert "  warning kernel: pure Python (qmailremote._fast_py): the " \
        "compiled extension does not import; large messages take several " \
        "times longer\n" in out
    monkeypatch.setattr(_kernel, "COMPILED", True)
    status, out = run(capsys, home)
    assert "  ok      kernel: compiled (qmailremote._fast)\n" in out


def test_startup_timing_of_the_installed_command(capsys, home):
    command = check.installed_command()
    if command is None:
        pytest.skip("qmail-remote is not installed next to this Python or "
                    "on PATH")
    status, out = run(capsys, home, "--runs", "2", "--json", timing=True)
    startup = json.loads(out)["startup"]
    assert startup["command"] == command
    assert startup["runs"] == 2 and startup["skipped"] is None
    assert startup["output_ok"] is True
    assert 0 < startup["median_ms"] < 10000
    assert 0 < startup["python_median_ms"] < 10000
    status, out = run(capsys, home, "--runs", "1", timing=True)
    assert re.search(r"\n  ok      start-up: \d+\.\d ms median of 1 \(" +
                     re.escape(command) + r", too few arguments\); python "
                     r"-I -S -c pass: \d+\.\d ms\n", out)


def test_startup_without_an_installed_command(capsys, home, monkeypatch):
    monkeypatch.setattr(check, "installed_command", lambda: None)
    status, out = run(capsys, home, timing=True)
    assert status == 0
    assert "  warning start-up: not timed: no installed qmail-remote next " \
        "to this Python or on PATH\n" in out


def test_startup_of_a_broken_command(capsys, home, monkeypatch):
    script = write(home, "fake-qmail-remote",
                   b"#!/bin/sh\nprintf 'Zbroken\\n\\0'\n", 0o755)
    monkeypatch.setattr(check, "installed_command", lambda: script)
    status, out = run(capsys, home, "--runs", "1", timing=True)
    assert status == 1
    assert "  FAIL    start-up: " in out
    assert "expected exit status 0 and \"DI (qmail-remote) was invoked " \
        "improperly. (#5.3.5)\\n\\x00\"; got 0 and " \
        "\"Zbroken\\n\\x00\"\n" in out


def test_home_bin_qmail_remote(capsys, home, monkeypatch):
    script = write(home, "ours", b"#!/bin/sh\n", 0o755)
    monkeypatch.setattr(check, "installed_command", lambda: script)
    os.mkdir(os.path.join(home, "bin"))
    os.symlink(script, os.path.join(home, "bin", "qmail-remote"))
    status, out = run(capsys, home)
    assert f"  ok      {home}/bin/qmail-remote: is this installation's " \
        f"({os.path.realpath(script)})\n" in out
    os.unlink(os.path.join(home, "bin", "qmail-remote"))
    write(home, "bin/qmail-remote", b"#!/bin/sh\n", 0o755)
    status, out = run(capsys, home)
    assert f"  warning {home}/bin/qmail-remote: is " \
        f"{os.path.realpath(home)}/bin/qmail-remote, not this " \
        f"installation's qmail-remote ({script})\n" in out


# -- JSON --------------------------------------------------------------------

CONTROL_KEYS = {"file", "present", "read", "value", "default", "status",
                "ignored", "user_readable"}


def _check_document(document):
    assert set(document) == {
        "home", "user", "profile", "controls", "routes", "authsenders",
        "tcpto", "resolver", "kernel", "startup", "certificates", "checks",
        "verdict"}
    home = document["home"]
    assert set(home) == {"path", "source", "opens", "error"}
    assert home["source"] in ("--home", "$QMAILHOME", "default")
    assert isinstance(home["opens"], bool)
    user = document["user"]
    assert set(user) == {"name", "exists", "uid", "gids"}
    assert all(isinstance(g, int) for g in user["gids"])
    assert document["profile"] in ("esmtp", "noesmtp", None)
    for name, control in document["controls"].items():
        assert set(control) == CONTROL_KEYS, name
        assert control["file"] == "control/" + name
        assert isinstance(control["present"], bool)
        assert isinstance(control["read"], bool)
        assert isinstance(control["default"], bool)
        assert control["status"] in ("ok", "warn", "bad")
        assert control["user_readable"] in (True, False, None)
        for ignored in control["ignored"]:
            assert set(ignored) == {"line", "reason"}
            assert isinstance(ignored["line"], int)
    for route in document["routes"] + document["authsenders"]:
        assert set(route) == {"line", "key", "mx", "relay", "port",
                              "credentials"}
        assert isinstance(route["mx"], bool)
        assert route["credentials"] is None or \
            set(route["credentials"]) == {"dialect", "user", "used"}
    assert set(document["tcpto"]) in (set(), {"tcpto", "tcpto6"})
    for name in document["tcpto"]:
        assert set(document["tcpto"][name]) == {
            "path", "present", "bytes", "regular", "user_readable",
            "user_writable", "records", "skipped_now"}
    resolver = document["resolver"]
    assert set(resolver) == {"path", "present", "nameservers",
                             "default_nameserver", "timeout", "attempts"}
    assert all(isinstance(s, str) for s in resolver["nameservers"])
    assert isinstance(resolver["timeout"], int)
    assert set(document["kernel"]) == {"compiled", "module", "no_extensions"}
    assert set(document["startup"]) == {"command", "runs", "median_ms",
                                        "python_median_ms", "output_ok",
                                        "skipped"}
    for item in document["checks"]:
        assert set(item) == {"section", "status", "label", "detail", "notes"}
        assert item["status"] in ("ok", "warn", "bad")
        assert all(isinstance(n, str) for n in item["notes"])
    verdict = document["verdict"]
    assert set(verdict) == {"ok", "failures", "warnings", "text"}
    assert verdict["failures"] == sum(c["status"] == "bad"
                                      for c in document["checks"])
    assert verdict["warnings"] == sum(c["status"] == "warn"
                                      for c in document["checks"])


def test_json_schema(capsys, home):
    write(home, "control/smtproutes", SMTPROUTES, 0o640)
    write(home, "control/authsenders", b"x@y:relay:25\n")
    status, out = run(capsys, home, "--json")
    assert status == 0
    document = json.loads(out)
    _check_document(document)
    assert document["home"] == {"path": home, "source": "--home",
                                "opens": True, "error": None}
    assert document["profile"] == "esmtp"
    assert document["controls"]["me"]["value"] == "mx.example.com"
    assert document["controls"]["timeoutremote"] == {
        "file": "control/timeoutremote", "present": False, "read": True,
        "value": 1200, "default": True, "status": "ok", "ignored": [],
        "user_readable": None}
    smtproutes = document["controls"]["smtproutes"]
    assert smtproutes["value"] == 7
    assert [i["line"] for i in smtproutes["ignored"]] == \
        [1, 2, 3, 4, 5, 8, 8, 9, 12]
    assert document["routes"][1] == {
        "line": 7, "key": "example.com", "mx": False,
        "relay": "relay2.example.net", "port": 587,
        "credentials": {"dialect": "sagredo", "user": "alice", "used": True}}
    assert document["authsenders"] == [{
        "line": 1, "key": "x@y", "mx": False, "relay": "relay", "port": 25,
        "credentials": None}]
    assert document["resolver"]["nameservers"] == ["192.0.2.53", "::1"]
    assert document["resolver"]["attempts"] == 4
    assert document["kernel"]["compiled"] is bool(_kernel.COMPILED)
    assert document["verdict"]["ok"] is True
    assert document["tcpto"]["tcpto"]["bytes"] == 1024
    assert document["tcpto"]["tcpto"]["records"] == 0


def test_json_schema_of_broken_homes(capsys, home, tmp_path):
    write(home, "control/noesmtp", b"")
    os.unlink(os.path.join(home, "control", "me"))
    status, out = run(capsys, home, "--json")
    assert status == 1
    document = json.loads(out)
    _check_document(document)
    assert document["profile"] == "noesmtp"
    assert document["controls"]["authsenders"]["read"] is False
    assert document["verdict"]["ok"] is False
    status, out = run(capsys, str(tmp_path / "none"), "--json")
    document = json.loads(out)
    _check_document(document)
    assert document["profile"] is None and document["controls"] == {}
    assert status == 1 and document["home"]["opens"] is False
    assert document["verdict"]["failures"] == 1


def test_no_colour_in_json_and_colour_on_request(capsys, home):
    with pytest.raises(SystemExit):
        tools.main(["--color", "always", "--home", home, "check", "--user",
                    "root", "--no-timing"])
    assert "\x1b[32mok     \x1b[0m" in capsys.readouterr().out
    status, out = run(capsys, home, "--json")
    assert "\x1b[" not in out


def test_check_is_not_imported_at_qmail_remote_start_up():
    import subprocess
    code = ("import sys, qmailremote.cli, qmailremote.delivery\n"
            "print([m for m in sys.modules if 'tools' in m])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_run_by_a_user_who_cannot_read_a_file(home):
    """Run as nobody: a file only qmail-remote's user may read is a
    warning (its value unseen), not a failure."""
    import subprocess
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.path.exists(p) and os.stat(p).st_mode & 0o001),
                  None)
    if python is None:
        pytest.skip("no Python that nobody may run")
    write(home, "control/smtproutes", b"example.com:relay\n", 0o640)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [python, "-m", "qmailremote.tools", "--home", home, "check",
         "--user", "root", "--no-timing"], user="nobody",
        group=pwd.getpwnam("nobody").pw_gid, extra_groups=[], cwd="/",
        env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert "  warning control/smtproutes: this process cannot read it " \
        "(Permission denied), but root may: run the check as root to see " \
        "its value\n" in done.stdout
    assert "  ok      control/me: \"mx.example.com\"\n" in done.stdout
