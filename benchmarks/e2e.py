"""End-to-end delivery throughput: whole processes against a loopback sink.

Every sender is a whole process delivering one message to the same fast
loopback SMTP sink (``sink.py``), timed from spawn to reap:

* ``ceiling``: ``python -I -S`` doing the SMTP dialogue itself and
  ``socket.sendfile``-ing a pre-encoded copy of the body (CRLF, dot-stuffed,
  ``.\\r\\n`` added once, before timing), with TCP_NODELAY: the fastest a
  Python process can put this message on the wire;
* ``qmail-remote``: the installed console script, compiled kernel;
* ``qmail-remote-pure``: the same, with ``QMAILREMOTE_NO_EXTENSIONS=1``;
* ``smtplib``: ``smtplib.SMTP(...).sendmail(from, to, msg)`` with *msg* the
  file read as text (a ``str``, as ``msg.as_string()`` users pass): smtplib
  sends ``bytes`` as they are, bare LFs included, and converts line endings
  only for ``str``.  ``smtplib-bytes`` (only on request) passes the bytes,
  and so puts bare LFs on the wire;
* ``aiosmtplib``: ``aiosmtplib.send(msg_bytes, ...)`` under ``asyncio.run``,
  when it is importable (it normalises line endings of bytes itself);
* ``netqmail``: a C netqmail 1.06 ``qmail-remote``, when
  ``QMAILREMOTE_BENCH_C`` names the binary and ``QMAILREMOTE_BENCH_C_HOME``
  the qmail home compiled into it.  The harness writes ``control/me`` and
  ``control/smtproutes`` there (and puts back what was there before), so it
  must NOT be a live qmail's home; a home with a ``queue/`` is refused
  (1.06 has no TLS: it is in no TLS figure);
* ``ceiling-tls``: the TLS ceiling, against a sink that offers STARTTLS:
  ``python -I -S`` doing EHLO, STARTTLS, the handshake, EHLO, MAIL, RCPT,
  DATA in lock-step, then writing the pre-encoded body through ``_ssl``
  (what ``ssl.SSLSocket`` wraps, as ``qmailremote/tls.py`` uses it) in
  1 MiB writes read from the page cache; TCP_NODELAY, a blocking socket,
  TLS 1.2 at least, no certificate check;
* ``s_client``: ``openssl s_client -starttls smtp -quiet`` against the same
  sink, its stdin a file with EHLO, MAIL, RCPT, DATA, the same pre-encoded
  body and QUIT (written before timing): it sends what it reads, in 8 KiB
  reads and records, pipelined, and exits when the sink closes after QUIT.

qmail-remote gets the message file as its stdin (a regular file, as
qmail-rspawn gives it); the library scripts open it by path, as their users
would.  Messages (``messages.py``) are 76-byte LF lines, 2 % of them starting
with ``.``, seeded, written once per size; everything is read from the page
cache.  Each run checks that the sink got one more message with exactly the
expected body size and that qmail-remote printed a K report.

Per sender and size: wall time, CPU time (user+sys) and peak RSS of the
sender (``os.wait4`` in a small launcher process that forks it, see
``LAUNCHER``), throughput (message size / wall time) and wall time over
the ceiling's; the harness's own CPU time during the run is the sink's,
reported so that a saturated sink shows.  Runs interleave the senders, in
an order rotated each run; medians (and the best run) are reported.  A
"sink check" then compares a plain ``sendall`` loop from memory, against
the sink and against a bare drain, with the ceiling; with a TLS sink, a
"TLS sink check" writes the body from memory through ``_ssl`` into the TLS
sink, into a drain that only decrypts, and into one that reads the
ciphertext without decrypting it (the client's own limit).

    python benchmarks/e2e.py [--sizes 1K,1M,100M,1G] [--runs N]
        [--senders ceiling,qmail-remote,...] [--json out.json] [--png out.png]
        [--profiles noesmtp,esmtp,esmtp-nochunking,esmtp-nosize,...]
        [--rtt-scenarios [--rtt-only NAMES] [--delay-ms 25] [--rtt-runs 9]]

The sink is an ESMTP server (``sink.py``); the shared one offers only
8BITMIME, so ``qmail-remote`` above speaks ESMTP in lock-step with DATA.

``--profiles`` adds the installed qmail-remote once per profile, each with
a home of its own (control files) and a sink of its own (extensions
offered), run interleaved with the other senders; a table of each
profile's median wall over ``noesmtp``'s (and ``esmtp-nochunking``'s)
follows the main one:

* ``noesmtp``: ``control/noesmtp``, netqmail 1.06's dialogue (the code
  path of the pre-ESMTP releases); the sink offers everything;
* ``esmtp``: the default; the sink offers SIZE, PIPELINING, CHUNKING:
  ``SIZE=`` (a count of the message's lines first) and BDAT;
* ``esmtp-nochunking``: ``control/nochunking``, same sink: ``SIZE=``, DATA;
* ``esmtp-nosize``, ``esmtp-nochunking-nosize``: the sink does not offer
  SIZE: BDAT or DATA with no line count;
* ``esmtp-tls``: as ``esmtp``, and the sink offers STARTTLS (a certificate
  made at start-up, see ``sink.py``): the client's default, opportunistic
  STARTTLS with no certificate check, then SIZE= and BDAT under TLS;
* ``esmtp-nochunking-tls``: ``control/nochunking``: DATA under TLS;
* ``esmtp-nosize-tls``: the TLS sink without SIZE: BDAT, no line count.

A TLS profile brings ``ceiling-tls`` and ``s_client`` (when ``openssl``
is on the PATH), as every run brings the ceiling; they have a TLS sink of
their own.  Every TLS run also checks that the sink completed one more
handshake (an opportunistic client that fell back to plaintext fails the
run).  A TLS table then puts ours in plaintext (``esmtp``, else
``qmail-remote``) beside ours over STARTTLS and the references, per size:
median wall, CPU, CPU per GiB, peak RSS, wall over ``ceiling-tls``'s and
``s_client``'s, and the TLS targets: at 100M ``esmtp-tls`` within
1.15x of ``ceiling-tls`` and no slower than ``s_client``, at 1G its peak
RSS at most 40 MiB, at 1K its CPU at most 15 ms over ``esmtp``'s (see
also ``startup.py --tls``, with more runs and a breakdown).  For example:

    python benchmarks/e2e.py --sizes 1K,100M,1G --senders ceiling \\
        --profiles esmtp,esmtp-tls --json tls.json

``--rtt-scenarios`` runs 1 KB deliveries through ``Relay``, a user-space
TCP relay that holds every chunk ``--delay-ms`` (25) before passing it on,
in order, each way (these kernels have no netem), and reports the wall
time in round trips, from the relay's accept (the client's connect) to the
last byte passed to the client before its QUIT: the final reply.  The
second figure, "process RTT", is (median wall through the relay - median
wall straight to the sink) / RTT, runs interleaved.  Scenarios (the sink's
offer; the client's default unless said): ``noesmtp`` (1.06, 5.5 RTT),
``esmtp`` (SIZE only: lock-step DATA, 5.5), ``esmtp+chunking`` (4.5),
``esmtp+pipelining`` (3.5; target <= 3.7), ``esmtp+pipelining+chunking``
(2.5, BDAT LAST in the write with MAIL and RCPT; target <= 2.7), and
``size-refused``: a 1 MB message against ``SIZE 1000000``, refused after
EHLO (1.5 RTT), with the bytes the sink read (target < 1 KB).  With
``--sizes none`` only the round trips are run.

Sizes are binary (1M = 2**20 bytes), throughput is MiB/s.  1G is skipped
when the temp directory has too little space.  Install the package first,
non-editable (``pip install .``), and run from anywhere.
"""

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from messages import (describe, encode, format_size, generate,  # noqa: E402
                      parse_size)
from sink import Sink  # noqa: E402

SENDER = "a@bench.example"
RECIPIENT = "c@bench.example"
HELO = "bench.invalid"
ALL_SENDERS = ["ceiling", "qmail-remote", "qmail-remote-pure", "smtplib",
               "aiosmtplib", "netqmail"]
OPTIONAL = ["smtplib-bytes", "ceiling-tls", "s_client"]
TLS_REFERENCES = ["ceiling-tls", "s_client"]
MIB = 1 << 20
SINK_CHECK_RUNS = 5
SINK_CHECK_MIN = 64 * MIB  # below this, fixed costs swamp the rate

# --- the client processes -------------------------------------------------

_DIALOGUE = f"""
import socket, sys, time
port = int(sys.argv[2])
def reply(f, want):
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            break
    if not line.startswith(want):
        sys.exit("unexpected reply %r" % line)
def dialogue():
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    reply(f, b"220")
    for cmd, want in ((b"HELO {HELO}", b"250"),
                      (b"MAIL FROM:<{SENDER}>", b"250"),
                      (b"RCPT TO:<{RECIPIENT}>", b"250"), (b"DATA", b"354")):
        s.sendall(cmd + b"\\r\\n")
        reply(f, want)
    return s, f
def finish(s, f):
    reply(f, b"250")
    s.sendall(b"QUIT\\r\\n")
    s.close()
"""

