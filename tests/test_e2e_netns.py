"""End to end: the installed ``qmail-remote`` command inside a private network namespace.

Each test builds a qmail home in ``tmp_path`` (``control/me`` and whatever
else the case needs), runs the INSTALLED console script through
:func:`netns.run_in_netns` with a fake DNS zone and SMTP sinks on
127.0.0.X, and checks the exact stdout bytes of the reference
(/work/shared/spec/qmail-remote-behaviour.md), the DNS query log, the wire
bytes each sink received and the tcpto file.  Every run must exit 0 with
nothing on stderr.

Root only (``unshare --net --mount``): without root every test skips,
saying why.  As root, a missing ``qmail-remote`` command is a failure, not a
skip: CI installs the package before running the suite, so a missing
command means a broken install.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import time

import pytest

from netns import require_netns, run_in_netns

pytestmark = pytest.mark.netns

ME = b"me.example"
SENDER = "a@b.example"

MESSAGE = b"Subject: t\n\n.hi\nbody\n"
BODY_WIRE = b"Subject: t\r\n\r\n..hi\r\nbody\r\n.\r\n"

AMBIGMX = (b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
           b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n\0")
NOCONN = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0"
TEMP_DNS = b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0"
TEMP_DNSCANON = b"ZCNAME lookup failed temporarily. (#4.4.3)\n\0"
PERM_NOMX = b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n\0"
USAGE = b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0"


def perm_dns(host: bytes) -> bytes:
    return b"DSorry, I couldn't find any host named " + host + b". (#5.1.2)\n\0"


def accepted(ip: str, nrcpt: int = 1) -> bytes:
    """r... then K, with the sink's default reply to the final dot."""
    return (b"r\0" * nrcpt + b"K" + ip.encode() + b" accepted message.\n"
            b"Remote host said: 250 ok " + ip.encode() + b"\n\0")


def session(recipients, sender=SENDER, body=BODY_WIRE) -> bytes:
    """The exact bytes a sink receives for a delivery with default replies."""
    return (b"HELO " + ME + b"\r\n"
            + b"MAIL FROM:<" + sender.encode() + b">\r\n"
            + b"".join(b"RCPT TO:<" + r.encode() + b">\r\n" for r in recipients)
            + b"DATA\r\n" + body + b"QUIT\r\n")


# ---------------------------------------------------------------------------
# helpers


def qmail_remote() -> str:
    """The installed console script: next to sys.executable, else on PATH."""
    require_netns()
    candidate = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("qmail-remote")
    if found is None:
        pytest.fail(
            "the qmail-remote console script is not installed (looked for "
            f"{candidate} and on PATH).  These end-to-end tests run the "
            "installed command, and CI installs the package before testing; "
            "run `pip install .` first.", pytrace=False)
    return found


def make_home(tmp_path, *, tcpto: bytes | None = None, **control: bytes) -> str:
    """A qmail home: control/me plus *control* files; optional queue/lock/tcpto."""
    home = tmp_path / "qmail"
    (home / "control").mkdir(parents=True)
    (home / "control" / "me").write_bytes(ME + b"\n")
    # netqmail 1.06's dialogue unless a test names another profile.
    if "noesmtp" not in control and not control.pop("esmtp", None):
        (home / "control" / "noesmtp").write_bytes(b"")
    for name, content in control.items():
        (home / "control" / name).write_bytes(content)
    if tcpto is not None:
        (home / "queue" / "lock").mkdir(parents=True)
        (home / "queue" / "lock" / "tcpto").write_bytes(tcpto)
    return str(home)


def tcpto_path(home: str) -> str:
    return os.path.join(home, "queue", "lock", "tcpto")


def record(ip: str, count: int, when: int, pad1: bytes = b"\0\0\0",
           pad2: bytes = b"\0\0\0\0") -> bytes:
    """One 16-byte tcpto record (reference section 10.1)."""
    return (bytes(int(x) for x in ip.split(".")) + struct.pack("<b", count) + pad1
            + struct.pack("<I", when & 0xFFFFFFFF) + pad2)


def tcpto_file(*records: bytes) -> bytes:
    """1024 bytes, as qmail-rspawn leaves the file, with *records* first."""
    data = b"".join(records)
    return data + b"\0" * (1024 - len(data))


