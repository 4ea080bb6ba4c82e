"""Byte vectors for the kernel: the one table both twins are tested against.

Every row of the reference's section 13 table (``blast()``: stdin -> bytes
after the 354 reply) and every example of section 12 (``smtpcode()``: bytes
from the server -> code, stored text, digits flag) is here, plus a few
boundary cases worked out by hand from netqmail's 1024-byte ``smtpto``
buffer.  Plain data: the tests decide how to feed it.
"""

from typing import NamedTuple

__all__ = ["BlastVector", "ReplyVector", "BLAST", "REPLIES", "PRINTED",
           "PARTIAL_LINE_REPORT", "CountVector", "COUNTS", "ChunkVector",
           "CHUNKS"]

# The message report for a partial final line (reference section 13).
PARTIAL_LINE_REPORT = (b"DSMTP cannot transfer messages with partial final "
                       b"lines. (#5.6.2)\n")


class BlastVector(NamedTuple):
    """One message body.

    *encoded* is everything ``blast()`` puts into the ``smtpto`` buffer
    (with the ``.\\r\\n`` terminator when the message is complete); *wire*
    is what reaches the server.  They differ only for a partial final
    line, where netqmail exits without flushing: the wire then holds only
    the 1024-byte buffers that were already full.
    """

    id: str
    stdin: bytes
    encoded: bytes
    wire: bytes
    partial: bool


def _complete(id, stdin, wire):
    return BlastVector(id, stdin, wire, wire, False)


def _partial(id, stdin, encoded, wire=b""):
    return BlastVector(id, stdin, encoded, wire, True)


EVIL = b"RCPT TO:<evil@x>"

BLAST = [
    # Reference section 13, row by row.
    _complete("empty", b"", b".\r\n"),
    _complete("lf", b"\n", b"\r\n.\r\n"),
    _complete("x-lf-lf-lf", b"x\n\n\n", b"x\r\n\r\n\r\n.\r\n"),
    _complete("dot-lines", b".\n..x\n.\n", b"..\r\n...x\r\n..\r\n.\r\n"),
    _complete("dotdot", b"..\n", b"...\r\n.\r\n"),
    _complete("space-dot", b" .\n", b" .\r\n.\r\n"),
    _complete("dot-crlf", b".\r\n", b"..\r\r\n.\r\n"),
    _complete("crlf-dot-crlf", b"\r\n.\r\n", b"\r\r\n..\r\r\n.\r\n"),
    _complete("crlf-lines", b"a\r\n.\r\nb\r\n",
              b"a\r\r\n..\r\r\nb\r\r\n.\r\n"),
    _complete("mixed-endings", b"a\r\n.\nb\n", b"a\r\r\n..\r\nb\r\n.\r\n"),
    _complete("bare-cr", b"a\rb\rc\n", b"a\rb\rc\r\n.\r\n"),
    _complete("cr-cr-lf", b"a\r\r\nb\n", b"a\r\r\r\nb\r\n.\r\n"),
    _complete("smuggle-cr-dot", b"a\r.\r\n" + EVIL + b"\r\n",
              b"a\r.\r\r\n" + EVIL + b"\r\r\n.\r\n"),
    _complete("smuggle-lf-dot", b"a\n.\r\n" + EVIL + b"\n",
              b"a\r\n..\r\r\n" + EVIL + b"\r\n.\r\n"),
    _complete("8bit", b"\xe9\xff\x80\n", b"\xe9\xff\x80\r\n.\r\n"),
    _complete("nul", b"a\0b\n", b"a\0b\r\n.\r\n"),
    _complete("long-line-5000", b"x" * 5000 + b"\n",
              b"x" * 5000 + b"\r\n.\r\n"),
    _partial("partial-abc", b"abc", b"abc"),
    _partial("partial-abc-cr", b"abc\r", b"abc\r"),
    _partial("partial-cr", b"\r", b"\r"),
    _partial("partial-dot", b".", b".."),
    _partial("partial-after-line", b"a\n.", b"a\r\n.."),
    _partial("partial-3000y", b"y" * 3000, b"y" * 3000, b"y" * 2048),
    # Block boundaries, by hand: every put is one byte except the "\r\n" of
    # an input LF; a put that does not fit flushes the buffer first.
    _partial("partial-1024a", b"a" * 1024, b"a" * 1024),
    _partial("partial-1025a", b"a" * 1025, b"a" * 1025, b"a" * 1024),
    # 1023 bytes, then "\r\n" does not fit: a 1023-byte flush.
    _partial("partial-1023a-lf-b", b"a" * 1023 + b"\nb",
             b"a" * 1023 + b"\r\nb", b"a" * 1023),
    # 1022 bytes + "\r\n" fill the buffer exactly; "b" flushes it.
    _partial("partial-1022a-lf-b", b"a" * 1022 + b"\nb",
             b"a" * 1022 + b"\r\nb", b"a" * 1022 + b"\r\n"),
    # The doubled dot is a put of its own and counts towards the block.
    _partial("partial-dot-1021a-lf-b", b"." + b"a" * 1021 + b"\nb",
             b".." + b"a" * 1021 + b"\r\nb", b".." + b"a" * 1021),
    _partial("partial-dot-1022a-lf-b", b"." + b"a" * 1022 + b"\nb",
             b".." + b"a" * 1022 + b"\r\nb", b".." + b"a" * 1022),
    # A CR from the input is a one-byte put, not half of a "\r\n" put.
    _partial("partial-1023a-cr-b", b"a" * 1023 + b"\rb",
             b"a" * 1023 + b"\rb", b"a" * 1023 + b"\r"),
    # Two 1023-byte blocks in a row, then a third block starts.
    _partial("partial-2x1023a-lf", (b"a" * 1023 + b"\n") * 2 + b"c",
             (b"a" * 1023 + b"\r\n") * 2 + b"c",
             b"a" * 1023 + b"\r\n" + b"a" * 1022),
    _complete("complete-1022a-lf", b"a" * 1022 + b"\n",
              b"a" * 1022 + b"\r\n.\r\n"),
    _complete("complete-1023a-lf", b"a" * 1023 + b"\n",
              b"a" * 1023 + b"\r\n.\r\n"),
]


