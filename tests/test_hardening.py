"""The installed command under hostile conditions (issue 8).

Each test runs the installed ``qmail-remote`` (the one beside the test
interpreter) in a subprocess under one of the conditions an adversarial
admin can create -- control files that are FIFOs, numbers of thousands of
digits, descriptors above 1023, legacy locales, ``PYTHON*`` variables,
SIGINT during start-up, tight resource limits -- and checks what
qmail-rspawn would see: exit status 0 (or death by a signal), nothing on
stderr, one message report.  ``deliver()`` is checked under the same
conditions where they apply to it, and must never raise.
"""

import os
import subprocess
import sys

import pytest

from qmailremote import deliver
from qmailremote.mx import Resolver
from smtpserver import ScriptedServer, smtp_script

COMMAND = os.path.join(os.path.dirname(sys.executable), "qmail-remote")
LONG = 5000  # digits: above CPython's default int-to-str limit of 4300
AMBIGUOUS = (b"DSorry. Although I'm listed as a best-preference MX or A for "
             b"that host,\nit isn't in my control/locals file, so I don't "
             b"treat it as local. (#5.4.6)\n\0")


def run_command(args, home, stdin=b"hi\n", env=None, prefix=(),
                command=(COMMAND,)):
    """The installed command; (stdout, stderr, exit status).

    *stdin* is bytes or a file; *prefix* goes before the command (prlimit).
    """
    env = dict(os.environ if env is None else env)
    env["QMAILHOME"] = str(home)
    feed = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin}
    done = subprocess.run([*prefix, *command, *args], capture_output=True,
                          env=env, timeout=60, **feed)
    return done.stdout, done.stderr, done.returncode


def delivery(home, prepare=None, args=("example.com", "a@b", "c@d"),
             script=None, **kwargs):
    """The command against a fresh scripted server, routed there.

    *prepare(port)* runs just before the command (control files...).
    Returns (stdout, stderr, exit status, the server).
    """
    with ScriptedServer(script or smtp_script()) as srv:
        route_to(home, srv.port)
        if prepare:
            prepare(srv.port)
        out, err, status = run_command(list(args), home, **kwargs)
        srv.wait_done()
    return out, err, status, srv


def assert_accepted(out, err, status):
    assert (status, err) == (0, b"")
    assert out.startswith(b"r\0K127.0.0.1 accepted message.\n"), out


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    # netqmail 1.06's dialogue: these tests look at its HELO line.
    (tmp_path / "control" / "noesmtp").write_bytes(b"")
    return tmp_path


def route_to(home, port, text=None):
    (home / "control" / "smtproutes").write_bytes(
        text if text is not None else b":127.0.0.1:%d\n" % port)


def test_command_is_installed():
    assert os.access(COMMAND, os.X_OK), COMMAND


# 1. Control files that are FIFOs with no writer read as empty at once.

@pytest.mark.parametrize("name", ["me", "helohost", "timeoutremote",
                                  "timeoutconnect"])
def test_fifo_control_file(home, name):
    if name == "me":
        (home / "control" / "helohost").write_bytes(b"helo.example\n")
    path = home / "control" / name
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    out, err, status, srv = delivery(home)
    assert_accepted(out, err, status)
    helo = b"HELO \r\n" if name == "helohost" else b"HELO helo.example\r\n" \
        if name == "me" else b"HELO me.example\r\n"
    assert srv.records[0].lines[0] == helo


def test_fifo_smtproutes_means_no_routes(home):
    # Read as empty: no route, so the IP literal is used, and it is this
    # host (lo): netqmail's "listed as best-preference MX" bounce.
    os.mkfifo(home / "control" / "smtproutes")
    out, err, status = run_command(["[127.0.0.1]", "a@b", "c@d"], home)
    assert (out, err, status) == (AMBIGUOUS, b"", 0)


def test_fifo_tcpto_disables_it(home):
    (home / "queue" / "lock").mkdir(parents=True)
    os.mkfifo(home / "queue" / "lock" / "tcpto")
    assert_accepted(*delivery(home)[:3])


