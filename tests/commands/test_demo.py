"""``soswap demo`` end to end: real compiler, real processes; assertions on its JSON summary."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

from support.build import requires_cc, requires_root

SRC = str(Path(__file__).resolve().parents[2] / "src")


def demo(*args: str, env: Optional[dict] = None, user: Optional[str] = None, cwd: Optional[str] = None,
         python: str = sys.executable, src: str = SRC) -> subprocess.CompletedProcess:
    environ = dict(os.environ if env is None else env)
    environ["PYTHONPATH"] = src
    argv = [python, "-m", "soswap", "demo", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=120, cwd=cwd)


def steps_of(summary: dict) -> dict:
    return {s["step"]: s for s in summary["steps"]}


@requires_cc
def test_demo_json_summary(tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("soswap-demo-*"))
    r = demo("--json")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout)
    assert summary["schema"] == "soswap.demo/1" and summary["ok"] is True and summary["kept"] is False
    steps = steps_of(summary)
    assert "Text file busy" in steps["naive-cp-executable"]["message"]
    assert steps["naive-overwrite-library"]["crashed"] and steps["naive-overwrite-library"]["signal"] in (
        "SIGBUS", "SIGSEGV", "SIGILL", "SIGTRAP")
    assert steps["tree"]["library"]["name"] == "libgateway.so"
    check = steps["check-bad"]
    assert check["verdict"] == "incompatible" and check["exit"] == 1
    assert check["message"].endswith("undefined symbol: Test_OpenGateway")
    assert "symbol lookup error" in check["message"] and check["when"] in ("startup", "first-call")
    assert steps["install-bad-refused"]["exit"] == 1 and steps["install-bad-refused"]["unchanged"]
    assert steps["install"]["running_still_v1"]
    assert steps["stale"]["kind"] in ("deleted", "replaced") and steps["stale"]["path"].endswith("libgateway.so")
    assert steps["users"]["version"] == "old" and "mapped" in steps["users"]["how"]
    assert steps["new-process-runs-v2"]["ok"] and steps["rollback"]["new_process_version"] == 1
    pid = steps["old-process-survived"]["pid"]
    # everything it started is gone, everything it created is removed
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(summary["workdir"]).exists()
    assert set(Path("/tmp").glob("soswap-demo-*")) == before


@requires_cc
def test_demo_narration_and_keep(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    r = demo("--keep", str(keep))
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("Text file busy", "killed by SIG", "$ soswap tree bin/a.out", "RUNPATH",
                 "undefined symbol: Test_OpenGateway", "refused", "still running on v1", "== Summary"):
        assert text in r.stdout
    assert "UNEXPECTED" not in r.stdout
    for name in ("bin/a.out", "lib/libgateway.so", "new/libgateway.so", "bad/libgateway.so"):
        assert (keep / name).is_file()
    r2 = demo("--keep", str(keep))
    assert r2.returncode == 2 and "empty or new directory" in r2.stderr and "Traceback" not in r2.stderr


def test_no_compiler_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env["PATH"] = str(tmp_path)  # nothing in it
    r = demo(env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["soswap: error: no C compiler found (install gcc, or set CC)"]


@requires_cc
@requires_root
def test_demo_works_without_root() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv missing")
    nobody = pwd.getpwnam("nobody")
    # A world-readable copy of the package and a home for nobody (pytest's tmp_path is private to root).
    top = Path(tempfile.mkdtemp(prefix="soswap-demo-test-"))
    try:
        os.chmod(top, 0o755)
        shutil.copytree(Path(SRC) / "soswap", top / "src" / "soswap",
                        ignore=shutil.ignore_patterns("__pycache__"))
        home = top / "home"
        home.mkdir()
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        env = dict(os.environ, HOME=str(home), TMPDIR=str(home), PYTHONDONTWRITEBYTECODE="1")
        env.pop("SOSWAP_STATE_DIR", None)
        # the system Python, as an unprivileged user would run it (a root-only venv may not be reachable)
        r = demo("--json", env=env, user=str(nobody.pw_uid), cwd=str(home), python="/usr/bin/python3",
                 src=str(top / "src"))
        assert r.returncode == 0, r.stdout + r.stderr
        summary = json.loads(r.stdout)
        assert summary["ok"], summary
        assert {p.name for p in home.iterdir()} <= {".cache", ".local"}
    finally:
        shutil.rmtree(top, ignore_errors=True)


@requires_cc
def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path: Path) -> None:
    """SIGTERM mid-demo: every process it started is stopped and its directory removed (as for SIGINT)."""
    import signal
    import time

    environ = dict(os.environ, PYTHONPATH=SRC, TMPDIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-m", "soswap", "demo"], env=environ, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        started = []
        while not started and time.monotonic() < deadline and p.poll() is None:
            started = [c for c in _descendants(p.pid) if "a.out" in _cmdline(c)]
            time.sleep(0.05)
        assert started, "the demo never started its program"
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=60) == 130
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    time.sleep(0.2)
    left = _programs_under(tmp_path)  # the ones seen running, and any started after that look
    assert not [c for c in started if _cmdline(c)] and not left, "a process of the demo outlived it"
    assert not list(tmp_path.glob("soswap-demo-*"))


def _programs_under(directory: Path) -> list:
    """The processes whose command line names a file under ``directory``, killed by PID (the test's cleanup)."""
    import signal

    left = [pid for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
            if str(directory) in _cmdline(pid)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def test_a_signal_as_a_program_starts_leaves_nothing_running(tmp_path: Path) -> None:
    """SIGTERM just after the demo forked one of its programs, before it could note it: the program is still
    stopped (the demo holds the signal over the start and the note)."""
    import time

    code = ("import os, signal, subprocess, sys\n"
            "real = subprocess.Popen.__init__\n"
            "def init(self, args, *a, **k):\n"
            "    real(self, args, *a, **k)\n"
            "    if 'a.out' in str(args[0]):\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "subprocess.Popen.__init__ = init\n"
            "from soswap.console import main\n"
            "sys.argv = ['soswap', 'demo']\n"
            "sys.exit(main())\n")
    environ = dict(os.environ, PYTHONPATH=SRC, TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    time.sleep(0.2)
    left = _programs_under(tmp_path)
    assert r.returncode == 130, r.stderr
    assert not left, "a program of the demo outlived it"
    assert not list(tmp_path.glob("soswap-demo-*"))


def _descendants(pid: int) -> list:
    out, todo = [], [pid]
    while todo:
        kids = []
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids += [int(k) for k in children.read_text().split()]
            except OSError:
                continue
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_compiler_that_fails_silently_is_named_with_its_status(tmp_path: Path) -> None:
    """CC=/bin/false prints nothing: the error line ended in 'failed: '; it now gives the exit status. Its
    work directory is removed all the same."""
    false = shutil.which("false")
    if false is None:
        pytest.skip("no false(1)")
    r = demo(env=dict(os.environ, CC=false, TMPDIR=str(tmp_path)))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"soswap: error: building libgateway.so failed: {false} exited with status 1 and printed nothing"]
    assert not list(tmp_path.glob("soswap-demo-*"))
