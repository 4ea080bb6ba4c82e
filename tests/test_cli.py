"""The qmail-remote command: argv, stdout, exit status 0, no tracebacks."""

import os
import subprocess
import sys

import pytest

import qmailremote
from smtpserver import ScriptedServer, smtp_script

# Runs the console-script entry point, optionally with some modules made
# unimportable first (a broken installation must still print a report).
ENTRY = """
import sys
blocked = set(sys.argv[1].split(",")) - {""}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in blocked or name.split(".")[0] in blocked:
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["qmail-remote"] + sys.argv[2:]
from qmailremote.cli import main
main()
"""


def qmail_remote(args, stdin=b"", home=None, blocked=(), **kwargs):
    env = dict(os.environ)
    env.pop("QMAILHOME", None)
    if home is not None:
        env["QMAILHOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", ENTRY, ",".join(blocked), *args],
        input=stdin, capture_output=True, env=env, timeout=60, **kwargs)


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    # netqmail 1.06's dialogue: these tests pin its bytes.
    (tmp_path / "control" / "noesmtp").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("args", [[], ["host"], ["host", "sender"]])
def test_usage(args, tmp_path):
    done = qmail_remote(args, home=tmp_path / "missing")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0", b"")


def test_missing_home(tmp_path):
    done = qmail_remote(["h", "s", "r"], home=tmp_path / "missing")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, b"ZUnable to switch to home directory. (#4.3.0)\n\0", b"")


def test_crlf_in_address_refused(home):
    done = qmail_remote(["[127.0.0.1]", "a@b", "c\r\n@d"], home=home)
    assert done.stdout == (b"DSorry, I won't send an address with a CR or "
                           b"LF in it. (#5.1.3)\n\0")
    assert done.returncode == 0 and done.stderr == b""


def test_delivery_with_non_utf8_arguments(home):
    with ScriptedServer(smtp_script()) as srv:
        (home / "control" / "smtproutes").write_bytes(
            b":127.0.0.1:%d\n" % srv.port)
        done = qmail_remote([os.fsdecode(b"h\xff"), os.fsdecode(b"\xe9@b"),
                             "c@d"], stdin=b"hi\n", home=home)
        srv.wait_done()
    assert done.stdout.startswith(b"r\0K127.0.0.1 accepted message.\n")
    assert srv.records[0].lines[1] == b'MAIL FROM:<"\xe9"@b>\r\n'
    assert done.returncode == 0 and done.stderr == b""


@pytest.mark.parametrize("blocked", [
    ["dns"],                  # dnspython is a test dependency only
    ["qmailremote._fast"],    # no compiled kernel: the pure twin serves
])
def test_delivers_without(home, blocked):
    with ScriptedServer(smtp_script()) as srv:
        (home / "control" / "smtproutes").write_bytes(
            b":127.0.0.1:%d\n" % srv.port)
        done = qmail_remote(["example.com", "a@b", "c@d"], stdin=b"hi\n",
                            home=home, blocked=blocked)
        srv.wait_done()
    assert done.stdout.startswith(b"r\0K127.0.0.1 accepted message.\n")
    assert done.returncode == 0 and done.stderr == b""


@pytest.mark.parametrize("blocked", [
    ["qmailremote._fast", "qmailremote._fast_py"],  # no kernel at all
    ["qmailremote.session"],
    ["qmailremote.delivery"],
])
def test_broken_installation_still_reports(home, blocked):
    done = qmail_remote(["example.com", "a@b", "c@d"], home=home,
                        blocked=blocked)
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.startswith(b"Z") and done.stdout.endswith(b"\n\0")
    assert done.stdout.count(b"\0") == 1


def test_stdin_closed_is_unable_to_read(home):
    with ScriptedServer(smtp_script(final=None)[:-1]) as srv:
        (home / "control" / "smtproutes").write_bytes(
            b":127.0.0.1:%d\n" % srv.port)
        done = qmail_remote(["h", "a@b", "c@d"], home=home, stdin=None,
                            preexec_fn=lambda: os.close(0))
        srv.wait_done()
    assert done.stdout == b"r\0ZUnable to read message. (#4.3.0)\n\0"


class DirectoryStdin:
    """What the command's stdin reader does, on a directory descriptor."""

    def __init__(self, fd):
        self.fd = fd

    def readinto(self, view):
        return os.readv(self.fd, [view])


def test_stdin_directory_is_unable_to_read(home):
    # CPython itself refuses to start with a directory on fd 0, so this
    # runs the command's reading path in process on a directory descriptor.
    from qmailremote import deliver
    with ScriptedServer(smtp_script(final=None)[:-1]) as srv:
        (home / "control" / "smtproutes").write_bytes(
            b":127.0.0.1:%d\n" % srv.port)
        directory = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
        try:
            out = deliver(b"h", b"a@b", [b"c@d"], DirectoryStdin(directory),
                          home=str(home)).render()
        finally:
            os.close(directory)
        srv.wait_done()
    assert out == b"r\0ZUnable to read message. (#4.3.0)\n\0"


def test_installed_command_reads_a_directory_stdin_as_netqmail(home):
    """CPython will not start with a directory on fd 0: the launcher moves
    it aside and the command puts it back, so the read fails after DATA,
    where netqmail's does, with its report; exit 0, nothing on stderr."""
    command = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
    if not os.path.exists(command):
        pytest.fail("the qmail-remote launcher is not installed beside "
                    + sys.executable + " (pip install '.[test]')")
    env = dict(os.environ, QMAILHOME=str(home))
    with ScriptedServer(smtp_script(final=None)[:-1]) as srv:
        (home / "control" / "smtproutes").write_bytes(
            b":127.0.0.1:%d\n" % srv.port)
        directory = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
        try:
            done = subprocess.run([command, "h", "a@b", "c@d"],
                                  stdin=directory, capture_output=True,
                                  env=env, timeout=60)
        finally:
            os.close(directory)
        srv.wait_done()
    assert (done.returncode, done.stdout, done.stderr) == (
        0, b"r\0ZUnable to read message. (#4.3.0)\n\0", b"")
    assert srv.received[0].endswith(b"DATA\r\n")


def test_stdout_closed_exits_zero(home):
    done = subprocess.run(
        [sys.executable, "-m", "qmailremote", "h", "s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1), timeout=60)
    assert done.returncode == 0 and done.stderr == b""


def test_public_api_is_pinned():
    assert sorted(qmailremote.__all__) == [
        "Outcome", "Report", "Resolver", "Result", "Sender", "__version__",
        "deliver"]


@pytest.mark.parametrize("module", [
    "qmailremote", "qmailremote.cli", "qmailremote.control",
    "qmailremote.delivery", "qmailremote.errors", "qmailremote.mx",
    "qmailremote.report", "qmailremote.routes", "qmailremote.session",
    "qmailremote.tcpto", "qmailremote._kernel", "qmailremote._fast_py",
    "qmailremote.bulk",
])
def test_modules_import_cleanly(module):
    done = subprocess.run([sys.executable, "-I", "-W", "error", "-c",
                           f"import {module}"], capture_output=True,
                          env={"PATH": os.environ.get("PATH", "")},
                          cwd=os.path.dirname(os.path.dirname(
                              qmailremote.__file__)), timeout=60)
    assert (done.returncode, done.stderr) == (0, b"")
