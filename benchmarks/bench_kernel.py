"""Kernel throughput: compiled vs pure twin vs ``bytes.replace``, in MB/s.

    PYTHONPATH=. python -m pytest benchmarks/bench_kernel.py --benchmark-only

The default ``pytest`` run never collects this file (``testpaths`` is
``tests``); a file named on the command line is collected whatever its name.
Payloads are built once; only the call is timed.  MB/s is input bytes over
the median time (see ``conftest.py``); groups are per payload size.

* ``encode``: one ``Encoder.encode`` call on the whole payload, against
  ``bytes.replace(b"\\n", b"\\r\\n")``, the natural baseline (it does less:
  no dot-stuffing).
* ``writer``: the session's body path, ``Writer.body`` fed 1 MiB input
  chunks, into a ``send`` that discards.
* ``encode-worst``: 1 MiB of ``.\\n`` lines, every line dot-stuffed.
* ``reply``: ``ReplyReader.read`` of a one-line and a 20-line reply, the
  reply's bytes returned by one ``recv`` per read.
"""

import functools
import importlib
import os
import random

import pytest

MiB = 1 << 20
SIZES = {"64K": 64 * 1024, "8M": 8 * MiB, "64M": 64 * MiB}
CHUNK = MiB           # input chunk of the writer path, as the session reads
LINE = 76             # bytes per line, LF included
DOT_RATE = 0.05       # share of lines that start with "."
_ALPHABET = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
             b"0123456789     ,.;:-'()!?/")

KERNELS = {"c": "qmailremote._fast", "py": "qmailremote._fast_py"}


def kernel(name):
    """The kernel module; the compiled one is skipped only in pure mode."""
    if name == "c" and os.environ.get("QMAILREMOTE_NO_EXTENSIONS"):
        pytest.skip("QMAILREMOTE_NO_EXTENSIONS is set: pure-Python run")
    return importlib.import_module(KERNELS[name])


@functools.cache
def text(size):
    """*size* bytes of mail-like text: 76-byte lines, LF, 5 % dotted."""
    rng = random.Random(size)
    pool = [bytes(rng.choices(_ALPHABET, k=LINE - 1)) + b"\n"
            for _ in range(512)]
    dotted = [b"." + line[1:] for line in pool]
    lines = [(dotted if rng.random() < DOT_RATE else pool)[rng.randrange(512)]
             for _ in range(size // LINE + 1)]
    return b"".join(lines)[:size - 1] + b"\n"


@functools.cache
def chunks(size):
    data = text(size)
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def _discard(data):
    pass


ENCODERS = ["c", "py", "bytes.replace"]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", ENCODERS)
def test_encode(benchmark, throughput, impl, size):
    data = text(SIZES[size])
    if impl == "bytes.replace":
        encode = functools.partial(data.replace, b"\n", b"\r\n")
    else:
        encode = functools.partial(kernel(impl).Encoder().encode, data)
    benchmark.group = f"encode {size}"
    benchmark(encode)
    throughput(len(data))


@pytest.mark.parametrize("impl", ENCODERS)
def test_encode_worst(benchmark, throughput, impl):
    data = b".\n" * (MiB // 2)
    if impl == "bytes.replace":
        encode = functools.partial(data.replace, b"\n", b"\r\n")
    else:
        encode = functools.partial(kernel(impl).Encoder().encode, data)
    benchmark.group = "encode-worst 1M of '.\\n'"
    benchmark(encode)
    throughput(len(data))


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", ["c", "py"])
def test_writer(benchmark, throughput, impl, size):
    pieces = chunks(SIZES[size])
    writer_class = kernel(impl).Writer

    def send_body():
        writer = writer_class(_discard)
        writer.begin_body()
        for piece in pieces:
            writer.body(piece)
        writer.end_body()
        writer.flush()

    benchmark.group = f"writer {size}"
    benchmark(send_body)
    throughput(SIZES[size])


REPLIES = {
    "short": b"250 ok\r\n",
    "multiline20": b"".join(b"250-mx.example line %02d of a long EHLO-style "
                            b"reply\r\n" % i for i in range(19))
                   + b"250 mx.example ok\r\n",
}


@pytest.mark.parametrize("reply", list(REPLIES))
@pytest.mark.parametrize("impl", ["c", "py"])
def test_reply(benchmark, throughput, impl, reply):
    data = REPLIES[reply]
    reader = kernel(impl).ReplyReader(lambda: data)
    benchmark.group = f"reply {reply}"
    code, _, _ = benchmark(reader.read)
    assert code == 250
    throughput(len(data))
