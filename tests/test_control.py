"""control/* parsing (reference section 4) and the home directory."""

import os

import pytest

from qmailremote import control
from qmailremote.report import TEMP_CHDIR, TEMP_CONTROL, Failure


@pytest.fixture
def home(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_bytes(b"me.example\n")
    return tmp_path


def read(home):
    fd = control.open_home(str(home))
    try:
        return control.read_controls(fd)
    finally:
        os.close(fd)


def write(home, name, data):
    (home / "control" / name).write_bytes(data)


def test_defaults(home):
    c = read(home)
    assert (c.helohost, c.timeoutremote, c.timeoutconnect, c.routes) == \
        (b"me.example", 1200, 60, [])


@pytest.mark.parametrize("data, helo", [
    (b"hh.example\r\n", b"hh.example\r"),       # CR is not stripped
    (b"  h h \t \n", b"  h h"),                 # leading blanks kept
    (b"", b""),                                 # empty file: empty value
    (b"first\nsecond\n", b"first"),             # first line only
    (b"x \t\n\n", b"x"),
    (b"no newline", b"no newline"),
])
def test_helohost_first_line(home, data, helo):
    write(home, "helohost", data)
    assert read(home).helohost == helo


def test_helohost_defaults_to_me(home):
    write(home, "me", b"  me.example \t\n")
    assert read(home).helohost == b"  me.example"


def test_no_me_no_helohost_is_fatal(home):
    (home / "control" / "me").unlink()
    with pytest.raises(Failure) as failure:
        read(home)
    assert failure.value.report == TEMP_CONTROL


def test_helohost_without_me_is_fine(home):
    (home / "control" / "me").unlink()
    write(home, "helohost", b"h.example\n")
    assert read(home).helohost == b"h.example"


@pytest.mark.parametrize("data, value", [
    (b"2\n", 2), (b"2junk\n", 2), (b"2\r\n", 2), (b"4294967298\n", 2),
    (b"4294967295\n", -1), (b"2147483648\n", -2147483648),
    (b"  2\n", 1200), (b"-5\n", 1200), (b"abc\n", 1200), (b"", 1200),
    (b"0\n", 0), (b"007\n", 7),
])
def test_integers(home, data, value):
    write(home, "timeoutremote", data)
    write(home, "timeoutconnect", data)
    c = read(home)
    assert c.timeoutremote == value
    assert c.timeoutconnect == (60 if value == 1200 else value)


@pytest.mark.parametrize("name", ["me", "timeoutremote", "timeoutconnect",
                                  "helohost", "smtproutes"])
def test_directory_is_unreadable(home, name):
    path = home / "control" / name
    if path.exists():
        path.unlink()
    path.mkdir()
    with pytest.raises(Failure) as failure:
        read(home)
    assert failure.value.report == TEMP_CONTROL


def test_smtproutes_lines(home):
    write(home, "smtproutes",
          b"# comment\n\n  \t\na.example:relay \t\n :sp\nx\0y:z\n\0skip:me\n"
          b"last:line")
    assert read(home).routes == [b"a.example:relay", b" :sp", b"x",
                                 b"y:z", b"last:line"]


def test_smtproutes_crlf_keeps_cr(home):
    write(home, "smtproutes", b"x:[127.0.0.1]\r\n")
    assert read(home).routes == [b"x:[127.0.0.1]\r"]


@pytest.mark.parametrize("where", ["missing", "file"])
def test_home_unusable(tmp_path, where):
    target = tmp_path / "nohome"
    if where == "file":
        target.write_bytes(b"")
    with pytest.raises(Failure) as failure:
        control.open_home(str(target))
    assert failure.value.report == TEMP_CHDIR


def test_home_from_environment(home, monkeypatch):
    monkeypatch.setenv("QMAILHOME", str(home))
    fd = control.open_home()
    try:
        assert control.read_controls(fd).helohost == b"me.example"
    finally:
        os.close(fd)


def test_empty_qmailhome_means_default(monkeypatch):
    monkeypatch.setenv("QMAILHOME", "")
    if os.path.isdir(control.DEFAULT_HOME):
        os.close(control.open_home())
    else:
        with pytest.raises(Failure):
            control.open_home()


def test_profiles_default_to_esmtp_with_chunking(home):
    c = read(home)
    assert (c.esmtp, c.chunking) == (True, True)


@pytest.mark.parametrize("make", [
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(b"0\n"),        # any content: existence counts
    lambda p: p.mkdir(),
    lambda p: p.symlink_to("nowhere"),      # a dangling link does not exist
])
def test_noesmtp_and_nochunking_by_existence(home, make):
    for name in ("noesmtp", "nochunking"):
        make(home / "control" / name)
    exists = (home / "control" / "noesmtp").exists()
    c = read(home)
    assert (c.esmtp, c.chunking) == (not exists, not exists)


def test_nochunking_alone_keeps_esmtp(home):
    write(home, "nochunking", b"")
    c = read(home)
    assert (c.esmtp, c.chunking) == (True, False)


def test_profile_file_that_cannot_be_looked_at_is_fatal(home):
    # Not ENOENT (here ELOOP): as with the other control files, a temporary
    # failure, never a guess at the profile.
    (home / "control" / "noesmtp").symlink_to("noesmtp")
    with pytest.raises(Failure) as failure:
        read(home)
    assert failure.value.report == TEMP_CONTROL
