"""qmailremote.Sender: grouping, kept connections, limits, outcomes.

Servers are tests/mailsink.py's (real TCP on 127.0.0.1, ports chosen by
the OS), reached through ``control/smtproutes``; the DNS world of the
property test is tests/dnsserver.py's.  The oracle for what a Sender does
with one message is :func:`qmailremote.deliver` run once per domain --
qmail-remote's own behaviour.
"""

import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qmailremote import Outcome, Resolver, Sender, deliver
from dnsserver import DNSServer
from mailsink import MailSink

SENDER = b"from@me.example"
BODY = b"Subject: bulk\n\nhello\n.dot\n"
WIRE = BODY.replace(b"\n", b"\r\n")


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "home"
    (root / "control").mkdir(parents=True)
    (root / "control" / "me").write_bytes(b"me.example\n")
    (root / "control" / "timeoutremote").write_bytes(b"10\n")
    return root


def routes(home, **servers):
    (home / "control" / "smtproutes").write_bytes(b"".join(
        b"%s:127.0.0.1:%d\n" % (name.replace("_", ".").encode(), s.port)
        for name, s in servers.items()))


def rcpts(transactions):
    return sorted(sorted(r for r in t[1]) for t in transactions)


# --- grouping and outcomes ----------------------------------------------------

def test_one_transaction_per_domain_case_insensitively(home):
    with MailSink() as x, MailSink() as y:
        routes(home, x_test=x, y_test=y)
        with Sender(home=str(home)) as sender:
            out = sender.send(SENDER, [b"a@x.test", b"b@y.test",
                                       b"c@X.TEST", b"d@x.Test"], BODY)
    assert [o.recipient for o in out] == [b"a@x.test", b"b@y.test",
                                          b"c@X.TEST", b"d@x.Test"]
    assert all(o.delivered and o.letter == "r" and o.message_letter == "K"
               for o in out)
    assert all(type(o) is Outcome for o in out)
    assert all(o.host == "127.0.0.1" and o.tls is False for o in out)
    (tx,) = x.transactions
    (ty,) = y.transactions
    assert tx[0] == b"<from@me.example>" and tx[2] == WIRE
    assert sorted(tx[1]) == [b"<a@x.test>", b"<c@X.TEST>", b"<d@x.Test>"]
    assert ty[1] == [b"<b@y.test>"]


def test_outcomes_carry_qmail_reports(home):
    refuse = {b"gone": b"550 no such user\r\n", b"later": b"451 busy\r\n"}
    with MailSink(refuse=refuse) as x:
        routes(home, x_test=x)
        with Sender(home=str(home)) as sender:
            out = sender.send(SENDER, [b"ok@x.test", b"gone@x.test",
                                       b"later@x.test"], BODY)
    ok, gone, later = out
    assert (ok.letter, ok.delivered) == ("r", True)
    assert ok.message_text.startswith(b"127.0.0.1 accepted message.")
    assert (gone.letter, gone.permanent, gone.temporary) == ("h", True, False)
    assert gone.text == b"127.0.0.1 does not like recipient.\n" \
                        b"Remote host said: 550 no such user\n"
    assert (later.letter, later.temporary) == ("s", True)
    # the same texts as the drop-in, for the same server
    with MailSink(refuse=refuse) as x:
        routes(home, x_test=x)
        result = deliver(b"x.test", SENDER, [b"ok@x.test", b"gone@x.test",
                                             b"later@x.test"], BODY,
                         home=str(home))
    assert [(o.letter, o.text) for o in out] == [
        (r.letter, r.text) for r in result.recipients]
    assert (ok.message_letter, ok.message_text) == (
        result.message.letter, result.message.text)


