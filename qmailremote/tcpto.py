"""``queue/lock/tcpto``: remembering hosts that time out (netqmail tcpto.c).

IPv4 addresses are kept in ``queue/lock/tcpto``.  The file is shared with a
real qmail installation, so its format and its locking are qmail's
(reference section 10.1): up to 64 records of 16 bytes -- address in
network order, a signed failure count, and the low 32 bits of the time of
the last counted timeout, little-endian -- read through one descriptor
while a second, write-only one holds ``flock(LOCK_EX)``.  The file is never
created or extended; a missing or short file disables tcpto.

IPv6 addresses are kept, by the same rules and the same locking, in the
sibling file ``queue/lock/tcpto6``, which qmail does not know about; the
IPv6 path never writes ``queue/lock/tcpto``.  Its records are 32 bytes,
at most 64 of them (2048 bytes)::

    bytes  0-15  the IPv6 address, network order
    byte   16    the failure count, a signed char as in tcpto
    bytes 17-23  zero
    bytes 24-31  the time of the last counted timeout: seconds since the
                 epoch, unsigned 64-bit little-endian (no 2038 wrap)

As in tcpto, only whole records within the first 2048 bytes are read, a
file shorter than one record disables tcpto6, and the bytes of an existing
record that are not address, count or time are left as they are.  Unlike
tcpto, tcpto6 is created when an IPv6 timeout is first to be recorded --
never by a skip or a clear -- and only next to an existing
``queue/lock/tcpto`` (no tcpto, no tcpto6): 2048 zero bytes are written to
a temporary file in ``queue/lock`` that is given tcpto's owner, group and
permission bits and then hard-linked into place, so that no process ever
sees a partial file; when another process links first, its file is used.
Creation is best effort: any error leaves tcpto6 missing.
"""

import fcntl
import os
import time

__all__ = ["TcpTo", "TCPTO", "TCPTO6"]

_OPEN_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC
_MAX_COUNT = 10
_RETRY_WINDOW = 120       # a timeout within 2 minutes of the last counts once


class _Table:
    """One tcpto file: where it is and how its records are laid out.

    The address fills the first *address* bytes of a record and the signed
    count is the byte after it; the time is *when_width* bytes little-endian
    at *when_offset*.  *template* names the file whose existence, owner,
    group and mode a missing table is created from (None: never created).
    """

    def __init__(self, path, record, address, when_offset, when_width,
                 max_bytes, template=None):
        self.path = path
        self.record = record
        self.address = address
        self.when_slice = slice(when_offset, when_offset + when_width)
        self.when_mask = (1 << 8 * when_width) - 1
        self.max_bytes = max_bytes
        self.template = template

    def count(self, record):
        """The count byte as the C ``char`` it is: signed."""
        value = record[self.address]
        return value - 256 if value >= 128 else value

    def set_count(self, record, count):
        record[self.address] = count & 0xFF

    def when(self, record):
        return int.from_bytes(record[self.when_slice], "little")

    def set_when(self, record, now):
        record[self.when_slice] = (now & self.when_mask).to_bytes(
            self.when_slice.stop - self.when_slice.start, "little")

    def records(self, data):
        """The whole records in *data*, as mutable copies."""
        size = self.record
        return [bytearray(data[i:i + size])
                for i in range(0, len(data) - size + 1, size)]


# tcpto_buf[1024]: at most 64 records of 16 bytes, qmail's own file.
TCPTO = _Table("queue/lock/tcpto", 16, 4, 8, 4, 1024)
# Its IPv6 sibling: 64 records of 32 bytes, created next to tcpto.
TCPTO6 = _Table("queue/lock/tcpto6", 32, 16, 24, 8, 2048,
                 template=TCPTO.path)
_TABLES = {TCPTO.address: TCPTO, TCPTO6.address: TCPTO6}