# TCP_NODELAY: without it the end of the body waits, in about half the
# runs, for the sink's delayed ACK (Nagle; see the README), and the ceiling
# is the best a process can do.
CEILING = _DIALOGUE + """
s, f = dialogue()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
with open(sys.argv[1], "rb") as body:
    s.sendfile(body)
finish(s, f)
"""

# The sink check's client: the encoded body read into memory first, then
# sent with sendall() 1 MiB at a time; prints the seconds from the DATA
# reply to the final reply ("smtp") or from connect to the drain's EOF
# ("raw").  TCP_NODELAY: a 1 MiB write ends in a short segment, and Nagle
# would hold the next short one for the receiver's delayed ACK (40 ms),
# which measures the ACK timer, not the sink.
MEMORY = _DIALOGUE + """
with open(sys.argv[1], "rb") as body:
    data = memoryview(body.read())
chunk = 1 << 20
if sys.argv[3] == "smtp":
    s, f = dialogue()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.perf_counter()
    for i in range(0, len(data), chunk):
        s.sendall(data[i:i + chunk])
    finish(s, f)
else:
    start = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(data), chunk):
        s.sendall(data[i:i + chunk])
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
print(time.perf_counter() - start)
"""

SMTPLIB = f"""
import smtplib, sys
with open(sys.argv[1]) as f:
    msg = f.read()
with smtplib.SMTP("127.0.0.1", int(sys.argv[2]),
                  local_hostname="{HELO}") as smtp:
    smtp.sendmail("{SENDER}", ["{RECIPIENT}"], msg)
"""

SMTPLIB_BYTES = SMTPLIB.replace("open(sys.argv[1])", 'open(sys.argv[1], "rb")')

# The TLS ceiling: the same pre-encoded body, read 1 MiB at a time from the
# page cache and written through Python's TLS (the `_ssl` objects that
# ssl.SSLSocket wraps, as qmailremote/tls.py uses them: ssl.py's imports
# would add ~5 ms to every run) after EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA
# in lock-step; the socket blocks (no timeout), TCP_NODELAY as above;
# TLS 1.2 at least, no certificate check (opportunistic TLS, as the client's
# default).  In "smtp" mode it is a sender; in "memory" mode (the sink
# check) the body is read into memory first and the seconds from DATA's
# reply to the final reply are printed.
CEILING_TLS = f"""
import _ssl, socket, sys, time
class Replies:
    def __init__(self, recv):
        self.recv, self.data = recv, b""
    def expect(self, want):
        while True:
            while b"\\n" not in self.data:
                more = self.recv(65536)
                if not more:
                    sys.exit("connection closed")
                self.data += more
            line, self.data = self.data.split(b"\\n", 1)
            if line[3:4] != b"-":
                break
        if not line.startswith(want):
            sys.exit("unexpected reply %r" % line)
chunk = 1 << 20
if sys.argv[3] == "memory":
    with open(sys.argv[1], "rb") as body:
        data = memoryview(body.read())
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
r = Replies(s.recv)
r.expect(b"220")
for cmd, want in ((b"EHLO {HELO}", b"250"), (b"STARTTLS", b"220")):
    s.sendall(cmd + b"\\r\\n")
    r.expect(want)
ctx = _ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = _ssl.CERT_NONE
ctx.minimum_version = _ssl.PROTO_TLSv1_2
tls = ctx._wrap_socket(s, False, None)
tls.do_handshake()
r = Replies(tls.read)
for cmd, want in ((b"EHLO {HELO}", b"250"), (b"MAIL FROM:<{SENDER}>", b"250"),
                  (b"RCPT TO:<{RECIPIENT}>", b"250"), (b"DATA", b"354")):
    tls.write(cmd + b"\\r\\n")
    r.expect(want)
start = time.perf_counter()
if sys.argv[3] == "memory":
    for i in range(0, len(data), chunk):
        tls.write(data[i:i + chunk])
else:
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(sys.argv[1], "rb", buffering=0) as body:
        while True:
            n = body.readinto(buf)
            if not n:
                break
            tls.write(view[:n])
r.expect(b"250")
seconds = time.perf_counter() - start
tls.write(b"QUIT\\r\\n")
s.close()
if sys.argv[3] == "memory":
    print(seconds)
"""

# The sink check's TLS drain client: implicit TLS (the handshake at
# connect), the body from memory in 1 MiB writes, then EOF; prints the
# seconds from the end of the handshake to the drain's EOF.
MEMORY_TLS_RAW = """
import _ssl, socket, sys, time
with open(sys.argv[1], "rb") as body:
    data = memoryview(body.read())
chunk = 1 << 20
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ctx = _ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = _ssl.CERT_NONE
tls = ctx._wrap_socket(s, False, None)
tls.do_handshake()
start = time.perf_counter()
for i in range(0, len(data), chunk):
    tls.write(data[i:i + chunk])
s.shutdown(socket.SHUT_WR)
while s.recv(65536):    # session tickets, then the drain's EOF
    pass
print(time.perf_counter() - start)
"""

AIOSMTPLIB = f"""
import asyncio, sys, aiosmtplib
with open(sys.argv[1], "rb") as f:
    msg = f.read()
asyncio.run(aiosmtplib.send(msg, sender="{SENDER}",
                            recipients=["{RECIPIENT}"], hostname="127.0.0.1",
                            port=int(sys.argv[2]), local_hostname="{HELO}",
                            timeout=600))
"""


# --- environment ----------------------------------------------------------

def qmail_remote_command():
    beside = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
    found = beside if os.path.exists(beside) else shutil.which("qmail-remote")
    if not found:
        sys.exit("qmail-remote is not installed: pip install . first")
    return found


def write_home(home, port, flags=(), credentials=""):
    """control/me and a default route to *port*; *flags*: empty files;
    *credentials*: appended to the route (``|user|password``)."""
    control = os.path.join(home, "control")
    os.makedirs(control, exist_ok=True)
    for name in flags:
        open(os.path.join(control, name), "w").close()
    with open(os.path.join(control, "me"), "w") as f:
        f.write(HELO + "\n")
    with open(os.path.join(control, "smtproutes"), "w") as f:
        f.write(f":127.0.0.1:{port}{credentials}\n")


class CHome:
    """The C build's compiled-in home: control files written, then put back."""

    FILES = ("me", "smtproutes")

    def __init__(self, home):
        if os.path.exists(os.path.join(home, "queue")):
            sys.exit(f"QMAILREMOTE_BENCH_C_HOME={home} has a queue/: it looks "
                     "like a live qmail home; use a scratch home")
        self.home = home
        self.saved = {}

    def __enter__(self):
        for name in self.FILES:
            path = os.path.join(self.home, "control", name)
            try:
                with open(path, "rb") as f:
                    self.saved[name] = f.read()
            except FileNotFoundError:
                self.saved[name] = None
        return self

    def __exit__(self, *exc):
        for name, data in self.saved.items():
            path = os.path.join(self.home, "control", name)
            if data is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            else:
                with open(path, "wb") as f:
                    f.write(data)


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def kernel_in_use(env, cwd):
    """What the installed package's console script would load."""
    code = ("import qmailremote, qmailremote._kernel as k; "
            "print(qmailremote.__file__); print(k.COMPILED)")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip()}
    path, compiled = done.stdout.splitlines()[-2:]
    return {"module": path, "compiled": compiled == "True"}