class ReplyVector(NamedTuple):
    """Bytes from the server and the replies ``smtpcode()`` reads from them.

    Each reply is ``(code, text, digits)``: netqmail's unsigned 64-bit code,
    the stored text (CR dropped), and whether the first three bytes were
    ASCII digits (deviation 2).  After the last reply the stream is at EOF.
    """

    id: str
    wire: bytes
    replies: tuple


# smtpcode() computes the code in unsigned long arithmetic.
_WRAP = 2 ** 64

REPLIES = [
    ReplyVector("250-ok", b"250 ok\r\n", ((250, b"250 ok\n", True),)),
    ReplyVector("multiline", b"250-a\r\n250-b\r\n250 c\r\n",
                ((250, b"250-a\n250-b\n250 c\n", True),)),
    # Reference section 12, step 2: whatever the first three bytes are.
    ReplyVector("code-abc", b"abc\r\n", ((5451, b"abc\n", False),)),
    ReplyVector("code-4x9", b"4x9 no\r\n", ((1129, b"4x9 no\n", False),)),
    ReplyVector("code-space-25", b" 25 x\r\n",
                ((_WRAP - 1575, b" 25 x\n", False),)),
    ReplyVector("code-0a0", b"0a0 x\r\n", ((490, b"0a0 x\n", False),)),
    ReplyVector("code-2colon0", b"2:0 x\r\n", ((300, b"2:0 x\n", False),)),
    ReplyVector("code-25-cr", b"25\r\n", ((215, b"25\n", False),)),
    ReplyVector("code-22-cr", b"22\r\n", ((185, b"22\n", False),)),
    ReplyVector("code-000", b"000 x\r\n", ((0, b"000 x\n", True),)),
    ReplyVector("code-999", b"999 x\r\n", ((999, b"999 x\n", True),)),
    ReplyVector("code-lf-lf-lf", b"\n\n\n\n",
                ((_WRAP - 4218, b"\n\n\n\n", False),)),
    ReplyVector("code-8bit", b"\xff\xff\xff\n",
                ((22977, b"\xff\xff\xff\n", False),)),
    # A CR counts as one of the three code bytes, and is not stored.
    ReplyVector("code-cr-inside", b"2\r50 x\r\n",
                ((_WRAP - 145, b"250 x\n", False),)),
    # Step 4: the code is the first line's.
    ReplyVector("first-line-code", b"250-first\n550 second\n",
                ((250, b"250-first\n550 second\n", True),)),
    ReplyVector("failed-greeting", b"554-a\n220 c\n",
                ((554, b"554-a\n220 c\n", True),)),
    ReplyVector("code-2200", b"2200 hi\r\n", ((220, b"2200 hi\n", True),)),
    ReplyVector("bare-lf-lines", b"250-a\n250 b\n",
                ((250, b"250-a\n250 b\n", True),)),
    ReplyVector("lf-after-code", b"250\n", ((250, b"250\n", True),)),
    ReplyVector("crlf-after-code", b"250\r\n", ((250, b"250\n", True),)),
    # The three bytes after a continuation line are skipped blindly: an LF
    # among them does not end anything.
    ReplyVector("lf-in-skipped-code", b"250-a\n2\n0 b\n",
                ((250, b"250-a\n2\n0 b\n", True),)),
    # A short continuation line puts the parser out of step: the leftover
    # "220 ok" is the next reply.
    ReplyVector("out-of-step", b"220-a\r\nxy\r\n220 ok\r\n",
                ((220, b"220-a\nxy\n", True), (220, b"220 ok\n", True))),
    ReplyVector("two-replies", b"250 a\r\n354 b\r\n",
                ((250, b"250 a\n", True), (354, b"354 b\n", True))),
    # Step 6: the stored text keeps NUL and 8-bit bytes; only CR goes.
    ReplyVector("printing", b"250 a\rb\0c\xe9\x01d\r\r\n",
                ((250, b"250 ab\0c\xe9\x01d\n", True),)),
]

