"""Warm deliveries (issue 13): qmail-rspawn driven as qmail-send drives it.

A driver plays qmail-send: it starts a spawner, reads its spawn-limit
byte, keeps *concurrency* deliveries in flight over the pipe protocol
(slot byte, message id, sender, recipient, each NUL-terminated) and reads
the reports, for N deliveries of one message to the loopback sink
(``sink.py``, through a ``control/smtproutes`` route).  Spawners:

* ``ours``: this package's ``qmail-rspawn`` (warm workers);
* ``ours/N``: the same with ``QMAILREMOTE_RSPAWN_PER_WORKER=N``, up to
  N deliveries at once per worker, on threads;
* ``ours-exec``: the same with ``QMAILREMOTE_RSPAWN_EXEC=1``, running the
  installed ``qmail-remote`` per delivery;
* ``c+ours``: netqmail 1.06's C qmail-rspawn (``--c-rspawn``) running
  our ``qmail-remote`` (found first on ``PATH``);
* ``c+c``: the C qmail-rspawn running the C qmail-remote
  (``--c-remote``).

The C binaries have their qmail home compiled in (``--c-home``; a scratch
home, never a live qmail's: the benchmark writes ``control/me``,
``control/smtproutes`` and ``queue/mess`` there and removes what it made)
and the qmailq uid compiled in: the message files are chowned to
``--qmailq-uid`` (default: this process's uid), and ours is told the user
with ``QMAILREMOTE_QMAILQ``.

Each run first makes ``--warmup`` deliveries (default: twice the
concurrency), which are not measured: a spawner is measured in its steady
state (ours with its workers forked, as after qmail has run a while).
Reported per spawner, message size and concurrency: messages per second
(wall), CPU per delivery (user+sys of the spawner's whole process tree,
live or reaped: from a cgroup v2 of its own when the benchmark runs as
root, else summed from ``/proc`` at clock-tick resolution), and memory
per concurrent delivery:
the unique (USS) and proportional (PSS) set sizes of the spawner and all
its descendants, from ``/proc/<pid>/smaps_rollup``, sampled while the
pipeline is full (every 0.2 s, the median), minus the idle spawner's,
divided by the concurrency.

    python benchmarks/rspawn.py [--count 2000] [--sizes 1K,10K]
        [--concurrency 1,8,32,120]
        [--spawners ours,ours/4,ours-exec,c+ours,c+c]
        [--c-rspawn PATH] [--c-remote PATH] [--c-home DIR] [--runs 3]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from messages import generate, parse_size  # noqa: E402
from sink import Sink  # noqa: E402


def installed(name):
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name)


def _children(pid):
    """pid and all its descendants."""
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return out
    for kid in kids:
        out += _children(kid)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid):
    """CPU seconds of pid and its descendants, live or reaped by them:
    utime+stime+cutime+cstime over the whole tree (/proc/<pid>/stat)."""
    total = 0
    for p in _children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / _TICK


class _CpuGroup:
    """CPU of a process and everything it ever starts, exactly: a cgroup v2
    of its own (``cpu.stat``'s ``usage_usec`` counts exited tasks too).
    Needs root and a cgroup2 mount; otherwise :func:`_cpu`'s /proc sums,
    which are sampled at clock ticks (10 ms a tick against deliveries of
    about 1 ms spread over up to 255 workers: noisy)."""

    def __init__(self):
        self.path = None
        try:
            with open("/proc/mounts") as f:
                roots = [line.split()[1] for line in f
                         if line.split()[2] == "cgroup2"]
            for root in roots:
                path = os.path.join(root, f"rspawn-bench-{os.getpid()}")
                try:
                    os.mkdir(path)
                except FileExistsError:
                    pass
                if os.path.exists(os.path.join(path, "cpu.stat")):
                    self.path = path
                    break
                os.rmdir(path)
        except OSError:
            self.path = None

    def add(self, pid):
        if self.path is not None:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def seconds(self, pid):
        if self.path is None:
            return _cpu(pid)
        with open(os.path.join(self.path, "cpu.stat")) as f:
            for line in f:
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        return 0.0

    def close(self):
        if self.path is not None:
            try:
                os.rmdir(self.path)
            except OSError:
                pass


def _memory(pid):
    """(USS, PSS) in bytes of pid and its descendants."""
    uss = pss = 0
    for p in _children(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = dict(line.split(":", 1) for line in f
                              if ":" in line and not line.startswith("0"))
        except OSError:
            continue

        def kib(name):
            return int(fields.get(name, "0 kB").split()[0]) * 1024
        uss += kib("Private_Clean") + kib("Private_Dirty")
        pss += kib("Pss")
    return uss, pss


class Setup:
    """A qmail home with a queue, a message, and a route to the sink."""

    def __init__(self, home, port, size, uid, made):
        self.home = home
        for d in ("control", "queue", "queue/mess", "queue/mess/0",
                  "queue/lock"):
            path = os.path.join(home, d)
            if not os.path.isdir(path):
                os.mkdir(path)
                made.append(path)   # removed in reverse: leaves first
        for name, text in (("me", "bench.example\n"),
                           ("smtproutes",
                            f"bench.example:127.0.0.1:{port}\n")):
            path = os.path.join(home, "control", name)
            if os.path.exists(path) and path not in made:
                backup = path + ".bench-saved"
                os.rename(path, backup)
                made.append(("restore", backup, path))
            with open(path, "w") as f:
                f.write(text)
            made.append(path)
        self.message = os.path.join(home, "queue/mess/0/100")
        generate(self.message, size)
        os.chown(self.message, uid, -1)
        made.append(self.message)


def drive(command, env, count, concurrency, warmup):
    """*warmup* deliveries, then *count* measured: (wall, cpu, mem).

    The warm-up brings a spawner to its steady state (ours: the workers
    forked, as they are after qmail has run a while); CPU is the
    spawner's process tree's, from /proc, over the measured part only.
    """
    p = subprocess.Popen(command, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=env)
    group = _CpuGroup()
    group.add(p.pid)   # before the first command: no child exists yet
    limit = p.stdout.read(1)[0]
    concurrency = min(concurrency, limit)
    free = list(range(concurrency))
    sent = done = 0
    buf = b""
    samples = []
    last_sample = 0.0
    idle = _memory(p.pid)
    command_bytes = b"0/100\0s@bench.example\0r@bench.example\0"
    total = count + warmup
    start = cpu0 = None
    if not warmup:
        start, cpu0 = time.perf_counter(), group.seconds(p.pid)
    while done < total:
        if start is None and done >= warmup:
            start, cpu0 = time.perf_counter(), group.seconds(p.pid)
        batch = b""
        while free and sent < total:
            batch += bytes((free.pop(),)) + command_bytes
            sent += 1
        if batch:
            p.stdin.write(batch)
            p.stdin.flush()
        if start is not None and not free and \
                time.perf_counter() - last_sample > 0.2:
            samples.append(_memory(p.pid))
            last_sample = time.perf_counter()
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            raise SystemExit(f"{command[0]} ended early")
        buf += chunk
        while b"\0" in buf[1:]:
            end = buf.index(b"\0", 1)
            slot, text = buf[0], buf[1:end]
            buf = buf[end + 1:]
            if text[:1] != b"K":
                raise SystemExit(f"delivery failed: {text!r}")
            free.append(slot)
            done += 1
    wall = time.perf_counter() - start
    cpu = group.seconds(p.pid) - cpu0
    p.stdin.close()
    p.wait()
    group.close()
    # The median of the samples taken with every slot busy.
    mem = (statistics.median(m[0] for m in samples),
           statistics.median(m[1] for m in samples)) if samples else idle
    per = tuple(max(m - i, 0) / concurrency for m, i in zip(mem, idle))
    return wall, cpu, per


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sizes", default="1K,10K")
    parser.add_argument("--concurrency", default="1,8,32,120")
    parser.add_argument("--spawners", default="ours,ours-exec,c+ours,c+c")
    parser.add_argument("--c-rspawn")
    parser.add_argument("--c-remote")
    parser.add_argument("--c-home")
    parser.add_argument("--qmailq-uid", type=int, default=os.getuid())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=-1,
                        help="deliveries before measuring (default: "
                             "twice the concurrency)")
    args = parser.parse_args()
    import pwd
    qmailq = pwd.getpwuid(args.qmailq_uid).pw_name
    spawners = args.spawners.split(",")
    if not (args.c_rspawn and args.c_home):
        spawners = [s for s in spawners if not s.startswith("c+")]
    if not args.c_remote:
        spawners = [s for s in spawners if s != "c+c"]
    made = []
    ours_home = tempfile.mkdtemp(prefix="rspawn-bench-")
    made.append(ours_home)
    bins = tempfile.mkdtemp(prefix="rspawn-bench-bin-")
    made.append(bins)
    ours_bin = os.path.join(bins, "ours")
    c_bin = os.path.join(bins, "c")
    os.makedirs(ours_bin)
    os.makedirs(c_bin)
    os.symlink(installed("qmail-remote"), os.path.join(ours_bin,
                                                       "qmail-remote"))
    if args.c_remote:
        os.symlink(os.path.abspath(args.c_remote),
                   os.path.join(c_bin, "qmail-remote"))
    rspawn = installed("qmail-rspawn")
    results = []
    try:
        with Sink("127.0.0.1") as sink:
            for size_text in args.sizes.split(","):
                size = parse_size(size_text)
                Setup(ours_home, sink.port, size, args.qmailq_uid, made)
                if args.c_home:
                    Setup(args.c_home, sink.port, size, args.qmailq_uid,
                          made)
                for conc in [int(c) for c in args.concurrency.split(",")]:
                    rows = {s: [] for s in spawners}
                    for run in range(args.runs):
                        for name in spawners[run % len(spawners):] + \
                                spawners[:run % len(spawners)]:
                            env = dict(os.environ, QMAILREMOTE_QMAILQ=qmailq,
                                       QMAILHOME=ours_home,
                                       QMAILREMOTE_SPAWN_LIMIT="255")
                            env.pop("QMAILREMOTE_RSPAWN_EXEC", None)
                            env.pop("QMAILREMOTE_RSPAWN_PER_WORKER", None)
                            command = [rspawn]
                            if name.startswith("ours/"):
                                env["QMAILREMOTE_RSPAWN_PER_WORKER"] = \
                                    name.split("/", 1)[1]
                            elif name == "ours-exec":
                                env["QMAILREMOTE_RSPAWN_EXEC"] = "1"
                                env["PATH"] = ours_bin + ":" + env["PATH"]
                            elif name == "c+ours":
                                command = [args.c_rspawn]
                                env["PATH"] = ours_bin + ":" + env["PATH"]
                                env["QMAILHOME"] = args.c_home
                            elif name == "c+c":
                                command = [args.c_rspawn]
                                env["PATH"] = c_bin + ":" + env["PATH"]
                            warmup = args.warmup if args.warmup >= 0 \
                                else 2 * conc
                            rows[name].append(drive(command, env,
                                                    args.count, conc,
                                                    warmup))
                    for name in spawners:
                        wall = statistics.median(r[0] for r in rows[name])
                        cpu = statistics.median(r[1] for r in rows[name])
                        uss = statistics.median(r[2][0] for r in rows[name])
                        pss = statistics.median(r[2][1] for r in rows[name])
                        results.append((size_text, conc, name,
                                        args.count / wall,
                                        cpu / args.count * 1e3,
                                        uss / (1 << 20), pss / (1 << 20)))
                        print(f"{size_text:>4} c={conc:<3} {name:9} "
                              f"{args.count / wall:8.0f} msg/s  "
                              f"{cpu / args.count * 1e3:6.2f} ms CPU/msg  "
                              f"USS {uss / (1 << 20):5.2f} MiB  "
                              f"PSS {pss / (1 << 20):5.2f} MiB "
                              f"per concurrent delivery", flush=True)
    finally:
        for item in reversed(made):
            if isinstance(item, tuple):
                _, backup, path = item
                os.replace(backup, path)
            elif os.path.isdir(item):
                shutil.rmtree(item, ignore_errors=True)
            elif os.path.exists(item):
                os.remove(item)
    return results


if __name__ == "__main__":
    main()
