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

``--compare`` times another installed ``qmail-remote`` (e.g. one built
from an older commit, in its own virtual environment) in the same
interleaved runs, as "compared".

The message is a regular file on stdin, as qmail-rspawn gives it.
Targets (issue 3): at most 15 ms over the baseline for the route, 40 ms
with the MX lookup; (issue 9) ESMTP within 2 ms of noesmtp.
"""

import argparse
import json
import os
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


def measure(cases, runs):
    """{name: median seconds}, the cases interleaved run by run."""
    times = {name: [] for name in cases}
    with tempfile.TemporaryFile() as message:
        message.write(MESSAGE)
        for _ in range(runs):
            for name, (argv, env) in cases.items():
                message.seek(0)
                start = time.perf_counter()
                done = subprocess.run(argv, stdin=message,
                                      capture_output=True, env=env)
                times[name].append(time.perf_counter() - start)
                if argv is not BASELINE and b"\0K" not in done.stdout:
                    sys.exit(f"{name}: delivery failed: {done.stdout!r}")
    return {name: statistics.median(t) for name, t in times.items()}


def table(title, medians):
    base = medians["baseline"]
    print(f"\n{title}")
    for name, median in medians.items():
        extra = "" if name == "baseline" else \
            f"   +{(median - base) * 1000:6.1f} ms over the baseline"
        print(f"  {name:<22} {median * 1000:7.1f} ms{extra}")


def route_case(runs, other=None):
    sys.path.insert(0, HERE)
    from sink import Sink
    with Sink(size=0, pipelining=True, chunking=True) as sink:
        home = home_with(f":127.0.0.1:{sink.port}\n")
        classic = home_with(f":127.0.0.1:{sink.port}\n")
        open(os.path.join(classic, "control", "noesmtp"), "w").close()
        try:
            env = dict(os.environ, QMAILHOME=home)
            args = ["example.com", "a@b.example", "c@example.com"]
            cases = {"baseline": (BASELINE, env),
                     "route, noesmtp": ([command(), *args],
                                        dict(env, QMAILHOME=classic)),
                     "route, ESMTP": ([command(), *args], env)}
            if other:
                cases["compared"] = ([other, *args], env)
            return measure(cases, runs)
        finally:
            shutil.rmtree(home)
            shutil.rmtree(classic)


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
    medians = route_case(args.runs, other)
    table("1 KB delivery through an IP-literal route", medians)
    print(f"  ESMTP - noesmtp: {(medians['route, ESMTP'] - medians['route, noesmtp']) * 1000:+.1f} ms (target: within 2 ms)")
    medians = mx_case(args.runs, other)
    if medians:
        table("1 KB delivery with an MX lookup (private network namespace)",
              medians)


if __name__ == "__main__":
    main()