def test_fifo_resolv_conf_reads_as_defaults(tmp_path):
    fifo = tmp_path / "resolv.conf"
    os.mkfifo(fifo)
    # In a child, so that a regression hangs the child and not the suite.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from qmailremote.mx import "
         "Resolver; r = Resolver.from_system(sys.argv[1]); "
         "print(r.nameservers, r.timeout, r.attempts)", str(fifo)],
        capture_output=True, timeout=30)
    assert done.stdout == b"[('127.0.0.1', 53)] 5 2\n"


# 2. Numbers longer than CPython's int-to-str limit.

def test_long_host_bounces(home):
    host = "1" * LONG
    out, err, status = run_command([host, "a@b", "c@d"], home)
    assert (out, err, status) == (
        b"DSorry, I couldn't find any host named " + host.encode() +
        b". (#5.1.2)\n\0", b"", 0)


def test_long_zero_padded_ip_literal(home):
    host = "[127.0.0." + "0" * LONG + "1]"
    out, err, status = run_command([host, "a@b", "c@d"], home)
    assert (out, err, status) == (AMBIGUOUS, b"", 0)


@pytest.mark.parametrize("where", ["port", "timeoutremote",
                                   "timeoutconnect"])
def test_long_numbers_in_control_files(home, where):
    def prepare(port):
        if where == "port":
            route_to(home, port, b":127.0.0.1:" + b"0" * LONG +
                     b"%d\n" % port)
        else:
            # 5000 digits worth 30 modulo 2**32 (and 2**64): 30 seconds.
            (home / "control" / where).write_bytes(
                b"1" + b"0" * 63 + b"0" * (LONG - 66) + b"30\n")
    assert_accepted(*delivery(home, prepare)[:3])


def test_long_resolv_conf_options(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_bytes(b"nameserver 127.0.0.9\noptions timeout:" +
                     b"9" * LONG + b" attempts:" + b"0" * LONG + b"3\n")
    resolver = Resolver.from_system(str(conf))
    assert (resolver.timeout, resolver.attempts) == (30, 3)


@pytest.mark.parametrize("host", ["1" * LONG, "[127.0.0." + "0" * LONG +
                                                "1]"])
def test_deliver_long_host_does_not_raise(home, host):
    result = deliver(host, "a@b", ["c@d"], b"hi\n", home=str(home))
    assert result.message.letter == "D"


# 3. Descriptors above FD_SETSIZE (1024).

# Raises the soft descriptor limit, fills descriptors 3..1102, then execs
# the command or delivers in process: every descriptor opened afterwards,
# the SMTP socket included, is above 1023.
MANY_FDS = """
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
null = os.open(os.devnull, os.O_RDONLY)
for fd in range(3, 1103):
    if fd != null:
        os.dup2(null, fd, inheritable=True)
if sys.argv[1] == "command":
    os.execv(sys.argv[2], sys.argv[2:])
from qmailremote import deliver
result = deliver(*sys.argv[3:5], sys.argv[5:], b"hi\\n", home=os.environ["QMAILHOME"])
os.write(1, result.render())
"""


@pytest.mark.parametrize("how", ["command", "deliver"])
def test_descriptors_above_1023(home, how):
    if resource_hard_limit() < 2048:
        pytest.skip("the hard descriptor limit is below 2048")
    assert_accepted(*delivery(
        home, prefix=[sys.executable, "-c", MANY_FDS, how])[:3])


def resource_hard_limit():
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return sys.maxsize if hard == resource.RLIM_INFINITY else hard


# 4. Argument bytes reach the wire unchanged whatever the locale.

# Locales whose codecs CPython gets wrong (GB18030, EUC-JP) or does not
# have at all (ARMSCII-8, GEORGIAN-PS: "init_fs_encoding" without UTF-8
# mode), as (locale, charmap).
LOCALES = [("zh_CN", "GB18030"), ("ja_JP", "EUC-JP"), ("hy_AM", "ARMSCII-8"),
           ("ka_GE", "GEORGIAN-PS")]
LOCAL_PARTS = [b"x\xa6\xd9", "日本".encode(), "ß".encode(), "€".encode(),
               "дмитрий".encode(), "josé".encode(), "ünïcödé".encode(),
               "中文".encode(), "한국어".encode(), "ελληνικά".encode(),
               b"\xff\xfe", b"\x80", b"a\xa1\xa1b", b"plain"]


def _normal(name):
    return name.lower().replace("-", "").replace("_", "")


def _locale_missing():
    """Why locales cannot be built here, or None."""
    if os.path.exists("/usr/share/i18n/charmaps/GB18030.gz") and \
            subprocess.run(["sh", "-c", "command -v localedef"],
                           capture_output=True).returncode == 0:
        return None
    if os.geteuid() == 0 and subprocess.run(
            ["sh", "-c", "apt-get update -qq && apt-get install -y -qq "
             "locales"], capture_output=True).returncode == 0:
        return None
    return "localedef and the charmaps (Debian: locales) are missing"


@pytest.fixture(scope="session")
def locale_envs():
    """{name: environment selecting that locale}, building missing ones.

    A locale missing from ``locale -a`` is compiled with localedef into a
    cache directory that LOCPATH points to (GB18030 takes ~6 s, once).
    """
    listed = subprocess.run(["locale", "-a"], capture_output=True).stdout
    have = {_normal(line.decode("ascii", "replace"))
            for line in listed.split()}
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or
                         os.path.expanduser("~/.cache"),
                         "qmailremote-tests", "locales")
    envs = {}
    for language, charmap in LOCALES:
        name = f"{language}.{charmap}"
        env = dict(os.environ, LC_ALL=name)
        env.pop("LANG", None)
        if _normal(name) not in have:
            if not os.path.exists(os.path.join(cache, name, "LC_CTYPE")):
                reason = _locale_missing()
                if reason:
                    pytest.skip(reason)
                os.makedirs(cache, exist_ok=True)
                subprocess.run(["localedef", "--no-archive", "-c", "-i",
                                language, "-f", charmap,
                                os.path.join(cache, name)],
                               capture_output=True)
            env["LOCPATH"] = cache
        check = subprocess.run(["locale", "charmap"], env=env,
                               capture_output=True)
        assert check.stdout.strip() == charmap.encode(), (name, check)
        envs[name] = env
    return envs


