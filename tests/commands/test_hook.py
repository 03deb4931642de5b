"""``soswap hook``: dpkg's status stream, apt's Post-Invoke, and a real ``apt-get`` run with contrib/'s files."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from support import build
from support.build import requires_root

ROOT = Path(__file__).resolve().parents[2]
SRC = str(ROOT / "src")
LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
#: the "new version" of LIBZ: another build (another GNU build-id), so that --ignore-identical reports it
OTHER_BUILD = "/usr/lib/x86_64-linux-gnu/libm.so.6"
UPGRADE = (b"processing: upgrade: libfoo1:amd64\nstatus: libfoo1:amd64: half-installed\n"
           b"status: libfoo1:amd64: unpacked\n")
CONFIGURE_ONLY = (b"processing: configure: libfoo1:amd64\nstatus: libfoo1:amd64: half-configured\n"
                  b"status: libfoo1:amd64: installed\nprocessing: trigproc: man-db:amd64\n")
REMOVAL = b"processing: remove: libfoo1:amd64\nstatus: libfoo1:amd64: config-files\n"
ERROR = b"status: libfoo1:amd64 : error : subprocess installed post-installation script returned error 1\n"


def hook(*args: str, stdin: bytes = b"", env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=SRC)
    environ.pop("SOSWAP_SUSPEND", None)
    environ.update(env or {})
    r = subprocess.run([sys.executable, "-m", "soswap", "hook", *args], input=stdin, capture_output=True,
                       env=environ, timeout=120)
    assert b"Traceback" not in r.stderr, r.stderr
    return r


def markers(state: Path) -> Optional[List[str]]:
    return sorted(os.listdir(state)) if state.exists() else None


@pytest.mark.parametrize("stream, expected", [
    (UPGRADE, ["changed"]),
    (REMOVAL, ["changed"]),
    (CONFIGURE_ONLY, None),  # nothing unpacked or removed: no marker, not even the directory
    (UPGRADE + ERROR, ["changed", "errored"]),
    (UPGRADE.replace(b"\n", b"\r\n"), ["changed"]),
    (b"status: libfoo1:amd64: unpacked", ["changed"]),  # a last line without its newline
])
def test_dpkg_status_notes_changes_and_errors(tmp_path: Path, stream: bytes, expected: Optional[List[str]]) -> None:
    state = tmp_path / "state"
    r = hook("dpkg-status", "--state-dir", str(state), stdin=stream)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    assert markers(state) == expected


def test_dpkg_status_reads_its_input_to_the_end_even_when_it_cannot_write(tmp_path: Path) -> None:
    """dpkg must never see a broken pipe: the logger reads everything, then reports its problem in one line."""
    (tmp_path / "file").write_bytes(b"")
    state = tmp_path / "file" / "state"  # under a regular file: cannot be created
    p = subprocess.Popen([sys.executable, "-m", "soswap", "hook", "dpkg-status", "--state-dir", str(state)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=SRC))
    try:
        assert p.stdin is not None
        for _ in range(2000):  # 8 MB, far beyond a pipe's buffer: a reader that stopped early breaks this
            p.stdin.write(CONFIGURE_ONLY * 32 + UPGRADE * 10)
        p.stdin.close()
        assert p.stdout is not None and p.stderr is not None
        out, err = p.stdout.read(), p.stderr.read()
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("soswap hook dpkg-status: ") and lines[0].endswith("; skipped")


def test_apt_hook_skips_when_suspended_unchanged_or_after_a_dpkg_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "changed").touch()
    r = hook("apt", "--state-dir", str(state), env={"SOSWAP_SUSPEND": "1"})
    assert r.returncode == 0 and r.stdout == b"" and markers(state) == ["changed"]  # left for the next run

    (state / "changed").unlink()
    r = hook("apt", "--state-dir", str(state))
    assert r.returncode == 0 and r.stdout == b""  # dpkg-status ran here and saw nothing unpacked

    (state / "changed").touch()
    (state / "errored").touch()
    r = hook("apt", "--state-dir", str(state))
    assert r.returncode == 0
    assert r.stdout.decode() == "soswap: dpkg reported an error: not checking for processes that run old code\n"
    assert markers(state) == []  # taken: the next apt run starts afresh


def test_apt_hook_waits_for_the_status_logger_dpkg_left_running(procs, tmp_path: Path) -> None:
    """dpkg never waits for its status logger: apt's Post-Invoke can start while the logger of the last dpkg
    run has not written its markers yet (seen in CI under load: the upgrade's "changed" marker came after the
    apt hook looked, so the hook skipped its check and the marker was left for the next apt run). The hook
    waits for the running logger, then takes what it wrote."""
    state = tmp_path / "state"
    state.mkdir()  # an earlier run's logger made it: no marker means "nothing unpacked"
    environ = dict(os.environ, PYTHONPATH=SRC)
    environ.pop("SOSWAP_SUSPEND", None)
    logger = subprocess.Popen([sys.executable, "-m", "soswap", "hook", "dpkg-status", "--state-dir", str(state)],
                              stdin=subprocess.PIPE, env=environ)
    try:
        logger.stdin.write(UPGRADE)  # type: ignore[union-attr]
        logger.stdin.flush()  # type: ignore[union-attr]
        apt = subprocess.Popen([sys.executable, "-m", "soswap", "hook", "apt", "--state-dir", str(state)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ)
        time.sleep(1.5)  # the apt hook has started and looked by now; dpkg "exits": the logger's input ends
        assert apt.poll() is None, apt.communicate()
        logger.stdin.close()  # type: ignore[union-attr]
        assert logger.wait(timeout=60) == 0
        out, err = apt.communicate(timeout=120)
    finally:
        for p in (logger,) + ((apt,) if "apt" in locals() else ()):
            if p.poll() is None:
                p.kill()
            p.wait()
    assert apt.returncode == 0 and b"Traceback" not in err, err
    assert markers(state) == []  # the apt hook took the upgrade's marker (and so ran its check)


def _targets_of(pid: int) -> List[str]:
    """The group lines of the summary for this one process, as ``soswap stale --batch`` groups it."""
    from soswap.proc.scan import ScanOptions, scan_stale
    from soswap.report.batch import restart_targets

    report = scan_stale(ScanOptions(pids=[pid], kernel=False))
    assert len(report.processes) == 1, report
    t = restart_targets(report)
    return [*t.services, *t.sessions, *t.containers, *(f"{n}={','.join(map(str, p))}" for n, p in t.loose.items())]


def _mapper(procs, lib: Path, ready: Path):  # type: ignore[no-untyped-def]
    code = f"import ctypes, time; ctypes.CDLL({str(lib)!r}); open({str(ready)!r}, 'w').close(); time.sleep(600)"
    return procs.start([sys.executable, "-c", code], wait_for_file=ready)


def test_apt_hook_lists_a_process_that_runs_a_replaced_library(procs, tmp_path: Path) -> None:
    lib = tmp_path / "libhookz.so"
    shutil.copyfile(LIBZ, lib)
    p = _mapper(procs, lib, tmp_path / "ready")
    new = tmp_path / "libhookz.so.new"
    new.write_bytes(Path(OTHER_BUILD).read_bytes())
    os.rename(new, lib)
    state = tmp_path / "state"
    state.mkdir()
    (state / "changed").touch()
    r = hook("apt", "--state-dir", str(state))
    text = r.stdout.decode()
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert re.match(r"soswap: \d+ process(es run| runs) old code \(details: soswap stale\)( \(partial: [^)]*\))?\n",
                    text), text
    for entry in _targets_of(p.pid):
        assert entry in text, (entry, text)


def test_apt_hook_leaves_out_a_reinstall_of_the_same_bytes(procs, tmp_path: Path) -> None:
    lib = tmp_path / "libhooksame.so"
    shutil.copyfile(LIBZ, lib)
    p = _mapper(procs, lib, tmp_path / "ready")
    new = tmp_path / "libhooksame.so.new"
    shutil.copyfile(LIBZ, new)
    os.rename(new, lib)  # what dpkg does on a reinstall: a new inode with the same content
    assert _targets_of(p.pid)  # soswap stale without --ignore-identical reports it
    r = hook("apt", "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert not re.search(rb"\b%d\b" % p.pid, r.stdout), r.stdout


def test_apt_preinstall_reads_every_input_protocol() -> None:
    from soswap.commands.hook import apt_actions

    v1 = "/var/cache/apt/archives/libfoo1_2.0_amd64.deb\n/tmp/x y/bar_1_all.deb\n\n"
    assert apt_actions(v1) == (["/var/cache/apt/archives/libfoo1_2.0_amd64.deb", "/tmp/x y/bar_1_all.deb"], [])
    v2 = ("VERSION 2\nAPT::Architecture=amd64\nDPkg::Tools::Options::soswap::Version=2\n\n"
          "libfoo1 1.0 < 2.0 /var/cache/apt/archives/libfoo1_2.0_amd64.deb\n"
          "libold - < 1.0 **CONFIGURE**\nlibgone 1.0 > - **REMOVE**\n")
    assert apt_actions(v2) == (["/var/cache/apt/archives/libfoo1_2.0_amd64.deb"], [("libgone", None)])
    # version 3: the architecture and Multi-Arch type after each version (pkgDPkgPM::SendPkgsInfo)
    v3 = ("VERSION 3\nAPT::Architecture=amd64\n\n"
          "libfoo1 1.0 amd64 same < 2.0 amd64 same /var/cache/apt/archives/libfoo1_2.0_amd64.deb\n"
          "newpkg - - none < 1.0 all foreign /var/cache/apt/archives/newpkg_1.0_all.deb\n"
          "libgone 1.0 i386 same > - - none **REMOVE**\ntool 3 amd64 none > - - none **REMOVE**\n"
          "libfoo1 1.0 amd64 same < 2.0 amd64 same **CONFIGURE**\n")
    assert apt_actions(v3) == (["/var/cache/apt/archives/libfoo1_2.0_amd64.deb",
                                "/var/cache/apt/archives/newpkg_1.0_all.deb"],
                               [("libgone", "i386"), ("tool", "amd64")])
    assert apt_actions("") == ([], [])
    assert apt_actions("VERSION 3\nno blank line\n") == ([], [])
    # the action is the rest of the line: a file name with spaces stays whole
    spaced = "VERSION 3\n\nlibfoo1 1.0 amd64 same < 2.0 amd64 same /tmp/x y/sp ace.deb\n"
    assert apt_actions(spaced) == (["/tmp/x y/sp ace.deb"], [])
    assert apt_actions("VERSION 2\n\nlibfoo1 1.0 < 2.0 /tmp/x y/a b.deb\n") == (["/tmp/x y/a b.deb"], [])


def test_hook_arguments_that_cannot_work_are_refused(tmp_path: Path) -> None:
    """A timeout beyond a year overflowed time_t and skipped the whole check; a quote in the command cannot
    survive apt's parser (shell-quoting a ' brings a " in) and would fail apt."""
    r = hook("apt-preinstall", "--timeout", "1e10")  # a hook: one line, apt goes on
    assert r.returncode == 0 and b"too many seconds" in r.stderr and len(r.stderr.splitlines()) == 1
    r = hook("apt-preinstall", "--refuse", "--timeout", "1e10")  # enforcing: the check cannot run, apt stops
    assert r.returncode == 2 and b"too many seconds" in r.stderr and len(r.stderr.splitlines()) == 1
    quoted = tmp_path / "bin" / "it's"
    quoted.parent.mkdir()
    quoted.write_text("#!/bin/sh\n")
    quoted.chmod(0o755)
    r = hook("setup", "--root", str(_root(tmp_path)), "--command", str(quoted))
    assert r.returncode == 2 and b"cannot hold a quote" in r.stderr, r.stderr
    assert not list((tmp_path / "root" / "etc" / "apt" / "apt.conf.d").iterdir())


