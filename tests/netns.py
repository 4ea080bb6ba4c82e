"""End-to-end harness: run a command in a private network + mount namespace.

Root only.  :func:`run_in_netns` starts ``unshare --net --mount --propagation
private <python> tests/netns.py`` and hands it a scenario (JSON on stdin).
Inside the new namespaces that child process

1. brings ``lo`` up (``ip link set lo up``, or an ioctl if there is no
   ``ip``); every 127.0.0.X is then usable, no address needs adding, and
   ``::1`` is there too;
2. sets up the scenario's ``addrs``, ``local_routes`` and ``blackhole``
   (IPv6 and more, see below);
3. runs the scenario's extra ``ip`` commands (e.g. labelled addresses);
4. starts the fake DNS server (tests/dnsserver.py) on 127.0.0.1:53, UDP+TCP;
5. starts an SMTP sink on each scenario address (127.0.0.X:25, or an IPv6
   address: ``::1``, one from ``addrs`` or one in a ``local_routes`` prefix);
6. bind-mounts a temporary resolv.conf (and any other scenario files) over
   the real ones -- private to the mount namespace, so nothing leaks;
7. runs the command, with a timeout, and prints a JSON result on stdout.

Scenario (a dict; only ``command`` is required)::

    {
      "command": ["qmail-remote", "example.test", "a@b", "c@example.test"],
      "env": {"QMAILHOME": "/tmp/x"},        # added to the inherited environment
      "stdin": b"message bytes",              # bytes (or str, sent as UTF-8)
      "cwd": "/some/dir",                     # default: the caller's
      "timeout": 30,                          # seconds for the command
      "zone": {"example.test": {"MX": ["10 mx.example.test."]},
               "mx.example.test": {"A": "127.0.0.2"}},
      "chase_cname": False, "udp_limit": 512,  # DNSServer options
      "behave": [                             # DNSServer.behave() calls
          {"name": "soft.test", "mode": "rcode", "rcode": "SERVFAIL"},
          {"name": "junk.test", "mode": "answer", "rdtype": "MX",
           "answer": ["other.test 60 IN MX 10 x.test."]},
          {"name": "bad.test", "mode": "raw", "fn": "bad_rdlength_a"},
          {"name": "bad2.test", "mode": "raw", "fn": "ancount_too_large",
           "args": {"ancount": 5}, "times": 1},
      ],
      "dns": True,                  # False: no DNS server (queries are refused)
      "resolv_conf": "nameserver 127.0.0.1\\noptions timeout:1 attempts:1\\n",
      "files": {"/etc/hosts": "127.0.0.9 example.test\\n"},  # more bind mounts
      "ip": [["addr", "add", "127.0.0.9/8", "dev", "lo", "label", "lo:1"]],
      "lo": "ip",                   # or "ioctl": how to bring lo up
      "addrs": {                    # more addresses, before the "ip" commands
          "lo": ["fd00:2::5", "127.0.0.9/8"],
          "veth0": ["fd00:1::1/64", "fe80::53/64"],
          "veth1": ["fd00:1::2/64"],
      },
      "local_routes": ["fd00:5::/64"],  # reachable here, not an interface's
      "blackhole": ["fd00:9::/64", "10.9.9.0/24"],  # connects there time out
      "smtp": [
          {"addr": "127.0.0.2"},                        # a plain sink on port 25
          {"addr": "127.0.0.3", "greeting": "421 busy"},
          {"addr": "127.0.0.4", "listen": False},       # connections refused
          {"addr": "127.0.0.5", "silent": True},        # accepts, never speaks
          {"addr": "127.0.0.6", "port": 2525,
           "replies": {"RCPT": ["250 ok", "550 no such user"], "DATA": None}},
      ],
    }

``addrs`` maps an interface to the addresses to add to it: ``lo``, or
``veth0`` and ``veth1``, the two ends of a veth pair (the kernel may have no
``dummy`` link type) which is created, both ends up, whenever ``addrs``
names one of them or ``blackhole`` is not empty.  An address without a
``/prefix`` is a host address (/128 or /32); IPv6 ones are added with
``nodad``, so they are usable (and can be bound) at once.  Each up veth end
also has its own link-local address (``fe80::...``, random, tentative).

``local_routes`` lists prefixes (IPv6 ones are what it is for) routed as
``local`` through ``lo`` (``ip -6 route add local PREFIX dev lo``): every address in them is this
host's for connections and sinks (which bind with ``IP_FREEBIND``), yet no
interface has it, so it is not in qmail-remote's ipme -- what 127.0.0.X
(X > 1) is for IPv4.  A connection to one without a sink is refused.

``blackhole`` lists prefixes whose TCP connects time out: the SYN is
silently dropped, with no RST and no ICMP error, so ``connect()`` waits
for its whole timeout.  Each prefix is routed out of ``veth0`` to a
gateway (``fe80::99``, or ``169.254.0.99`` ``onlink`` for IPv4) whose
neighbour entry is permanent with a MAC address nobody has
(``02:00:00:00:00:99``): no neighbour discovery or ARP ever fails (which
would give EHOSTUNREACH after ~3 s), the frames reach ``veth1``, which
drops them as addressed to another host, and no packet leaves the
namespace.

SMTP sink replies: keys ``GREETING``, ``HELO``, ``EHLO``, ``MAIL``, ``RCPT``,
``DATA``, ``BODY`` (after the final ``.``), ``QUIT``, ``RSET``, ``NOOP``,
``VRFY``, ``OTHER`` (any other line); ``"greeting"`` is short for
``replies["GREETING"]``.  A value is a string (``"\\n"`` separates lines of a
multi-line reply; each line goes out with CRLF; ``{addr}`` is replaced by the
server address), ``None`` (hang up instead of replying), or a list of these
(the n-th use in a connection gets the n-th, the last repeats).  Defaults:
``220 {addr} ESMTP sink``, ``250 {addr}`` to HELO/EHLO, ``250 ok`` to
MAIL/RCPT/RSET/NOOP, ``354 go ahead`` to DATA, ``250 ok {addr}`` after the
body, ``221 {addr}`` to QUIT (then it hangs up), ``502 unimplemented``
otherwise.  A DATA reply starting with ``3`` makes the sink read a
dot-terminated body.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import functools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
UNSHARE = ["unshare", "--net", "--mount", "--propagation", "private"]
DEFAULT_RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
DEFAULT_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# Outside: the caller's side


@functools.lru_cache(maxsize=None)
def netns_unavailable() -> str | None:
    """Why the harness cannot run here (a skip reason), or ``None`` if it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root (unshare --net --mount)"
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not os.path.isfile("/etc/resolv.conf"):
        return "no /etc/resolv.conf to bind-mount over"
    try:
        p = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if p.returncode != 0:
        return f"unshare --net --mount failed: {p.stderr.decode(errors='replace').strip()}"
    return None


