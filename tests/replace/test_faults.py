"""Failures at every step: real syscall errors injected with strace, SIGKILL at every step followed by
``soswap recover``, and a filesystem without O_TMPFILE (replace.md §(b) 17, 18, 24)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from replace.helpers import SRC, backups, have, leftovers, run, sha256, soswap, wait_stopped
from support.build import requires_root, shared_lib

pytestmark = [requires_root, pytest.mark.skipif(not have("strace"), reason="strace not installed")]

#: Makes openat(..., O_TMPFILE) fail with EOPNOTSUPP, as on a filesystem without O_TMPFILE.
NO_TMPFILE_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
static int call(const char *name, int dfd, const char *path, int flags, mode_t mode) {
    int (*real)(int, const char *, int, ...) = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, name);
    return real(dfd, path, flags, mode);
}
#define SHIM(name) \
int name(int dfd, const char *path, int flags, ...) { \
    mode_t mode = 0; \
    if (flags & (O_CREAT | __O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); } \
    if ((flags & __O_TMPFILE) == __O_TMPFILE) { errno = EOPNOTSUPP; return -1; } \
    return call(#name, dfd, path, flags, mode); \
}
SHIM(openat)
SHIM(openat64)
"""


def _setup(tmp_path: Path, libfoo) -> Path:  # type: ignore[no-untyped-def]
    """libfoo.so.1 v1 with an owner, an ACL, a user xattr and a capability: every metadata step runs."""
    d = tmp_path / "d"
    lib = libfoo.deploy(d, with_programs=False)
    os.chown(lib, 1234, 4321)
    run(["setfacl", "-m", "u:nobody:rx", lib])
    os.setxattr(lib, "user.note", b"n")
    assert run(["setcap", "cap_net_bind_service=+ep", lib]).returncode == 0
    return lib


def _assert_old_and_clean(lib: Path, libfoo, state: Path) -> None:  # type: ignore[no-untyped-def]
    assert sha256(lib) == libfoo.sha1
    assert leftovers(lib.parent) == []
    soswap(["recover"], state, check=0)
    assert sha256(lib) == libfoo.sha1
    assert leftovers(lib.parent) == [] and backups(lib.parent) == []
    assert (lib.stat().st_uid, lib.stat().st_gid) == (1234, 4321)
    assert "cap_net_bind_service" in run(["getcap", lib]).stdout


