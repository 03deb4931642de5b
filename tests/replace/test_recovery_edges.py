"""Recovery, rollback and reporting at the edges: a transaction's filesystem not mounted when recovery runs,
a privileged version whose strip fails during a rollback, a report that cannot be written after the files
changed, a rollback stopped right after its journal said prepared, the backup link of a rolled-back
``--force-immutable`` install, and a soname link ldconfig would point elsewhere (each found by QA, each checked
on real files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from replace.helpers import SRC, backups, have, leftovers, run, soswap, wait_stopped
from support.build import requires_root, shared_lib


def _paused(step: str, argv: List[str], state: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(state), SOSWAP_TEST_PAUSE_AT=step)
    p = subprocess.Popen([sys.executable, "-m", "soswap", *argv], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if not wait_stopped(p.pid):
        p.kill()
        p.wait(timeout=10)
        pytest.fail(f"never reached pause point {step}")
    return p


@requires_root
def test_recovery_waits_for_a_filesystem_that_is_not_mounted(tmp_path: Path, state: Path) -> None:
    """A two-file transaction killed after its first rename, in a directory that is a mount point: with the
    filesystem not mounted (the empty mount point is there), recovery acted on the mount point, marked the
    transaction undone and left it half applied for good. It now refuses (journal kept), and undoes the
    transaction once the filesystem is back."""
    real, mnt, src = tmp_path / "real", tmp_path / "mnt", tmp_path / "src"
    for d in (real, mnt, src):
        d.mkdir()
    run(["mount", "--bind", str(real), str(mnt)])
    try:
        for n in ("f1", "f2"):
            (mnt / n).write_text(f"old {n}\n")
            (src / n).write_text(f"new {n}\n")
        p = _paused("renamed:0", ["install", "--no-check", str(src / "f1"), str(src / "f2"), f"{mnt}/"], state)
        p.kill()
        p.wait(timeout=10)
        assert p.stderr is not None
        p.stderr.close()
        assert sorted((mnt / n).read_text() for n in ("f1", "f2")) == ["new f1\n", "old f2\n"]
        run(["umount", str(mnt)])
        r = soswap(["recover"], state, check=2)
        assert r.stderr.count("soswap: error:") == 1 and "not mounted?" in r.stderr and "journal is kept" in r.stderr
        run(["mount", "--bind", str(real), str(mnt)])
        soswap(["recover"], state, check=0)
        assert [(mnt / n).read_text() for n in ("f1", "f2")] == ["old f1\n", "old f2\n"]
        assert leftovers(mnt) == [] and backups(mnt) == []
    finally:
        # a bind mount on the same filesystem is no mount to os.path.ismount: mountinfo says
        while f" {mnt} " in Path("/proc/self/mountinfo").read_text():
            if run(["umount", str(mnt)]).returncode != 0:
                break


@pytest.mark.skipif(not have("strace"), reason="needs strace")
def test_a_rollback_warns_when_the_version_it_rolls_back_keeps_set_id_bits(tmp_path: Path, state: Path) -> None:
    """The strip of the set-UID version a rollback puts aside fails (EIO injected into its fchmod): install
    warns about such a version; rollback said nothing and exited 0 with it still set-UID."""
    prog, new = tmp_path / "prog", tmp_path / "new"
    prog.write_text("v1\n")
    prog.chmod(0o4755)
    new.write_text("v2\n")
    soswap(["install", "--no-check", new, prog], state, check=0)
    trace = tmp_path / "trace"
    r = soswap(["rollback"], state, prefix=["strace", "-f", "-o", str(trace), "-e", "trace=fchmod", "-e",
                                            "inject=fchmod:error=EIO:when=2"])
    injected = [ln for ln in trace.read_text().splitlines() if "INJECTED" in ln]
    if not injected or "0600" not in injected[0]:
        pytest.skip(f"the injection did not hit the strip: {injected}")
    assert r.returncode == 0 and prog.read_text() == "v1\n", r.stderr
    assert "soswap: warning:" in r.stderr and "keeps its set-ID bits" in r.stderr


def test_an_install_whose_report_cannot_be_written_still_says_it_installed(tmp_path: Path, state: Path) -> None:
    """Standard output on a full device after the files changed: the exit status was 2 ("nothing changed")
    and the one error line was "No space left on device"."""
    target, new = tmp_path / "a", tmp_path / "new"
    target.write_text("old\n")
    new.write_text("new\n")
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(state))
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "soswap", "install", "--no-check", str(new), str(target)], env=env,
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert target.read_text() == "new\n"
    assert r.returncode == 0 and r.stderr.count("soswap: error:") == 1, r.stderr
    assert "is installed: every file is its new version" in r.stderr and "No space left on device" in r.stderr


def test_a_rollback_stopped_right_after_its_prepared_journal_cleans_up(tmp_path: Path, state: Path) -> None:
    """SIGTERM at the rollback's journal-prepared point: it said "changed nothing" and left its temporary files
    and a pending journal (install cleans up there)."""
    d = tmp_path / "d"
    d.mkdir()
    for n in ("a", "b"):
        (d / n).write_text(f"v1 {n}\n")
        (tmp_path / n).write_text(f"v2 {n}\n")
    soswap(["install", "--no-check", tmp_path / "a", tmp_path / "b", f"{d}/"], state, check=0)
    p = _paused("journal-prepared", ["rollback"], state)
    os.kill(p.pid, signal.SIGTERM)
    os.kill(p.pid, signal.SIGCONT)
    assert p.wait(timeout=30) == 130
    assert p.stderr is not None
    assert "changed nothing" in p.stderr.read().decode()
    p.stderr.close()
    assert leftovers(d) == [] and [(d / n).read_text() for n in ("a", "b")] == ["v2 a\n", "v2 b\n"]
    history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert history[-1]["state"] == "failed"


@requires_root
def test_rolling_back_a_force_immutable_install_drops_its_backup_link(tmp_path: Path, state: Path) -> None:
    """The old inode of a ``--force-immutable`` install is back in place and immutable again after the
    rollback: its backup link (a hard link to it) could not be deleted, and history said "pruned"."""
    conf, new = tmp_path / "conf", tmp_path / "new"
    conf.write_text("v1\n")
    new.write_text("v2\n")
    if run(["chattr", "+i", str(conf)], check=False).returncode != 0:
        pytest.skip("no immutable flag on this filesystem")
    try:
        soswap(["install", "--no-check", "--force-immutable", new, conf], state, check=0)
        soswap(["rollback", "--no-backup"], state, check=0)  # no backup of its own: only the install's is left
        assert conf.read_text() == "v1\n" and "i" in run(["lsattr", str(conf)]).stdout.split()[0]
        assert backups(tmp_path) == []
    finally:
        for f in [conf, *(tmp_path / b for b in backups(tmp_path))]:
            run(["chattr", "-i", str(f)], check=False)


def test_the_soname_link_stays_when_a_higher_version_has_that_soname(tmp_path: Path, state: Path) -> None:
    """With libfoo.so.1.0 and libfoo.so.1.9 in the directory, installing libfoo.so.1.1 pointed libfoo.so.1 at
    it, a version ldconfig would not choose (the next ldconfig moves the link to 1.9)."""
    lib = tmp_path / "lib"
    for v in ("1.0", "1.9"):
        shared_lib(lib / f"libfoo.so.{v}", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    os.symlink("libfoo.so.1.0", lib / "libfoo.so.1")
    new = shared_lib(tmp_path / "src" / "libfoo.so.1.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    r = soswap(["install", "--no-check", new, f"{lib}/"], state, check=0)
    assert os.readlink(lib / "libfoo.so.1") == "libfoo.so.1.0"
    assert "libfoo.so.1.9 has the SONAME libfoo.so.1 too" in r.stderr
