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


# --- IPv6: queue/lock/tcpto6 --------------------------------------------

IP6 = bytes.fromhex("20010db8000000000000000000000029")
OTHER6 = bytes.fromhex("20010db8000000000000000000000042")
NOW = 1_700_000_000
SIZE6 = 2048


def record6(ip, count, when, pad=b"\0" * 7):
    return ip + struct.pack("b", count) + pad + when.to_bytes(8, "little")


def tcpto6_file(home):
    return home / "queue" / "lock" / "tcpto6"


def lock_dir(home):
    return sorted(os.listdir(home / "queue" / "lock"))


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now + 0.25


@pytest.fixture
def clock(monkeypatch):
    c = Clock(NOW)
    monkeypatch.setattr(time, "time", c)
    return c


@pytest.fixture
def home6(home):
    """A home with qmail's tcpto (all free) and no tcpto6 yet."""
    tcpto_file(home).write_bytes(bytes(1024))
    return home


def test_v6_skip_rules(home6, clock):
    rows = [(0, NOW, False), (1, NOW, False), (-1, NOW, False),
            (2, NOW, True), (10, NOW, True),
            (2, NOW - 3839, True), (2, NOW - 3840, False),
            (10, NOW - 3000, True), (10, NOW - 6000, False),
            # future-dated: a negative age, skipped as in tcpto
            (2, NOW + 100000, True), (1, NOW + 100000, False)]
    for count, when, skipped in rows:
        tcpto6_file(home6).write_bytes(record6(OTHER6, 5, NOW) +
                                       record6(IP6, count, when))
        assert make(home6, pid=0).skip(IP6) is skipped, (count, when)


def test_v6_window_depends_on_pid(home6, clock):
    tcpto6_file(home6).write_bytes(record6(IP6, 2, NOW - 5000))
    assert not make(home6, pid=0).skip(IP6)     # window 3840 s
    assert make(home6, pid=31).skip(IP6)        # window 5824 s
    assert make(home6, pid=32 + 31).skip(IP6)   # only pid & 31 counts


def test_v6_skip_compares_the_whole_address(home6, clock):
    tcpto6_file(home6).write_bytes(record6(OTHER6, 5, NOW))
    assert make(home6).skip(OTHER6)
    assert not make(home6).skip(IP6)  # same first 15 bytes


def test_v6_skip_ignores_tcpto(home6, clock):
    # tcpto's record for the address's first 4 bytes is not IP6's.
    tcpto_file(home6).write_bytes(record(IP6[:4], 5, NOW) + bytes(1008))
    assert make(home6).skip(IP6[:4])
    assert not make(home6).skip(IP6)
    assert lock_dir(home6) == ["tcpto"]


def test_v6_first_timeout_creates_full_file_with_tcpto_mode(home6, clock):
    os.chmod(tcpto_file(home6), 0o666)
    old_umask = os.umask(0o077)
    try:
        t = make(home6)
        assert not t.skip(IP6)
        t.update(IP6, True)
    finally:
        os.umask(old_umask)
    data = tcpto6_file(home6).read_bytes()
    assert data == record6(IP6, 1, NOW) + bytes(SIZE6 - 32)
    assert os.stat(tcpto6_file(home6)).st_mode & 0o7777 == 0o666
    assert tcpto_file(home6).read_bytes() == bytes(1024)
    assert lock_dir(home6) == ["tcpto", "tcpto6"]  # no temporary left


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="giving tcpto6 another owner needs root")
def test_v6_created_file_gets_tcpto_owner_and_group(home6, clock):
    os.chown(tcpto_file(home6), 4321, 8765)
    os.chmod(tcpto_file(home6), 0o640)
    make(home6).update(IP6, True)
    st = os.stat(tcpto6_file(home6))
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_size == SIZE6
    assert tcpto6_file(home6).read_bytes()[:32] == record6(IP6, 1, NOW)


def test_v6_failed_creation_gives_up_silently(home6, clock, monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "fchmod", refuse)
    make(home6).update(IP6, True)
    assert lock_dir(home6) == ["tcpto"]
    assert tcpto_file(home6).read_bytes() == bytes(1024)


def test_v6_no_creation_without_tcpto(home, clock):
    t = make(home)
    assert not t.skip(IP6)
    t.update(IP6, True)
    assert lock_dir(home) == []


def test_v6_no_creation_by_skip_or_clear(home6, clock):
    t = make(home6)
    assert not t.skip(IP6)
    t.update(IP6, False)
    assert not t.skip(OTHER6)
    assert lock_dir(home6) == ["tcpto"]
    t.update(IP6, True)  # only a timeout creates it
    assert lock_dir(home6) == ["tcpto", "tcpto6"]


