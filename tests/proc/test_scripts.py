"""Interpreter scripts (stale.md §(b) 23-26): found from argv, checked by stat, never executed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soswap.proc import ScanOptions, scan_stale
from soswap.proc.scripts import PERL, PYTHON, RUBY, SHELL, family, script_argument
from support.build import requires_root

from .conftest import run_cli, stale_json, wait_after_start

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def scan_pid(pid: int) -> list:
    report = scan_stale(ScanOptions(pids=[pid], kernel=False))
    return [f for p in report.processes for f in p.files]


# argv parsing (23: "-c, -m and option values are not mistaken for the script") ------------------------------
@pytest.mark.parametrize("fam,argv,expected", [
    (PYTHON, [b"python3", b"-u", b"app.py", b"--flag"], b"app.py"),
    (PYTHON, [b"python3", b"-W", b"error", b"-X", b"dev", b"app.py"], b"app.py"),
    (PYTHON, [b"python3", b"-Werror", b"-uB", b"app.py"], b"app.py"),
    (PYTHON, [b"python3", b"-c", b"import x", b"app.py"], None),
    (PYTHON, [b"python3", b"-uc", b"print(1)"], None),
    (PYTHON, [b"python3", b"-m", b"http.server", b"8000"], None),
    (PYTHON, [b"python3", b"--check-hash-based-pycs", b"always", b"app.py"], b"app.py"),
    (PYTHON, [b"python3", b"--", b"-app.py"], b"-app.py"),
    (PYTHON, [b"python3", b"-"], None),
    (PYTHON, [b"python3"], None),
    (PERL, [b"perl", b"-w", b"x.pl"], b"x.pl"),
    (PERL, [b"perl", b"-I", b"/opt/lib", b"-Mstrict", b"x.pl"], b"x.pl"),
    (PERL, [b"perl", b"-e", b"print 1", b"x.pl"], None),
    (PERL, [b"perl", b"-0777", b"-ne", b"print", b"f"], None),
    (PERL, [b"perl", b"-i.bak", b"-p", b"x.pl"], b"x.pl"),
    (RUBY, [b"ruby", b"-I", b"lib", b"-r", b"json", b"app.rb"], b"app.rb"),
    (RUBY, [b"ruby", b"-e", b"puts 1"], None),
    (RUBY, [b"ruby", b"--encoding", b"utf-8", b"app.rb"], b"app.rb"),
    (SHELL, [b"bash", b"x.sh", b"arg"], b"x.sh"),
    (SHELL, [b"bash", b"-e", b"-o", b"pipefail", b"x.sh"], b"x.sh"),
    (SHELL, [b"sh", b"+o", b"noglob", b"x.sh"], b"x.sh"),
    (SHELL, [b"bash", b"--rcfile", b"rc", b"x.sh"], b"x.sh"),
    (SHELL, [b"bash", b"-c", b"echo hi", b"x.sh"], None),
    (SHELL, [b"bash", b"-s", b"arg"], None),
    (SHELL, [b"-bash"], None),
])
def test_script_argument(fam: str, argv: list, expected: object) -> None:
    assert script_argument(fam, argv) == expected


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"python", b"pypy", b"perl", b"ruby", b"sh", b"bash", b"ksh93", b"py", b"rubyd", b""]),
       st.text(alphabet="0123456789.dmu-x", max_size=6))
def test_family_matches_the_documented_patterns(stem: bytes, tail: str) -> None:
    """family() is byte operations; the patterns it implements are these regular expressions."""
    import re

    base = stem + tail.encode()
    expected = None
    for pattern, name in ((rb"^(python|pypy)[0-9.]*[dmu]*$", PYTHON), (rb"^perl[0-9.]*$", PERL),
                          (rb"^ruby[0-9.]*$", RUBY), (rb"^(sh|bash|dash|zsh|ksh|ksh93|mksh)$", SHELL)):
        if re.match(pattern, base):
            expected = name
            break
    assert family(b"/usr/bin/" + base) == expected
    assert family(b"/usr/bin/" + base + b" (deleted)") == expected


def test_family_by_basename() -> None:
    assert family(b"/usr/bin/python3.11") == PYTHON
    assert family(b"/usr/bin/perl5.36.0") == PERL
    assert family(b"/usr/bin/ruby3.1") == RUBY
    assert family(b"/usr/bin/dash") == SHELL
    assert family(b"/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0") is None
    assert family(b"/usr/bin/pythonista") is None


# 23: replaced scripts are reported ------------------------------------------------------------------------
PY_SCRIPT = "import sys, time\nopen(sys.argv[1], 'w').close()\nwhile True:\n    time.sleep(60)\n"
PERL_SCRIPT = "open(my $f, '>', $ARGV[0]); close($f); sleep 60 while 1;\n"
RUBY_SCRIPT = "File.write(ARGV[0], '')\nloop { sleep 60 }\n"
SH_SCRIPT = 'touch "$1"\nwhile true; do sleep 60; done\n'


def _cases() -> list:
    cases = [("python", [PY, "-u"], "app.py", PY_SCRIPT), ("perl", ["perl", "-w"], "x.pl", PERL_SCRIPT),
             ("bash", ["bash"], "x.sh", SH_SCRIPT), ("dash", ["dash"], "x.sh", SH_SCRIPT)]
    if shutil.which("ruby"):
        cases.append(("ruby", ["ruby", "-W0"], "app.rb", RUBY_SCRIPT))
    return cases


@pytest.mark.parametrize("lang,interp,name,body", _cases(), ids=[c[0] for c in _cases()])
def test_replaced_script_is_reported(procs, tmp_path: Path, lang: str, interp: list, name: str, body: str) -> None:
    script = tmp_path / name
    script.write_text(body)
    ready = tmp_path / "ready"
    p = procs.start([*interp, name, str(ready)], cwd=tmp_path, wait_for_file=ready)  # relative: via cwd
    assert scan_pid(p.pid) == []
    wait_after_start(p.pid)
    tmp = tmp_path / (name + ".new")
    tmp.write_text(body + "\n# v2\n")
    os.rename(tmp, script)
    (f,) = scan_pid(p.pid)
    assert (f.role, f.path) == ("script", str(script))
    assert f.kind in ("replaced", "deleted")
    doc = stale_json("--pid", str(p.pid))
    assert [x["role"] for x in doc["processes"][0]["files"]] == ["script"]


def test_script_replaced_with_preserved_mtime_is_reported(procs, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(PY_SCRIPT)
    old = script.stat()
    ready = tmp_path / "ready"
    p = procs.start([PY, str(script), str(ready)], wait_for_file=ready)
    wait_after_start(p.pid)
    new = tmp_path / "app.py.new"
    new.write_text(PY_SCRIPT + "# v2\n")
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))  # cp -p / tar / dpkg keep the old mtime
    os.rename(new, script)
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.role) == ("replaced", "script")


def test_script_written_in_place_is_modified(procs, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(PY_SCRIPT)
    ready = tmp_path / "ready"
    p = procs.start([PY, str(script), str(ready)], wait_for_file=ready)
    wait_after_start(p.pid)
    with open(script, "a") as f:
        f.write("# appended\n")
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.role) == ("modified", "script")


# 24 --------------------------------------------------------------------------------------------------------
def test_chmod_and_backdated_touch_are_not_reported(procs, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(PY_SCRIPT)
    ready = tmp_path / "ready"
    p = procs.start([PY, str(script), str(ready)], wait_for_file=ready)
    wait_after_start(p.pid)
    os.chmod(script, 0o700)  # ctime moves: not a content change
    os.chown(script, 0, 0)
    subprocess.run(["touch", "-d", "2020-01-01", str(script)], check=True)
    assert scan_pid(p.pid) == []


# 25 --------------------------------------------------------------------------------------------------------
@requires_root
def test_interpreter_that_chroots_is_not_always_stale(procs, tmp_path: Path) -> None:
    jail = tmp_path / "empty-jail"
    jail.mkdir()
    script = tmp_path / "wsdd.py"
    ready = tmp_path / "ready"
    # Like wsdd --chroot: start from a relative script, then chroot into an empty directory.
    script.write_text("import os, sys, time\nopen(sys.argv[1], 'w').close()\nos.chroot(sys.argv[2])\n"
                      "os.chdir('/')\nwhile True:\n    time.sleep(60)\n")
    p = procs.start([PY, "wsdd.py", str(ready), str(jail)], cwd=tmp_path, wait_for_file=ready)
    import time

    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{p.pid}/root") != str(jail):
        assert time.monotonic() < deadline and p.alive()
        time.sleep(0.01)
    assert scan_pid(p.pid) == []  # the relative script is not visible from the new cwd: unknown, not stale


# 26: nothing taken from a scanned process is executed ------------------------------------------------------
MARK_PY = "import os\nopen(os.path.join({marks!r}, str(os.getpid())), 'w').close()\n"
MARK_PL = "package SoswapMark; open(my $f, '>', '{marks}/' . $$); close($f); 1;\n"
MARK_RB = "File.write(File.join({marks!r}, Process.pid.to_s), '')\n"


@requires_root
def test_no_exec_of_target_environment(procs, fx, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    payload = tmp_path / "payload"
    marks.mkdir()
    payload.mkdir()
    os.chmod(marks, 0o777)
    (payload / "sitecustomize.py").write_text(MARK_PY.format(marks=str(marks)))
    (payload / "usercustomize.py").write_text(MARK_PY.format(marks=str(marks)))
    (payload / "SoswapMark.pm").write_text(MARK_PL.format(marks=str(marks)))
    (payload / "soswap_mark.rb").write_text(MARK_RB.format(marks=str(marks)))
    env = dict(os.environ, PYTHONPATH=str(payload), PERL5LIB=str(payload), PERL5OPT="-MSoswapMark",
               RUBYLIB=str(payload), RUBYOPT="-rsoswap_mark")
    started = []
    # Targets load the payload themselves (their own mark is expected); a scanner that ran the target's
    # interpreter with the target's environment would leave a mark with another PID.
    py = tmp_path / "app.py"
    py.write_text(PY_SCRIPT)
    r1 = tmp_path / "r1"
    started.append(procs.start([PY, str(py), str(r1)], env=env, wait_for_file=r1))
    pl = tmp_path / "x.pl"
    pl.write_text(PERL_SCRIPT)
    r2 = tmp_path / "r2"
    started.append(procs.start(["perl", str(pl), str(r2)], env=env, wait_for_file=r2))
    if shutil.which("ruby"):
        rb = tmp_path / "app.rb"
        rb.write_text(RUBY_SCRIPT)
        r3 = tmp_path / "r3"
        started.append(procs.start(["ruby", str(rb), str(r3)], env=env, wait_for_file=r3))
    # An "interpreter" in a user-writable place (/home/u/usr/bin/python3): never run by the scanner either;
    # it would leave no mark of its own, so any mark from it would show up as a new PID below.
    fakebin = tmp_path / "home" / "u" / "usr" / "bin"
    fake = fx.program(fakebin, "python3")
    r4 = tmp_path / "r4"
    started.append(procs.start([fake, str(r4)], wait_for_file=r4))
    for p in started:
        wait_after_start(p.pid)
    for script in (py, pl):  # make the scripts stale: a new file at each path
        new = script.with_name(script.name + ".new")
        new.write_text(script.read_text() + "\n# v2\n")
        os.rename(new, script)
    before = sorted(os.listdir(marks))
    assert str(started[0].pid) in before and str(started[1].pid) in before  # the targets' own marks
    doc = stale_json()
    run_cli(["stale", "--batch"])
    run_cli(["users", str(py)])
    stale_pids = {x["pid"] for x in doc["processes"]}
    assert started[0].pid in stale_pids and started[1].pid in stale_pids
    assert sorted(os.listdir(marks)) == before  # no new mark: nothing was executed or imported
