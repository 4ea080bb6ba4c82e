"""``qmailremote tcpto``: qmail-tcpto's output, qmail-tcpok's clearing.

The expected lines for queue/lock/tcpto were checked by hand against
netqmail 1.06's qmail-tcpto on the same files (same bytes, same "fatal:"
lines for a missing file, a directory and a missing queue/lock); the
times here are frozen, so the numbers are those qmail-tcpto computes for
that "now": an unsigned 64-bit difference, huge for a future record.
"""

import errno
import fcntl
import json
import os
import pwd
import shutil
import struct
import subprocess
import sys
import tempfile
import types

import pytest

from qmailremote import tools
from qmailremote.tools import tcpto as tool

NOW = 1_800_000_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def v4(ip, count, when, pad=b"\0\0\0", tail=b"\0\0\0\0"):
    return bytes(ip) + struct.pack("b", count) + pad + \
        (when & 0xFFFFFFFF).to_bytes(4, "little") + tail


def v6(ip, count, when, pad=b"\0" * 7):
    return bytes(ip) + struct.pack("b", count) + pad + \
        (when & (1 << 64) - 1).to_bytes(8, "little")


A6 = bytes.fromhex("20010db8000000000000000000000001")       # 2001:db8::1
B6 = bytes.fromhex("20010db80000000100000000000000ff")       # 2001:db8:0:1::ff
MAPPED = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 9])      # ::ffff:10.0.0.9


@pytest.fixture
def home(tmp_path, monkeypatch):
    (tmp_path / "queue" / "lock").mkdir(parents=True)
    monkeypatch.setattr(tool, "time", types.SimpleNamespace(time=lambda:
                                                            NOW + 0.7))
    return tmp_path


def tcpto(home):
    return home / "queue" / "lock" / "tcpto"


def tcpto6(home):
    return home / "queue" / "lock" / "tcpto6"