def test_v6_first_timeout_fills_a_free_record_keeping_unused_bytes(
        home6, clock):
    kept = record6(bytes(range(16)), 0, 7, pad=b"abcdefg")
    tcpto6_file(home6).write_bytes(record6(OTHER6, 3, 5) + kept + b"tail")
    t = make(home6)
    assert not t.skip(IP6)
    t.update(IP6, True)
    data = tcpto6_file(home6).read_bytes()
    assert data[:32] == record6(OTHER6, 3, 5)
    assert data[32:64] == record6(IP6, 1, NOW, pad=b"abcdefg")
    assert data[64:] == b"tail"  # not a whole record: ignored, kept


def test_v6_timeout_window_of_120_seconds(home6, clock):
    t = make(home6)
    t.update(IP6, True)
    assert tcpto6_file(home6).read_bytes()[:32] == record6(IP6, 1, NOW)
    clock.now = NOW + 119
    t.update(IP6, True)
    assert tcpto6_file(home6).read_bytes()[:32] == record6(IP6, 1, NOW)
    clock.now = NOW + 120
    t.update(IP6, True)
    assert tcpto6_file(home6).read_bytes()[:32] == record6(IP6, 2, NOW + 120)
    assert tcpto6_file(home6).read_bytes()[32:] == bytes(SIZE6 - 32)


@pytest.mark.parametrize("count, after", [
    (0, 1), (1, 2), (9, 10), (10, 10), (11, 10),
    (127, -128),   # ++ on a C char wraps; -128 < 10 is kept
    (-128, -127), (-1, 0)])
def test_v6_timeout_counts_up_to_ten_with_char_wrap(home6, clock,
                                                    count, after):
    tcpto6_file(home6).write_bytes(record6(IP6, count, 1000, pad=b"x" * 7))
    make(home6).update(IP6, True)
    assert tcpto6_file(home6).read_bytes() == \
        record6(IP6, after, NOW, pad=b"x" * 7)


def test_v6_full_table_replaces_smallest_last_plus_count(home6, clock):
    rows = [record6(bytes(15) + bytes([i]), 1, 100000 - i * 10)
            for i in range(64)]
    rows[3] = record6(bytes(15) + b"\3", 5, 50)     # 50 + 5120: not chosen
    rows[7] = record6(bytes(15) + b"\7", 1, 100)    # 100 + 1024
    rows[9] = record6(bytes(15) + b"\11", 1, 100)   # a tie: the first wins
    tcpto6_file(home6).write_bytes(b"".join(rows) + b"extra bytes ignored")
    make(home6).update(IP6, True)
    data = tcpto6_file(home6).read_bytes()
    rows[7] = record6(IP6, 1, NOW)
    assert data == b"".join(rows) + b"extra bytes ignored"


def test_v6_clear_after_connect_only_when_skip_found_it(home6, clock):
    original = record6(OTHER6, 9, 77) + record6(IP6, 5, 1234, pad=b"p" * 7)
    tcpto6_file(home6).write_bytes(original)
    t = make(home6)
    t.update(IP6, False)                     # no skip before
    assert not t.skip(OTHER6[:4])            # a v4 skip does not count
    t.update(IP6, False)
    assert not t.skip(bytes(16))             # the last v6 skip missed
    t.update(IP6, False)
    assert tcpto6_file(home6).read_bytes() == original
    assert t.skip(IP6) is False              # found, count 5 but long ago
    t.update(IP6, False)
    assert tcpto6_file(home6).read_bytes() == \
        record6(OTHER6, 9, 77) + record6(IP6, 0, 1234, pad=b"p" * 7)


def test_v6_short_file_disables(home6, clock):
    tcpto6_file(home6).write_bytes(bytes(31))
    t = make(home6)
    assert not t.skip(IP6)
    t.update(IP6, True)
    assert tcpto6_file(home6).read_bytes() == bytes(31)
    assert lock_dir(home6) == ["tcpto", "tcpto6"]


def test_v6_forty_byte_file_holds_one_record_and_is_not_extended(
        home6, clock):
    tcpto6_file(home6).write_bytes(bytes(40))
    make(home6).update(IP6, True)
    assert tcpto6_file(home6).read_bytes() == record6(IP6, 1, NOW) + bytes(8)


def test_v6_time_is_64_bits(home6, clock):
    clock.now = 2**32 + 5
    make(home6).update(IP6, True)
    data = tcpto6_file(home6).read_bytes()
    assert data[24:32] == (2**32 + 5).to_bytes(8, "little")
    # and it is read back as 64 bits: recent, so skipped at count 2
    tcpto6_file(home6).write_bytes(record6(IP6, 2, 2**32 - 100))
    assert make(home6).skip(IP6)
    clock.now = 2**32 + 10
    tcpto6_file(home6).write_bytes(record6(IP6, 1, 2**32 + 5))
    make(home6).update(IP6, True)  # within 120 s of a 64-bit time
    assert tcpto6_file(home6).read_bytes() == record6(IP6, 1, 2**32 + 5)


