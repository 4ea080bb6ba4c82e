"""The compiled kernel's fault guard, and ``ends_line`` on both twins.

A message file is mapped while it is sent.  If another process truncates
it meanwhile, reading a page past its new end raises SIGBUS; an address
with no mapping raises SIGSEGV.  Every kernel loop that reads the caller's
bytes runs under a guard that turns such a fault, in the faulting thread
only, into an ``OSError`` (EFAULT) for that call: one delivery's
``Unable to read message.``, while the process -- and any other delivery
it runs on another thread, as a warm qmail-rspawn worker does -- goes on.
A fault anywhere else, or a signal sent by another process, still gets the
disposition it had before (death by the signal, or faulthandler's dump).

The faults here are real: a ``PROT_NONE`` anonymous mapping (SIGSEGV) and
a file mapping whose file was then truncated (SIGBUS).  The pure twin has
no guard (a fault there kills the process), so the guard tests are for
the compiled kernel; they are skipped in a pure-Python run.
"""

import errno
import mmap
import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import PURE_MODE, PURE_MODE_REASON

compiled = pytest.mark.skipif(PURE_MODE, reason=PURE_MODE_REASON)

PAGE = mmap.PAGESIZE


# --- ends_line, both twins --------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (b"", True), (b"\n", True), (b"a\n", True), (b"a\nb\n", True),
    (b"a", False), (b"\na", False), (b"a\r", False), (b"\n\n.", False),
])
@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview],
                         ids=lambda t: t.__name__)
def test_ends_line(kernel, data, expected, wrap):
    assert kernel.ends_line(wrap(data)) is expected


def test_ends_line_reads_a_view_only(kernel):
    buf = b"abc\ndef"
    with memoryview(buf) as view:
        assert kernel.ends_line(view[:4]) is True
        assert kernel.ends_line(view[:3]) is False
        assert kernel.ends_line(view[4:4]) is True


# --- faults -----------------------------------------------------------------

def _fast():
    from qmailremote import _fast
    return _fast


def _writer():
    sent = []
    writer = _fast().Writer(sent.append)
    writer.begin_body()
    return writer


#: Every kernel entry point that reads the caller's bytes.
READERS = {
    "body_counts": lambda data: _fast().body_counts(data, True),
    "ends_line": lambda data: _fast().ends_line(data),
    "encode": lambda data: _fast().Encoder().encode(data),
    "body": lambda data: _writer().body(data),
    "chunk": lambda data: _writer().chunk(data, True),
}


@pytest.fixture
def unmapped():
    """A readable-looking buffer no byte of which can be read."""
    m = mmap.mmap(-1, 4 * PAGE, prot=0)  # PROT_NONE
    yield m
    m.close()


