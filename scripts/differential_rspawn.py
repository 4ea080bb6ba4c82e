#!/usr/bin/env python3
"""Differential run: C netqmail 1.06 qmail-rspawn against qmailremote's.

Every scenario drives netqmail's spawn protocol (commands on fd 0; the
spawn-limit byte, then ``slot report NUL`` per delivery on fd 1) through
four spawners, one after the other, with the same command stream, the
same queue files and the same ``qmail-remote``:

  C     netqmail 1.06's qmail-rspawn (``QMAILREMOTE_DIFF_RSPAWN_C``);
  warm  ``python -m qmailremote.rspawn`` (its default backend: up to
        eight deliveries per worker, on threads);
  single  the same with ``QMAILREMOTE_RSPAWN_PER_WORKER=1``;
  exec  the same with ``QMAILREMOTE_RSPAWN_EXEC=1`` (qmail-remote run from
        ``PATH`` per delivery, as C does).

Compared for each: (a) every byte of fd 1, (b) the exit status, (c) what
each SMTP server received (per connection, sorted), (d) ``queue/lock/tcpto``
and ``tcpto6`` afterwards.  Verdicts: MATCH; EXPECTED-DEVIATION <name> (a
documented difference, each side showing exactly what is predicted for
it); MISMATCH (both sides printed, with the first differing byte); SKIP
(the scenario needs root).

C qmail-rspawn runs ``qmail-remote`` from ``PATH``: a directory put first
on ``PATH`` holds qmailremote's installed ``qmail-remote`` (the launcher
next to ``sys.executable``; without one, a script running ``python -m
qmailremote`` from this checkout; or ``QMAILREMOTE_DIFF_QMAIL_REMOTE``), so
the comparison is about the spawner.  Scenarios about report() folding,
exit codes and signals put a fake ``qmail-remote`` (a shell script) there
instead, and run C and exec only (the warm backend never execs anything).
Servers are tests/smtpserver.py's ScriptedServer (needs aiosmtpd, from the
``test`` extra) on 127.0.0.1, reached through ``control/smtproutes``, under
``control/noesmtp``.  Runs are synchronised on what fd 1 shows, on a
server's connections and on releasing a held server, so report order is
deterministic; the few scenarios with concurrent deliveries compare the
reports as a sorted list (the first byte still exactly).

Usage::

    QMAILREMOTE_DIFF_RSPAWN_C=/path/to/qmail-rspawn \\
    QMAILREMOTE_DIFF_RSPAWN_C_HOME=/its/compiled/in/home \\
    QMAILREMOTE_DIFF_RSPAWN_QMAILQ=root \\
    python scripts/differential_rspawn.py [-k SUBSTRING] [-v] [--list] [--installed]

``QMAILREMOTE_DIFF_RSPAWN_QMAILQ`` names the user whose uid the C binary
has as ``auto_uidq`` (default ``qmailq``): message files are chowned to it
(root needed unless it is you), and qmailremote gets it as
``QMAILREMOTE_QMAILQ``.  ``--installed`` runs the ``qmail-rspawn`` console
script next to ``sys.executable`` instead of ``python -m
qmailremote.rspawn`` from this checkout.

The home must be a scratch one: this script creates ``queue/`` in it (with
a marker file), empties ``queue/mess`` and ``queue/lock`` per run and
removes ``queue/`` at the end; a home whose ``queue/`` lacks the marker
(a live qmail, perhaps) is refused.  The control files it writes (me,
noesmtp, timeoutremote, smtproutes) are backed up and restored, also on
Ctrl-C or SIGTERM.

Building the C binary (this script never builds anything).  qmail-rspawn's
build compiles in the qmail home (``conf-qmail``), the spawn limit
(``conf-spawn``, 120) and the uids of the qmail users (``auto_uids.c``,
made by ``auto-uid``/``auto-gid`` from ``conf-users``/``conf-groups``,
which fails unless those users and groups exist).  In a scratch copy of
netqmail 1.06's source, either create the users first (as root:
``groupadd nofiles; groupadd qmail; useradd -g nofiles -d /nonexistent -s
/usr/sbin/nologin alias`` and likewise qmaild, qmaill, qmailp; ``useradd
-g qmail ... qmailq``, qmailr, qmails; root is the owner user), or write
``auto_uids.c`` yourself with the uids you want and tell make to leave it
alone::

    cp -a netqmail-1.06 /tmp/rspawn-c/src && cd /tmp/rspawn-c/src
    make clean
    echo /tmp/rspawn-c/home > conf-qmail && mkdir -p /tmp/rspawn-c/home/control
    for v in a d l o p q r s; do echo "int auto_uid$v = 0;"; done > auto_uids.c
    printf 'int auto_gidq = 0;\\nint auto_gidn = 0;\\n' >> auto_uids.c
    make -o auto_uids.c qmail-rspawn

(every uid 0 here: then ``QMAILREMOTE_DIFF_RSPAWN_QMAILQ=root``).  Only
``qmail-rspawn`` is needed: its ``qmail-remote`` is qmailremote's.

The exit status is 0 if there was no MISMATCH, 1 otherwise, 2 for a setup
error.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from diffkit import (ControlBackup, choose_scenarios, short,
                     sigterm_interrupts, summarise)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from smtpserver import (ScriptedServer, read_to_eof, send,  # noqa: E402
                        smtp_script, wait_event)

PROG = "differential_rspawn"
CONTROL_FILES = ("me", "noesmtp", "timeoutremote", "smtproutes")
MARKER = ".qmailremote-differential-rspawn"
#: Seconds one wait (for fd 1, a connection, an exit) may take.
WAIT = 20.0

BODY = b"Subject: rspawn\n\nhello\n"
SENDER = b"s@sender.example"


# ---------------------------------------------------------------------------
# Scenarios


def cmd(slot, messid, recip, sender=SENDER):
    def b(x):
        return x if isinstance(x, bytes) else x.encode()
    return bytes((slot,)) + b(messid) + b"\0" + b(sender) + b"\0" + b(recip) + b"\0"


@dataclasses.dataclass
class Server:
    """A ScriptedServer: *script* for every connection; *hold* waits
    before the greeting until a ("release", name) step."""
    script: list
    hold: bool = False


def ok(**kw):
    return Server(smtp_script(**kw))


def rejected(stage, reply):
    """The server answers *stage*'s command with *reply*; QUIT follows."""
    script = smtp_script(**{stage: None}) if stage != "greeting" else []
    return Server(script + [send(reply), read_to_eof(b"QUIT\r\n")])


