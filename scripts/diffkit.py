"""What the two differential scripts share: options, the scratch C home,
control-file backup, SIGTERM handling and the summary.

``differential.py`` (SMTP side) and ``differential_dns.py`` (DNS side, in a
network namespace) run scenarios through a C qmail-remote and through
qmailremote; everything about the setup and the report is the same.
"""

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

__all__ = ["choose_scenarios", "scratch_home", "ControlBackup", "sigterm_interrupts",
           "summarise", "short"]


def choose_scenarios(doc, scenarios, argv):
    """Parse -k/-v/--list; return (options, chosen scenarios), or None
    after printing the list for --list."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("-k", action="append", default=[], metavar="SUBSTRING",
                    help="only scenarios whose name contains SUBSTRING "
                         "(repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print details for every scenario, not only "
                         "mismatches")
    ap.add_argument("--list", action="store_true",
                    help="list the scenarios and exit")
    opts = ap.parse_args(argv)
    if opts.k:
        scenarios = [s for s in scenarios if any(k in s.name for k in opts.k)]
    if opts.list:
        for s in scenarios:
            print(s.name)
        return None
    return opts, scenarios


def scratch_home(prog):
    """The C binary and its compiled-in home, from the environment.

    Exits with status 2 unless both are given, the binary is executable,
    and the home has a control/ directory and no queue/ (a live qmail).
    """
    c_bin = os.environ.get("QMAILREMOTE_DIFF_C")
    c_home = os.environ.get("QMAILREMOTE_DIFF_C_HOME")
    if not c_bin or not c_home:
        _refuse(prog, "set QMAILREMOTE_DIFF_C (the C qmail-remote) and "
                      "QMAILREMOTE_DIFF_C_HOME (its compiled-in home)")
    if not os.access(c_bin, os.X_OK):
        _refuse(prog, f"{c_bin} is not executable")
    home = Path(c_home)
    if (home / "queue").exists():
        _refuse(prog, f"{home} contains queue/; refusing to touch what may "
                      "be a live qmail. Use a scratch home.")
    if not (home / "control").is_dir():
        _refuse(prog, f"{home}/control is not a directory")
    return os.path.abspath(c_bin), home


def _refuse(prog, message):
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(2)


class ControlBackup:
    """Saves the named control files of a home and puts them back."""

    def __init__(self, home, names, prog):
        self.dir = Path(home) / "control"
        self.names = names
        self.prog = prog
        self.saved = {}

    def backup(self):
        for name in self.names:
            p = self.dir / name
            if p.is_symlink() or (p.exists() and not p.is_file()):
                _refuse(self.prog, f"{p} is not a regular file; refusing to "
                                   "touch it")
            self.saved[name] = p.read_bytes() if p.exists() else None

    @staticmethod
    def remove(p):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    def restore(self):
        for name, data in self.saved.items():
            p = self.dir / name
            self.remove(p)
            if data is not None:
                p.write_bytes(data)


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt, so cleanup runs as for Ctrl-C."""
    def on_signal(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def summarise(results, describe, verbose, started):
    """Print mismatch details and the counts; return the exit status."""
    counts = {}
    for _, verdict, _, _ in results:
        counts[verdict] = counts.get(verdict, 0) + 1
    bad = [(sc, c, p) for sc, v, c, p in results if v == "MISMATCH"]
    if bad and not verbose:
        print("\n=== MISMATCH details ===")
        for sc, c, p in bad:
            print(describe(sc, c, p))
    print(f"\n{len(results)} scenarios in {time.monotonic() - started:.1f}s: "
          + ", ".join(f"{k} {counts[k]}" for k in sorted(counts)))
    return 1 if bad or "HARNESS-ERROR" in counts else 0


def short(b, limit=600):
    if len(b) <= limit:
        return repr(b)
    return f"{b[:limit // 2]!r} ... {b[-limit // 2:]!r}  ({len(b)} bytes)"
