"""Start-up cost of the installed ``qmail-remote``, whole process.

Times a 1 KB delivery against ``python -I -S -c pass`` on the same
interpreter, runs interleaved, medians reported:

* through an IP-literal route (``control/smtproutes`` to a loopback sink
  offering SIZE, PIPELINING and CHUNKING), under ``control/noesmtp``
  (netqmail 1.06's dialogue, the pre-ESMTP code path) and in the default
  ESMTP profile (EHLO, ``SIZE=``, MAIL+RCPT+``BDAT LAST`` in one write);
* with an MX lookup, when run as root: inside a private network namespace
  (lo up, the test DNS server on 127.0.0.1:53, a sink on 127.0.0.2:25,
  resolv.conf bind-mounted), so the real resolver path runs.

    python benchmarks/startup.py [--runs 40] [--compare OTHER-QMAIL-REMOTE]
        [--tls]

``--compare`` times another installed ``qmail-remote`` (e.g. one built
from an older commit, in its own virtual environment) in the same
interleaved runs, as "compared".

``--tls`` adds the ESMTP route against a sink that offers STARTTLS
(``sink.py``'s ``tls``: a certificate made at start-up, ECDSA P-256): the
client's default, opportunistic STARTTLS with no certificate check.  It
then reports each case's CPU time (user+sys, from ``RUSAGE_CHILDREN``
around each run) beside the wall time, and what STARTTLS adds to a 1 KB
delivery (target: at most 15 ms of CPU).  A breakdown follows,
from as many fresh ``python -I -S`` processes (the launcher's flags)
doing the same dialogue with ``_ssl`` as ``qmailremote/tls.py`` does,
each phase timed with ``perf_counter`` and ``process_time``: ``import
_ssl`` (loading libssl and libcrypto), the client context (as
``TlsControls.context``), the handshake (``_wrap_socket`` and
``do_handshake``), the EHLO after it (the server's session tickets
arrive with its reply), the rest of the delivery, and, for scale, what
``import ssl`` would add on top.

The message is a regular file on stdin, as qmail-rspawn gives it.
Targets (issue 3): at most 15 ms over the baseline for the route, 40 ms
with the MX lookup; (issue 9) ESMTP within 2 ms of noesmtp.
"""

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MESSAGE = b"Subject: start-up\n\n" + b"x" * 75 + b"\n" * 1 + \
    (b"y" * 75 + b"\n") * 12
BASELINE = [sys.executable, "-I", "-S", "-c", "pass"]


def command():
    beside = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
    found = beside if os.path.exists(beside) else shutil.which("qmail-remote")
    if not found:
        sys.exit("qmail-remote is not installed: pip install . first")
    return found


def home_with(routes=None):
    home = tempfile.mkdtemp(prefix="qmailremote-startup-")
    os.makedirs(os.path.join(home, "control"))
    with open(os.path.join(home, "control", "me"), "w") as f:
        f.write("bench.invalid\n")
    if routes is not None:
        with open(os.path.join(home, "control", "smtproutes"), "w") as f:
            f.write(routes)
    return home


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(cases, runs, cpu=None):
    """{name: median seconds}, the cases interleaved run by run.

    *cpu*, a dict, gets {name: median CPU seconds} (user+sys of the
    process, reaped by subprocess.run before the next reading).
    """
    times = {name: [] for name in cases}
    cpus = {name: [] for name in cases}
    with tempfile.TemporaryFile() as message:
        message.write(MESSAGE)
        for _ in range(runs):
            for name, (argv, env) in cases.items():
                message.seek(0)
                before = children_cpu()
                start = time.perf_counter()
                done = subprocess.run(argv, stdin=message,
                                      capture_output=True, env=env)
                times[name].append(time.perf_counter() - start)
                cpus[name].append(children_cpu() - before)
                if argv is not BASELINE and b"\0K" not in done.stdout:
                    sys.exit(f"{name}: delivery failed: {done.stdout!r}")
    if cpu is not None:
        cpu.update((name, statistics.median(t)) for name, t in cpus.items())
    return {name: statistics.median(t) for name, t in times.items()}


def table(title, medians, cpu=None):
    base = medians["baseline"]
    print(f"\n{title}")
    for name, median in medians.items():
        extra = "" if name == "baseline" else \
            f"   +{(median - base) * 1000:6.1f} ms over the baseline"
        if cpu:
            extra = f"   CPU {cpu[name] * 1000:6.1f} ms" + extra
        print(f"  {name:<22} {median * 1000:7.1f} ms{extra}")