def require_netns() -> None:
    """``pytest.skip()`` with the reason if the harness cannot run here."""
    reason = netns_unavailable()
    if reason is not None:
        import pytest

        pytest.skip(reason)


@dataclasses.dataclass
class SmtpLog:
    """What one SMTP sink saw: the raw bytes of each connection, in order."""

    addr: str
    port: int
    listening: bool
    sessions: list[bytes]

    @property
    def connections(self) -> int:
        return len(self.sessions)

    @property
    def received(self) -> bytes:
        """All bytes received, every connection, concatenated."""
        return b"".join(self.sessions)


@dataclasses.dataclass
class NetnsResult:
    returncode: int | None  # None if the command timed out (it was killed)
    timed_out: bool
    stdout: bytes
    stderr: bytes
    queries: list[tuple[str, str, str]]  # DNS log: (name, rdtype, transport)
    dns_errors: list[str]  # exceptions inside the DNS server (should be empty)
    smtp: dict[tuple[str, int], SmtpLog]

    def count(self, name: str | None = None, rdtype: str | None = None,
              transport: str | None = None) -> int:
        """Like ``DNSServer.count``: how many logged DNS queries match."""
        from dnsserver import name_key

        want = (None if name is None else name_key(name),
                None if rdtype is None else rdtype.upper(), transport)
        return sum(all(w is None or w == v for w, v in zip(want, q)) for q in self.queries)

    def server(self, addr: str, port: int = 25) -> SmtpLog:
        return self.smtp[(addr, port)]


def run_in_netns(scenario: dict) -> NetnsResult:
    """Run *scenario* (see the module doc) in fresh namespaces; return the result.

    Raises ``RuntimeError`` if the harness itself fails (not the command).
    """
    reason = netns_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot use network namespaces: {reason}")
    sc = dict(scenario)
    stdin = sc.pop("stdin", b"")
    if isinstance(stdin, str):
        stdin = stdin.encode()
    sc["stdin_b64"] = base64.b64encode(stdin).decode()
    sc["outer_namespaces"] = _namespaces()
    outer_timeout = float(sc.get("timeout", DEFAULT_TIMEOUT)) + 30
    p = subprocess.run([*UNSHARE, sys.executable, os.path.join(HERE, "netns.py")],
                       input=json.dumps(sc).encode(), capture_output=True,
                       timeout=outer_timeout)
    if p.returncode != 0:
        raise RuntimeError(f"netns child failed (exit {p.returncode}):\n"
                           + p.stderr.decode(errors="replace"))
    r = json.loads(p.stdout)
    b64 = base64.b64decode
    return NetnsResult(
        returncode=r["returncode"],
        timed_out=r["timed_out"],
        stdout=b64(r["stdout_b64"]),
        stderr=b64(r["stderr_b64"]),
        queries=[tuple(q) for q in r["dns_queries"]],
        dns_errors=r["dns_errors"],
        smtp={(s["addr"], s["port"]): SmtpLog(s["addr"], s["port"], s["listening"],
                                              [b64(x) for x in s["sessions_b64"]])
              for s in r["smtp"]},
    )


