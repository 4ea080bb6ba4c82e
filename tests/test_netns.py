"""Tests of the network-namespace harness in tests/netns.py (root only)."""

import os
import sys
import textwrap

import pytest

from netns import netns_unavailable, run_in_netns

ZONE = {
    "example.test": {"MX": ["20 mx2.example.test.", "10 mx1.example.test."]},
    "mx1.example.test": {"A": "127.0.0.7"},
    "mx2.example.test": {"A": "127.0.0.8"},
}

# Resolves through dnspython's default resolver (which reads /etc/resolv.conf)
# and speaks SMTP over a raw socket to the best MX.
CLIENT = textwrap.dedent(r"""
    import socket, sys
    import dns.resolver
    sys.stdout.write(open("/etc/resolv.conf").read())
    mx = min(dns.resolver.resolve("example.test", "MX"), key=lambda r: r.preference)
    addr = dns.resolver.resolve(mx.exchange, "A")[0].address
    print("MX", mx.exchange, addr)
    with socket.create_connection((addr, 25), timeout=5) as s, s.makefile("rb") as f:
        def say(line):
            if line is not None:
                s.sendall(line)
            print(f.readline().decode().rstrip())
        say(None)
        say(b"HELO client.test\r\n")
        say(b"MAIL FROM:<a@b.test>\r\n")
        say(b"RCPT TO:<c@example.test>\r\n")
        say(b"DATA\r\n")
        say(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n")
        say(b"QUIT\r\n")
""")