# Reference section 12, step 6: stored text -> what "Remote host said:"
# prints (NUL as "?", every other byte raw).  For the report module.
PRINTED = [
    (b"250 ab\0c\xe9\x01d\n", b"250 ab?c\xe9\x01d\n"),
]


class CountVector(NamedTuple):
    """``body_counts(data, at_line_start) == (lfs, dots)``.

    *lfs* is the number of LFs (each gains a CR on the wire), *dots* the
    number of dots that start a line (each is doubled in DATA mode); a dot
    at ``data[0]`` starts a line only when *at_line_start*.  A dot right
    after the chunk's last LF is the next chunk's ``data[0]``.
    """

    id: str
    data: bytes
    at_line_start: bool
    lfs: int
    dots: int


COUNTS = [
    CountVector("empty", b"", True, 0, 0),
    CountVector("empty-mid-line", b"", False, 0, 0),
    CountVector("no-lf", b"abc", True, 0, 0),
    CountVector("only-lfs", b"\n\n\n", True, 3, 0),
    CountVector("only-lfs-mid-line", b"\n\n\n", False, 3, 0),
    CountVector("dot", b".", True, 0, 1),
    CountVector("dot-mid-line", b".", False, 0, 0),
    CountVector("dot-lines", b".\n..x\n.\n", True, 3, 3),
    CountVector("dot-lines-mid-line", b".\n..x\n.\n", False, 3, 2),
    CountVector("dotdot-counts-once", b"..\n", True, 1, 1),
    CountVector("space-dot", b" .\n", True, 1, 0),
    CountVector("lf-dot-at-end", b"a\n.", True, 1, 1),
    CountVector("lf-dot-at-end-mid-line", b"a\n.", False, 1, 1),
    # "\n." cut between two chunks: the LF in one, the dot in the next.
    CountVector("boundary-lf-half", b"a\n", True, 1, 0),
    CountVector("boundary-dot-half", b".b\n", True, 1, 1),
    CountVector("boundary-dot-half-no-lf-before", b".b\n", False, 1, 0),
    CountVector("lf-at-end", b"x\n", False, 1, 0),
    # CR is no line end: a dot after it starts nothing, and it is counted
    # as nothing.
    CountVector("cr-dot", b"a\r.\r.", True, 0, 0),
    CountVector("crlf-dot-crlf", b"\r\n.\r\n", True, 2, 1),
    CountVector("crlf-lines", b"a\r\n.\r\nb\r\n", True, 3, 1),
    CountVector("dot-cr", b".\r", True, 0, 1),
    CountVector("bare-crs", b"\r\r\r", True, 0, 0),
    # 8-bit bytes are not LF or dot, also with their high bit dropped
    # (0x8a = 0x0a | 0x80, 0xae = 0x2e | 0x80): a signed compare would err.
    CountVector("8bit", b"\xe9\n.\xff\n", True, 2, 1),
    CountVector("8bit-lf-lookalike", b"\x8a\x8a.", False, 0, 0),
    CountVector("8bit-dot-lookalike", b"\n\xae\n\xae", True, 2, 0),
    CountVector("nul", b"\0\n.\0", True, 1, 1),
    # Around the 16-byte SIMD blocks (a block is compared while 17 bytes
    # remain: the dot after its last byte is looked at too).
    CountVector("15-then-lf-dot", b"a" * 15 + b"\n.", True, 1, 1),
    CountVector("16-then-lf-dot", b"a" * 16 + b"\n.", True, 1, 1),
    CountVector("31-then-lf-dot", b"a" * 31 + b"\n.", True, 1, 1),
    CountVector("32-then-lf-dot", b"a" * 32 + b"\n.", True, 1, 1),
    CountVector("lf-dot-x20", b"\n." * 20, False, 20, 20),
    CountVector("dot-lf-x20", b".\n" * 20, True, 20, 20),
    CountVector("lfs-48", b"\n" * 48, True, 48, 0),
    CountVector("dots-48", b"." * 48, True, 0, 1),
]


