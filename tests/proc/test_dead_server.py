"""Never hang on a dead server: a FUSE filesystem whose server stopped answering (support.deadfs), as a dead
NFS or sshfs server looks. Every command that reads /proc must still answer, with what it could not check
counted, when a process uses a file there that the command did not ask about. Found by a QA round; each of
these waited for good before (the subprocess timeout here is the hang)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from support.deadfs import DeadServer, dead_server

SRC = str(Path(__file__).resolve().parents[2] / "src")
HANG = 60  # seconds: far beyond the 2 s stat timeout; reaching it is the bug


def soswap(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(tmp / "state"), SOSWAP_CACHE_DIR=str(tmp / "cache"))
    return subprocess.run([sys.executable, "-m", "soswap", *args], capture_output=True, text=True, env=env,
                          timeout=HANG)


def _started(server: DeadServer, argv: List[str], **kw: object) -> int:
    p = server.start(argv, **kw)
    time.sleep(0.5)  # it has opened (and mapped) what it runs
    assert p.poll() is None
    return p.pid


def test_stale_on_an_interpreter_whose_script_is_there(tmp_path: Path) -> None:
    """python3 and bash run scripts from the dead mount (an absolute and a relative path): the script stats go
    through the helper with its timeout, and the scripts count as not checked."""
    with dead_server(tmp_path) as server:
        (server.backing / "s.py").write_text("import time\ntime.sleep(600)\n")
        (server.backing / "s.sh").write_text("sleep 600\n")
        pids = [_started(server, [sys.executable, str(server.mnt / "s.py")]),
                _started(server, ["bash", "s.sh"], cwd=str(server.mnt))]
        server.stop()
        for pid in pids:
            r = soswap("stale", "--no-kernel", "--pid", str(pid), tmp=tmp_path)
            assert r.returncode == 0 and "could not be checked" in r.stdout, (r.stdout, r.stderr)
        r = soswap("stale", "--nagios", "--no-kernel", tmp=tmp_path)
        assert r.returncode in (0, 1) and r.stdout.startswith("STALE "), r.stdout


def _processes_with_argument(marker: str) -> List[int]:
    """PIDs whose command line contains ``marker`` (the helpers are forked copies of the soswap that ran)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0"):
                    out.append(int(name))
            except OSError:
                continue
    return out


def test_a_stat_that_timed_out_leaves_no_helper_behind(tmp_path: Path) -> None:
    """A check run every minute against a dead mount left one stuck stat helper per run, for as long as the
    server stayed down. The helper is killed and reaped once its stat times out (a FUSE request its server has
    not read is withdrawn on SIGKILL, as NFS's killable waits end)."""
    with dead_server(tmp_path) as server:
        (server.backing / "s.py").write_text("import time\ntime.sleep(600)\n")
        pid = _started(server, [sys.executable, str(server.mnt / "s.py")])
        server.stop()
        markers = [f"/soswap-qa-run-{n}" for n in range(3)]
        for marker in markers:  # --ignore MARKER ignores nothing here: it only names the run's processes
            r = soswap("stale", "--no-kernel", "--pid", str(pid), "--ignore", marker, tmp=tmp_path)
            assert r.returncode == 0 and "could not be checked" in r.stdout, (r.stdout, r.stderr)
        time.sleep(0.3)
        assert [_processes_with_argument(m) for m in markers] == [[], [], []]


def test_users_of_any_file_while_a_process_holds_one_there_open(tmp_path: Path) -> None:
    """bash holds its script open (fd 255) on the dead mount; `users` of unrelated files matches descriptors by
    the inode fdinfo shows (no filesystem asked) before it stats one, and answers."""
    with dead_server(tmp_path) as server:
        (server.backing / "s.sh").write_text("sleep 600\n")
        _started(server, ["bash", str(server.mnt / "s.sh")])
        server.stop()
        for path in ("/etc/hostname", "/usr/lib/x86_64-linux-gnu/libc.so.6"):
            if os.path.exists(path):
                r = soswap("users", path, tmp=tmp_path)
                assert r.returncode in (0, 1), r.stderr
        # the file asked about is there itself: an error that says so, not a wait for good
        r = soswap("users", str(server.mnt / "s.sh"), tmp=tmp_path)
        assert r.returncode == 2 and r.stderr == (f"soswap: error: {server.mnt / 's.sh'}: no answer from its "
                                                  "filesystem (a network or FUSE server that is down?)\n")


