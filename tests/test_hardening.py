"""The installed command under hostile conditions (issue 8).

Each test runs the installed ``qmail-remote`` (the one beside the test
interpreter) in a subprocess under one of the conditions an adversarial
admin can create -- control files that are FIFOs, numbers of thousands of
digits, descriptors above 1023 -- and checks what qmail-rspawn would see:
exit status 0, nothing on stderr, one message report.  ``deliver()`` is
checked under the same conditions and must never raise.
"""

import os
import subprocess
import sys

import pytest

from qmailremote import deliver
from qmailremote.mx import Resolver
from smtpserver import ScriptedServer, smtp_script

COMMAND = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
LONG = 5000  # digits: above CPython's default int-to-str limit of 4300
AMBIGUOUS = (b"DSorry. Although I'm listed as a best-preference MX or A for "
             b"that host,\nit isn't in my control/locals file, so I don't "
             b"treat it as local. (#5.4.6)\n\0")


def run_command(args, home, stdin=b"hi\n", env=None, timeout=30, **kwargs):
    """The installed command; (stdout, stderr, exit status)."""
    env = dict(os.environ if env is None else env)
    env["QMAILHOME"] = str(home)
    done = subprocess.run([COMMAND, *args], input=stdin, capture_output=True,
                          env=env, timeout=timeout, **kwargs)
    return done.stdout, done.stderr, done.returncode


def assert_qmail_clean(out, err, status):
    """What qmail-rspawn needs: exit 0, no stderr, one message report."""
    assert (status, err) == (0, b"")
    assert out.endswith(b"\0") and out[:-1].split(b"\0")[-1][:1] in (
        b"K", b"Z", b"D"), out


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    return tmp_path


def route_to(home, port, text=None):
    (home / "control" / "smtproutes").write_bytes(
        text if text is not None else b":127.0.0.1:%d\n" % port)


def test_command_is_installed():
    assert os.access(COMMAND, os.X_OK), COMMAND


# 1. Control files that are FIFOs with no writer read as empty at once.

@pytest.mark.parametrize("name", ["me", "helohost", "timeoutremote",
                                  "timeoutconnect"])
def test_fifo_control_file(home, name):
    with ScriptedServer(smtp_script()) as srv:
        route_to(home, srv.port)
        if name == "me":
            (home / "control" / "helohost").write_bytes(b"helo.example\n")
        path = home / "control" / name
        path.unlink(missing_ok=True)
        os.mkfifo(path)
        out, err, status = run_command(["example.com", "a@b", "c@d"], home)
        srv.wait_done()
    assert_qmail_clean(out, err, status)
    assert out.startswith(b"r\0K127.0.0.1 accepted message.\n")
    helo = b"HELO \r\n" if name == "helohost" else b"HELO helo.example\r\n" \
        if name == "me" else b"HELO me.example\r\n"
    assert srv.records[0].lines[0] == helo


def test_fifo_smtproutes_means_no_routes(home):
    # Read as empty: no route, so the IP literal is used, and it is this
    # host (lo): netqmail's "listed as best-preference MX" bounce.
    os.mkfifo(home / "control" / "smtproutes")
    out, err, status = run_command(["[127.0.0.1]", "a@b", "c@d"], home)
    assert (out, err, status) == (AMBIGUOUS, b"", 0)


def test_fifo_tcpto_disables_it(home):
    (home / "queue" / "lock").mkdir(parents=True)
    os.mkfifo(home / "queue" / "lock" / "tcpto")
    with ScriptedServer(smtp_script()) as srv:
        route_to(home, srv.port)
        out, err, status = run_command(["example.com", "a@b", "c@d"], home)
        srv.wait_done()
    assert_qmail_clean(out, err, status)
    assert out.startswith(b"r\0K")


