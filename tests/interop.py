"""Interop harness: real MTAs from Debian's packages, inside a private namespace.

Outside (the test process): :func:`ensure_packages` installs a server's
packages (or says why it cannot, for a skip), the ``*_config`` functions
write a server configuration into a directory, and :func:`run_session`
runs one *session* inside ``unshare --net --mount`` through
:func:`netns.run_in_netns` (so the test DNS server answers on
127.0.0.1:53): start the server on 127.0.0.1:25, run the installed
``qmail-remote`` once per case, collect what the server stored, stop the
server by PID.

Inside: this file run as a script (``python interop.py PLAN.json``) is the
command the namespace runs.  It writes ``results.json`` into the session
directory; stored messages stay on disk (Exim: a Maildir per case; Postfix:
the hold queue, printed with ``postcat`` into ``stored/<case>.<n>``).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# Outside: packages


def installed(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                       capture_output=True, text=True)
    return p.returncode == 0 and p.stdout.strip() == "install ok installed"


POLICY_RC_D = "/usr/sbin/policy-rc.d"


def ensure_packages(*pkgs: str) -> str | None:
    """Install *pkgs* that are missing; ``None``, or why they cannot be had."""
    missing = [p for p in pkgs if not installed(p)]
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"apt-get not found; cannot install {' '.join(missing)}"
    # The packaged services must never start (on a machine without one, this
    # is the Debian convention: invoke-rc.d asks policy-rc.d, 101 = denied).
    if not os.path.exists(POLICY_RC_D):
        with open(POLICY_RC_D, "w") as f:
            f.write("#!/bin/sh\n# qmailremote's interop tests: no service starts\n"
                    "exit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", *missing]
    try:
        p = subprocess.run(install, capture_output=True, text=True, env=env, timeout=300)
        if p.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env,
                           timeout=300)
            p = subprocess.run(install, capture_output=True, text=True, env=env,
                               timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get install {' '.join(missing)} failed: {e}"
    if p.returncode != 0 or not all(installed(x) for x in missing):
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return f"apt-get install {' '.join(missing)} failed: {' / '.join(tail)}"
    return None


# ---------------------------------------------------------------------------
# Outside: qmail homes and sessions


def make_home(path: str, route: str, **control: bytes) -> str:
    """A qmail home (ESMTP profile) whose smtproutes sends example.com to *route*."""
    os.makedirs(os.path.join(path, "control"))
    files = {"me": b"qr.example\n", "smtproutes": b"example.com:" + route.encode() + b"\n"}
    files.update(control)
    for name, content in files.items():
        target = os.path.join(path, "control", *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(content)
    return path


def chown(path: str, user: str, *, recursive: bool = False) -> None:
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    if recursive:
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)


def qmail_remote() -> str:
    return os.path.join(os.path.dirname(sys.executable), "qmail-remote")


def run_session(plan: dict, *, zone: dict | None = None, timeout: float = 120) -> dict:
    """Run *plan* inside fresh namespaces; return ``{case name: result}``.

    *plan*: ``kind`` (``postfix`` or ``exim``), ``dir`` (the server's
    directory, written by a ``*_config`` function), ``cases`` (a list of
    ``{"name", "home", "args", "stdin"}``; ``stdin`` a file path).  Each
    result holds ``returncode``, ``stdout``, ``stderr`` (bytes) and, for
    Postfix, ``ids`` (queue ids of the messages the case left held).
    """
    from netns import run_in_netns

    plan = dict(plan, qmail_remote=qmail_remote())
    planfile = os.path.join(plan["dir"], "plan.json")
    with open(planfile, "w") as f:
        json.dump(plan, f)
    resfile = os.path.join(plan["dir"], "results.json")
    if os.path.exists(resfile):
        os.unlink(resfile)
    r = run_in_netns({"command": [sys.executable, os.path.join(HERE, "interop.py"), planfile],
                      "zone": zone or {}, "timeout": timeout})
    if r.timed_out or r.returncode != 0 or not os.path.exists(resfile):
        raise RuntimeError(f"interop session failed (exit {r.returncode}, timed out "
                           f"{r.timed_out}):\n{r.stdout.decode(errors='replace')}\n"
                           f"{r.stderr.decode(errors='replace')}")
    with open(resfile) as f:
        results = json.load(f)
    for res in results.values():
        for k in ("stdout", "stderr"):
            res[k] = base64.b64decode(res.pop(k + "_b64"))
    return results


# ---------------------------------------------------------------------------
# Outside: server configurations


def write_cert(ca, directory: str, name: str, owner: str) -> tuple[str, str]:
    """A certificate for *name* from the trustme *ca*: (cert path, key path)."""
    cert = ca.issue_cert(name)
    crt, key = os.path.join(directory, "server.crt"), os.path.join(directory, "server.key")
    cert.private_key_pem.write_to_path(key)
    cert.cert_chain_pems[0].write_to_path(crt)
    os.chmod(key, 0o600)
    chown(key, owner)
    chown(crt, owner)
    return crt, key


POSTFIX_HOST = "mx.example"


def postfix_config(d: str, ca, *, auth: bool = False, password: str = "") -> None:
    """A private Postfix instance in *d* that holds every message it accepts."""
    for sub in ("queue", "data", "sasl", "stored"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    chown(os.path.join(d, "data"), "postfix")
    crt, key = write_cert(ca, d, POSTFIX_HOST, "root")
    with open("/etc/postfix/master.cf") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        cols = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(cols) >= 8:
            cols[4] = "n"  # no chroot: the private queue and config are outside it
            line = "  ".join(cols)
        out.append(line)
    with open(os.path.join(d, "master.cf"), "w") as f:
        f.write("\n".join(out) + "\n")
    with open(os.path.join(d, "rcpt_access"), "w") as f:
        f.write("nobody@example.com REJECT no such user\n"
                "later@example.com 450 try later\n")
    main = {
        "compatibility_level": "3.6",
        "queue_directory": f"{d}/queue",
        "data_directory": f"{d}/data",
        "myhostname": POSTFIX_HOST,
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "maillog_file_prefixes": d,
        "maillog_file": f"{d}/maillog",
        "alias_maps": "",
        "alias_database": "",
        "smtputf8_enable": "yes",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": crt,
        "smtpd_tls_key_file": key,
        "smtpd_tls_loglevel": "1",
        "local_header_rewrite_clients": "",
        "smtpd_client_restrictions": "check_client_access static:HOLD",
        "smtpd_recipient_restrictions": f"check_recipient_access texthash:{d}/rcpt_access",
        "message_size_limit": "60000000",
    }
    if auth:
        main.update({
            "relay_domains": "",
            "mynetworks": "",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "smtpd_sasl_local_domain": POSTFIX_HOST,
            "smtpd_tls_auth_only": "yes",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            "cyrus_sasl_config_path": f"{d}/sasl",
        })
        with open(os.path.join(d, "sasl", "smtpd.conf"), "w") as f:
            f.write("pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
                    "mech_list: SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN\n")
        db = os.path.join(d, "sasldb2")
        subprocess.run(["saslpasswd2", "-p", "-c", "-f", db, "-u", POSTFIX_HOST,
                        "relayuser"], input=password.encode(), check=True)
        chown(db, "postfix")
    else:
        main.update({"relay_domains": "example.com", "mynetworks": "127.0.0.0/8"})
    with open(os.path.join(d, "main.cf"), "w") as f:
        f.write("".join(f"{k} = {v}\n" for k, v in main.items()))


EXIM_HOST = "mx.example"

EXIM_AUTHENTICATORS = """\
begin authenticators

plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if and {{eq{$auth2}{relayuser}}{eq{$auth3}{PASSWORD}}}}
  server_set_id = $auth2

login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = ${if and {{eq{$auth1}{relayuser}}{eq{$auth2}{PASSWORD}}}}
  server_set_id = $auth1

cram:
  driver = cram_md5
  public_name = CRAM-MD5
  server_secret = ${if eq{$auth1}{relayuser}{PASSWORD}fail}
  server_set_id = $auth1

"""


def exim_config(d: str, ca, local_parts: list[str], password: str = "") -> None:
    """A private Exim in *d*: every accepted message to Maildir/<local part>.

    Recipients whose local part starts with ``auth_`` need SMTP AUTH
    (PLAIN, LOGIN, CRAM-MD5: user ``relayuser``, *password*).
    """
    spool, maildir = os.path.join(d, "spool"), os.path.join(d, "Maildir")
    os.makedirs(spool)
    os.makedirs(os.path.join(d, "log"))
    chown(os.path.join(d, "log"), "Debian-exim")
    for lp in local_parts:
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, lp, sub))
    chown(spool, "Debian-exim")
    chown(maildir, "Debian-exim", recursive=True)
    crt, key = write_cert(ca, d, EXIM_HOST, "Debian-exim")
    authenticators = EXIM_AUTHENTICATORS.replace("PASSWORD", password)
    conf = f"""\
