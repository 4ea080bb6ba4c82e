"""Bulk sending (issue 15): qmailremote.Sender against the usual ways.

N messages (default 10,000 of 10 KB) to recipients spread over D domains
(default 50), each domain routed (``control/smtproutes``) to a loopback
sink of its own (``sink.py``: ESMTP with SIZE, PIPELINING and CHUNKING)
that answers every batch of replies ``--delay-ms`` (20) after the input
it answers, and greets that long after the accept: a server 20 ms of
round trip away.  The sinks run in a process of their own, so that the
CPU measured here is the senders' alone.  Senders, each keeping
``--concurrency`` (32) deliveries in flight:

* ``sender``: ``qmailremote.Sender(concurrency=C, per_host=P)
  .send_many(...)``, the messages by path;
* ``qmail-remote``: the installed command, one process per message (how
  qmail sends), C at a time, the message on stdin; only the first
  ``--qmail-remote-messages`` (1,000) messages, as it is slow;
* ``smtplib``: a pool of C threads, ``smtplib.SMTP`` connect, ``sendmail``,
  ``quit`` per message (what most code does);
* ``smtplib-reuse``: C threads, each keeping one ``smtplib.SMTP`` per
  destination and ``sendmail``-ing on it;
* ``aiosmtplib``: ``aiosmtplib.send`` per message, C at a time (an
  ``asyncio.Semaphore``), when aiosmtplib is importable (the ``bench``
  extra);
* ``aiosmtplib-reuse``: C tasks, each keeping one ``aiosmtplib.SMTP`` per
  destination.

smtplib and aiosmtplib get the message's bytes with CRLF line ends made
beforehand (the library would otherwise send bare LFs, or convert them
itself); qmailremote converts as it sends.  Every run checks that each
message was accepted (the sinks' count goes up by exactly N).  Reported:
messages per second (wall) and CPU per message (user+sys of this
process, or of the qmail-remote processes, from ``getrusage``), and each
sender's rate over qmail-remote's and over aiosmtplib's.

Then the peak RSS of a process that imports qmailremote and sends the N
messages with ``Sender.send_many`` (given as a generator, the message by
path): its ``VmHWM`` (``getrusage`` would report the benchmark's own, as
a child started by ``vfork`` inherits that mark).

``--big 100M`` (default; ``--big 0`` skips it): one message of that size
to ``--big-recipients`` (1,000) recipients over the D domains, sent by
``Sender.send`` (one transaction per domain, concurrently), against the
sum of ``deliver()`` run once per domain, one after the other.

    python benchmarks/bulk.py [--messages 10000] [--size 10K] [--domains 50]
        [--delay-ms 20] [--concurrency 32] [--per-host 4] [--runs 1]
        [--senders sender,qmail-remote,smtplib,...] [--big 100M]
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from messages import generate, parse_size  # noqa: E402

SENDER_ADDRESS = "bench@sender.example"
ALL = ["sender", "qmail-remote", "smtplib", "smtplib-reuse", "aiosmtplib",
       "aiosmtplib-reuse"]


# --- the sinks, in a process of their own -----------------------------------

def serve(count, delay):
    """--serve: *count* delayed sinks; their ports as one JSON line; then
    each line on stdin ("count") is answered with the messages received
    so far; EOF ends it."""
    from sink import Sink
    sinks = [Sink("127.0.0.1", size=0, pipelining=True, chunking=True,
                  delay=delay) for _ in range(count)]
    for s in sinks:
        s.__enter__()
    print(json.dumps([s.port for s in sinks]), flush=True)
    for _ in sys.stdin:
        print(sum(s.messages for s in sinks), flush=True)


class Sinks:
    def __init__(self, count, delay):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve",
             str(count), str(delay)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self.ports = json.loads(self.proc.stdout.readline())

    def messages(self):
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# --- the senders -------------------------------------------------------------

def installed(name):
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name)


def run_sender(jobs, home, path, conc, per_host):
    from qmailremote import Sender
    with Sender(home=home, concurrency=conc, per_host=per_host) as sender:
        results = sender.send_many(
            [(SENDER_ADDRESS, [rcpt], path) for _, rcpt, _ in jobs])
    bad = [out for out in results if not out[0].delivered]
    if bad:
        raise SystemExit(f"sender: {len(bad)} not delivered: {bad[0]!r}")


def run_qmail_remote(jobs, home, path, conc, per_host):
    command = installed("qmail-remote")
    env = dict(os.environ, QMAILHOME=home)
    running = []
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < conc:
            domain, rcpt, _ = pending.pop(0)
            with open(path, "rb") as f:
                proc = subprocess.Popen([command, domain, SENDER_ADDRESS,
                                         rcpt], stdin=f,
                                        stdout=subprocess.PIPE, env=env)
            running.append(proc)
        proc = running.pop(0)
        out = proc.stdout.read()
        proc.wait()
        proc.stdout.close()
        if not out.startswith(b"r\0K"):
            raise SystemExit(f"qmail-remote: {out!r}")


def run_smtplib(jobs, home, path, conc, per_host, reuse=False):
    import queue
    import smtplib
    body = crlf(path)
    work = queue.SimpleQueue()
    for job in jobs:
        work.put(job)
    errors = []

    def worker():
        kept = {}
        try:
            while True:
                try:
                    _, rcpt, port = work.get_nowait()
                except queue.Empty:
                    return
                if reuse:
                    smtp = kept.get(port)
                    if smtp is None:
                        smtp = kept[port] = smtplib.SMTP("127.0.0.1", port)
                    smtp.sendmail(SENDER_ADDRESS, [rcpt], body)
                else:
                    with smtplib.SMTP("127.0.0.1", port) as smtp:
                        smtp.sendmail(SENDER_ADDRESS, [rcpt], body)
        except Exception as exc:    # noqa: BLE001 -- reported below
            errors.append(exc)
        finally:
            for smtp in kept.values():
                smtp.quit()

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"smtplib: {errors[0]!r}")


def run_aiosmtplib(jobs, home, path, conc, per_host, reuse=False):
    import asyncio
    import aiosmtplib
    body = crlf(path)

    async def naive():
        gate = asyncio.Semaphore(conc)

        async def one(rcpt, port):
            async with gate:
                await aiosmtplib.send(body, sender=SENDER_ADDRESS,
                                      recipients=[rcpt],
                                      hostname="127.0.0.1", port=port)
        await asyncio.gather(*(one(rcpt, port) for _, rcpt, port in jobs))

    async def kept():
        work = asyncio.Queue()
        for job in jobs:
            work.put_nowait(job)

        async def worker():
            clients = {}
            try:
                while not work.empty():
                    _, rcpt, port = work.get_nowait()
                    client = clients.get(port)
                    if client is None:
                        client = aiosmtplib.SMTP(hostname="127.0.0.1",
                                                 port=port)
                        await client.connect()
                        clients[port] = client
                    await client.sendmail(SENDER_ADDRESS, [rcpt], body)
            finally:
                for client in clients.values():
                    await client.quit()
        await asyncio.gather(*(worker() for _ in range(conc)))

    asyncio.run(kept() if reuse else naive())


def crlf(path):
    with open(path, "rb") as f:
        return f.read().replace(b"\n", b"\r\n")


RUNNERS = {
    "sender": run_sender,
    "qmail-remote": run_qmail_remote,
    "smtplib": run_smtplib,
    "smtplib-reuse": lambda *a: run_smtplib(*a, reuse=True),
    "aiosmtplib": run_aiosmtplib,
    "aiosmtplib-reuse": lambda *a: run_aiosmtplib(*a, reuse=True),
}


def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measure(name, jobs, home, path, conc, per_host, sinks):
    before = sinks.messages()
    who = resource.RUSAGE_CHILDREN if name == "qmail-remote" \
        else resource.RUSAGE_SELF
    cpu0 = cpu(who)
    start = time.perf_counter()
    RUNNERS[name](jobs, home, path, conc, per_host)
    wall = time.perf_counter() - start
    used = cpu(who) - cpu0
    got = sinks.messages() - before
    if got != len(jobs):
        raise SystemExit(f"{name}: {got} messages arrived of {len(jobs)}")
    return len(jobs) / wall, used / len(jobs)


# --- the big message -----------------------------------------------------------

def big_run(home, path, domains, recipients, conc, per_host):
    from qmailremote import Sender, deliver
    rcpts = [f"r{n}@d{n % domains}.bench" for n in range(recipients)]
    start = time.perf_counter()
    with Sender(home=home, concurrency=conc, per_host=per_host) as sender:
        out = sender.send(SENDER_ADDRESS, rcpts, path)
    together = time.perf_counter() - start
    if not all(o.delivered for o in out):
        raise SystemExit("big: not all delivered")
    alone = 0.0
    for d in range(domains):
        group = rcpts[d::domains]
        start = time.perf_counter()
        result = deliver(f"d{d}.bench", SENDER_ADDRESS, group, path,
                         home=home)
        alone += time.perf_counter() - start
        if not result.accepted:
            raise SystemExit(f"big: deliver() said {result.render()!r}")
    return together, alone


RSS_SCRIPT = """
import sys
from qmailremote import Sender
home, path, count, domains, conc, per_host = sys.argv[1:7]
count, domains = int(count), int(domains)
jobs = (("bench@sender.example", ["r%d@d%d.bench" % (n, n % domains)], path)
        for n in range(count))
