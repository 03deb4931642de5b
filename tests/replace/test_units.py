"""Pure helpers: version ordering as ldconfig does it, install(1) modes, dependency order, names, manifests."""

from __future__ import annotations

import os
import subprocess

import pytest

from soswap.errors import UsageError
from soswap.replace.modespec import parse_mode
from soswap.replace.naming import NAME_MAX, backup_name, new_txid, temp_name
from soswap.replace.order import DynInfo, dependency_order
from soswap.replace.sonames import libcmp
from soswap.replace.statedir import default_state_dir
from soswap.replace.targets import read_manifest


@pytest.mark.parametrize(("a", "b", "sign"), [
    ("libfoo.so.1.2.4", "libfoo.so.1.2.3", 1),
    ("libfoo.so.1.2.10", "libfoo.so.1.2.9", 1),
    ("libfoo.so.1.2", "libfoo.so.1.2.0", -1),
    ("libfoo.so.1.2.3", "libfoo.so.1.2.3", 0),
    ("libfoo.so.1.10", "libfoo.so.1.9.9", 1),
    ("libfoo.so.1a", "libfoo.so.12", -1),
    # digit runs accumulate in a C int (wrapping): 4294967297 counts as 1; and no run is too long to compare
    ("libfoo.so.4294967297", "libfoo.so.2", -1),
    ("libc.so." + "6" * 5000, "libc.so.6", -1),
])
def test_libcmp_like_ldconfig(a, b, sign):
    got = libcmp(a, b)
    assert (got > 0) - (got < 0) == sign
    got = libcmp(b, a)
    assert (got > 0) - (got < 0) == -sign


@pytest.mark.parametrize("mode", ["755", "0644", "4755", "u=rwx,g=rx,o=", "a+x", "u+s,go=rx", "go-w", "a=r,u+w",
                                  "+t", "ug=rw", "a+rX", "a+X", "ug=rwX", "a+x,a-X", "00755", "000755", "07777",
                                  "u=rwx,g=u", "o=rwx,u=o", "u=rw,go=u-w", "=rw", "a=r,u+X", "=755", "+7", "-7",
                                  "=0", "=7,u+x", "=rwx,+1"])
def test_mode_like_install(tmp_path, mode):
    """-m MODE gives the same bits as install(1) -m MODE (the oracle)."""
    src = tmp_path / "src"
    src.write_bytes(b"x")
    dest = tmp_path / f"d-{mode.replace('/', '_')}"
    r = subprocess.run(["install", "-m", mode, str(src), str(dest)], capture_output=True)
    assert r.returncode == 0
    assert parse_mode(mode) == os.stat(dest).st_mode & 0o7777


@pytest.mark.parametrize("bad", ["", "9", "u=q", "x+r", "rwx", "017777", "u=ug", "g=x,u", "u=7", "a=7", "=17777",
                                 "=7+x", "=7=5", "=7-1"])
def test_bad_modes(bad):
    with pytest.raises(UsageError):
        parse_mode(bad)


def test_dependency_order():
    names = ["app", "libb.so.1.0", "liba.so.1.0", "README"]
    infos = [DynInfo(None, ("libb.so.1", "libc.so.6")), DynInfo("libb.so.1", ("liba.so.1",)),
             DynInfo("liba.so.1", ()), None]
    assert dependency_order(names, infos) == [2, 1, 0, 3]
    # a cycle keeps the given order for its members and never loses a file
    cyc = dependency_order(["x", "y"], [DynInfo("x", ("y",)), DynInfo("y", ("x",))])
    assert sorted(cyc) == [0, 1]
    assert dependency_order([], []) == []


def test_names_are_hidden_and_bounded():
    txid = new_txid()
    assert temp_name("libfoo.so.1", txid) == f".libfoo.so.1.new-{txid}"
    assert backup_name("libfoo.so.1", txid) == f".libfoo.so.1.bak-{txid}"
    long = "l" * 250
    for n in (temp_name(long, txid), backup_name(long, txid)):
        assert len(n) <= NAME_MAX and n.startswith(".soswap-")
    assert new_txid() != txid or new_txid() > txid


def test_manifest_errors(tmp_path):
    m = tmp_path / "m"
    for text, message in [("", "lists no files"), ("a\n", "expected"), ("a b mode=\n", "bad option"),
                          ("a b colour=red\n", "unknown option"), ("'a b\n", "No closing quotation"),
                          ("a b mode=99\n", "invalid mode"),
                          ("a b mode=u+s,g=u mode=0755\n", r"m:1: mode= given twice")]:
        m.write_text(text)
        with pytest.raises(UsageError, match=message):
            read_manifest(str(m))
    m.write_bytes(b"a\0 b\n")
    with pytest.raises(UsageError, match="NUL"):
        read_manifest(str(m))
    m.write_bytes(b"src\xff dir/\n")  # non-UTF-8 names round-trip
    (req,) = read_manifest(str(m))
    assert os.fsencode(req.dest).endswith(b"/dir/src\xff")
    m.write_text("a b mode=99\n")  # a bad value names its line, as the other manifest errors do
    with pytest.raises(UsageError, match=r"m:1: invalid mode"):
        read_manifest(str(m))


def test_manifest_comments_start_words_as_in_sh(tmp_path):
    """'#' starts a comment only at the start of a word outside quotes (lib#1.so is one word)."""
    m = tmp_path / "m"
    m.write_text("# a comment\nsrc dst/lib#1.so mode=0644 # trailing\n'q#' \"d #x\" # c\nsrc2 d\\ #e\n")
    reqs = read_manifest(str(m))
    assert [os.path.basename(r.dest) for r in reqs] == ["lib#1.so", "d #x", "d #e"]
    assert reqs[0].mode == 0o644 and os.path.basename(reqs[1].source) == "q#"


def test_default_state_dir(monkeypatch):
    monkeypatch.delenv("SOSWAP_STATE_DIR", raising=False)
    expected = "/var/lib/soswap" if os.geteuid() == 0 else os.path.expanduser("~/.local/state/soswap")
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_state_dir() == expected
    monkeypatch.setenv("SOSWAP_STATE_DIR", "/somewhere")
    assert default_state_dir() == "/somewhere"