primary_hostname = {EXIM_HOST}
spool_directory = {spool}
log_file_path = {d}/log/%slog
keep_environment =
exim_user = Debian-exim
exim_group = Debian-exim
never_users =
daemon_smtp_ports = 25
local_interfaces = 127.0.0.1
host_lookup =
rfc1413_hosts =
tls_advertise_hosts = *
tls_certificate = {crt}
tls_privatekey = {key}
chunking_advertise_hosts = *
pipelining_advertise_hosts = *
message_size_limit = 60M
acl_smtp_rcpt = acl_rcpt
acl_smtp_data = acl_data

begin acl

acl_rcpt:
  deny recipients = nobody@example.com
       message = no such user
  deny local_parts = ^auth_.*
       !authenticated = *
       message = authentication required
  defer recipients = later@example.com
        message = try later
  accept

acl_data:
  accept

{authenticators}begin routers

maildir:
  driver = accept
  local_parts = dsearch;{maildir}
  transport = maildir

begin transports

maildir:
  driver = appendfile
  directory = {maildir}/$local_part_data
  maildir_format
  delivery_date_add = false
  envelope_to_add = false
  return_path_add = false
  user = Debian-exim
  group = Debian-exim
  mode = 0644
"""
    path = os.path.join(d, "exim.conf")
    with open(path, "w") as f:
        f.write(conf)
    os.chmod(path, 0o644)
    etc = os.path.join(d, "etc-exim4")  # bind-mounted over /etc/exim4 inside
    os.makedirs(etc)
    with open(os.path.join(etc, "trusted_configs"), "w") as f:
        f.write(path + "\n")


def opensmtpd_config(d: str, ca, local_parts: list[str]) -> None:
    """A private OpenSMTPD in *d*: every accepted message to Maildir/<local part>.

    Its queue (/var/spool/smtpd) and control socket (/run) are on tmpfs
    mounts private to the namespace.
    """
    maildir = os.path.join(d, "Maildir")
    for lp in local_parts:
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, lp, sub))
    chown(maildir, "opensmtpd", recursive=True)
    crt, key = write_cert(ca, d, "mx.example", "root")
    conf = f"""\
pki mx.example cert "{crt}"
pki mx.example key "{key}"
table later {{ "later@example.com" }}
filter "later" phase rcpt-to match rcpt-to <later> reject "451 try later"
listen on 127.0.0.1 port 25 tls pki mx.example hostname mx.example filter "later"
action "md" maildir "{maildir}/%{{rcpt.user}}" user opensmtpd virtual {{ "@" = opensmtpd }}
match from any for rcpt-to "nobody@example.com" reject
match from any for domain "example.com" action "md"
"""
    with open(os.path.join(d, "smtpd.conf"), "w") as f:
        f.write(conf)


def maildir_messages(d: str, local_part: str) -> list[bytes]:
    new = os.path.join(d, "Maildir", local_part, "new")
    out = []
    for name in sorted(os.listdir(new)):
        with open(os.path.join(new, name), "rb") as f:
            out.append(f.read())
    return out


def read_log(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


# ---------------------------------------------------------------------------
# Inside the namespaces


def _wait_port(deadline: float, proc=None) -> None:
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", 25), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _pid_gone(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _drain_then_stop(proc, spool: str) -> None:
    """Wait (30 s at most) until *spool* holds no file, i.e. every message
    the server took is delivered, then stop the daemon by its PID."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(files for _, _, files in os.walk(spool)):
            break
        time.sleep(0.05)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _postfix_held(d: str) -> set[str]:
    p = subprocess.run(["postqueue", "-c", d, "-j"], capture_output=True, text=True)
    return {json.loads(line)["queue_id"] for line in p.stdout.splitlines() if line.strip()}