def test_failed_group_does_not_stop_the_others(home, tmp_path):
    with MailSink() as x:
        routes(home, x_test=x)
        # nobody listens on the port of closed.test's route
        probe = MailSink()
        port = probe.port
        probe._listener.close()
        with open(home / "control" / "smtproutes", "ab") as f:
            f.write(b"closed.test:127.0.0.1:%d\n" % port)
        with Sender(home=str(home)) as sender:
            ok, failed = sender.send(SENDER, [b"a@x.test", b"b@closed.test"],
                                     BODY)
    assert ok.delivered
    assert (failed.letter, failed.message_letter) == (None, "Z")
    assert failed.temporary and failed.host is None
    assert failed.message_text.startswith(b"Sorry, I wasn't able to establish")


def test_no_exception_for_bad_input(home):
    with Sender(home=str(home)) as sender:
        (bad,) = sender.send(SENDER, [b"a@x.test\r\nRSET"], BODY)
        assert bad.message_letter == "D" and bad.permanent
        assert sender.send(SENDER, [], BODY) == []


# --- kept connections ------------------------------------------------------------

@pytest.mark.parametrize("pipelining, chunking", [
    (True, True), (True, False), (False, True), (False, False)])
def test_one_connection_many_transactions(home, pipelining, chunking):
    with MailSink(pipelining=pipelining, chunking=chunking) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@x.test" % i], BODY) for i in range(10)])
        assert all(o.delivered for out in results for o in out)
        assert len(x.connections) == 1
        assert [t[1] for t in x.connections[0]] == [
            [b"<r%d@x.test>" % i] for i in range(10)]
        assert all(t[2] == WIRE for t in x.connections[0])


def test_per_connection_limit(home):
    with MailSink() as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1,
                    per_connection=3) as sender:
            sender.send_many([(SENDER, [b"r@x.test"], BODY)] * 7)
        assert [len(c) for c in x.connections] == [3, 3, 1]


def test_connection_closed_between_messages(home):
    # The server hangs up after each transaction: the next message sees
    # the kept connection is gone and opens another; nothing is lost or
    # sent twice.
    with MailSink(drop_after=1) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@x.test" % i], BODY) for i in range(5)])
        assert all(o.delivered for out in results for o in out)
        assert rcpts(x.transactions) == [[b"<r%d@x.test>" % i]
                                         for i in range(5)]
        assert len(x.connections) == 5


@pytest.mark.parametrize("pipelining", [True, False])
def test_connection_dies_at_the_next_mail(home, pipelining):
    # The server closes when the second MAIL arrives on a connection: the
    # client could not know; the message had not gone, so it is sent on a
    # new connection -- once.
    with MailSink(hangup_at_mail=1, pipelining=pipelining) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@x.test" % i], BODY) for i in range(4)])
        assert all(o.delivered for out in results for o in out)
        assert rcpts(x.transactions) == [[b"<r%d@x.test>" % i]
                                         for i in range(4)]
        assert [len(c) for c in x.connections] == [1, 1, 1, 1]


def test_failed_transaction_then_rset_on_a_lockstep_server(home):
    with MailSink(pipelining=False, refuse={b"gone": b"550 no\r\n"}) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1) as sender:
            bad, good = sender.send_many([(SENDER, [b"gone@x.test"], BODY),
                                          (SENDER, [b"ok@x.test"], BODY)])
        assert bad[0].permanent and good[0].delivered
        assert len(x.connections) == 1 and x.rsets == 1


def test_failed_transaction_with_pipelining_closes(home):
    with MailSink(refuse={b"gone": b"550 no\r\n"}) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1) as sender:
            bad, good = sender.send_many([(SENDER, [b"gone@x.test"], BODY),
                                          (SENDER, [b"ok@x.test"], BODY)])
        assert bad[0].permanent and good[0].delivered
        assert len(x.connections) == 2 and x.rsets == 0


