"""``soswap hook``: dpkg's status stream, apt's Post-Invoke, and a real ``apt-get`` run with contrib/'s files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
    assert re.match(r"soswap: \d+ process(es run| runs) old code \(details: soswap stale\)\n", text), text
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


def test_apt_preinstall_reads_both_input_protocols() -> None:
    from soswap.commands.hook import deb_paths

    v1 = "/var/cache/apt/archives/libfoo1_2.0_amd64.deb\n/tmp/x y/bar_1_all.deb\n\n"
    assert deb_paths(v1) == ["/var/cache/apt/archives/libfoo1_2.0_amd64.deb", "/tmp/x y/bar_1_all.deb"]
    v2 = ("VERSION 2\nAPT::Architecture=amd64\nDPkg::Tools::Options::soswap::Version=2\n\n"
          "libfoo1 1.0 < 2.0 /var/cache/apt/archives/libfoo1_2.0_amd64.deb\n"
          "libold - < 1.0 **CONFIGURE**\nlibgone 1.0 > - **REMOVE**\n")
    assert deb_paths(v2) == ["/var/cache/apt/archives/libfoo1_2.0_amd64.deb"]
    assert deb_paths("") == []


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
    """contrib/apt/99soswap and contrib/dpkg/soswap as one apt configuration file (``apt-get -c``), with the
    test's soswap in place of the one looked up in PATH (dpkg resets PATH to the system directories);
    ``refuse``: with the edit docs/hooks.md describes."""
    def local(text: str) -> str:
        return text.replace("command -v soswap", f"command -v {soswap}").replace("then soswap hook",
                                                                                  f"then {soswap} hook")

    apt = local((ROOT / "contrib" / "apt" / "99soswap").read_text())
    if refuse:
        assert "apt-preinstall || true" in apt
        apt = apt.replace("apt-preinstall || true", "apt-preinstall --refuse")
    logger = next(line.split("=", 1)[1] for line in (ROOT / "contrib" / "dpkg" / "soswap").read_text().splitlines()
                  if line.startswith("status-logger="))
    conf = tmp_path / ("apt-refuse.conf" if refuse else "apt.conf")
    conf.write_text(apt + f'DPkg::Options {{ "--status-logger={local(logger)}"; }};\nDPkg::Lock::Timeout "120";\n')
    return conf


def _apt_get(conf: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    env.pop("SOSWAP_FORCE", None)
    env.pop("SOSWAP_SUSPEND", None)
    return subprocess.run(["apt-get", "-c", str(conf), "-y", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)


def _installed_version() -> Optional[str]:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Version}", PACKAGE], capture_output=True,
                       text=True)
    return r.stdout[3:] if r.returncode == 0 and r.stdout.startswith("ii ") else None


@requires_root
@build.requires_cc
def test_apt_get_runs_the_hooks_and_never_fails_because_of_them(procs, tmp_path: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get and dpkg-deb are needed")
    if _installed_version() is not None or PKG_DIR.exists():
        pytest.skip(f"{PACKAGE} or {PKG_DIR} already exists on this machine")
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
    conf, refusing = _apt_config(tmp_path, soswap), _apt_config(tmp_path, soswap, refuse=True)
    v1 = _deb(tmp_path, "1.0", LIB_V1, "libsoswaphook.so.1.0")
    v2 = _deb(tmp_path, "2.0", LIB_V2, "libsoswaphook.so.1.1")
    try:
        r = _apt_get(conf, "install", str(v1))
        assert r.returncode == 0 and _installed_version() == "1.0", r.stdout + r.stderr
        assert "soswap: checked 0 ELF files of 1 package against what uses them: nothing breaks." in r.stdout

        prog = tmp_path / "consumer"
        (tmp_path / "consumer.c").write_text(CONSUMER)
        build.run_cc(["-o", str(prog), str(tmp_path / "consumer.c"), str(PKG_DIR / "libsoswaphook.so.1"),
                      f"-Wl,-rpath,{PKG_DIR}"])
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
