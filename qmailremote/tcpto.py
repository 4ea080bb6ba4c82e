"""``queue/lock/tcpto``: remembering hosts that time out (netqmail tcpto.c).

The file is shared with a real qmail installation, so its format and its
locking are qmail's (reference section 10.1): up to 64 records of 16 bytes
-- address in network order, a signed failure count, and the low 32 bits
of the time of the last counted timeout, little-endian -- read through one
descriptor while a second, write-only one holds ``flock(LOCK_EX)``.  The
file is never created or extended; a missing or short file disables tcpto.
"""

import fcntl
import os
import time

__all__ = ["TcpTo"]

_PATH = "queue/lock/tcpto"
_RECORD = 16
_MAX_BYTES = 1024         # tcpto_buf[1024]: at most 64 records
_MAX_COUNT = 10
_RETRY_WINDOW = 120       # a timeout within 2 minutes of the last counts once


def _count(record):
    """Byte 4 as the C ``char`` it is: signed."""
    value = record[4]
    return value - 256 if value >= 128 else value


def _when(record):
    return int.from_bytes(record[8:12], "little")


class TcpTo:
    """tcpto() and tcpto_err() against one home directory descriptor."""

    def __init__(self, home_fd, pid=None):
        self._home_fd = home_fd
        self._pid = os.getpid() if pid is None else pid
        self._was_there = False

    def _open(self):
        """getbuf(): (locked write fd, records) or None when disabled."""
        try:
            fdlock = os.open(_PATH, os.O_WRONLY | os.O_NONBLOCK |
                             os.O_CLOEXEC, dir_fd=self._home_fd)
        except OSError:
            return None
        try:
            fd = os.open(_PATH, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self._home_fd)
        except OSError:
            os.close(fdlock)
            return None
        try:
            fcntl.flock(fdlock, fcntl.LOCK_EX)
            data = os.read(fd, _MAX_BYTES)
        except OSError:
            os.close(fdlock)
            return None
        finally:
            os.close(fd)
        records = [bytearray(data[i:i + _RECORD])
                   for i in range(0, len(data) - _RECORD + 1, _RECORD)]
        if not records:
            os.close(fdlock)
            return None
        return fdlock, records

    def skip(self, ip):
        """tcpto(): True when *ip* timed out recently enough to skip it."""
        self._was_there = False
        opened = self._open()
        if opened is None:
            return False
        fdlock, records = opened
        os.close(fdlock)
        for record in records:
            if record[:4] == ip:
                self._was_there = True
                if _count(record) >= 2:
                    # datetime_sec is a signed long: a record dated in the
                    # future has a negative age, so it is skipped too
                    # (checked against netqmail 1.06; reference §10.1
                    # says otherwise).
                    age = int(time.time()) - _when(record)
                    return age < (60 + (self._pid & 31)) << 6
                return False
        return False

    def update(self, ip, timed_out):
        """tcpto_err(): record a timeout, or clear a host that answered."""
        if not timed_out and not self._was_there:
            return
        opened = self._open()
        if opened is None:
            return
        fdlock, records = opened
        try:
            index = self._choose(records, ip, timed_out)
            if index is not None:
                os.pwrite(fdlock, bytes(records[index]), index * _RECORD)
        except OSError:
            pass  # tcpto.c ignores a failed write (/*XXX*/)
        finally:
            os.close(fdlock)

    @staticmethod
    def _choose(records, ip, timed_out):
        """Apply tcpto_err's rules in place; the index to write, or None."""
        now = int(time.time())
        for index, record in enumerate(records):
            if record[:4] == ip:
                if not timed_out:
                    record[4] = 0
                    return index
                if _count(record) and now < _RETRY_WINDOW + _when(record):
                    return None
                # ++record[4] on a C char wraps at 127, then caps at 10.
                count = (_count(record) + 1 + 128) % 256 - 128
                record[4] = min(count, _MAX_COUNT) & 0xFF
                record[8:12] = (now & 0xFFFFFFFF).to_bytes(4, "little")
                return index
        if not timed_out:
            return None
        for index, record in enumerate(records):
            if not record[4]:
                break
        else:
            # Replace the record with the smallest last + count * 1024.
            index = min(range(len(records)), key=lambda i: (
                _when(records[i]) + (_count(records[i]) << 10), i))
        record = records[index]
        record[:4] = ip
        record[4] = 1
        record[8:12] = (now & 0xFFFFFFFF).to_bytes(4, "little")
        return index
