#!/usr/bin/env python3
"""Differential DNS run: C netqmail 1.06 qmail-remote against qmailremote.

Every scenario runs twice -- once per program -- each time in fresh private
network + mount namespaces (tests/netns.py): a fake DNS server on
127.0.0.1:53 with the scenario's zone and per-name behaviours, SMTP sinks on
127.0.0.X:25, and a private /etc/resolv.conf (``options timeout:1
attempts:1``).  Compared:

  (a) the bytes written to stdout (the ``\\0``-terminated reports),
  (b) the bytes every SMTP sink received, per connection,
  (c) the exit status (and that neither run timed out),
  (d) for tcpto scenarios, the tcpto file afterwards (time fields may
      differ by a few seconds).

The DNS query logs are not part of the verdict (deviation 6 changes them on
purpose: CNAME instead of ANY, TCP retries), but a normalised comparison is
shown as a note (``dns~``) and both logs are printed for every MISMATCH.

Verdicts:

* MATCH -- (a)-(d) identical;
* EXPECTED-DEVIATION 5 -- identical once the addresses of a group of equal
  MX preferences are treated as interchangeable (random order, section 16.5);
* EXPECTED-DEVIATION 6 / 7 -- the scenario is built to show deviation 6
  (CNAME query instead of ANY, no 512-byte cut) or 7 (unlabelled addresses
  in ipme), and each side produced exactly what the spec predicts for it;
* MISMATCH -- anything else; both stdouts, sink captures, stderr and DNS
  query logs are printed.

Usage (root only: unshare --net --mount)::

    QMAILREMOTE_DIFF_C=/tmp/netqmail-src/qmail-remote \\
    QMAILREMOTE_DIFF_C_HOME=/tmp/cqmail-home \\
    python scripts/differential_dns.py [-k SUBSTRING] [-v] [--list]

``QMAILREMOTE_DIFF_PY`` names the qmailremote command (default: the
``qmail-remote`` console script next to this Python, else on PATH, else
``python -m qmailremote`` from this checkout).  The C program reads its
compiled-in home, so that home serves both programs (qmailremote gets it as
``QMAILHOME``).  A home that contains ``queue/`` is refused.  The control
files touched (me, helohost, smtproutes, timeoutconnect, timeoutremote) are
backed up and restored at the end, also on Ctrl-C / SIGTERM.  The tcpto
scenarios create ``queue/lock/tcpto`` under that home for the duration of
each run and remove ``queue/`` again straight afterwards.

Exit status: 0 if there was no MISMATCH, 1 otherwise, 2 for a setup error.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from diffkit import (ControlBackup, choose_scenarios, scratch_home, short,
                     sigterm_interrupts, summarise)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

# noesmtp: both programs speak netqmail 1.06's dialogue (qmailremote's
# default is ESMTP; the C binary ignores the file).
CONTROL_FILES = ("me", "helohost", "smtproutes", "timeoutconnect", "timeoutremote",
                 "noesmtp")
DEFAULT_CONTROL = {"me": b"me.example\n", "helohost": None, "smtproutes": None,
                   "timeoutconnect": b"5\n", "timeoutremote": b"10\n",
                   "noesmtp": b""}
ME = b"me.example"
SENDER = "a@b.example"
MESSAGE = b"Subject: t\n\n.hi\nbody\n"
BODY_WIRE = b"Subject: t\r\n\r\n..hi\r\nbody\r\n.\r\n"
RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
#: SMTP sinks present in every scenario (port 25).  127.0.0.2x have none,
#: so connections there are refused at once.
DEFAULT_SINKS = [f"127.0.0.{i}" for i in range(1, 10)]
RUN_TIMEOUT = 25

AMBIGMX = (b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
           b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n\0")
NOCONN = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0"
TEMP_DNS = b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0"
TEMP_CNAME = b"ZCNAME lookup failed temporarily. (#4.4.3)\n\0"
PERM_NOMX = b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n\0"


def perm_dns(host: bytes) -> bytes:
    return b"DSorry, I couldn't find any host named " + host + b". (#5.1.2)\n\0"


def accepted(ip: str, nrcpt: int = 1) -> bytes:
    return (b"r\0" * nrcpt + b"K" + ip.encode() + b" accepted message.\n"
            b"Remote host said: 250 ok " + ip.encode() + b"\n\0")


def session(recipients, sender=SENDER) -> bytes:
    return (b"HELO " + ME + b"\r\n" + b"MAIL FROM:<" + sender.encode() + b">\r\n"
            + b"".join(b"RCPT TO:<" + r.encode() + b">\r\n" for r in recipients)
            + b"DATA\r\n" + BODY_WIRE + b"QUIT\r\n")


def tcpto_record(ip: str, count: int, when: int) -> bytes:
    return (bytes(int(x) for x in ip.split(".")) + struct.pack("<b", count) + b"\0\0\0"
            + struct.pack("<I", when & 0xFFFFFFFF) + b"\0\0\0\0")


# ---------------------------------------------------------------------------
# Scenarios


@dataclasses.dataclass
class Scenario:
    name: str
    host: str
    rcpts: list
    zone: dict = dataclasses.field(default_factory=dict)
    behave: list = dataclasses.field(default_factory=list)
    sinks: list = dataclasses.field(default_factory=list)  # extra/overriding sinks
    control: dict = dataclasses.field(default_factory=dict)
    dns: bool = True
    resolv_conf: str = RESOLV_CONF
    chase_cname: bool = False
    ip: list = dataclasses.field(default_factory=list)
    files: dict = dataclasses.field(default_factory=dict)
    tcpto: Optional[Callable[[], bytes]] = None  # builds the file (called once per scenario)
    eq_group: Optional[list] = None  # addresses of equal MX preference (deviation 5)
    dev: Optional[int] = None  # deviation 6 or 7
    c_out: Optional[bytes] = None  # spec-predicted outputs under `dev`
    c_sinks: Optional[dict] = None
    py_out: Optional[bytes] = None
    py_sinks: Optional[dict] = None
    sender: str = SENDER
    why: str = ""


def mx(host: str, *entries) -> dict:
    """Zone: *host* MX entries (pref, name, A address/list/None)."""
    z = {host: {"MX": [f"{p} {n}" + ("" if n.endswith(".") else ".") for p, n, _ in entries]}}
    for _, n, a in entries:
        if a is not None:
            z.setdefault(n.rstrip("."), {}).setdefault("A", []).extend(
                [a] if isinstance(a, str) else a)
    return z


BASE_ZONE: dict = {
    "rcpt.example": {"A": "127.0.0.2"},
    "aonly.example": {"A": "127.0.0.2"},
    "aonly3.example": {"A": "127.0.0.3"},
    "cname.example": {"CNAME": "aonly.example."},
    "cnx.example": {"CNAME": "nx.example."},
    "c1.example": {"CNAME": "C2.Example."},
    "C2.Example": {"CNAME": "c3.example."},
    "c3.example": {"CNAME": "final.example."},
    "final.example": {"A": "127.0.0.2"},
    "la.example": {"CNAME": "lb.example."},
    "lb.example": {"CNAME": "la.example."},
    "txtonly.example": {"TXT": '"hello"'},
    "relay.example": {"A": "127.0.0.3", "MX": "10 mx4.example."},
    "mx4.example": {"A": "127.0.0.4"},
    "me.example": {"A": "127.0.0.1"},
}
for _i in range(12):
    BASE_ZONE[f"h{_i}.example"] = {"CNAME": f"h{_i + 1}.example."}
BASE_ZONE["h12.example"] = {"A": "127.0.0.2"}
BASE_ZONE.update(mx("mx3.example", (30, "c.mx3.example", "127.0.0.4"),
                    (10, "a.mx3.example", "127.0.0.2"), (20, "b.mx3.example", "127.0.0.3")))

LIT = "c@[1.2.3.4]"  # a recipient that needs no CNAME lookup


def build_scenarios() -> list:
    S = []

    def add(name, host, rcpts=("c@rcpt.example",), **kw):
        S.append(Scenario(name, host, list(rcpts), **kw))

    # --- MX preferences, A fallback --------------------------------------
    add("mx-3prefs-answer-order", "mx3.example", why="MX listed 30,10,20 -> .2")
    add("mx-3prefs-first-refused", "mx3x.example",
        zone=mx("mx3x.example", (30, "c.x.example", "127.0.0.4"),
                (10, "a.x.example", "127.0.0.20"), (20, "b.x.example", "127.0.0.3")))
    add("mx-3prefs-two-refused", "mx3y.example",
        zone=mx("mx3y.example", (30, "c.y.example", "127.0.0.4"),
                (10, "a.y.example", "127.0.0.20"), (20, "b.y.example", "127.0.0.21")))
    add("mx-all-refused", "mxr.example",
        zone=mx("mxr.example", (10, "a.r.example", "127.0.0.20"),
                (20, "b.r.example", "127.0.0.21")))
    add("mx-first-greeting-421", "mx3.example",
        sinks=[{"addr": "127.0.0.2", "greeting": "421 busy"}],
        why="no other MX after a TCP connection")
    add("mx-host-several-a", "mxa.example",
        zone=mx("mxa.example", (10, "a.a.example", ["127.0.0.20", "127.0.0.21", "127.0.0.3"]),
                (20, "b.a.example", "127.0.0.4")))
    add("mx-65535-and-0", "mxp.example",
        zone=mx("mxp.example", (65535, "a.p.example", "127.0.0.2"),
                (0, "b.p.example", "127.0.0.3")))
    add("a-fallback-nodata", "aonly3.example", why="MX NODATA -> A")
    add("a-fallback-multi", "amulti.example",
        zone={"amulti.example": {"A": ["127.0.0.20", "127.0.0.4"]}})
    add("nodata-mx-and-a", "txtonly.example")
    add("nxdomain-host", "nx.example")
    # --- rcodes -----------------------------------------------------------
    for rc in ("SERVFAIL", "REFUSED", "NOTIMP"):
        add(f"mx-{rc.lower()}", "mx3.example",
            behave=[{"name": "mx3.example", "mode": "rcode", "rcode": rc, "rdtype": "MX"}])
    add("mx-formerr-then-a", "mxf.example",
        zone={"mxf.example": {"A": "127.0.0.3", "MX": "10 a.mx3.example."}},
        behave=[{"name": "mxf.example", "mode": "rcode", "rcode": "FORMERR", "rdtype": "MX"}],
        why="FORMERR is HARD -> A lookup")
    add("host-yxdomain", "mx3.example",
        behave=[{"name": "mx3.example", "mode": "rcode", "rcode": "YXDOMAIN"}])
    add("mx-nxdomain-rcode-with-answer", "mxn.example",
        behave=[{"name": "mxn.example", "mode": "answer", "rdtype": "MX", "rcode": "NXDOMAIN",
                 "answer": ["mxn.example 60 IN MX 10 a.mx3.example."]}],
        zone={"mxn.example": {"A": "127.0.0.3"}})
    # --- per-MX-host A failures (soft marking) ----------------------------
    add("a-servfail-mxhost-other-ok", "mxs.example",
        zone=mx("mxs.example", (10, "bad.s.example", "127.0.0.2"),
                (20, "good.s.example", "127.0.0.3")),
        behave=[{"name": "bad.s.example", "mode": "rcode", "rcode": "SERVFAIL"}])
    add("a-servfail-only-mxhost", "mxs1.example",
        zone=mx("mxs1.example", (10, "bad.s1.example", "127.0.0.2")),
        behave=[{"name": "bad.s1.example", "mode": "rcode", "rcode": "SERVFAIL"}])
    add("a-servfail-second-first-refused", "mxs2.example",
        zone=mx("mxs2.example", (10, "good.s2.example", "127.0.0.20"),
                (20, "bad.s2.example", "127.0.0.3")),
        behave=[{"name": "bad.s2.example", "mode": "rcode", "rcode": "SERVFAIL"}])
    add("a-refused-mxhost-other-ok", "mxs3.example",
        zone=mx("mxs3.example", (10, "bad.s3.example", "127.0.0.2"),
                (20, "good.s3.example", "127.0.0.3")),
        behave=[{"name": "bad.s3.example", "mode": "rcode", "rcode": "REFUSED"}])
    add("mxhosts-all-nxdomain", "mxnx.example",
        zone=mx("mxnx.example", (10, "n1.example", None), (20, "n2.example", None)))
    add("mxhost-without-address", "mxtxt.example",
        zone=mx("mxtxt.example", (10, "txtonly.example", None)))
    add("mxhost-is-cname-nochase", "mxc.example",
        zone={**mx("mxc.example", (10, "alias.c.example", None)),
              "alias.c.example": {"CNAME": "aonly3.example."}})
    add("mxhost-is-cname-chase", "mxc.example", chase_cname=True,
        zone={**mx("mxc.example", (10, "alias.c.example", None)),
              "alias.c.example": {"CNAME": "aonly3.example."}})
    add("host-is-cname-nochase", "hostc.example",
        zone={"hostc.example": {"CNAME": "aonly3.example."}}, rcpts=[LIT])
    add("host-is-cname-chase", "hostc.example", chase_cname=True,
        zone={"hostc.example": {"CNAME": "aonly3.example."}}, rcpts=[LIT])
    add("mx-answer-only-cname-to-mx", "hostc2.example", chase_cname=True,
        zone={"hostc2.example": {"CNAME": "mx3.example."}}, rcpts=[LIT],
        why="chased CNAME + MX records of the target; MX taken whatever the owner")
    # --- CNAME lookup failures --------------------------------------------
    for mode, extra in (("servfail", {"mode": "rcode", "rcode": "SERVFAIL"}),
                        ("refused", {"mode": "rcode", "rcode": "REFUSED"}),
                        ("timeout", {"mode": "drop"}),
                        ("formerr", {"mode": "rcode", "rcode": "FORMERR"})):
        add(f"cname-{mode}", "[127.0.0.2]", rcpts=["c@sf.example"],
            zone={"sf.example": {"A": "127.0.0.2"}},
            behave=[{"name": "sf.example", **extra}])
    add("cname-second-rcpt-servfail", "mx3.example",
        rcpts=["c@cname.example", "d@sf.example"],
        behave=[{"name": "sf.example", "mode": "rcode", "rcode": "SERVFAIL"}])
    add("cname-servfail-midchain", "[127.0.0.2]", rcpts=["c@c1.example"],
        behave=[{"name": "c3.example", "mode": "rcode", "rcode": "SERVFAIL"}])
    # --- timeouts, no server ------------------------------------------------
    add("mx-timeout", "mx3.example", rcpts=[LIT],
        behave=[{"name": "mx3.example", "mode": "drop", "rdtype": "MX"}])
    add("a-timeout-mxhost-other-ok", "mxt.example", rcpts=[LIT],
        zone=mx("mxt.example", (10, "slow.t.example", "127.0.0.2"),
                (20, "fast.t.example", "127.0.0.3")),
        behave=[{"name": "slow.t.example", "mode": "drop"}])
    add("a-timeout-host", "aonly3.example", rcpts=[LIT],
        behave=[{"name": "aonly3.example", "mode": "drop", "rdtype": "A"}])
    add("no-dns-server-mx", "mx3.example", rcpts=[LIT], dns=False)
    add("no-dns-server-cname", "mx3.example", dns=False)
    add("no-dns-server-literal-host", "[127.0.0.2]", rcpts=[LIT], dns=False)
    # --- ipme / "listed as MX" ------------------------------------------------
    add("ipme-mx-127.0.0.1", "mxme.example", rcpts=[LIT],
        zone=mx("mxme.example", (10, "me.example", None)))
    add("ipme-10-other-20-me-30-other", "mxm.example", rcpts=[LIT],
        zone=mx("mxm.example", (10, "o1.m.example", "127.0.0.20"),
                (20, "me.example", None), (30, "o3.m.example", "127.0.0.4")),
        why="only the preference-10 host is tried (refused) -> #4.4.1")
    add("ipme-10-me-20-other", "mxm2.example", rcpts=[LIT],
        zone=mx("mxm2.example", (10, "me.example", None), (20, "o.m2.example", "127.0.0.3")))
    add("ipme-0.0.0.0", "mxz.example", rcpts=[LIT],
        zone=mx("mxz.example", (10, "zero.example", "0.0.0.0"),
                (20, "o.z.example", "127.0.0.3")))
    add("ipme-labelled-extra-address", "mx9.example", rcpts=[LIT],
        zone=mx("mx9.example", (10, "nine.example", "127.0.0.9")),
        ip=[["addr", "add", "127.0.0.9/8", "dev", "lo", "label", "lo:1"]])
    add("ipme-unlabelled-extra-address", "mx9.example", rcpts=[LIT],
        zone=mx("mx9.example", (10, "nine.example", "127.0.0.9")),
        ip=[["addr", "add", "127.0.0.9/8", "dev", "lo"]],
        dev=7, c_out=accepted("127.0.0.9"), c_sinks={"127.0.0.9:25": [session([LIT])]},
        py_out=AMBIGMX, py_sinks={})
    # --- literal MX names, null MX -------------------------------------------
    add("literal-mx-names", "mxl.example", rcpts=[LIT],
        zone=mx("mxl.example", (10, "a.l.example", "127.0.0.20"), (30, "[127.0.0.5]", None),
                (50, "127.0.0.6", None)))
    add("literal-mx-names-first-refused", "mxl2.example", rcpts=[LIT],
        zone=mx("mxl2.example", (10, "a.l2.example", "127.0.0.20"),
                (30, "[127.0.0.25]", None), (50, "127.0.0.6", None)))
    add("literal-mx-127.0.0.1-pref0", "mxl3.example", rcpts=[LIT],
        zone=mx("mxl3.example", (10, "o.l3.example", "127.0.0.2"), (50, "127.0.0.1", None)))
    add("null-mx", "nullmx.example", rcpts=[LIT], zone={"nullmx.example": {"MX": "0 ."}})
    add("null-mx-root-has-a", "nullmx.example", rcpts=[LIT],
        zone={"nullmx.example": {"MX": "0 ."}, ".": {"A": "127.0.0.3"}})
    # --- CNAME canonicalisation of recipients -----------------------------------
    add("cname-one-hop", "[127.0.0.2]", rcpts=["c@cname.example"])
    add("cname-chain-case", "[127.0.0.2]", rcpts=["c@c1.example"])
    add("cname-to-nxdomain", "[127.0.0.2]", rcpts=["c@cnx.example"])
    add("cname-loop", "[127.0.0.2]", rcpts=["c@la.example"])
    add("cname-long-chains", "[127.0.0.2]", rcpts=["c@h0.example", "d@h3.example"])
    add("rcpt-trailing-dots", "[127.0.0.2]",
        rcpts=["c@aonly.example.", "d@aonly.example..", "e@cname.example."])
    add("rcpt-odd-forms", "[127.0.0.2]",
        rcpts=["c@[1.2.3.4]", "c@", "c@[1.2.3.4]x", "c@a..b", "noat", "x@y@cname.example"])
    add("rcpt-uppercase-domain", "[127.0.0.2]", rcpts=["C@CNAME.EXAMPLE", "d@AONLY.example"])
    add("cname-foreign-owner-first", "[127.0.0.2]", rcpts=["c@fo.example"],
        behave=[{"name": "fo.example", "mode": "answer",
                 "answer": ['fo.example 60 IN TXT "x"',
                            "other.example 60 IN CNAME Target.Example.",
                            "fo.example 60 IN CNAME second.example."]}],
        zone={"Target.Example": {"A": "127.0.0.2"}, "fo.example": {"A": "127.0.0.2"}})
    add("cname-junk-only", "[127.0.0.2]", rcpts=["c@junk.example"],
        behave=[{"name": "junk.example", "mode": "answer",
                 "answer": ['junk.example 60 IN TXT "x"', 'junk.example 60 IN HINFO "a" "b"']}])
    add("alias-rule-cname", "127.0.0.1", rcpts=["c@cname.example"])
    add("alias-rule-nxdomain", "127.0.0.1", rcpts=["c@nx.example"])
    add("alias-rule-mixed", "127.0.0.1", rcpts=["c@cname.example", "d@aonly.example"])
    add("alias-rule-no-at", "127.0.0.1", rcpts=["cnameexample"])
    add("alias-rule-trailing-dot", "127.0.0.1", rcpts=["c@nx.example."])
    add("alias-rule-via-mx", "mxme.example", rcpts=["c@cname.example"],
        zone=mx("mxme.example", (10, "me.example", None)))
    add("cname-rfc8482-hinfo", "[127.0.0.2]", rcpts=["c@rfc.example"],
        zone={"rfc.example": {"CNAME": "aonly.example."}},
        behave=[{"name": "rfc.example", "mode": "answer", "rdtype": "ANY",
                 "answer": ['rfc.example 60 IN HINFO "RFC8482" ""']}],
        dev=6, c_out=accepted("127.0.0.2"), c_sinks={"127.0.0.2:25": [session(["c@rfc.example"])]},
        py_out=accepted("127.0.0.2"),
        py_sinks={"127.0.0.2:25": [session(["c@aonly.example"])]})
    # --- answers with junk / foreign owners ----------------------------------
    add("mx-foreign-owner", "fo.mx.example", rcpts=[LIT],
        behave=[{"name": "fo.mx.example", "mode": "answer", "rdtype": "MX",
                 "answer": ["other.example 60 IN MX 20 b.mx3.example.",
                            "third.example 60 IN MX 10 a.mx3.example."]}])
    add("mx-junk-mixed", "junkmx.example", rcpts=[LIT],
        behave=[{"name": "junkmx.example", "mode": "answer", "rdtype": "MX",
                 "answer": ['junkmx.example 60 IN TXT "x"',
                            "junkmx.example 60 IN CNAME elsewhere.example.",
                            "junkmx.example 60 IN MX 20 b.mx3.example.",
                            'junkmx.example 60 IN HINFO "a" "b"',
                            "junkmx.example 60 IN A 127.0.0.7",
                            "junkmx.example 60 IN MX 10 a.mx3.example."]}])
    add("mx-junk-no-mx", "junkmx2.example", rcpts=[LIT],
        zone={"junkmx2.example": {"A": "127.0.0.4"}},
        behave=[{"name": "junkmx2.example", "mode": "answer", "rdtype": "MX",
                 "answer": ['junkmx2.example 60 IN TXT "x"',
                            "junkmx2.example 60 IN A 127.0.0.7"]}],
        why="no MX records at all -> A lookup")
    add("a-junk-mixed-foreign", "mxj.example", rcpts=[LIT],
        zone=mx("mxj.example", (10, "j.j.example", None)),
        behave=[{"name": "j.j.example", "mode": "answer", "rdtype": "A",
                 "answer": ['j.j.example 60 IN TXT "x"',
                            "foreign.example 60 IN A 127.0.0.20",
                            'j.j.example 60 IN HINFO "a" "b"',
                            "j.j.example 60 IN A 127.0.0.5"]}])
    # --- malformed answers --------------------------------------------------
    add("mx-bad-rdlength-mx", "mx3.example", rcpts=[LIT],
        behave=[{"name": "mx3.example", "mode": "raw", "fn": "bad_rdlength_mx", "rdtype": "MX"}])
    add("mx-bad-compression", "mx3.example", rcpts=[LIT],
        behave=[{"name": "mx3.example", "mode": "raw", "fn": "bad_compression", "rdtype": "MX"}])
    add("mx-ancount-too-large", "mx3.example", rcpts=[LIT],
        behave=[{"name": "mx3.example", "mode": "raw", "fn": "ancount_too_large",
                 "rdtype": "MX"}])
    add("host-a-bad-rdlength-a", "aonly3.example", rcpts=[LIT],
        behave=[{"name": "aonly3.example", "mode": "raw", "fn": "bad_rdlength_a",
                 "rdtype": "A"}])
    add("host-a-cut-short", "aonly3.example", rcpts=[LIT],
        behave=[{"name": "aonly3.example", "mode": "raw", "fn": "cut_short", "rdtype": "A"}])
    add("mxhost-a-cut-short-other-ok", "mxk.example", rcpts=[LIT],
        zone=mx("mxk.example", (10, "k1.k.example", "127.0.0.2"),
                (20, "k2.k.example", "127.0.0.3")),
        behave=[{"name": "k1.k.example", "mode": "raw", "fn": "cut_short"}])
    add("mxhost-ancount-keeps-127.0.0.1-first", "mxq.example", rcpts=[LIT],
        zone=mx("mxq.example", (10, "q1.q.example", None), (20, "q2.q.example", "127.0.0.3")),
        behave=[{"name": "q1.q.example", "mode": "raw", "fn": "ancount_too_large"}],
        why="the A 127.0.0.1 read before the SOFT is kept -> ipme at pref 10 -> #5.4.6")
    add("mxhost-ancount-keeps-127.0.0.1-second", "mxq2.example", rcpts=[LIT],
        zone=mx("mxq2.example", (10, "q1.q2.example", "127.0.0.3"),
                (20, "q2.q2.example", None)),
        behave=[{"name": "q2.q2.example", "mode": "raw", "fn": "ancount_too_large"}])
    add("cname-bad-compression", "[127.0.0.2]", rcpts=["c@bc.example"],
        behave=[{"name": "bc.example", "mode": "raw", "fn": "bad_compression"}])
    add("cname-ancount-too-large", "[127.0.0.2]", rcpts=["c@bc.example"],
        behave=[{"name": "bc.example", "mode": "raw", "fn": "ancount_too_large"}])
    add("cname-answer-bad-rdlength-a", "[127.0.0.2]", rcpts=["c@bc.example"],
        behave=[{"name": "bc.example", "mode": "raw", "fn": "bad_rdlength_a"}],
        why="C skips a non-CNAME record by rdlength without parsing it")
    add("cname-answer-cut-short", "[127.0.0.2]", rcpts=["c@bc.example"],
        behave=[{"name": "bc.example", "mode": "raw", "fn": "cut_short"}])
    # --- smtproutes ------------------------------------------------------------
    add("route-relay-name-a-only", "relay.test", rcpts=["c@cname.example"],
        control={"smtproutes": b"relay.test:relay.example\n"},
        why="A only for the relay (its MX .4 ignored); no CNAME lookups")
    add("route-relay-nxdomain", "relay.test", control={"smtproutes": b"relay.test:relayx.example\n"})
    add("route-relay-servfail", "relay.test", control={"smtproutes": b"relay.test:relay.example\n"},
        behave=[{"name": "relay.example", "mode": "rcode", "rcode": "SERVFAIL"}])
    add("route-relay-nodata", "relay.test", control={"smtproutes": b"relay.test:txtonly.example\n"})
    add("route-empty-relay-with-port", "x.test", control={"smtproutes": b"x.test::2525\n"})
    add("route-relay-port", "relay.test", sinks=[{"addr": "127.0.0.3", "port": 2525}],
        control={"smtproutes": b"relay.test:relay.example:2525\n"})
    add("route-relay-127.0.0.1", "relay.test", control={"smtproutes": b"relay.test:127.0.0.1\n"})
    add("route-relay-mx-is-me-name", "relay.test",
        control={"smtproutes": b"relay.test:me.example\n"},
        why="relay resolving to 127.0.0.1 is still used (prefme 300000)")
    add("route-empty-value", "mx3.example", rcpts=["c@cname.example"],
        control={"smtproutes": b"mx3.example:\n:127.0.0.4\n"})
    add("route-default-relay-cname", ".any.example", rcpts=["c@cname.example"],
        control={"smtproutes": b":relay.example\n"})
    # --- odd host names -------------------------------------------------------------
    add("host-localhost", "localhost", rcpts=[LIT],
        files={"/etc/hosts": "127.0.0.1 localhost\n127.0.0.3 aonlyhosts.example\n"})
    add("host-trailing-dot", "mx3.example.", rcpts=[LIT])
    add("host-trailing-dot-nx", "nx.example.", rcpts=[LIT])
    add("host-uppercase", "MX3.Example", rcpts=[LIT])
    add("host-escaped-dot", "esc\\.dot.example", rcpts=[LIT],
        zone={"esc\\.dot.example": {"A": "127.0.0.3"}})
    add("host-decimal-escape", "\\065only3.example", rcpts=[LIT])
    add("host-odd-bytes", os.fsdecode(b"n x\x7f\xc3\xa9.example"), rcpts=[LIT])
    add("host-label-64", "a" * 64 + ".example", rcpts=[LIT])
    add("host-empty-label", "a..example", rcpts=[LIT])
    add("host-empty", "", rcpts=[LIT])
    add("host-only-dot", ".", rcpts=[LIT])
    add("host-not-quite-literal", "[127.0.0.2", rcpts=[LIT])
    add("mx-name-uppercase-trailing", "mxu.example", rcpts=[LIT],
        zone={"mxu.example": {"MX": "10 A.MX3.EXAMPLE."}})
    # --- TC / size -----------------------------------------------------------------
    add("mx-truncated-small", "mx3.example", rcpts=[LIT],
        behave=[{"name": "mx3.example", "mode": "truncate", "rdtype": "MX"}],
        why="TC over UDP; both retry over TCP; answer < 512")
    big_mx = [(10 + i, f"{'x' * 40}{i}.big.example", "127.0.0.20") for i in range(12)]
    big_mx[0] = (5, big_mx[0][1], "127.0.0.3")
    add("mx-answer-over-512", "big.example", rcpts=[LIT], zone=mx("big.example", *big_mx),
        dev=6, c_out=TEMP_DNS, c_sinks={},
        py_out=accepted("127.0.0.3"), py_sinks={"127.0.0.3:25": [session([LIT])]})
    many = [f"127.0.1.{i}" for i in range(1, 41)]
    add("a-answer-over-512-host", "manya.example", rcpts=[LIT],
        zone={"manya.example": {"A": many}}, sinks=[{"addr": "127.0.1.25"}],
        dev=6, c_out=TEMP_DNS, c_sinks={},
        py_out=accepted("127.0.1.25"), py_sinks={"127.0.1.25:25": [session([LIT])]})
    add("a-answer-over-512-mxhost", "mxmany.example", rcpts=[LIT],
        zone=mx("mxmany.example", (10, "many.example", many), (20, "o.many.example", "127.0.0.4")),
        sinks=[{"addr": "127.0.1.25"}],
        dev=6, c_out=accepted("127.0.0.4"), c_sinks={"127.0.0.4:25": [session([LIT])]},
        py_out=accepted("127.0.1.25"), py_sinks={"127.0.1.25:25": [session([LIT])]})
    # --- equal preferences (deviation 5) -----------------------------------------
    eq = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    add("mx-equal-prefs-all-accept", "eq.example", rcpts=[LIT], eq_group=eq,
        zone=mx("eq.example", (10, "e1.eq.example", eq[0]), (10, "e2.eq.example", eq[1]),
                (10, "e3.eq.example", eq[2])))
    add("mx-equal-prefs-all-refused", "eqr.example", rcpts=[LIT],
        zone=mx("eqr.example", (10, "e1.eqr.example", "127.0.0.20"),
                (10, "e2.eqr.example", "127.0.0.21"), (5, "e0.eqr.example", "127.0.0.22")))
    add("mx-equal-prefs-then-lower", "eq2.example", rcpts=[LIT],
        zone=mx("eq2.example", (10, "e1.eq2.example", "127.0.0.20"),
                (10, "e2.eq2.example", "127.0.0.21"), (20, "e3.eq2.example", "127.0.0.5")))
    # --- resolver retries, several servers, search list --------------------------
    for rc in ("SERVFAIL", "REFUSED"):
        add(f"mx-{rc.lower()}-once", "mx3.example", rcpts=[LIT],
            behave=[{"name": "mx3.example", "mode": "rcode", "rcode": rc, "rdtype": "MX",
                     "times": 1}],
            why="one bad answer, then the normal one: does a retry happen?")
    add("cname-servfail-once", "[127.0.0.2]", rcpts=["c@cname.example"],
        behave=[{"name": "cname.example", "mode": "rcode", "rcode": "SERVFAIL", "times": 1}])
    add("mx-drop-once-attempts-2", "mx3.example", rcpts=[LIT],
        resolv_conf="nameserver 127.0.0.1\noptions timeout:1 attempts:2\n",
        behave=[{"name": "mx3.example", "mode": "drop", "rdtype": "MX", "times": 1}])
    add("two-nameservers-first-dead", "mx3.example",
        resolv_conf="nameserver 127.0.0.2\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    add("search-list-ignored", "mx3", rcpts=[LIT],
        resolv_conf="nameserver 127.0.0.1\nsearch example\noptions timeout:1 attempts:1 ndots:1\n")
    add("resolv-conf-no-nameserver-line", "mx3.example", rcpts=[LIT],
        resolv_conf="options timeout:1 attempts:1\n",
        why="glibc falls back to 127.0.0.1 (the default server)")
    # --- more names in answers ------------------------------------------------------
    add("cname-target-escaped", "[127.0.0.2]", rcpts=["c@ce.example", "d@cs.example"],
        zone={"ce.example": {"CNAME": "we\\.ird.example."},
              "cs.example": {"CNAME": "\\032Sp\\255.example."}},
        why="RCPT domain as dn_expand prints it")
    add("mx-name-escaped", "mxe.example", rcpts=[LIT],
        zone={"mxe.example": {"MX": ["10 m\\.x.example.", "20 \\032sp.example."]},
              "m\\.x.example": {"A": "127.0.0.20"}, "\\032sp.example": {"A": "127.0.0.3"}})
    add("mx-name-bracket-junk", "mxbj.example", rcpts=[LIT],
        zone={"mxbj.example": {"MX": ["10 [127.0.0.5]x.", "20 127.0.0.257."]}})
    add("rcpt-domain-escape", "[127.0.0.2]", rcpts=["c@esc\\.dot.example"],
        zone={"esc\\.dot.example": {"CNAME": "aonly.example."}})
    add("rcpt-domain-dot-only", "127.0.0.1", rcpts=["c@."], why="strip -> empty, result 1 -> alias")
    add("rcpt-domain-label-64", "127.0.0.1", rcpts=["c@" + "b" * 64 + ".example"])
    add("null-mx-and-real-mx", "nullmx2.example", rcpts=[LIT],
        zone={"nullmx2.example": {"MX": ["0 .", "10 a.mx3.example."]}})
    add("mx-duplicate-host", "mxdup.example", rcpts=[LIT],
        zone=mx("mxdup.example", (10, "d.dup.example", "127.0.0.20"),
                (20, "d.dup.example", None), (30, "o.dup.example", "127.0.0.4")))
    add("a-fallback-is-me", "aisme.example", zone={"aisme.example": {"A": "127.0.0.1"}},
        rcpts=[LIT])
    add("a-fallback-is-me-alias", "aisme.example", zone={"aisme.example": {"A": "127.0.0.1"}},
        rcpts=["c@cname.example"])
    add("sender-not-rewritten", "[127.0.0.2]", rcpts=["d@cname.example"],
        sender="a@cname.example")
    # --- tcpto ------------------------------------------------------------------
    now = lambda: int(time.time())  # noqa: E731
    tz = mx("tt.example", (10, "t1.tt.example", "127.0.0.2"), (20, "t2.tt.example", "127.0.0.3"))
    pad = lambda recs: recs + b"\0" * (1024 - len(recs))  # noqa: E731
    add("tcpto-skip-recent", "tt.example", rcpts=[LIT], zone=tz,
        tcpto=lambda: pad(tcpto_record("127.0.0.2", 2, now() - 200)))
    add("tcpto-expired", "tt.example", rcpts=[LIT], zone=tz,
        tcpto=lambda: pad(tcpto_record("127.0.0.2", 2, now() - 7000)))
    add("tcpto-count-10", "tt.example", rcpts=[LIT], zone=tz,
        tcpto=lambda: pad(tcpto_record("9.9.9.9", 3, now()) + tcpto_record("127.0.0.2", 10, now() - 3000)))
    add("tcpto-future-date", "tt.example", rcpts=[LIT], zone=tz,
        tcpto=lambda: pad(tcpto_record("127.0.0.2", 5, now() + 100000)))
    tz2 = mx("tt2.example", (10, "t1.tt2.example", "127.0.0.20"),
             (20, "t2.tt2.example", "127.0.0.3"))
    add("tcpto-ok-resets-count", "tt2.example", rcpts=[LIT], zone=tz2,
        tcpto=lambda: pad(tcpto_record("127.0.0.20", 1, now() - 50)))
    add("tcpto-both-skipped", "tt.example", rcpts=[LIT], zone=tz,
        tcpto=lambda: pad(tcpto_record("127.0.0.2", 3, now() - 10)
                          + tcpto_record("127.0.0.3", 2, now() - 10)))
    return S


# ---------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class Run:
    out: bytes
    err: bytes
    rc: Optional[int]
    timed_out: bool
    sinks: dict  # "addr:port" -> [session bytes], only sinks that saw a connection
    queries: list
    dns_errors: list
    tcpto: Optional[bytes]
    elapsed: float


class Home(ControlBackup):
    """The shared home: control files (backed up / restored) and the tcpto file."""

    def __init__(self, home: Path):
        super().__init__(home, CONTROL_FILES, "differential_dns")
        self.home = home
        self.made_queue = False

    def write(self, control: dict) -> None:
        for name in CONTROL_FILES:
            value = control.get(name, DEFAULT_CONTROL[name])
            p = self.dir / name
            self.remove(p)
            if value is not None:
                p.write_bytes(value)

    def set_tcpto(self, data: Optional[bytes]) -> None:
        self.clear_tcpto()
        if data is None:
            return
        (self.home / "queue" / "lock").mkdir(parents=True)
        self.made_queue = True
        (self.home / "queue" / "lock" / "tcpto").write_bytes(data)

    def read_tcpto(self) -> Optional[bytes]:
        p = self.home / "queue" / "lock" / "tcpto"
        return p.read_bytes() if p.exists() else None

    def clear_tcpto(self) -> None:
        if self.made_queue:
            shutil.rmtree(self.home / "queue", ignore_errors=True)
            self.made_queue = False

    def restore(self) -> None:
        self.clear_tcpto()
        super().restore()


def netns_scenario(sc: Scenario, cmd: list, home: Path) -> dict:
    zone = {k: dict(v) for k, v in BASE_ZONE.items()}
    for name, types in sc.zone.items():
        zone.setdefault(name, {}).update(types)
    sinks = {(a, 25): {"addr": a} for a in DEFAULT_SINKS}
    for s in sc.sinks:
        sinks[(s["addr"], s.get("port", 25))] = dict(s)
    return {
        "command": [*cmd, sc.host, sc.sender, *sc.rcpts],
        "env": {"QMAILHOME": str(home)},
        "stdin": MESSAGE,
        "cwd": "/",
        "timeout": RUN_TIMEOUT,
        "zone": zone,
        "chase_cname": sc.chase_cname,
        "behave": sc.behave,
        "dns": sc.dns,
        "resolv_conf": sc.resolv_conf,
        "files": sc.files,
        "ip": sc.ip,
        "smtp": list(sinks.values()),
    }


def run_one(sc: Scenario, cmd: list, home: Home, tcpto: Optional[bytes]) -> Run:
    from netns import run_in_netns

    home.write(sc.control)
    home.set_tcpto(tcpto)
    try:
        t0 = time.monotonic()
        r = run_in_netns(netns_scenario(sc, cmd, home.home))
        elapsed = time.monotonic() - t0
        after = home.read_tcpto() if tcpto is not None else None
    finally:
        home.clear_tcpto()
    sinks = {f"{a}:{p}": log.sessions for (a, p), log in r.smtp.items() if log.sessions}
    return Run(r.stdout, r.stderr, r.returncode, r.timed_out, sinks, r.queries,
               r.dns_errors, after, elapsed)


# ---------------------------------------------------------------------------
# Comparison


def tcpto_same(a: Optional[bytes], b: Optional[bytes]) -> bool:
    """Equal, except that record times may differ by up to 10 seconds."""
    if a is None or b is None or len(a) != len(b):
        return a == b
    for i in range(0, len(a), 16):
        ra, rb = a[i:i + 16], b[i:i + 16]
        if len(ra) < 16:
            if ra != rb:
                return False
            continue
        if ra[:8] != rb[:8] or ra[12:] != rb[12:]:
            return False
        ta, tb = struct.unpack("<I", ra[8:12])[0], struct.unpack("<I", rb[8:12])[0]
        if abs(ta - tb) > 10:
            return False
    return True


def norm_eq(r: Run, group: list) -> tuple:
    """stdout and sinks with the equal-preference addresses made interchangeable."""
    out = r.out
    for a in group:
        out = out.replace(a.encode(), b"<EQ>")
    sinks = {}
    eq = []
    for k, v in r.sinks.items():
        if k.rsplit(":", 1)[0] in group:
            eq.extend(v)
        else:
            sinks[k] = v
    return out, sinks, sorted(eq)


def norm_dns(queries: list) -> list:
    """ANY as CNAME, transport dropped, immediate repeats collapsed."""
    out = []
    for name, rdtype, _ in queries:
        q = (name, "CNAME" if rdtype == "ANY" else rdtype)
        if not out or out[-1] != q:
            out.append(q)
    return out


def classify(sc: Scenario, c: Run, p: Run) -> str:
    if c.timed_out or p.timed_out or c.rc != p.rc:
        return "MISMATCH"
    same_tcpto = tcpto_same(c.tcpto, p.tcpto)
    if c.out == p.out and c.sinks == p.sinks and same_tcpto:
        return "MATCH"
    if sc.eq_group and same_tcpto and norm_eq(c, sc.eq_group) == norm_eq(p, sc.eq_group):
        return "EXPECTED-DEVIATION 5"
    if (sc.dev and same_tcpto and c.out == sc.c_out and c.sinks == sc.c_sinks
            and p.out == sc.py_out and p.sinks == sc.py_sinks):
        return f"EXPECTED-DEVIATION {sc.dev}"
    return "MISMATCH"


def describe(sc: Scenario, c: Run, p: Run) -> str:
    lines = [f"--- {sc.name}" + (f"  ({sc.why})" if sc.why else ""),
             f"    args: {[sc.host, sc.sender, *sc.rcpts]!r}"]
    if sc.control:
        lines.append(f"    control: {sc.control!r}")
    if sc.behave:
        lines.append(f"    behave: {sc.behave!r}")
    if sc.zone:
        lines.append(f"    zone (added): {short(repr(sc.zone).encode(), 500)}")
    if sc.ip:
        lines.append(f"    ip: {sc.ip!r}")
    for label, r in (("C ", c), ("Py", p)):
        lines.append(f"    {label} exit={r.rc} timed_out={r.timed_out} time={r.elapsed:.2f}s")
        lines.append(f"    {label} stdout = {r.out!r}")
        if not r.sinks:
            lines.append(f"    {label} sinks: no connection")
        for k, sessions in sorted(r.sinks.items()):
            for i, s in enumerate(sessions):
                lines.append(f"    {label} sink {k} [{i}] = {short(s)}")
        if r.err:
            lines.append(f"    {label} stderr = {short(r.err, 800)}")
        if r.dns_errors:
            lines.append(f"    {label} DNS server errors: {r.dns_errors}")
        lines.append(f"    {label} DNS queries: {r.queries}")
        if r.tcpto is not None:
            lines.append(f"    {label} tcpto after: {r.tcpto[:64].hex(' ')}")
    if sc.dev:
        lines.append(f"    spec-predicted under deviation {sc.dev}: C {sc.c_out!r} {sc.c_sinks!r}")
        lines.append(f"                                           Py {sc.py_out!r} {sc.py_sinks!r}")
    return "\n".join(lines)


def py_command() -> list:
    env = os.environ.get("QMAILREMOTE_DIFF_PY")
    if env:
        return [env]
    cand = Path(sys.executable).parent / "qmail-remote"
    if cand.is_file() and os.access(cand, os.X_OK):
        return [str(cand)]
    found = shutil.which("qmail-remote")
    if found:
        return [found]
    return [sys.executable, "-m", "qmailremote"]


def main(argv=None) -> int:
    chosen = choose_scenarios(__doc__, build_scenarios(), argv)
    if chosen is None:
        return 0
    opts, scenarios = chosen
    if os.geteuid() != 0:
        print("differential_dns: must run as root (it uses unshare --net --mount)",
              file=sys.stderr)
        return 2
    c_bin, home_path = scratch_home("differential_dns")
    from netns import netns_unavailable

    reason = netns_unavailable()
    if reason:
        print(f"differential_dns: cannot use network namespaces: {reason}", file=sys.stderr)
        return 2

    c_cmd = [c_bin]
    p_cmd = py_command()
    print(f"C : {c_cmd[0]} (home {home_path})\nPy: {' '.join(p_cmd)}\n", flush=True)

    home = Home(home_path)
    home.backup()

    results = []
    t_start = time.monotonic()
    try:
        with sigterm_interrupts():
            run_all(scenarios, c_cmd, p_cmd, home, opts.verbose, results)
    except KeyboardInterrupt:
        print("\ndifferential_dns: interrupted", file=sys.stderr)
        return 130
    finally:
        home.restore()
    return summarise(results, describe, opts.verbose, t_start)


def run_all(scenarios, c_cmd, p_cmd, home, verbose, results) -> None:
    """Run every scenario through both binaries, appending to *results*."""
    width = max(len(s.name) for s in scenarios)
    for sc in scenarios:
        tcpto = sc.tcpto() if sc.tcpto else None
        try:
            c = run_one(sc, c_cmd, home, tcpto)
            p = run_one(sc, p_cmd, home, tcpto)
        except RuntimeError as e:
            print(f"{sc.name:<{width}}  HARNESS-ERROR  {e}", flush=True)
            results.append((sc, "HARNESS-ERROR", None, None))
            continue
        verdict = classify(sc, c, p)
        results.append((sc, verdict, c, p))
        flags = []
        if c.err or p.err:
            flags.append("stderr")
        if c.dns_errors or p.dns_errors:
            flags.append("dns-server-errors")
        if norm_dns(c.queries) != norm_dns(p.queries):
            flags.append("dns~")
        print(f"{sc.name:<{width}}  {verdict:<21}  C {c.elapsed:5.2f}s  Py {p.elapsed:5.2f}s"
              + (f"  [{', '.join(flags)}]" if flags else ""), flush=True)
        if verbose:
            print(describe(sc, c, p), flush=True)


if __name__ == "__main__":
    sys.exit(main())