def git_head():
    try:
        return subprocess.run(["git", "-C", os.path.join(HERE, os.pardir),
                               "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --- running one process --------------------------------------------------

# Every sender is started by this launcher, which forks it, times it from
# fork to reap and reports its wait4() rusage on fd argv[1].  Without it,
# a sender's ru_maxrss would start at the harness's own peak RSS: Linux
# carries the peak of the memory image a process had before exec() into
# its ru_maxrss, and a child spawned by the harness had the harness's.
# The launcher is a fresh, small process, so the floor is its own size
# (measured at start-up with `true`, and reported).
LAUNCHER = """
import os, sys, time
fd, argv = int(sys.argv[1]), sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if not pid:
    try:
        os.close(fd)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - start
os.write(fd, ("%r %r %r %d %d" % (wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss,
              os.waitstatus_to_exitcode(status))).encode())
"""
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes / KiB
SPAWN_CPU = [0.0]  # the harness's CPU time for one spawn, set at start-up


def run_process(argv, env, cwd, stdin_path, timeout):
    """Run *argv* through the launcher: {wall_s, user_s, sys_s, ...}."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    err = tempfile.TemporaryFile()
    report_r, report_w = os.pipe()
    killed = []
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report_w)]
            + argv, stdin=stdin, stdout=subprocess.PIPE, stderr=err, env=env,
            cwd=cwd, pass_fds=(report_w,), start_new_session=True)
        os.close(report_w)
        report_w = None

        def kill():
            if proc.returncode is None:
                killed.append(True)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
        killer = threading.Timer(timeout, kill)
        killer.daemon = True
        killer.start()
        try:
            out = proc.stdout.read()
            report = b""
            while True:
                piece = os.read(report_r, 4096)
                if not piece:
                    break
                report += piece
            proc.wait()
        finally:
            killer.cancel()
        after = resource.getrusage(resource.RUSAGE_SELF)
        proc.stdout.close()
        err.seek(0)
        result = {
            "wall_s": 0.0, "user_s": 0.0, "sys_s": 0.0, "maxrss_bytes": 0,
            "returncode": proc.returncode or -1,
            "sink_cpu_s": max(0.0, after.ru_utime - before.ru_utime
                              + after.ru_stime - before.ru_stime
                              - SPAWN_CPU[0]),
            "killed": bool(killed),
            "stdout": out,
            "stderr": err.read()[-2000:],
        }
        if report and not proc.returncode:
            wall, user, system, rss, code = report.split()
            result.update(wall_s=float(wall), user_s=float(user),
                          sys_s=float(system),
                          maxrss_bytes=int(rss) * RSS_UNIT,
                          returncode=int(code))
        return result
    finally:
        err.close()
        os.close(report_r)
        if report_w is not None:
            os.close(report_w)
        if stdin_path:
            stdin.close()


def launcher_baseline(cwd):
    """The launcher running `true`: (peak RSS floor, harness CPU per spawn).

    The first is the smallest peak RSS the launcher can report; the second
    is taken off every run's harness CPU time to leave the sink's.
    """
    true = shutil.which("true") or "/bin/true"
    runs = [run_process([true], os.environ, cwd, None, 60) for _ in range(5)]
    return (max(r["maxrss_bytes"] for r in runs),
            statistics.median(r["sink_cpu_s"] for r in runs))


def interpreter_startup(cwd):
    """Median wall seconds of `python -c pass`, with and without site.

    The console script and the library scripts run with site (and any
    .pth files it executes); the ceiling runs with -I -S.
    """
    out = {}
    for name, flags in (("python -c pass", []),
                        ("python -I -S -c pass", ["-I", "-S"])):
        runs = [run_process([sys.executable] + flags + ["-c", "pass"],
                            os.environ, cwd, None, 60) for _ in range(7)]
        out[name] = statistics.median(r["wall_s"] for r in runs)
    return out


def package_digest(module_path):
    """A short digest of the installed package's .py and extension files."""
    import hashlib
    folder = os.path.dirname(module_path)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith((".py", ".so", ".pyd")):
            digest.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def k_report(stdout):
    """True when qmail-remote's output ends with a K report."""
    reports = stdout.split(b"\0")
    return stdout.endswith(b"\0") and len(reports) >= 2 and \
        reports[-2][:1] == b"K"


# --- senders --------------------------------------------------------------

class Sender:
    def __init__(self, name, argv, env, stdin=False, qmail=False,
                 expect=None, memory_factor=0, sink=None, tls=False):
        self.name = name
        self.sink = sink            # its own sink (profiles); None: shared
        self.argv = argv            # list; "{raw}", "{enc}", "{port}" filled
        self.env = env
        # True: the raw message file as stdin; a string: that file of
        # prepare()'s ("s_client": the s_client input)
        self.stdin = "raw" if stdin is True else stdin
        self.tls = tls              # the sink must see one more handshake
        self.qmail = qmail          # stdout must end with a K report
        self.expect = expect        # body bytes (info) -> int; None: encoded
        self.memory_factor = memory_factor  # copies of the message held

    def command(self, files, port):
        return [a.format(raw=files["raw"], enc=files["enc"], port=port)
                for a in self.argv]


def compiled_env():
    """The environment, without a QMAILREMOTE_NO_EXTENSIONS it may carry."""
    return {k: v for k, v in os.environ.items()
            if k != "QMAILREMOTE_NO_EXTENSIONS"}


def make_senders(names, home, notes, tls_sink=None):
    py = sys.executable
    base = compiled_env()
    qenv = dict(base, QMAILHOME=home)
    qr = qmail_remote_command()
    qargs = ["bench.example", SENDER, RECIPIENT]
    table = {
        "ceiling": lambda: Sender(
            "ceiling", [py, "-I", "-S", "-c", CEILING, "{enc}", "{port}"],
            base),
        "qmail-remote": lambda: Sender(
            "qmail-remote", [qr] + qargs, qenv, stdin=True, qmail=True),
        "qmail-remote-pure": lambda: Sender(
            "qmail-remote-pure", [qr] + qargs,
            dict(qenv, QMAILREMOTE_NO_EXTENSIONS="1"), stdin=True,
            qmail=True),
        "smtplib": lambda: Sender(
            "smtplib", [py, "-c", SMTPLIB, "{raw}", "{port}"], base,
            memory_factor=7),
        "smtplib-bytes": lambda: Sender(
            "smtplib-bytes", [py, "-c", SMTPLIB_BYTES, "{raw}", "{port}"],
            base, memory_factor=4,
            # bare LFs: the body as it is, dots doubled, CRLF . CRLF
            expect=lambda info: info["bytes"] + info["dot_lines"] + 5),
        "aiosmtplib": lambda: Sender(
            "aiosmtplib", [py, "-c", AIOSMTPLIB, "{raw}", "{port}"], base,
            memory_factor=7),
    }
    tls_table = {
        "ceiling-tls": lambda: Sender(
            "ceiling-tls", [py, "-I", "-S", "-c", CEILING_TLS, "{enc}",
                            "{port}", "stream"], base, sink=tls_sink,
            tls=True),
        "s_client": lambda: Sender(
            "s_client", [openssl, "s_client", "-starttls", "smtp",
                         "-connect", "127.0.0.1:{port}", "-name", HELO,
                         "-quiet"], base, stdin="s_client", sink=tls_sink,
            tls=True),
    }
    openssl = shutil.which("openssl")
    c_binary = os.environ.get("QMAILREMOTE_BENCH_C")
    c_home = os.environ.get("QMAILREMOTE_BENCH_C_HOME")
    senders = []
    for name in names:
        if name == "aiosmtplib":
            probe = subprocess.run([py, "-c", "import aiosmtplib"],
                                   capture_output=True)
            if probe.returncode:
                notes.append("aiosmtplib: not importable, skipped "
                             "(pip install aiosmtplib)")
                continue
        if name == "netqmail":
            if not c_binary:
                notes.append("netqmail: not measured (set QMAILREMOTE_BENCH_C"
                             " and QMAILREMOTE_BENCH_C_HOME)")
                continue
            if not c_home:
                sys.exit("QMAILREMOTE_BENCH_C is set: set "
                         "QMAILREMOTE_BENCH_C_HOME to the home compiled into "
                         "it (a scratch home, never a live qmail's)")
            env = {k: v for k, v in base.items() if k != "QMAILHOME"}
            c_binary = os.path.abspath(c_binary)
            if not os.access(c_binary, os.X_OK):
                sys.exit(f"QMAILREMOTE_BENCH_C={c_binary}: not executable")
            senders.append(Sender("netqmail", [c_binary] + qargs, env,
                                  stdin=True, qmail=True))
            continue
        if name in tls_table:
            if name == "s_client" and not openssl:
                notes.append("s_client: not measured, no openssl command "
                             "(apt-get install openssl)")
                continue
            senders.append(tls_table[name]())
            continue
        if name not in table:
            sys.exit(f"unknown sender {name!r}; known: "
                     f"{', '.join(ALL_SENDERS + OPTIONAL)}")
        senders.append(table[name]())
    return senders


# The --profiles senders: the installed qmail-remote, each with a home of its
# own (the control files below) and a sink of its own (offering the
# extensions below).  Name -> (control files, Sink options).
FULL = {"size": 0, "pipelining": True, "chunking": True}
NOSIZE = {"pipelining": True, "chunking": True}
TLS = dict(FULL, tls=True)
PROFILES = {
    "noesmtp": (["noesmtp"], FULL),                 # 1.06: HELO, DATA
    "esmtp": ([], FULL),                            # BDAT, SIZE=
    "esmtp-nochunking": (["nochunking"], FULL),     # DATA, SIZE=
    "esmtp-nosize": ([], NOSIZE),                   # BDAT, no SIZE=
    "esmtp-nochunking-nosize": (["nochunking"], NOSIZE),  # DATA, no SIZE=
    "esmtp-tls": ([], TLS),                         # STARTTLS, BDAT, SIZE=
    "esmtp-nochunking-tls": (["nochunking"], TLS),  # STARTTLS, DATA, SIZE=
    "esmtp-nosize-tls": ([], dict(NOSIZE, tls=True)),  # STARTTLS, BDAT
}


def bdat_bytes(info):
    """What BDAT puts on the wire: CRLF lines, no stuffing, no terminator."""
    return info["bytes"] + info["lines"]


def make_profile_senders(names, workdir, stack):
    senders = []
    qr = qmail_remote_command()
    for name in names:
        if name not in PROFILES:
            sys.exit(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
        files, options = PROFILES[name]
        sink = stack.enter_context(Sink(**options))
        home = os.path.join(workdir, "home-" + name)
        write_home(home, sink.port, files)
        bdat = "noesmtp" not in files and "nochunking" not in files and \
            options.get("chunking")
        senders.append(Sender(
            "qr:" + name, [qr, "bench.example", SENDER, RECIPIENT],
            dict(compiled_env(), QMAILHOME=home), stdin=True, qmail=True,
            expect=bdat_bytes if bdat else None, sink=sink,
            tls=bool(options.get("tls"))))
    return senders


# --- progress -------------------------------------------------------------

class Progress:
    """A ``\\r`` status line on stderr; one line per step if not a tty."""

    def __init__(self):
        self.total = 0
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.width = 0
        self.start = time.perf_counter()

    def show(self, text, final=False):
        elapsed = time.perf_counter() - self.start
        count = f"[{self.done:>3}/{self.total}] " if self.total else ""
        line = f"{elapsed:5.0f}s {count}{text}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self.width))
            self.width = len(line)
            if final:
                sys.stderr.write("\n")
                self.width = 0
        elif final:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def clear(self):
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


# --- the measurement ------------------------------------------------------

# openssl s_client's input: the commands after its EHLO and STARTTLS, the
# encoded body, QUIT.  It writes them as it reads them (8 KiB at a time),
# pipelined, and exits when the sink closes the connection after QUIT.
S_CLIENT_HEAD = (f"EHLO {HELO}\r\nMAIL FROM:<{SENDER}>\r\n"
                 f"RCPT TO:<{RECIPIENT}>\r\nDATA\r\n").encode()
S_CLIENT_TAIL = b"QUIT\r\n"


def prepare(sizes, workdir, seed, progress, s_client=False):
    files = {}
    for size in sizes:
        label = format_size(size)
        progress.show(f"writing the {label} message and its encoded copy")
        raw = os.path.join(workdir, f"message-{label}")
        enc = raw + ".smtp"
        info = generate(raw, size, seed)
        info["encoded_bytes"] = encode(raw, enc)
        files[size] = {"raw": raw, "enc": enc, "info": info}
        if s_client:
            path = raw + ".s_client"
            with open(enc, "rb") as src, open(path, "wb") as dst:
                dst.write(S_CLIENT_HEAD)
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.write(S_CLIENT_TAIL)
            files[size]["s_client"] = path
    progress.clear()
    return files


def one_run(sender, files, sink, workdir, timeout):
    sink = sender.sink or sink
    info = files["info"]
    expect = sender.expect(info) if sender.expect else info["encoded_bytes"]
    messages, body, tls = sink.messages, sink.body_bytes, sink.tls
    stdin = files[sender.stdin] if sender.stdin else None
    result = run_process(sender.command(files, sink.port), sender.env,
                         workdir, stdin, timeout)
    problems = []
    if result["killed"]:
        problems.append(f"killed after {timeout} s")
    if result["returncode"]:
        problems.append(f"exit status {result['returncode']}")
    if sender.qmail and not k_report(result["stdout"]):
        problems.append(f"no K report: {result['stdout'][-200:]!r}")
    got_messages = sink.messages - messages
    got_body = sink.body_bytes - body
    if got_messages != 1 or got_body != expect:
        problems.append(f"sink got {got_messages} message(s), {got_body:,} "
                        f"body bytes; expected 1, {expect:,}")
    if sink.tls - tls != bool(sender.tls):
        problems.append(f"sink saw {sink.tls - tls} TLS handshake(s), "
                        f"expected {int(sender.tls)}")
    if problems and result["stderr"]:
        problems.append("stderr: " + result["stderr"].decode(
            "utf-8", "replace").strip().replace("\n", " | ")[-300:])
    result["error"] = "; ".join(problems) or None
    del result["stdout"], result["stderr"]
    return result


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def summarise(size, runs_by_sender):
    out = {}
    for name, runs in runs_by_sender.items():
        good = [r for r in runs if not r["error"]]
        entry = {"runs": runs, "failed_runs": len(runs) - len(good)}
        if good:
            wall = median_of(good, "wall_s")
            entry["best_wall_s"] = min(r["wall_s"] for r in good)
            entry["median"] = {
                "wall_s": wall,
                "cpu_s": statistics.median(r["user_s"] + r["sys_s"]
                                           for r in good),
                "user_s": median_of(good, "user_s"),
                "sys_s": median_of(good, "sys_s"),
                "maxrss_bytes": median_of(good, "maxrss_bytes"),
                "sink_cpu_s": median_of(good, "sink_cpu_s"),
            }
            entry["mib_per_s"] = size / MIB / wall
        out[name] = entry
    ceiling = out.get("ceiling", {}).get("median")
    for entry in out.values():
        if ceiling and "median" in entry:
            entry["wall_vs_ceiling"] = entry["median"]["wall_s"] / \
                ceiling["wall_s"]
    return out


def measure(args, senders, files, sink, workdir, notes, progress):
    results = {}
    plan = []
    for size in args.sizes:
        runs = args.runs or (3 if size > 100 * MIB else 5)
        avail = mem_available()
        active = []
        for s in senders:
            need = s.memory_factor * size
            if avail is not None and need > avail:
                notes.append(f"{s.name} at {format_size(size)}: skipped, "
                             f"needs ~{need / MIB:,.0f} MiB of memory, "
                             f"{avail / MIB:,.0f} MiB available")
                continue
            active.append(s)
        plan.append((size, runs, active))
    progress.total = (sum(r * len(a) for _, r, a in plan)
                      + len(senders) * bool(args.warmup)
                      + 2 * SINK_CHECK_RUNS * (args.sink_check and max(
                          files) >= SINK_CHECK_MIN))

    # One untimed round at the smallest size: pyc files, page cache, binaries.
    if args.warmup:
        smallest = min(files)
        for s in senders:
            progress.show(f"warm-up {s.name}")
            r = one_run(s, files[smallest], sink, workdir, args.timeout)
            progress.done += 1
            if r["error"]:
                progress.show(f"warm-up {s.name}: {r['error']}",
                              final=True)

    for size, runs, active in plan:
        label = format_size(size)
        by_sender = {s.name: [] for s in active}
        for run in range(runs):
            shift = run % len(active)
            for s in active[shift:] + active[:shift]:
                progress.show(f"{label} run {run + 1}/{runs}: {s.name} ...")
                r = one_run(s, files[size], sink, workdir, args.timeout)
                by_sender[s.name].append(r)
                progress.done += 1
                rate = size / MIB / r["wall_s"] if r["wall_s"] else 0
                status = f"FAILED: {r['error']}" if r["error"] else \
                    f"{r['wall_s'] * 1000:,.1f} ms, {rate:,.1f} MiB/s"
                progress.show(f"{label} run {run + 1}/{runs}: {s.name} "
                              f"{status}", final=bool(r["error"]))
        results[label] = dict(files[size]["info"], runs=runs,
                              senders=summarise(size, by_sender))
        progress.show(f"{label}: done", final=True)
    return results


# --- is the sink the bottleneck? ------------------------------------------

class Drain:
    """Accepts connections and reads them to EOF, counting nothing."""

    def __init__(self):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        buf = memoryview(bytearray(1 << 20))
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                while conn.recv_into(buf):
                    pass

    def close(self):
        self._listener.close()


def sink_check(args, files, sink, workdir, results, progress):
    """sendall() from memory into the sink and into a bare drain."""
    size = max(files)
    label = format_size(size)
    if size < SINK_CHECK_MIN:
        progress.show(f"sink check: skipped, needs a size of at least "
                      f"{format_size(SINK_CHECK_MIN)}", final=True)
        return None
    enc = files[size]["enc"]
    expect = files[size]["info"]["encoded_bytes"]
    drain = Drain()
    times = {"sink": [], "drain": []}
    cpu = []
    try:
        for run in range(SINK_CHECK_RUNS):
            for target, port in (("sink", sink.port), ("drain", drain.port)):
                progress.show(f"sink check ({label}): sendall from memory "
                              f"into the {target}, run {run + 1}/"
                              f"{SINK_CHECK_RUNS}")
                messages, body = sink.messages, sink.body_bytes
                r = run_process([sys.executable, "-I", "-S", "-c", MEMORY,
                                 enc, str(port),
                                 "smtp" if target == "sink" else "raw"],
                                os.environ, workdir, None, args.timeout)
                progress.done += 1
                if r["returncode"] or (target == "sink" and (
                        sink.messages - messages != 1
                        or sink.body_bytes - body != expect)):
                    sys.exit(f"sink check failed: {r['stderr']!r}")
                seconds = float(r["stdout"].split()[-1])
                times[target].append(seconds)
                if target == "sink":
                    cpu.append(r["sink_cpu_s"] / seconds)
    finally:
        drain.close()
    progress.show("sink check: done", final=True)
    ceiling = results[label]["senders"].get("ceiling", {})
    return {
        "size": label,
        "sendall_into_sink_mib_per_s":
            expect / MIB / statistics.median(times["sink"]),
        "sendall_into_drain_mib_per_s":
            expect / MIB / statistics.median(times["drain"]),
        "best_sendall_into_sink_mib_per_s": expect / MIB / min(times["sink"]),
        "best_sendall_into_drain_mib_per_s":
            expect / MIB / min(times["drain"]),
        "seconds": times,
        "sink_cpu_share_while_sendall": statistics.median(cpu),
        "ceiling_mib_per_s": ceiling.get("mib_per_s"),
        "ceiling_sink_cpu_share":
            ceiling["median"]["sink_cpu_s"] / ceiling["median"]["wall_s"]
            if "median" in ceiling else None,
    }


class TlsDrain(Drain):
    """A :class:`Drain` that speaks TLS from the first byte: it decrypts
    everything to EOF (1 MiB ``recv_into``, as the sink), counting nothing.

    With *decrypt* false it reads the bytes after the handshake off the
    socket as they are, undecrypted: the client's encryption and writes
    are then all that limits the rate.
    """

    def __init__(self, context, decrypt=True):
        self._context = context
        self._decrypt = decrypt
        super().__init__()

    def _accept(self):
        buf = memoryview(bytearray(1 << 20))
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    # the plain socket's recv_into: what OpenSSL has not
                    # read (it reads no further than a record it needs)
                    recv_into = tls.recv_into if self._decrypt else \
                        functools.partial(socket.socket.recv_into, tls)
                    while recv_into(buf):
                        pass
            except OSError:     # the client's EOF without close_notify
                pass
            finally:
                conn.close()


def tls_sink_check(args, files, sink, workdir, progress):
    """The TLS reference from memory into the TLS sink and two drains.

    The sink and the first drain decrypt with the same context and buffer:
    what the sink does beyond decrypting (SMTP, the end of data) is the
    difference.  The second drain does not decrypt: the rate into it is
    the client's own limit, and the sink is not the bottleneck when the
    rate into it comes near.
    """
    size = max(files)
    label = format_size(size)
    if size < SINK_CHECK_MIN:
        return None
    enc = files[size]["enc"]
    expect = files[size]["info"]["encoded_bytes"]
    drains = {"drain": TlsDrain(sink.tls_context),
              "raw": TlsDrain(sink.tls_context, decrypt=False)}
    times = {"sink": [], "drain": [], "raw": []}
    cpu = {"sink": [], "drain": [], "raw": []}
    try:
        for run in range(SINK_CHECK_RUNS):
            for target in times:
                progress.show(f"TLS sink check ({label}): from memory into "
                              f"the TLS {target}, run {run + 1}/"
                              f"{SINK_CHECK_RUNS}")
                messages, body = sink.messages, sink.body_bytes
                if target == "sink":
                    argv = [sys.executable, "-I", "-S", "-c", CEILING_TLS,
                            enc, str(sink.port), "memory"]
                else:
                    argv = [sys.executable, "-I", "-S", "-c",
                            MEMORY_TLS_RAW, enc, str(drains[target].port)]
                r = run_process(argv, os.environ, workdir, None, args.timeout)
                progress.done += 1
                if r["returncode"] or (target == "sink" and (
                        sink.messages - messages != 1
                        or sink.body_bytes - body != expect)):
                    sys.exit(f"TLS sink check failed: {r['stderr']!r}")
                seconds = float(r["stdout"].split()[-1])
                times[target].append(seconds)
                cpu[target].append(r["sink_cpu_s"] / seconds)
    finally:
        for drain in drains.values():
            drain.close()
    progress.show("TLS sink check: done", final=True)
    out = {"size": label, "seconds": times}
    for target in times:
        out[f"into_{target}_mib_per_s"] = \
            expect / MIB / statistics.median(times[target])
        out[f"{target}_cpu_share"] = statistics.median(cpu[target])
    return out


# --- round trips: a delaying relay between client and sink ----------------

class Relay:
    """A user-space TCP relay that holds every chunk *delay* seconds.

    Listens on ``relay.port``; each client connection gets its own
    connection to ``127.0.0.1:target``.  In each direction one thread reads
    (``recv``, 64 KiB at most) and stamps each chunk, another writes it
    once it is *delay* old, in order; EOF is passed on the same way.  The
    TCP handshake to the relay is not delayed (the kernel completes it),
    so the round trips are counted from the accept.  The connection to the
    sink is made ahead (one spare, replaced at each accept): the sink's
    greeting is then waiting when the client connects, as it would be from
    a server that greets on accept, and the relay's own connect and the
    sink's thread start-up (1-10 ms here) are not counted as round trips.
    All sockets have TCP_NODELAY, so the relay adds no Nagle wait.

    ``sessions`` holds one record per connection: the accept time, and per
    direction a list of ``(read_at, sent_at, nbytes, head)``, *sent_at*
    taken just before the chunk is handed to the kernel.
    """

    def __init__(self, target, delay):
        self.target = target
        self.delay = delay
        self.sessions = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._spare = self._connect()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._listener.close()
        self._spare.close()

    def _connect(self):
        return socket.create_connection(("127.0.0.1", self.target))

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            accepted = time.perf_counter()
            upstream, self._spare = self._spare, None
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            record = {"accept": accepted, "c2s": [], "s2c": [],
                      "c2s_eof": None, "done": threading.Event()}
            self.sessions.append(record)
            ends = [0]

            def finished():
                ends[0] += 1
                if ends[0] == 2:
                    for sock in (client, upstream):
                        sock.close()
                    record["done"].set()
            self._pump(client, upstream, record, "c2s", finished)
            # the greeting has been waiting on the spare since it was made:
            # it is held from the accept, not from when a new thread got
            # round to reading it
            self._pump(upstream, client, record, "s2c", finished,
                       first_read_at=accepted)
            self._spare = self._connect()

    def _pump(self, src, dst, record, key, finished, first_read_at=None):
        import queue
        chunks = queue.SimpleQueue()
        log = record[key]
        delay = self.delay

        def reader():
            first = first_read_at
            while True:
                try:
                    data = src.recv(1 << 16)
                except OSError:
                    data = b""
                now = time.perf_counter()
                if first is not None:
                    now, first = min(now, first), None
                chunks.put((now, data))
                if not data:
                    if key == "c2s":
                        record["c2s_eof"] = now
                    return

        def writer():
            broken = False
            while True:
                read_at, data = chunks.get()
                wait = read_at + delay - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    finished()
                    return
                # stamped before the send: once the client has it, its
                # answer may be read (and stamped) before this thread runs
                log.append((read_at, time.perf_counter(), len(data),
                            bytes(data[:64])))
                if not broken:
                    try:
                        dst.sendall(data)
                    except OSError:
                        broken = True

        threading.Thread(target=reader, daemon=True).start()
        threading.Thread(target=writer, daemon=True).start()


def relay_timing(record, rtt):
    """Round trips from the accept to the greeting and to the final reply.

    The final reply is the last chunk the relay passed to the client
    before the client's QUIT (or its EOF) reached the relay: qmail-remote
    writes QUIT as soon as it has read that reply, and never waits for
    QUIT's own.
    """
    start = record["accept"]
    end = record["c2s_eof"]
    for read_at, _, _, head in record["c2s"]:
        if head.upper().startswith(b"QUIT"):
            end = read_at
            break
    s2c = [sent for read_at, sent, _, _ in record["s2c"]
           if end is None or sent <= end]
    return {
        "greeting_rtt": (s2c[0] - start) / rtt if s2c else None,
        "final_reply_rtt": (s2c[-1] - start) / rtt if s2c else None,
        "client_writes": len(record["c2s"]),
        "server_writes": len(record["s2c"]),
    }


# Scenario -> (control files, Sink options, message size, outcome).  The
# refused one offers a SIZE limit below the message's size on the wire.
REFUSE_LIMIT = 1000000
RTT_SCENARIOS = {
    "noesmtp": (["noesmtp"], FULL, 1 << 10, "K"),
    "esmtp": ([], {"size": 0}, 1 << 10, "K"),
    "esmtp+chunking": ([], {"size": 0, "chunking": True}, 1 << 10, "K"),
    "esmtp+pipelining": ([], {"size": 0, "pipelining": True}, 1 << 10, "K"),
    "esmtp+pipelining+chunking": ([], FULL, 1 << 10, "K"),
    "size-refused": ([], dict(FULL, size=REFUSE_LIMIT), 1 << 20, "D"),
    # A relay with credentials (sagredo's smtproutes syntax): AUTH PLAIN
    # with its initial response, on loopback (no TLS needed there).
    "esmtp+pipelining+chunking+auth": ([], dict(FULL, auth=True), 1 << 10,
                                       "K"),
}
RTT_CREDENTIALS = {"esmtp+pipelining+chunking+auth": "|bench|secret"}
RTT_EXPECTED = {"noesmtp": 5.5, "esmtp": 5.5, "esmtp+chunking": 4.5,
                "esmtp+pipelining": 3.5, "esmtp+pipelining+chunking": 2.5,
                "size-refused": 1.5, "esmtp+pipelining+chunking+auth": 3.5}
RTT_TARGETS = {"esmtp+pipelining": 3.7, "esmtp+pipelining+chunking": 2.7,
               "esmtp+pipelining+chunking+auth": 3.7}


def rtt_scenarios(args, workdir, progress):
    """1 KB deliveries through the relay, and the same without it."""
    delay = args.delay_ms / 1000
    rtt = 2 * delay
    # The relay's threads hand the GIL to each other at every chunk: a short
    # switch interval keeps that from adding milliseconds to the hold.
    sys.setswitchinterval(0.0002)
    names = [n.strip() for n in args.rtt_only.split(",") if n.strip()] \
        if args.rtt_only else list(RTT_SCENARIOS)
    sizes = sorted({RTT_SCENARIOS[n][2] for n in names})
    files = prepare(sizes, workdir, args.seed, progress)
    qr = qmail_remote_command()
    runs = args.rtt_runs
    out = {}
    with contextlib.ExitStack() as stack:
        setups = {}
        for name in names:
            flags, options, size, outcome = RTT_SCENARIOS[name]
            sink = stack.enter_context(Sink(**options))
            relay = stack.enter_context(Relay(sink.port, delay))
            homes = {}
            for via, port in (("relay", relay.port), ("direct", sink.port)):
                homes[via] = os.path.join(workdir, f"rtt-{name}-{via}")
                write_home(homes[via], port, flags,
                           RTT_CREDENTIALS.get(name, ""))
            setups[name] = (sink, relay, homes, size, outcome)
            out[name] = {"relay": [], "direct": [], "timing": [],
                         "sink_received": [], "errors": []}
        progress.total = runs * 2 * len(names)
        progress.done = 0
        for run in range(runs):
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                sink, relay, homes, size, outcome = setups[name]
                info = files[size]["info"]
                bdat = "chunking" in name or name == "size-refused"
                for via in ("relay", "direct"):
                    progress.show(f"round trips run {run + 1}/{runs}: "
                                  f"{name} {via}")
                    before = (sink.messages, sink.body_bytes, sink.closed,
                              sink.received)
                    sessions = len(relay.sessions)
                    r = run_process(
                        [qr, "bench.example", SENDER, RECIPIENT],
                        dict(compiled_env(), QMAILHOME=homes[via]), workdir,
                        files[size]["raw"], args.timeout)
                    progress.done += 1
                    # the sink counts a connection's bytes when it ends
                    deadline = time.perf_counter() + 5
                    while sink.closed == before[2] and \
                            time.perf_counter() < deadline:
                        time.sleep(0.002)
                    reports = r["stdout"].split(b"\0")
                    report = reports[-2] if len(reports) >= 2 else b""
                    problems = []
                    if r["returncode"] or report[:1] != outcome.encode():
                        problems.append(f"{r['returncode']} {r['stdout']!r}")
                    want = (1, info["bytes"] + info["lines"] if bdat
                            else info["encoded_bytes"]) \
                        if outcome == "K" else (0, 0)
                    got = (sink.messages - before[0],
                           sink.body_bytes - before[1])
                    if got != want:
                        problems.append(f"sink got {got}, expected {want}")
                    entry = out[name]
                    if problems:
                        entry["errors"].append("; ".join(problems))
                        continue
                    entry[via].append(r["wall_s"])
                    if via == "relay":
                        record = relay.sessions[sessions]
                        record["done"].wait(5)
                        entry["timing"].append(relay_timing(record, rtt))
                        entry["sink_received"].append(
                            sink.received - before[3])
    results = {}
    for name in names:
        e = out[name]
        if not e["timing"] or not e["direct"]:
            results[name] = {"errors": e["errors"]}
            continue
        relay_wall = statistics.median(e["relay"])
        direct_wall = statistics.median(e["direct"])
        results[name] = {
            "message_bytes": RTT_SCENARIOS[name][2],
            "final_reply_rtt": statistics.median(
                t["final_reply_rtt"] for t in e["timing"]),
            "greeting_rtt": statistics.median(
                t["greeting_rtt"] for t in e["timing"]),
            "process_rtt": (relay_wall - direct_wall) / rtt,
            "wall_relay_s": relay_wall,
            "wall_direct_s": direct_wall,
            "client_writes": statistics.median(
                t["client_writes"] for t in e["timing"]),
            "sink_received_bytes": max(e["sink_received"]),
            "expected_rtt": RTT_EXPECTED.get(name),
            "target_rtt": RTT_TARGETS.get(name),
            "runs": runs,
            "errors": e["errors"],
            "raw": e,
        }
    progress.show("round trips: done", final=True)
    return results


def print_rtt(results, delay_ms):
    print(f"\nRound trips, {2 * delay_ms:g} ms RTT through the relay "
          f"({delay_ms:g} ms each way), qmail-remote, medians")
    print(f"  {'scenario':<27} {'message':>8} {'relay RTT':>10} "
          f"{'process RTT':>12} {'expect':>7} {'target':>7} "
          f"{'writes':>7} {'sink got':>9}")
    for name, r in results.items():
        if "final_reply_rtt" not in r:
            print(f"  {name:<27} FAILED: {r['errors'][:1]}")
            continue
        target = r["target_rtt"]
        verdict = "" if target is None else \
            (" met" if r["final_reply_rtt"] <= target else " MISSED")
        print(f"  {name:<27} {format_size(r['message_bytes']):>8} "
              f"{r['final_reply_rtt']:10.2f} {r['process_rtt']:12.2f} "
              f"{r['expected_rtt'] or 0:7.1f} "
              f"{'' if target is None else target:>7}"
              f" {r['client_writes']:7.0f} {r['sink_received_bytes']:8,} B"
              f"{verdict}"
              + (f"  ({len(r['errors'])} failed)" if r["errors"] else ""))
    print("relay RTT: from the relay's accept to the last byte it passed to "
          "the client before the client's QUIT, over the round-trip time; "
          "process RTT: (median wall through the relay - median wall "
          "direct to the sink) over the round-trip time; writes: chunks the "
          "relay read from the client, QUIT included; sink got: bytes the "
          "sink read on the connection (most of any run).  size-refused: "
          f"the message is over the sink's SIZE {REFUSE_LIMIT:,}; a D report "
          "and no message at the sink is the pass.")


# --- output ---------------------------------------------------------------

def rate(mib_per_s):
    """Three significant digits at least: 0.0391, 12.8, 1,442."""
    if mib_per_s >= 100:
        return f"{mib_per_s:,.0f}"
    return f"{mib_per_s:.3g}"


def print_table(results, senders, check, notes, floor):
    for label, entry in results.items():
        print(f"\n{label} message: {describe(entry)}; "
              f"{entry['encoded_bytes']:,} bytes on the wire. "
              f"{entry['runs']} runs, medians")
        print(f"  {'sender':<26} {'wall ms':>10} {'best':>8} {'x ceil':>7} "
              f"{'CPU ms':>10} {'user':>8} {'sys':>8} {'peak RSS':>12} "
              f"{'MiB/s':>9} {'sink CPU':>8}")
        for s in senders:
            e = entry["senders"].get(s.name)
            if e is None:
                continue
            if "median" not in e:
                print(f"  {s.name:<26} FAILED in every run")
                continue
            m = e["median"]
            ratio = e.get("wall_vs_ceiling")
            ratio = f"{ratio:7.2f}" if ratio else f"{'':>7}"
            rss = m["maxrss_bytes"]
            rss = f"<={floor / MIB:,.1f} MiB" if rss <= floor * 1.05 else \
                f"{rss / MIB:,.1f} MiB"
            failed = f"  ({e['failed_runs']} failed)" if e["failed_runs"] \
                else ""
            print(f"  {s.name:<26} {m['wall_s'] * 1000:10,.1f} "
                  f"{e['best_wall_s'] * 1000:8,.1f} {ratio} "
                  f"{m['cpu_s'] * 1000:10,.1f} {m['user_s'] * 1000:8,.1f} "
                  f"{m['sys_s'] * 1000:8,.1f} {rss:>12} "
                  f"{rate(e['mib_per_s']):>9} "
                  f"{100 * m['sink_cpu_s'] / m['wall_s']:7.0f}%{failed}")
    print("\nwall: fork to reap, median (best: the fastest run); x ceil: "
          "median wall over the ceiling's; CPU: the sender's user+sys; "
          "MiB/s: message size / median wall; sink CPU: the harness's CPU "
          "time over the run, less its cost of one spawn, over the wall "
          f"time.  Peak RSS is not resolved below {floor / MIB:.1f} MiB "
          "(the launcher's own floor).")
    if check:
        print(f"\nSink check ({check['size']}, body only, median (best) of "
              f"{SINK_CHECK_RUNS}): sendall() from memory into the sink "
              f"{check['sendall_into_sink_mib_per_s']:,.0f} "
              f"({check['best_sendall_into_sink_mib_per_s']:,.0f}) MiB/s, "
              f"sink busy {100 * check['sink_cpu_share_while_sendall']:.0f}%"
              f" of a CPU; into a bare recv_into drain "
              f"{check['sendall_into_drain_mib_per_s']:,.0f} "
              f"({check['best_sendall_into_drain_mib_per_s']:,.0f}) MiB/s; "
              f"the ceiling, whole process, "
              f"{check['ceiling_mib_per_s'] or 0:,.0f} MiB/s.")
    for note in notes:
        print(f"note: {note}")


def plot(results, senders, path, floor):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: no chart " \
            "(pip install matplotlib)"
    labels = list(results)
    names = [s.name for s in senders]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs, rates, rss = [], [], []
        for j, label in enumerate(labels):
            e = results[label]["senders"].get(name, {})
            if "median" in e:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                rates.append(e["mib_per_s"])
                rss.append(e["median"]["maxrss_bytes"] / MIB)
        ax1.bar(xs, rates, width, label=name)
        ax2.bar(xs, rss, width, label=name)
    for ax, title, unit in ((ax1, "Throughput (message size / wall time)",
                             "MiB/s"),
                            (ax2, "Peak RSS of the sending process", "MiB")):
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels)
        ax.set_xlabel("message size")
        ax.set_ylabel(unit)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(axis="y", which="both", alpha=0.3)
    line = ax2.axhline(floor / MIB, color="grey", linestyle="--",
                       linewidth=1,
                       label="launcher floor: smaller peaks show as this")
    ax1.legend(fontsize="small")
    ax2.legend(handles=[line], fontsize="small", loc="upper left")
    fig.suptitle("qmailremote end-to-end: whole processes into a loopback "
                 "SMTP sink (medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def print_ratios(results, senders):
    """Median wall of every profile over noesmtp's (today's code path)."""
    names = [s.name for s in senders if s.name.startswith("qr:")]
    for base in ("qr:noesmtp", "qr:esmtp-nochunking"):
        if base not in names:
            continue
        for label, entry in results.items():
            got = entry["senders"]
            if "median" not in got.get(base, {}):
                continue
            ref = got[base]["median"]["wall_s"]
            cells = []
            for name in names:
                if name != base and "median" in got.get(name, {}):
                    wall = got[name]["median"]["wall_s"]
                    cells.append(f"{name[3:]} {wall / ref:.3f}")
            print(f"{label}: median wall over {base[3:]}'s: "
                  + ", ".join(cells))


# The TLS targets: (size, what, limit).
TLS_TARGETS = [
    ("100M", "wall over ceiling-tls", 1.15),
    ("100M", "wall over s_client", 1.00),
    ("1G", "peak RSS MiB", 40),
    ("1K", "CPU ms over plaintext", 15),
]
GIB = 1 << 30


def tls_rows(senders):
    """(label, sender name) of the TLS table, in order, those present."""
    names = {s.name for s in senders}
    plain = "qr:esmtp" if "qr:esmtp" in names else "qmail-remote"
    rows = [("ours, plaintext (" + plain + ")", plain),
            ("ours, STARTTLS (qr:esmtp-tls)", "qr:esmtp-tls"),
            ("ours, STARTTLS, DATA (qr:esmtp-nochunking-tls)",
             "qr:esmtp-nochunking-tls"),
            ("ours, STARTTLS, no SIZE (qr:esmtp-nosize-tls)",
             "qr:esmtp-nosize-tls"),
            ("ceiling (sendfile, plaintext)", "ceiling"),
            ("ceiling-tls (Python _ssl, 1 MiB writes)", "ceiling-tls"),
            ("openssl s_client -starttls smtp", "s_client")]
    return [(label, name) for label, name in rows if name in names]


def tls_summary(results, senders):
    """Per size: the TLS table's figures, ratios and the targets' verdicts."""
    rows = tls_rows(senders)
    names = {s.name for s in senders}
    plain = "qr:esmtp" if "qr:esmtp" in names else "qmail-remote"
    out = {}
    for label, entry in results.items():
        got = entry["senders"]
        size = parse_size(label)
        table = {}
        for row, name in rows:
            m = got.get(name, {}).get("median")
            if not m:
                continue
            table[name] = {
                "row": row, "wall_ms": m["wall_s"] * 1000,
                "cpu_ms": m["cpu_s"] * 1000,
                "cpu_s_per_gib": m["cpu_s"] / (size / GIB),
                "maxrss_mib": m["maxrss_bytes"] / MIB,
                "sink_cpu_share": m["sink_cpu_s"] / m["wall_s"],
            }
        for ref in ("ceiling-tls", "s_client"):
            if ref in table:
                for name, cell in table.items():
                    cell["wall_over_" + ref] = \
                        cell["wall_ms"] / table[ref]["wall_ms"]
                    cell["cpu_over_" + ref] = \
                        cell["cpu_ms"] / table[ref]["cpu_ms"]
                    # run i of every sender is in the same round: the
                    # median of the ratios within rounds shrugs off a
                    # round the machine was slow for all
                    pairs = [a["wall_s"] / b["wall_s"] for a, b in zip(
                        got[name]["runs"], got[ref]["runs"])
                        if not a["error"] and not b["error"]]
                    if pairs:
                        cell["paired_wall_over_" + ref] = \
                            statistics.median(pairs)
        ours = table.get("qr:esmtp-tls")
        base = table.get(plain)
        verdicts = []
        if ours:
            figures = {
                "wall over ceiling-tls": ours.get("wall_over_ceiling-tls"),
                "wall over s_client": ours.get("wall_over_s_client"),
                "peak RSS MiB": ours["maxrss_mib"],
                "CPU ms over plaintext":
                    ours["cpu_ms"] - base["cpu_ms"] if base else None,
            }
            for at, what, limit in TLS_TARGETS:
                if at == label and figures[what] is not None:
                    verdicts.append({"target": f"{label} {what} <= {limit}",
                                     "value": figures[what],
                                     "met": figures[what] <= limit})
        out[label] = {"rows": table, "targets": verdicts}
    return out


def print_tls(summary, tls_check, versions):
    """Ours in plaintext and over STARTTLS beside the TLS references."""
    suites = ", ".join(f"{v} {c}" for v, c in sorted(versions)) or "?"
    print(f"\nTLS (STARTTLS; negotiated: {suites}), medians")
    print(f"  {'size':<5} {'sender':<48} {'wall ms':>9} {'CPU ms':>9} "
          f"{'CPU s/GiB':>9} {'peak RSS':>9} {'x c-tls':>7} {'x s_cl':>7}"
          f" {'sink CPU':>8}")
    for label, entry in summary.items():
        for name, c in entry["rows"].items():
            ratios = "".join(
                f" {c[key]:7.2f}" if key in c else f" {'':>7}"
                for key in ("wall_over_ceiling-tls", "wall_over_s_client"))
            # per GiB only where the fixed costs do not swamp it
            per_gib = f"{c['cpu_s_per_gib']:9.3f}" \
                if parse_size(label) >= SINK_CHECK_MIN else f"{'':>9}"
            print(f"  {label:<5} {c['row']:<48} {c['wall_ms']:9,.1f} "
                  f"{c['cpu_ms']:9,.1f} {per_gib} "
                  f"{c['maxrss_mib']:5.1f} MiB{ratios} "
                  f"{100 * c['sink_cpu_share']:7.0f}%")
    print("x c-tls, x s_cl: median wall over ceiling-tls's and s_client's; "
          "CPU s/GiB: the sender's user+sys over the message size; "
          "sink CPU: the harness's (the sink's) CPU over the sender's wall.")
    for label, entry in summary.items():
        for name, c in entry["rows"].items():
            if not name.startswith("qr:") or "cpu_over_ceiling-tls" not in c:
                continue
            paired = ", ".join(
                f"{c['paired_wall_over_' + ref]:.2f}x {ref}'s"
                for ref in ("ceiling-tls", "s_client")
                if "paired_wall_over_" + ref in c)
            print(f"  {label} {name}: CPU {c['cpu_over_ceiling-tls']:.2f}x "
                  f"ceiling-tls's; wall, median of the ratios within a "
                  f"round: {paired}")
    for label, entry in summary.items():
        for v in entry["targets"]:
            print(f"target {v['target']}: {v['value']:.3f} "
                  f"{'met' if v['met'] else 'MISSED'}")
    if tls_check:
        print(f"TLS sink check ({tls_check['size']}, body only, median of "
              f"{SINK_CHECK_RUNS}): the TLS reference from memory into the "
              f"TLS sink {tls_check['into_sink_mib_per_s']:,.0f} MiB/s "
              f"(sink busy {100 * tls_check['sink_cpu_share']:.0f}% of a "
              f"CPU), into a TLS drain that only decrypts "
              f"{tls_check['into_drain_mib_per_s']:,.0f} MiB/s (busy "
              f"{100 * tls_check['drain_cpu_share']:.0f}%), into one that "
              f"does not decrypt {tls_check['into_raw_mib_per_s']:,.0f} "
              f"MiB/s (busy {100 * tls_check['raw_cpu_share']:.0f}%).")


def strip_raw(rtt):
    if not rtt:
        return rtt
    return {name: {k: v for k, v in r.items() if k != "raw"} |
            ({"walls_relay_s": r["raw"]["relay"],
              "walls_direct_s": r["raw"]["direct"],
              "final_reply_rtts": [t["final_reply_rtt"]
                                   for t in r["raw"]["timing"]]}
             if "raw" in r else {})
            for name, r in rtt.items()}


def report_rtt_only(args, rtt):
    print(f"python {sys.version.split()[0]} ({sys.executable}); "
          f"{platform.platform()}; {os.cpu_count()} CPUs; "
          f"qmail-remote: {qmail_remote_command()}; checkout HEAD "
          f"{git_head()}")
    if rtt:
        print_rtt(rtt, args.delay_ms)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"checkout_head": git_head(),
                                "python": sys.version,
                                "platform": platform.platform()},
                       "delay_ms": args.delay_ms,
                       "round_trips": strip_raw(rtt)}, f, indent=1)