def route_case(runs, other=None, tls=False, cpu=None):
    sys.path.insert(0, HERE)
    from sink import Sink
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(Sink(size=0, pipelining=True,
                                        chunking=True))
        home = home_with(f":127.0.0.1:{sink.port}\n")
        stack.callback(shutil.rmtree, home)
        classic = home_with(f":127.0.0.1:{sink.port}\n")
        stack.callback(shutil.rmtree, classic)
        open(os.path.join(classic, "control", "noesmtp"), "w").close()
        env = dict(os.environ, QMAILHOME=home)
        args = ["example.com", "a@b.example", "c@example.com"]
        cases = {"baseline": (BASELINE, env),
                 "route, noesmtp": ([command(), *args],
                                    dict(env, QMAILHOME=classic)),
                 "route, ESMTP": ([command(), *args], env)}
        if tls:
            tls_sink = stack.enter_context(Sink(size=0, pipelining=True,
                                                chunking=True, tls=True))
            secure = home_with(f":127.0.0.1:{tls_sink.port}\n")
            stack.callback(shutil.rmtree, secure)
            cases["route, ESMTP+STARTTLS"] = ([command(), *args],
                                              dict(env, QMAILHOME=secure))
        if other:
            cases["compared"] = ([other, *args], env)
        medians = measure(cases, runs, cpu)
        if tls and tls_sink.tls < runs:
            sys.exit(f"STARTTLS: {tls_sink.tls} handshakes in {runs} runs")
        return medians


# One 1 KB delivery with STARTTLS, phase by phase, as qmailremote/tls.py
# does it (``_ssl`` directly; the context as TlsControls.context makes it
# for opportunistic TLS); printed as JSON: {phase: [wall s, CPU s]}.
TLS_BREAKDOWN = r"""
import json, socket, sys, time
def clocks():
    return time.perf_counter(), time.process_time()
marks = [("start", clocks())]
def mark(name):
    marks.append((name, clocks()))
data = b""
def reply(recv):
    global data
    while True:
        while b"\n" not in data:
            more = recv(65536)
            if not more:
                sys.exit("connection closed")
            data += more
        line, data = data.split(b"\n", 1)
        if line[3:4] != b"-":
            return line
import _ssl
mark("import _ssl")
ctx = _ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.minimum_version = _ssl.PROTO_TLSv1_2
ctx.set_ciphers("DEFAULT")
ctx.verify_mode = _ssl.CERT_NONE
mark("context")
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(1200)
reply(s.recv)
for cmd in (b"EHLO bench.invalid\r\n", b"STARTTLS\r\n"):
    s.sendall(cmd)
    line = reply(s.recv)
if not line.startswith(b"220"):
    sys.exit("no STARTTLS: %r" % line)
mark("plaintext: greeting, EHLO, STARTTLS")
tls = ctx._wrap_socket(s, False, None)
tls.do_handshake()
mark("handshake")
tls.write(b"EHLO bench.invalid\r\n")
reply(tls.read)
mark("EHLO under TLS (tickets)")
body = (b"x" * 75 + b"\r\n") * 13
tls.write(b"MAIL FROM:<a@b.example> SIZE=%d\r\nRCPT TO:<c@example.com>\r\n"
          b"BDAT %d LAST\r\n" % (len(body), len(body)) + body)
for _ in range(3):
    reply(tls.read)
tls.write(b"QUIT\r\n")
s.close()
mark("MAIL, RCPT, BDAT 1 KB, QUIT")
import ssl
mark("import ssl (not used by qmailremote)")
out = {}
for (_, (w0, c0)), (name, (w1, c1)) in zip(marks, marks[1:]):
    out[name] = [w1 - w0, c1 - c0]
print(json.dumps(out))
"""


