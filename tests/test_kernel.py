"""The kernel against the byte vectors, on both twins.

Expectations come from :mod:`vectors` and from the small oracles below,
which follow netqmail 1.06 directly: ``blast()`` writing into a simulated
1024-byte ``substdio`` buffer, and ``smtpcode()`` reading byte by byte.
They are written for clarity, not speed, and share no code with the kernel.
"""

import tracemalloc

import pytest

from qmailremote.errors import ConnectionDied, PartialLineError
from vectors import BLAST, CHUNKS, COUNTS, REPLIES

# qmail-remote.c: char smtptobuf[1024].
SMTPTOBUF = 1024
# qmail-remote.c: HUGESMTPTEXT.
HUGESMTPTEXT = 5000
MiB = 1 << 20


# --- oracles ---------------------------------------------------------------

class Substdio:
    """substdio_put/substdio_flush on netqmail's 1024-byte smtpto buffer.

    A put that does not fit in the free space flushes the buffer first;
    ``written`` is everything flushed to the server so far.
    """

    def __init__(self):
        self.buf = bytearray()
        self.written = bytearray()

    def put(self, data):
        if len(data) > SMTPTOBUF - len(self.buf):
            self.flush()
        self.buf += data

    def flush(self):
        self.written += self.buf
        self.buf.clear()


def netqmail_blast(stdin):
    """blast() from qmail-remote.c, line for line.

    Returns ``(wire, partial, progress)``: the bytes that reach the server,
    whether perm_partialline() was called (it exits without flushing), and
    ``progress[k]``, the bytes on the wire once k input bytes are consumed.
    """
    smtpto = Substdio()
    progress = []
    pos = 0

    def get():
        nonlocal pos
        progress.append(len(smtpto.written))
        if pos == len(stdin):
            return None
        pos += 1
        return stdin[pos - 1:pos]

    while True:
        ch = get()
        if ch is None:
            break
        if ch == b".":
            smtpto.put(b".")
        while ch != b"\n":
            smtpto.put(ch)
            ch = get()
            if ch is None:
                return bytes(smtpto.written), True, progress
        smtpto.put(b"\r\n")
    smtpto.put(b".\r\n")
    smtpto.flush()
    return bytes(smtpto.written), False, progress


class Smtpcode:
    """smtpcode() and get() from qmail-remote.c over a byte string.

    ``read()`` returns ``(code, text, digits)`` like the kernel, or raises
    EOFError where netqmail's saferead() would have called dropped().
    """

    def __init__(self, stream):
        self.stream = stream
        self.pos = 0
        self.text = bytearray()

    def get(self):
        if self.pos == len(self.stream):
            raise EOFError
        ch = self.stream[self.pos]
        self.pos += 1
        if ch != 13 and len(self.text) < HUGESMTPTEXT:
            self.text.append(ch)
        return ch

    def read(self):
        self.text = bytearray()
        first = [self.get(), self.get(), self.get()]
        code = 0
        for ch in first:  # unsigned long arithmetic
            code = (code * 10 + (ch - 48)) % (1 << 64)
        digits = all(48 <= ch <= 57 for ch in first)
        while True:
            ch = self.get()
            if ch != 45:  # '-'
                break
            while ch != 10:
                ch = self.get()
            self.get()
            self.get()
            self.get()
        while ch != 10:
            ch = self.get()
        return code, bytes(self.text), digits


def smtpcode_all(stream):
    """Every reply smtpcode() completes before EOF."""
    oracle = Smtpcode(stream)
    replies = []
    while True:
        try:
            replies.append(oracle.read())
        except EOFError:
            return replies


# --- helpers ---------------------------------------------------------------

def encode_chunks(kernel, chunks):
    """Encoder output for *chunks*, and whether finish() saw a partial line."""
    encoder = kernel.Encoder()
    out = b"".join(encoder.encode(chunk) for chunk in chunks)
    try:
        return out + encoder.finish(), False
    except PartialLineError:
        return out, True


def split_every(data, n):
    return [data[i:i + n] for i in range(0, len(data), n)]


class Wire:
    """A ``send`` that appends to a bytearray, as a socket's sendall would."""

    def __init__(self):
        self.data = bytearray()
        self.calls = 0

    def __call__(self, data):
        self.calls += 1
        self.data += data


COMMAND = b"DATA\r\n"