@pytest.fixture
def truncated(tmp_path):
    """A file mapping whose file was then cut to one page."""
    path = tmp_path / "message"
    path.write_bytes((b"x" * 70 + b"\n") * (16 * PAGE // 71 + 1))
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    os.truncate(path, PAGE)
    yield m
    m.close()


def _assert_fault(exc_info, number):
    exc = exc_info.value
    assert type(exc) is OSError and exc.errno == errno.EFAULT
    assert f"signal {number}" in str(exc)


@compiled
@pytest.mark.parametrize("name", sorted(READERS))
def test_sigsegv_is_an_oserror(name, unmapped):
    with pytest.raises(OSError) as info:
        READERS[name](unmapped)
    _assert_fault(info, signal.SIGSEGV)


@compiled
@pytest.mark.parametrize("name", sorted(READERS))
def test_sigbus_on_a_truncated_mapping_is_an_oserror(name, truncated):
    # ends_line reads the last byte, past the new end; the others fault
    # on the first page they reach beyond it
    with pytest.raises(OSError) as info:
        READERS[name](truncated)
    _assert_fault(info, signal.SIGBUS)
    # the bytes before the cut still read
    with memoryview(truncated) as view, view[:PAGE] as head:
        assert _fast().body_counts(head, True) == (
            head.tobytes().count(b"\n"), 0)


@compiled
def test_fault_in_one_thread_leaves_the_others_running(truncated):
    """Several threads count at once; the one reading the truncated
    mapping gets its OSError, the others their counts, the process lives."""
    data = (b"a\n.b\n" * 200000)
    expected = _fast().body_counts(data, True)
    start = threading.Barrier(5)
    results = {}

    def count(key, source):
        start.wait()
        try:
            for _ in range(20):
                results[key] = _fast().body_counts(source, True)
        except OSError as exc:
            results[key] = exc

    threads = [threading.Thread(target=count, args=(i, data))
               for i in range(4)]
    threads.append(threading.Thread(target=count, args=("bad", truncated)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results.pop("bad"), OSError)
    assert results == {i: expected for i in range(4)}


@compiled
def test_guard_disarmed_after_each_call(unmapped):
    # a fault, then normal calls, then a fault again: each is contained
    for _ in range(3):
        with pytest.raises(OSError):
            _fast().body_counts(unmapped, True)
        assert _fast().body_counts(b"x\n.\n", True) == (2, 1)


def _python(code, *flags):
    # From /: the installed package, not a checkout's qmailremote/ (which
    # has no compiled kernel when the wheel was built elsewhere).
    return subprocess.run([sys.executable, *flags, "-c", code],
                          capture_output=True, timeout=60, cwd="/")


ARM = ("import mmap\n"
       "from qmailremote import _fast\n"
       "m = mmap.mmap(-1, 4096, prot=0)  # PROT_NONE\n"
       "try:\n"
       "    _fast.body_counts(m, True)\n"
       "except OSError:\n"
       "    print('contained', flush=True)\n")


@compiled
def test_fault_outside_the_guard_still_kills():
    # After the guard caught one fault, a fault elsewhere (here: a read
    # at address 0 through ctypes) is not swallowed: death by SIGSEGV.
    done = _python(ARM + "import ctypes\nctypes.string_at(0)\n"
                   "print('survived')\n")
    assert done.stdout == b"contained\n"
    assert done.returncode == -signal.SIGSEGV


@compiled
@pytest.mark.parametrize("number", [signal.SIGBUS, signal.SIGSEGV])
def test_sent_signal_still_kills(number):
    done = _python(ARM + f"import os\nos.kill(os.getpid(), {number})\n"
                   "print('survived')\n")
    assert done.stdout == b"contained\n"
    assert done.returncode == -number


@compiled
def test_faulthandler_installed_first_still_sees_other_faults():
    done = _python(ARM + "import ctypes\nctypes.string_at(0)\n",
                   "-X", "faulthandler")
    assert done.stdout == b"contained\n"
    assert b"Fatal Python error: Segmentation fault" in done.stderr
    assert done.returncode == -signal.SIGSEGV


def _caught():
    """The signals this process catches (/proc/self/status SigCgt)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                mask = int(line.split()[1], 16)
    return {int(n) for n in (signal.SIGSEGV, signal.SIGBUS)
            if mask >> (n - 1) & 1}


@compiled
def test_handler_installed_at_the_first_guarded_call():
    # Importing installs nothing (a program that imports the package and
    # never sends keeps its dispositions); the first guarded call does.
    code = ("import sys\n"
            "sys.path.insert(0, %r)\n"
            "from test_fault_guard import _caught\n"
            "from qmailremote import _fast\n"
            "print(sorted(_caught()))\n"
            "_fast.ends_line(b'x')\n"
            "print(sorted(_caught()))\n" % os.path.dirname(__file__))
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\n")[:2] == [
        b"[]", b"[%d, %d]" % tuple(sorted((signal.SIGBUS, signal.SIGSEGV)))]


# --- a delivery whose mapped message is truncated mid-body ------------------

from smtpserver import (ScriptedServer, call, expect_line, read_some,  # noqa: E402
                        read_to_eof, send)

from qmailremote import deliver  # noqa: E402

#: 16 MiB: more than the client can have read (its 1 MiB buffer, a
#: loopback send buffer of at most 4 MiB, the server's 64 KiB) before the
#: server, which has stopped reading, truncates the file.
BIG = (b"x" * 70 + b"\n") * (16 * (1 << 20) // 71)


def _truncate(path):
    def cut(conn):
        os.truncate(path, PAGE)
    return call(cut)


def _replies(*replies):
    steps = [send(b"220 ok\r\n")]
    for reply in replies:
        steps += [expect_line(), send(reply)]
    return steps


@pytest.fixture
def guard_home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    (tmp_path / "control" / "timeoutremote").write_bytes(b"20\n")
    return tmp_path


@compiled
@pytest.mark.parametrize("profile", ["noesmtp", "esmtp-chunking"])
def test_truncated_while_sent_is_unable_to_read(guard_home, tmp_path,
                                                 profile):
    """The file is cut while the body is on its way: the delivery reports
    ``Unable to read message.`` (temporary) and never ends the body, so
    the server discards it -- where 1.06 (read(), not a mapping) would
    send the shorter message.  The process is not killed by SIGBUS."""
    path = tmp_path / "big"
    path.write_bytes(BIG)
    if profile == "noesmtp":
        (guard_home / "control" / "noesmtp").write_bytes(b"")
        script = _replies(b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n",
                          b"354 go\r\n")
        script += [read_some(65536), _truncate(path), read_to_eof()]
    else:
        script = _replies(b"250-me\r\n250 CHUNKING\r\n", b"250 ok\r\n",
                          b"250 ok\r\n")
        # the first 1 MiB chunk was read whole before the cut; its reply
        # lets the client on to the second, past the new end
        script += [read_some(65536), _truncate(path), send(b"250 ok\r\n"),
                   read_to_eof()]
    with ScriptedServer(script, rcvbuf=65536) as srv:
        (guard_home / "control" / "smtproutes").write_bytes(
            b":127.0.0.1:%d\n" % srv.port)
        out = deliver(b"x.example", b"s@me.example", [b"r@x.example"],
                      str(path), home=str(guard_home)).render()
        srv.wait_done()
    assert out == b"r\0ZUnable to read message. (#4.3.0)\n\0"
    received = srv.received[0]
    assert b"\r\n.\r\n" not in received and b" LAST" not in received