class _Postfix:
    def __init__(self, d: str, plan: dict) -> None:
        self.d = d
        if plan.get("sasldb"):
            subprocess.run(["mount", "--bind", plan["sasldb"], "/etc/sasldb2"], check=True)
        subprocess.run(["postfix", "-c", d, "check"], check=True)
        subprocess.run(["postfix", "-c", d, "start"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(time.monotonic() + 30)
        self.seen: set[str] = set()

    def collect(self, name: str) -> dict:
        ids: list[str] = []
        for _ in range(50):  # the hold file exists before the 250; be lenient
            ids = sorted(_postfix_held(self.d) - self.seen)
            if ids:
                break
            time.sleep(0.02)
        self.seen.update(ids)
        for n, qid in enumerate(ids):
            with open(os.path.join(self.d, "stored", f"{name}.{n}"), "wb") as f:
                subprocess.run(["postcat", "-c", self.d, "-bh", "-q", qid], stdout=f,
                               check=True)
        return {"ids": ids}

    def stop(self) -> None:
        with open(os.path.join(self.d, "queue", "pid", "master.pid")) as f:
            pid = int(f.read().split()[0])
        subprocess.run(["postfix", "-c", self.d, "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if not _pid_gone(pid, time.monotonic() + 10):
            os.kill(pid, signal.SIGKILL)


class _Exim:
    def __init__(self, d: str, plan: dict) -> None:
        self.d = d
        subprocess.run(["mount", "--bind", os.path.join(d, "etc-exim4"), "/etc/exim4"],
                       check=True)
        self.proc = subprocess.Popen(["exim4", "-C", os.path.join(d, "exim.conf"),
                                      "-bdf", "-odi"])
        _wait_port(time.monotonic() + 30, self.proc)

    def collect(self, name: str) -> dict:
        return {}

    def stop(self) -> None:
        # -odi: delivery runs in the receiving process, after the 250.
        _drain_then_stop(self.proc, os.path.join(self.d, "spool", "input"))


class _OpenSMTPD:
    def __init__(self, d: str, plan: dict) -> None:
        self.d = d
        for target in ("/var/spool", "/run"):
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True)
        self.log = open(os.path.join(d, "smtpd.log"), "wb")
        self.proc = subprocess.Popen(["smtpd", "-d", "-f", os.path.join(d, "smtpd.conf")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(time.monotonic() + 30, self.proc)

    def collect(self, name: str) -> dict:
        return {}

    def stop(self) -> None:
        # Deliveries run after the 250.
        _drain_then_stop(self.proc, "/var/spool/smtpd/queue")
        self.log.close()


def _inside(planfile: str) -> None:
    with open(planfile) as f:
        plan = json.load(f)
    d = plan["dir"]
    server = {"postfix": _Postfix, "exim": _Exim, "opensmtpd": _OpenSMTPD}[plan["kind"]](d, plan)
    results = {}
    try:
        for case in plan["cases"]:
            env = dict(os.environ, QMAILHOME=case["home"])
            with open(case["stdin"], "rb") as stdin:
                p = subprocess.run([plan["qmail_remote"], *case["args"]], stdin=stdin,
                                   capture_output=True, env=env, timeout=60)
            res = {"returncode": p.returncode,
                   "stdout_b64": base64.b64encode(p.stdout).decode(),
                   "stderr_b64": base64.b64encode(p.stderr).decode()}
            res.update(server.collect(case["name"]))
            results[case["name"]] = res
    finally:
        server.stop()
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    _inside(sys.argv[1])