def held(**kw):
    return Server(smtp_script(**kw), hold=True)


def victim():
    """Never greets; reads until the client (killed) goes away."""
    return Server([read_to_eof()])


@dataclasses.dataclass
class Scenario:
    name: str
    #: ("write", bytes) | ("bytewise", bytes) | ("reports", n) |
    #: ("connected", server, n) | ("release", server) | ("kill", server) |
    #: ("eof",) | ("close_stdout",) | ("served", server, n)
    steps: list = dataclasses.field(default_factory=list)
    servers: dict = dataclasses.field(default_factory=dict)
    #: name -> output of the fake qmail-remote; None: the real qmail-remote
    fake: Optional[dict] = None
    #: PATH directory instead: "missing" (no qmail-remote), "noexec"
    #: (mode 644), "noshebang" (a script without #!)
    path: Optional[str] = None
    #: messid -> bytes | "dir" | "fifo" | ("owner", bytes)
    files: dict = dataclasses.field(default_factory=dict)
    #: "tcpto"/"tcpto6" -> bytes | "fifo"; "nolock": no queue/lock at all
    lock: dict = dataclasses.field(default_factory=dict)
    nomess: bool = False
    variants: tuple = ("warm", "single", "exec")
    #: compare the reports after the first byte as a sorted list
    unordered: bool = False
    #: (name, predicate(c, ours)) of an expected deviation
    deviation: Optional[tuple] = None
    root: bool = False
    ports: dict = dataclasses.field(default_factory=dict)


ERRORS = {
    "delnum too big (120)": cmd(120, "1/100", "a@x.test"),
    "delnum too big (255)": cmd(255, "x", "no-at"),
    "messid leading slash": cmd(1, "/1/100", "a@x.test"),
    "messid letters": cmd(1, "1/10a", "a@x.test"),
    "messid 8-bit": cmd(1, b"1/\xb0", "a@x.test"),
    "messid space": cmd(1, "1 /100", "a@x.test"),
    "messid 151 with a letter (nonnumerics first)": cmd(1, "1" * 150 + "a", "a@x.test"),
    "messid 101 bytes": cmd(1, "1" * 100, "a@x.test"),
    "messid 100 bytes (not too long)": cmd(1, "1" * 99, "a@x.test"),
    "messid long, recipient without @": cmd(1, "1/" + "2" * 200, "no-at"),
    "messid empty": cmd(1, "", "a@x.test"),
    "messid empty, recipient without @": cmd(1, "", "no-at"),
    "recipient without @": cmd(2, "1/100", "no-at"),
    "recipient empty": cmd(2, "1/100", ""),
    "recipient without @, message missing": cmd(2, "1/404", "no-at"),
    "message missing": cmd(3, "1/404", "a@x.test"),
    "message dir missing": cmd(3, "404/1", "a@x.test"),
    "message a FIFO": cmd(3, "1/555", "a@x.test"),
    "message a directory": cmd(3, "1/556", "a@x.test"),
    "message the split directory": cmd(3, "1", "a@x.test"),
}
ERROR_FILES = {"1/555": "fifo", "1/556": "dir"}