class ChunkVector(NamedTuple):
    """``Writer.chunk(data, last)`` then ``flush()``: the bytes sent.

    RFC 3030: ``BDAT <n>[ LAST]\r\n`` with n the size on the wire, then
    *data* with every LF as CRLF, no dot-stuffing, no terminator, every
    other byte (CR, NUL, 8-bit) as it is.
    """

    id: str
    data: bytes
    last: bool
    wire: bytes


CHUNKS = [
    ChunkVector("empty", b"", False, b"BDAT 0\r\n"),
    ChunkVector("empty-last", b"", True, b"BDAT 0 LAST\r\n"),
    ChunkVector("no-lf", b"abc", False, b"BDAT 3\r\nabc"),
    ChunkVector("lf", b"\n", True, b"BDAT 2 LAST\r\n\r\n"),
    ChunkVector("only-lfs", b"\n\n\n", False, b"BDAT 6\r\n\r\n\r\n\r\n"),
    ChunkVector("line", b"Subject: t\n\nhi\n", True,
                b"BDAT 18 LAST\r\nSubject: t\r\n\r\nhi\r\n"),
    # No dot-stuffing: a lone "." line is data in BDAT.
    ChunkVector("dot-lines", b".\n..x\n.\n", True,
                b"BDAT 11 LAST\r\n.\r\n..x\r\n.\r\n"),
    ChunkVector("dot-first", b".", False, b"BDAT 1\r\n."),
    ChunkVector("lf-dot-at-end", b"a\n.", False, b"BDAT 4\r\na\r\n."),
    # CR bytes are left alone: CRLF in the message gains a CR, as in DATA.
    ChunkVector("crlf", b"a\r\n", True, b"BDAT 4 LAST\r\na\r\r\n"),
    ChunkVector("bare-cr", b"a\rb\r", False, b"BDAT 4\r\na\rb\r"),
    ChunkVector("cr-cr-lf", b"\r\r\n", True, b"BDAT 4 LAST\r\n\r\r\r\n"),
    ChunkVector("8bit", b"\xe9\x8a\xae\xff\n", True,
                b"BDAT 6 LAST\r\n\xe9\x8a\xae\xff\r\n"),
    ChunkVector("nul", b"a\0b\n", False, b"BDAT 5\r\na\0b\r\n"),
    ChunkVector("smuggle", b"a\n.\r\n" + EVIL + b"\n", True,
                b"BDAT 25 LAST\r\na\r\n.\r\r\n" + EVIL + b"\r\n"),
    ChunkVector("bdat-lookalike", b"BDAT 0 LAST\n", False,
                b"BDAT 13\r\nBDAT 0 LAST\r\n"),
    ChunkVector("long-line-5000", b"x" * 5000 + b"\n", True,
                b"BDAT 5002 LAST\r\n" + b"x" * 5000 + b"\r\n"),
]