def run(home: str | None, args, *, stdin: bytes = MESSAGE, env=None, **scenario):
    """Run the installed qmail-remote with *args*; check exit 0 and silence on stderr."""
    command = [qmail_remote(), *args]
    environment = {"QMAILHOME": home} if home is not None else {}
    environment.update(env or {})
    scenario.setdefault("timeout", 20)
    r = run_in_netns({"command": command, "env": environment, "stdin": stdin,
                      **scenario})
    assert not r.timed_out, f"qmail-remote did not finish: {r.stdout!r} {r.stderr!r}"
    assert r.stderr == b""
    assert r.returncode == 0
    assert r.dns_errors == []
    return r


def zone_mx(host: str, *mx: tuple[int, str, str | None]) -> dict:
    """*host* MX (pref, name, A address or None for a literal/addressless name)."""
    zone = {host: {"MX": [f"{pref} {name}." for pref, name, _ in mx]}}
    for _, name, ip in mx:
        if ip is not None:
            zone.setdefault(name, {}).setdefault("A", []).append(ip)
    return zone


def types(r, *wanted: str) -> list:
    """The query log, filtered to the given record types (all if none given)."""
    return [q for q in r.queries if not wanted or q[1] in wanted]


# ---------------------------------------------------------------------------
# 1. plain MX delivery


def test_plain_mx_delivery_exact_bytes(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test", "d@example.test"],
            zone=zone_mx("example.test", (10, "mx1.example.test", "127.0.0.2")),
            smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.2", 2)
    assert r.server("127.0.0.2").sessions == [
        session(["c@example.test", "d@example.test"])]
    # Deviation 6: CNAME (never ANY) queries for each recipient domain, in
    # argument order, nothing cached; then MX for the host, A for the MX host.
    assert r.queries == [("example.test", "CNAME", "udp"),
                         ("example.test", "CNAME", "udp"),
                         ("example.test", "MX", "udp"),
                         ("mx1.example.test", "A", "udp")]


def test_recipient_reports_and_reply_text(tmp_path):
    """h, s and r in argument order; multi-line replies keep every line, no CR."""
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "x@example.test", "y@example.test",
                   "z@example.test"],
            zone=zone_mx("example.test", (10, "mx1.example.test", "127.0.0.2")),
            smtp=[{"addr": "127.0.0.2",
                   "replies": {"RCPT": ["550 no such user", "451 later", "250 ok"],
                               "BODY": "250-queued\n250 as 42"}}])
    assert r.stdout == (
        b"h127.0.0.2 does not like recipient.\nRemote host said: 550 no such user\n\0"
        b"s127.0.0.2 does not like recipient.\nRemote host said: 451 later\n\0"
        b"r\0"
        b"K127.0.0.2 accepted message.\nRemote host said: 250-queued\n250 as 42\n\0")
    assert r.server("127.0.0.2").sessions == [
        session(["x@example.test", "y@example.test", "z@example.test"])]


# ---------------------------------------------------------------------------
# 2. preference order; no other MX after a TCP connection


def test_lower_preference_refused_next_mx_gets_the_mail(tmp_path):
    home = make_home(tmp_path)
    # Listed worst first: the order must come from the preferences.
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (20, "mx2.example.test", "127.0.0.3"),
                         (10, "mx1.example.test", "127.0.0.2")),
            smtp=[{"addr": "127.0.0.2", "listen": False}, {"addr": "127.0.0.3"}])
    assert r.stdout == accepted("127.0.0.3")
    assert r.server("127.0.0.3").sessions == [session(["c@example.test"])]


def test_greeting_failure_at_first_mx_tries_no_other(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "mx1.example.test", "127.0.0.2"),
                         (20, "mx2.example.test", "127.0.0.3")),
            smtp=[{"addr": "127.0.0.2", "greeting": "421 busy, try later"},
                  {"addr": "127.0.0.3"}])
    assert r.stdout == (b"ZConnected to 127.0.0.2 but greeting failed.\n"
                        b"Remote host said: 421 busy, try later\n\0")
    assert r.server("127.0.0.2").sessions == [b"QUIT\r\n"]
    assert r.server("127.0.0.3").connections == 0


def test_drop_at_first_mx_tries_no_other(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "mx1.example.test", "127.0.0.2"),
                         (20, "mx2.example.test", "127.0.0.3")),
            smtp=[{"addr": "127.0.0.2", "replies": {"HELO": None}},
                  {"addr": "127.0.0.3"}])
    assert r.stdout == b"ZConnected to 127.0.0.2 but connection died. (#4.4.2)\n\0"
    assert r.server("127.0.0.2").sessions == [b"HELO me.example\r\n"]
    assert r.server("127.0.0.3").connections == 0