# python -m qmailremote has no UTF-8 mode: cli reads /proc/self/cmdline.
# (Python cannot start at all under the other two without UTF-8 mode.)
MODULE = (sys.executable, "-m", "qmailremote")


@pytest.mark.parametrize("name, command", [
    *[(f"{lang}.{cmap}", (COMMAND,)) for lang, cmap in LOCALES],
    ("zh_CN.GB18030", MODULE), ("ja_JP.EUC-JP", MODULE)],
    ids=lambda value: "module" if value == MODULE else
    "command" if isinstance(value, tuple) else value)
def test_argument_bytes_under_locale(home, locale_envs, name, command):
    from qmailremote.delivery import mangle
    host = b"h\xa6\xd9\xff.example"
    sender = "ß€@sender.example".encode()
    recipients = [part + b"@dest.example" for part in LOCAL_PARTS]
    out, err, status, srv = delivery(
        home, lambda port: route_to(home, port, host + b":127.0.0.1:%d\n" %
                                    port),
        args=[os.fsdecode(arg) for arg in (host, sender, *recipients)],
        script=smtp_script(rcpts=[b"250 ok\r\n"] * len(recipients)),
        env=locale_envs[name], command=command)
    assert (status, err) == (0, b"")
    assert out.endswith(b"K127.0.0.1 accepted message.\n"
                        b"Remote host said: 250 ok queued\n\0"), out
    lines = srv.records[0].lines
    assert lines[1] == b"MAIL FROM:<" + mangle(sender) + b">\r\n"
    assert lines[2:2 + len(recipients)] == [
        b"RCPT TO:<" + mangle(r) + b">\r\n" for r in recipients]


# 5. PYTHON* variables in qmail's environment have no effect.

# The variables, and others that change start-up or output; the
# PYTHONPATH directory holds a struct.py that breaks any import of struct.
PYTHON_VARIABLES = {
    "PYTHONHOME": "/x", "PYTHONHASHSEED": "x", "PYTHONUTF8": "yes",
    "PYTHONMALLOC": "x", "PYTHONINTMAXSTRDIGITS": "x", "PYTHONVERBOSE": "1",
    "PYTHONPROFILEIMPORTTIME": "1", "PYTHONPATH": None, "PYTHONSTARTUP": "/x",
    "PYTHONWARNINGS": "error", "PYTHONDEVMODE": "1", "PYTHONIOENCODING": "x",
    "PYTHONPLATLIBDIR": "x", "PYTHONTRACEMALLOC": "5", "PYTHONINSPECT": "1"}