class TcpTo:
    """tcpto() and tcpto_err() against one home directory descriptor.

    *ip* is 4 bytes (IPv4, ``queue/lock/tcpto``) or 16 bytes (IPv6,
    ``queue/lock/tcpto6``), network order; other lengths are never skipped
    and never recorded.  As in tcpto.c, update() clears a count only when
    the last skip() of an address of the same length found a record for
    it (the "was there" flag is kept per file).
    """

    def __init__(self, home_fd, pid=None):
        self._home_fd = home_fd
        self._pid = os.getpid() if pid is None else pid
        # flagwasthere, one per table, so that IPv6 events never change
        # what happens to tcpto.
        self._was_there = {}

    def _open(self, table, create=False):
        """getbuf(): (locked write fd, records) or None when disabled.

        With *create*, a missing file is first created when it may be.
        """
        try:
            fdlock = os.open(table.path, os.O_WRONLY | _OPEN_FLAGS,
                             dir_fd=self._home_fd)
        except FileNotFoundError:
            if not (create and self._create(table)):
                return None
            return self._open(table)
        except OSError:
            return None
        try:
            fd = os.open(table.path, os.O_RDONLY | _OPEN_FLAGS,
                         dir_fd=self._home_fd)
        except OSError:
            os.close(fdlock)
            return None
        try:
            fcntl.flock(fdlock, fcntl.LOCK_EX)
            data = os.read(fd, table.max_bytes)
        except OSError:
            os.close(fdlock)
            return None
        finally:
            os.close(fd)
        records = table.records(data)
        if not records:
            os.close(fdlock)
            return None
        return fdlock, records

    def _create(self, table):
        """Create *table* at full size, atomically; True if it now exists."""
        if table.template is None:
            return False
        home = self._home_fd
        try:
            model = os.stat(table.template, dir_fd=home)
        except OSError:
            return False  # no tcpto: tcpto is disabled, and so is tcpto6
        temporary = "%s.tmp.%d" % (table.path, os.getpid())
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                         os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=home)
        except OSError:
            return False
        try:
            try:
                zeros = memoryview(bytes(table.max_bytes))
                while zeros:
                    zeros = zeros[os.write(fd, zeros):]
                mine = os.fstat(fd)
                if os.geteuid() == 0 or (mine.st_uid, mine.st_gid) != \
                        (model.st_uid, model.st_gid):
                    os.fchown(fd, model.st_uid, model.st_gid)
                os.fchmod(fd, model.st_mode & 0o7777)
            finally:
                os.close(fd)
            try:
                os.link(temporary, table.path, src_dir_fd=home,
                        dst_dir_fd=home)
            except FileExistsError:
                pass  # another process created it first: use theirs
        except OSError:
            return False  # tcpto is best effort, as in tcpto.c
        finally:
            try:
                os.unlink(temporary, dir_fd=home)
            except OSError:
                pass
        return True

    def skip(self, ip):
        """tcpto(): True when *ip* timed out recently enough to skip it."""
        table = _TABLES.get(len(ip))
        if table is None:
            return False
        self._was_there[table] = False
        opened = self._open(table)
        if opened is None:
            return False
        fdlock, records = opened
        os.close(fdlock)
        for record in records:
            if record[:table.address] == ip:
                self._was_there[table] = True
                if table.count(record) >= 2:
                    # datetime_sec is a signed long: a record dated in the
                    # future has a negative age, so it is skipped too
                    # (checked against netqmail 1.06; reference §10.1
                    # says otherwise).
                    age = int(time.time()) - table.when(record)
                    return age < (60 + (self._pid & 31)) << 6
                return False
        return False

    def update(self, ip, timed_out):
        """tcpto_err(): record a timeout, or clear a host that answered."""
        table = _TABLES.get(len(ip))
        if table is None:
            return
        if not timed_out and not self._was_there.get(table):
            return
        opened = self._open(table, create=timed_out)
        if opened is None:
            return
        fdlock, records = opened
        try:
            index = self._choose(table, records, ip, timed_out)
            if index is not None:
                os.pwrite(fdlock, bytes(records[index]),
                          index * table.record)
        except OSError:
            pass  # tcpto.c ignores a failed write (/*XXX*/)
        finally:
            os.close(fdlock)

    @staticmethod
    def _choose(table, records, ip, timed_out):
        """Apply tcpto_err's rules in place; the index to write, or None."""
        now = int(time.time())
        for index, record in enumerate(records):
            if record[:table.address] == ip:
                if not timed_out:
                    table.set_count(record, 0)
                    return index
                if table.count(record) and \
                        now < _RETRY_WINDOW + table.when(record):
                    return None
                # ++count on a C char wraps at 127, then caps at 10.
                count = (table.count(record) + 1 + 128) % 256 - 128
                table.set_count(record, min(count, _MAX_COUNT))
                table.set_when(record, now)
                return index
        if not timed_out:
            return None
        for index, record in enumerate(records):
            if not table.count(record):
                break
        else:
            # Replace the record with the smallest last + count * 1024.
            index = min(range(len(records)), key=lambda i: (
                table.when(records[i]) + (table.count(records[i]) << 10), i))
        record = records[index]
        record[:table.address] = ip
        table.set_count(record, 1)
        table.set_when(record, now)
        return index