# ---------------------------------------------------------------------------
# Inside the namespaces


DEFAULT_REPLIES = {
    "GREETING": "220 {addr} ESMTP sink",
    "HELO": "250 {addr}",
    "EHLO": "250 {addr}",
    "MAIL": "250 ok",
    "RCPT": "250 ok",
    "DATA": "354 go ahead",
    "BODY": "250 ok {addr}",
    "QUIT": "221 {addr}",
    "RSET": "250 ok",
    "NOOP": "250 ok",
    "VRFY": "502 unimplemented",
    "OTHER": "502 unimplemented",
}


IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # linux/in.h


def _listen(addr: str, port: int) -> socket.socket:
    """A listening TCP socket on *addr* (IPv4 or IPv6 text), *port*.

    IPv6 sockets bind with ``IP_FREEBIND``: an address of a ``local_routes``
    prefix is no interface's, and IPv6 refuses to bind it otherwise.
    """
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((addr, port))
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


class SmtpSink:
    """A minimal threaded SMTP server that records the raw bytes it receives."""

    def __init__(self, addr: str, port: int = 25, *, greeting=None, replies=None,
                 silent: bool = False, listen: bool = True) -> None:
        self.addr, self.port, self.silent, self.listening = addr, port, silent, listen
        self.replies = dict(DEFAULT_REPLIES)
        self.replies.update(replies or {})
        if greeting is not None:
            self.replies["GREETING"] = greeting
        unknown = set(self.replies) - set(DEFAULT_REPLIES)
        if unknown:
            raise ValueError(f"unknown reply keys {sorted(unknown)}")
        self.sessions: list[bytearray] = []
        self._threads: list[threading.Thread] = []
        self._sock = None
        if listen:
            self._sock = _listen(addr, port)
            self._threads.append(threading.Thread(target=self._accept, daemon=True))
            self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # stop() shut the socket down
                return
            buf = bytearray()
            self.sessions.append(buf)
            t = threading.Thread(target=self._session, args=(conn, buf), daemon=True)
            self._threads.append(t)
            t.start()

    def _session(self, conn: socket.socket, buf: bytearray) -> None:
        uses: dict[str, int] = {}

        def reply(key: str) -> str | None:
            """Send the reply for *key*; None if we hung up instead."""
            text = self.replies[key]
            if isinstance(text, list):
                text = text[min(uses.get(key, 0), len(text) - 1)]
            uses[key] = uses.get(key, 0) + 1
            if text is not None:
                text = text.replace("{addr}", self.addr)
                conn.sendall(b"".join(line.encode("latin-1") + b"\r\n"
                                      for line in text.split("\n")))
            return text

        with conn, conn.makefile("rb") as f:
            try:
                if self.silent:
                    for line in f:
                        buf += line
                    return
                if reply("GREETING") is None:
                    return
                for line in f:
                    buf += line
                    verb = line[:4].decode("latin-1").upper()
                    key = verb if verb in DEFAULT_REPLIES and verb != "BODY" else "OTHER"
                    text = reply(key)
                    if text is None or key == "QUIT":
                        return
                    if key == "DATA" and text.startswith("3"):
                        for line in f:
                            buf += line
                            if line in (b".\r\n", b".\n"):
                                break
                        else:
                            return
                        if reply("BODY") is None:
                            return
            except OSError:
                pass

    def stop(self) -> None:
        """Stop accepting; wait (briefly) for the sessions to end."""
        if self._sock is not None:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            self._sock.close()
        for t in self._threads:
            t.join(5.0)

    def log(self) -> dict:
        return {"addr": self.addr, "port": self.port, "listening": self.listening,
                "sessions_b64": [base64.b64encode(bytes(b)).decode() for b in self.sessions]}


def _lo_up(method: str | None) -> None:
    if method is None:
        method = "ip" if shutil.which("ip") else "ioctl"
    if method == "ip":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if method != "ioctl":
        raise ValueError(f"unknown lo method {method!r}")
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)  # struct ifreq is 40 bytes
        flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