@pytest.fixture(scope="module")
def server_tls():
    import ssl
    import trustme
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_tls_connection_kept_with_its_handshake(home, server_tls):
    """Opportunistic STARTTLS once per connection: three messages, one
    handshake; each outcome says TLS, and the K text carries the TLS line
    the drop-in adds with control/tlsreport."""
    (home / "control" / "tlsreport").write_bytes(b"")
    with MailSink(tls=server_tls) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@x.test" % i], BODY) for i in range(3)])
        assert x.handshakes == 1 and len(x.connections) == 1
        single = deliver(b"x.test", SENDER, [b"r@x.test"], BODY,
                         home=str(home))
        assert x.handshakes == 2
    for (outcome,) in results:
        assert outcome.delivered and outcome.tls is True
        assert outcome.message_text == single.message.text
    assert b"\nTLS TLSv1." in single.message.text


def test_failed_opportunistic_tls_falls_back_to_clear(home, server_tls):
    """The server hangs up where the handshake should be: as qmail-remote
    does, the transaction is made again at once, in clear, on a new
    connection; the outcome is the drop-in's."""
    with MailSink(tls=server_tls, break_tls=True) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@x.test" % i], BODY) for i in range(2)])
        single = deliver(b"x.test", SENDER, [b"r@x.test"], BODY,
                         home=str(home))
        assert rcpts(x.transactions) == [[b"<r0@x.test>"], [b"<r1@x.test>"],
                                         [b"<r@x.test>"]]
        # each message: the broken attempt, then the clear one
        assert [len(c) for c in x.connections] == [0, 1, 0, 1, 0, 1]
    for (outcome,) in results:
        assert outcome.delivered and outcome.tls is False
        assert outcome.message_text == single.message.text


def test_auth_once_per_kept_connection(home):
    """A relay with credentials (sagredo's smtproutes dialect): one AUTH
    for the connection, every MAIL with AUTH=<>, as the drop-in sends."""
    with MailSink(auth=(b"relayuser", b"pa:ss")) as x:
        (home / "control" / "smtproutes").write_bytes(
            b"x.test:127.0.0.1:%d|relayuser|pa:ss\n" % x.port)
        with Sender(home=str(home), concurrency=1) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@x.test" % i], BODY) for i in range(3)])
        assert all(o.delivered for out in results for o in out)
        assert x.logins == 1 and len(x.connections) == 1
        assert [t[0] for t in x.transactions] == [
            b"<from@me.example> AUTH=<>"] * 3
        single = deliver(b"x.test", SENDER, [b"r@x.test"], BODY,
                         home=str(home))
        assert single.accepted and x.logins == 2
        assert x.transactions[-1][0] == b"<from@me.example> AUTH=<>"


def test_noesmtp_is_one_connection_per_transaction(home):
    (home / "control" / "noesmtp").write_bytes(b"")
    with MailSink() as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=1) as sender:
            results = sender.send_many([(SENDER, [b"r@x.test"], BODY)] * 3)
        assert all(o.delivered for out in results for o in out)
        assert [len(c) for c in x.connections] == [1, 1, 1]


def test_kept_connections_carry_their_domain_with_more_domains_than_room(
        home, monkeypatch):
    """Ten domains, round-robin, two connections at most: the threads
    take their domain's next messages (read ahead), so most transactions
    ride on kept connections instead of a connection each."""
    gauge = Gauge(monkeypatch)
    sinks = [MailSink() for _ in range(10)]
    for s in sinks:
        s.__enter__()
    try:
        routes(home, **{f"d{i}_test": s for i, s in enumerate(sinks)})
        with Sender(home=str(home), concurrency=2) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@d%d.test" % (n, n % 10)], BODY)
                 for n in range(200)])
        assert all(o.delivered for out in results for o in out)
        assert sum(len(s.transactions) for s in sinks) == 200
    finally:
        for s in sinks:
            s.__exit__(None, None, None)
    assert gauge.peak <= 2
    assert gauge.made <= 40        # 200 with a connection per message