def writer_body(kernel, chunks, size=None, progress=None, commit=None,
                reuse=False):
    """Send *chunks* as a body the way the session does.

    ``DATA`` is written and flushed first, so offsets in the body are after
    it.  Returns ``(body wire bytes, partial)``.  With *progress* (from
    :func:`netqmail_blast`), check after each chunk that the writer has sent
    no more than netqmail would have, and, when ``commit(i)`` is true for
    chunk *i* (default: always), exactly as much after flush_committed().
    With *reuse*, each chunk is passed as a memoryview of one buffer that is
    overwritten after the call, as the session's readinto() loop does.
    """
    wire = Wire()
    writer = kernel.Writer(wire) if size is None else kernel.Writer(wire, size)
    writer.write(COMMAND)
    writer.flush()
    assert bytes(wire.data) == COMMAND
    writer.begin_body()
    consumed = 0
    for i, chunk in enumerate(chunks):
        if reuse:
            scratch = bytearray(chunk)
            with memoryview(scratch) as view:
                writer.body(view)
            scratch[:] = b"." * len(scratch)
        else:
            writer.body(chunk)
        consumed += len(chunk)
        assert writer.sent == len(wire.data)
        if progress is not None:
            assert writer.sent - len(COMMAND) <= progress[consumed]
            if commit is None or commit(i):
                writer.flush_committed()
                assert writer.sent - len(COMMAND) == progress[consumed]
    try:
        writer.end_body()
    except PartialLineError:
        partial = True
    else:
        partial = False
        writer.flush()
        assert writer.pending == 0
    assert writer.sent == len(wire.data)
    return bytes(wire.data[len(COMMAND):]), partial


class Peer:
    """A ``recv`` that hands out fixed pieces, then b"" (EOF).

    Reading past EOF is a test failure: the reader must stop at the end of
    a reply and never wait for bytes it does not need.
    """

    def __init__(self, pieces):
        self.pieces = [bytes(p) for p in pieces if p]
        self.eof_reads = 0

    def __call__(self):
        if self.pieces:
            return self.pieces.pop(0)
        self.eof_reads += 1
        assert self.eof_reads == 1, "recv() called again after EOF"
        return b""


def read_all(kernel, pieces, count):
    """Read *count* replies, then assert the next read is a drop."""
    peer = Peer(pieces)
    reader = kernel.ReplyReader(peer)
    replies = [reader.read() for _ in range(count)]
    assert not peer.pieces, "bytes left unread"
    with pytest.raises(ConnectionDied):
        reader.read()
    return replies


BLAST_IDS = [v.id for v in BLAST]
REPLY_IDS = [v.id for v in REPLIES]


# --- the oracles agree with the vectors ------------------------------------

@pytest.mark.parametrize("vector", BLAST, ids=BLAST_IDS)
def test_blast_oracle_matches_vectors(vector):
    wire, partial, progress = netqmail_blast(vector.stdin)
    assert (wire, partial) == (vector.wire, vector.partial)
    assert len(progress) == len(vector.stdin) + 1
    assert vector.encoded.startswith(wire) or not vector.partial


@pytest.mark.parametrize("vector", REPLIES, ids=REPLY_IDS)
def test_smtpcode_oracle_matches_vectors(vector):
    oracle = Smtpcode(vector.wire)
    got = [oracle.read() for _ in vector.replies]
    assert tuple(got) == vector.replies
    assert oracle.pos == len(vector.wire)


def test_errors_are_shared(kernel):
    # Both twins raise the classes from errors.py, so no except clause
    # depends on which kernel is active.
    assert kernel.PartialLineError is PartialLineError
    assert kernel.ConnectionDied is ConnectionDied


def test_constants(kernel):
    assert (kernel.QMAIL_BLOCK, kernel.HUGESMTPTEXT) == (SMTPTOBUF,
                                                         HUGESMTPTEXT)
    assert kernel.DEFAULT_BUFFER >= SMTPTOBUF


# --- Encoder ---------------------------------------------------------------

@pytest.mark.parametrize("vector", BLAST, ids=BLAST_IDS)
def test_encoder_whole(kernel, vector):
    assert encode_chunks(kernel, [vector.stdin]) == (vector.encoded,
                                                     vector.partial)


@pytest.mark.parametrize("vector", BLAST, ids=BLAST_IDS)
def test_encoder_byte_by_byte(kernel, vector):
    chunks = split_every(vector.stdin, 1)
    assert encode_chunks(kernel, chunks) == (vector.encoded, vector.partial)


@pytest.mark.parametrize("vector", BLAST, ids=BLAST_IDS)
def test_encoder_empty_chunks_change_nothing(kernel, vector):
    chunks = [b""]
    for piece in split_every(vector.stdin, 2):
        chunks += [piece, b""]
    assert encode_chunks(kernel, chunks) == (vector.encoded, vector.partial)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview],
                         ids=lambda t: t.__name__)