with Sender(home=home, concurrency=int(conc), per_host=int(per_host)) as s:
    out = s.send_many(jobs)
assert all(o[0].delivered for o in out), "not delivered"
# VmHWM, not getrusage's ru_maxrss: a child started with vfork (as
# subprocess starts it) inherits its parent's high-water mark in that.
with open("/proc/self/status") as f:
    print([line.split()[1] for line in f if line.startswith("VmHWM:")][0])
"""


def peak_rss(home, path, count, domains, conc, per_host):
    """Peak RSS (KiB) of a process sending *count* messages with Sender,
    the message by path, the list given as a generator."""
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, home, path,
                           str(count), str(domains), str(conc),
                           str(per_host)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--size", default="10K")
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--per-host", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--senders", default=",".join(ALL))
    parser.add_argument("--qmail-remote-messages", type=int, default=1000)
    parser.add_argument("--big", default="100M")
    parser.add_argument("--big-recipients", type=int, default=1000)
    args = parser.parse_args()
    if args.serve:
        return serve(int(args.serve[0]), float(args.serve[1]))
    names = args.senders.split(",")
    try:
        import aiosmtplib  # noqa: F401
    except ImportError:
        dropped = [n for n in names if n.startswith("aiosmtplib")]
        names = [n for n in names if n not in dropped]
        if dropped:
            print("aiosmtplib is not importable (pip install "
                  "'qmailremote[bench]'): skipped", flush=True)
    work = tempfile.mkdtemp(prefix="bulk-bench-")
    sinks = Sinks(args.domains, args.delay_ms / 1000)
    try:
        home = os.path.join(work, "home")
        os.makedirs(os.path.join(home, "control"))
        with open(os.path.join(home, "control", "me"), "w") as f:
            f.write("sender.example\n")
        with open(os.path.join(home, "control", "smtproutes"), "w") as f:
            for d, port in enumerate(sinks.ports):
                f.write(f"d{d}.bench:127.0.0.1:{port}\n")
        path = os.path.join(work, "message")
        generate(path, parse_size(args.size))
        jobs = [(f"d{n % args.domains}.bench",
                 f"r{n}@d{n % args.domains}.bench",
                 sinks.ports[n % args.domains])
                for n in range(args.messages)]
        rows = {n: [] for n in names}
        for run in range(args.runs):
            for name in names[run % len(names):] + names[:run % len(names)]:
                subset = jobs[:args.qmail_remote_messages] \
                    if name == "qmail-remote" else jobs
                rows[name].append(measure(name, subset, home, path,
                                          args.concurrency, args.per_host,
                                          sinks))
                rate, per = rows[name][-1]
                print(f"  run {run + 1} {name:17} {rate:8.0f} msg/s  "
                      f"{per * 1e3:6.2f} ms CPU/msg", flush=True)
        print(f"{args.messages} messages of {args.size} to {args.domains} "
              f"domains, {args.delay_ms:g} ms away, concurrency "
              f"{args.concurrency} (per host {args.per_host}), medians of "
              f"{args.runs}:")
        rates = {n: statistics.median(r[0] for r in rows[n]) for n in names}
        for name in names:
            per = statistics.median(r[1] for r in rows[name])
            ratios = "".join(
                f"  {rates[name] / rates[base]:5.1f}x {base}"
                for base in ("qmail-remote", "aiosmtplib-reuse")
                if base in rates and base != name)
            print(f"  {name:17} {rates[name]:8.0f} msg/s  "
                  f"{per * 1e3:6.2f} ms CPU/msg{ratios}", flush=True)
        if "sender" in names:
            rss = peak_rss(home, path, args.messages, args.domains,
                           args.concurrency, args.per_host)
            print(f"peak RSS of a process sending the {args.messages} "
                  f"messages with Sender (by path): {rss / 1024:.1f} MiB",
                  flush=True)
        if parse_size(args.big) if args.big != "0" else 0:
            big = os.path.join(work, "big")
            generate(big, parse_size(args.big))
            together, alone = big_run(home, big, args.domains,
                                      args.big_recipients, args.concurrency,
                                      args.per_host)
            print(f"one {args.big} message to {args.big_recipients} "
                  f"recipients over {args.domains} domains: Sender.send "
                  f"{together:.2f} s, the sum of {args.domains} deliver() "
                  f"{alone:.2f} s ({alone / together:.1f}x)", flush=True)
    finally:
        sinks.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