#: qmail-remote outputs for report(): the outputs of tests/test_rspawn.py's
#: REPORT_TABLE with exit status 0, and a few more.
REPORT_OUTPUTS = [
    b"Kok\0", b"Zlater\0", b"Dnever\0", b"K\0",
    b"r\0Kaccepted\n\0", b"r\0Ztemp\n\0", b"r\0Dperm\n\0",
    b"hno\n\0Kyes\n\0", b"hno\n\0Zlater\n\0", b"hno\n\0Dgiving up\n\0",
    b"slater\n\0Kyes\n\0", b"slater\n\0Ztemp\n\0", b"slater\n\0Dgiving up\n\0",
    b"rabc\0Zdef\0", b"s\0Zx\0", b"s\0", b"h\0", b"r\0", b"hno\0",
    b"r\0r\0Kok\0", b"r\0h\0Kok\0", b"r\0s\0Dx\0", b"h\0\0Kx\0",
    b"Kfirst\0Ksecond\0", b"K\0Dx\0", b"D\0K\0", b"Z1\0D2\0K3\0",
    b"\0", b"x\0", b"junk", b"Kjunk", b"warning\nK ok\0", b"K\xff\xfe\x01\0",
    b"r\0K" + b"x" * 5000 + b"\0",
    b"r\0K" + b"y" * 100000 + b"\0",
    b"\0\0\0", b"Z\0", b"D\0", b"sa\0hb\0Kc\0", b"hK\0Kh\0",
]

FAKE_REMOTE = r"""#!/bin/sh
# A fake qmail-remote: the recipient's local part says what it does.
name=${3%%@*}
case $name in
  kill*) kill -KILL $$ ;;
  segv*) kill -SEGV $$ ;;
  exit*) exit "${name#exit}" ;;
  stderr*) printf 'to stderr\n' >&2 ;;
  args*) printf 'K%s|%s|%s|%s|%s\0' "$#" "$1" "$2" "$3" "$(pwd)"; exit 0 ;;
  stdin*) printf 'K'; cat; printf '\0'; exit 0 ;;
  fds*) printf 'K'
        for f in /proc/$$/fd/*; do
          printf '%s=%s ' "${f##*/}" "$(readlink "$f" | sed 's/:\[[0-9]*\]//')"
        done
        printf '\0'; exit 0 ;;
  flags*) printf 'K%s\0' "$(grep flags /proc/$$/fdinfo/0)"; exit 0 ;;
  sigs*) printf 'K%s\0' "$(grep -E '^Sig(Blk|Ign)' /proc/$$/status | tr '\n' ' ')"
         exit 0 ;;
esac
exec cat "$FAKE_QR_DIR/$name.out"
"""


def past_end(c_out, ours_out):
    """C's report() puts()s the verdict record up to a NUL even past the
    output's length: a later, shorter output without its final NUL in the
    same slot shows the rest of the earlier one.  Ours stops at the end."""
    def check(c, ours):
        return c.out == c_out and ours.out == ours_out
    return ("past-end", check)