def test_encoder_takes_any_buffer(kernel, wrap):
    vector = BLAST[BLAST_IDS.index("smuggle-lf-dot")]
    encoder = kernel.Encoder()
    out = encoder.encode(wrap(vector.stdin))
    assert type(out) is bytes
    assert out + encoder.finish() == vector.encoded


def test_encoder_finish_is_repeatable(kernel):
    encoder = kernel.Encoder()
    assert encoder.finish() == b".\r\n"
    encoder.encode(b"a")
    for _ in range(2):
        with pytest.raises(PartialLineError):
            encoder.finish()


def text_chunk(size=MiB):
    """Mail-like text: 76-byte lines, LF endings, one line in 20 dotted."""
    group = b"x" * 75 + b"\n"
    block = group * 19 + b"." + b"x" * 74 + b"\n"
    return (block * (size // len(block) + 1))[:size - 1] + b"\n"


ENCODER_PAYLOADS = {
    "text": text_chunk(),
    "dot-lines": (b"." + b"x" * 74 + b"\n") * (MiB // 76),
    "dot-lf-lines": b".\n" * (MiB // 2),
    "lf-lines": b"\n" * MiB,
}


@pytest.mark.parametrize("payload", list(ENCODER_PAYLOADS))
def test_encoder_memory_is_per_chunk(kernel, payload):
    """16 MiB in 1 MiB chunks: the encoder holds a few chunks at most.

    The output of one chunk is at most twice its size, so a peak of four
    chunks leaves room for one intermediate copy and nothing per line.
    """
    chunk = ENCODER_PAYLOADS[payload]
    encoder = kernel.Encoder()
    tracemalloc.start()
    try:
        for _ in range(16):
            encoder.encode(chunk)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 4 * len(chunk) + 64 * 1024, (
                f"peak {peak} bytes for {len(chunk)}-byte chunks")
    finally:
        tracemalloc.stop()
    assert encoder.finish() == b".\r\n"


# --- Writer ----------------------------------------------------------------

SIZES = [1024, 4096, None]
SIZE_IDS = ["size1024", "size4096", "default"]


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("vector", BLAST, ids=BLAST_IDS)
def test_writer_whole(kernel, vector, size):
    _, _, progress = netqmail_blast(vector.stdin)
    got = writer_body(kernel, [vector.stdin], size, progress)
    assert got == (vector.wire, vector.partial)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("vector", BLAST, ids=BLAST_IDS)
def test_writer_byte_by_byte(kernel, vector, size):
    _, _, progress = netqmail_blast(vector.stdin)
    chunks = split_every(vector.stdin, 1)
    got = writer_body(kernel, chunks, size, progress)
    assert got == (vector.wire, vector.partial)


@pytest.mark.parametrize("vector", BLAST, ids=BLAST_IDS)
def test_writer_reused_input_buffer(kernel, vector):
    chunks = split_every(vector.stdin, 7)
    got = writer_body(kernel, chunks, 1024, reuse=True)
    assert got == (vector.wire, vector.partial)


def _boundary_messages():
    """Lines of lengths around 1024 crossing many block boundaries."""
    messages = {}
    for n in (1021, 1022, 1023, 1024, 1025, 2046, 2047, 2048):
        line = b"a" * n + b"\n"
        messages[f"{n}-lf-x3"] = line * 3
        messages[f"{n}-lf-x3-partial"] = line * 3 + b"z"
        messages[f"dot{n}-lf-x3-partial"] = (b"." + line) * 3 + b"."
        messages[f"{n}-cr-lf-partial"] = (b"a" * n + b"\r\n") * 2 + b"q"
        messages[f"{n}-bare-cr-partial"] = b"a" * n + b"\r" * 3 + b"x"
    # Short lines whose CRLFs land on every offset of a block.
    messages["short-lines-partial"] = b"".join(
        b"." * (i % 3) + b"b" * (i % 7) + b"\n" for i in range(900)) + b"e"
    messages["empty-lines-partial"] = b"\n" * 1500 + b"e"
    messages["3000y"] = b"y" * 3000
    messages["1023y-lf-1023y"] = b"y" * 1023 + b"\n" + b"y" * 1023
    return messages


BOUNDARY = _boundary_messages()


@pytest.mark.parametrize("chunk", [1, 7, 1000, 1024, 4096, 1 << 30],
                         ids=lambda n: f"chunk{n}")
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("name", list(BOUNDARY))
def test_writer_boundaries_match_substdio(kernel, name, size, chunk):
    stdin = BOUNDARY[name]
    wire, partial, progress = netqmail_blast(stdin)
    checked = progress if chunk >= 1000 else None  # keep it quick
    got = writer_body(kernel, split_every(stdin, chunk), size, checked)
    assert got == (wire, partial)


@pytest.mark.parametrize("vector", [v for v in BLAST if v.partial],
                         ids=[v.id for v in BLAST if v.partial])
def test_partial_line_sends_only_flushed_blocks(kernel, vector):
    # With the default (large) buffer nothing is sent during the body: all
    # of it goes out in end_body(), which must stop where netqmail stopped.
    wire = Wire()
    writer = kernel.Writer(wire)
    writer.begin_body()
    writer.body(vector.stdin)
    assert wire.data == b""
    with pytest.raises(PartialLineError):
        writer.end_body()
    assert bytes(wire.data) == vector.wire
    assert writer.sent == len(vector.wire)


def test_writer_blocks_count_from_body_start(kernel):
    # netqmail's buffer is empty when the body starts (DATA was flushed);
    # bytes a caller left buffered before begin_body() are simply sent.
    wire = Wire()
    writer = kernel.Writer(wire)
    writer.write(b"x" * 10)
    writer.begin_body()
    writer.body(b"y" * 3000)
    with pytest.raises(PartialLineError):
        writer.end_body()
    assert bytes(wire.data) == b"x" * 10 + b"y" * 2048


def test_writer_commands(kernel):
    wire = Wire()
    writer = kernel.Writer(wire)
    writer.write(b"HELO me.example\r\n")
    writer.write(memoryview(b"MAIL FROM:<a@b>\r\n"))
    assert (writer.pending, writer.sent, wire.calls) == (34, 0, 0)
    writer.flush()
    assert bytes(wire.data) == b"HELO me.example\r\nMAIL FROM:<a@b>\r\n"
    assert (writer.pending, writer.sent, wire.calls) == (0, 34, 1)
    writer.flush()
    assert wire.calls == 1, "an empty flush must not call send"


def test_writer_quit_after_body(kernel):
    wire = Wire()
    writer = kernel.Writer(wire)
    writer.write(b"DATA\r\n")
    writer.flush()
    writer.begin_body()
    writer.body(b"Subject: t\n\nhi\n")
    writer.end_body()
    writer.flush()
    writer.write(b"QUIT\r\n")
    writer.flush()
    assert bytes(wire.data) == (b"DATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n"
                                b"QUIT\r\n")


def test_writer_large_command(kernel):
    wire = Wire()
    writer = kernel.Writer(wire, 1024)
    command = b"RCPT TO:<" + b"r" * 10 * MiB + b">\r\n"
    writer.write(command)
    writer.flush()
    assert wire.data == command


def test_writer_send_error_propagates(kernel):
    def send(data):
        raise ConnectionDied()

    writer = kernel.Writer(send, 1024)
    writer.begin_body()
    with pytest.raises(ConnectionDied):
        writer.body(b"y" * 3000 + b"\n")


def test_writer_send_error_on_partial_line(kernel):
    # netqmail's write of the full block fails before perm_partialline().
    def send(data):
        raise ConnectionDied()

    writer = kernel.Writer(send)
    writer.begin_body()
    writer.body(b"y" * 3000)
    with pytest.raises(ConnectionDied):
        writer.end_body()


@pytest.mark.parametrize("size", [64 * 1024, None], ids=["size64k", "default"])
def test_writer_memory_is_bounded(kernel, size):
    """64 MiB in 1 MiB chunks: never more than size + one encoded chunk."""
    chunk = text_chunk()
    encoded = len(kernel.Encoder().encode(chunk))
    total = 0

    def discard(data):
        nonlocal total
        total += len(data)

    writer = (kernel.Writer(discard) if size is None
              else kernel.Writer(discard, size))
    limit = (size or kernel.DEFAULT_BUFFER) + encoded
    writer.begin_body()
    tracemalloc.start()
    try:
        for _ in range(64):
            writer.body(chunk)
            assert writer.pending <= limit
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    writer.end_body()
    writer.flush()
    assert total == 64 * encoded + 3
    assert peak < limit + 4 * MiB


# --- ReplyReader -----------------------------------------------------------

@pytest.mark.parametrize("vector", REPLIES, ids=REPLY_IDS)
def test_reply_vector(kernel, vector):
    got = read_all(kernel, [vector.wire], len(vector.replies))
    assert tuple(got) == vector.replies
    for code, text, digits in got:
        assert type(code) is int and type(text) is bytes
        assert type(digits) is bool


@pytest.mark.parametrize("vector", REPLIES, ids=REPLY_IDS)
def test_reply_split_everywhere(kernel, vector):
    wire = vector.wire
    for cut in range(1, len(wire)):
        got = read_all(kernel, [wire[:cut], wire[cut:]], len(vector.replies))
        assert tuple(got) == vector.replies, f"split at {cut}"


@pytest.mark.parametrize("vector", REPLIES, ids=REPLY_IDS)
def test_reply_byte_by_byte(kernel, vector):
    got = read_all(kernel, split_every(vector.wire, 1), len(vector.replies))
    assert tuple(got) == vector.replies


@pytest.mark.parametrize("vector", REPLIES, ids=REPLY_IDS)
def test_reply_eof_inside_is_a_drop(kernel, vector):
    # Cut the stream anywhere inside its last reply: the replies before it
    # are read, then the cut one is a drop.
    wire = vector.wire
    oracle = Smtpcode(wire)
    for _ in vector.replies[:-1]:
        oracle.read()
    last_start = oracle.pos
    for cut in range(last_start, len(wire)):
        peer = Peer([wire[:cut]])
        reader = kernel.ReplyReader(peer)
        for expected in vector.replies[:-1]:
            assert reader.read() == expected
        with pytest.raises(ConnectionDied):
            reader.read()


def test_reply_empty_stream_is_a_drop(kernel):
    with pytest.raises(ConnectionDied):
        kernel.ReplyReader(Peer([])).read()


def test_reply_does_not_read_ahead(kernel):
    # Two replies arrive in one piece: the second needs no further recv.
    calls = []

    def recv():
        calls.append(1)
        assert len(calls) == 1, "read() asked for bytes it did not need"
        return b"250 a\r\n354 b\r\n"

    reader = kernel.ReplyReader(recv)
    assert reader.read() == (250, b"250 a\n", True)
    assert reader.read() == (354, b"354 b\n", True)


@pytest.mark.parametrize("error", [OSError(104, "reset"), TimeoutError()],
                         ids=["oserror", "timeout"])
@pytest.mark.parametrize("before", [b"", b"250-partial\r\n25"],
                         ids=["at-start", "mid-reply"])
def test_reply_recv_error_propagates(kernel, error, before):
    pieces = [before] if before else []

    def recv():
        if pieces:
            return pieces.pop()
        raise error

    with pytest.raises(type(error)) as info:
        kernel.ReplyReader(recv).read()
    assert info.value is error


def _capped(text):
    return text.replace(b"\r", b"")[:HUGESMTPTEXT]


CAP_CASES = {
    # Over the cap: cut, not ending in LF, the rest read and discarded.
    "over": b"250-" + b"x" * 6000 + b"\r\n250 " + b"y" * 100 + b"\r\n",
    # Exactly 5000 stored bytes, the last one LF: nothing cut.
    "exact": b"250 " + b"x" * 4995 + b"\r\n",
    "exact-plus-one": b"250 " + b"x" * 4996 + b"\r\n",
    # CR is not stored, so it does not count towards the cap.
    "crs-dont-count": b"250 " + b"\r" * 7000 + b"x" * 4995 + b"\r\n",
    # Many continuation lines, each one short.
    "many-lines": b"".join(b"250-line %04d\r\n" % i for i in range(600))
                  + b"250 end\r\n",
}


@pytest.mark.parametrize("name", list(CAP_CASES))
def test_reply_text_cap(kernel, name):
    first = CAP_CASES[name]
    wire = first + b"354 go ahead\r\n"
    expected_text = _capped(first)
    for pieces in ([wire], split_every(wire, 128), split_every(wire, 4999),
                   [wire[:4999], wire[4999:5001], wire[5001:]]):
        (code, text, digits), second = read_all(kernel, pieces, 2)
        assert (code, digits) == (250, True)
        assert text == expected_text
        assert len(text) <= HUGESMTPTEXT
        assert second == (354, b"354 go ahead\n", True)
    if len(first.replace(b"\r", b"")) > HUGESMTPTEXT:
        assert len(text) == HUGESMTPTEXT and not text.endswith(b"\n")
    else:
        assert text.endswith(b"\n")


# --- body_counts -----------------------------------------------------------

def counts_by_lines(data, at_line_start):
    """``(lfs, dots)`` from the lines: each line after an LF, and the first
    when *at_line_start*, adds a dot when it starts with one."""
    lines = bytes(data).split(b"\n")
    dots = sum(1 for i, line in enumerate(lines)
               if line[:1] == b"." and (i or at_line_start))
    return len(lines) - 1, dots


def counts_byte_by_byte(data, at_line_start):
    """The same, one byte at a time, as blast() meets them."""
    lfs = dots = 0
    line_start = at_line_start
    for ch in bytes(data):
        if line_start and ch == 46:
            dots += 1
        line_start = ch == 10
        lfs += line_start
    return lfs, dots


COUNT_IDS = [v.id for v in COUNTS]
CHUNK_IDS = [v.id for v in CHUNKS]


@pytest.mark.parametrize("vector", COUNTS, ids=COUNT_IDS)
def test_count_oracles_match_vectors(vector):
    expected = (vector.lfs, vector.dots)
    assert counts_by_lines(vector.data, vector.at_line_start) == expected
    assert counts_byte_by_byte(vector.data, vector.at_line_start) == expected


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview],
                         ids=lambda t: t.__name__)
@pytest.mark.parametrize("vector", COUNTS, ids=COUNT_IDS)
def test_body_counts_vector(kernel, vector, wrap):
    got = kernel.body_counts(wrap(vector.data), vector.at_line_start)
    assert got == (vector.lfs, vector.dots)
    assert type(got) is tuple and all(type(n) is int for n in got)


@pytest.mark.parametrize("vector", COUNTS, ids=COUNT_IDS)
def test_body_counts_split_everywhere(kernel, vector):
    # Counting a message in two chunks, the second at a line start when the
    # first ended in LF, gives the counts of the whole.
    data = vector.data
    for cut in range(len(data) + 1):
        head, tail = data[:cut], data[cut:]
        a = kernel.body_counts(head, vector.at_line_start)
        after = head[-1:] == b"\n" if head else vector.at_line_start
        b = kernel.body_counts(tail, after)
        assert (a[0] + b[0], a[1] + b[1]) == (vector.lfs, vector.dots), cut


@pytest.mark.parametrize("vector", COUNTS, ids=COUNT_IDS)
def test_body_counts_unaligned_views(kernel, vector):
    # The SIMD loads are unaligned: a view at any offset of a larger buffer
    # counts its own bytes only, not the bytes around it.
    for offset in range(17):
        buf = b"\n" * offset + vector.data + b"\n." * 9
        with memoryview(buf)[offset:offset + len(vector.data)] as view:
            got = kernel.body_counts(view, vector.at_line_start)
        assert got == (vector.lfs, vector.dots), offset


def test_body_counts_agrees_with_encoder(kernel):
    # What body_counts says the body adds is what the encoder adds.
    for vector in BLAST:
        if vector.partial:
            continue
        lfs, dots = kernel.body_counts(vector.stdin, True)
        assert len(vector.encoded) == len(vector.stdin) + lfs + dots + 3


SIMD_LENGTHS = [15, 16, 17, 31, 32, 33]


@pytest.mark.parametrize("n", SIMD_LENGTHS)
def test_body_counts_simd_boundaries(kernel, n):
    """An LF, with or without a dot after it, at every position of n bytes.

    The 16-byte blocks compare a block and the block one byte on; the
    scalar tail takes what is left.  Every position is on one side or the
    other of a boundary for some n.
    """
    cases = 0
    for fill in (b"a", b".", b"\xae", b"\x8a", b"\r"):
        for at_line_start in (True, False):
            for p in range(n):
                for dot_after in (False, True):
                    data = bytearray(fill * n)
                    data[p] = 10
                    if dot_after and p + 1 < n:
                        data[p + 1] = 46
                    data = bytes(data)
                    got = kernel.body_counts(data, at_line_start)
                    assert got == counts_by_lines(data, at_line_start), data
                    cases += 1
            # LFs at every position, and LFs with dots at every other one.
            for data in (b"\n" * n, (b"\n." * n)[:n], (b".\n" * n)[:n],
                         (fill + b"\n") * (n // 2) + fill * (n % 2)):
                got = kernel.body_counts(data, at_line_start)
                assert got == counts_by_lines(data, at_line_start), data
                cases += 1
    assert cases == 5 * 2 * (2 * n + 4)


@pytest.mark.parametrize("n", SIMD_LENGTHS)
def test_body_counts_simd_every_lf_subset_of_a_block(kernel, n):
    # Every set of LF positions in the first 16 bytes (2**16 of them would
    # be slow: every set over bytes 8..16 plus dots after all of them).
    base = bytearray(b"." * n)
    for mask in range(1 << min(9, n - 7)):
        data = bytearray(base)
        for bit in range(min(9, n - 7)):
            if mask >> bit & 1:
                data[7 + bit] = 10
        data = bytes(data)
        assert kernel.body_counts(data, False) == counts_by_lines(data, False)


def test_body_counts_large(kernel):
    # A few MiB: mail-like text, then pathological all-LF and all-".\n".
    text = text_chunk(3 * MiB)
    assert kernel.body_counts(text, True) == counts_by_lines(text, True)
    lfs = b"\n" * (3 * MiB + 5)
    assert kernel.body_counts(lfs, True) == (3 * MiB + 5, 0)
    dotted = b".\n" * (MiB + 3)
    assert kernel.body_counts(dotted, True) == (MiB + 3, MiB + 3)
    assert kernel.body_counts(dotted, False) == (MiB + 3, MiB + 2)
    binary = bytes(range(256)) * (4 * MiB // 256)
    # One LF in 256 bytes, followed by 0x0b: no dots.
    assert kernel.body_counts(binary, True) == (4 * MiB // 256, 0)
    block = bytearray(range(256))
    block[11] = 46                      # every LF now followed by "."
    dotted_binary = bytes(block) * (4 * MiB // 256)
    assert kernel.body_counts(dotted_binary, False) == (4 * MiB // 256,
                                                        4 * MiB // 256)
    assert kernel.body_counts(binary, True) == counts_by_lines(binary, True)


def test_body_counts_rejects_text(kernel):
    with pytest.raises(TypeError):
        kernel.body_counts("a\n.b\n", True)


# --- Writer.chunk ----------------------------------------------------------

def bdat(data, last):
    """The oracle: the BDAT command, then every LF as CRLF."""
    body = bytes(data).replace(b"\n", b"\r\n")
    return b"BDAT %d%s\r\n" % (len(body), b" LAST" if last else b"") + body


@pytest.mark.parametrize("vector", CHUNKS, ids=CHUNK_IDS)
def test_chunk_oracle_matches_vectors(vector):
    assert bdat(vector.data, vector.last) == vector.wire


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview],
                         ids=lambda t: t.__name__)
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("vector", CHUNKS, ids=CHUNK_IDS)
def test_chunk_vector(kernel, vector, size, wrap):
    wire = Wire()
    writer = kernel.Writer(wire) if size is None else kernel.Writer(wire,
                                                                    size)
    writer.chunk(wrap(vector.data), vector.last)
    # Nothing is sent until flush, whatever the buffer size.
    assert (wire.calls, writer.sent) == (0, 0)
    assert writer.pending == len(vector.wire)
    writer.flush()
    assert bytes(wire.data) == vector.wire
    assert (writer.pending, writer.sent) == (0, len(vector.wire))


def test_chunk_last_is_a_flag(kernel):
    # Any truthy value means LAST, any falsy one means not.
    for last, word in ((1, b" LAST"), (0, b""), (True, b" LAST"),
                       (False, b"")):
        wire = Wire()
        writer = kernel.Writer(wire)
        writer.chunk(b"x\n", last)
        writer.flush()
        assert bytes(wire.data) == b"BDAT 3%s\r\nx\r\n" % word


def test_chunk_after_commands_and_before_flush(kernel):
    # The pipelined write: MAIL, RCPT and the whole message in one send.
    wire = Wire()
    writer = kernel.Writer(wire)
    writer.write(b"MAIL FROM:<a@b>\r\n")
    writer.write(b"RCPT TO:<c@d>\r\n")
    writer.chunk(b"hi\n.\n", True)
    assert wire.calls == 0
    writer.flush()
    assert wire.calls == 1
    assert bytes(wire.data) == (b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
                                b"BDAT 7 LAST\r\nhi\r\n.\r\n")


def test_chunks_in_a_row(kernel):
    wire = Wire()
    writer = kernel.Writer(wire, 1024)
    pieces = [b"a" * 3000 + b"\n", b"", b".\n" * 700, b"tail\n"]
    for i, piece in enumerate(pieces):
        writer.chunk(piece, i == len(pieces) - 1)
    assert wire.calls == 0, "chunk() must not send, even past the size"
    writer.flush()
    assert bytes(wire.data) == b"".join(
        bdat(p, i == len(pieces) - 1) for i, p in enumerate(pieces))


def test_chunk_copies_its_input(kernel):
    # The session's chunks are views of a buffer that is reused for the
    # next one: chunk() must take the bytes at the call, not at flush.
    wire = Wire()
    writer = kernel.Writer(wire)
    scratch = bytearray(b"one\ntwo\n")
    with memoryview(scratch) as view:
        writer.chunk(view, False)
    scratch[:] = b"XXX\nXXX\n"
    writer.chunk(scratch, True)
    writer.flush()
    assert bytes(wire.data) == (bdat(b"one\ntwo\n", False) +
                                bdat(b"XXX\nXXX\n", True))


def test_chunk_then_quit(kernel):
    wire = Wire()
    writer = kernel.Writer(wire)
    writer.chunk(b"m\n", True)
    writer.flush()
    writer.write(b"QUIT\r\n")
    writer.flush()
    assert bytes(wire.data) == b"BDAT 3 LAST\r\nm\r\nQUIT\r\n"


def test_chunk_leaves_the_body_state_alone(kernel):
    # A BDAT chunk between DATA bodies of two messages changes nothing in
    # the encoder's line state (a chunk ending mid-line, then a body).
    wire = Wire()
    writer = kernel.Writer(wire)
    writer.chunk(b"mid-line", False)
    writer.begin_body()
    writer.body(b".x\n")
    writer.end_body()
    writer.flush()
    assert bytes(wire.data) == b"BDAT 8\r\nmid-line" + b"..x\r\n.\r\n"


@pytest.mark.parametrize("n", SIMD_LENGTHS)
def test_chunk_lf_at_every_position(kernel, n):
    for fill in (b"a", b".", b"\r", b"\x8a"):
        for p in range(n):
            data = bytearray(fill * n)
            data[p] = 10
            wire = Wire()
            writer = kernel.Writer(wire)
            writer.chunk(data, p % 2 == 0)
            writer.flush()
            assert bytes(wire.data) == bdat(data, p % 2 == 0)
        wire = Wire()
        writer = kernel.Writer(wire)
        writer.chunk(b"\n" * n, True)
        writer.flush()
        assert bytes(wire.data) == bdat(b"\n" * n, True)


def test_chunk_large(kernel):
    wire = Wire()
    writer = kernel.Writer(wire)
    for data in (text_chunk(3 * MiB), b"\n" * (2 * MiB + 1),
                 bytes(range(256)) * (MiB // 256)):
        wire.data.clear()
        writer.chunk(data, False)
        writer.flush()
        assert bytes(wire.data) == bdat(data, False)


def test_chunk_send_error_propagates_at_flush(kernel):
    def send(data):
        raise ConnectionDied()

    writer = kernel.Writer(send, 1024)
    writer.chunk(b"y" * 5000 + b"\n", True)    # buffered: nothing sent yet
    with pytest.raises(ConnectionDied):
        writer.flush()


def test_chunk_rejects_text(kernel):
    writer = kernel.Writer(Wire())
    with pytest.raises(TypeError):
        writer.chunk("a\n", True)


# Chunk lengths where the wire size (between n and 2n) may or may not have
# as many digits as n: the BDAT command's length is then known before the
# data is copied, or not.
DIGIT_EDGES = [1, 4, 5, 9, 10, 49, 50, 99, 100, 499, 500, 999, 1000, 4999,
               5000, 9999, 10000, 49999, 50000, 99999, 100000, 499999,
               500000, 999999, 1000000, MiB]


@pytest.mark.parametrize("n", DIGIT_EDGES)
def test_chunk_command_digits(kernel, n):
    for data in (b"a" * n, b"\n" * n, (b"a\n" * n)[:n], (b"\n" * 9 + b"x") *
                 (n // 10) + b"\n" * (n % 10)):
        for last in (False, True):
            wire = Wire()
            writer = kernel.Writer(wire)
            writer.write(b"RCPT TO:<a@b>\r\n")
            writer.chunk(data, last)
            writer.chunk(b"\n", False)     # the next chunk lands right after
            writer.flush()
            assert bytes(wire.data) == (b"RCPT TO:<a@b>\r\n" + bdat(data, last)
                                        + bdat(b"\n", False))


@pytest.mark.parametrize("call", [
    lambda k: k.Encoder().encode(5),
    lambda k: k.body_counts(5, True),
    lambda k: k.Writer(bytearray().extend).body(5),
    lambda k: k.Writer(bytearray().extend).chunk(5, True),
], ids=["encode", "body_counts", "body", "chunk"])
def test_an_int_is_not_a_buffer_in_either_kernel(kernel, call):
    """bytes(5) would be five NULs: both twins refuse what has no buffer."""
    with pytest.raises(TypeError):
        call(kernel)
