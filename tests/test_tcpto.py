"""queue/lock/tcpto in qmail's binary format (reference section 10.1)."""

import os
import struct
import time

import pytest

from qmailremote.tcpto import TcpTo

IP = bytes([127, 0, 0, 41])
OTHER = bytes([127, 0, 0, 42])


def record(ip, count, when, pad=b"\0\0\0", tail=b"\0\0\0\0"):
    return ip + struct.pack("b", count) + pad + \
        (when & 0xFFFFFFFF).to_bytes(4, "little") + tail


@pytest.fixture
def home(tmp_path):
    (tmp_path / "queue" / "lock").mkdir(parents=True)
    return tmp_path


def tcpto_file(home):
    return home / "queue" / "lock" / "tcpto"


def make(home, pid=0):
    return TcpTo(os.open(str(home), os.O_PATH | os.O_DIRECTORY), pid=pid)


def test_missing_file_does_nothing(home):
    t = make(home)
    assert not t.skip(IP)
    t.update(IP, True)
    assert not tcpto_file(home).exists()


def test_short_file_does_nothing(home):
    tcpto_file(home).write_bytes(b"\0" * 15)
    t = make(home)
    t.update(IP, True)
    assert tcpto_file(home).read_bytes() == b"\0" * 15


def test_first_timeout_fills_a_free_record_keeping_unused_bytes(home):
    tcpto_file(home).write_bytes(record(OTHER, 3, 5) +
                                 record(b"\1\2\3\4", 0, 7, b"abc", b"defg"))
    t = make(home)
    assert not t.skip(IP)
    before = int(time.time())
    t.update(IP, True)
    data = tcpto_file(home).read_bytes()
    assert data[:16] == record(OTHER, 3, 5)
    assert data[16:21] == IP + b"\1" and data[21:24] == b"abc"
    assert before <= int.from_bytes(data[24:28], "little") <= time.time()
    assert data[28:32] == b"defg" and len(data) == 32


def test_twenty_byte_file_holds_one_record_and_is_not_extended(home):
    tcpto_file(home).write_bytes(b"\0" * 20)
    make(home).update(IP, True)
    data = tcpto_file(home).read_bytes()
    assert len(data) == 20 and data[:5] == IP + b"\1"


def test_skip_rules(home):
    now = int(time.time())
    rows = [(2, now, True), (2, now - 3000, True), (2, now - 6000, False),
            (10, now - 200, True), (1, now, False), (-1, now, False),
            # netqmail's datetime_sec is signed: a future date is "recent"
            # (the reference's §10.1 says "never skipped"; the C binary
            # skips, and it is what qmail does).
            (2, now + 10000, True), (1, now + 10000, False)]
    for count, when, skipped in rows:
        tcpto_file(home).write_bytes(record(IP, count, when))
        assert make(home, pid=0).skip(IP) is skipped, (count, when)


def test_window_depends_on_pid(home):
    when = int(time.time()) - 3900  # between 3840 (pid&31 == 0) and 5824
    tcpto_file(home).write_bytes(record(IP, 2, when))
    assert not make(home, pid=0).skip(IP)
    assert make(home, pid=31).skip(IP)


def test_success_clears_count_not_time(home):
    tcpto_file(home).write_bytes(record(IP, 5, 1234))
    t = make(home)
    t.skip(IP)
    t.update(IP, False)
    assert tcpto_file(home).read_bytes() == record(IP, 0, 1234)


def test_success_without_record_writes_nothing(home):
    tcpto_file(home).write_bytes(record(OTHER, 5, 1234))
    t = make(home)
    t.skip(IP)
    t.update(IP, False)
    assert tcpto_file(home).read_bytes() == record(OTHER, 5, 1234)


def test_timeout_soon_after_last_changes_nothing(home):
    now = int(time.time())
    tcpto_file(home).write_bytes(record(IP, 1, now - 10))
    make(home).update(IP, True)
    assert tcpto_file(home).read_bytes() == record(IP, 1, now - 10)


@pytest.mark.parametrize("count, after", [(1, 2), (10, 10), (0, 1)])
def test_timeout_counts_up_to_ten(home, count, after):
    tcpto_file(home).write_bytes(record(IP, count, 1000))
    make(home).update(IP, True)
    data = tcpto_file(home).read_bytes()
    assert data[4] == after
    assert int.from_bytes(data[8:12], "little") >= int(time.time()) - 5


def test_full_table_replaces_smallest_last_plus_count(home):
    rows = [record(bytes([10, 0, 0, i]), 1, 10000 - i * 10) for i in range(64)]
    rows[7] = record(bytes([10, 0, 0, 7]), 1, 100)
    rows[9] = record(bytes([10, 0, 0, 9]), 1, 100)  # tie: the first wins
    tcpto_file(home).write_bytes(b"".join(rows) + b"extra bytes ignored")
    make(home).update(IP, True)
    data = tcpto_file(home).read_bytes()
    assert data[7 * 16:7 * 16 + 5] == IP + b"\1"
    assert data[9 * 16:10 * 16] == rows[9]
    assert data.endswith(b"extra bytes ignored")