def _inject(lib: Path, libfoo, state: Path, *specs: str, env=None):  # type: ignore[no-untyped-def]
    prefix = ["strace", "-f", "-qq", "-o", "/dev/null"]
    for spec in specs:
        prefix += ["-e", f"inject={spec}"]
    return soswap(["install", "--no-check", libfoo.v2, lib], state, prefix=prefix, env=env)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["copy_file_range:error=EIO"], "writing the new file failed"),
        (["copy_file_range:error=ENOSPC"], "no space left"),
        (["copy_file_range:error=EXDEV", "pwrite64:error=EIO"], "writing the new file failed"),
        (["fchown:error=EPERM"], "owner 1234:4321"),
        (["fchmod:error=EPERM"], "mode 0755"),
        (["fsetxattr:error=EPERM:when=1"], "system.posix_acl_access"),
        (["fsetxattr:error=EPERM:when=2"], "user.note"),
        (["fsetxattr:error=EPERM:when=3"], "security.capability"),
        (["utimensat:error=EPERM"], "timestamps"),
        (["linkat:error=EIO:when=1"], "linking the temporary file"),
        (["linkat:error=EIO:when=2"], "making the backup link"),
        (["renameat:error=EIO"], "rename failed"),
        (["renameat:error=EBUSY"], "mount point"),
        (["rename:error=EIO:when=1"], "cannot write the journal"),
        (["rename:error=EIO:when=2"], "cannot write the journal"),
        (["rename:error=EIO:when=3"], "cannot write the journal"),
    ],
    ids=lambda v: v if isinstance(v, str) else "+".join(v),
)
def test_injected_syscall_error(tmp_path, libfoo, state, specs: List[str], message: str):
    """Each failing syscall: exit 2, one error line naming the step, the old file intact, no temp; recover
    finds nothing to change."""
    lib = _setup(tmp_path, libfoo)
    r = _inject(lib, libfoo, state, *specs)
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("soswap: error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    _assert_old_and_clean(lib, libfoo, state)


def test_every_fsync_failure(tmp_path, libfoo, state):
    """fsync fails at each of its calls in turn (temp file, journal, directories): never a half state."""
    lib = _setup(tmp_path, libfoo)
    trace = tmp_path / "count"
    soswap(["install", "--no-check", libfoo.v1, tmp_path / "probe"], state, check=0,
           prefix=["strace", "-f", "-qq", "-e", "trace=fsync", "-o", str(trace)])
    soswap(["install", "--no-check", libfoo.v1, tmp_path / "probe"], state, check=0,
           prefix=["strace", "-f", "-qq", "-e", "trace=fsync", "-o", str(trace)])
    calls = sum(1 for line in trace.read_text().splitlines() if "fsync(" in line)
    assert calls >= 5  # journal file + dir (staging, prepared, committed), temp file, target directory
    for n in range(1, calls + 1):
        r = _inject(lib, libfoo, state, f"fsync:error=EIO:when={n}")
        assert r.returncode == 2, f"fsync #{n}: {r.stderr}"
        assert r.stderr.count("soswap: error:") == 1
        _assert_old_and_clean(lib, libfoo, state)


def test_linkat_eperm_for_backup_still_installs(tmp_path, libfoo, state):
    """A backup link refused with EPERM (e.g. protected_hardlinks) does not stop a single-file install."""
    lib = _setup(tmp_path, libfoo)
    r = _inject(lib, libfoo, state, "linkat:error=EPERM:when=2")
    assert r.returncode == 0, r.stderr
    assert sha256(lib) == libfoo.sha2 and backups(lib.parent) == []


# -- SIGKILL at every step ---------------------------------------------------------------------------------

STEPS_BEFORE_COMMIT = ["checked", "journal-staging", "temp-created", "data-copied", "metadata-set", "fsynced",
                       "linked", "staged", "journal-prepared", "backup:0", "verified:0"]
STEPS_DURING_COMMIT = ["renamed:0", "flags:0", "dirs-synced"]
STEPS_AFTER_COMMIT = ["committed", "cleaned"]


def _kill_at(step: str, argv: List[str], state: Path, env_extra=None) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(state), SOSWAP_TEST_PAUSE_AT=step)
    if env_extra:
        env.update(env_extra)
    p = subprocess.Popen([sys.executable, "-m", "soswap", *argv], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        stopped = wait_stopped(p.pid)
        assert stopped, f"never reached pause point {step}: {p.stderr.read().decode() if p.poll() is not None else ''}"
    finally:
        p.kill()
        p.wait(timeout=10)
        if p.stderr:
            p.stderr.close()


@pytest.mark.parametrize("step", STEPS_BEFORE_COMMIT + STEPS_DURING_COMMIT + STEPS_AFTER_COMMIT)
def test_sigkill_at_step_then_recover(tmp_path, libfoo, state, step):
    """Case 18: kill -9 at each step; after 'soswap recover' the file is entirely v1 (not committed) or
    entirely v2 (committed), with its metadata, and no temporary file is left."""
    lib = _setup(tmp_path, libfoo)
    _kill_at(step, ["install", "--no-check", str(libfoo.v2), str(lib)], state)
    assert sha256(lib) in (libfoo.sha1, libfoo.sha2)
    r = soswap(["recover", "--json"], state, check=0)
    expected = libfoo.sha2 if step in STEPS_AFTER_COMMIT else libfoo.sha1
    assert sha256(lib) == expected
    assert leftovers(lib.parent) == []
    assert (lib.stat().st_uid, lib.stat().st_gid) == (1234, 4321)
    assert "cap_net_bind_service" in run(["getcap", lib]).stdout
    recovered = json.loads(r.stdout)["recovered"]
    if step == "checked":
        assert recovered == []  # killed before the journal existed: nothing was written
    elif step != "cleaned":
        assert len(recovered) == 1
    history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert all(t["state"] in ("done", "undone") for t in history)
    assert len(backups(lib.parent)) == (1 if expected == libfoo.sha2 else 0)
    # and the next install works normally
    soswap(["install", "--no-check", libfoo.v2, lib], state, check=0)
    assert sha256(lib) == libfoo.sha2


def test_sigkill_named_temp_left_then_recovered(tmp_path, libfoo, state):
    """Without O_TMPFILE the temp has a name from the start; recovery removes it after a kill -9."""
    shim = shared_lib(tmp_path / "shim" / "notmpfile.so", NO_TMPFILE_SHIM, libs=["-ldl"])
    lib = _setup(tmp_path, libfoo)
    _kill_at("data-copied", ["install", "--no-check", str(libfoo.v2), str(lib)], state,
             env_extra={"LD_PRELOAD": str(shim)})
    assert len(leftovers(lib.parent)) == 1
    soswap(["recover"], state, check=0)
    assert leftovers(lib.parent) == [] and sha256(lib) == libfoo.sha1


def test_without_o_tmpfile(tmp_path, libfoo, state):
    """Case 17: with O_TMPFILE failing, the named fallback installs, and leaves nothing after success or an
    injected failure."""
    shim = shared_lib(tmp_path / "shim" / "notmpfile.so", NO_TMPFILE_SHIM, libs=["-ldl"])
    lib = _setup(tmp_path, libfoo)
    trace = tmp_path / "trace"
    r = soswap(["install", "--no-check", libfoo.v2, lib], state, env={"LD_PRELOAD": str(shim)},
               prefix=["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace)])
    assert r.returncode == 0, r.stderr
    text = trace.read_text()
    assert "O_TMPFILE" not in text  # the shim answered without a system call
    assert [line for line in text.splitlines() if ".libfoo.so.1.new-" in line and "O_EXCL" in line]
    assert sha256(lib) == libfoo.sha2 and leftovers(lib.parent) == []
    r = _inject(lib, libfoo, state, "copy_file_range:error=EIO", env={"LD_PRELOAD": str(shim)})
    assert r.returncode == 2 and leftovers(lib.parent) == []


def test_sigkill_between_renames_of_three_files(tmp_path, libfoo, state):
    """Case 24: a 3-file transaction killed between its 1st and 2nd rename; recovery restores all three old
    inodes and removes every temp."""
    d = tmp_path / "app"
    libfoo.deploy(d)
    names = ["libfoo.so.1", "loop", "once"]
    before = {n: ((d / n).stat().st_ino, sha256(d / n)) for n in names}
    new = tmp_path / "new"
    new.mkdir()
    for n in names:
        (new / n).write_bytes((d / n).read_bytes() + b"\0new")
    _kill_at("renamed:0", ["install", "--no-check", *(str(new / n) for n in names), str(d)], state)
    changed = [n for n in names if (d / n).stat().st_ino != before[n][0]]
    assert changed == ["libfoo.so.1"]  # the library is committed first (the programs need it)
    soswap(["recover"], state, check=0)
    assert {n: ((d / n).stat().st_ino, sha256(d / n)) for n in names} == before
    assert leftovers(d) == [] and backups(d) == []


def _sigterm_at(step: str, argv: List[str], state: Path, while_paused=None) -> Tuple[int, str]:  # type: ignore[no-untyped-def]
    """Run soswap until pause point ``step``, call ``while_paused()``, send SIGTERM; (status, stderr)."""
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(state), SOSWAP_TEST_PAUSE_AT=step)
    p = subprocess.Popen([sys.executable, "-m", "soswap", *argv], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert wait_stopped(p.pid)
        if while_paused is not None:
            while_paused()
        os.kill(p.pid, signal.SIGTERM)
        os.kill(p.pid, signal.SIGCONT)
        status = p.wait(timeout=30)
        assert p.stderr is not None
        return status, p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if p.stderr:
            p.stderr.close()


def test_sigterm_during_commit_undoes(tmp_path, libfoo, state):
    """SIGTERM while paused mid-commit: the process unwinds like SIGINT and undoes (exit 130)."""
    lib = _setup(tmp_path, libfoo)

    def renamed_not_committed() -> None:
        assert sha256(lib) == libfoo.sha2

    status, err = _sigterm_at("renamed:0", ["install", "--no-check", str(libfoo.v2), str(lib)], state,
                              renamed_not_committed)
    assert status == 130 and err == "soswap: interrupted before the commit: this transaction changed nothing\n"
    assert sha256(lib) == libfoo.sha1 and leftovers(lib.parent) == [] and backups(lib.parent) == []
    history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert [t["state"] for t in history] == ["undone"]


def test_an_interrupted_install_says_what_its_recovery_did(tmp_path, libfoo, state):
    """Install A is killed mid-commit; install B's recovery undoes it, then B is interrupted before its own
    commit: B says both (it said "nothing was changed" while A's file had just been put back)."""
    lib = _setup(tmp_path, libfoo)
    _kill_at("renamed:0", ["install", "--no-check", str(libfoo.v2), str(lib)], state)
    assert sha256(lib) == libfoo.sha2
    other = tmp_path / "other"
    other.write_text("old\n")
    (tmp_path / "src").write_text("new\n")
    status, err = _sigterm_at("checked", ["install", "--no-check", str(tmp_path / "src"), str(other)], state)
    (txid,) = [t["txid"] for t in json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]]
    assert status == 130 and err == (f"soswap: recovered interrupted transaction {txid}: undone\n"
                                     "soswap: interrupted before the commit: this transaction changed nothing\n")
    assert sha256(lib) == libfoo.sha1 and other.read_text() == "old\n"


def test_new_file_rename_noreplace_failure(tmp_path, libfoo, state):
    """A new file is committed with renameat2(RENAME_NOREPLACE); when it fails nothing appears."""
    d = tmp_path / "new"
    d.mkdir()
    r = soswap(["install", "--no-check", libfoo.v2, d / "libfoo.so.1"], state,
               prefix=["strace", "-f", "-qq", "-o", "/dev/null", "-e", "inject=renameat2:error=EIO"])
    assert r.returncode == 2 and r.stderr.count("soswap: error:") == 1, r.stderr
    assert sorted(os.listdir(d)) == []


def test_sigkill_during_rollback_then_recover(tmp_path, libfoo, state):
    """A rollback killed mid-commit is undone by recovery: the files are the installed versions again, and
    the rollback can then be run to completion."""
    lib = _setup(tmp_path, libfoo)
    soswap(["install", "--no-check", libfoo.v2, lib], state, check=0)
    _kill_at("renamed:0", ["rollback"], state)
    assert sha256(lib) == libfoo.sha1  # the rollback's rename happened
    soswap(["recover"], state, check=0)
    assert sha256(lib) == libfoo.sha2 and leftovers(lib.parent) == []
    soswap(["rollback"], state, check=0)
    assert sha256(lib) == libfoo.sha1 and leftovers(lib.parent) == []
    assert (lib.stat().st_uid, lib.stat().st_gid) == (1234, 4321)


def _privileged(path: Path):  # type: ignore[no-untyped-def]
    try:
        cap = os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        cap = None
    return stat.S_IMODE(os.lstat(path).st_mode), cap


@pytest.mark.parametrize("step", ["journal-prepared", "backup:0", "renamed:0", "dirs-synced", "committed"])
def test_a_rollback_killed_at_any_step_never_rearms_the_old_inode(tmp_path, libfoo, state, step):
    """A capability (and set-ID) file replaced: its old inode is disarmed. A rollback killed at any step and
    recovered, finished or undone, never makes that inode privileged again (it put it back, privileged, before
    its commit: an undone rollback left the vulnerable version armed under its backup and any hard link); the
    file at the path always has the privileges of the version it is."""
    lib = _setup(tmp_path, libfoo)
    os.chmod(lib, 0o4755)
    assert run(["setcap", "cap_net_bind_service=+ep", lib]).returncode == 0
    armed = _privileged(lib)
    kept = tmp_path / "kept"
    os.link(lib, kept)
    soswap(["install", "--no-check", libfoo.v2, lib], state, check=0)
    assert _privileged(kept) == (0o600, None) and _privileged(lib) == armed
    _kill_at(step, ["rollback"], state)
    soswap(["recover"], state, check=0)
    assert _privileged(kept) == (0o600, None)
    assert sha256(lib) in (libfoo.sha1, libfoo.sha2) and _privileged(lib) == armed
    for name in os.listdir(lib.parent):
        if os.lstat(lib.parent / name).st_ino == os.lstat(kept).st_ino:
            assert _privileged(lib.parent / name) == (0o600, None), name
    soswap(["rollback"], state, check=0) if sha256(lib) == libfoo.sha2 else None
    assert sha256(lib) == libfoo.sha1 and _privileged(lib) == armed and _privileged(kept) == (0o600, None)


# -- another writer replaces the destination while soswap installs ------------------------------------------

@pytest.mark.parametrize("step", ["staged", "backup:0"])
def test_another_writer_keeps_its_file(tmp_path, state, step):
    """Another writer renames its own file over DEST while soswap is held at ``step`` (before its backup
    link, after it): soswap notices, replaces nothing, leaves the other writer's file as it is (the undo
    never puts the old version back over it), and leaves no backup link nobody tracks."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_text("orig\n")
    (tmp_path / "src").write_text("new\n")
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(state), SOSWAP_TEST_PAUSE_AT=step)
    p = subprocess.Popen([sys.executable, "-m", "soswap", "install", "--no-check", str(tmp_path / "src"),
                          str(d / "f")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)
    try:
        assert wait_stopped(p.pid), p.stderr.read() if p.poll() is not None else ""
        (d / "f.other").write_text("other writer\n")
        os.rename(d / "f.other", d / "f")
        os.kill(p.pid, signal.SIGCONT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    assert p.returncode == 2 and "changed while soswap was installing" in err, err
    assert (d / "f").read_text() == "other writer\n"
    assert sorted(os.listdir(d)) == ["f"]  # no temp, no backup link
    assert soswap(["recover"], state, check=0).stdout.strip().startswith("nothing to recover")


def test_a_rollback_killed_after_its_commit_is_finished_by_recover(tmp_path, state):
    """kill -9 of 'soswap rollback' right after its commit: 'soswap recover' completes it as an uninterrupted
    rollback ends (the rolled-back transaction marked, its backups deleted): a second 'soswap rollback' then
    finds nothing left to roll back, as after an uninterrupted one (it refused: 'f1 changed since')."""
    d, s = tmp_path / "d", tmp_path / "s"
    d.mkdir()
    s.mkdir()
    for i in (1, 2):
        (d / f"f{i}").write_text(f"old{i}\n")
        (s / f"f{i}").write_text(f"new{i}\n")
    soswap(["install", "--no-check", s / "f1", s / "f2", d], state, check=0)
    _kill_at("committed", ["rollback"], state)
    assert [(d / f"f{i}").read_text() for i in (1, 2)] == ["old1\n", "old2\n"]
    soswap(["recover"], state, check=0)
    history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    install = next(t for t in history if t["kind"] == "install")
    assert install["rolled_back_by"] and install["state"] == "done"
    assert not [n for n in os.listdir(d) if ".bak-" in n and n.endswith(install["txid"])]
    r = soswap(["rollback"], state, check=2)
    assert "no committed transaction to roll back" in r.stderr


@pytest.mark.parametrize("step", ["journal-prepared", "committed"])
def test_recovery_stops_while_a_directory_is_gone(tmp_path, libfoo, state, step):
    """A directory of the interrupted transaction is missing (a filesystem not mounted yet): recovery, and
    the next install, which recovers first, stop with the journal kept (it used to be marked undone or done,
    and the files stayed half new once the directory came back). With the directory back, recover resolves
    it; --skip-missing resolves it when the directory is gone for good."""
    lib = _setup(tmp_path, libfoo)
    _kill_at(step, ["install", "--no-check", str(libfoo.v2), str(lib)], state)
    away = tmp_path / "away"
    os.rename(lib.parent, away)
    r = soswap(["recover"], state, check=2)
    assert "directory is gone" in r.stderr and r.stderr.count("soswap: error:") == 1
    other = tmp_path / "other"
    other.mkdir()
    assert soswap(["install", "--no-check", libfoo.v2, other / "x"], state, check=2).returncode == 2
    history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert [t["state"] for t in history] == ["prepared" if step == "journal-prepared" else "committed"]
    os.rename(away, lib.parent)
    soswap(["recover"], state, check=0)
    assert sha256(lib) == (libfoo.sha1 if step == "journal-prepared" else libfoo.sha2)
    assert leftovers(lib.parent) == []
    # gone for good: --skip-missing resolves it with a note
    _kill_at("journal-prepared", ["install", "--no-check", str(libfoo.v2), str(lib)], state)
    shutil.rmtree(lib.parent)
    soswap(["recover"], state, check=2)
    r = soswap(["recover", "--skip-missing", "--json"], state, check=0)
    (outcome,) = json.loads(r.stdout)["recovered"]
    assert any("directory is gone" in n for n in outcome["notes"])
    assert soswap(["install", "--no-check", libfoo.v2, other / "x"], state, check=0).returncode == 0


@pytest.mark.parametrize("step", ["committed", "cleaned"])
def test_sigterm_after_the_commit_says_the_files_are_new(tmp_path, libfoo, state, step):
    """SIGTERM right after the commit mark or during the cleanup: the files are their new versions, and the
    one error line says so (it used to exit 130 silently, as if undone); the next recover finishes it. The
    same for a rollback: its files are their previous versions."""
    lib = _setup(tmp_path, libfoo)
    status, err = _sigterm_at(step, ["install", "--no-check", "--no-report", str(libfoo.v2), str(lib)], state)
    assert status == 130
    assert err.count("soswap: error:") == 1 and "committed: every file is its new version" in err, err
    assert sha256(lib) == libfoo.sha2
    soswap(["recover"], state, check=0)
    history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert [t["state"] for t in history] == ["done"] and leftovers(lib.parent) == []
    status, err = _sigterm_at(step, ["rollback"], state)
    assert status == 130 and "committed: every file is its previous version" in err, err
    assert sha256(lib) == libfoo.sha1
    soswap(["recover"], state, check=0)
    history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert [t["state"] for t in history] == ["done", "done"] and leftovers(lib.parent) == []


def test_an_emptied_history_journal_is_left_out_of_history(tmp_path, libfoo, state):
    """A finished record a power cut left empty (journals written before this release had no fsync) is one
    history line lost, not an error that blocks history, recover and every install."""
    lib = _setup(tmp_path, libfoo)
    soswap(["install", "--no-check", "--no-backup", libfoo.v2, lib], state, check=0)
    (first,) = [t["txid"] for t in json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]]
    (state / "history" / f"{first}.json").write_bytes(b"")
    soswap(["install", "--no-check", libfoo.once, lib], state, check=0)
    history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert len(history) == 1 and history[0]["txid"] != first
    soswap(["recover"], state, check=0)


def test_a_transaction_over_more_directories_than_descriptors(tmp_path, libfoo, state):
    """One descriptor per directory stays open for the whole transaction: past the hard limit it is refused
    before anything is written (it used to fail half-way and leave a journal the same limit could not
    recover); under it, the soft limit is raised and the install goes through. (80: soswap refuses any command
    below 64 descriptors.)"""
    import resource

    manifest = tmp_path / "manifest"
    lines = []
    for i in range(80):
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / "f").write_text(f"old{i}\n")
        (tmp_path / f"s{i}").write_text(f"new{i}\n")
        lines.append(f"{tmp_path / f's{i}'} {d / 'f'}")
    manifest.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(state))
    argv = [sys.executable, "-m", "soswap", "install", "--no-check", "--no-report", "--manifest", str(manifest)]
    for soft, hard, want in ((80, 80, 2), (80, 4096, 0)):
        def limit(soft=soft, hard=hard) -> None:  # type: ignore[no-untyped-def]
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, preexec_fn=limit)
        assert r.returncode == want, r.stderr
        if want:
            assert "80 directories" in r.stderr and r.stderr.count("soswap: error:") == 1
            assert soswap(["history"], state, check=0).stdout.strip() == "no transactions"
    assert all((tmp_path / f"d{i}" / "f").read_text() == f"new{i}\n" for i in range(80))
    # its rollback is refused the same way, before anything is written
    r = subprocess.run([sys.executable, "-m", "soswap", "rollback"], env=env, capture_output=True, text=True,
                       timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (80, 80)))
    assert r.returncode == 2 and "80 directories" in r.stderr, r.stderr
    assert [t["kind"] for t in json.loads(soswap(["history", "--json"], state, check=0).stdout)[
        "transactions"]] == ["install"]


def test_a_second_rollback_of_a_set_uid_file(tmp_path, state):
    """v1 -> v2 -> v3 over a set-user-ID file, then two rollbacks: v1 again, set-user-ID, and no backup left
    privileged. The first rollback puts v2 back as a copy (never its old inode); the second used to refuse it
    as "changed since the transaction"."""
    d = tmp_path / "d"
    d.mkdir()
    f = d / "f"
    for v in (1, 2, 3):
        (tmp_path / f"v{v}").write_text(f"v{v}\n")
    shutil.copyfile(tmp_path / "v1", f)
    f.chmod(0o4755)
    for v in (2, 3):
        soswap(["install", "--no-check", "--no-report", tmp_path / f"v{v}", f], state, check=0)
    soswap(["rollback"], state, check=0)
    assert f.read_text() == "v2\n" and stat.S_IMODE(f.stat().st_mode) == 0o4755
    soswap(["rollback"], state, check=0)
    assert f.read_text() == "v1\n" and stat.S_IMODE(f.stat().st_mode) == 0o4755
    assert all(not p.stat().st_mode & (stat.S_ISUID | stat.S_ISGID) for p in d.iterdir() if p.name != "f")
