"""qmail-rspawn (``qmailremote.rspawn``): the whole process, both backends.

Every scenario test starts ``python -m qmailremote.rspawn`` with a scratch
qmail home, talks netqmail's spawn protocol to it over a pipe (commands on
fd 0, the spawn-limit byte then ``slot report NUL`` on fd 1) and compares
the bytes it reads with recorded expected bytes.  Each runs four times:

* ``warm``: the default backend, deliveries in pre-forked workers, up to
  eight at once each, on threads, spread over the CPUs first;
* ``single``: the same with ``QMAILREMOTE_RSPAWN_PER_WORKER=1``, one
  delivery at a time per worker;
* ``threads``: ``QMAILREMOTE_RSPAWN_PER_WORKER=4`` with the spawner bound
  to one CPU, so that deliveries share a worker predictably;
* ``exec``: ``QMAILREMOTE_RSPAWN_EXEC=1``, the ``qmail-remote`` found
  first on ``PATH`` per delivery, as netqmail's qmail-rspawn does.  The
  directory put first on ``PATH`` holds the installed launcher (the one
  next to ``sys.executable``) or, without one, a script running
  ``python -m qmailremote``.  Some exec-only tests put a fake
  ``qmail-remote`` (a shell script) there instead, to get outputs, exit
  codes and signals a real delivery never gives.

Servers are tests/smtpserver.py's, on 127.0.0.1, reached through
``control/smtproutes`` (``<name>.test:127.0.0.1:<port>``), under
``control/noesmtp`` (1.06's dialogue).  Nothing sleeps to synchronise: a
test waits for bytes on fd 1, for a server's connection, or for a
process's end, each with a timeout.

``report()`` itself is checked against a table (``REPORT_TABLE``) whose
expected values were checked against netqmail 1.06's qmail-rspawn (the
differential script, scripts/differential_rspawn.py, runs the same outputs
through the C binary), and against an independent transcription of the C
loop (``c_report``) with hypothesis.
"""

import os
import pwd
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

import qmailremote
from qmailremote import rspawn
from smtpserver import (ScriptedServer, TeeSMTPServer, call, expect_line,
                        read_some, read_to_eof, send,
                        smtp_script, wait_event)

PACKAGE_ROOT = os.path.dirname(os.path.dirname(qmailremote.__file__))
ME = pwd.getpwuid(os.getuid()).pw_name
IS_ROOT = os.geteuid() == 0
BACKENDS = ["warm", "single", "threads", "exec"]
#: Seconds any one wait (for output, a connection, an exit) may take.
TIMEOUT = 20.0

BODY = b"Subject: rspawn\n\nhello\n"
SENDER = b"s@sender.example"
ACCEPTED = b"K127.0.0.1 accepted message.\nRemote host said: 250 ok queued\n"
CRASHED = b"Zqmail-remote crashed.\n"

ERR_TOO_BIG = b"ZInternal error: delnum too big. (#4.3.5)\n"
ERR_IN_USE = b"ZInternal error: delnum in use. (#4.3.5)\n"
ERR_NONNUMERIC = b"DInternal error: messid has nonnumerics. (#5.3.5)\n"
ERR_LONG = b"DInternal error: messid too long. (#5.3.5)\n"
ERR_SHORT = b"DInternal error: messid too short. (#5.3.5)\n"
ERR_NOAT = b"DSorry, address must include host name. (#5.1.3)\n"
ERR_OPEN = b"Zqmail-spawn unable to open message. (#4.3.0)\n"
ERR_TYPE = b"ZSorry, message has wrong type. (#4.3.5)\n"
ERR_OWNER = b"ZSorry, message has wrong owner. (#4.3.5)\n"


def cmd(slot, messid, recip, sender=SENDER):
    """One spawn command: slot byte, messid, sender, recipient, each NUL-ended."""
    def b(x):
        return x if isinstance(x, bytes) else x.encode()
    return bytes((slot,)) + b(messid) + b"\0" + b(sender) + b"\0" + b(recip) + b"\0"


def rep(slot, text):
    """One report as qmail-rspawn writes it on fd 1."""
    return bytes((slot,)) + text + b"\0"


# ---------------------------------------------------------------------------
# The qmail home, the PATH directories, the process


class Home:
    """A scratch qmail home: control/, queue/mess (message files), queue/lock."""

    def __init__(self, root):
        self.root = root
        self.mess = root / "queue" / "mess"
        self.lock = root / "queue" / "lock"
        (root / "control").mkdir(parents=True)
        self.mess.mkdir(parents=True)
        self.lock.mkdir(parents=True)
        self.control("me", b"me.example\n")
        self.control("noesmtp", b"")
        self.control("timeoutremote", b"60\n")
        self.message("1/100")

    def control(self, name, data):
        (self.root / "control" / name).write_bytes(data)

    def message(self, messid, body=BODY):
        path = self.mess / messid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return messid

    def routes(self, **servers):
        """smtproutes: ``<name>.test`` to each server's (or port's) port."""
        lines = b"".join(
            b"%s.test:127.0.0.1:%d\n" % (name.encode(), getattr(s, "port", s))
            for name, s in servers.items())
        self.control("smtproutes", lines)


@pytest.fixture
def home(tmp_path):
    return Home(tmp_path / "home")


@pytest.fixture(scope="session")
def remote_bin(tmp_path_factory):
    """A directory holding a ``qmail-remote`` that runs this package."""
    d = tmp_path_factory.mktemp("remote-bin")
    launcher = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
    target = d / "qmail-remote"
    if os.access(launcher, os.X_OK):
        target.symlink_to(launcher)
    else:
        target.write_text(
            "#!/bin/sh\nPYTHONPATH=%s exec %s -m qmailremote \"$@\"\n"
            % (PACKAGE_ROOT, sys.executable))
        target.chmod(0o755)
    return d


FAKE_REMOTE = r"""#!/bin/sh
# A fake qmail-remote: the recipient's local part names what it does.
name=${3%%@*}
d=$FAKE_QR_DIR
printf '%s\n' "$#" "$1" "$2" "$3" > "$d/$name.args"
pwd > "$d/$name.cwd"
cat > "$d/$name.stdin"
case $name in
  kill*) kill -KILL $$ ;;
  segv*) kill -SEGV $$ ;;
  exit*) exit "${name#exit}" ;;
  stderr*) printf 'to stderr\n' >&2 ;;
esac
exec cat "$d/$name.out"
"""


class Fake:
    """The fake qmail-remote's directory: its outputs and what it recorded."""

    def __init__(self, root):
        self.bin = root / "bin"
        self.dir = root / "data"
        self.bin.mkdir(parents=True)
        self.dir.mkdir()
        script = self.bin / "qmail-remote"
        script.write_text(FAKE_REMOTE)
        script.chmod(0o755)

    def output(self, name, data):
        (self.dir / (name + ".out")).write_bytes(data)
        return name + "@fake.test"

    def recorded(self, name, what):
        return (self.dir / f"{name}.{what}").read_bytes()