def tls_breakdown(runs):
    """Median wall and CPU seconds of each phase of TLS_BREAKDOWN."""
    sys.path.insert(0, HERE)
    from sink import Sink
    phases = {}
    with Sink(size=0, pipelining=True, chunking=True, tls=True) as sink:
        argv = [sys.executable, "-I", "-S", "-c", TLS_BREAKDOWN,
                str(sink.port)]
        for _ in range(runs):
            done = subprocess.run(argv, capture_output=True)
            if done.returncode:
                sys.exit(f"TLS breakdown failed: {done.stderr!r}")
            for name, pair in json.loads(done.stdout).items():
                phases.setdefault(name, []).append(pair)
        cipher = ", ".join(f"{v} {c}" for v, c in sink.tls_versions)
    return {name: (statistics.median(p[0] for p in pairs),
                   statistics.median(p[1] for p in pairs))
            for name, pairs in phases.items()}, cipher


def mx_case_inside(runs, other=None):
    """Runs inside the namespace: the MX path through /etc/resolv.conf."""
    home = home_with()
    try:
        env = dict(os.environ, QMAILHOME=home)
        args = ["mx.bench", "a@b.example", "c@mx.bench"]
        cases = {"baseline": (BASELINE, env),
                 "MX lookup": ([command(), *args], env)}
        if other:
            cases["compared"] = ([other, *args], env)
        medians = measure(cases, runs)
    finally:
        shutil.rmtree(home)
    print(json.dumps(medians))


def mx_case(runs, other=None):
    sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))
    from netns import netns_unavailable, run_in_netns
    reason = netns_unavailable()
    if reason:
        print(f"\nMX lookup: not measured ({reason})")
        return None
    result = run_in_netns({
        "command": [sys.executable, os.path.abspath(__file__), "--inside",
                    "--runs", str(runs)] +
                   (["--compare", other] if other else []),
        "timeout": 600,
        "zone": {"mx.bench": {"MX": "10 mx1.bench."},
                 "mx1.bench": {"A": "127.0.0.2"}},
        "smtp": [{"addr": "127.0.0.2", "port": 25}],
    })
    if result.returncode != 0:
        sys.exit(f"namespace run failed: {result.stderr.decode()}")
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--compare", metavar="COMMAND",
                        help="another qmail-remote to time alongside")
    parser.add_argument("--tls", action="store_true",
                        help="also STARTTLS: CPU times and a breakdown")
    parser.add_argument("--inside", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        mx_case_inside(args.runs, args.compare)
        return
    print(f"python: {sys.executable} {sys.version.split()[0]}; "
          f"{args.runs} runs each, interleaved; medians")
    if sys.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # The launcher starts Python with -I, which ignores this variable;
        # a plain console script would compile modules with no .pyc yet
        # (esmtp.py, capabilities.py in a fresh checkout) at every run.
        print("note: PYTHONDONTWRITEBYTECODE is set; the launcher (-I) "
              "ignores it, a plain console script would not")
    other = os.path.abspath(args.compare) if args.compare else None
    cpu = {} if args.tls else None
    medians = route_case(args.runs, other, args.tls, cpu)
    table("1 KB delivery through an IP-literal route", medians, cpu)
    print(f"  ESMTP - noesmtp: {(medians['route, ESMTP'] - medians['route, noesmtp']) * 1000:+.1f} ms (target: within 2 ms)")
    if args.tls:
        extra = (cpu["route, ESMTP+STARTTLS"] - cpu["route, ESMTP"]) * 1000
        wall = (medians["route, ESMTP+STARTTLS"] -
                medians["route, ESMTP"]) * 1000
        print(f"  STARTTLS - ESMTP: CPU {extra:+.1f} ms (target: at most "
              f"15 ms: {'met' if extra <= 15 else 'MISSED'}), wall "
              f"{wall:+.1f} ms")
        phases, cipher = tls_breakdown(args.runs)
        print(f"\nSTARTTLS, phase by phase ({cipher}; {args.runs} fresh "
              f"`python -I -S` processes, medians)")
        print(f"  {'phase':<40} {'wall ms':>8} {'CPU ms':>8}")
        for name, (wall, cpu_s) in phases.items():
            print(f"  {name:<40} {wall * 1000:8.2f} {cpu_s * 1000:8.2f}")
        tls_cpu = sum(phases[name][1] for name in (
            "import _ssl", "context", "handshake",
            "EHLO under TLS (tickets)"))
        print(f"  import _ssl + context + handshake + EHLO under TLS: CPU "
              f"{tls_cpu * 1000:.2f} ms")
    medians = mx_case(args.runs, other)
    if medians:
        table("1 KB delivery with an MX lookup (private network namespace)",
              medians)


if __name__ == "__main__":
    main()
