"""The transaction engine: journal, commit in order, undo, cleanup (replace.md §4 "Journal for crash recovery").

States of a journal (``tx/TXID.json``)::

    staging   temp names planned, nothing committed     → recover: delete the temps
    prepared  every file staged and fsynced             → recover: undo (restore each backup) and delete temps
    committed every rename done, directories fsynced    → recover: finish the cleanup
    done      cleanup finished (terminal)
    undone    rolled back by recovery or after an error (terminal; nothing changed)
    failed    failed before any rename (terminal; nothing changed)

Undo is idempotent, so it is correct after a crash at any point of the commit: for each entry, if the
destination is no longer the old inode, the backup hard link (the old inode) is renamed over it; if it still is,
the backup link is just deleted; then any temp is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from soswap.errors import ReplaceError, SoswapError, StateError
from soswap.replace import syscalls
from soswap.replace.checks import describe_oserror
from soswap.replace.metadata import BLOCKING_FLAGS, strip_privileges
from soswap.replace.pause import pause_point
from soswap.replace.records import KIND_REMOVE, KIND_SYMLINK, Change
from soswap.replace.statedir import JOURNAL_VERSION, StateDir

STAGING = "staging"
PREPARED = "prepared"
COMMITTED = "committed"
DONE = "done"
UNDONE = "undone"
FAILED = "failed"
#: States recovery must act on.
PENDING = (STAGING, PREPARED, COMMITTED)


def now_iso() -> str:
    import time

    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


#: Descriptors a transaction needs besides one per directory it keeps open (the state lock, the journal,
#: the file being staged and its source, the interpreter's own).
_SPARE_DESCRIPTORS = 16


def descriptors_for(directories: int, *, refuse: bool = True) -> None:
    """A transaction keeps one descriptor per directory open from staging to the end (every step works
    relative to it): raise the soft RLIMIT_NOFILE as far as the hard limit allows, or refuse before anything
    is written. Running out half-way would leave a journal that the same limit stops recovery from
    resolving. ``refuse`` False (recovery): only raise the limit as far as it goes."""
    import resource

    need = directories + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return
        except (ValueError, OSError):
            pass
    if not refuse:
        return
    raise ReplaceError(f"the transaction spans {directories} directories and keeps each open: it needs about "
                       f"{need} file descriptors, and 'ulimit -n' allows {soft} (hard limit {hard}); raise it or "
                       "install in smaller transactions; nothing was changed")


class Dirs:
    """Directory file descriptors, opened once per transaction; every file operation is ``*at()`` on them."""

    def __init__(self) -> None:
        self._fds: Dict[str, int] = {}

    def get(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._fds[path] = fd
        return fd

    def sync(self, paths: Optional[Sequence[str]] = None) -> None:
        """fsync the directories (all of them by default): makes the renames durable (fsync(2))."""
        for p in paths if paths is not None else list(self._fds):
            os.fsync(self.get(p))

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def __enter__(self) -> Dirs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transaction:
    """A journaled transaction; ``record`` is the JSON object written to the state directory."""

    def __init__(self, state: StateDir, record: Dict[str, Any]) -> None:
        self.state = state
        self.record = record

    @classmethod
    def new(cls, state: StateDir, txid: str, kind: str, argv: Sequence[str], keep_backups: bool) -> Transaction:
        record: Dict[str, Any] = {
            "version": JOURNAL_VERSION,
            "txid": txid,
            "kind": kind,
            "state": STAGING,
            "started": now_iso(),
            "finished": None,
            "pid": os.getpid(),
            "argv": list(argv),
            "keep_backups": keep_backups,
            "backups_pruned": False,
            "rollback_of": None,
            "rolled_back_by": None,
            "dir_flags": [],
            "error": None,
            "entries": [],
        }
        return cls(state, record)

    @property
    def txid(self) -> str:
        return str(self.record["txid"])

    @property
    def changes(self) -> List[Change]:
        return [Change.from_json(e) for e in self.record["entries"]]

    def set_changes(self, changes: Sequence[Change]) -> None:
        self.record["entries"] = [c.to_json() for c in changes]

    def save(self, state: str, durable: bool = True) -> None:
        self.record["state"] = state
        if state in (DONE, UNDONE, FAILED):
            self.record["finished"] = now_iso()
        self.state.write(self.record, durable=durable)


# -- inode flags ---------------------------------------------------------------------------------------------


def _open_for_flags(dfd: int, name: str) -> Optional[int]:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return None
        raise


def change_flags(dfd: int, name: str, set_bits: int, clear_bits: int) -> None:
    """Set and clear inode flags on ``name`` (a regular file in ``dfd``; symlinks and missing names are skipped)."""
    fd = _open_for_flags(dfd, name)
    if fd is not None:
        _change_fd_flags(fd, set_bits, clear_bits)


def change_dir_flags(path: str, set_bits: int, clear_bits: int) -> None:
    """Set and clear inode flags on the directory ``path``."""
    _change_fd_flags(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), set_bits, clear_bits)


def _change_fd_flags(fd: int, set_bits: int, clear_bits: int) -> None:
    """Set and clear inode flags on ``fd`` (nothing when the filesystem has none), then close it."""
    try:
        flags = syscalls.get_flags(fd)
        if flags is None:
            return
        wanted = (flags | set_bits) & ~clear_bits
        if wanted != flags:
            syscalls.set_flags(fd, wanted)
    finally:
        os.close(fd)


# -- commit ----------------------------------------------------------------------------------------------------


def _lstat_at(dfd: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return None


def rename_noreplace(dfd: int, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` in ``dfd`` unless ``dst`` exists (renameat2 RENAME_NOREPLACE; where the
    filesystem lacks it, link + unlink, which fails with EEXIST just the same)."""
    try:
        syscalls.renameat2(dfd, src, dfd, dst, syscalls.RENAME_NOREPLACE)
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    os.link(src, dst, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
    os.unlink(src, dir_fd=dfd)


def commit_one(index: int, ch: Change, dfd: int, allow_no_backup: bool) -> Change:
    """Steps 7–9 of replace.md §(a) for one entry: clear +i/+a, backup link, re-check, rename, re-set flags.

    Returns the entry as committed (``backup`` None if the backup link could not be made and
    ``allow_no_backup``). Raises OSError/ReplaceError; the caller undoes the entries already committed.
    """
    name = ch.name
    if ch.flags and ch.kind != KIND_SYMLINK:
        change_flags(dfd, name, 0, BLOCKING_FLAGS)
    if ch.old is not None:
        if ch.kind != KIND_SYMLINK and ch.backup:
            try:
                os.link(name, ch.backup, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            except OSError as exc:
                existing = _lstat_at(dfd, ch.backup) if exc.errno == errno.EEXIST else None
                if existing is not None and ch.old.same_inode(existing):
                    pass  # already made (a resumed commit)
                elif exc.errno in (errno.EPERM, errno.EMLINK) and allow_no_backup:
                    ch = ch._replace(backup=None)
                else:
                    raise ReplaceError(describe_oserror(ch.dest, exc, "making the backup link")) from None
            else:
                made = _lstat_at(dfd, ch.backup)
                if made is None or not ch.old.same_inode(made):  # another writer's file: not ours to keep
                    os.unlink(ch.backup, dir_fd=dfd)
                    raise ReplaceError(f"{ch.dest}: changed while soswap was installing (another writer?); "
                                       "nothing was replaced")
        pause_point(f"backup:{index}")
        st = _lstat_at(dfd, name)
        if st is None or not ch.old.same_inode(st) or (
            stat.S_ISREG(st.st_mode) and (st.st_size != ch.old.size or st.st_mtime_ns != ch.old.mtime_ns)
        ):
            raise ReplaceError(f"{ch.dest}: changed while soswap was installing (another writer?); nothing "
                               "was replaced")
        pause_point(f"verified:{index}")
        if ch.kind == KIND_REMOVE:
            os.unlink(name, dir_fd=dfd)
        else:
            assert ch.temp is not None
            os.rename(ch.temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    else:
        assert ch.temp is not None
        rename_noreplace(dfd, ch.temp, name)
    pause_point(f"renamed:{index}")
    if ch.flags and ch.kind != KIND_REMOVE:
        change_flags(dfd, name, ch.flags, 0)
    pause_point(f"flags:{index}")
    return ch


def undo_one(ch: Change, dfd: int) -> Optional[str]:
    """Put the old version of one entry back (idempotent) and delete its temp. Returns a note when the entry
    could not be restored exactly (the destination is then left as found)."""
    name = ch.name
    note: Optional[str] = None
    dest_st = _lstat_at(dfd, name)
    if ch.flags and dest_st is not None and stat.S_ISREG(dest_st.st_mode):
        change_flags(dfd, name, 0, BLOCKING_FLAGS)
    if ch.old is not None:
        if ch.kind == KIND_SYMLINK:
            if dest_st is None or not ch.old.same_inode(dest_st):
                if ch.link_old is None:
                    note = f"{ch.dest}: old link target unknown; left as found"
                else:
                    _replace_symlink(dfd, name, ch.link_old, (ch.temp or f".{name}.undo") + ".undo")
        else:
            bst = _lstat_at(dfd, ch.backup) if ch.backup else None
            backed_up = bst is not None and ch.old.same_inode(bst)
            if dest_st is not None and ch.old.same_inode(dest_st):
                if backed_up:  # never replaced: drop the extra link
                    os.unlink(ch.backup, dir_fd=dfd)  # type: ignore[arg-type]
            elif dest_st is not None and (ch.new is None or not ch.new.same_inode(dest_st)):
                # neither the old file nor ours: another writer replaced it; theirs stays
                if backed_up:
                    os.unlink(ch.backup, dir_fd=dfd)  # type: ignore[arg-type]
                note = f"{ch.dest}: replaced by another writer meanwhile; left as found"
            elif backed_up:
                os.rename(ch.backup, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # type: ignore[arg-type]
            else:
                note = f"{ch.dest}: the backup of the old version is missing; the destination was left as found"
    else:
        if dest_st is not None and ch.new is not None and ch.new.same_inode(dest_st):
            os.unlink(name, dir_fd=dfd)
    remove_temp(ch, dfd)
    if ch.flags and ch.kind != KIND_SYMLINK:
        change_flags(dfd, name, ch.flags, 0)
    return note


def remove_temp(ch: Change, dfd: int) -> None:
    """Delete the staged name of ``ch`` if it is still there."""
    if ch.temp:
        try:
            os.unlink(ch.temp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError:
            # do_unlinkat refuses on a read-only mount before it looks the name up: EROFS for a name the
            # commit's rename already consumed
            if _lstat_at(dfd, ch.temp) is not None:
                raise


def _replace_symlink(dfd: int, name: str, target: str, temp: str) -> None:
    try:
        os.unlink(temp, dir_fd=dfd)
    except FileNotFoundError:
        pass
    os.symlink(target, temp, dir_fd=dfd)
    os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)


def drop_backup(ch: Change, dfd: int) -> None:
    """Delete the backup link of ``ch`` if it is still the old inode."""
    if not ch.backup or ch.old is None:
        return
    st = _lstat_at(dfd, ch.backup)
    if st is not None and ch.old.same_inode(st):
        os.unlink(ch.backup, dir_fd=dfd)


def commit_all(tx: Transaction, changes: Sequence[Change], dirs: Dirs) -> List[Change]:
    """Commit every entry in order, fsync the directories, write the committed mark.

    On any failure (an OSError, a concurrent change, SIGINT) the entries already committed are undone, temps
    removed, the journal marked ``undone`` and the error re-raised as :class:`ReplaceError`; if the undo itself
    fails the journal stays ``prepared`` for ``soswap recover``.
    """
    done: List[Change] = []
    single = len(changes) == 1
    try:
        for i, ch in enumerate(changes):
            try:
                done.append(commit_one(i, ch, dirs.get(ch.directory), allow_no_backup=single))
            except OSError as exc:
                raise ReplaceError(describe_oserror(ch.dest, exc, "rename")) from None
        try:
            dirs.sync(sorted({c.directory for c in changes}))
        except OSError as exc:
            raise ReplaceError(describe_oserror(changes[0].directory, exc, "fsync of the directory")) from None
        pause_point("dirs-synced")
        tx.set_changes(done)
        tx.save(COMMITTED)  # a failure to write the mark undoes the renames, like any other failure
    except BaseException as exc:
        tx.set_changes(done + list(changes[len(done):]))
        rollback_in_process(tx, changes, dirs, exc)
        raise
    pause_point("committed")
    return done


class AfterCommit(SoswapError):
    """The transaction committed (every file is its new version: for a rollback, its previous one) and its
    cleanup was interrupted or failed: the next ``soswap recover`` (or install) finishes it. Exit status 130
    for an interruption, else 2."""

    def __init__(self, txid: str, cause: BaseException, state: str = "committed", kind: str = "install") -> None:
        if isinstance(cause, KeyboardInterrupt):
            what = "interrupted"
            self.exit_code = 130
        else:
            what = f"its cleanup failed ({cause.strerror if isinstance(cause, OSError) and cause.strerror else cause})"
        if state == "done" and kind == "rollback":  # interrupted marking the transaction it rolled back
            super().__init__(f"transaction {txid} rolled back: every file is its previous version; {what} before "
                             "the rolled-back transaction was marked ('soswap recover' does it)")
            return
        if state == "done":  # interrupted in the pruning of older backups or the report: nothing is left to do
            super().__init__(f"transaction {txid} is installed: every file is its new version; {what} before "
                             "the report")
            return
        version = "previous" if kind == "rollback" else "new"
        super().__init__(f"transaction {txid} committed: every file is its {version} version; {what}; "
                         "'soswap recover' (or the next install) finishes the cleanup")

@contextlib.contextmanager
def after_commit(tx: Transaction) -> Iterator[None]:
    """Turn an interruption or a failure once the journal says ``committed`` into :class:`AfterCommit` (before
    it, the transaction was undone and the error stands as it is)."""
    try:
        yield
    except (KeyboardInterrupt, OSError, StateError) as exc:
        if tx.record.get("state") in (COMMITTED, DONE):
            raise AfterCommit(tx.txid, exc, kind=str(tx.record.get("kind") or "install")) from None
        raise


def rollback_in_process(tx: Transaction, changes: Sequence[Change], dirs: Dirs, exc: BaseException) -> None:
    """Undo every entry after a failure during commit (or staging); the journal ends ``undone``."""
    notes: List[str] = []
    try:
        for ch in reversed(changes):
            note = undo_one(ch, dirs.get(ch.directory))
            if note:
                notes.append(note)
        dirs.sync(sorted({c.directory for c in changes}))
    except OSError as undo_exc:
        raise ReplaceError(
            f"{exc}; undoing it failed too ({describe_oserror(undo_exc.filename or '', undo_exc, 'undo')}): "
            f"run 'soswap recover' (transaction {tx.txid})"
        ) from None
    tx.record["error"] = str(exc) or type(exc).__name__
    if notes:
        tx.record["error"] += " (undo: " + "; ".join(notes) + ")"
        if isinstance(exc, ReplaceError):
            exc.args = (f"{exc} (undo: {'; '.join(notes)})",)
    restore_dir_flags(tx)
    try:
        tx.save(UNDONE)
    except StateError as save_exc:
        # Every file is back to its old version; the journal still says "prepared", and recovery (which
        # undoes again, idempotently) will settle it.
        raise ReplaceError(f"{exc}; the old versions were restored, but the journal could not be updated "
                           f"({save_exc}): run 'soswap recover'") from None


def restore_dir_flags(tx: Transaction) -> None:
    """Re-set the +i/+a flags cleared on directories with --force-immutable."""
    for item in tx.record.get("dir_flags") or ():
        try:
            change_dir_flags(str(item["dir"]), int(item["flags"]), 0)
        except OSError:
            pass


def finish(tx: Transaction, changes: Sequence[Change], dirs: Dirs) -> List[Tuple[str, str]]:
    """The cleanup after the committed mark: drop backups unless kept, remove leftovers, mark ``done``.
    Returns warnings (path, message): the old inode of a set-ID or capability file that could not be
    stripped."""
    keep = bool(tx.record.get("keep_backups"))
    warnings: List[Tuple[str, str]] = []
    for ch in changes:
        dfd = dirs.get(ch.directory)
        remove_temp(ch, dfd)
        if ch.privileges is not None and ch.backup and ch.old is not None:
            # before the link is dropped too: another hard link to the old inode must not stay privileged
            try:
                strip_privileges(dfd, ch.backup, ch.old.dev, ch.old.ino)
            except OSError as exc:  # the rollback restores the recorded privileges either way
                warnings.append((ch.dest, f"the replaced version keeps its set-ID bits or capabilities "
                                 f"({exc.strerror or exc}): remove {os.path.join(ch.directory, ch.backup)} and "
                                 "its other hard links, or strip them by hand"))
        if not keep:
            drop_backup(ch, dfd)
    restore_dir_flags(tx)
    pause_point("cleaned")
    tx.save(DONE, durable=False)
    return warnings