def build_scenarios() -> list[Scenario]:
    S: list[Scenario] = []
    add = S.append

    # -- start-up --------------------------------------------------------------
    add(Scenario("start/EOF at once"))
    add(Scenario("start/half a command, then EOF", [("write", b"\x00" + b"1/10")]))
    add(Scenario("start/half a command, no recipient NUL", [
        ("write", cmd(0, "1/100", "a@x.test")[:-1])]))
    for label, data in (("1024 bytes", b"\x01" * 1024), ("1500 bytes", b"\x01" * 1500),
                        ("10 bytes", b"\x01" * 10), ("empty", b"")):
        add(Scenario(f"start/tcpto {label}", lock={"tcpto": data}))
    add(Scenario("start/tcpto a FIFO", lock={"tcpto": "fifo"}))
    add(Scenario("start/no queue/lock", lock={"nolock": True}))
    add(Scenario("start/no queue/mess: exit 111", nomess=True))

    def tcpto6(c, ours):
        return (c.files["tcpto6"] == b"\x01" * 3000
                and ours.files["tcpto6"] == bytes(2048) + b"\x01" * 952
                and c.files["tcpto"] == ours.files["tcpto"])
    add(Scenario("start/tcpto6 (ours clears it too)",
                 lock={"tcpto": b"\x01" * 1024, "tcpto6": b"\x01" * 3000},
                 deviation=("tcpto6", tcpto6)))

    # -- docmd() ------------------------------------------------------------------
    for label, command in ERRORS.items():
        add(Scenario(f"docmd/{label}", [("write", command), ("reports", 1)],
                     files=dict(ERROR_FILES)))
    every = b"".join(ERRORS.values())
    add(Scenario("docmd/all in one write", [("write", every), ("reports", len(ERRORS))],
                 files=dict(ERROR_FILES)))
    add(Scenario("docmd/all, one byte per write",
                 [("bytewise", every), ("reports", len(ERRORS))], files=dict(ERROR_FILES)))
    add(Scenario("docmd/wrong owner", [("write", cmd(9, "2/200", "a@x.test")), ("reports", 1)],
                 files={"2/200": ("owner", BODY)}, root=True))
    add(Scenario("docmd/delnum in use", [
        ("write", cmd(3, "1/100", "a@held.test") + cmd(3, "1/100", "b@held.test")
         + cmd(3, "bad", "no-at") + cmd(4, "1/404", "c@held.test")),
        ("reports", 3), ("connected", "held", 1), ("release", "held"), ("reports", 1),
        ("write", cmd(3, "1/100", "d@held.test")), ("reports", 1)],
        servers={"held": held()}))
    add(Scenario("docmd/slots 0, 119 deliver; 120 too big", [
        ("write", cmd(0, "1/100", "a@ok.test")), ("reports", 1),
        ("write", cmd(119, "1/100", "b@ok.test")), ("reports", 1),
        ("write", cmd(120, "1/100", "c@ok.test")), ("reports", 1)],
        servers={"ok": ok()}))

    # -- deliveries through the real qmail-remote ----------------------------
    outcomes = {
        "accepted": ok(),
        "final 451": ok(final=b"451 later\r\n"),
        "final 554": ok(final=b"554 no\r\n"),
        "DATA 554": rejected("data", b"554 no data\r\n"),
        "RCPT 550 (h)": rejected("rcpts", b"550 no\r\n"),
        "RCPT 450 (s)": rejected("rcpts", b"450 later\r\n"),
        "greeting 421": rejected("greeting", b"421 busy\r\n"),
        "MAIL 550": rejected("mail", b"550 no\r\n"),
    }
    for label, server in outcomes.items():
        add(Scenario(f"deliver/{label}", [
            ("write", cmd(5, "1/100", "r@srv.test")), ("reports", 1)],
            servers={"srv": server}))
    add(Scenario("deliver/connection refused", [
        ("write", cmd(5, "1/100", "r@refused.test")), ("reports", 1)],
        ports={"refused": "closed"}))
    add(Scenario("deliver/host after the last @, null sender, 8-bit body", [
        ("write", cmd(1, "3//300", "a@wrong.test@ok.test", sender=b"")), ("reports", 1),
        ("write", cmd(2, "3/300", "b@ok.test", sender=b"who@where.example")), ("reports", 1)],
        servers={"ok": ok()},
        files={"3/300": b"From: x\n\n" + b"line \xe9\n.\n" * 3000}))
    add(Scenario("deliver/40 at once", [
        ("write", b"".join(cmd(i, "1/100", f"r{i}@ok.test") for i in range(40))),
        ("reports", 40)], servers={"ok": ok()}, unordered=True))
    add(Scenario("deliver/errors between deliveries, one write", [
        ("write", cmd(0, "1/100", "a@ok.test") + ERRORS["messid letters"]
         + cmd(1, "1/100", "b@ok.test") + ERRORS["recipient without @"]),
        ("reports", 4)], servers={"ok": ok()}, unordered=True))

    # -- order, crash, EOF, stdout ----------------------------------------------
    add(Scenario("order/slot 1 finishes before slot 0", [
        ("write", cmd(0, "1/100", "a@held.test")), ("connected", "held", 1),
        ("write", cmd(1, "1/100", "b@ok.test")), ("reports", 1),
        ("release", "held"), ("reports", 1)],
        servers={"held": held(), "ok": ok()}))
    add(Scenario("crash/qmail-remote (or worker) killed, others go on", [
        ("write", cmd(0, "1/100", "a@victim.test") + cmd(1, "1/100", "b@held.test")),
        ("connected", "victim", 1), ("connected", "held", 1),
        ("kill", "victim"), ("reports", 1),
        ("write", cmd(2, "1/100", "c@ok.test")), ("reports", 1),
        ("release", "held"), ("reports", 1),
        ("write", cmd(0, "1/100", "d@ok.test")), ("reports", 1)],
        servers={"victim": victim(), "held": held(), "ok": ok()}))
    add(Scenario("eof/deliveries running are reported, then exit", [
        ("write", cmd(0, "1/100", "a@one.test") + cmd(77, "1/100", "b@two.test")
         + ERRORS["messid letters"]),
        ("reports", 1), ("connected", "one", 1), ("connected", "two", 1), ("eof",),
        ("release", "two"), ("reports", 1), ("release", "one"), ("reports", 1)],
        servers={"one": held(final=b"451 later\r\n"), "two": held()}))
    add(Scenario("stdout/closed early: deliveries go on", [
        ("close_stdout",),
        ("write", ERRORS["messid letters"] + cmd(1, "1/100", "b@ok.test")),
        ("served", "ok", 1),
        ("write", cmd(2, "1/100", "c@ok.test") + cmd(3, "1/100", "d@ok.test")),
        ("served", "ok", 3)], servers={"ok": ok()}))

    # -- a fake qmail-remote: report(), exits, signals, exec --------------------
    def fake(name, outputs, steps, **kw):
        add(Scenario(name, steps, fake=outputs, variants=("exec",), **kw))

    for i, output in enumerate(REPORT_OUTPUTS):
        label = repr(output) if len(output) < 40 else f"{output[:6]!r}...({len(output)} bytes)"
        fake(f"report/{label}", {f"out{i}": output},
             [("write", cmd(i, "1/100", f"out{i}@fake.test")), ("reports", 1)])
    for name in ("kill", "segv", "exit111", "exit100", "exit1", "exit255", "exit0",
                 "stderr"):
        fake(f"fake/{name}", {"kill": b"r\0Kok\0", "segv": b"r\0Kok\0", "exit0": b"",
                              "stderr": b"K ok\0"},
             [("write", cmd(4, "1/100", f"{name}@fake.test")), ("reports", 1)])
    fake("fake/crash among others", {"good": b"r\0Kfine\n\0", "kill": b"r\0Kok\0"},
         [("write", cmd(0, "1/100", "good@fake.test")), ("reports", 1),
          ("write", cmd(1, "1/100", "kill@fake.test")), ("reports", 1),
          ("write", cmd(2, "1/100", "good@fake.test")), ("reports", 1)])
    for what in ("args", "stdin", "fds", "flags", "sigs"):
        fake(f"child/{what}", {},
             [("write", cmd(6, "3/300", f"{what}@x@fake.test", sender=b"")), ("reports", 1)],
             files={"3/300": b"Subject: child\n\nbody\n"})
    for problem in ("missing", "noexec", "noshebang"):
        fake(f"exec/qmail-remote {problem}", {},
             [("write", cmd(0, "1/100", "a@fake.test")), ("reports", 1)], path=problem)
    long_first = b"r\0K" + b"B" * 50 + b"\0"
    fake("report/same slot: long, then short without its NUL",
         {"long": long_first, "short": b"r\0Kx"},
         [("write", cmd(0, "1/100", "long@fake.test")), ("reports", 1),
          ("write", cmd(0, "1/100", "short@fake.test")), ("reports", 1)],
         deviation=past_end(
             # C: the second report runs on into the first one's tail
             b"x" + b"\0K" + b"B" * 50 + b"\0" + b"\0Dx" + b"B" * 49 + b"\0",
             b"x" + b"\0K" + b"B" * 50 + b"\0" + b"\0Dx\0"))
    fake("report/output without its NUL, fresh slot", {"short": b"r\0Kx"},
         [("write", cmd(9, "1/100", "short@fake.test")), ("reports", 1)])
    return S