@pytest.mark.parametrize("variable", sorted(PYTHON_VARIABLES) + ["all"])
def test_python_variables_ignored(home, tmp_path, variable):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "struct.py").write_text("raise ImportError('shadowed')\n")
    variables = dict(PYTHON_VARIABLES, PYTHONPATH=str(shadow))
    if variable != "all":
        variables = {variable: variables[variable]}
    assert_accepted(*delivery(home, env=dict(os.environ, **variables))[:3])


# 6. SIGINT at any point of start-up: a report and exit 0, or death by
# SIGINT (qmail-rspawn: "qmail-remote crashed.", retried); never exit 1.

def test_sigint_during_start_up(home):
    import random
    import signal
    import time
    outcomes = set()
    for _ in range(60):
        proc = subprocess.Popen(
            [COMMAND, "[127.0.0.1]", "a@b", "c@d"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ, QMAILHOME=str(home)),
            # The default disposition, even when the suite itself runs with
            # SIGINT ignored (a background job of a non-interactive shell).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        delay = random.uniform(0, 0.025)  # spread over the whole start-up
        if delay > 0.001:
            time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert err == b""
        if proc.returncode == -signal.SIGINT:
            outcomes.add("killed")
        else:
            assert (proc.returncode, out) == (0, AMBIGUOUS)
            outcomes.add("finished")
    assert "killed" in outcomes


def test_sigint_ignored_by_parent_stays_ignored(home):
    import signal
    done = subprocess.run(
        [COMMAND, "[127.0.0.1]", "a@b", "c@d"], stdin=subprocess.DEVNULL,
        capture_output=True, env=dict(os.environ, QMAILHOME=str(home)),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, AMBIGUOUS, b"")


# 7. Tight resource limits: a report and exit 0 at any limit (below the
# floor, the floor's report), a whole delivery at the floor.

MEMORY_FLOOR = 32 << 20   # setup.py MEMORY_FLOOR_MB
NOFILE_FLOOR = 8          # setup.py NOFILE_FLOOR


def prlimit_options(limits):
    """prlimit sets the limits, then execs the command."""
    return ["prlimit"] + [f"--{name}={value}"
                          for name, value in limits.items()]


def prlimited(args, home, limits):
    return run_command(args, home, prefix=prlimit_options(limits))


@pytest.mark.parametrize("limits", [
    {"as": 10240 << 10},      # ulimit -v 10240
    {"data": 10240 << 10},    # ulimit -d 10240
    {"nofile": 4},            # ulimit -n 4
    {"nofile": 0},
    {"as": 1 << 20, "nofile": 3},
], ids=["v10240", "d10240", "n4", "n0", "v1024-n3"])
def test_below_the_floor_is_a_report(home, limits):
    out, err, status = prlimited(["[127.0.0.1]", "a@b", "c@d"], home, limits)
    assert (status, err) == (0, b"")
    assert out.startswith(b"Zqmail-remote (qmailremote) needs a ")
    assert out.endswith(b". (#4.3.0)\n\0") and out.count(b"\0") == 1


@pytest.mark.parametrize("limits", [
    {"as": MEMORY_FLOOR, "data": MEMORY_FLOOR, "nofile": NOFILE_FLOOR}])
@pytest.mark.parametrize("size", [1000, 12 << 20])
def test_delivery_at_the_floor(home, tmp_path, limits, size):
    message = tmp_path / "message"
    message.write_bytes((b"y" * 75 + b"\n") * (size // 76 + 1))
    with open(message, "rb") as stdin:
        assert_accepted(*delivery(home, stdin=stdin,
                                  prefix=prlimit_options(limits))[:3])


def test_limits_sweep_never_exit_1(home):
    for limits in ([{"as": mib << 20} for mib in (1, 2, 4, 8, 12, 16, 24,
                                                  31, 32, 48)] +
                   [{"data": mib << 20} for mib in (1, 4, 8, 16, 31, 32)] +
                   [{"nofile": n} for n in range(0, 12)]):
        out, err, status = prlimited(["[127.0.0.1]", "a@b", "c@d"], home,
                                     limits)
        assert (status, err) == (0, b""), limits
        assert out == AMBIGUOUS or out.startswith(
            b"Zqmail-remote (qmailremote) needs a "), (limits, out)
