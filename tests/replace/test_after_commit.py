"""What happens after a transaction committed: its cleanup, the pruning of older backups and the last step of
a rollback are housekeeping. A failure there must neither read as "nothing changed" nor block later work, and
pruning must not call backups gone that it could not see (a filesystem not mounted). Found by a QA round with
full and read-only filesystems."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict

from replace.helpers import SRC, backups, mounted, run, sha256, soswap, tmpfs, wait_stopped
from support.build import requires_root

pytestmark = [requires_root]


def _history(state: Path) -> Dict[str, dict]:
    doc = json.loads(soswap(["history", "--json"], state, check=0).stdout)
    return {t["txid"]: t for t in doc["transactions"]}


def _install(state: Path, src: Path, dest: Path, *extra: str) -> subprocess.CompletedProcess:
    return soswap(["install", "--no-check", "--no-report", *extra, src, dest], state)


def _file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_committed_install_whose_filesystem_turns_read_only_finishes(tmp_path: Path, state: Path) -> None:
    """Paused right after the commit mark, the target's filesystem is remounted read-only: the temporary name
    the rename consumed cannot be unlinked (EROFS before the lookup), which is nothing left to do. The install
    ends well, and later installs elsewhere are not blocked by a cleanup that never ends."""
    mnt = tmp_path / "ro"
    new = _file(tmp_path / "src" / "lib.so", "new\n")
    with tmpfs(mnt, "1m"):
        _file(mnt / "lib.so", "old\n")
        env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(state), SOSWAP_TEST_PAUSE_AT="committed")
        p = subprocess.Popen([sys.executable, "-m", "soswap", "install", "--no-check", "--no-report", str(new),
                              str(mnt / "lib.so")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert wait_stopped(p.pid)
            assert run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
            os.kill(p.pid, signal.SIGCONT)
            _out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err
        assert (mnt / "lib.so").read_text() == "new\n" and len(backups(mnt)) == 1
        other = _file(tmp_path / "other" / "f", "old\n")
        assert _install(state, _file(tmp_path / "src" / "f", "new\n"), other).returncode == 0
        assert other.read_text() == "new\n"
        assert [t["state"] for t in _history(state).values()] == ["done", "done"]
        run(["mount", "-o", "remount,rw", str(mnt)])


def test_pruning_that_cannot_save_a_journal_is_a_warning(tmp_path: Path, state: Path) -> None:
    """The journal of a transaction whose backups are pruned cannot be rewritten (immutable): the install that
    pruned is complete, so it says so in a warning and exits 0 (it exited 2, "nothing was changed")."""
    dest = _file(tmp_path / "dst" / "f", "v0\n")
    for v in ("v1", "v2"):
        assert _install(state, _file(tmp_path / "src" / v, f"{v}\n"), dest).returncode == 0
    first = sorted(_history(state))[0]
    journal = state / "tx" / f"{first}.json"
    assert journal.is_file() and run(["chattr", "+i", journal]).returncode == 0
    try:
        r = _install(state, _file(tmp_path / "src" / "v3", "v3\n"), dest, "--keep", "1")
        assert r.returncode == 0, r.stderr
        assert dest.read_text() == "v3\n"
        assert "warning:" in r.stderr and "pruning older backups failed" in r.stderr
    finally:
        run(["chattr", "-i", journal])
    r = _install(state, _file(tmp_path / "src" / "v4", "v4\n"), dest, "--keep", "1")
    assert r.returncode == 0 and "warning" not in r.stderr
    assert [t["backups"] for t in sorted(_history(state).values(), key=lambda t: t["txid"])] == [
        "pruned", "pruned", "pruned", "kept"]


def test_a_rollback_that_cannot_mark_its_transaction_is_a_warning(tmp_path: Path, state: Path) -> None:
    """The rolled-back transaction's journal cannot be rewritten: the files are their previous versions, which
    the rollback says with exit 0 and a warning; `soswap recover` marks the transaction later."""
    dest = _file(tmp_path / "dst" / "f", "old\n")
    assert _install(state, _file(tmp_path / "src" / "f", "new\n"), dest).returncode == 0
    (txid,) = _history(state)
    journal = state / "tx" / f"{txid}.json"
    assert run(["chattr", "+i", journal]).returncode == 0
    try:
        r = soswap(["rollback", txid], state)
        assert r.returncode == 0, r.stderr
        assert dest.read_text() == "old\n" and "could not be marked rolled back" in r.stderr
    finally:
        run(["chattr", "-i", journal])
    soswap(["recover"], state, check=0)
    assert _history(state)[txid]["rolled_back_by"]
    assert soswap(["rollback", txid], state, check=1).stderr.count("already rolled back") == 1


def test_pruning_leaves_the_backups_of_a_filesystem_not_mounted(tmp_path: Path, state: Path) -> None:
    """A transaction's directory is a mount (here a bind mount) that is not there when pruning runs: its backup
    is not called pruned while it cannot be seen; once mounted again it is deleted."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    _file(backing / "lib.so", "old\n")
    with mounted(["--bind", str(backing)], mnt):
        assert _install(state, _file(tmp_path / "src" / "lib.so", "new\n"), mnt / "lib.so").returncode == 0
    (txid,) = _history(state)
    assert len(backups(backing)) == 1
    other = _file(tmp_path / "other" / "f", "a\n")
    for n in range(2):
        assert _install(state, _file(tmp_path / "src" / f"f{n}", f"{n}\n"), other, "--keep", "0").returncode == 0
    assert _history(state)[txid]["backups"] == "kept" and len(backups(backing)) == 1
    with mounted(["--bind", str(backing)], mnt):
        assert _install(state, _file(tmp_path / "src" / "f2", "2\n"), other, "--keep", "0").returncode == 0
    assert _history(state)[txid]["backups"] == "pruned" and backups(backing) == []
    assert sha256(backing / "lib.so") == sha256(tmp_path / "src" / "lib.so")


def test_pruning_finds_its_backups_on_a_filesystem_numbered_anew(tmp_path: Path, state: Path) -> None:
    """The filesystem comes back under another device number (another loop device here; a device-mapper device
    after a reboot, an NFS mount made again): its backups, the same inodes by number, size and mtime, are
    still pruned (they were kept for good)."""
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    assert run(["mkfs.ext4", "-q", "-F", str(image)]).returncode == 0
    devices = []

    def attach(path: Path) -> str:
        r = run(["losetup", "-f", "--show", str(path)])
        assert r.returncode == 0, r.stderr
        devices.append(r.stdout.strip())
        return devices[-1]

    try:
        first = attach(image)
        with mounted([first], mnt):
            _file(mnt / "lib.so", "v0\n")
            for v in ("v1", "v2"):
                assert _install(state, _file(tmp_path / "src" / v, f"{v}\n"), mnt / "lib.so").returncode == 0
            dev = os.stat(mnt).st_dev
        run(["losetup", "-d", first])
        devices.remove(first)
        attach(tmp_path / "src" / "v1")  # takes the first device's number
        with mounted([attach(image)], mnt):
            assert os.stat(mnt).st_dev != dev and len(backups(mnt)) == 2
            other = _file(tmp_path / "other" / "f", "a\n")
            assert _install(state, _file(tmp_path / "src" / "b", "b\n"), other, "--keep", "1").returncode == 0
            assert len(backups(mnt)) == 0 and (mnt / "lib.so").read_text() == "v2\n"
        assert [t["backups"] for t in sorted(_history(state).values(), key=lambda t: t["txid"])] == [
            "pruned", "pruned", "kept"]
    finally:
        for d in devices:
            run(["losetup", "-d", d])