# ---------------------------------------------------------------------------
# The home


class Home:
    """The scratch home: queue/ (ours, with the marker) and control files."""

    def __init__(self, root: Path, uid: int):
        self.root = root
        self.queue = root / "queue"
        self.mess = self.queue / "mess"
        self.lock = self.queue / "lock"
        self.uid = uid
        self.controls = ControlBackup(root, CONTROL_FILES, PROG)

    def claim(self):
        if self.queue.exists() and not (self.queue / MARKER).exists():
            refuse(f"{self.queue} exists and is not this script's (no {MARKER}); "
                   "refusing to touch what may be a live qmail. Use a scratch home.")
        if not (self.root / "control").is_dir():
            refuse(f"{self.root}/control is not a directory")
        self.queue.mkdir(exist_ok=True)
        (self.queue / MARKER).write_bytes(b"")
        self.controls.backup()

    def release(self):
        self.controls.restore()
        shutil.rmtree(self.queue, ignore_errors=True)

    def prepare(self, sc: Scenario, ports: dict):
        for d in (self.mess, self.lock, self.queue / "mess.away"):
            if d.exists():
                shutil.rmtree(d)
        self.mess.mkdir()
        if not sc.lock.get("nolock"):
            self.lock.mkdir()
        for name, data in sc.lock.items():
            if name == "nolock":
                continue
            if data == "fifo":
                os.mkfifo(self.lock / name)
            else:
                (self.lock / name).write_bytes(data)
        files = {"1/100": BODY, **sc.files}
        for messid, what in files.items():
            path = self.mess / messid
            path.parent.mkdir(parents=True, exist_ok=True)
            if what == "dir":
                path.mkdir()
            elif what == "fifo":
                os.mkfifo(path)
            else:
                owner = self.uid
                if isinstance(what, tuple):
                    owner = self.uid + 1 if self.uid != 0 else 54321
                    what = what[1]
                path.write_bytes(what)
                if os.stat(path).st_uid != owner:
                    os.chown(path, owner, -1)
        if sc.nomess:
            self.mess.rename(self.queue / "mess.away")
        d = self.root / "control"
        for name in CONTROL_FILES:
            ControlBackup.remove(d / name)
        (d / "me").write_bytes(b"me.example\n")
        (d / "noesmtp").write_bytes(b"")
        (d / "timeoutremote").write_bytes(b"30\n")
        (d / "smtproutes").write_bytes(b"".join(
            b"%s.test:127.0.0.1:%d\n" % (name.encode(), port) for name, port in ports.items()))

    def files(self):
        out = {}
        for name in ("tcpto", "tcpto6"):
            p = self.lock / name
            out[name] = (p.read_bytes() if p.is_file() else
                         "fifo" if p.exists() else None)
        return out