# ---------------------------------------------------------------------------
# 3. no MX: A fallback


def test_no_mx_falls_back_to_a(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["aonly.example", SENDER, "c@aonly.example"],
            zone={"aonly.example": {"A": "127.0.0.2"}},
            smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.2")
    assert r.server("127.0.0.2").sessions == [session(["c@aonly.example"])]
    assert types(r, "MX", "A") == [("aonly.example", "MX", "udp"),
                                   ("aonly.example", "A", "udp")]


def test_mx_answer_with_only_a_cname_falls_back_to_a(tmp_path):
    """No MX record in the answer (only the CNAME the server followed) -> A of host."""
    home = make_home(tmp_path)
    r = run(home, ["alias.example", SENDER, "c@[1.2.3.4]"],
            zone={"alias.example": {"CNAME": "aonly.example."},
                  "aonly.example": {"A": "127.0.0.2"}},
            chase_cname=True,
            smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.2")
    assert r.server("127.0.0.2").sessions == [session(["c@[1.2.3.4]"])]
    assert r.queries == [("alias.example", "MX", "udp"), ("alias.example", "A", "udp")]


def test_mx_host_without_address_is_perm_nomx(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@[1.2.3.4]"],
            zone={"example.test": {"MX": ["10 noaddr.example."]},
                  "noaddr.example": {"TXT": '"no address here"'}},
            smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == PERM_NOMX
    assert r.server("127.0.0.2").connections == 0


# ---------------------------------------------------------------------------
# 4. the "listed as MX" rule


def test_best_mx_is_me(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "self.example", "127.0.0.1"),
                         (20, "mx2.example.test", "127.0.0.2")),
            smtp=[{"addr": "127.0.0.1"}, {"addr": "127.0.0.2"}])
    assert r.stdout == AMBIGMX
    assert r.server("127.0.0.1").connections == 0
    assert r.server("127.0.0.2").connections == 0


def test_only_mx_better_than_me_are_tried(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "mx1.example.test", "127.0.0.2"),
                         (20, "self.example", "127.0.0.1"),
                         (30, "mx3.example.test", "127.0.0.3")),
            smtp=[{"addr": "127.0.0.1"}, {"addr": "127.0.0.2", "listen": False},
                  {"addr": "127.0.0.3"}])
    assert r.stdout == NOCONN
    assert r.server("127.0.0.1").connections == 0
    assert r.server("127.0.0.3").connections == 0


def test_literal_mx_name_gets_preference_zero(tmp_path):
    """MX 10 other, 50 ``127.0.0.1``: the literal is preference 0, so it beats all."""
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "mx1.example.test", "127.0.0.2"),
                         (50, "127.0.0.1", None)),
            smtp=[{"addr": "127.0.0.1"}, {"addr": "127.0.0.2"}])
    assert r.stdout == AMBIGMX
    assert r.server("127.0.0.2").connections == 0
    assert ("127.0.0.1", "A", "udp") not in r.queries


@pytest.mark.parametrize("host", ["127.0.0.1", "[127.0.0.1]", "127.0.0.257", "0.0.0.0"])
def test_literal_host_that_is_me(tmp_path, host):
    home = make_home(tmp_path)
    r = run(home, [host, SENDER, "c@[1.2.3.4]"], smtp=[{"addr": "127.0.0.1"}])
    assert r.stdout == AMBIGMX
    assert r.queries == []
    assert r.server("127.0.0.1").connections == 0


# ---------------------------------------------------------------------------
# 5. deviation 7: every address of an up interface is "me"


@pytest.mark.parametrize("label", [[], ["label", "lo:1"]], ids=["unlabelled", "labelled"])
def test_extra_address_on_lo_counts_as_me(tmp_path, label):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            ip=[["addr", "add", "127.0.0.9/8", "dev", "lo", *label]],
            zone=zone_mx("example.test", (10, "mx9.example.test", "127.0.0.9")),
            smtp=[{"addr": "127.0.0.9"}])
    assert r.stdout == AMBIGMX
    assert r.server("127.0.0.9").connections == 0


def test_unassigned_loopback_address_is_not_me(tmp_path):
    """The control case: without the extra address, 127.0.0.9 gets the mail."""
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "mx9.example.test", "127.0.0.9")),
            smtp=[{"addr": "127.0.0.9"}])
    assert r.stdout == accepted("127.0.0.9")