def test_jobs_prefer_the_domain_asked_then_the_oldest():
    from qmailremote.bulk import _Jobs
    jobs = _Jobs(10)
    for n, domain in enumerate([b"a", b"b", b"a", b"c", b"b"]):
        jobs.put(domain, n)
    assert jobs.get(b"b") == 1          # b's oldest
    assert jobs.get(b"b") == 4
    assert jobs.get(b"b") == 0          # none left for b: the oldest
    assert jobs.get(None) == 2
    assert jobs.get(b"zz") == 3
    jobs.close()
    assert jobs.get(b"a") is None


def test_jobs_bound_what_is_read_ahead():
    from qmailremote.bulk import _Jobs
    jobs = _Jobs(3)
    fed = []

    def feed():
        for n in range(10):
            jobs.put(b"d", n)
            fed.append(n)
        jobs.close()
    feeder = threading.Thread(target=feed)
    feeder.start()
    got = []
    while True:
        # never more than the limit waiting (plus the one being put)
        assert len(fed) - len(got) <= 3 + 1
        job = jobs.get(b"d")
        if job is None:
            break
        got.append(job)
    feeder.join()
    assert got == list(range(10))


# --- limits -------------------------------------------------------------------

class Gauge:
    """Sockets the client has open (made and not yet closed), at most at
    once: qmailremote.session's socket class, counting."""

    def __init__(self, monkeypatch):
        from qmailremote import session
        self.lock = threading.Lock()
        self.open = self.peak = self.made = 0
        gauge = self
        base = session._TcpSocket

        class Counted(base):
            __slots__ = ("counted",)

            def __init__(self, *args):
                super().__init__(*args)
                self.counted = True
                with gauge.lock:
                    gauge.open += 1
                    gauge.made += 1
                    gauge.peak = max(gauge.peak, gauge.open)

            def close(self):
                with gauge.lock:
                    if self.counted:
                        self.counted = False
                        gauge.open -= 1
                super().close()
        monkeypatch.setattr(session, "_TcpSocket", Counted)


@pytest.mark.parametrize("concurrency, per_host, per_connection", [
    (1, 1, 100), (3, 1, 100), (3, 2, 4), (4, 2, 1), (8, 8, 3)])
def test_connection_limits_hold(home, monkeypatch, concurrency, per_host,
                                per_connection):
    """Sockets open at once, counted where the client makes and closes
    them (a server's count would lag: its side of a closed connection
    lives on until it reads the close): at most `concurrency`."""
    gauge = Gauge(monkeypatch)
    sinks = [MailSink() for _ in range(6)]
    for s in sinks:
        s.__enter__()
    try:
        routes(home, **{f"d{i}_test": s for i, s in enumerate(sinks)})
        with Sender(home=str(home), concurrency=concurrency,
                    per_host=per_host,
                    per_connection=per_connection) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@d%d.test" % (n, n % 6)], BODY)
                 for n in range(90)])
            assert gauge.open <= concurrency
        assert gauge.open == 0                       # all closed at the end
        assert all(o.delivered for out in results for o in out)
        assert sorted(r for s in sinks for t in s.transactions
                      for r in t[1]) == sorted(
            b"<r%d@d%d.test>" % (n, n % 6) for n in range(90))
    finally:
        for s in sinks:
            s.__exit__(None, None, None)
    assert gauge.made >= 90 // per_connection
    assert 1 <= gauge.peak <= concurrency


def test_per_host_limit_holds(home, monkeypatch):
    """Every destination the same server: per_host bounds the sockets."""
    gauge = Gauge(monkeypatch)
    with MailSink() as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=8, per_host=2,
                    per_connection=2) as sender:
            results = sender.send_many(
                [(SENDER, [b"r%d@x.test" % n], BODY) for n in range(40)])
        assert all(o.delivered for out in results for o in out)
        assert len(x.transactions) == 40
    assert gauge.made >= 20 and gauge.peak == 2


# --- message sources ---------------------------------------------------------