DIALOGUE = (b"HELO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@example.test>\r\n"
            b"DATA\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_unavailable_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in netns_unavailable.__wrapped__()


@pytest.mark.netns
@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
class TestInNamespace:
    def test_mx_lookup_and_smtp_dialogue(self):
        r = run_in_netns({
            "command": [sys.executable, "-c", CLIENT],
            "zone": ZONE,
            "smtp": [{"addr": "127.0.0.7"}, {"addr": "127.0.0.8"}],
        })
        assert (r.returncode, r.stderr) == (0, b"")
        assert r.stdout.decode().splitlines() == [
            "nameserver 127.0.0.1",  # the bind mount is in place
            "options timeout:1 attempts:1",
            "MX mx1.example.test. 127.0.0.7",
            "220 127.0.0.7 ESMTP sink",
            "250 127.0.0.7",
            "250 ok",
            "250 ok",
            "354 go ahead",
            "250 ok 127.0.0.7",
            "221 127.0.0.7",
        ]
        assert r.queries == [("example.test", "MX", "udp"), ("mx1.example.test", "A", "udp")]
        assert r.count("example.test", "MX") == 1 and r.dns_errors == []
        assert r.server("127.0.0.7").sessions == [DIALOGUE]
        assert r.server("127.0.0.8").connections == 0

    def test_nothing_leaks_outside(self):
        def state():
            with open("/proc/self/mountinfo") as f:
                mounts = f.read()
            files = {p: (open(p, "rb").read(), os.stat(p).st_ino, os.stat(p).st_mtime_ns)
                     for p in ("/etc/resolv.conf", "/etc/hosts")}
            return mounts, files, os.readlink("/proc/self/ns/net")

        before = state()
        r = run_in_netns({
            "command": ["cat", "/etc/resolv.conf", "/etc/hosts"],
            "resolv_conf": "nameserver 127.0.0.1\n",
            "files": {"/etc/hosts": "127.0.0.9 leak.test\n"},
        })
        assert r.stdout == b"nameserver 127.0.0.1\n127.0.0.9 leak.test\n"
        assert state() == before
        assert b"leak.test" not in before[1]["/etc/hosts"][0]

    def test_command_io_env_exit_status_and_files(self):
        script = ("import os, sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1]);"
                  "sys.stderr.write(os.environ['NETNS_TEST'] + open('/etc/hosts').read());"
                  "sys.exit(3)")
        r = run_in_netns({
            "command": [sys.executable, "-c", script],
            "stdin": b"\x00abc\xff",
            "env": {"NETNS_TEST": "hello "},
            "files": {"/etc/hosts": "127.0.0.9 example.test\n"},
            "dns": False,
        })
        assert (r.returncode, r.timed_out) == (3, False)
        assert r.stdout == b"\xffcba\x00"
        assert r.stderr == b"hello 127.0.0.9 example.test\n"
        assert r.queries == [] and r.smtp == {}

    def test_smtp_server_variants(self):
        client = textwrap.dedent(r"""
            import socket
            def talk(addr, port, *lines):
                out = []
                try:
                    s = socket.create_connection((addr, port), timeout=5)
                except ConnectionRefusedError:
                    return "refused"
                def reply():  # the lines of one reply, or EOF
                    got = [f.readline()]
                    while got[-1][3:4] == b"-":
                        got.append(f.readline())
                    return b"/".join(x.rstrip(b"\r\n") for x in got) if got[-1] else b"EOF"
                with s, s.makefile("rb") as f:
                    out.append(reply())
                    for line in lines:
                        s.sendall(line)
                        out.append(reply())
                return b"|".join(out).decode()
            print(talk("127.0.0.2", 25, b"QUIT\r\n"))
            print(talk("127.0.0.3", 25))
            print(talk("127.0.0.4", 2525, b"EHLO x\r\n", b"RCPT TO:<a>\r\n",
                       b"RCPT TO:<b>\r\n", b"RCPT TO:<c>\r\n", b"XYZZY\r\n", b"DATA\r\n"))
            with socket.create_connection(("127.0.0.5", 25), timeout=5) as s:
                s.sendall(b"HELO quiet\r\n")
                s.shutdown(socket.SHUT_WR)
                print("silent", s.recv(10))  # b"": it hung up without a word
        """)
        r = run_in_netns({
            "command": [sys.executable, "-c", client],
            "smtp": [
                {"addr": "127.0.0.2", "greeting": "421-busy\n421 please wait"},
                {"addr": "127.0.0.3", "listen": False},
                {"addr": "127.0.0.4", "port": 2525,
                 "replies": {"EHLO": "250-{addr}\n250 PIPELINING",
                             "RCPT": ["250 ok", "550 no such user"], "DATA": None}},
                {"addr": "127.0.0.5", "silent": True},
            ],
            "dns": False,
        })
        assert (r.returncode, r.stderr) == (0, b"")
        assert r.stdout.decode().splitlines() == [
            "421-busy/421 please wait|221 127.0.0.2",
            "refused",
            "220 127.0.0.4 ESMTP sink|250-127.0.0.4/250 PIPELINING|250 ok"
            "|550 no such user|550 no such user|502 unimplemented|EOF",
            "silent b''",
        ]
        assert r.server("127.0.0.2").sessions == [b"QUIT\r\n"]
        assert r.server("127.0.0.3").listening is False
        assert r.server("127.0.0.3").connections == 0
        assert r.server("127.0.0.4", 2525).received.endswith(b"XYZZY\r\nDATA\r\n")
        assert r.server("127.0.0.5").sessions == [b"HELO quiet\r\n"]

    def test_dns_behaviours_from_json(self):
        client = textwrap.dedent(r"""
            import dns.resolver
            for name in ("soft.test", "bad.test", "junk.test", "nx.test", "big.test"):
                try:
                    ans = dns.resolver.resolve(name, "MX", lifetime=0.3,
                                               raise_on_no_answer=False)
                    print(name, [f"{rrset.name} {rd}" for rrset in ans.response.answer
                                 for rd in rrset][:2], ans.rrset is None)
                except Exception as e:
                    print(name, type(e).__name__)
        """)
        r = run_in_netns({
            "command": [sys.executable, "-c", client],
            "zone": {"big.test": {"MX": [f"{i} mx{i:02d}.a-long-long-name.test."
                                         for i in range(20)]}},
            "behave": [
                {"name": "soft.test", "mode": "rcode", "rcode": "SERVFAIL"},
                {"name": "bad.test", "mode": "raw", "fn": "cut_short", "args": {"keep": 2}},
                {"name": "junk.test", "mode": "answer", "rdtype": "MX",
                 "answer": ["other.test 60 IN MX 10 x.test."]},
            ],
        })
        out = r.stdout.decode().splitlines()
        assert out[0] == "soft.test NoNameservers"
        assert out[1] == "bad.test LifetimeTimeout"  # bad UDP replies are ignored
        # dnspython's Resolver leaves records of another owner out of .rrset.
        assert out[2] == "junk.test ['other.test. 10 x.test.'] True"
        assert out[3] == "nx.test NXDOMAIN"
        assert out[4] == ("big.test ['big.test. 0 mx00.a-long-long-name.test.', "
                          "'big.test. 1 mx01.a-long-long-name.test.'] False")
        assert r.count("big.test", "MX", "udp") == 1 and r.count("big.test", "MX", "tcp") == 1
        assert r.count("bad.test") >= 1 and r.dns_errors == []

    def test_lo_by_ioctl_extra_address_and_no_other_interfaces(self):
        r = run_in_netns({
            "command": ["ip", "-o", "-4", "addr", "show"],
            "lo": "ioctl",
            "ip": [["addr", "add", "127.0.0.9/8", "dev", "lo", "label", "lo:1"]],
            "dns": False,
        })
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        assert [line.split()[1] for line in lines] == ["lo", "lo"]  # no eth0 here
        assert "inet 127.0.0.1/8" in lines[0]
        assert "inet 127.0.0.9/8" in lines[1] and "lo:1" in lines[1]

    def test_timeout_kills_the_command(self):
        r = run_in_netns({
            "command": [sys.executable, "-c",
                        "import sys, time; print('started', flush=True); time.sleep(30)"],
            "timeout": 0.5,
            "dns": False,
        })
        assert r.timed_out and r.returncode is None
        assert r.stdout == b"started\n"

    def test_harness_failure_raises(self):
        with pytest.raises(RuntimeError, match="no-such-command"):
            run_in_netns({"command": ["/nonexistent/no-such-command"], "dns": False})