# ---------------------------------------------------------------------------
# 6. CNAME canonicalisation and the alias rule

CNAME_ZONE = {
    "cname.example": {"CNAME": "aonly.example."},
    "aonly.example": {"A": "127.0.0.2"},
    "cnx.example": {"CNAME": "nx.example."},
}


@pytest.mark.parametrize("recipients, rcpt, queries", [
    (["c@cname.example"], ["c@aonly.example"],
     ["cname.example", "aonly.example"]),
    (["c@cnx.example"], ["c@nx.example"], ["cnx.example", "nx.example"]),
    (["c@aonly.example."], ["c@aonly.example"], ["aonly.example"]),
    (["cnameexample"], ["cnameexample"], []),
    (["c@cname.example", "d@cnx.example"], ["c@aonly.example", "d@nx.example"],
     ["cname.example", "aonly.example", "cnx.example", "nx.example"]),
], ids=["cname", "cname-to-nxdomain", "trailing-dot", "no-at", "two-aliases"])
def test_all_recipients_aliases_connect_to_me(tmp_path, recipients, rcpt, queries):
    home = make_home(tmp_path)
    r = run(home, ["127.0.0.1", SENDER, *recipients],
            zone=CNAME_ZONE, smtp=[{"addr": "127.0.0.1"}])
    assert r.stdout == accepted("127.0.0.1", len(recipients))
    assert r.server("127.0.0.1").sessions == [session(rcpt)]
    # Deviation 6: type CNAME, never ANY; host is a literal, so no MX/A.
    assert r.queries == [(q, "CNAME", "udp") for q in queries]


@pytest.mark.parametrize("recipients, queries", [
    (["c@nx.example"], ["nx.example"]),
    (["c@cname.example", "d@aonly.example"], ["cname.example", "aonly.example",
                                              "aonly.example"]),
], ids=["nxdomain", "one-not-alias"])
def test_not_all_aliases_me_is_ambiguous(tmp_path, recipients, queries):
    home = make_home(tmp_path)
    r = run(home, ["127.0.0.1", SENDER, *recipients],
            zone=CNAME_ZONE, smtp=[{"addr": "127.0.0.1"}])
    assert r.stdout == AMBIGMX
    assert r.server("127.0.0.1").connections == 0
    assert r.queries == [(q, "CNAME", "udp") for q in queries]


def test_cname_soft_failure(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@cname.example", "d@servfail.example"],
            zone={**CNAME_ZONE, **zone_mx("example.test",
                                          (10, "mx1.example.test", "127.0.0.2"))},
            behave=[{"name": "servfail.example", "mode": "rcode", "rcode": "SERVFAIL"}],
            smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == TEMP_DNSCANON
    assert r.server("127.0.0.2").connections == 0
    # It ends before any MX lookup.
    assert types(r, "MX", "A") == []


# ---------------------------------------------------------------------------
# 7. smtproutes


def test_route_to_named_relay_with_port(tmp_path):
    home = make_home(tmp_path, smtproutes=b"example.com:relay.example:2525\n")
    r = run(home, ["example.com", SENDER, "c@example.com"],
            zone={"relay.example": {"A": "127.0.0.5"},
                  **zone_mx("example.com", (10, "mx1.example.com", "127.0.0.2"))},
            smtp=[{"addr": "127.0.0.5", "port": 2525}, {"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.5")
    assert r.server("127.0.0.5", 2525).sessions == [session(["c@example.com"])]
    assert r.server("127.0.0.2").connections == 0
    # An A query only: no MX, and no CNAME lookups with a non-empty route.
    assert r.queries == [("relay.example", "A", "udp")]


def test_route_to_relay_that_is_me_is_used(tmp_path):
    home = make_home(tmp_path, smtproutes=b"example.com:127.0.0.1:2525\n")
    r = run(home, ["example.com", SENDER, "c@example.com"],
            smtp=[{"addr": "127.0.0.1", "port": 2525}])
    assert r.stdout == accepted("127.0.0.1")
    assert r.server("127.0.0.1", 2525).sessions == [session(["c@example.com"])]
    assert r.queries == []


def test_route_relay_hard_failure_names_the_relay(tmp_path):
    home = make_home(tmp_path, smtproutes=b".example.com:nxrelay.example\n")
    r = run(home, ["x.example.com", SENDER, "c@x.example.com"], zone={})
    assert r.stdout == perm_dns(b"nxrelay.example")
    assert r.queries == [("nxrelay.example", "A", "udp")]


# ---------------------------------------------------------------------------
# 8. tcpto


def test_tcpto_skips_a_host_that_timed_out_recently(tmp_path):
    now = int(time.time())
    before = tcpto_file(record("127.0.0.2", 2, now))
    home = make_home(tmp_path, tcpto=before)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "mx1.example.test", "127.0.0.2"),
                         (20, "mx2.example.test", "127.0.0.3")),
            smtp=[{"addr": "127.0.0.2"}, {"addr": "127.0.0.3"}])
    assert r.stdout == accepted("127.0.0.3")
    assert r.server("127.0.0.2").connections == 0
    assert r.server("127.0.0.3").sessions == [session(["c@example.test"])]
    with open(tcpto_path(home), "rb") as f:
        assert f.read() == before