def test_sources_are_read_once_per_domain(home, tmp_path):
    path = tmp_path / "message"
    big = (b"y" * 60 + b"\n") * 40000      # 2.4 MB: mapped
    path.write_bytes(big)
    with MailSink() as x, MailSink() as y:
        routes(home, x_test=x, y_test=y)
        with Sender(home=str(home)) as sender:
            with open(path, "rb") as f:
                f.seek(61)
                by_file = sender.send(SENDER, [b"a@x.test", b"b@y.test"], f)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.lseek(fd, 122, os.SEEK_SET)
                by_fd = sender.send(SENDER, [b"a@x.test", b"b@y.test"], fd)
                assert os.lseek(fd, 0, os.SEEK_CUR) == 122   # left alone
            finally:
                os.close(fd)
            by_path = sender.send(SENDER, [b"a@x.test", b"b@y.test"],
                                  str(path))
            r, w = os.pipe()
            os.write(w, BODY)
            os.close(w)
            try:
                by_pipe = sender.send(SENDER, [b"a@x.test", b"b@y.test"], r)
            finally:
                os.close(r)
    for out in (by_file, by_fd, by_path, by_pipe):
        assert all(o.delivered for o in out)
    wire = big.replace(b"\n", b"\r\n")
    for sink in (x, y):
        bodies = [t[2] for t in sink.transactions]
        assert bodies == [big[61:].replace(b"\n", b"\r\n"),
                          big[122:].replace(b"\n", b"\r\n"), wire, WIRE]


def test_progress(home):
    seen = []
    with MailSink(refuse={b"gone": b"550 no\r\n"}) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=2) as sender:
            sender.send_many([(SENDER, [b"a@x.test"], BODY),
                              (SENDER, [b"gone@x.test"], BODY),
                              (SENDER, [b"b@x.test", b"c@x.test"], BODY)],
                             progress=seen.append)
    last = seen[-1]
    assert (last.messages, last.failed, last.in_flight, last.total) == (
        3, 1, 0, 3)
    assert last.bytes == 2 * len(BODY)
    assert [p.messages for p in seen] == sorted(p.messages for p in seen)


def test_bounded_memory_with_10000_queued(home, tmp_path):
    """10,000 messages by path, given as a generator: the queue ahead of
    the threads stays small, and so does the memory traced."""
    import tracemalloc
    paths = []
    for i in range(20):
        p = tmp_path / f"m{i}"
        p.write_bytes(b"Subject: %d\n\n" % i + b"z" * 10000 + b"\n")
        paths.append(str(p))
    taken = [0]

    def messages():
        for n in range(10000):
            taken[0] += 1
            yield (SENDER, [b"r@x.test"], paths[n % 20])
    with MailSink(keep_bodies=False) as x:
        routes(home, x_test=x)
        with Sender(home=str(home), concurrency=4) as sender:
            tracemalloc.start()
            try:
                results = sender.send_many(messages())
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert taken[0] == 10000 and len(results) == 10000
        assert all(out[0].delivered for out in results)
        sizes = [len(open(p, "rb").read().replace(b"\n", b"\r\n"))
                 for p in paths]
        assert sorted(t[2] for t in x.transactions) == sorted(
            sizes[n % 20] for n in range(10000))
    # the outcomes themselves (10,000 small objects), the transactions
    # read ahead and each connection's buffers (1 MiB as allocated, mostly
    # untouched): far below the 100 MB of 10,000 loaded messages
    assert peak < 32 << 20


# --- the same transactions as qmail-remote run per domain ---------------------

DOMAINS = ["a.test", "b.test", "c.test", "d.test", "e.test"]


@pytest.fixture(scope="module")
def world():
    """What the DNS says of each domain when no route names it: a.test a
    null MX, b.test an MX whose host has no address, c.test a CNAME to a
    name with such an MX (canonicalised first), d.test SERVFAIL, e.test
    nothing (NXDOMAIN).  No answer leads to a connection: every server
    reached is one of the two sinks, through a route."""
    with DNSServer() as dns, MailSink() as one, MailSink() as two:
        dns.add("relay-one.test", "A", "127.0.0.1")
        dns.add("a.test", "MX", "0 .")
        dns.add("b.test", "MX", "10 nowhere.b.test.")
        dns.add("c.test", "CNAME", "canon.test.")
        dns.add("canon.test", "MX", "10 mx.canon.test.")
        dns.behave("d.test", "rcode", rcode="SERVFAIL")
        yield dns, one, two