def refuse(message):
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------
# Running one spawner


@dataclasses.dataclass
class Result:
    out: bytes
    rc: Optional[int]
    wire: dict
    files: dict
    elapsed: float
    notes: list
    err: bytes = b""


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


def pid_connected_to(parent, port):
    """The child of *parent* holding a TCP connection to 127.0.0.1:*port*."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in children(parent):
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
        except FileNotFoundError:
            continue
        if links & inodes:
            return pid
    raise RuntimeError(f"no child of {parent} connected to port {port}")


class Run:
    """One spawner process and the state of the steps."""

    def __init__(self, argv, env, cwd):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.buf = bytearray()
        self.reports_seen = 0
        self.eof = False
        self.err = bytearray()
        self.err_thread = threading.Thread(target=self._drain_err, daemon=True)
        self.err_thread.start()

    def _drain_err(self):
        for chunk in iter(lambda: self.proc.stderr.read(4096), b""):
            self.err += chunk

    def _fill(self, deadline):
        if self.eof or self.proc.stdout.closed:
            return False
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError(f"nothing more on fd 1 after {WAIT}s")
        data = os.read(fd, 1 << 16)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def complete_reports(self):
        n, pos = 0, 1
        while pos < len(self.buf):
            end = self.buf.find(b"\0", pos + 1)
            if end < 0:
                break
            n, pos = n + 1, end + 1
        return n

    def wait_reports(self, n):
        self.reports_seen += n
        deadline = time.monotonic() + WAIT
        while self.complete_reports() < self.reports_seen:
            if not self._fill(deadline):
                raise TimeoutError(f"EOF before {self.reports_seen} reports")

    def write(self, data, bytewise=False):
        fd = self.proc.stdin.fileno()
        if bytewise:
            for i in range(len(data)):
                os.write(fd, data[i:i + 1])
            return
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def finish(self):
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        deadline = time.monotonic() + WAIT
        while self._fill(deadline):
            pass
        rc = self.proc.wait(max(0.1, deadline - time.monotonic()))
        self.err_thread.join(WAIT)
        return rc

    def kill(self):
        """Kill the spawner if it still runs; close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err_thread.join(WAIT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def start_servers(sc):
    servers, events = {}, {}
    for name, spec in sc.servers.items():
        script = list(spec.script)
        if spec.hold:
            events[name] = threading.Event()
            script = [wait_event(events[name])] + script
        servers[name] = ScriptedServer(script).start()
    return servers, events


def run_one(sc: Scenario, variant: str, cfg) -> Result:
    servers, events = start_servers(sc)
    closed = []
    ports = {name: s.port for name, s in servers.items()}
    for name in sc.ports:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))    # bound, never listening: refused
        closed.append(sock)
        ports[name] = sock.getsockname()[1]
    notes = []
    t0 = time.monotonic()
    run = None
    try:
        cfg.home.prepare(sc, ports)
        env = dict(cfg.base_env)
        path_dir = cfg.remote_bin
        if sc.fake is not None:
            path_dir = cfg.fake_bin
            for name, data in sc.fake.items():
                (cfg.fake_dir / f"{name}.out").write_bytes(data)
        if sc.path is not None:
            path_dir = cfg.problem_bins[sc.path]
            env["PATH"] = str(path_dir)
        else:
            env["PATH"] = f"{path_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        if variant == "C":
            argv = [cfg.c_bin]
        else:
            argv = list(cfg.py_cmd)
            if variant == "exec":
                env["QMAILREMOTE_RSPAWN_EXEC"] = "1"
            elif variant == "single":
                env["QMAILREMOTE_RSPAWN_PER_WORKER"] = "1"
        run = Run(argv, env, cwd="/")
        for step in sc.steps:
            kind = step[0]
            if kind == "write":
                run.write(step[1])
            elif kind == "bytewise":
                run.write(step[1], bytewise=True)
            elif kind == "reports":
                run.wait_reports(step[1])
            elif kind == "connected":
                servers[step[1]].wait_connections(step[2], WAIT)
            elif kind == "release":
                events[step[1]].set()
            elif kind == "kill":
                pid = pid_connected_to(run.proc.pid, servers[step[1]].port)
                os.kill(pid, signal.SIGKILL)
            elif kind == "eof":
                run.proc.stdin.close()
            elif kind == "close_stdout":
                deadline = time.monotonic() + WAIT
                while not run.buf and run._fill(deadline):
                    pass        # the first byte, then no reader on fd 1
                run.proc.stdout.close()
            elif kind == "served":
                servers[step[1]].wait_done(WAIT, connections=step[2])
            else:
                raise ValueError(f"unknown step {step!r}")
        rc = run.finish()
    except (TimeoutError, RuntimeError, AssertionError, OSError,
            subprocess.TimeoutExpired) as e:
        notes.append(f"{type(e).__name__}: {e}")
        rc = None
    finally:
        if run is not None:
            run.kill()
        for ev in events.values():
            ev.set()
        for s in servers.values():
            s.stop()
        for sock in closed:
            sock.close()
    wire = {name: sorted(s.received) for name, s in servers.items()}
    for name, s in servers.items():
        notes.extend(f"server {name}: {f}" for f in s.failures)
    out = bytes(run.buf) if run is not None else b""
    err = bytes(run.err) if run is not None else b""
    return Result(out, rc, wire, cfg.home.files(), time.monotonic() - t0, notes, err)