def test_apt_preinstall_reports_an_unreadable_package_and_lets_apt_go_on(tmp_path: Path) -> None:
    bad = tmp_path / "bad_1_all.deb"
    bad.write_bytes(b"\x7fELF not a package")
    r = hook("apt-preinstall", "--refuse", stdin=f"{bad}\n".encode())
    assert r.returncode == 0 and r.stdout == b""
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"soswap hook apt-preinstall: {bad}: dpkg-deb: error: ")
    assert lines[0].endswith("; skipped")


def test_apt_hook_gives_up_after_its_timeout(tmp_path: Path) -> None:
    r = hook("apt", "--state-dir", str(tmp_path / "none"), "--timeout", "0.000001")
    assert r.returncode == 0 and r.stdout == b""
    assert r.stderr.decode() == ("soswap: the check did not finish in 1e-06 s; skipped (run 'soswap stale')\n")


def test_a_timeout_that_expires_while_the_watchdog_starts_is_still_the_timeout(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """On a loaded machine (a CI run beside other jobs) starting the watchdog thread took longer than a
    1 ms --timeout: the alarm fired before the check's try and escaped as "soswap hook apt: _TimedOut;
    skipped". A watchdog that starts late (10 ms) stands in for that load."""
    import threading

    from soswap.commands import hook as hook_module

    real_start = threading.Timer.start

    def slow_start(self) -> None:  # type: ignore[no-untyped-def]
        time.sleep(0.01)
        real_start(self)

    monkeypatch.setattr(threading.Timer, "start", slow_start)
    got = hook_module._within(0.000001, lambda: time.sleep(0.5) or "finished", "run 'soswap stale'")
    assert got is None
    assert capsys.readouterr().err == "soswap: the check did not finish in 1e-06 s; skipped (run 'soswap stale')\n"
    done = hook_module._within(5, lambda: "finished", "run 'soswap stale'")  # and a check in time is answered
    assert done == "finished" and capsys.readouterr().err == ""


def test_apt_preinstall_timeout_kills_the_package_readers(tmp_path: Path) -> None:
    """A package that never finishes reading (here a dpkg-deb that forks a child and sleeps, as dpkg-deb forks
    its decompressor): after --timeout, the hook says so, lets apt go on at once, and leaves no reader behind."""
    bindir, pids = tmp_path / "bin", tmp_path / "pids"
    bindir.mkdir()
    fake = bindir / "dpkg-deb"
    fake.write_text(f"#!/bin/sh\necho $$ >> {pids}\n"
                    "case \"$1\" in --field) printf 'Package: slow\\nArchitecture: all\\n'; exit 0;; esac\n"
                    f"sleep 600 &\necho $! >> {pids}\nwait\n")
    fake.chmod(0o755)
    (tmp_path / "slow.deb").write_bytes(b"!<arch>\n")
    r = hook("apt-preinstall", "--timeout", "1", stdin=f"{tmp_path / 'slow.deb'}\n".encode(),
             env={"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    assert r.returncode == 0 and r.stdout == b"", r.stdout
    assert r.stderr.decode() == ("soswap: the check did not finish in 1 s; skipped (soswap check could not "
                                 "finish)\n")
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3  # --field, --fsys-tarfile and its child
    for pid in started:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        assert state in ("Z", "X"), (pid, state)  # killed; a zombie waits for its new parent to reap it


# -- a real apt-get run with the files of contrib/ ----------------------------------------------------------

PACKAGE = "soswap-hook-test"
PKG_DIR = Path("/usr/lib") / PACKAGE
LIB_V1 = "int foo(void) { return 1; }\nint bar(void) { return 2; }\n"
LIB_V2 = "int foo(void) { return 1; }\n"  # bar is gone: its users fail at their first call of it
CONSUMER = "#include <unistd.h>\nint foo(void); int bar(void);\nint main(void) { sleep(600); return foo() + bar(); }\n"


def _deb(tmp_path: Path, version: str, source: str, real_name: str) -> Path:
    """A library package as Debian ships them: the real file named by the full version, and the SONAME link."""
    tree = tmp_path / f"pkg-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: soswap tests <root@localhost>\n"
        "Description: soswap hook test package\n")
    libdir = tree / str(PKG_DIR).lstrip("/")
    libdir.mkdir(parents=True)
    c = tmp_path / f"lib-{version}.c"
    c.write_text(source)
    build.run_cc(["-shared", "-fPIC", "-Wl,-soname,libsoswaphook.so.1", "-o", str(libdir / real_name), str(c)])
    (libdir / "libsoswaphook.so.1").symlink_to(real_name)
    out = tmp_path / f"{PACKAGE}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True, capture_output=True)
    return out


def _apt_config(tmp_path: Path, soswap: Path, refuse: bool = False) -> Path:
    """What ``soswap hook setup --command SOSWAP`` writes (``--refuse`` too with ``refuse``), as one apt
    configuration file for ``apt-get -c``: nothing under /etc is touched."""
    root = tmp_path / ("root-refuse" if refuse else "root")
    for d in ("etc/apt/apt.conf.d", "etc/dpkg/dpkg.cfg.d"):
        (root / d).mkdir(parents=True)
    r = hook("setup", "--root", str(root), "--command", str(soswap), *(["--refuse"] if refuse else []))
    assert r.returncode == 0, r.stderr
    apt = (root / "etc/apt/apt.conf.d/99soswap").read_text()
    logger = next(line.split("=", 1)[1] for line in (root / "etc/dpkg/dpkg.cfg.d/soswap").read_text().splitlines()
                  if line.startswith("status-logger="))
    conf = tmp_path / ("apt-refuse.conf" if refuse else "apt.conf")
    conf.write_text(apt + f'DPkg::Options {{ "--status-logger={logger}"; }};\nDPkg::Lock::Timeout "120";\n')
    return conf


def _apt_get(conf: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    env.pop("SOSWAP_FORCE", None)
    env.pop("SOSWAP_SUSPEND", None)
    return subprocess.run(["apt-get", "-c", str(conf), "-y", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)


def _installed_version(package: str = PACKAGE) -> Optional[str]:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Version}", package], capture_output=True,
                       text=True)
    return r.stdout[3:] if r.returncode == 0 and r.stdout.startswith("ii ") else None


def _apt_setup(tmp_path: Path, *packages: str) -> tuple:
    """Skip unless apt can run here and ``packages`` are not installed; then (soswap's wrapper script, the
    warning configuration, the refusing one, soswap's state directory)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get and dpkg-deb are needed")
    for package in packages:
        if _installed_version(package) is not None or (Path("/usr/lib") / package).exists():
            pytest.skip(f"{package} or /usr/lib/{package} already exists on this machine")
    if subprocess.run(["apt-get", "check"], capture_output=True).returncode != 0:
        pytest.skip("apt's package state is broken on this machine (apt-get check)")
    state = tmp_path / "state"
    soswap = tmp_path / "bin" / "soswap"
    soswap.parent.mkdir()
    keep = {k: os.environ[k] for k in ("SOSWAP_CACHE_DIR", "SOSWAP_STATE_DIR") if k in os.environ}
    exports = " ".join(f"{k}={v}" for k, v in keep.items())
    soswap.write_text(f'#!/bin/sh\nexec env PYTHONPATH={SRC} {exports} {sys.executable} -m soswap "$@" '
                      f"--state-dir {state}\n")
    soswap.chmod(0o755)
    return soswap, _apt_config(tmp_path, soswap), _apt_config(tmp_path, soswap, refuse=True), state


@requires_root
@build.requires_cc
def test_apt_get_runs_the_hooks_and_never_fails_because_of_them(procs, tmp_path: Path) -> None:
    soswap, conf, refusing, state = _apt_setup(tmp_path, PACKAGE)
    v1 = _deb(tmp_path, "1.0", LIB_V1, "libsoswaphook.so.1.0")
    v2 = _deb(tmp_path, "2.0", LIB_V2, "libsoswaphook.so.1.1")
    try:
        r = _apt_get(conf, "install", str(v1))
        assert r.returncode == 0 and _installed_version() == "1.0", r.stdout + r.stderr
        assert "soswap: checked 0 ELF files of 1 package against what uses them: nothing breaks." in r.stdout

        prog = tmp_path / "consumer"
        (tmp_path / "consumer.c").write_text(CONSUMER)
        build.run_cc(["-o", str(prog), str(tmp_path / "consumer.c"), str(PKG_DIR / "libsoswaphook.so.1"),
                      f"-Wl,-rpath,{PKG_DIR}", "-Wl,-z,lazy"])  # "at first-call" needs lazy binding
        p = procs.start([prog], wait_maps="libsoswaphook")
        breaks = "undefined symbol: bar"

        # --refuse: apt stops before dpkg unpacks anything
        r = _apt_get(refusing, "install", str(v2))
        assert r.returncode != 0 and _installed_version() == "1.0", r.stdout + r.stderr
        said = (f"{PKG_DIR}/libsoswaphook.so.1.0: {v2.name}:{PKG_DIR}/libsoswaphook.so.1.1 "
                f"breaks process {p.pid} ({prog})")
        assert f"{said} at first-call:" in r.stdout and breaks in r.stdout, r.stdout
        assert "soswap: refused: apt stops before unpacking anything" in r.stderr
        assert (PKG_DIR / "libsoswaphook.so.1.0").exists() and not (PKG_DIR / "libsoswaphook.so.1.1").exists()
        r = hook("apt-preinstall", "--refuse", stdin=f"{v2}\n".encode(), env={"SOSWAP_FORCE": "1"})
        assert r.returncode == 0 and b"soswap: going on" in r.stdout and breaks.encode() in r.stdout, r.stdout

        # as installed (a warning): the upgrade goes on, then the process is listed as running old code
        r = _apt_get(conf, "install", str(v2))
        assert r.returncode == 0 and _installed_version() == "2.0", r.stdout + r.stderr
        assert "soswap: these packages would break what uses them:" in r.stdout and breaks in r.stdout
        assert re.search(r"^soswap: \d+ process(es run| runs) old code", r.stdout, re.M), r.stdout
        for entry in _targets_of(p.pid):
            assert entry in r.stdout, (entry, r.stdout)
        assert markers(state) == []  # dpkg's status-logger left "changed", the apt hook took it

        soswap.write_text("#!/bin/sh\necho 'soswap: broken on purpose' >&2\nexit 3\n")
        r = _apt_get(conf, "install", "--reinstall", str(v2))
        assert r.returncode == 0 and _installed_version() == "2.0", r.stdout + r.stderr
        assert "broken on purpose" in r.stderr
    finally:
        subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    assert _installed_version() is None and not PKG_DIR.exists()


USER_PACKAGE = "soswap-hook-test-user"
USER_PROG = Path("/usr/lib") / USER_PACKAGE / "prog"


def _user_deb(tmp_path: Path, version: str, lib: Path) -> Path:
    """A package whose program calls bar() of libsoswaphook.so.1 (version 1.0), or (2.0) ships no program."""
    tree = tmp_path / f"user-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {USER_PACKAGE}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: soswap tests <root@localhost>\nDescription: soswap hook test consumer\n")
    home = tree / str(USER_PROG.parent).lstrip("/")
    home.mkdir(parents=True)
    if version == "1.0":
        (tmp_path / "user.c").write_text(CONSUMER)
        build.run_cc(["-o", str(home / "prog"), str(tmp_path / "user.c"), str(lib), f"-Wl,-rpath,{PKG_DIR}"])
    else:
        (home / "README").write_text("the program is gone\n")
    out = tmp_path / f"{USER_PACKAGE}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True, capture_output=True)
    return out


@requires_root
@build.requires_cc
def test_apt_preinstall_leaves_out_the_programs_the_transaction_deletes(tmp_path: Path) -> None:
    """libsoswaphook 2.0 drops bar(), which the program of soswap-hook-test-user calls: refused while the
    program stays; let through when the same apt run removes its package (protocol version 3's **REMOVE**) or
    upgrades it to a version without the program."""
    _, conf, refusing, _ = _apt_setup(tmp_path, PACKAGE, USER_PACKAGE)
    v1 = _deb(tmp_path, "1.0", LIB_V1, "libsoswaphook.so.1.0")
    v2 = _deb(tmp_path, "2.0", LIB_V2, "libsoswaphook.so.1.1")
    user1 = _user_deb(tmp_path, "1.0", tmp_path / "pkg-1.0" / str(PKG_DIR).lstrip("/") / "libsoswaphook.so.1")
    user2 = _user_deb(tmp_path, "2.0", Path())
    try:
        r = _apt_get(conf, "install", str(v1), str(user1))
        assert r.returncode == 0 and _installed_version(USER_PACKAGE) == "1.0", r.stdout + r.stderr

        r = _apt_get(refusing, "install", str(v2))  # the program stays: refused
        assert r.returncode != 0 and _installed_version() == "1.0", r.stdout + r.stderr
        assert f"breaks program {USER_PROG} at " in r.stdout and "undefined symbol: bar" in r.stdout, r.stdout

        r = _apt_get(refusing, "install", str(v2), f"{USER_PACKAGE}-")  # removed in the same run
        assert r.returncode == 0 and _installed_version() == "2.0", r.stdout + r.stderr
        assert _installed_version(USER_PACKAGE) is None and not USER_PROG.exists()
        # the program and the library's old real file
        assert "against what uses them (not the 2 ELF files it deletes): nothing breaks." in r.stdout, r.stdout

        r = _apt_get(refusing, "install", "--allow-downgrades", str(v1), str(user1))
        assert r.returncode == 0 and USER_PROG.exists(), r.stdout + r.stderr
        r = _apt_get(refusing, "install", str(v2), str(user2))  # upgraded to a version without the program
        assert r.returncode == 0 and _installed_version(USER_PACKAGE) == "2.0", r.stdout + r.stderr
        assert not USER_PROG.exists() and "(not the 2 ELF files it deletes): nothing breaks." in r.stdout
    finally:
        subprocess.run(["dpkg", "--purge", USER_PACKAGE, PACKAGE], capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=300)
    assert _installed_version() is None and _installed_version(USER_PACKAGE) is None
    assert not PKG_DIR.exists() and not USER_PROG.parent.exists()


# -- real dnf and pacman runs with soswap's plugin and hook --------------------------------------------------

PM_V1 = "int foo(void) { return 1; }\n"
PM_V2 = "int foo(void) { return 2; }\n"  # another build: a process still mapping v1 runs old code


def _soswap_wrapper(tmp_path: Path) -> Path:
    """soswap as the package manager runs it: this source tree, this test's cache and state directories."""
    soswap = tmp_path / "soswap bin" / "soswap"  # a space: dnf's configuration parser must keep the path whole
    soswap.parent.mkdir()
    keep = {k: os.environ[k] for k in ("SOSWAP_CACHE_DIR", "SOSWAP_STATE_DIR") if k in os.environ}
    exports = " ".join(f"{k}={v}" for k, v in keep.items())
    soswap.write_text(f'#!/bin/sh\nexec env PYTHONPATH={SRC} {exports} {sys.executable} -m soswap "$@"\n')
    soswap.chmod(0o755)
    return soswap


def _run_pm(argv: List[str], path: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run a package manager (``path``: a directory put first in PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOSWAP_") or k in ("SOSWAP_CACHE_DIR",
                                                                                        "SOSWAP_STATE_DIR")}
    if path is not None:
        env["PATH"] = f"{path}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)


def _assert_lists(r: subprocess.CompletedProcess, pid: int) -> None:
    """The package manager went on, and its output lists process ``pid`` as running old code."""
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^soswap: \d+ process(es run| runs) old code", r.stdout, re.M), r.stdout
    for entry in _targets_of(pid):
        assert entry in r.stdout, (entry, r.stdout)


def _pacman_package(tmp_path: Path, version: str, source: str, lib: Path) -> Path:
    """A pacman package (an uncompressed tar with .PKGINFO) whose one file is ``lib`` (an absolute path)."""
    tree = tmp_path / f"pacman-{version}"
    member = str(lib).lstrip("/")
    (tree / member).parent.mkdir(parents=True)
    c = tmp_path / f"pm-{version}.c"
    c.write_text(source)
    build.run_cc(["-shared", "-fPIC", "-Wl,-soname,libpmtest.so.1", "-o", str(tree / member), str(c)])
    (tree / ".PKGINFO").write_text(f"pkgname = soswap-hook-test\npkgbase = soswap-hook-test\npkgver = {version}-1\n"
                                   "pkgdesc = soswap hook test package\nurl = none\nbuilddate = 1700000000\n"
                                   "packager = soswap tests\nsize = 16000\narch = x86_64\nlicense = none\n")
    out = tmp_path / f"soswap-hook-test-{version}-1-x86_64.pkg.tar"
    # files only: pacman makes the parent directories, and owns none of them (/tmp stays as it is)
    subprocess.run(["tar", "--format=gnu", "-cf", str(out), ".PKGINFO", member], cwd=tree, check=True)
    return out


@requires_root
@build.requires_cc
@pytest.mark.skipif(shutil.which("pacman") is None or os.uname().machine != "x86_64",
                    reason="pacman (Debian's pacman-package-manager) on x86_64 is needed")
def test_pacman_runs_the_hook_after_a_transaction_and_never_fails_because_of_it(procs, tmp_path: Path) -> None:
    """A real pacman upgrades a library that a running process maps: the hook soswap hook setup wrote lists
    the process; a broken soswap leaves pacman's exit status alone. pacman runs on / with its own database, so
    the package's one file lies in this test's directory."""
    soswap = _soswap_wrapper(tmp_path)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "pacman.conf").write_text("")
    r = hook("setup", "--manager", "pacman", "--root", str(root), "--command", str(soswap))
    assert r.returncode == 0, r.stderr
    conf = tmp_path / "pacman.conf"
    conf.write_text("[options]\nArchitecture = auto\nSigLevel = Never\nLocalFileSigLevel = Never\n")
    lib = tmp_path / "inst" / "libpmtest.so.1"
    db = tmp_path / "db"
    db.mkdir()
    pacman = ["pacman", "--noconfirm", "--config", str(conf), "--dbpath", str(db), "--cachedir",
              str(tmp_path / "cache"), "--logfile", str(tmp_path / "pacman.log"), "--hookdir",
              str(root / "etc" / "pacman.d" / "hooks")]
    v1 = _pacman_package(tmp_path, "1.0", PM_V1, lib)
    v2 = _pacman_package(tmp_path, "2.0", PM_V2, lib)
    try:
        r = _run_pm([*pacman, "-U", str(v1)])
        assert r.returncode == 0 and lib.exists(), r.stdout + r.stderr
        assert "Looking for processes that still run old code (soswap)" in r.stdout, r.stdout
        p = _mapper(procs, lib, tmp_path / "ready")
        _assert_lists(_run_pm([*pacman, "-U", str(v2)]), p.pid)

        # contrib/'s hook: soswap looked up in PATH
        contrib = [*pacman[:-1], str(ROOT / "contrib" / "pacman")]
        r = _run_pm([*contrib, "-U", str(v1)], path=soswap.parent)
        assert r.returncode == 0 and re.search(r"^soswap: .*old code", r.stdout, re.M), r.stdout + r.stderr

        soswap.write_text("#!/bin/sh\necho 'soswap: broken on purpose' >&2\nexit 3\n")
        r = _run_pm([*pacman, "-U", str(v2)])
        assert r.returncode == 0 and "broken on purpose" in r.stdout + r.stderr, r.stdout + r.stderr

        # "PYTHON -m soswap" (what setup writes without a console script) with the module gone: quiet
        from soswap.commands.hookfiles import PACMAN, PACMAN_HOOK, hook_files

        gone = tmp_path / "hooks-gone"
        gone.mkdir()
        text = hook_files([sys.executable, "-m", "soswap_not_installed"], manager=PACMAN)[PACMAN_HOOK]
        (gone / "soswap.hook").write_text(text)
        r = _run_pm([*pacman[:-1], str(gone), "-U", str(v1)])
        assert r.returncode == 0 and "No module named" not in r.stdout + r.stderr, r.stdout + r.stderr
        assert "failed to execute" not in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        _run_pm([*pacman, "-R", "soswap-hook-test"])
    assert not lib.exists()


def _rpm(tmp_path: Path, version: str, source: str, libdir: str) -> Path:
    """An rpm of soswap-hook-test whose one file is ``libdir``/libdnftest.so.1 (built with rpmbuild)."""
    top = tmp_path / f"rpmbuild-{version}"
    for d in ("SPECS", "SOURCES", "BUILD", "RPMS", "SRPMS"):
        (top / d).mkdir(parents=True)
    c = tmp_path / f"dnf-{version}.c"
    c.write_text(source)
    build.run_cc(["-shared", "-fPIC", "-Wl,-soname,libdnftest.so.1", "-o", str(top / "SOURCES" / "lib.so"), str(c)])
    spec = top / "SPECS" / "t.spec"
    spec.write_text(f"Name: soswap-hook-test\nVersion: {version}\nRelease: 1\nSummary: soswap hook test\n"
                    "License: none\nBuildArch: x86_64\nAutoReqProv: no\n%global debug_package %{nil}\n"
                    "%global __os_install_post %{nil}\n%description\nsoswap hook test package\n%install\n"
                    f"mkdir -p %{{buildroot}}{libdir}\n"
                    f"cp %{{_sourcedir}}/lib.so %{{buildroot}}{libdir}/libdnftest.so.1\n"
                    f"%files\n{libdir}/libdnftest.so.1\n")
    r = subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return next((top / "RPMS" / "x86_64").glob("*.rpm"))


@requires_root
@build.requires_cc
@pytest.mark.skipif(shutil.which("dnf") is None or shutil.which("rpmbuild") is None or os.uname().machine != "x86_64",
                    reason="dnf and rpmbuild (Debian's dnf and rpm) on x86_64 are needed")
def test_dnf_runs_the_plugin_after_a_transaction_and_never_fails_because_of_it(procs, tmp_path: Path) -> None:
    """A real dnf (into an install root of this test) upgrades a library that a running process maps: the
    plugin soswap hook setup wrote runs soswap after the transaction, which lists the process; a broken or
    missing soswap leaves dnf's exit status alone."""
    soswap = _soswap_wrapper(tmp_path)
    root = tmp_path / "root"  # where setup writes the plugin and its configuration
    plugins = root / "usr" / "lib" / "python3" / "dist-packages" / "dnf-plugins"
    plugins.mkdir(parents=True)
    (root / "etc" / "dnf" / "plugins").mkdir(parents=True)
    r = hook("setup", "--manager", "dnf", "--root", str(root), "--command", str(soswap))
    assert r.returncode == 0, r.stderr
    assert (plugins / "soswap.py").exists() and (root / "etc" / "dnf" / "plugins" / "soswap.conf").exists()
    inst = tmp_path / "installroot"
    (inst / "var" / "log").mkdir(parents=True)
    dnf = ["dnf", "-y", f"--installroot={inst}", f"--setopt=pluginpath={plugins}",
           f"--setopt=pluginconfpath={root / 'etc' / 'dnf' / 'plugins'}", f"--setopt=reposdir={tmp_path / 'none'}",
           f"--setopt=cachedir={inst / 'var' / 'cache' / 'dnf'}", f"--setopt=persistdir={inst / 'var' / 'lib' / 'dnf'}",
           f"--setopt=logdir={inst / 'var' / 'log'}", "--releasever=1", "--nogpgcheck"]
    libdir = "/opt/soswap-hook-test"
    v1 = _rpm(tmp_path, "1.0", PM_V1, libdir)
    v2 = _rpm(tmp_path, "2.0", PM_V2, libdir)
    lib = inst / libdir.lstrip("/") / "libdnftest.so.1"
    r = _run_pm([*dnf, "install", str(v1)])
    assert r.returncode == 0 and lib.exists(), r.stdout + r.stderr
    assert "soswap: " in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    p = _mapper(procs, lib, tmp_path / "ready")
    _assert_lists(_run_pm([*dnf, "upgrade", str(v2)]), p.pid)

    # contrib/'s plugin and configuration: soswap looked up in PATH
    contrib = str(shutil.copytree(ROOT / "contrib" / "dnf", tmp_path / "contrib-dnf"))  # dnf compiles it there
    r = _run_pm([*dnf, f"--setopt=pluginpath={contrib}", f"--setopt=pluginconfpath={contrib}", "downgrade", str(v1)],
                path=soswap.parent)
    assert r.returncode == 0 and re.search(r"^soswap: .*old code", r.stdout, re.M), r.stdout + r.stderr

    soswap.write_text("#!/bin/sh\necho 'soswap: broken on purpose' >&2\nexit 3\n")
    r = _run_pm([*dnf, "upgrade", str(v2)])
    assert r.returncode == 0 and "broken on purpose" in r.stderr, r.stdout + r.stderr
    soswap.unlink()  # gone: the plugin says nothing and dnf goes on
    r = _run_pm([*dnf, "downgrade", str(v1)])
    assert r.returncode == 0 and "soswap:" not in r.stdout + r.stderr, r.stdout + r.stderr


# -- soswap hook setup / remove ---------------------------------------------------------------------------

def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("etc/apt/apt.conf.d", "etc/dpkg/dpkg.cfg.d"):
        (root / d).mkdir(parents=True)
    return root


def test_setup_and_remove_refuse_a_symbolic_link_and_check_the_command(tmp_path: Path) -> None:
    """A link at a hook's path is not soswap's file: setup would write through it (outside --root), remove
    would delete it. A --command that is not an executable file would make every hook do nothing."""
    root = _root(tmp_path)
    command = str(_executable(root / "usr/bin/soswap"))
    conf = root / "etc/apt/apt.conf.d/99soswap"
    conf.symlink_to(tmp_path / "elsewhere")  # dangling
    for args in (["setup", "--command", "/usr/bin/soswap"], ["remove"]):
        r = hook(*args, "--root", str(root))
        assert r.returncode == 2 and b"a symbolic link, not written by soswap" in r.stderr, r.stderr
        assert conf.is_symlink() and not (tmp_path / "elsewhere").exists()
    conf.unlink()
    for bad in ("/usr/bin/missing", "/usr"):
        r = hook("setup", "--root", str(root), "--command", bad)
        assert r.returncode == 2 and b"not an executable file" in r.stderr, r.stderr
        assert not conf.exists()
    assert hook("setup", "--root", str(root), "--command", "/usr/bin/soswap").returncode == 0
    assert command in conf.read_text() or "/usr/bin/soswap" in conf.read_text()


@requires_root
def test_setup_is_all_or_nothing_and_remove_does_all_it_can(tmp_path: Path) -> None:
    """dnf's plugin goes into two plugin directories; the second cannot be written (immutable): nothing stays.
    remove then removes every file it can and names the one it cannot."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is needed")
    root = tmp_path / "root"
    first = root / "usr/lib/python3.6/site-packages/dnf-plugins"
    second = root / "usr/lib/python3.9/site-packages/dnf-plugins"
    for d in (first, second, root / "etc/dnf/plugins"):
        d.mkdir(parents=True)
    _executable(root / "usr/bin/soswap")
    if subprocess.run(["chattr", "+i", str(second)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        r = hook("setup", "--manager", "dnf", "--root", str(root), "--command", "/usr/bin/soswap")
        assert r.returncode == 2 and b"cannot write" in r.stderr and b"nothing changed" in r.stderr, r.stderr
        assert not (first / "soswap.py").exists() and not (root / "etc/dnf/plugins/soswap.conf").exists()
        subprocess.run(["chattr", "-i", str(second)], check=True)
        assert hook("setup", "--manager", "dnf", "--root", str(root), "--command", "/usr/bin/soswap").returncode == 0
        subprocess.run(["chattr", "+i", str(first)], check=True)
        r = hook("remove", "--manager", "dnf", "--root", str(root))
        assert r.returncode == 2 and b"cannot remove" in r.stderr, r.stderr
        assert (first / "soswap.py").exists() and not (second / "soswap.py").exists()
        assert not (root / "etc/dnf/plugins/soswap.conf").exists()
        assert f"removed {second / 'soswap.py'}".encode() in r.stdout
    finally:
        for d in (first, second):
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)


def test_a_hook_with_bad_arguments_never_fails_its_package_manager() -> None:
    """A hand-edited hook line with a typo: one line on standard error, exit 0; dpkg-status still reads dpkg's
    stream to its end."""
    for args in (["post-transaction", "--restrat"], ["post-transaction", "--timeout", "5m"], ["apt", "extra"]):
        r = hook(*args)
        assert r.returncode == 0 and r.stdout == b"", r
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"soswap hook {args[0]}: ") and lines[0].endswith("; skipped")
    p = subprocess.Popen([sys.executable, "-m", "soswap", "hook", "dpkg-status", "--bogus"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=SRC))
    out, err = p.communicate(UPGRADE * 200_000, timeout=120)  # far beyond a pipe's buffer: read to the end
    assert p.returncode == 0 and out == b"" and err.endswith(b"; skipped\n")
    assert hook("setup", "--bogus").returncode == 2  # an admin's command: a usage error is an error


def test_the_module_form_never_imports_from_the_working_directory(tmp_path: Path) -> None:
    """``python -m`` puts the working directory first on sys.path, and apt runs its hooks from /tmp (or where
    root typed apt): a planted soswap.py would run as root. The module form is ``PYTHON -I -m soswap``."""
    from soswap.commands.hookfiles import PACMAN, PACMAN_HOOK, hook_files, own_command
    from soswap.errors import SoswapError

    try:
        command = own_command()
    except SoswapError as exc:  # soswap is not installed for this interpreter: the message names the command
        assert f"'{sys.executable} -I -m soswap'" in str(exc)
        command = [sys.executable, "-I", "-m", "soswap"]
    assert command[1:] == ["-I", "-m", "soswap"] or len(command) == 1
    ran = tmp_path / "ran"
    (tmp_path / "soswap.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    line = next(x for x in hook_files(command, manager=PACMAN)[PACMAN_HOOK].splitlines() if x.startswith("Exec"))
    script = line.split("-c '", 1)[1].rstrip("'")
    subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, timeout=120,
                   env={"PATH": "/usr/bin:/bin", "SOSWAP_STATE_DIR": str(tmp_path / "state"),
                        "SOSWAP_CACHE_DIR": str(tmp_path / "cache")})
    assert not ran.exists()


def test_contrib_files_are_the_path_lookup_variant() -> None:
    from soswap.commands.hookfiles import contrib_files

    files = contrib_files()
    assert set(files) == {"apt/99soswap", "dpkg/soswap", "pacman/soswap.hook", "dnf/soswap.py", "dnf/soswap.conf"}
    for rel, text in files.items():
        assert (ROOT / "contrib" / rel).read_text() == text, rel
    # the dnf plugin runs inside dnf, on the system's Python: RHEL 8's is 3.6
    ast.parse(files["dnf/soswap.py"], feature_version=(3, 6))


def test_setup_writes_both_files_with_the_absolute_command_and_remove_takes_them(tmp_path: Path) -> None:
    from soswap.commands.hookfiles import APT_CONF, DPKG_CFG, hook_files

    root = _root(tmp_path)
    command = "/opt/soswap venv/bin/soswap"  # a space: shell-quoted in the files
    _executable(root / command.lstrip("/"))
    r = hook("setup", "--root", str(root), "--command", command, "--refuse", "--restart")
    assert r.returncode == 0 and r.stderr == b""
    files = hook_files([command], refuse=True, restart=True)
    assert (root / APT_CONF).read_text() == files[APT_CONF] and (root / DPKG_CFG).read_text() == files[DPKG_CFG]
    assert "'/opt/soswap venv/bin/soswap' hook apt-preinstall --refuse;" in files[APT_CONF]
    assert "'/opt/soswap venv/bin/soswap' hook apt --restart || true" in files[APT_CONF]
    if shutil.which("apt-config"):  # apt reads it as meant
        dump = subprocess.run(["apt-config", "-c", str(root / APT_CONF), "dump"], capture_output=True,
                              text=True).stdout
        assert "if [ -x '/opt/soswap venv/bin/soswap' ]; then '/opt/soswap venv/bin/soswap' hook apt" in dump
    assert oct((root / APT_CONF).stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in (root / "etc/apt/apt.conf.d").iterdir()) == ["99soswap"]  # no temp left

    r = hook("remove", "--root", str(root))
    assert r.returncode == 0 and not (root / APT_CONF).exists() and not (root / DPKG_CFG).exists()
    assert hook("remove", "--root", str(root)).returncode == 0  # nothing left to remove


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_setup_and_remove_leave_a_file_soswap_did_not_write(tmp_path: Path) -> None:
    root = _root(tmp_path)
    _executable(root / "usr/bin/soswap")
    foreign = root / "etc/apt/apt.conf.d/99soswap"
    foreign.write_text('APT::Install-Recommends "false";\n')
    for args in (["setup", "--command", "/usr/bin/soswap"], ["remove"]):
        r = hook(*args, "--root", str(root))
        assert r.returncode == 2 and r.stderr.decode() == (
            f"soswap: error: {foreign}: not written by soswap; left as it is (move it away first)\n")
        assert foreign.read_text() == 'APT::Install-Recommends "false";\n'
        assert not (root / "etc/dpkg/dpkg.cfg.d/soswap").exists()
    r = hook("setup", "--root", str(tmp_path / "none"))
    assert r.returncode == 2 and b"not a directory" in r.stderr
    r = hook("setup", "--root", str(root), "--command", "soswap")
    assert r.returncode == 2 and b"not an absolute path" in r.stderr


def test_setup_finds_the_console_script_that_runs_it(tmp_path: Path) -> None:
    """Installed by pip, soswap runs as a console script: setup writes that script's path, after checking that
    it runs as dpkg runs it (system PATH, no PYTHONPATH)."""
    script = tmp_path / "venv" / "bin" / "soswap"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {SRC!r})\n"
                      "from soswap.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    root = _root(tmp_path)
    r = subprocess.run([str(script), "hook", "setup", "--root", str(root)], capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    written = (root / "etc/apt/apt.conf.d/99soswap").read_text()
    assert f"if [ -x {script} ]; then {script} hook apt || true; fi" in written


def _env() -> Dict[str, str]:
    environ = dict(os.environ, PYTHONPATH=SRC)
    environ.pop("SOSWAP_SUSPEND", None)
    return environ


def test_apt_preinstall_bounds_its_input_by_size_and_time(tmp_path: Path) -> None:
    """The package list is read within --timeout and up to 16 MiB: endless input (/dev/zero) or a writer
    that keeps the pipe open does not hold apt (or fill memory); both are skipped, status 0."""
    with open("/dev/zero", "rb") as zero:
        r = subprocess.run([sys.executable, "-m", "soswap", "hook", "apt-preinstall", "--timeout", "20"],
                           stdin=zero, capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 0 and "over 16 MiB; skipped" in r.stderr
    writer = subprocess.Popen(["sleep", "30"], stdout=subprocess.PIPE)
    try:
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "soswap", "hook", "apt-preinstall", "--timeout", "1"],
                           stdin=writer.stdout, capture_output=True, text=True, timeout=60, env=_env())
        took = time.monotonic() - t
    finally:
        writer.kill()
        writer.wait()
        assert writer.stdout is not None
        writer.stdout.close()
    assert r.returncode == 0 and "skipped" in r.stderr and took < 20, (took, r.stderr)


# QA round of 2026-12-01 ---------------------------------------------------------------------------------------
def test_remove_takes_soswaps_files_whatever_stands_at_the_other_paths(tmp_path: Path) -> None:
    """A file of the user's at one hook path made `remove` stop before it removed anything: soswap's own dpkg
    status-logger file was left, unnamed."""
    root = _root(tmp_path)
    _executable(root / "usr/bin/soswap")
    assert hook("setup", "--root", str(root), "--command", "/usr/bin/soswap").returncode == 0
    conf, dpkg_cfg = root / "etc/apt/apt.conf.d/99soswap", root / "etc/dpkg/dpkg.cfg.d/soswap"
    assert dpkg_cfg.exists()
    conf.write_text("// mine\n")
    r = hook("remove", "--root", str(root))
    assert r.returncode == 2 and b"not written by soswap" in r.stderr, r.stderr
    assert not dpkg_cfg.exists() and conf.read_text() == "// mine\n"


def test_apt_preinstall_cuts_its_input_at_newlines_only() -> None:
    """str.splitlines() also cut at \\x0c, \\x1c, U+2028...: a package file named with one was read as a
    relative name, never checked (and with --refuse a breaking package got through)."""
    from soswap.commands.hook import apt_actions

    odd = "/tmp/qa\x1cname\u2028x\x0c_1_all.deb"
    assert apt_actions(f"{odd}\n") == ([odd], [])
    assert apt_actions(f"VERSION 3\n\nname 1.0 amd64 same < 2.0 amd64 same {odd}\n") == ([odd], [])


def test_apt_preinstall_timeout_kills_the_package_field_reader(tmp_path: Path) -> None:
    """`dpkg-deb --field` (a package on a stalled mount) was not among the readers the timeout kills: the hook
    took its timeout plus 2 s, blamed a system call, and left the reader running."""
    bindir, pids = tmp_path / "bin", tmp_path / "pids"
    bindir.mkdir()
    fake = bindir / "dpkg-deb"
    fake.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 600\n")
    fake.chmod(0o755)
    (tmp_path / "slow.deb").write_bytes(b"!<arch>\n")
    started = time.monotonic()
    r = hook("apt-preinstall", "--timeout", "1", stdin=f"{tmp_path / 'slow.deb'}\n".encode(),
             env={"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    assert r.returncode == 0 and r.stderr.decode() == ("soswap: the check did not finish in 1 s; skipped (soswap "
                                                      "check could not finish)\n"), r.stderr
    assert time.monotonic() - started < 30
    for pid in (int(p) for p in pids.read_text().split()):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        assert state in ("Z", "X"), (pid, state)


def test_an_abbreviated_refuse_enforces_with_bad_arguments_too() -> None:
    """argparse takes --refu for --refuse, and the hook enforced with it, except when an argument was bad:
    then it let apt go on (exit 0) where --refuse stops it (exit 2)."""
    for flag in ("--refuse", "--refu", "--refus"):
        r = hook("apt-preinstall", flag, "--timeout", "5m")
        assert r.returncode == 2 and b"apt stops (--refuse)" in r.stderr, (flag, r.stderr)


def test_hook_messages_escape_control_characters(tmp_path: Path) -> None:
    """``hook apt-preinstall`` wrote a package's file name, and dpkg-deb's message about it, with their raw
    escape sequences."""
    bad = tmp_path / "x\x1b[31mred\x07.deb"
    bad.write_bytes(b"not a package")
    r = hook("apt-preinstall", "--timeout", "20", stdin=f"{bad}\n".encode())
    said = r.stdout + r.stderr
    assert r.returncode == 0 and b"\x1b" not in said and b"\x07" not in said, r
    assert b"x\\x1b[31mred\\x07.deb" in r.stderr, r.stderr