@pytest.fixture
def fake(tmp_path):
    return Fake(tmp_path / "fake")


def shares_worker(backend):
    """Whether two deliveries started together run in one worker: with
    threads, once the workers already forked outnumber the CPUs."""
    if backend == "threads":
        return True
    if backend == "warm":
        return len(os.sched_getaffinity(0)) == 1
    return False


def _one_cpu(then=None):
    """A preexec_fn binding the child to one CPU (then running *then*): a
    spawner that sees one CPU fills a worker before it forks another."""
    def bind():
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        if then is not None:
            then()
    return bind


class Spawner:
    """A running qmail-rspawn: write commands, read fd 1 as it comes."""

    def __init__(self, home, backend, *, path_dir=None, env=None,
                 preexec_fn=None):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("QMAILREMOTE_")}
        e["QMAILHOME"] = str(home.root)
        e["QMAILREMOTE_QMAILQ"] = ME
        e["PYTHONPATH"] = os.pathsep.join(
            p for p in [PACKAGE_ROOT, os.environ.get("PYTHONPATH")] if p)
        if backend == "exec":
            e["QMAILREMOTE_RSPAWN_EXEC"] = "1"
        elif backend == "single":
            e["QMAILREMOTE_RSPAWN_PER_WORKER"] = "1"
        elif backend == "threads":
            e["QMAILREMOTE_RSPAWN_PER_WORKER"] = "4"
            preexec_fn = _one_cpu(preexec_fn)
        if path_dir is not None:
            e["PATH"] = f"{path_dir}{os.pathsep}{e.get('PATH', '/usr/bin:/bin')}"
        e.update(env or {})
        self.errpath = home.root.parent / f"rspawn-stderr-{id(self)}"
        with open(self.errpath, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qmailremote.rspawn"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                env=e, cwd="/", preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        self.buf = bytearray()   # fd 1 as read so far
        self.pos = 0             # what read()/report() have consumed
        self.eof = False

    # -- fd 1 -----------------------------------------------------------------

    def _fill(self, deadline):
        if self.eof:
            return False
        fd = self.proc.stdout.fileno()
        left = deadline - time.monotonic()
        r, _, _ = select.select([fd], [], [], max(0.0, left))
        if not r:
            raise AssertionError(
                f"qmail-rspawn: nothing more on fd 1 after {TIMEOUT}s; "
                f"read so far {bytes(self.buf)!r}")
        data = os.read(fd, 65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read(self, n):
        """The next *n* bytes of fd 1."""
        deadline = time.monotonic() + TIMEOUT
        while len(self.buf) - self.pos < n:
            if not self._fill(deadline):
                raise AssertionError(f"EOF on fd 1; read {bytes(self.buf)!r}")
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def report(self):
        """The next report: (slot, text without its NUL)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            end = self.buf.find(b"\0", self.pos + 1)
            if end >= 0:
                slot = self.buf[self.pos]
                text = bytes(self.buf[self.pos + 1:end])
                self.pos = end + 1
                return slot, text
            if not self._fill(deadline):
                raise AssertionError(f"EOF on fd 1 in a report; read {bytes(self.buf)!r}")

    def reports(self, n):
        return [self.report() for _ in range(n)]

    def pending(self):
        """What fd 1 holds now, unread (no waiting)."""
        fd = self.proc.stdout.fileno()
        while not self.eof and select.select([fd], [], [], 0)[0]:
            data = os.read(fd, 65536)
            if not data:
                self.eof = True
            self.buf += data
        return bytes(self.buf[self.pos:])

    # -- fd 0 -----------------------------------------------------------------

    def write(self, data):
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def close_stdin(self):
        if not self.proc.stdin.closed:
            self.proc.stdin.close()

    # -- the end ----------------------------------------------------------------

    def finish(self):
        """EOF on fd 0; returns (the rest of fd 1, exit status)."""
        self.close_stdin()
        deadline = time.monotonic() + TIMEOUT
        if not self.proc.stdout.closed:
            while self._fill(deadline):
                pass
        rc = self.proc.wait(max(0.1, deadline - time.monotonic()))
        rest = bytes(self.buf[self.pos:])
        self.pos = len(self.buf)
        assert self.stderr() == b""
        return rest, rc

    def stderr(self):
        return self.errpath.read_bytes()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def spawn(home, backend, remote_bin):
    """spawn(**kw): a Spawner for this test's home and backend."""
    started = []

    def start(path_dir=None, **kw):
        if path_dir is None and backend == "exec":
            path_dir = remote_bin
        s = Spawner(home, backend, path_dir=path_dir, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


# ---------------------------------------------------------------------------
# /proc: the processes under qmail-rspawn


def children(pid):
    out = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
        except FileNotFoundError:
            pass
    return out


def proc_state(pid):
    """The state letter of /proc/<pid>/stat, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2]


def fds_of(pid):
    """{fd number: readlink target} of a process."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            pass
    return out


def _tcp_inodes(port):
    """Inodes of the client sides of TCP connections to 127.0.0.1:*port*."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            rem_port = int(fields[2].split(":")[1], 16)
            if rem_port == port:
                inodes.add(fields[9])
    return inodes


def pid_connected_to(parent, port):
    """The child of *parent* that holds a TCP connection to *port*."""
    inodes = {f"socket:[{i}]" for i in _tcp_inodes(port)}
    found = [pid for pid in children(parent)
             if inodes & set(fds_of(pid).values())]
    assert len(found) == 1, (found, inodes)
    return found[0]


def unix_socket_inodes():
    with open("/proc/net/unix") as f:
        next(f)
        return {f"socket:[{line.split()[6]}]" for line in f}


def wait_exited(pids, timeout=TIMEOUT):
    """Wait until each of *pids* has exited (pidfd: no polling loop)."""
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not select.select([pidfd], [], [], timeout)[0]:
                raise AssertionError(f"process {pid} still running after {timeout}s")
        finally:
            os.close(pidfd)


def split_reports(data):
    """fd 1 bytes (after the first byte) as [(slot, text)]."""
    out = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\0", pos + 1)
        out.append((data[pos], data[pos + 1:end]))
        pos = end + 1
    return out


def held_script(event, **kw):
    """A delivery held before the greeting until *event* is set."""
    return [wait_event(event)] + smtp_script(**kw)


# ---------------------------------------------------------------------------
# report(): the table


#: (wait status, qmail-remote's output, the report).  Every row was checked
#: against netqmail 1.06's qmail-rspawn, run with a fake qmail-remote that
#: prints the output (scripts/differential_rspawn.py, ``report/*``: the
#: same outputs) or dies of SIGKILL or SIGSEGV, or exits 111, 100, 1, 255,
#: or 0 silently (``fake/*``).
REPORT_TABLE = [
    # the wait status comes first
    (9, b"r\0K ok\0", b"Zqmail-remote crashed.\n"),
    (11 | 0x80, b"", b"Zqmail-remote crashed.\n"),
    (111 << 8, b"r\0K ok\0", b"ZUnable to run qmail-remote.\n"),
    (100 << 8, b"r\0K ok\0", b"DUnable to run qmail-remote.\n"),
    (1 << 8, b"", b"DUnable to run qmail-remote.\n"),
    (255 << 8, b"", b"DUnable to run qmail-remote.\n"),
    (0, b"", b"Zqmail-remote produced no output.\n"),
    # one verdict record
    (0, b"Kok\0", b"Kok"),
    (0, b"Zlater\0", b"Zlater"),
    (0, b"Dnever\0", b"Dnever"),
    (0, b"K\0", b"K"),
    # r / h / s then the verdict: the folding
    (0, b"r\0Kaccepted\n\0", b"Kaccepted\n"),
    (0, b"r\0Ztemp\n\0", b"Ztemp\n"),
    (0, b"r\0Dperm\n\0", b"Dperm\n"),
    (0, b"hno\n\0Kyes\n\0", b"Dno\n"),
    (0, b"hno\n\0Zlater\n\0", b"Dno\n"),
    (0, b"hno\n\0Dgiving up\n\0", b"Dno\ngiving up\n"),
    (0, b"slater\n\0Kyes\n\0", b"Zlater\n"),
    (0, b"slater\n\0Ztemp\n\0", b"Zlater\ntemp\n"),
    (0, b"slater\n\0Dgiving up\n\0", b"Zlater\ngiving up\n"),
    (0, b"rabc\0Zdef\0", b"Zabcdef"),
    (0, b"s\0Zx\0", b"Zx"),
    (0, b"s\0", b"Z"),
    (0, b"h\0", b"D"),
    (0, b"r\0", b"D"),
    (0, b"hno\0", b"Dno"),
    # only the first recipient's record is shown
    (0, b"r\0r\0Kok\0", b"K"),
    (0, b"r\0h\0Kok\0", b"K"),
    (0, b"r\0s\0Dx\0", b"D"),
    (0, b"h\0\0Kx\0", b"D"),
    # the first K/Z/D record is the verdict; the second record is shown
    # after the first whatever it is, if it starts with K, Z or D
    (0, b"Kfirst\0Ksecond\0", b"Kfirstsecond"),
    (0, b"K\0Dx\0", b"Kx"),
    (0, b"D\0K\0", b"D"),
    (0, b"Z1\0D2\0K3\0", b"Z12"),
    # no K/Z/D record: D
    (0, b"\0", b"D"),
    (0, b"x\0", b"D"),
    (0, b"junk", b"D"),
    (0, b"Kjunk", b"D"),
    (0, b"warning\nK ok\0", b"Darning\nK ok"),
    (0, b"K\xff\xfe\x01\0", b"K\xff\xfe\x01"),
    (0, b"r\0K" + b"x" * 5000 + b"\0", b"K" + b"x" * 5000),
]


@pytest.mark.parametrize("wstat, output, expected", REPORT_TABLE,
                         ids=[f"{w}-{o[:20]!r}" for w, o, _ in REPORT_TABLE])
def test_report_table(wstat, output, expected):
    assert rspawn.report(wstat, output) == expected
    assert c_report(wstat, output) == expected


def c_report(wstat, s):
    """qmail-rspawn.c report(), transcribed statement by statement: C
    strings over a buffer zero-filled past the output (fresh memory), puts()
    stopping at the first NUL."""
    if wstat & 127:
        return b"Zqmail-remote crashed.\n"
    code = (wstat >> 8) & 255
    if code == 111:
        return b"ZUnable to run qmail-remote.\n"
    if code != 0:
        return b"DUnable to run qmail-remote.\n"
    length = len(s)
    if not length:
        return b"Zqmail-remote produced no output.\n"
    mem = bytes(s) + bytes(8)

    def puts(at):
        return mem[at:mem.index(0, at)]

    out = b""
    result = -1
    j = 0
    k = 0
    while k < length:
        if mem[k] == 0:
            if mem[j] == ord("K"):
                result = 1
                break
            if mem[j] == ord("Z"):
                result = 0
                break
            if mem[j] == ord("D"):
                break
            j = k + 1
        k += 1
    orr = result
    if mem[0] == ord("s"):
        orr = 0
    elif mem[0] == ord("h"):
        orr = -1
    out += {1: b"K", 0: b"Z", -1: b"D"}[orr]
    k = 1
    while k < length:
        k += 1
        if mem[k - 1] == 0:
            out += puts(1)
            if result <= orr and k < length and mem[k] in b"ZDK":
                out += puts(k + 1)
            break
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"K", b"Z", b"D", b"r", b"h", b"s", b"\0",
                                 b"x", b"\n", b"\xff"]), max_size=24))
def test_report_matches_c_loop(parts):
    # Outputs that end in NUL: past the end, C reads what the buffer held.
    output = b"".join(parts) + b"\0"
    assert rspawn.report(0, output) == c_report(0, output)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.binary(max_size=8))
def test_report_wait_status(wstat, output):
    assert rspawn.report(wstat, output + b"\0") == c_report(wstat, output + b"\0")


# ---------------------------------------------------------------------------
# Start-up: the first byte, tcpto, chdir


def test_first_byte_is_the_spawn_limit(spawn):
    s = spawn()
    assert s.read(1) == b"x"       # 120, netqmail's conf-spawn
    assert s.finish() == (b"", 0)


@pytest.mark.parametrize("value, limit", [
    ("1", 1), ("5", 5), ("255", 255),
    ("0", 120), ("256", 120), ("abc", 120), ("-3", 120), ("", 120),
])
def test_spawn_limit_setting(spawn, home, value, limit):
    s = spawn(env={"QMAILREMOTE_SPAWN_LIMIT": value})
    assert s.read(1) == bytes((limit,))
    # slot limit-1 passes the delnum checks (then the message is missing);
    # slot limit is too big.
    s.write(cmd(limit - 1, "9/9", "a@x.test") + cmd(limit, "9/9", "a@x.test"))
    assert s.reports(2) == [(limit - 1, ERR_OPEN), (limit, ERR_TOO_BIG)]
    assert s.finish() == (b"", 0)


@pytest.mark.parametrize("before, after", [
    (b"\x01" * 1024, bytes(1024)),
    (b"\x01" * 2000, bytes(1024) + b"\x01" * 976),     # the tail is kept
    (b"\x02" * 10, bytes(1024)),                       # written from 0, not cut
    (b"", bytes(1024)),
], ids=["1024", "2000", "10", "empty"])
def test_tcpto_clean(spawn, home, before, after):
    tcpto = home.lock / "tcpto"
    tcpto.write_bytes(before)
    s = spawn()
    assert s.read(1) == b"x"       # written after the clean-up
    assert tcpto.read_bytes() == after
    assert not (home.lock / "tcpto6").exists()
    assert s.finish() == (b"", 0)


@pytest.mark.parametrize("before, after", [
    (b"\x01" * 2048, bytes(2048)),
    (b"\x01" * 3000, bytes(2048) + b"\x01" * 952),
    (b"\x01" * 7, bytes(2048)),
], ids=["2048", "3000", "7"])
def test_tcpto6_clean(spawn, home, before, after):
    (home.lock / "tcpto6").write_bytes(before)
    s = spawn()
    assert s.read(1) == b"x"
    assert (home.lock / "tcpto6").read_bytes() == after
    assert not (home.lock / "tcpto").exists()   # never created
    assert s.finish() == (b"", 0)


def test_tcpto_missing_lock_dir_and_fifo(spawn, home):
    home.lock.rmdir()
    s = spawn()
    assert s.read(1) == b"x"
    assert s.finish() == (b"", 0)
    # A FIFO with no reader: the non-blocking open fails, nothing hangs.
    home.lock.mkdir()
    os.mkfifo(home.lock / "tcpto")
    s = spawn()
    assert s.read(1) == b"x"
    assert stat.S_ISFIFO(os.stat(home.lock / "tcpto").st_mode)
    assert s.finish() == (b"", 0)


def test_half_a_command_then_eof(spawn):
    s = spawn()
    assert s.read(1) == b"x"
    s.write(cmd(0, "1/100", "a@x.test")[:-1])     # no final NUL: not a command
    assert s.finish() == (b"", 0)


@pytest.mark.parametrize("what", ["no home", "no queue/mess", "unknown qmailq"])
def test_startup_failure_exits_111_silently(spawn, home, tmp_path, what):
    env = {}
    tcpto = home.lock / "tcpto"
    tcpto.write_bytes(b"\x01" * 1024)
    if what == "no home":
        env["QMAILHOME"] = str(tmp_path / "nonexistent")
    elif what == "no queue/mess":
        home.mess.rename(home.mess.with_name("mess.away"))
    else:
        env["QMAILREMOTE_QMAILQ"] = "no-such-user-qmr"
    s = spawn(env=env)
    assert s.finish() == (b"", 111)
    assert tcpto.read_bytes() == b"\x01" * 1024     # not cleaned


# ---------------------------------------------------------------------------
# Commands: fragmentation


ERROR_COMMANDS = [
    (cmd(120, "1/100", "a@x.test"), rep(120, ERR_TOO_BIG)),
    (cmd(3, "1/1a", "a@x.test"), rep(3, ERR_NONNUMERIC)),
    (cmd(0, "", "a@x.test"), rep(0, ERR_SHORT)),
    (cmd(7, "1/100", "no-at-sign"), rep(7, ERR_NOAT)),
    (cmd(119, "1/404", "a@x.test", sender=b""), rep(119, ERR_OPEN)),
    (cmd(0, "1" * 100, "a@x.test"), rep(0, ERR_LONG)),
]


@pytest.mark.parametrize("chunk", [1, 2, 5, 4096])
def test_fragmented_commands(spawn, home, chunk):
    with TeeSMTPServer(final_reply="250 ok queued") as srv:
        home.routes(tee=srv)
        s = spawn()
        assert s.read(1) == b"x"
        stream = ERROR_COMMANDS + [
            (cmd(4, "1/100", "rcpt@tee.test"), rep(4, ACCEPTED))]
        for command, expected in stream:
            for i in range(0, len(command), chunk):
                # nothing is reported before the command's last byte
                assert s.pending() == b""
                s.write(command[i:i + chunk])
            # ... and the report comes without any further input
            assert s.read(len(expected)) == expected
        assert s.finish() == (b"", 0)
        assert [m.rcpt_tos for m in srv.wait_messages(1)] == [["rcpt@tee.test"]]


def test_many_commands_in_one_write(spawn, home):
    # 60 commands (> 1024 bytes, more than one read) in one write, then a
    # write that ends one command, holds two more and starts another.
    with TeeSMTPServer(final_reply="250 ok queued") as srv:
        home.routes(tee=srv)
        s = spawn()
        assert s.read(1) == b"x"
        errors = [ERROR_COMMANDS[i % len(ERROR_COMMANDS)] for i in range(60)]
        blob = b"".join(c for c, _ in errors)
        assert len(blob) > 2048
        s.write(blob)
        assert s.read(sum(len(e) for _, e in errors)) == b"".join(e for _, e in errors)
        one, two = cmd(5, "1/100", "r1@tee.test"), cmd(6, "1/100", "r2@tee.test")
        s.write(one[:4])
        s.write(one[4:] + ERROR_COMMANDS[1][0] + ERROR_COMMANDS[3][0] + two[:9])
        assert s.read(len(ERROR_COMMANDS[1][1] + ERROR_COMMANDS[3][1])) == \
            ERROR_COMMANDS[1][1] + ERROR_COMMANDS[3][1]
        s.write(two[9:])
        assert sorted(s.reports(2)) == [(5, ACCEPTED), (6, ACCEPTED)]
        assert s.finish() == (b"", 0)
        srv.wait_messages(2)


# ---------------------------------------------------------------------------
# docmd(): every check, in order


def test_docmd_errors(spawn, home):
    os.mkfifo(home.mess / "1" / "555")
    (home.mess / "1" / "556").mkdir()
    long_ok = "1" * 99             # 100 bytes with its NUL: not too long
    table = [
        # delnum first
        (cmd(120, "1/100", "a@x.test"), ERR_TOO_BIG),
        (cmd(255, "x/y", "no-at"), ERR_TOO_BIG),
        # messid: nonnumerics (a leading '/', letters, 8-bit), then length
        (cmd(1, "/1/100", "a@x.test"), ERR_NONNUMERIC),
        (cmd(1, "1/10a", "a@x.test"), ERR_NONNUMERIC),
        (cmd(1, "abc", "no-at"), ERR_NONNUMERIC),
        (cmd(1, b"1/\xb0", "a@x.test"), ERR_NONNUMERIC),
        (cmd(1, "1 /100", "a@x.test"), ERR_NONNUMERIC),
        (cmd(1, "1" * 150 + "a", "a@x.test"), ERR_NONNUMERIC),
        (cmd(1, "1" * 100, "a@x.test"), ERR_LONG),
        (cmd(1, "1/" + "2" * 200, "no-at"), ERR_LONG),
        (cmd(1, long_ok, "a@x.test"), ERR_OPEN),
        (cmd(1, "", "a@x.test"), ERR_SHORT),
        (cmd(1, "", "no-at"), ERR_SHORT),
        # the recipient needs an '@' (the sender does not)
        (cmd(2, "1/100", "no-at"), ERR_NOAT),
        (cmd(2, "1/100", ""), ERR_NOAT),
        (cmd(2, "1/404", "no-at"), ERR_NOAT),
        # the message: missing, a FIFO, a directory
        (cmd(3, "1/404", "a@x.test"), ERR_OPEN),
        (cmd(3, "404/1", "a@x.test"), ERR_OPEN),
        (cmd(3, "1/555", "a@x.test"), ERR_TYPE),
        (cmd(3, "1/556", "a@x.test"), ERR_TYPE),
        (cmd(3, "1", "a@x.test"), ERR_TYPE),
    ]
    s = spawn()
    assert s.read(1) == b"x"
    s.write(b"".join(c for c, _ in table))
    expected = b"".join(rep(c[0], e) for c, e in table)
    assert s.read(len(expected)) == expected
    assert s.finish() == (b"", 0)


@pytest.mark.skipif(not IS_ROOT, reason="chown to another uid needs root")
def test_docmd_wrong_owner(spawn, home):
    home.message("2/200")
    os.chown(home.mess / "2" / "200", 54321, -1)
    s = spawn()
    assert s.read(1) == b"x"
    s.write(cmd(9, "2/200", "a@x.test"))
    assert s.report() == (9, ERR_OWNER)
    assert s.finish() == (b"", 0)


def test_docmd_delnum_in_use(spawn, home):
    release = threading.Event()
    with ScriptedServer([held_script(release), smtp_script()]) as srv:
        home.routes(held=srv)
        s = spawn()
        assert s.read(1) == b"x"
        s.write(cmd(3, "1/100", "a@held.test")
                + cmd(3, "1/100", "b@held.test")       # busy slot
                + cmd(3, "bad", "no-at")               # busy before the rest
                + cmd(4, "1/404", "b@held.test"))      # other slots go on
        assert s.reports(3) == [(3, ERR_IN_USE), (3, ERR_IN_USE), (4, ERR_OPEN)]
        srv.wait_connections(1)
        assert s.pending() == b""
        release.set()
        assert s.report() == (3, ACCEPTED)
        # free again
        s.write(cmd(3, "1/100", "c@held.test"))
        assert s.report() == (3, ACCEPTED)
        assert s.finish() == (b"", 0)
        srv.wait_done(connections=2)
        assert [r.lines[2] for r in srv.records] == [
            b"RCPT TO:<a@held.test>\r\n", b"RCPT TO:<c@held.test>\r\n"]


# ---------------------------------------------------------------------------
# Deliveries: what qmail-remote says, folded by report()


def _then(script, reply):
    """*script*, then *reply* and QUIT from the client."""
    return script + [send(reply), read_to_eof(b"QUIT\r\n")]


OUTCOMES = {
    # name: (server script, the report)
    "accepted": (smtp_script(), ACCEPTED),
    "final-451": (smtp_script(final=b"451 later\r\n"),
                  b"Z127.0.0.1 failed after I sent the message.\n"
                  b"Remote host said: 451 later\n"),
    "final-554": (smtp_script(final=b"554 no\r\n"),
                  b"D127.0.0.1 failed after I sent the message.\n"
                  b"Remote host said: 554 no\n"),
    "data-554": (_then(smtp_script(data=None), b"554 no data\r\n"),
                 b"D127.0.0.1 failed on DATA command.\n"
                 b"Remote host said: 554 no data\n"),
    # h, then "DGiving up": D with both texts
    "rcpt-550": (_then(smtp_script(rcpts=None), b"550 no\r\n"),
                 b"D127.0.0.1 does not like recipient.\n"
                 b"Remote host said: 550 no\nGiving up on 127.0.0.1.\n"),
    # s, then "DGiving up": Z (retried) with both texts
    "rcpt-450": (_then(smtp_script(rcpts=None), b"450 later\r\n"),
                 b"Z127.0.0.1 does not like recipient.\n"
                 b"Remote host said: 450 later\nGiving up on 127.0.0.1.\n"),
    "greeting-421": ([send(b"421 busy\r\n"), read_to_eof(b"QUIT\r\n")],
                     b"ZConnected to 127.0.0.1 but greeting failed.\n"
                     b"Remote host said: 421 busy\n"),
    "mail-550": (_then(smtp_script(mail=None), b"550 no\r\n"),
                 b"DConnected to 127.0.0.1 but sender was rejected.\n"
                 b"Remote host said: 550 no\n"),
}


def test_delivery_outcomes(spawn, home):
    servers = {name: ScriptedServer(script).start()
               for name, (script, _) in OUTCOMES.items()}
    try:
        home.routes(**{name.replace("-", ""): srv for name, srv in servers.items()})
        s = spawn()
        assert s.read(1) == b"x"
        names = list(OUTCOMES)
        s.write(b"".join(cmd(10 + i, "1/100", f"r@{name.replace('-', '')}.test")
                         for i, name in enumerate(names)))
        got = dict(s.reports(len(names)))
        assert got == {10 + i: OUTCOMES[name][1] for i, name in enumerate(names)}
        assert s.finish() == (b"", 0)
        for srv in servers.values():
            srv.wait_done()
    finally:
        for srv in servers.values():
            srv.stop()


def test_connection_refused(spawn, home):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))      # bound, not listening: refused
        home.routes(nobody=unused.getsockname()[1])
        s = spawn()
        assert s.read(1) == b"x"
        s.write(cmd(0, "1/100", "r@nobody.test"))
        assert s.report() == (0, b"ZSorry, I wasn't able to establish an SMTP "
                                 b"connection. (#4.4.1)\n")
        assert s.finish() == (b"", 0)


def test_delivery_arguments_and_message(spawn, home):
    # host: after the recipient's last '@'; the message from its start
    body = b"From: x\n\n" + b"line\n" * 5000
    home.message("3/300", body)
    with TeeSMTPServer(final_reply="250 ok queued") as srv:
        home.routes(tee=srv)
        s = spawn()
        assert s.read(1) == b"x"
        s.write(cmd(1, "3//300", "a@wrong.test@tee.test", sender=b"")
                + cmd(2, "3/300", "b@tee.test", sender=b"who@where.example"))
        assert sorted(s.reports(2)) == [(1, ACCEPTED), (2, ACCEPTED)]
        assert s.finish() == (b"", 0)
        msgs = srv.wait_messages(2)
        assert all(m.content == body.replace(b"\n", b"\r\n") for m in msgs)
        srv.wait_closed(2)
        envelopes = sorted(raw.split(b"\r\n")[1:3] for raw in srv.raw)
        assert envelopes == [
            [b"MAIL FROM:<>", b"RCPT TO:<\"a@wrong.test\"@tee.test>"],  # quoted
            [b"MAIL FROM:<who@where.example>", b"RCPT TO:<b@tee.test>"]]


# ---------------------------------------------------------------------------
# Exec backend with a fake qmail-remote: report()'s folding, exits, signals


FAKE_ROWS = [(w, o, e) for w, o, e in REPORT_TABLE if w == 0]


def test_fake_outputs_folded(home, fake):
    s = Spawner(home, "exec", path_dir=fake.bin,
                env={"FAKE_QR_DIR": str(fake.dir)})
    try:
        assert s.read(1) == b"x"
        commands = b""
        for i, (_, output, _) in enumerate(FAKE_ROWS):
            commands += cmd(i, "1/100", fake.output(f"out{i}", output))
        s.write(commands)
        got = dict(s.reports(len(FAKE_ROWS)))
        assert got == {i: e for i, (_, _, e) in enumerate(FAKE_ROWS)}
        assert s.finish() == (b"", 0)
    finally:
        s.kill()


def test_fake_exits_and_signals(home, fake):
    s = Spawner(home, "exec", path_dir=fake.bin,
                env={"FAKE_QR_DIR": str(fake.dir)})
    try:
        assert s.read(1) == b"x"
        cases = {
            "kill": CRASHED,
            "segv": CRASHED,
            "exit111": b"ZUnable to run qmail-remote.\n",
            "exit100": b"DUnable to run qmail-remote.\n",
            "exit1": b"DUnable to run qmail-remote.\n",
            "exit0": b"Zqmail-remote produced no output.\n",
            "stderr": b"Do stderr\nK ok",        # stderr joins the output
            "good": b"Kfine\n",
        }
        fake.output("kill", b"r\0Kok\0")
        fake.output("segv", b"r\0Kok\0")
        fake.output("exit0", b"")
        fake.output("stderr", b"K ok\0")
        fake.output("good", b"r\0Kfine\n\0")
        names = list(cases)
        s.write(b"".join(cmd(i, "1/100", f"{n}@fake.test") for i, n in enumerate(names)))
        assert dict(s.reports(len(names))) == {i: cases[n] for i, n in enumerate(names)}
        assert s.finish() == (b"", 0)
        # what the fake qmail-remote was given
        assert fake.recorded("good", "args") == b"3\nfake.test\ns@sender.example\ngood@fake.test\n"
        assert fake.recorded("good", "stdin") == BODY
        assert fake.recorded("good", "cwd") == str(home.mess).encode() + b"\n"
    finally:
        s.kill()


def test_fake_argument_host_after_last_at(home, fake):
    s = Spawner(home, "exec", path_dir=fake.bin,
                env={"FAKE_QR_DIR": str(fake.dir)})
    try:
        assert s.read(1) == b"x"
        fake.output("x", b"K\0")
        s.write(cmd(0, "1/100", "x@y@z.example", sender=b""))
        assert s.report() == (0, b"K")
        assert fake.recorded("x", "args") == b"3\nz.example\n\nx@y@z.example\n"
        assert s.finish() == (b"", 0)
    finally:
        s.kill()


@pytest.mark.parametrize("problem", ["missing", "not executable"])
def test_exec_qmail_remote_cannot_run(home, tmp_path, problem):
    bindir = tmp_path / "emptybin"
    bindir.mkdir()
    if problem == "not executable":
        (bindir / "qmail-remote").write_text("#!/bin/sh\nprintf 'K\\0'\n")
        (bindir / "qmail-remote").chmod(0o644)
    # PATH holds only that directory: execvp fails (ENOENT or EACCES),
    # which is not temporary: the child "exits 100".
    s = Spawner(home, "exec", env={"PATH": str(bindir)})
    try:
        assert s.read(1) == b"x"
        s.write(cmd(0, "1/100", "a@x.test") + cmd(1, "1/100", "b@x.test"))
        assert sorted(s.reports(2)) == [(0, b"DUnable to run qmail-remote.\n"),
                                        (1, b"DUnable to run qmail-remote.\n")]
        assert s.finish() == (b"", 0)
    finally:
        s.kill()


def test_exec_qmail_remote_without_shebang(home, tmp_path):
    """execvp() runs a file without #! through /bin/sh (ENOEXEC), as C
    qmail-rspawn's child does; posix_spawnp() alone would not."""
    bindir = tmp_path / "shbin"
    bindir.mkdir()
    (bindir / "qmail-remote").write_text("printf 'Kran\\0'\n")
    (bindir / "qmail-remote").chmod(0o755)
    s = Spawner(home, "exec", path_dir=bindir)
    try:
        assert s.read(1) == b"x"
        s.write(cmd(0, "1/100", "a@x.test"))
        assert s.report() == (0, b"Kran")      # netqmail 1.06's report
        assert s.finish() == (b"", 0)
    finally:
        s.kill()


# ---------------------------------------------------------------------------
# A delivery that crashes; slots out of order; EOF; stdout closed


def test_delivery_killed(spawn, home, backend):
    release = threading.Event()
    shared = shares_worker(backend)
    with ScriptedServer([read_to_eof()]) as victim, \
            ScriptedServer(
                [wait_event(release), read_to_eof()] if shared
                else held_script(release)) as held, \
            TeeSMTPServer(final_reply="250 ok queued") as tee:
        home.routes(victim=victim, held=held, tee=tee)
        s = spawn()
        assert s.read(1) == b"x"
        s.write(cmd(0, "1/100", "a@victim.test") + cmd(1, "1/100", "b@held.test"))
        victim.wait_connections(1)
        held.wait_connections(1)
        pid = pid_connected_to(s.pid, victim.port)
        assert (pid_connected_to(s.pid, held.port) == pid) == shared
        os.kill(pid, signal.SIGKILL)
        if shared:
            # Both ran in that worker: a process killed from outside (the
            # OOM killer) takes every delivery it runs -- the price of
            # threads (README), which QMAILREMOTE_RSPAWN_PER_WORKER=1 avoids.
            assert sorted(s.reports(2)) == [(0, CRASHED), (1, CRASHED)]
            s.write(cmd(2, "1/100", "c@tee.test"))
            assert s.report() == (2, ACCEPTED)
            release.set()
            s.write(cmd(1, "1/100", "b@tee.test"))
            assert s.report() == (1, ACCEPTED)
        else:
            assert s.report() == (0, CRASHED)
            # the others go on: one held, one new
            s.write(cmd(2, "1/100", "c@tee.test"))
            assert s.report() == (2, ACCEPTED)
            release.set()
            assert s.report() == (1, ACCEPTED)
        # the crashed slot takes a new delivery
        s.write(cmd(0, "1/100", "d@tee.test"))
        assert s.report() == (0, ACCEPTED)
        # every child that ended has been reaped
        assert all(proc_state(p) not in ("Z", None) for p in children(s.pid))
        assert pid not in children(s.pid)
        assert s.finish() == (b"", 0)
        victim.wait_done()
        held.wait_done()
        expected = ["c@tee.test", "d@tee.test"]
        if shared:
            expected.insert(0, "b@tee.test")
        assert sorted(m.rcpt_tos[0] for m in tee.wait_messages(
            len(expected))) == expected


def test_fault_reading_a_message_costs_that_delivery_only(home):
    """Three deliveries on three threads of one worker (four a worker, one
    CPU).  The first one's message, mapped, is truncated while it is sent:
    the kernel's fault guard makes that delivery's SIGBUS its report,
    ``Unable to read message.``; the worker lives and the other two are
    delivered.  (A fault anywhere else in a worker still kills it and
    every delivery it runs, as test_delivery_killed shows.)"""
    from test_fault_guard import BIG
    go, release = threading.Event(), threading.Event()
    big = home.mess / home.message("5/500", BIG)

    def cut(conn):
        os.truncate(big, 4096)
    cutter = [send(b"220 ok\r\n")]
    for reply in (b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        cutter += [expect_line(), send(reply)]
    cutter += [read_some(65536), wait_event(go), call(cut), read_to_eof()]
    with ScriptedServer(cutter, rcvbuf=65536) as cutting, \
            ScriptedServer(held_script(release)) as held, \
            TeeSMTPServer(final_reply="250 ok queued") as tee:
        home.routes(cutting=cutting, held=held, tee=tee)
        s = Spawner(home, "threads")
        try:
            assert s.read(1) == b"x"
            s.write(cmd(0, "5/500", "a@cutting.test")
                    + cmd(1, "1/100", "b@held.test"))
            cutting.wait_connections(1)
            held.wait_connections(1)
            worker = pid_connected_to(s.pid, cutting.port)
            assert pid_connected_to(s.pid, held.port) == worker
            go.set()
            assert s.report() == (0, rspawn.report(
                0, b"r\0ZUnable to read message. (#4.3.0)\n\0"))
            s.write(cmd(2, "1/100", "c@tee.test"))
            assert s.report() == (2, ACCEPTED)
            release.set()
            assert s.report() == (1, ACCEPTED)
            assert worker in children(s.pid)     # it never died
            assert s.finish() == (b"", 0)
            cutting.wait_done()
            held.wait_done()
            assert len(tee.wait_messages(1)) == 1
        finally:
            s.kill()


def test_threads_take_every_job_handed_at_once(home):
    """Round after round, two deliveries handed to one worker (four a
    worker, one CPU) at once must both be running -- both servers see
    their connection -- before either can end.  A worker that counted a
    thread busy only once it had started its job took the second job for
    free and left it queued behind the first (seen on CPython 3.13)."""
    rounds = 30
    releases = [threading.Event() for _ in range(rounds)]
    with ScriptedServer([held_script(e) for e in releases]) as one, \
            ScriptedServer([held_script(e) for e in releases]) as two:
        home.routes(one=one, two=two)
        s = Spawner(home, "threads")
        try:
            assert s.read(1) == b"x"
            for n in range(rounds):
                s.write(cmd(0, "1/100", "a@one.test")
                        + cmd(1, "1/100", "b@two.test"))
                one.wait_connections(n + 1)
                two.wait_connections(n + 1)
                releases[n].set()
                assert sorted(s.reports(2)) == [(0, ACCEPTED), (1, ACCEPTED)]
            assert s.finish() == (b"", 0)
            one.wait_done(connections=rounds)
            two.wait_done(connections=rounds)
        finally:
            s.kill()


def test_slots_finish_out_of_order(spawn, home):
    release = threading.Event()
    with ScriptedServer(held_script(release)) as held, \
            TeeSMTPServer(final_reply="250 ok queued") as tee:
        home.routes(held=held, tee=tee)
        s = spawn()
        assert s.read(1) == b"x"
        s.write(cmd(0, "1/100", "a@held.test"))
        held.wait_connections(1)
        s.write(cmd(1, "1/100", "b@tee.test"))
        assert s.report() == (1, ACCEPTED)
        release.set()
        assert s.report() == (0, ACCEPTED)
        assert s.finish() == (b"", 0)
        held.wait_done()


def test_eof_with_deliveries_running(spawn, home):
    release = threading.Event()
    with ScriptedServer(held_script(release, final=b"451 later\r\n")) as held:
        home.routes(held=held)
        s = spawn()
        assert s.read(1) == b"x"
        s.write(cmd(0, "1/100", "a@held.test") + cmd(77, "1/100", "b@held.test")
                + cmd(5, "1/1x", "c@held.test"))
        assert s.report() == (5, ERR_NONNUMERIC)
        s.close_stdin()
        held.wait_connections(2)
        assert s.proc.poll() is None
        release.set()
        later = (b"Z127.0.0.1 failed after I sent the message.\n"
                 b"Remote host said: 451 later\n")
        rest, rc = s.finish()
        assert rc == 0
        assert sorted(split_reports(rest)) == [(0, later), (77, later)]
        held.wait_done(connections=2)


def test_stdout_closed_keeps_delivering(spawn, home):
    with TeeSMTPServer(final_reply="250 ok queued") as tee:
        home.routes(tee=tee)
        s = spawn()
        assert s.read(1) == b"x"
        s.proc.stdout.close()
        # an error report, then a delivery report, both written to a pipe
        # with no reader; the next deliveries go on regardless
        s.write(cmd(0, "1/1x", "a@tee.test") + cmd(1, "1/100", "b@tee.test"))
        tee.wait_messages(1)
        s.write(cmd(2, "1/100", "c@tee.test") + cmd(3, "1/100", "d@tee.test"))
        s.close_stdin()
        assert s.proc.wait(TIMEOUT) == 0
        assert s.stderr() == b""
        assert sorted(m.rcpt_tos[0] for m in tee.wait_messages(3)) == [
            "b@tee.test", "c@tee.test", "d@tee.test"]


# ---------------------------------------------------------------------------
# Processes: workers, reaping, descriptors


def test_no_child_left(spawn, home, backend):
    release = threading.Event()
    with ScriptedServer([read_to_eof()]) as victim, \
            ScriptedServer(held_script(release)) as held, \
            TeeSMTPServer(final_reply="250 ok queued") as tee:
        home.routes(victim=victim, held=held, tee=tee)
        s = spawn()
        assert s.read(1) == b"x"
        s.write(b"".join(cmd(i, "1/100", f"r{i}@tee.test") for i in range(6)))
        assert sorted(s.reports(6)) == [(i, ACCEPTED) for i in range(6)]
        s.write(cmd(0, "1/100", "a@victim.test") + cmd(1, "1/100", "b@held.test"))
        victim.wait_connections(1)
        held.wait_connections(1)
        os.kill(pid_connected_to(s.pid, victim.port), signal.SIGKILL)
        assert s.report() == (0, CRASHED)
        release.set()
        assert s.report() == (1, ACCEPTED)
        kids = children(s.pid)
        assert all(proc_state(p) not in ("Z", None) for p in kids)
        if backend == "exec":
            assert kids == set()     # each qmail-remote reaped
        else:
            assert 1 <= len(kids) <= 6
        assert s.finish() == (b"", 0)
        # qmail-rspawn reaped its workers before it exited: none runs on,
        # none is a zombie, none was left to init
        assert [p for p in kids if proc_state(p) is not None] == []
        victim.wait_done()
        held.wait_done()


def test_idle_worker_killed(home):
    # A worker that dies while idle (the OOM killer...) is reaped, and the
    # next delivery gets a live one.
    with TeeSMTPServer(final_reply="250 ok queued") as tee:
        home.routes(tee=tee)
        s = Spawner(home, "warm")
        try:
            assert s.read(1) == b"x"
            s.write(cmd(0, "1/100", "a@tee.test"))
            assert s.report() == (0, ACCEPTED)
            idle, = children(s.pid)
            os.kill(idle, signal.SIGKILL)
            wait_exited([idle])
            s.write(cmd(0, "1/100", "b@tee.test"))
            assert s.report() == (0, ACCEPTED)
            assert proc_state(idle) is None       # reaped, not a zombie
            assert idle not in children(s.pid)
            assert s.finish() == (b"", 0)
            assert len(tee.wait_messages(2)) == 2
        finally:
            s.kill()


def test_delivery_descriptors(spawn, home, backend):
    release = threading.Event()
    with ScriptedServer(held_script(release)) as one, \
            ScriptedServer(held_script(release)) as two:
        home.routes(one=one, two=two)
        home.message("4/400")
        s = spawn()
        assert s.read(1) == b"x"
        s.write(cmd(0, "1/100", "a@one.test") + cmd(1, "4/400", "b@two.test"))
        one.wait_connections(1)
        two.wait_connections(1)
        unix = unix_socket_inodes()
        deliveries = {}   # pid -> [(port, message)]
        for port, messid in ((one.port, "1/100"), (two.port, "4/400")):
            deliveries.setdefault(pid_connected_to(s.pid, port), []).append(
                (port, str(home.mess / messid)))
        assert (len(deliveries) == 1) == shares_worker(backend)
        for pid, held in deliveries.items():
            fds = fds_of(pid)
            tcp = {f"socket:[{i}]" for port, _ in held
                   for i in _tcp_inodes(port)}
            messages = {message for _, message in held}
            if backend == "exec":
                (message,) = messages
                assert fds[0] == message
                assert fds[1] == fds[2] and fds[1].startswith("pipe:")
            else:
                assert [fds[0], fds[1], fds[2]] == [os.devnull] * 3
            kinds = sorted(
                "message" if v in messages else
                "smtp" if v in tcp else
                "unix" if v in unix else
                "home" if v == str(home.root) else v
                for k, v in fds.items() if k > 2)
            # each delivery opens the home directory itself (qmail-remote
            # does); a worker holds, besides its socket to the spawner,
            # each of its deliveries' message, connection and home
            n = len(held)
            expected = (["home", "smtp"] if backend == "exec" else
                        ["home"] * n + ["message"] * n + ["smtp"] * n
                        + ["unix"])
            assert kinds == expected, fds
            if backend != "exec":
                assert {v for v in fds.values() if v in messages} == messages
        release.set()
        assert sorted(s.reports(2)) == [(0, ACCEPTED), (1, ACCEPTED)]
        assert s.finish() == (b"", 0)


# ---------------------------------------------------------------------------
# Limits: many slots at once, few descriptors

def test_many_slots_each_reported_once(spawn, home):
    """60 deliveries handed over in one write, on 60 slots up to 254 with
    the spawn limit at 255: each slot gets exactly one report."""
    slots = list(range(0, 255, 4))[:60] + [254]
    with TeeSMTPServer(final_reply="250 ok queued") as srv:
        home.routes(tee=srv)
        s = spawn(env={"QMAILREMOTE_SPAWN_LIMIT": "255"})
        assert s.read(1) == b"\xff"
        s.write(b"".join(cmd(n, "1/100", "r%d@tee.test" % n) for n in slots))
        got = s.reports(len(slots))
        out, status = s.finish()
    assert out == b"" and status == 0
    assert sorted(slot for slot, _ in got) == sorted(slots)
    assert {text for _, text in got} == {ACCEPTED}
    assert len(srv.messages) == len(slots)


def test_low_descriptor_limit_defers_cleanly(spawn, home, backend):
    """With ulimit -n 24, 40 deliveries at once (100 with threads: a
    worker then runs only two, as many as its descriptors allow) cannot
    all get a pipe or a worker: those that cannot are C's "unable to
    create pipe" (or "fork") Z reports, the others are delivered; no
    traceback, exit 0."""
    import resource

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
    count = 100 if backend in ("warm", "threads") else 40
    with TeeSMTPServer(final_reply="250 ok queued") as srv:
        home.routes(tee=srv)
        s = spawn(preexec_fn=low, env={"QMAILREMOTE_SPAWN_LIMIT": "255"})
        assert s.read(1) == b"\xff"
        s.write(b"".join(cmd(n, "1/100", "r%d@tee.test" % n)
                         for n in range(count)))
        got = s.reports(count)
        out, status = s.finish()
    assert status == 0 and out == b""
    assert b"Traceback" not in s.stderr()
    texts = {text for _, text in got}
    assert texts <= {ACCEPTED, b"Zqmail-spawn unable to create pipe. "
                     b"(#4.3.0)\n", b"Zqmail-spawn unable to fork. "
                     b"(#4.3.0)\n"}, texts
    assert sorted(slot for slot, _ in got) == list(range(count))
    assert ACCEPTED in texts
    assert len(texts) > 1   # the limit was reached: some were refused
    assert len(srv.messages) == sum(text == ACCEPTED for _, text in got)
