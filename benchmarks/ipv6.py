"""IPv6 (issue 12): what it costs, and what a black-holed IPv6 path costs.

1. **Large message, IPv4 and IPv6 loopback.**  The installed
   ``qmail-remote`` delivers one message (default 100 MB) through an
   smtproutes route to ``sink.py`` listening on ``127.0.0.1`` and to one on
   ``::1`` (route ``[IPv6:::1]:port``); with ``--compare OTHER`` another
   installed ``qmail-remote`` (say, the last release before IPv6, in its
   own virtual environment) delivers the same message over IPv4 in the
   same interleaved runs.  Wall-time medians and ratios are printed:
   target, no change to the IPv4 figure.

2. **Black-holed IPv6 path** (root: a private network namespace, as the
   tests' ``tests/netns.py`` builds it).  A dual-stack MX whose IPv6
   address drops every packet (SYNs routed through a veth pair to a
   gateway nobody answers for) and whose IPv4 address has a sink; with
   ``control/addresspreference`` ``any`` and ``control/timeoutconnect``
   *T* (default 2 s), the delivery must land over IPv4 within *T* + 1 s.
   The time is measured inside the namespace around the command; the
   same with preference ``ipv4`` (no IPv6 attempt first) for scale.

    python benchmarks/ipv6.py [--size 100M] [--runs 11]
        [--compare /path/to/old/qmail-remote] [--blackhole-runs 5]
        [--timeoutconnect 2]
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
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from messages import generate, parse_size  # noqa: E402
from sink import Sink  # noqa: E402


def installed():
    beside = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
    return beside if os.access(beside, os.X_OK) else shutil.which(
        "qmail-remote")


def make_home(root, route):
    control = os.path.join(root, "control")
    os.makedirs(control, exist_ok=True)
    with open(os.path.join(control, "me"), "w") as f:
        f.write("bench.example\n")
    with open(os.path.join(control, "smtproutes"), "w") as f:
        f.write(f"bench.example:{route}\n")
    return root


def deliver(command, home, path):
    with open(path, "rb") as stdin:
        start = time.perf_counter()
        p = subprocess.run([command, "bench.example", "s@example.org",
                            "r@bench.example"], stdin=stdin,
                           capture_output=True,
                           env={**os.environ, "QMAILHOME": home})
        wall = time.perf_counter() - start
    if b"\0K" not in b"\0" + p.stdout:
        raise SystemExit(f"{command} did not deliver: {p.stdout!r}")
    return wall


def large(args):
    size = parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="ipv6-bench-")
    try:
        path = os.path.join(tmp, "message")
        generate(path, size)
        with Sink("127.0.0.1") as v4, Sink("::1") as v6:
            cases = {
                "IPv4 127.0.0.1": (installed(), make_home(
                    os.path.join(tmp, "h4"), f"127.0.0.1:{v4.port}")),
                "IPv6 ::1": (installed(), make_home(
                    os.path.join(tmp, "h6"), f"[IPv6:::1]:{v6.port}")),
            }
            if args.compare:
                cases["compared, IPv4"] = (args.compare, make_home(
                    os.path.join(tmp, "hc"), f"127.0.0.1:{v4.port}"))
            times = {name: [] for name in cases}
            names = list(cases)
            for name in names:  # warm-up: page cache, pyc
                deliver(*cases[name], path)
            for run in range(args.runs):
                order = names[run % len(names):] + names[:run % len(names)]
                for name in order:
                    times[name].append(deliver(*cases[name], path))
        print(f"{args.size} through a route, {args.runs} interleaved runs, "
              f"median wall time")
        base = statistics.median(times["IPv4 127.0.0.1"])
        for name in names:
            median = statistics.median(times[name])
            print(f"  {name:18} {median * 1e3:8.1f} ms   "
                  f"{median / base:5.2f}x IPv4   "
                  f"{size / median / 1e6:7.0f} MB/s")
        return {name: statistics.median(t) for name, t in times.items()}
    finally:
        shutil.rmtree(tmp)


# The command run inside the namespace: times qmail-remote, prints JSON.
_TIMER = """
import json, subprocess, sys, time
start = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdin=sys.stdin.buffer, capture_output=True)
print(json.dumps({"wall": time.perf_counter() - start,
                  "out": p.stdout.decode("latin-1")}))
"""


def blackhole(args):
    from netns import netns_unavailable, run_in_netns
    reason = netns_unavailable()
    if reason is not None:
        print(f"black hole: skipped ({reason})")
        return None
    command = installed()
    results = {}
    print(f"Dual-stack MX, IPv6 black-holed, timeoutconnect "
          f"{args.timeoutconnect} s, {args.blackhole_runs} runs, median")
    for preference in ("any", "ipv4"):
        walls = []
        for _ in range(args.blackhole_runs):
            tmp = tempfile.mkdtemp(prefix="ipv6-hole-")
            try:
                os.chmod(tmp, 0o755)
                home = make_home(tmp, "")
                os.remove(os.path.join(home, "control", "smtproutes"))
                for name, value in (("addresspreference", preference),
                                    ("timeoutconnect",
                                     str(args.timeoutconnect))):
                    with open(os.path.join(home, "control", name), "w") as f:
                        f.write(value + "\n")
                r = run_in_netns({
                    "command": [sys.executable, "-c", _TIMER, command,
                                "d.example", "s@example.org",
                                "r@d.example"],
                    "env": {"QMAILHOME": home},
                    "stdin": b"Subject: hole\n\nx\n",
                    "blackhole": ["fd00:9::/64"],
                    "zone": {"d.example": {"MX": ["10 mx.d.example."]},
                             "mx.d.example": {"A": "127.0.0.2",
                                              "AAAA": "fd00:9::25"}},
                    "smtp": [{"addr": "127.0.0.2"}],
                    "timeout": args.timeoutconnect * 3 + 10,
                })
                result = json.loads(r.stdout)
                if "\0K127.0.0.2 accepted" not in result["out"]:
                    raise SystemExit(f"black hole: not delivered over "
                                     f"IPv4: {result['out']!r}")
                walls.append(result["wall"])
            finally:
                shutil.rmtree(tmp)
        results[preference] = statistics.median(walls)
        print(f"  addresspreference {preference:4}  "
              f"{results[preference]:6.2f} s  (min {min(walls):.2f}, "
              f"max {max(walls):.2f})")
    limit = args.timeoutconnect + 1
    verdict = "met" if results["any"] <= limit else "MISSED"
    print(f"  target: delivered within timeoutconnect + 1 s = {limit} s: "
          f"{verdict}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="100M")
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--compare", metavar="QMAIL-REMOTE")
    parser.add_argument("--blackhole-runs", type=int, default=5)
    parser.add_argument("--timeoutconnect", type=int, default=2)
    parser.add_argument("--no-large", dest="large", action="store_false")
    parser.add_argument("--no-blackhole", dest="blackhole",
                        action="store_false")
    args = parser.parse_args()
    if installed() is None:
        raise SystemExit("qmail-remote is not installed: pip install .")
    if args.large:
        large(args)
    if args.blackhole:
        blackhole(args)


if __name__ == "__main__":
    main()