#: A route for a domain: none (the DNS decides), to server one by a name
#: the DNS gives, to server two by address, or to a relay with no address.
ROUTES = [None, "one", "two", "ghost"]


def _world_routes(home, one, two, chosen):
    lines = []
    for domain, route in zip(DOMAINS, chosen):
        if route == "one":
            lines.append(b"%s:relay-one.test:%d\n" % (domain.encode(),
                                                      one.port))
        elif route == "two":
            lines.append(b"%s:127.0.0.1:%d\n" % (domain.encode(), two.port))
        elif route == "ghost":
            lines.append(b"%s:ghost.test\n" % domain.encode())
    (home / "control" / "smtproutes").write_bytes(b"".join(lines))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(ROUTES), min_size=5, max_size=5),
       st.lists(st.tuples(st.sampled_from(["x", "y", "z.w", "q"]),
                          st.sampled_from(DOMAINS),
                          st.sampled_from(["lower", "upper", "title"])),
                min_size=1, max_size=8))
def test_same_as_one_qmail_remote_run_per_domain(home, world, chosen,
                                                 picks):
    """For random routes over a DNS world and random recipient lists,
    Sender.send gives each recipient the outcome deliver() -- one
    qmail-remote run per domain, with that domain's recipients -- gives
    it, and the servers see the same transactions."""
    dns, one, two = world
    _world_routes(home, one, two, chosen)
    recipients = []
    for local, domain, case in picks:
        domain = {"lower": domain, "upper": domain.upper(),
                  "title": domain.title()}[case]
        recipients.append(f"{local}@{domain}".encode())
    resolver = Resolver([(dns.host, dns.port)], timeout=1, attempts=1)
    before = (len(one.transactions), len(two.transactions))
    groups = {}
    for r in recipients:
        host = r[r.rfind(b"@") + 1:]
        groups.setdefault(host.lower(), (host, []))[1].append(r)
    expected = {}
    for host, group in groups.values():
        result = deliver(host, SENDER, group, BODY, home=str(home),
                         resolver=resolver)
        for i, r in enumerate(group):
            report = result.recipients[i] if i < len(
                result.recipients) else None
            expected.setdefault(r, []).append(
                (report.letter if report else None,
                 report.text if report else None,
                 result.message.letter, result.message.text))
    oracle = (one.transactions[before[0]:], two.transactions[before[1]:])
    middle = (len(one.transactions), len(two.transactions))
    with Sender(home=str(home), resolver=resolver) as sender:
        out = sender.send(SENDER, recipients, BODY)
    got = (one.transactions[middle[0]:], two.transactions[middle[1]:])
    assert [o.recipient for o in out] == recipients
    for o in out:
        assert (o.letter, o.text, o.message_letter,
                o.message_text) == expected[o.recipient].pop(0)
    for mine, theirs in zip(got, oracle):
        assert sorted(mine) == sorted(theirs)


def test_the_command_path_imports_no_bulk_code(home):
    """A whole delivery through cli.run (what qmail-remote runs) leaves
    qmailremote.bulk unimported."""
    import subprocess
    import sys
    with MailSink() as x:
        routes(home, x_test=x)
        code = ("import sys\n"
                "from qmailremote import cli\n"
                "out = cli.run([b'x.test', b'f@me.example', b'r@x.test'],"
                " b'Subject: x\\n\\nhi\\n')\n"
                "print(out[:3].decode(), 'qmailremote.bulk' in sys.modules)")
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, cwd="/",
            text=True, timeout=60, env=dict(os.environ, QMAILHOME=str(home)))
    assert done.stdout.split() == ["r\0K", "False"], done.stderr