@pytest.mark.parametrize("count, age", [(1, 10), (2, 6000)],
                         ids=["count-1-recent", "count-2-backdated-6000s"])
def test_tcpto_successful_connection_resets_count(tmp_path, count, age):
    when = int(time.time()) - age
    other = record("127.0.0.77", 3, when - 5, b"\x01\x02\x03", b"\x04\x05\x06\x07")
    before = tcpto_file(other, record("127.0.0.2", count, when,
                                      b"\xaa\xbb\xcc", b"\x11\x22\x33\x44"))
    home = make_home(tmp_path, tcpto=before)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "mx1.example.test", "127.0.0.2"),
                         (20, "mx2.example.test", "127.0.0.3")),
            smtp=[{"addr": "127.0.0.2"}, {"addr": "127.0.0.3"}])
    assert r.stdout == accepted("127.0.0.2")
    assert r.server("127.0.0.3").connections == 0
    after = tcpto_file(other, record("127.0.0.2", 0, when,
                                     b"\xaa\xbb\xcc", b"\x11\x22\x33\x44"))
    with open(tcpto_path(home), "rb") as f:
        assert f.read() == after


def test_tcpto_connect_timeout_is_recorded(tmp_path):
    """A route into lo for 10.9.9.0/24: the SYN goes nowhere, the connect times out.

    control/timeoutconnect 1; the timed-out host gets count 1 and the time
    now, in the first record with count 0 (its bytes 5-7 and 12-15 kept);
    the next MX gets the mail.
    """
    old = record("127.0.0.77", 0, 12345, b"\x01\x02\x03", b"\x04\x05\x06\x07")
    home = make_home(tmp_path, tcpto=tcpto_file(old), timeoutconnect=b"1\n")
    start = int(time.time())
    r = run(home, ["example.test", SENDER, "c@example.test"],
            ip=[["route", "add", "10.9.9.0/24", "dev", "lo"]],
            zone=zone_mx("example.test", (10, "slow.example.test", "10.9.9.2"),
                         (20, "mx2.example.test", "127.0.0.3")),
            smtp=[{"addr": "127.0.0.3"}])
    end = int(time.time())
    assert r.stdout == accepted("127.0.0.3")
    with open(tcpto_path(home), "rb") as f:
        after = f.read()
    assert len(after) == 1024
    assert after[16:] == b"\0" * (1024 - 16)
    rec = after[:16]
    assert rec[:8] == bytes([10, 9, 9, 2, 1, 1, 2, 3])
    assert rec[12:] == b"\x04\x05\x06\x07"
    assert start <= struct.unpack("<I", rec[8:12])[0] <= end


# ---------------------------------------------------------------------------
# 9. DNS failures


