"""One in-process delivery through the API to the loopback sink.

``qmailremote.deliver()`` with an ``smtproutes`` default route to
``sink.Sink``, the message a file descriptor of a regular file (as
qmail-remote's stdin is), compiled kernel vs pure twin, 1 KB and 8 MiB
and 64 MiB of realistic text.  MB/s of message in the summary table.

    python -m pytest benchmarks/bench_delivery.py --benchmark-only
"""

import os

import pytest

import qmailremote
from qmailremote import _fast_py, session
from sink import Sink

SIZES = {"1K": 1 << 10, "8M": 8 << 20, "64M": 64 << 20}


@pytest.fixture(scope="module")
def sink():
    with Sink() as running:
        yield running


@pytest.fixture(scope="module")
def home(tmp_path_factory, sink):
    path = tmp_path_factory.mktemp("home")
    (path / "control").mkdir()
    (path / "control" / "me").write_bytes(b"bench.invalid\n")
    (path / "control" / "smtproutes").write_bytes(
        b":127.0.0.1:%d\n" % sink.port)
    return str(path)


@pytest.fixture(scope="module", params=list(SIZES))
def message(request, tmp_path_factory):
    """A file of 76-byte lines, 2% starting with a dot."""
    size = SIZES[request.param]
    line = b"x" * 75 + b"\n"
    dotted = b"." + b"y" * 74 + b"\n"
    block = line * 49 + dotted
    data = (block * (size // len(block) + 1))[:size - 1] + b"\n"
    path = tmp_path_factory.mktemp("msg") / request.param
    path.write_bytes(data)
    return request.param, str(path), size


@pytest.fixture(params=["c", "py"])
def kernel(request, monkeypatch):
    if request.param == "py":
        monkeypatch.setattr(session, "Writer", _fast_py.Writer)
        monkeypatch.setattr(session, "ReplyReader", _fast_py.ReplyReader)
    elif not getattr(session.Writer, "__module__", "").endswith("_fast"):
        pytest.skip("the compiled kernel is not the one loaded")
    return request.param


def test_deliver(benchmark, throughput, home, message, kernel):
    name, path, size = message
    benchmark.group = f"deliver {name}"

    def deliver():
        fd = os.open(path, os.O_RDONLY)
        try:
            return qmailremote.deliver(b"example.com", b"a@b.example",
                                       [b"c@example.com"], fd, home=home)
        finally:
            os.close(fd)

    result = benchmark(deliver)
    assert result.accepted, result
    throughput(size)