def test_fifo_resolv_conf_reads_as_defaults(tmp_path):
    fifo = tmp_path / "resolv.conf"
    os.mkfifo(fifo)
    # In a child, so that a regression hangs the child and not the suite.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from qmailremote.mx import "
         "Resolver; r = Resolver.from_system(sys.argv[1]); "
         "print(r.nameservers, r.timeout, r.attempts)", str(fifo)],
        capture_output=True, timeout=30)
    assert done.stdout == b"[('127.0.0.1', 53)] 5 2\n"


# 2. Numbers longer than CPython's int-to-str limit.

def test_long_host_bounces(home):
    host = "1" * LONG
    out, err, status = run_command([host, "a@b", "c@d"], home)
    assert (out, err, status) == (
        b"DSorry, I couldn't find any host named " + host.encode() +
        b". (#5.1.2)\n\0", b"", 0)


def test_long_zero_padded_ip_literal(home):
    host = "[127.0.0." + "0" * LONG + "1]"
    out, err, status = run_command([host, "a@b", "c@d"], home)
    assert (out, err, status) == (AMBIGUOUS, b"", 0)


@pytest.mark.parametrize("where", ["port", "timeoutremote",
                                   "timeoutconnect"])
def test_long_numbers_in_control_files(home, where):
    with ScriptedServer(smtp_script()) as srv:
        if where == "port":
            route_to(home, srv.port, b":127.0.0.1:" + b"0" * LONG +
                     b"%d\n" % srv.port)
        else:
            route_to(home, srv.port)
            # 5000 digits worth 30 modulo 2**32 (and 2**64): 30 seconds.
            (home / "control" / where).write_bytes(
                b"1" + b"0" * 63 + b"0" * (LONG - 66) + b"30\n")
        out, err, status = run_command(["example.com", "a@b", "c@d"], home)
        srv.wait_done()
    assert_qmail_clean(out, err, status)
    assert out.startswith(b"r\0K127.0.0.1 accepted message.\n")


def test_long_resolv_conf_options(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(b"nameserver 127.0.0.9\noptions timeout:" +
                     b"9" * LONG + b" attempts:" + b"0" * LONG + b"3\n")
    resolver = Resolver.from_system(str(conf))
    assert (resolver.timeout, resolver.attempts) == (30, 3)


@pytest.mark.parametrize("host", ["1" * LONG, "[127.0.0." + "0" * LONG +
                                                "1]"])
def test_deliver_long_host_does_not_raise(home, host):
    result = deliver(host, "a@b", ["c@d"], b"hi\n", home=str(home))
    assert result.message.letter == "D"


# 3. Descriptors above FD_SETSIZE (1024).

# Raises the soft descriptor limit, fills descriptors 3..1102, then execs
# the command or delivers in process: every descriptor opened afterwards,
# the SMTP socket included, is above 1023.
MANY_FDS = """
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
null = os.open(os.devnull, os.O_RDONLY)
for fd in range(3, 1103):
    if fd != null:
        os.dup2(null, fd, inheritable=True)
if sys.argv[1] == "command":
    os.execv(sys.argv[2], sys.argv[2:])
from qmailremote import deliver
result = deliver(*sys.argv[3:5], sys.argv[5:], b"hi\\n", home=os.environ["QMAILHOME"])
os.write(1, result.render())
"""


@pytest.mark.parametrize("how", ["command", "deliver"])
def test_descriptors_above_1023(home, how):
    if resource_hard_limit() < 2048:
        pytest.skip("the hard descriptor limit is below 2048")
    with ScriptedServer(smtp_script()) as srv:
        route_to(home, srv.port)
        done = subprocess.run(
            [sys.executable, "-c", MANY_FDS, how, COMMAND, "example.com",
             "a@b", "c@d"], input=b"hi\n", capture_output=True, timeout=60,
            env=dict(os.environ, QMAILHOME=str(home)))
        srv.wait_done()
    assert_qmail_clean(done.stdout, done.stderr, done.returncode)
    assert done.stdout.startswith(b"r\0K127.0.0.1 accepted message.\n")


def resource_hard_limit():
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return sys.maxsize if hard == resource.RLIM_INFINITY else hard