VETH = ("veth0", "veth1")
BLACKHOLE_GATEWAY = {6: "fe80::99", 4: "169.254.0.99"}
BLACKHOLE_MAC = "02:00:00:00:00:99"  # locally administered; nobody has it


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _net_setup(addrs: dict[str, list[str]], local_routes: list[str],
               blackhole: list[str]) -> None:
    """The scenario's ``addrs``, ``local_routes`` and ``blackhole`` (module doc)."""
    unknown = set(addrs) - {"lo", *VETH}
    if unknown:
        raise ValueError(f"unknown interfaces in addrs: {sorted(unknown)}")
    if blackhole or set(addrs) & set(VETH):
        _ip("link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
        for dev in VETH:
            _ip("link", "set", dev, "up")
    for dev, addresses in addrs.items():
        for address in addresses:
            v6 = ":" in address
            if "/" not in address:
                address += "/128" if v6 else "/32"
            _ip(*(["-6"] if v6 else []), "addr", "add", address, "dev", dev,
                *(["nodad"] if v6 else []))
    for prefix in local_routes:
        _ip("-6" if ":" in prefix else "-4", "route", "add", "local", prefix,
            "dev", "lo")
    for version in sorted({6 if ":" in prefix else 4 for prefix in blackhole}):
        _ip(f"-{version}", "neigh", "replace", BLACKHOLE_GATEWAY[version],
            "lladdr", BLACKHOLE_MAC, "dev", VETH[0], "nud", "permanent")
    for prefix in blackhole:
        version = 6 if ":" in prefix else 4
        _ip(f"-{version}", "route", "add", prefix, "via",
            BLACKHOLE_GATEWAY[version], "dev", VETH[0],
            *(["onlink"] if version == 4 else []))


def _namespaces() -> dict[str, str]:
    return {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("net", "mnt")}


def _check_private_namespaces(outer: dict[str, str]) -> None:
    """Refuse to touch anything unless we really are in new namespaces."""
    if any(_namespaces()[ns] == outer.get(ns, _namespaces()[ns]) for ns in ("net", "mnt")):
        raise SystemExit("netns.py: not in private namespaces; use run_in_netns()")


def _start_dns(sc: dict):
    from dnsserver import RAW_HELPERS, DNSServer

    srv = DNSServer(sc.get("zone"), "127.0.0.1", 53,
                    chase_cname=sc.get("chase_cname", False),
                    udp_limit=sc.get("udp_limit", 512))
    for b in sc.get("behave", []):
        b = dict(b)
        name, mode, args = b.pop("name"), b.pop("mode"), b.pop("args", {})
        if "fn" in b:
            b["fn"] = functools.partial(RAW_HELPERS[b["fn"]], **args)
        srv.behave(name, mode, **b)
    return srv.start()


def _run(sc: dict) -> dict:
    env = dict(os.environ)
    env.update(sc.get("env", {}))
    try:
        p = subprocess.run(sc["command"], input=base64.b64decode(sc["stdin_b64"]),
                           capture_output=True, env=env, cwd=sc.get("cwd"),
                           timeout=float(sc.get("timeout", DEFAULT_TIMEOUT)))
        rc, out, err, timed_out = p.returncode, p.stdout, p.stderr, False
    except subprocess.TimeoutExpired as e:
        rc, out, err, timed_out = None, e.stdout or b"", e.stderr or b"", True
    return {"returncode": rc, "timed_out": timed_out,
            "stdout_b64": base64.b64encode(out).decode(),
            "stderr_b64": base64.b64encode(err).decode()}


def _child_main() -> None:
    sc = json.load(sys.stdin)
    _check_private_namespaces(sc.pop("outer_namespaces", {}))
    _lo_up(sc.get("lo"))
    _net_setup(sc.get("addrs", {}), sc.get("local_routes", []),
               sc.get("blackhole", []))
    for args in sc.get("ip", []):
        subprocess.run(["ip", *args], check=True)
    dns_server = _start_dns(sc) if sc.get("dns", True) else None
    sinks = [SmtpSink(**s) for s in sc.get("smtp", [])]
    files = {"/etc/resolv.conf": sc.get("resolv_conf", DEFAULT_RESOLV_CONF)}
    files.update(sc.get("files", {}))
    with tempfile.TemporaryDirectory(prefix="netns-") as tmp:
        os.chmod(tmp, 0o755)
        for i, (target, content) in enumerate(files.items()):
            src = os.path.join(tmp, str(i))
            with open(src, "w") as f:
                f.write(content)
            os.chmod(src, 0o644)
            subprocess.run(["mount", "--bind", src, target], check=True)
        try:
            result = _run(sc)
        finally:
            for target in files:
                subprocess.run(["umount", target], check=False)
    for sink in sinks:
        sink.stop()
    if dns_server is not None:
        dns_server.stop()
    result["dns_queries"] = dns_server.queries if dns_server else []
    result["dns_errors"] = [repr(e) for e in dns_server.errors] if dns_server else []
    result["smtp"] = [sink.log() for sink in sinks]
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    _child_main()