def test_v6_creation_race_uses_the_other_file(home6, clock, monkeypatch):
    real_link, real_getpid = os.link, os.getpid
    other = make(home6)
    seen = []

    def racing_link(src, dst, **kwargs):
        seen.append(src)
        if len(seen) == 1:
            # Another process, with another pid, creates tcpto6 first.
            monkeypatch.setattr(os, "getpid", lambda: real_getpid() + 1)
            other.update(OTHER6, True)
            monkeypatch.setattr(os, "getpid", real_getpid)
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", racing_link)
    make(home6).update(IP6, True)
    assert seen == ["queue/lock/tcpto6.tmp.%d" % real_getpid(),
                    "queue/lock/tcpto6.tmp.%d" % (real_getpid() + 1)]
    assert tcpto6_file(home6).read_bytes() == \
        record6(OTHER6, 1, NOW) + record6(IP6, 1, NOW) + bytes(SIZE6 - 64)
    assert lock_dir(home6) == ["tcpto", "tcpto6"]


def test_v6_second_object_uses_existing_file(home6, clock, monkeypatch):
    make(home6).update(OTHER6, True)
    inode = os.stat(tcpto6_file(home6)).st_ino

    def no_link(*args, **kwargs):
        raise AssertionError("tcpto6 exists: nothing to create")
    monkeypatch.setattr(os, "link", no_link)
    make(home6).update(IP6, True)
    assert os.stat(tcpto6_file(home6)).st_ino == inode
    assert tcpto6_file(home6).read_bytes()[:64] == \
        record6(OTHER6, 1, NOW) + record6(IP6, 1, NOW)


def test_other_address_lengths_are_ignored(home6, clock):
    t = make(home6)
    for ip in (b"", b"\1\2\3", b"\1\2\3\4\5", bytes(15), bytes(17)):
        assert not t.skip(ip)
        t.update(ip, True)
        t.update(ip, False)
    assert lock_dir(home6) == ["tcpto"]
    assert tcpto_file(home6).read_bytes() == bytes(1024)


def test_v6_events_leave_tcpto_untouched(home6, clock):
    os.utime(tcpto_file(home6), ns=(10**18, 10**18))
    t = make(home6)
    t.skip(IP6)
    t.update(IP6, True)
    t.skip(IP6)
    t.update(IP6, False)
    assert tcpto6_file(home6).read_bytes()[:32] == record6(IP6, 0, NOW)
    assert tcpto_file(home6).read_bytes() == bytes(1024)
    assert os.stat(tcpto_file(home6)).st_mtime_ns == 10**18


V4_POOL = [bytes([10, 0, 0, i]) for i in range(1, 7)]
V6_POOL = [bytes(15) + bytes([i]) for i in range(1, 7)]


def _events(seed, count=400):
    import random
    rnd = random.Random(seed)
    now, events = NOW, []
    for _ in range(count):
        now += rnd.choice([0, 0, 30, 119, 120, 121, 500, 4000])
        ip = rnd.choice(V4_POOL + V6_POOL)
        events.append((now, rnd.choice(["skip", "timeout", "ok"]), ip))
    return events


def _play(home, clock, events):
    t = make(home, pid=5)
    skipped = []
    for now, op, ip in events:
        clock.now = now
        if op == "skip":
            skipped.append(t.skip(ip))
        else:
            t.update(ip, op == "timeout")
    return skipped


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tcpto_size", [4 * 16, 1024])
def test_v6_events_do_not_change_tcpto(tmp_path, clock, seed, tcpto_size):
    homes = []
    for name in ("mixed", "v4only"):
        home = tmp_path / name
        (home / "queue" / "lock").mkdir(parents=True)
        tcpto_file(home).write_bytes(bytes(tcpto_size))
        homes.append(home)
    mixed = _events(seed)
    v4only = [e for e in mixed if len(e[2]) == 4]
    skipped_mixed = _play(homes[0], clock, mixed)
    skipped_v4 = _play(homes[1], clock, v4only)
    assert tcpto_file(homes[0]).read_bytes() == \
        tcpto_file(homes[1]).read_bytes()
    # the v4 skips answered alike, and the v6 events did real work
    v4_answers = [s for s, e in zip(skipped_mixed,
                                    [e for e in mixed if e[1] == "skip"])
                  if len(e[2]) == 4]
    assert v4_answers == skipped_v4
    assert any(skipped_v4)
    assert tcpto_file(homes[1]).read_bytes() != bytes(tcpto_size)
    data6 = tcpto6_file(homes[0]).read_bytes()
    assert len(data6) == SIZE6 and data6 != bytes(SIZE6)
    assert not tcpto6_file(homes[1]).exists()