# ---------------------------------------------------------------------------
# Comparison


def normalised(sc, r):
    if not sc.unordered or not r.out:
        return r.out
    reports, pos = [], 1
    while pos < len(r.out):
        end = r.out.find(b"\0", pos + 1)
        if end < 0:
            reports.append(r.out[pos:])
            break
        reports.append(r.out[pos:end + 1])
        pos = end + 1
    return r.out[:1] + b"".join(sorted(reports))


def same(sc, c, p):
    return (normalised(sc, c) == normalised(sc, p) and c.rc == p.rc and c.wire == p.wire
            and c.files == p.files and not p.notes and not c.notes)


def classify(sc, c, ours):
    if all(same(sc, c, p) for p in ours.values()):
        return "MATCH"
    if sc.deviation is not None:
        name, check = sc.deviation
        if all(check(c, p) and c.rc == p.rc and not p.notes and not c.notes
               for p in ours.values()):
            return f"EXPECTED-DEVIATION {name}"
    return "MISMATCH"


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _shown(value, limit):
    return short(value, limit) if isinstance(value, bytes) else value


def describe(sc, c, ours):
    lines = [f"--- {sc.name}"]
    for step in sc.steps:
        lines.append(f"    step {step[0]} "
                     + " ".join(str(_shown(x, 200)) for x in step[1:]))
    if sc.fake:
        lines.append(f"    fake outputs: { {k: short(v, 200) for k, v in sc.fake.items()} }")
    for label, r in (("C", c), *ours.items()):
        lines.append(f"    {label:<4} exit={r.rc} out={short(r.out, 1000)}")
        if r.files != c.files or label == "C":
            files = {k: _shown(v, 80) for k, v in r.files.items()}
            lines.append(f"    {label:<4} files={files}")
        if r.wire != c.wire or label == "C":
            for name, conns in r.wire.items():
                for i, w in enumerate(conns):
                    lines.append(f"    {label:<4} wire {name}[{i}] = {short(w, 300)}")
        if r.err:
            lines.append(f"    {label:<4} stderr: {short(r.err, 400)}")
        for n in r.notes:
            lines.append(f"    {label:<4} note: {n}")
    for label, r in ours.items():
        a, b = normalised(sc, c), normalised(sc, r)
        if a != b:
            k = first_diff(a, b)
            lines.append(f"    fd 1 differs, C vs {label}, at byte {k}: "
                         f"C {a[max(0, k - 30):k + 60]!r} vs {label} "
                         f"{b[max(0, k - 30):k + 60]!r} (lengths {len(a)} / {len(b)})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Set-up


@dataclasses.dataclass
class Config:
    c_bin: str
    home: Home
    py_cmd: list
    base_env: dict
    remote_bin: Path
    fake_bin: Path
    fake_dir: Path
    problem_bins: dict


def setup(tmp: Path, installed: bool) -> Config:
    c_bin = os.environ.get("QMAILREMOTE_DIFF_RSPAWN_C")
    c_home = os.environ.get("QMAILREMOTE_DIFF_RSPAWN_C_HOME")
    if not c_bin or not c_home:
        refuse("set QMAILREMOTE_DIFF_RSPAWN_C (the C qmail-rspawn) and "
               "QMAILREMOTE_DIFF_RSPAWN_C_HOME (its compiled-in home)")
    if not os.access(c_bin, os.X_OK):
        refuse(f"{c_bin} is not executable")
    qmailq = os.environ.get("QMAILREMOTE_DIFF_RSPAWN_QMAILQ", "qmailq")
    try:
        uid = pwd.getpwnam(qmailq).pw_uid
    except KeyError:
        refuse(f"no user {qmailq!r} (QMAILREMOTE_DIFF_RSPAWN_QMAILQ: the user "
               "whose uid the C binary has as auto_uidq)")
    if uid != os.geteuid() and os.geteuid() != 0:
        refuse(f"message files must belong to {qmailq} (uid {uid}): run as root or as that user")
    home = Home(Path(c_home).resolve(), uid)

    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith("QMAILREMOTE_") and k != "QMAILHOME"}
    base_env["QMAILHOME"] = str(home.root)       # for qmail-remote and ours
    base_env["QMAILREMOTE_QMAILQ"] = qmailq
    base_env["FAKE_QR_DIR"] = str(tmp / "fake-data")
    pp = os.environ.get("PYTHONPATH")
    if installed:
        script = Path(sys.executable).parent / "qmail-rspawn"
        if not os.access(script, os.X_OK):
            refuse(f"--installed: no {script}")
        py_cmd = [str(script)]
    else:
        py_cmd = [sys.executable, "-m", "qmailremote.rspawn"]
        base_env["PYTHONPATH"] = str(REPO) + (os.pathsep + pp if pp else "")

    remote_bin = tmp / "remote-bin"
    remote_bin.mkdir()
    chosen = os.environ.get("QMAILREMOTE_DIFF_QMAIL_REMOTE") or str(
        Path(sys.executable).parent / "qmail-remote")
    if os.access(chosen, os.X_OK):
        (remote_bin / "qmail-remote").symlink_to(chosen)
    else:
        (remote_bin / "qmail-remote").write_text(
            f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m qmailremote \"$@\"\n")
        (remote_bin / "qmail-remote").chmod(0o755)

    fake_bin = tmp / "fake-bin"
    fake_bin.mkdir()
    (tmp / "fake-data").mkdir()
    (fake_bin / "qmail-remote").write_text(FAKE_REMOTE)
    (fake_bin / "qmail-remote").chmod(0o755)

    problems = {}
    for problem in ("missing", "noexec", "noshebang"):
        d = tmp / f"path-{problem}"
        d.mkdir()
        problems[problem] = d
    (problems["noexec"] / "qmail-remote").write_text("#!/bin/sh\nprintf 'Kran\\0'\n")
    (problems["noexec"] / "qmail-remote").chmod(0o644)
    (problems["noshebang"] / "qmail-remote").write_text("printf 'Kran\\0'\n")
    (problems["noshebang"] / "qmail-remote").chmod(0o755)
    return Config(os.path.abspath(c_bin), home, py_cmd, base_env, remote_bin,
                  fake_bin, tmp / "fake-data", problems)