def test_servfail_on_mx_is_temporary(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["sf.example", SENDER, "c@[1.2.3.4]"],
            zone={"sf.example": {"A": "127.0.0.2"}},
            behave=[{"name": "sf.example", "mode": "rcode", "rcode": "SERVFAIL"}],
            smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == TEMP_DNS
    assert r.server("127.0.0.2").connections == 0
    assert {q[:2] for q in r.queries} == {("sf.example", "MX")}


def test_no_dns_server_is_temporary(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@[1.2.3.4]"], dns=False)
    assert r.stdout == TEMP_DNS


def test_nxdomain_is_permanent(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["nx.example", SENDER, "c@[1.2.3.4]"], zone={})
    assert r.stdout == perm_dns(b"nx.example")
    assert r.queries == [("nx.example", "MX", "udp"), ("nx.example", "A", "udp")]


def test_localhost_is_a_dns_query(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["localhost", SENDER, "c@[1.2.3.4]"], zone={},
            files={"/etc/hosts": "127.0.0.1 localhost\n127.0.0.2 nx.example\n"},
            smtp=[{"addr": "127.0.0.1"}])
    assert r.stdout == perm_dns(b"localhost")
    assert r.queries == [("localhost", "MX", "udp"), ("localhost", "A", "udp")]
    assert r.server("127.0.0.1").connections == 0


# ---------------------------------------------------------------------------
# 10. deviation 5: equal preferences


def test_equal_preferences_all_refusing_then_next(tmp_path):
    home = make_home(tmp_path)
    r = run(home, ["example.test", SENDER, "c@example.test"],
            zone=zone_mx("example.test", (10, "a.example.test", "127.0.0.2"),
                         (10, "b.example.test", "127.0.0.3"),
                         (20, "c.example.test", "127.0.0.4")),
            smtp=[{"addr": "127.0.0.2", "listen": False},
                  {"addr": "127.0.0.3", "listen": False},
                  {"addr": "127.0.0.4"}])
    assert r.stdout == accepted("127.0.0.4")
    assert r.server("127.0.0.4").sessions == [session(["c@example.test"])]
    assert sorted(q[0] for q in types(r, "A")) == ["a.example.test", "b.example.test",
                                                   "c.example.test"]


def test_equal_preferences_order_is_drawn_afresh(tmp_path):
    """20 runs against two MX at 10 that both accept: each one gets some mail.

    A fixed order would send all 20 to one host; a fair draw misses one
    host with probability 2 * 2**-20.
    """
    home = make_home(tmp_path)
    runs = 20
    script = ('for i in $(seq %d); do "$0" example.test %s c@example.test '
              '</dev/null; done' % (runs, SENDER))
    r = run_in_netns({
        "command": ["sh", "-c", script, qmail_remote()],
        "env": {"QMAILHOME": home},
        "timeout": 40,
        "zone": zone_mx("example.test", (10, "a.example.test", "127.0.0.2"),
                        (10, "b.example.test", "127.0.0.3")),
        "smtp": [{"addr": "127.0.0.2"}, {"addr": "127.0.0.3"}],
    })
    assert (r.returncode, r.stderr, r.timed_out) == (0, b"", False)
    reports = r.stdout.split(b"\0")[:-1]
    assert len(reports) == 2 * runs
    got = (r.server("127.0.0.2").connections, r.server("127.0.0.3").connections)
    assert sum(got) == runs and min(got) > 0, got
    assert r.stdout.count(accepted("127.0.0.2")) == got[0]
    assert r.stdout.count(accepted("127.0.0.3")) == got[1]


# ---------------------------------------------------------------------------
# 11. no search list, no resolver environment


@pytest.mark.parametrize("resolv_conf, env", [
    ("nameserver 127.0.0.1\nsearch sub.example\noptions timeout:1 attempts:1 ndots:5\n",
     {}),
    ("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
     {"LOCALDOMAIN": "sub.example", "RES_OPTIONS": "ndots:5"}),
], ids=["resolv.conf-search", "LOCALDOMAIN-env"])
def test_no_search_list(tmp_path, resolv_conf, env):
    home = make_home(tmp_path)
    r = run(home, ["mx", SENDER, "c@mx"], resolv_conf=resolv_conf, env=env,
            zone={"mx": {"A": "127.0.0.2"},
                  "mx.sub.example": {"A": "127.0.0.3", "MX": ["10 mx3.example.test."]},
                  "mx3.example.test": {"A": "127.0.0.3"}},
            smtp=[{"addr": "127.0.0.2"}, {"addr": "127.0.0.3"}])
    assert r.stdout == accepted("127.0.0.2")
    assert r.server("127.0.0.3").connections == 0
    assert r.queries == [("mx", "CNAME", "udp"), ("mx", "MX", "udp"), ("mx", "A", "udp")]


# ---------------------------------------------------------------------------
# 12. usage and home directory


@pytest.mark.parametrize("args", [[], ["example.test"], ["example.test", SENDER]],
                         ids=["0-args", "1-arg", "2-args"])
def test_usage_comes_before_the_home_directory(tmp_path, args):
    r = run(str(tmp_path / "no-such-home"), args, dns=False)
    assert r.stdout == USAGE


def test_missing_home_directory(tmp_path):
    r = run(str(tmp_path / "no-such-home"), ["example.test", SENDER, "c@example.test"],
            dns=False)
    assert r.stdout == b"ZUnable to switch to home directory. (#4.3.0)\n\0"