def test_check_discovery_skips_a_process_whose_program_is_there(tmp_path: Path) -> None:
    """A process that maps libc runs a program from the dead mount: check's process discovery does not read it
    (that read would wait for good); the process is not checked, and says why."""
    with dead_server(tmp_path) as server:
        shutil.copyfile("/bin/sleep", server.backing / "sleep")
        os.chmod(server.backing / "sleep", 0o755)
        pid = _started(server, [str(server.mnt / "sleep"), "600"])
        server.stop()
        code = ("import sys\nfrom soswap.abi.processes import read_process\nfrom soswap.errors import SoswapError\n"
                f"try:\n    read_process({pid})\nexcept SoswapError as exc:\n    print(exc)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG,
                           env=dict(os.environ, PYTHONPATH=SRC))
        assert "is on a filesystem that does not answer: not checked" in r.stdout, (r.stdout, r.stderr)


def test_the_post_transaction_hook_keeps_its_timeout(tmp_path: Path) -> None:
    """What apt's DPkg::Post-Invoke, dnf and pacman run: a check stuck in a system call (the alarm's handler never
    runs there) still ends at --timeout plus a grace, exit 0, and says so."""
    with dead_server(tmp_path) as server:
        (server.backing / "s.py").write_text("import time\ntime.sleep(600)\n")
        _started(server, [sys.executable, str(server.mnt / "s.py")])
        server.stop()
        r = soswap("hook", "post-transaction", "--timeout", "1", tmp=tmp_path)
        assert r.returncode == 0
        assert "did not finish in 1 s; skipped" in r.stderr


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is needed")
def test_stale_on_a_process_whose_mount_is_only_in_its_namespace(tmp_path: Path) -> None:
    """The dead mount exists only in the process's own mount namespace: its devices are guarded too (they are in
    its /proc/PID/mountinfo, not in ours)."""
    with dead_server(tmp_path) as server:
        shutil.copyfile("/bin/sleep", server.backing / "sleep")
        os.chmod(server.backing / "sleep", 0o755)
        pid = _started(server, ["unshare", "-m", "--propagation", "private", str(server.mnt / "sleep"), "600"])
        subprocess.run(["umount", "-l", str(server.mnt)], check=True)
        assert str(server.mnt) not in Path("/proc/self/mountinfo").read_text()
        server.stop()
        r = soswap("stale", "--no-kernel", "--pid", str(pid), tmp=tmp_path)
        assert r.returncode == 0 and "could not be checked" in r.stdout, (r.stdout, r.stderr)


def test_rdeps_with_a_warm_index_and_a_runpath_there(tmp_path: Path) -> None:
    """An indexed program's RUNPATH and one of its libraries are on the dead mount: a warm update of the index
    (the system discovery behind check and install) takes what it cannot stat as unchanged and answers. (A tree
    computed afresh would wait where ld.so waits: not guarded, docs/stale.md.)"""
    from support.build import executable, shared_lib

    with dead_server(tmp_path) as server:
        lib = shared_lib(tmp_path / "build" / "libqa.so", "int qa(void) { return 42; }\n", soname="libqa.so")
        shutil.copyfile(lib, server.backing / "libqa.so")
        executable(tmp_path / "bin" / "prog", "int qa(void);\nint main(void) { return qa(); }\n",
                   libs=[str(lib)], flags=[f"-Wl,-rpath,{server.mnt}"])
        time.sleep(2.2)  # out of the racy window: the index keeps what it computes now
        libc = "/lib/x86_64-linux-gnu/libc.so.6"
        warm = soswap("rdeps", "--scope", str(tmp_path / "bin"), "--", libc, tmp=tmp_path)
        assert warm.returncode == 0 and str(tmp_path / "bin" / "prog") in warm.stdout, warm.stdout + warm.stderr
        server.stop()
        r = soswap("rdeps", "--scope", str(tmp_path / "bin"), "--", libc, tmp=tmp_path)
        same = [line for line in r.stdout.splitlines() if not line.startswith("index:")]
        assert r.returncode == 0 and same == [line for line in warm.stdout.splitlines()
                                              if not line.startswith("index:")], r.stdout + r.stderr