def sanity(cfg):
    """The C binary starts in this home and trusts these message files."""
    c = run_one(Scenario("sanity", [("write", cmd(0, "1/100", "args@fake.test")), ("reports", 1)],
                         fake={}), "C", cfg)
    if c.rc == 111 and not c.out:
        refuse(f"{cfg.c_bin} exits 111 at once: its compiled-in home is not "
               f"{cfg.home.root} (conf-qmail), or that has no queue/mess")
    if b"wrong owner" in c.out:
        refuse(f"{cfg.c_bin} says 'wrong owner': its auto_uidq is not the uid of "
               "QMAILREMOTE_DIFF_RSPAWN_QMAILQ")
    if not c.out.startswith(b"x\0K"):
        refuse(f"{cfg.c_bin} does not run the fake qmail-remote: {c.out!r} {c.notes}")


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    installed = "--installed" in args
    if installed:
        args.remove("--installed")
    chosen = choose_scenarios(__doc__, build_scenarios(), args)
    if chosen is None:
        return 0
    opts, scenarios = chosen
    results = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qmr-diff-rspawn-") as tmpname:
        cfg = setup(Path(tmpname), installed)
        cfg.home.claim()
        try:
            with sigterm_interrupts():
                sanity(cfg)
                width = max(len(s.name) for s in scenarios)
                for sc in scenarios:
                    if sc.root and os.geteuid() != 0:
                        results.append((sc, "SKIP", None, {}))
                        print(f"{sc.name:<{width}}  SKIP (needs root)", flush=True)
                        continue
                    c = run_one(sc, "C", cfg)
                    ours = {v: run_one(sc, v, cfg) for v in sc.variants}
                    verdict = classify(sc, c, ours)
                    results.append((sc, verdict, c, ours))
                    times = "  ".join(f"{k} {r.elapsed:5.2f}s"
                                      for k, r in (("C", c), *ours.items()))
                    print(f"{sc.name:<{width}}  {verdict:<26}  {times}", flush=True)
                    if opts.verbose:
                        print(describe(sc, c, ours), flush=True)
        except KeyboardInterrupt:
            print(f"\n{PROG}: interrupted", file=sys.stderr)
            return 130
        finally:
            cfg.home.release()
    return summarise(results, describe, opts.verbose, t_start)


if __name__ == "__main__":
    sys.exit(main())