# --- main -----------------------------------------------------------------

def choose_sizes(spec, workdir, notes, copies=2.1):
    sizes = []
    free = shutil.disk_usage(workdir).free
    needed = 0
    for size in sorted({parse_size(s) for s in spec.split(",") if s}):
        # the message and its encoded copy (~2.03x together; another
        # encoded copy for s_client), 1 GiB spare
        if needed + copies * size + (1 << 30) > free:
            notes.append(f"{format_size(size)}: skipped, only "
                         f"{free / MIB:,.0f} MiB free in {workdir}")
            continue
        needed += copies * size
        sizes.append(size)
    if not sizes:
        sys.exit("no size fits on disk")
    return sizes


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1K,1M,100M,1G",
                        help="comma-separated, binary units (default: "
                        "%(default)s; 1G only if disk space allows)")
    parser.add_argument("--runs", type=int, default=0,
                        help="runs per size (default: 5, or 3 above 100M)")
    parser.add_argument("--senders", default=",".join(ALL_SENDERS),
                        help="comma-separated, from: " +
                        ", ".join(ALL_SENDERS + OPTIONAL) +
                        " (the ceiling is always run)")
    parser.add_argument("--json", metavar="PATH", help="write results here")
    parser.add_argument("--png", metavar="PATH",
                        help="write a chart here (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmpdir", default=None,
                        help="where the messages are written (default: "
                        "the system temp directory)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds before a sender is killed")
    parser.add_argument("--profiles", default="",
                        help="also run the installed qmail-remote under "
                        "these profiles, each with its own home and sink "
                        "(comma-separated, from: " + ", ".join(PROFILES) +
                        ")")
    parser.add_argument("--rtt-scenarios", action="store_true",
                        help="run the round-trip scenarios through the "
                        "delaying relay (1 KB; 1 MB for size-refused)")
    parser.add_argument("--rtt-only", default="", metavar="NAMES",
                        help="these round-trip scenarios only, from: " +
                        ", ".join(RTT_SCENARIOS))
    parser.add_argument("--delay-ms", type=float, default=25,
                        help="the relay's delay each way (default: "
                        "%(default)s ms)")
    parser.add_argument("--rtt-runs", type=int, default=9,
                        help="runs per round-trip scenario (default: "
                        "%(default)s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--no-sink-check", dest="sink_check",
                        action="store_false")
    args = parser.parse_args()

    notes = []
    progress = Progress()
    workdir = tempfile.mkdtemp(prefix="qmailremote-e2e-", dir=args.tmpdir)
    try:
        rtt = None
        if args.rtt_scenarios:
            rtt = rtt_scenarios(args, workdir, progress)
        if args.sizes.strip().lower() in ("", "none", "0"):
            progress.clear()
            report_rtt_only(args, rtt)
            return
        names = [n.strip() for n in args.senders.split(",") if n.strip()]
        names = ["ceiling"] + [n for n in names if n != "ceiling"]
        profiles = [n.strip() for n in args.profiles.split(",")
                    if n.strip()]
        # a TLS profile brings its references, as every run has the ceiling
        if any(PROFILES.get(p, ((), {}))[1].get("tls") for p in profiles):
            names += [n for n in TLS_REFERENCES if n not in names]
        use_s_client = "s_client" in names and shutil.which("openssl")
        args.sizes = choose_sizes(args.sizes, workdir, notes,
                                  3.15 if use_s_client else 2.1)
        started = time.time()
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(Sink())
            tls_sink = stack.enter_context(Sink(**TLS)) \
                if any(n in TLS_REFERENCES for n in names) else None
            home = os.path.join(workdir, "home")
            write_home(home, sink.port)
            senders = make_senders(names, home, notes, tls_sink)
            senders += make_profile_senders(profiles, workdir, stack)
            if any(s.name == "netqmail" for s in senders):
                c_home = os.environ["QMAILREMOTE_BENCH_C_HOME"]
                stack.enter_context(CHome(c_home))
                write_home(c_home, sink.port)
            kernels = {
                "qmail-remote": kernel_in_use(compiled_env(), workdir),
                "qmail-remote-pure": kernel_in_use(
                    dict(compiled_env(), QMAILREMOTE_NO_EXTENSIONS="1"),
                    workdir),
            }
            if "qmail-remote" in names and \
                    not kernels["qmail-remote"].get("compiled"):
                notes.append("WARNING: the installed qmail-remote does not "
                             "load the compiled kernel: "
                             f"{kernels['qmail-remote']}")
            floor, SPAWN_CPU[0] = launcher_baseline(workdir)
            startup = interpreter_startup(workdir)
            module = kernels["qmail-remote"].get("module")
            digest = package_digest(module) if module else None
            files = prepare(args.sizes, workdir, args.seed, progress,
                            s_client=any(s.stdin == "s_client"
                                         for s in senders))
            results = measure(args, senders, files, sink, workdir, notes,
                              progress)
            check = sink_check(args, files, sink, workdir, results,
                               progress) if args.sink_check else None
            tls_check = None
            if tls_sink is not None and args.sink_check:
                progress.total += 3 * SINK_CHECK_RUNS
                tls_check = tls_sink_check(args, files, tls_sink, workdir,
                                           progress)
            versions = {}
            for s in senders:
                if s.tls:
                    for key, n in (s.sink or sink).tls_versions.items():
                        versions[key] = versions.get(key, 0) + n
            tls = tls_summary(results, senders) if versions else None
        progress.clear()
        print(f"python {sys.version.split()[0]} ({sys.executable}); "
              f"{platform.platform()}; {os.cpu_count()} CPUs")
        print(f"qmail-remote: {qmail_remote_command()}; installed package "
              f"{module} (digest {digest}); checkout HEAD {git_head()}")
        print("interpreter start-up: " + "; ".join(
            f"{k} {v * 1000:.1f} ms" for k, v in startup.items()))
        print_table(results, senders, check, notes, floor)
        if profiles:
            print_ratios(results, senders)
        if tls:
            print_tls(tls, tls_check, versions)
        if rtt:
            print_rtt(rtt, args.delay_ms)
        failures = sum(e["failed_runs"] for r in results.values()
                       for e in r["senders"].values())
        if args.json:
            document = {
                "meta": {
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                             time.localtime(started)),
                    "seconds": time.time() - started,
                    "python": sys.version,
                    "executable": sys.executable,
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "checkout_head": git_head(),
                    "installed_package": module,
                    "installed_digest": digest,
                    "interpreter_startup_s": startup,
                    "qmail_remote": qmail_remote_command(),
                    "kernels": kernels,
                    "netqmail": os.environ.get("QMAILREMOTE_BENCH_C"),
                    "senders": [s.name for s in senders],
                    "rss_floor_bytes": floor,
                    "units": "sizes binary (1M = 2**20 bytes); throughput "
                             "MiB/s of message size over wall time",
                },
                "sizes": results,
                "sink_check": check,
                "tls": tls and {
                    "summary": tls, "sink_check": tls_check,
                    "negotiated": [[v, c, n] for (v, c), n in
                                   sorted(versions.items())],
                    "certificate": (tls_sink or next(
                        s.sink for s in senders if s.tls)).cert_maker,
                    "openssl": subprocess.run(
                        ["openssl", "version"], capture_output=True,
                        text=True).stdout.strip()
                    if shutil.which("openssl") else None,
                    "python_ssl": __import__("ssl").OPENSSL_VERSION,
                },
                "round_trips": strip_raw(rtt),
                "delay_ms": args.delay_ms if rtt else None,
                "profiles": {p: {"control": PROFILES[p][0],
                                 "sink": PROFILES[p][1]} for p in profiles},
                "notes": notes,
            }
            with open(args.json, "w") as f:
                json.dump(document, f, indent=1)
        if args.png:
            problem = plot(results, senders, args.png, floor)
            if problem:
                print(f"note: {problem}")
        if failures:
            print(f"\n{failures} run(s) FAILED verification", file=sys.stderr)
            sys.exit(1)
    finally:
        progress.clear()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