def run(capsys, home, *argv):
    with pytest.raises(SystemExit) as exc:
        tools.main(["--home", str(home), "tcpto", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return exc.value.code, captured.out, captured.err


V4_TABLE = (v4([10, 0, 0, 1], 2, NOW - 100) +
            v4([10, 0, 0, 2], 0, NOW - 100) +            # cleared: not shown
            v4([10, 0, 0, 3], 1, NOW + 100) +            # in the future
            v4([10, 0, 0, 4], -123, NOW - 5) +           # negative: not shown
            v4([192, 168, 1, 200], 127, 0xFFFFFFFF) +
            v4([10, 0, 0, 5], 10, NOW - 4000, b"abc", b"defg") +
            b"\1" * 7)                                   # partial record

V4_LINES = (
    "10.0.0.1 timed out 100 seconds ago; # recent timeouts: 2\n"
    "10.0.0.3 timed out 18446744073709551516 seconds ago; "
    "# recent timeouts: 1\n"
    "192.168.1.200 timed out 18446744071214584321 seconds ago; "
    "# recent timeouts: 127\n"
    "10.0.0.5 timed out 4000 seconds ago; # recent timeouts: 10\n")


def test_list_is_qmail_tcpto_then_tcpto6(capsys, home):
    tcpto(home).write_bytes(V4_TABLE)
    tcpto6(home).write_bytes(v6(A6, 3, NOW - 60) + v6(B6, 0, NOW) +
                             v6(MAPPED, 1, NOW - 7) + bytes(32 * 61))
    status, out, err = run(capsys, home)
    assert status == 0 and err == ""
    assert out == V4_LINES + (
        "IPv6 (queue/lock/tcpto6):\n"
        "2001:db8::1 timed out 60 seconds ago; # recent timeouts: 3\n"
        "::ffff:10.0.0.9 timed out 7 seconds ago; # recent timeouts: 1\n")


def test_only_the_first_1024_bytes_and_whole_records(capsys, home):
    tail = v4([10, 9, 9, 9], 5, NOW - 1)
    tcpto(home).write_bytes(v4([10, 0, 0, 1], 2, NOW - 1) + bytes(16 * 63) +
                            tail)
    tcpto6(home).write_bytes(v6(A6, 2, NOW - 1)[:31])   # shorter than one
    status, out, _ = run(capsys, home)
    assert status == 0
    assert out == ("10.0.0.1 timed out 1 seconds ago; # recent timeouts: 2\n"
                   "IPv6 (queue/lock/tcpto6):\n")


def test_empty_tables_print_nothing_but_the_heading(capsys, home):
    tcpto(home).write_bytes(bytes(1024))
    tcpto6(home).write_bytes(bytes(2048))
    assert run(capsys, home) == (0, "IPv6 (queue/lock/tcpto6):\n", "")


MISSING6 = ("IPv6 (queue/lock/tcpto6):\n"
            "no IPv6 timeouts recorded: tcpto6 does not exist (qmail-remote "
            "creates it at the first IPv6 timeout)\n")


def test_missing_tcpto6_is_normal(capsys, home):
    tcpto(home).write_bytes(v4([10, 0, 0, 1], 2, NOW - 100))
    status, out, _ = run(capsys, home)
    assert status == 0
    assert out == ("10.0.0.1 timed out 100 seconds ago; # recent timeouts: "
                   "2\n" + MISSING6)


def test_missing_tcpto_is_qmail_tcpto_fatal_line(capsys, home):
    status, out, _ = run(capsys, home)
    assert status == 1
    assert out == "fatal: unable to open tcpto: file does not exist\n" + \
        MISSING6


def test_directory_instead_of_tcpto(capsys, home):
    tcpto(home).mkdir()
    tcpto6(home).mkdir()
    status, out, _ = run(capsys, home)
    assert status == 1
    assert out == ("fatal: unable to open tcpto: is a directory\n"
                   "IPv6 (queue/lock/tcpto6):\n"
                   "unable to open tcpto6: is a directory\n")


def test_missing_queue_lock(capsys, tmp_path):
    status, out, _ = run(capsys, tmp_path)
    assert status == 1
    assert out == "fatal: unable to chdir: file does not exist\n"
    status, out, _ = run(capsys, tmp_path / "nowhere")
    assert (status, out) == (1, "fatal: unable to chdir: file does not "
                                "exist\n")


def test_home_from_environment(capsys, home, monkeypatch):
    tcpto(home).write_bytes(v4([10, 0, 0, 1], 2, NOW - 100))
    monkeypatch.setenv("QMAILHOME", str(home))
    with pytest.raises(SystemExit) as exc:
        tools.main(["tcpto"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("10.0.0.1 timed out 100 ")


def test_error_str_is_qmails():
    assert tool.error_str(errno.ENOENT) == "file does not exist"
    assert tool.error_str(errno.EACCES) == "access denied"
    assert tool.error_str(errno.EPERM) == "permission denied"
    assert tool.error_str(errno.EISDIR) == "is a directory"
    assert tool.error_str(errno.ENXIO) == "device not configured"
    assert tool.error_str(OSError(errno.EROFS, "x")) == \
        "read-only file system"
    assert tool.error_str(errno.ECONNREFUSED) == "unknown error"


# -- the lock ----------------------------------------------------------------

def _recording_flock(monkeypatch):
    calls = []
    real = fcntl.flock

    def flock(fd, operation):
        calls.append((os.readlink(f"/proc/self/fd/{fd}"),
                      fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE,
                      operation))
        return real(fd, operation)
    monkeypatch.setattr(tool.fcntl, "flock", flock)
    return calls


def test_list_locks_a_write_descriptor_as_qmail_tcpto(capsys, home,
                                                      monkeypatch):
    tcpto(home).write_bytes(bytes(1024))
    tcpto6(home).write_bytes(bytes(2048))
    calls = _recording_flock(monkeypatch)
    assert run(capsys, home)[0] == 0
    assert calls == [(str(tcpto(home)), os.O_WRONLY, fcntl.LOCK_EX),
                     (str(tcpto6(home)), os.O_WRONLY, fcntl.LOCK_EX)]


def test_list_falls_back_to_flock_on_the_read_descriptor(capsys, home,
                                                         monkeypatch):
    """A user who may not write tcpto: the same flock, on the read fd."""
    tcpto(home).write_bytes(v4([10, 0, 0, 1], 2, NOW - 100))
    calls = _recording_flock(monkeypatch)
    real = tool._open

    def no_write(lock_fd, name, flags):
        if flags & os.O_ACCMODE == os.O_WRONLY:
            raise PermissionError(errno.EACCES, "denied")
        return real(lock_fd, name, flags)
    monkeypatch.setattr(tool, "_open", no_write)
    status, out, _ = run(capsys, home, "--json")
    assert status == 0
    assert calls == [(str(tcpto(home)), os.O_RDONLY, fcntl.LOCK_EX)]
    document = json.loads(out)
    assert document["files"]["tcpto"]["lock"] == "read"
    assert [r["address"] for r in document["tcpto"]] == ["10.0.0.1"]


def test_clear_locks_a_write_descriptor_as_qmail_tcpok(capsys, home,
                                                       monkeypatch):
    tcpto(home).write_bytes(v4([10, 0, 0, 1], 2, NOW - 100))
    calls = _recording_flock(monkeypatch)
    assert run(capsys, home, "--clear", "10.0.0.1")[0] == 0
    assert calls == [(str(tcpto(home)), os.O_WRONLY, fcntl.LOCK_EX)]
    calls.clear()
    assert run(capsys, home, "--clear-all")[0] == 0
    assert calls == [(str(tcpto(home)), os.O_WRONLY, fcntl.LOCK_EX)]


def _python_for(user):
    """An interpreter *user* can run, for the tests that need one."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and os.stat(candidate).st_mode & 0o001:
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_real_unprivileged_user_lists_but_cannot_clear():
    python = _python_for("nobody")
    if python is None:
        pytest.skip("no Python that nobody may run")
    home = tempfile.mkdtemp(prefix="qmailremote-tcpto-")
    try:
        os.chmod(home, 0o755)
        os.makedirs(os.path.join(home, "queue", "lock"))
        path = os.path.join(home, "queue", "lock", "tcpto")
        with open(path, "wb") as handle:
            handle.write(v4([10, 0, 0, 1], 2, 0))
        os.chmod(path, 0o644)
        env = {"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"}

        def as_nobody(*argv):
            return subprocess.run(
                [python, "-m", "qmailremote.tools", "--home", home, "tcpto",
                 *argv], user="nobody",
                group=pwd.getpwnam("nobody").pw_gid, extra_groups=[],
                env=env, cwd="/",
                capture_output=True, timeout=60)
        listed = as_nobody()
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith(b"10.0.0.1 timed out ")
        cleared = as_nobody("--clear", "10.0.0.1")
        assert cleared.returncode == 2
        assert cleared.stderr == (b"qmailremote tcpto: fatal: unable to "
                                  b"write " + home.encode() +
                                  b"/queue/lock/tcpto: access denied\n")
        assert b"Traceback" not in cleared.stderr + cleared.stdout
        os.chmod(path, 0o600)
        listed = as_nobody()
        assert listed.returncode == 1
        assert listed.stdout.startswith(b"fatal: unable to open tcpto: "
                                        b"access denied\n")
    finally:
        shutil.rmtree(home)


# -- JSON --------------------------------------------------------------------

def _check_record(record):
    assert set(record) == {"slot", "address", "count", "last_timeout",
                           "last_timeout_utc", "age", "skip", "skip_ends",
                           "shadowed"}
    assert isinstance(record["slot"], int)
    assert isinstance(record["address"], str)
    assert isinstance(record["count"], int) and record["count"] >= 1
    assert isinstance(record["last_timeout"], int)
    assert record["last_timeout_utc"] is None or \
        isinstance(record["last_timeout_utc"], str)
    assert isinstance(record["age"], int)
    assert record["skip"] in ("yes", "no", "depends-on-pid")
    ends = record["skip_ends"]
    assert ends is None or (set(ends) == {"min", "max"} and
                            ends["max"] - ends["min"] == 5824 - 3840)
    assert isinstance(record["shadowed"], bool)


def test_json_schema_and_values(capsys, home):
    tcpto(home).write_bytes(
        v4([10, 0, 0, 1], 2, NOW - 100) +         # skipped by every pid
        v4([10, 0, 0, 2], 5, NOW - 3840) +        # by some pids
        v4([10, 0, 0, 3], 2, NOW - 5823) +        # by pid & 31 == 31 only
        v4([10, 0, 0, 4], 9, NOW - 5824) +        # by none
        v4([10, 0, 0, 5], 1, NOW - 1) +           # one timeout: not skipped
        v4([10, 0, 0, 6], 3, NOW + 50) +          # future: skipped
        v4([10, 0, 0, 7], 0, NOW - 1) +           # first record: count 0
        v4([10, 0, 0, 7], 4, NOW - 1))            # shadowed by it
    tcpto6(home).write_bytes(v6(A6, 2, NOW - 10) +
                             v6(B6, 2, (1 << 64) - 1))
    status, out, _ = run(capsys, home, "--json")
    assert status == 0
    document = json.loads(out)
    assert set(document) == {"action", "now", "skip_window", "files",
                             "tcpto", "tcpto6"}
    assert document["action"] == "list"
    assert document["now"] == NOW
    assert document["skip_window"] == {"min": 3840, "max": 5824}
    for name, size in (("tcpto", 128), ("tcpto6", 64)):
        assert document["files"][name] == {
            "path": "queue/lock/" + name, "status": "ok", "error": None,
            "bytes": size, "lock": "write"}
    for record in document["tcpto"] + document["tcpto6"]:
        _check_record(record)
    verdicts = {(r["address"], r["slot"]): r["skip"]
                for r in document["tcpto"]}
    assert verdicts == {
        ("10.0.0.1", 0): "yes", ("10.0.0.2", 1): "depends-on-pid",
        ("10.0.0.3", 2): "depends-on-pid", ("10.0.0.4", 3): "no",
        ("10.0.0.5", 4): "no", ("10.0.0.6", 5): "yes",
        ("10.0.0.7", 7): "no"}
    first = document["tcpto"][0]
    assert first == {
        "slot": 0, "address": "10.0.0.1", "count": 2,
        "last_timeout": NOW - 100, "last_timeout_utc": "2027-01-15T07:58:20Z",
        "age": 100, "skip": "yes",
        "skip_ends": {"min": NOW - 100 + 3840, "max": NOW - 100 + 5824},
        "shadowed": False}
    assert document["tcpto"][-1]["shadowed"] is True
    assert document["tcpto6"][0]["address"] == "2001:db8::1"
    assert document["tcpto6"][1]["last_timeout_utc"] is None  # year > 9999
    assert document["tcpto6"][1]["skip"] == "yes"


def test_skip_verdict_matches_qmail_remote_for_every_pid(home):
    """The tri-state agrees with qmailremote.tcpto.TcpTo for all pid & 31."""
    from qmailremote.tcpto import TcpTo
    real_now = int(__import__("time").time())
    for age in (0, 3839, 3840, 4000, 5823, 5824, 9000, -60):
        tcpto(home).write_bytes(v4([10, 0, 0, 1], 2, real_now - age))
        records = tool.table_records(tool.TCPTO, tcpto(home).read_bytes())
        verdict, _ = tool.skip_verdict(records, bytes([10, 0, 0, 1]),
                                       real_now)
        fd = os.open(str(home), os.O_PATH | os.O_DIRECTORY)
        try:
            skips = {TcpTo(fd, pid=pid).skip(bytes([10, 0, 0, 1]))
                     for pid in range(32)}
        finally:
            os.close(fd)
        expected = {frozenset({True}): "yes", frozenset({False}): "no",
                    frozenset({True, False}): "depends-on-pid"}
        assert verdict == expected[frozenset(skips)], age


def test_json_for_missing_files(capsys, home):
    status, out, _ = run(capsys, home, "--json")
    assert status == 1
    document = json.loads(out)
    assert document["tcpto"] == [] and document["tcpto6"] == []
    assert document["files"]["tcpto"] == {
        "path": "queue/lock/tcpto", "status": "missing",
        "error": "unable to open tcpto: file does not exist", "bytes": None,
        "lock": None}
    assert document["files"]["tcpto6"]["status"] == "missing"


# -- clearing ----------------------------------------------------------------

def test_clear_zeroes_just_that_record(capsys, home):
    keep = v4([10, 0, 0, 2], 3, NOW - 9, b"xyz", b"tail")
    tcpto(home).write_bytes(keep + v4([10, 0, 0, 1], 2, NOW - 100, b"abc",
                                      b"defg") + keep + b"\5" * 5)
    status, out, err = run(capsys, home, "--clear", "10.0.0.1")
    assert (status, err) == (0, "")
    assert out == ("cleared 10.0.0.1 in queue/lock/tcpto (slot 1: 2 recent "
                   "timeouts, the last 100 seconds ago)\n")
    assert tcpto(home).read_bytes() == keep + bytes(16) + keep + b"\5" * 5


def test_clear_every_record_of_the_address(capsys, home):
    tcpto(home).write_bytes(v4([10, 0, 0, 1], 2, NOW - 100) +
                            v4([10, 0, 0, 1], 0, NOW - 5))
    status, out, _ = run(capsys, home, "--clear", "[10.0.0.1]")
    assert status == 0
    assert out.count("cleared 10.0.0.1") == 2
    assert tcpto(home).read_bytes() == bytes(32)


def test_clear_ipv4_mapped_is_ipv4(capsys, home):
    tcpto(home).write_bytes(v4([10, 0, 0, 9], 2, NOW - 100))
    tcpto6(home).write_bytes(v6(MAPPED, 2, NOW - 100))
    status, out, _ = run(capsys, home, "--clear", "::FFFF:10.0.0.9")
    assert status == 0
    assert "in queue/lock/tcpto (" in out
    assert tcpto(home).read_bytes() == bytes(16)
    assert tcpto6(home).read_bytes() == v6(MAPPED, 2, NOW - 100)


def test_clear_ipv6(capsys, home):
    tcpto(home).write_bytes(v4([10, 0, 0, 1], 2, NOW - 100))
    tcpto6(home).write_bytes(v6(B6, 2, NOW - 1) + v6(A6, 4, NOW - 10) +
                             bytes(64))
    status, out, _ = run(capsys, home, "--json", "--clear",
                         "[IPv6:2001:DB8::0:1]")
    assert status == 0
    document = json.loads(out)
    assert document == {
        "action": "clear", "address": "2001:db8::1",
        "file": "queue/lock/tcpto6", "error": None,
        "cleared": [{"slot": 1, "count": 4, "last_timeout": NOW - 10,
                     "last_timeout_utc": "2027-01-15T07:59:50Z",
                     "age": 10}]}
    assert tcpto6(home).read_bytes() == v6(B6, 2, NOW - 1) + bytes(96)
    assert tcpto(home).read_bytes() == v4([10, 0, 0, 1], 2, NOW - 100)


def test_clear_without_a_record_exits_1(capsys, home):
    table = v4([10, 0, 0, 2], 2, NOW - 100) + bytes(16)
    tcpto(home).write_bytes(table)
    status, out, _ = run(capsys, home, "--clear", "10.0.0.1")
    assert (status, out) == (1, "10.0.0.1 has no record in queue/lock/"
                                "tcpto; nothing cleared\n")
    # An all-zero record is no record, even for 0.0.0.0.
    status, out, _ = run(capsys, home, "--clear", "0.0.0.0")
    assert status == 1
    assert tcpto(home).read_bytes() == table
    status, out, _ = run(capsys, home, "--clear", "2001:db8::1")
    assert (status, out) == (1, "2001:db8::1 has no record: queue/lock/"
                                "tcpto6 does not exist; nothing cleared\n")
    assert not tcpto6(home).exists()


def test_clear_without_tcpto_exits_2(capsys, home):
    status, out, err = run(capsys, home, "--clear", "10.0.0.1")
    assert (status, out) == (2, "")
    assert err == (f"qmailremote tcpto: fatal: unable to write {home}/queue/"
                   "lock/tcpto: file does not exist\n")
    status, out, _ = run(capsys, home, "--json", "--clear", "10.0.0.1")
    assert status == 2
    assert json.loads(out)["error"] == (
        f"unable to write {home}/queue/lock/tcpto: file does not exist")


def test_clear_a_directory_exits_2(capsys, home):
    tcpto(home).mkdir()
    status, _, err = run(capsys, home, "--clear", "10.0.0.1")
    assert status == 2 and err.endswith("tcpto: is a directory\n")
    status, _, err = run(capsys, home, "--clear-all")
    assert status == 2 and "is a directory" in err


@pytest.mark.parametrize("bad", ["1.2.3", "1.2.3.4.5", "010.0.0.1",
                                 "300.1.1.1", "example.com", "2001:db8::1%e0",
                                 "[IPv6:1.2.3.4]", ""])
def test_clear_refuses_what_is_not_an_address(capsys, home, bad):
    with pytest.raises(SystemExit) as exc:
        tools.main(["--home", str(home), "tcpto", "--clear", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not an IPv4 dotted quad or an IPv6 address" in err
    assert "Traceback" not in err


def test_clear_and_clear_all_together_is_a_usage_error(capsys, home):
    with pytest.raises(SystemExit) as exc:
        tools.main(["--home", str(home), "tcpto", "--clear", "1.2.3.4",
                    "--clear-all"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_clear_all_is_qmail_tcpok_on_both_files(capsys, home):
    tcpto(home).write_bytes(b"\7" * 71)            # extended, as qmail-tcpok
    tcpto6(home).write_bytes(b"\7" * 3000)         # beyond 2048: kept
    status, out, err = run(capsys, home, "--clear-all")
    assert (status, err) == (0, "")
    assert out == ("cleared queue/lock/tcpto (1024 zero bytes)\n"
                   "cleared queue/lock/tcpto6 (2048 zero bytes)\n")
    assert tcpto(home).read_bytes() == bytes(1024)
    assert tcpto6(home).read_bytes() == bytes(2048) + b"\7" * 952


def test_clear_all_does_not_create_tcpto6(capsys, home):
    tcpto(home).write_bytes(bytes(1024))
    status, out, _ = run(capsys, home, "--json", "--clear-all")
    assert status == 0
    assert json.loads(out) == {"action": "clear-all", "files": {
        "tcpto": {"path": "queue/lock/tcpto", "status": "cleared",
                  "bytes": 1024, "error": None},
        "tcpto6": {"path": "queue/lock/tcpto6", "status": "missing",
                   "bytes": None, "error": None}}}
    assert not tcpto6(home).exists()


def test_clear_all_without_tcpto_exits_2(capsys, home):
    tcpto6(home).write_bytes(b"\1" * 2048)
    status, out, err = run(capsys, home, "--clear-all")
    assert status == 2
    assert err == (f"qmailremote tcpto: fatal: unable to write {home}/queue/"
                   "lock/tcpto: file does not exist\n")
    # tcpto6 is still cleared.
    assert out == "cleared queue/lock/tcpto6 (2048 zero bytes)\n"
    assert tcpto6(home).read_bytes() == bytes(2048)
    assert not tcpto(home).exists()


def test_help_says_what_clearing_does(capsys):
    with pytest.raises(SystemExit):
        tools.main(["tcpto", "--help"])
    text = capsys.readouterr().out
    assert "qmail-tcpok writes zero bytes over the whole of tcpto" in text
    assert "just the record(s) of IP" in text


def test_tools_are_not_imported_by_qmail_remote():
    code = ("import sys, qmailremote.cli, qmailremote.delivery\n"
            "print(sorted(m for m in sys.modules "
            "if m.startswith('qmailremote.tools')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # And a delivery's run does not either (the API, in-process).
    code = ("import sys, qmailremote\n"
            "r = qmailremote.deliver('h', 's', ['r@x'], b'', home='/none')\n"
            "print(r.message.letter, sorted(m for m in sys.modules "
            "if m.startswith('qmailremote.tools')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "Z []", done.stderr
