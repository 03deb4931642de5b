"""Recovery of interrupted transactions, rollback of committed ones, history, and backup retention.

Retention: a transaction's backups (hard links ``.NAME.bak-TXID`` next to each replaced file: the old inode,
no copy) are kept for the ``keep`` most recent transactions (default 3); older ones are deleted at the end of
the next install. ``--no-backup`` deletes them as soon as the transaction has committed (it is then not
possible to roll it back). Rolling back consumes the backups of the transaction rolled back; the rollback
itself keeps backups of what it replaced, so it can be rolled back in turn.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from soswap.errors import Refused, ReplaceError, StateError, UsageError
from soswap.replace import naming, syscalls
from soswap.replace.checks import describe_oserror, directory_flags, flag_names
from soswap.replace.metadata import privileges_of, snapshot
from soswap.replace.pause import pause_point
from soswap.replace.records import (
    KIND_FILE,
    KIND_REMOVE,
    KIND_SYMLINK,
    Change,
    HistoryEntry,
    InodeRecord,
    InstallResult,
    Notice,
    RecoverOutcome,
    superseded_files,
)
from soswap.replace.staging import stage_file, stage_link, stage_symlink
from soswap.replace.statedir import DEFAULT_LOCK_TIMEOUT, LostJournal, StateDir
from soswap.replace.transaction import (
    COMMITTED,
    DONE,
    FAILED,
    PENDING,
    PREPARED,
    STAGING,
    UNDONE,
    AfterCommit,
    Dirs,
    Transaction,
    after_commit,
    commit_all,
    descriptors_for,
    drop_backup,
    finish,
    remove_temp,
    restore_dir_flags,
    undo_one,
)


def _changes(record: Dict[str, Any], path: str) -> List[Change]:
    try:
        return [Change.from_json(e) for e in record["entries"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"{path}: malformed journal entry ({exc}); move it aside to continue") from None


def pending_txids(state: StateDir) -> List[str]:
    """Transactions an interrupted soswap left behind (without taking the lock; for dry runs). Reads every
    live journal and the entries of the pending ones as the recovery at the start of an install or rollback
    does, so a dry run fails with the StateError the real run would (an unreadable or malformed journal)."""
    if not state.exists():
        return []
    pending = [r for r in state.live_records() if r["state"] in PENDING]
    for record in pending:
        _changes(record, state.journal_path(record["txid"]))
    return [r["txid"] for r in pending]


def recover(state: StateDir, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, *,
            skip_missing: bool = False) -> List[RecoverOutcome]:
    """Finish or undo every interrupted transaction (``soswap recover``). A directory of a transaction that
    is gone stops it (the journal is kept: a filesystem not mounted yet would come back half done), unless
    ``skip_missing`` (it was deleted for good: nothing to restore there)."""
    if not state.exists():
        return []
    state.lock(lock_timeout)
    try:
        return recover_locked(state, skip_missing=skip_missing)
    finally:
        state.unlock()


def recover_locked(state: StateDir, *, skip_missing: bool = False) -> List[RecoverOutcome]:
    """:func:`recover` for a caller that holds the lock (install runs it first)."""
    out = []
    for record in state.live_records():
        if record["state"] in PENDING:
            out.append(_recover_one(state, record, skip_missing))
        if record["state"] == DONE and record.get("kind") == "rollback":
            _finish_rollback_of(state, record)  # a rollback killed between its commit and this last step
    return out


def _recover_one(state: StateDir, record: Dict[str, Any], skip_missing: bool) -> RecoverOutcome:
    tx = Transaction(state, record)
    found = record["state"]
    changes = _changes(record, state.journal_path(tx.txid))
    notes: List[str] = []
    failed: List[str] = []
    descriptors_for(len({c.directory for c in changes}), refuse=False)
    with Dirs() as dirs:
        gone = sorted({c.directory for c in changes if _dir_fd(dirs, c, []) is None})
        if gone and not skip_missing:
            raise StateError(
                f"transaction {tx.txid}: {', '.join(gone)}: directory is gone (a filesystem not mounted?); "
                "nothing was done and the journal is kept: mount it and run 'soswap recover' again, or "
                "'soswap recover --skip-missing' if it was deleted for good")
        # an empty mount point where the transaction's filesystem is not mounted yet: acting there would mark
        # the transaction resolved and leave its files half done once the filesystem is back
        elsewhere = sorted({c.directory for c in changes if c.directory not in gone
                            and not _is_its_directory(dirs.get(c.directory), c)})
        if elsewhere and not skip_missing:
            raise StateError(
                f"transaction {tx.txid}: {', '.join(elsewhere)}: holds none of the transaction's files, or is on "
                "another filesystem than they were (a filesystem not mounted?); nothing was done and the journal "
                "is kept: mount it and run 'soswap recover' again, or 'soswap recover --skip-missing' if its "
                "files were deleted for good")
        for directory in elsewhere:
            notes.append(f"{directory}: not the directory the transaction wrote in; nothing to restore there")
        changes = [c for c in changes if c.directory not in elsewhere]
        warnings: Tuple[Notice, ...] = ()
        if found == COMMITTED:
            usable = [c for c in changes if _dir_fd(dirs, c, notes) is not None]
            try:
                warnings = tuple(Notice(path, message) for path, message in finish(tx, usable, dirs))
            except OSError as exc:
                raise StateError(f"transaction {tx.txid} committed (every file is its new version); "
                                 f"{describe_oserror(str(exc.filename or '?'), exc, 'its cleanup')}: fix the cause "
                                 "and run 'soswap recover'") from None
            action = "completed"
        else:
            for ch in reversed(changes):
                dfd = _dir_fd(dirs, ch, notes)
                if dfd is None:
                    continue
                try:
                    note = undo_one(ch, dfd)
                except OSError as exc:
                    failed.append(f"{ch.dest}: {exc.strerror or exc}")
                    continue
                if note:
                    notes.append(note)
            try:
                dirs.sync()
            except OSError as exc:
                failed.append(f"fsync of a directory: {exc.strerror or exc}")
            if failed:
                raise StateError(f"transaction {tx.txid}: could not undo " + "; ".join(failed)
                                 + " (the journal is kept: fix the cause and run 'soswap recover' again)")
            restore_dir_flags(tx)
            record["recovered"] = True
            tx.save(UNDONE)
            action = "cleaned" if found == STAGING else "undone"
    return RecoverOutcome(tx.txid, found, action, tuple(c.dest for c in changes), tuple(notes), warnings)


def recovery_warnings(outcomes: Sequence[RecoverOutcome]) -> Tuple[Notice, ...]:
    """The warnings of the transactions an install or rollback recovered first (see :class:`RecoverOutcome`)."""
    return tuple(w for o in outcomes for w in o.warnings)


def _is_its_directory(dfd: int, ch: Change) -> bool:
    """Can the directory ``dfd`` be the one ``ch`` was made in? It is on the device the journal recorded for
    the file (or holds its backup itself: the same filesystem numbered anew), and holds the file, its backup
    or its temporary file. An empty mount point holds none of them."""
    rec = ch.old or ch.new
    if rec is None:
        return True
    if os.fstat(dfd).st_dev != rec.dev and not (ch.old is not None and _renumbered(dfd, ch)):
        return False
    return _holds_any(dfd, (os.path.basename(ch.dest), ch.backup, ch.temp))


def _dir_fd(dirs: Dirs, ch: Change, notes: List[str]) -> Optional[int]:
    try:
        return dirs.get(ch.directory)
    except FileNotFoundError:
        notes.append(f"{ch.directory}: directory is gone; nothing to restore there")
        return None
    except OSError as exc:
        raise StateError(f"{ch.directory}: cannot open: {exc.strerror}") from None


# -- retention -------------------------------------------------------------------------------------------------


def _has_backups(record: Dict[str, Any]) -> bool:
    """A transaction that holds backups: committed, kept them, and replaced at least one file (one that only
    created files holds none, and does not take a place in the retention count)."""
    return (record["state"] == DONE and bool(record.get("keep_backups")) and not record.get("backups_pruned")
            and not record.get("rolled_back_by")
            and any(isinstance(c, dict) and c.get("backup") and c.get("old") for c in record.get("entries") or ()))


def prune(state: StateDir, keep: int) -> List[str]:
    """Delete the backups of all but the ``keep`` most recent transactions that still have them; returns the
    txids pruned. A backup is deleted only if it is still the inode the journal recorded."""
    with_backups = [r for r in state.live_records() if _has_backups(r)]
    victims = with_backups[: max(0, len(with_backups) - max(keep, 0))]
    pruned = []
    for record in victims:
        if _drop_backups(state, record):
            pruned.append(record["txid"])
    return pruned


def _drop_backups(state: StateDir, record: Dict[str, Any]) -> bool:
    """Delete the backups of ``record``; True (and the journal says so) when none is left. A backup that
    cannot be deleted (an immutable or append-only directory, EIO) keeps the record as it was: the next
    pruning tries again, and nothing claims the space was freed. So does a directory that may not be the one
    the transaction wrote in (its filesystem not mounted: the backup is there again once it is): one that is
    gone, on another device than the file it held (unless it holds the backup itself: the same filesystem
    numbered anew), or where both the backup and the file are missing."""
    tx = Transaction(state, record)
    left = False
    with Dirs() as dirs:
        for ch in _changes(record, state.journal_path(tx.txid)):
            try:
                dfd = dirs.get(ch.directory)
                moved = ch.old is not None and os.fstat(dfd).st_dev != ch.old.dev
                renumbered = moved and _renumbered(dfd, ch)
                if ch.old is not None and not renumbered and (moved or not _holds_its_files(dfd, ch)):
                    left = True
                    continue
            except OSError:
                left = True
                continue
            try:
                if renumbered:
                    os.unlink(ch.backup, dir_fd=dfd)  # type: ignore[arg-type]
                else:
                    drop_backup(ch, dfd)
            except FileNotFoundError:
                continue
            except PermissionError:
                left = left or not _drop_flagged_link(ch, dfd)
            except OSError:
                left = True
    if left:
        return False
    record["backups_pruned"] = True
    tx.save(record["state"], durable=False)
    return True


def _drop_flagged_link(ch: Change, dfd: int) -> bool:
    """Delete ``ch``'s backup link whose inode is immutable or append-only (a rolled-back ``--force-immutable``
    install: that inode is in place again, flagged): the flag is cleared for the unlink and set again. True
    when the link is gone."""
    if not ch.backup or ch.old is None:
        return False
    try:
        fd = os.open(ch.backup, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        flags = syscalls.get_flags(fd)
        bits = (flags or 0) & (syscalls.FS_IMMUTABLE_FL | syscalls.FS_APPEND_FL)
        if not bits or not ch.old.same_inode(st):
            return False
        syscalls.set_flags(fd, flags & ~bits)  # type: ignore[operator]
        try:
            os.unlink(ch.backup, dir_fd=dfd)
        finally:
            syscalls.set_flags(fd, flags)  # type: ignore[arg-type]
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _holds_its_files(dfd: int, ch: Change) -> bool:
    """Does the directory ``dfd`` (on the old file's device) hold ``ch``'s backup or its file? An empty mount
    point holds neither."""
    return _holds_any(dfd, (ch.backup, os.path.basename(ch.dest)))


def _holds_any(dfd: int, names: Sequence[Optional[str]]) -> bool:
    """Does the directory ``dfd`` hold one of ``names`` (None and empty names left out)?"""
    for name in names:
        if not name:
            continue
        try:
            os.lstat(name, dir_fd=dfd)
            return True
        except FileNotFoundError:
            continue
    return False


def _renumbered(dfd: int, ch: Change) -> bool:
    """The directory is on another device number than the old file was, and holds ``ch``'s backup itself, by the
    inode number, size and mtime of the old version: the same filesystem, numbered anew (a loop or device-mapper
    device after a reboot, an NFS mount made again)."""
    assert ch.old is not None
    if not ch.backup:
        return False
    try:
        st = os.lstat(ch.backup, dir_fd=dfd)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_ino, st.st_size, st.st_mtime_ns) == (
        ch.old.ino, ch.old.size, ch.old.mtime_ns)


# -- rollback --------------------------------------------------------------------------------------------------


def _latest_rollbackable(state: StateDir) -> Dict[str, Any]:
    for txid in state.txids_newest_first():
        record = state.read(txid)
        if record["state"] == DONE and record["kind"] == "install" and not record.get("rolled_back_by"):
            return record  # the most recent install, even if it kept no backups (then the rollback refuses)
    raise UsageError(f"no committed transaction to roll back in {state.path}")


def _rollback_changes(record: Dict[str, Any], path: str, txid: str,
                      state: Optional[StateDir] = None) -> List[Change]:
    """Check that ``record`` can be rolled back and build the entries of the rollback transaction ``txid``.

    Entries are in reverse commit order (programs before the libraries they need are restored)."""
    if record["state"] != DONE:
        raise Refused(f"transaction {record['txid']} is {record['state']}, not committed; nothing to roll back")
    if record.get("rolled_back_by"):
        raise Refused(f"transaction {record['txid']} was already rolled back by {record['rolled_back_by']}")
    if not record.get("keep_backups"):
        raise Refused(f"transaction {record['txid']} kept no backups (--no-backup); it cannot be rolled back")
    if record.get("backups_pruned"):
        raise Refused(f"the backups of transaction {record['txid']} were pruned (only the most recent "
                      "transactions keep theirs); it cannot be rolled back")
    problems: List[str] = []
    out: List[Change] = []
    problems.extend(_blocked_directories(_changes(record, path)))
    for ch in reversed(_changes(record, path)):
        try:
            cur: Optional[os.stat_result] = os.lstat(ch.dest)
        except FileNotFoundError:
            cur = None
        except OSError as exc:
            problems.append(f"{ch.dest}: {exc.strerror}")
            continue
        link_now = ch.new
        if ch.kind == KIND_SYMLINK and ch.new is not None and cur is not None and stat.S_ISLNK(cur.st_mode):
            # a link is what it says: re-created with the same target (ldconfig does that) it is unchanged
            try:
                if os.readlink(ch.dest) == ch.link_new:
                    link_now = InodeRecord.of(cur, None)
            except OSError:
                pass
        if (ch.new is not None and cur is not None and not ch.new.same_inode(cur) and ch.kind != KIND_SYMLINK
                and state is not None):
            link_now = _restored_copy(state, record["txid"], ch, cur) or ch.new
        if ch.new is not None and (cur is None or not (link_now or ch.new).same_inode(cur)):
            problems.append(f"{ch.dest} changed since transaction {record['txid']}")
            continue
        if (link_now is not None and cur is not None and ch.kind != KIND_SYMLINK and stat.S_ISREG(cur.st_mode)
                and (cur.st_size != link_now.size or cur.st_mtime_ns != link_now.mtime_ns)):
            # the same inode, written since (the commit would catch it as a concurrent change: refuse here)
            problems.append(f"{ch.dest} changed since transaction {record['txid']} (written in place)")
            continue
        if ch.new is None and cur is not None:
            problems.append(f"{ch.dest} exists again since transaction {record['txid']} removed it")
            continue
        if ch.old is not None and ch.kind != KIND_SYMLINK:
            bpath = os.path.join(ch.directory, ch.backup) if ch.backup else None
            try:
                bst = os.lstat(bpath) if bpath else None
            except OSError:
                bst = None
            if bst is None or not ch.old.same_inode(bst):
                problems.append(f"{ch.dest}: the backup of the previous version is missing")
                continue
        name = ch.name
        temp = naming.temp_name(name, txid)
        backup = naming.backup_name(name, txid)
        if ch.kind == KIND_SYMLINK:
            if ch.old is None:  # the link was created: remove it
                out.append(Change(KIND_REMOVE, ch.dest, None, backup, requested=ch.dest, old=link_now,
                                  link_old=ch.link_new))
            else:
                out.append(Change(KIND_SYMLINK, ch.dest, temp, None, requested=ch.dest, old=link_now,
                                  link_old=ch.link_new, link_new=ch.link_old))
        elif ch.old is None:  # the file was created: remove it
            out.append(Change(KIND_REMOVE, ch.dest, None, backup, requested=ch.requested, old=link_now,
                              flags=ch.flags))
        else:  # put the backup back (for a KIND_REMOVE entry: re-create the file)
            out.append(Change(KIND_FILE, ch.dest, temp, backup if ch.new is not None else None,
                              source=os.path.join(ch.directory, ch.backup or ""), requested=ch.requested,
                              old=link_now, new=ch.old, flags=ch.flags, restore=ch.privileges,
                              privileges=privileges_of(ch.dest, cur) if cur is not None else None))
    if problems:
        raise Refused(f"cannot roll back transaction {record['txid']}: " + "; ".join(problems)
                      + "; nothing was changed")
    return out


def _restored_copy(state: StateDir, txid: str, ch: Change, cur: os.stat_result) -> Optional[InodeRecord]:
    """The record of ``cur`` when it is the privileged copy a later rollback made of the version transaction
    ``txid`` installed at ``ch.dest`` (a set-ID or capability file comes back as a copy, never as its old
    inode: :func:`_stage_restored_copy`): for a second rollback it is that version, unchanged."""
    assert ch.new is not None
    for other in state.txids_newest_first():
        if other == txid:
            break
        try:
            rb = state.read(other)
        except StateError:
            continue
        if rb.get("kind") != "rollback" or rb.get("state") != DONE or not rb.get("rollback_of"):
            continue
        try:
            undone = state.read(rb["rollback_of"])
            rb_changes = _changes(rb, state.journal_path(other))
            undone_changes = _changes(undone, state.journal_path(undone["txid"]))
        except StateError:
            continue
        mine = next((c for c in rb_changes if c.dest == ch.dest and c.new is not None and c.new.same_inode(cur)),
                    None)
        if mine is None:
            continue
        # the rollback put back what the undone transaction replaced: the version ``txid`` installed
        if any(c.dest == ch.dest and c.old is not None and (c.old.dev, c.old.ino) == (ch.new.dev, ch.new.ino)
               for c in undone_changes):
            return mine.new
    return None


def rollback(state: StateDir, txid: Optional[str] = None, dry_run: bool = False, keep_backups: bool = True,
             argv: Sequence[str] = (), lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> InstallResult:
    """Restore the versions a committed transaction replaced (``soswap rollback [TXID]``), as a new
    transaction of kind ``rollback`` that is itself journaled, recoverable and kept for rollback."""
    if not state.exists():
        raise UsageError(f"no transactions in {state.path}")
    if dry_run:  # the recovery the real rollback runs first reads every live journal: so does this
        notices = tuple(Notice(state.path, f"interrupted transaction {t} would be recovered first")
                        for t in pending_txids(state))
        record = state.read(txid) if txid else _latest_rollbackable(state)
        changes = _rollback_changes(record, state.journal_path(record["txid"]), "dry-run", state)
        planned = tuple(c._replace(temp=None, backup=None) for c in changes)
        return InstallResult(None, "dry-run", planned, notices, rollback_of=record["txid"])
    state.lock(lock_timeout)
    try:
        recovered = state.recovered = tuple(recover_locked(state))
        record = state.read(txid) if txid else _latest_rollbackable(state)
        target_txid = record["txid"]
        new_txid = naming.new_txid()
        while not state.claim(new_txid):
            new_txid = naming.new_txid()
        changes = _rollback_changes(record, state.journal_path(target_txid), new_txid, state)
        descriptors_for(len({c.directory for c in changes}))
        tx = Transaction.new(state, new_txid, "rollback", argv, keep_backups=keep_backups)
        tx.record["rollback_of"] = target_txid
        tx.set_changes(changes)
        tx.save(STAGING)
        with Dirs() as dirs:
            staged: List[Change] = []
            try:
                for ch in changes:
                    dfd = dirs.get(ch.directory)
                    if ch.kind == KIND_SYMLINK:
                        assert ch.temp is not None and ch.link_new is not None
                        staged.append(ch._replace(new=stage_symlink(dfd, ch.dest, ch.temp, ch.link_new),
                                                  method="symlink"))
                    elif ch.kind == KIND_FILE:
                        assert ch.temp is not None and ch.new is not None and ch.source is not None
                        if ch.restore is not None:  # a privileged file: a copy, its old inode stays disarmed
                            staged.append(_stage_restored_copy(dfd, ch))
                        else:
                            new = stage_link(dfd, ch.dest, os.path.basename(ch.source), ch.temp, ch.new)
                            staged.append(ch._replace(new=new, method="link"))
                    else:
                        staged.append(ch)
                tx.set_changes(staged)
                tx.save(PREPARED)
                pause_point("journal-prepared")  # a SIGTERM here still cleans up like one while staging
            except BaseException as exc:
                for ch in changes:
                    try:
                        remove_temp(ch, dirs.get(ch.directory))
                    except OSError:
                        pass
                tx.record["error"] = str(exc)
                tx.save(FAILED)
                raise
            with after_commit(tx):  # past the committed mark, the previous versions are back: said so
                committed = commit_all(tx, staged, dirs)
                stripped = finish(tx, committed, dirs)
        # the version rolled back (often a bad one) that keeps its set-ID bits: said as install says it
        warnings = recovery_warnings(recovered) + tuple(Notice(path, message) for path, message in stripped)
        try:
            _finish_rollback_of(state, tx.record)
        except KeyboardInterrupt:
            raise AfterCommit(new_txid, KeyboardInterrupt(), "done", kind="rollback") from None
        except (OSError, StateError) as exc:  # recovery (and every install) runs this last step again
            warnings += (Notice(state.path, f"every file is its previous version, but transaction {target_txid} could "
                               f"not be marked rolled back ({exc}): 'soswap recover' does it"),)
    finally:
        state.unlock()
    return InstallResult(new_txid, "rolled-back", tuple(committed), warnings, recovered, backups_kept=keep_backups,
                         rollback_of=target_txid)


def _blocked_directories(changes: Sequence[Change]) -> List[str]:
    """The directories of ``changes`` that are immutable or append-only (``chattr +i``/``+a``): a rollback
    cannot rename in them (an install with --force-immutable cleared and re-set the flag), and its undo could
    not either. Refused up front, nothing changed."""
    out = []
    for directory in sorted({c.directory for c in changes}):
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # the entries' own checks say what is wrong
        try:
            flags = directory_flags(fd)
        finally:
            os.close(fd)
        if flags:
            out.append(f"{directory}: is {flag_names(flags)}; clear the flag (chattr -i/-a) to roll back, and set "
                       "it again afterwards")
    return out


def _stage_restored_copy(dfd: int, ch: Change) -> Change:
    """Stage a copy of the backup of a file that was set-ID or had file capabilities, with the permission bits
    and capabilities the journal recorded (the install's cleanup stripped them from the old inode). The old
    inode itself is never made privileged again: an undone or interrupted rollback, or a hard link someone
    keeps to it, cannot leave the vulnerable version privileged."""
    assert ch.temp is not None and ch.new is not None and ch.source is not None and ch.restore is not None
    try:
        st = os.lstat(ch.source)
        if not ch.new.same_inode(st) or not stat.S_ISREG(st.st_mode):
            raise ReplaceError(f"{ch.dest}: the backup {ch.source} is not the version recorded in the journal; "
                               "nothing was changed")
        fd = os.open(ch.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            md = snapshot(fd, os.fstat(fd))
        finally:
            os.close(fd)
        old_st: Optional[os.stat_result] = os.lstat(ch.dest)
    except FileNotFoundError:
        old_st = None
    except OSError as exc:
        raise ReplaceError(describe_oserror(ch.dest, exc, f"reading the backup {ch.source}")) from None
    mode, cap = ch.restore
    md = md._replace(mode=mode, capability=bytes.fromhex(cap) if cap is not None else None)
    sf = stage_file(dfd, ch.dest, ch.temp, ch.source, st, old_st, md, True, False)
    return ch._replace(new=sf.new._replace(sha256=ch.new.sha256), method=sf.method)


def _finish_rollback_of(state: StateDir, rollback: Dict[str, Any]) -> None:
    """The last step of a committed rollback: the transaction it rolled back is marked ``rolled_back_by`` and
    its backups (now in place again, or superseded) are deleted. Idempotent: recovery runs it again for a
    rollback that was killed after its commit."""
    target = rollback.get("rollback_of")
    if not isinstance(target, str):
        return
    try:
        record = state.read(target)
    except StateError:
        return  # already moved away or removed: nothing left to mark
    if record.get("rolled_back_by"):
        return
    record["rolled_back_by"] = rollback["txid"]
    if not _drop_backups(state, record):
        # a backup that cannot go (the +i inode a --force-immutable install kept is in place again) still
        # leaves the transaction rolled back: the mark is saved either way
        Transaction(state, record).save(record["state"], durable=False)


# -- history ---------------------------------------------------------------------------------------------------


def history(state: StateDir) -> List[HistoryEntry]:
    """Every transaction, oldest first."""
    if not state.exists():
        return []
    out = []
    for record in state.records():
        changes = _changes(record, state.journal_path(record["txid"]))
        if record["state"] != DONE or not record.get("keep_backups"):  # only a finished one can be rolled back
            backups = "none"
        elif record.get("backups_pruned") or record.get("rolled_back_by"):
            backups = "pruned"
        else:
            backups = "kept"
        out.append(HistoryEntry(
            txid=record["txid"],
            kind=record["kind"],
            state=record["state"],
            started=str(record.get("started") or ""),
            finished=record.get("finished"),
            changes=tuple(changes),
            backups=backups,
            rollback_of=record.get("rollback_of"),
            rolled_back_by=record.get("rolled_back_by"),
            argv=tuple(str(a) for a in record.get("argv") or ()),
        ))
    return out


def describe_state(state: str) -> str:
    """A short human description of a journal state."""
    return {
        STAGING: "interrupted while staging",
        PREPARED: "interrupted during commit",
        COMMITTED: "committed, cleanup pending",
        DONE: "committed",
        UNDONE: "undone (nothing changed)",
        FAILED: "failed (nothing changed)",
    }.get(state, state)



def known_hashes(state: StateDir) -> Dict[Tuple[int, int, int, int], str]:
    """SHA-256 of the files the live transactions installed, keyed by (dev, ino, size, mtime_ns): replacing
    such a file again needs no second read of it to journal its hash."""
    out: Dict[Tuple[int, int, int, int], str] = {}
    for record in state.live_records():
        if record["state"] != DONE:
            continue
        for ch in _changes(record, state.journal_path(record["txid"])):
            if ch.new is not None and ch.new.sha256:
                out[(ch.new.dev, ch.new.ino, ch.new.size, ch.new.mtime_ns)] = ch.new.sha256
    return out


# -- facts for the stale engine --------------------------------------------------------------------------------


def journal_facts(state: StateDir, last: int = 1000) -> Tuple[FrozenSet[Tuple[int, int]],
                                                              Dict[Tuple[int, int], InodeRecord]]:
    """From the ``last`` transactions: the (st_dev, st_ino) of every old inode a transaction replaced or
    removed (renamed-away and hard-linked old versions included), and the record of every file it installed,
    keyed by (st_dev, st_ino) — what ``soswap.proc.JournalView`` takes."""
    replaced: Set[Tuple[int, int]] = set()
    installed: Dict[Tuple[int, int], InodeRecord] = {}
    if not state.exists():
        return frozenset(), installed
    for txid in reversed(state.txids_newest_first()[:last]):
        try:
            record = state.read(txid)
        except LostJournal:
            continue  # a history line a crash emptied: its facts are lost with it
        if record["state"] not in (DONE, COMMITTED):
            continue
        changes = _changes(record, state.journal_path(txid))
        # the file a flipped soname link led to is a replaced version while the link leads elsewhere
        replaced.update((rec.dev, rec.ino) for _path, rec in superseded_files(changes))
        for ch in changes:
            if ch.kind == KIND_SYMLINK:
                continue
            if ch.old is not None:
                replaced.add((ch.old.dev, ch.old.ino))
                installed.pop((ch.old.dev, ch.old.ino), None)
            if ch.new is not None:
                installed[(ch.new.dev, ch.new.ino)] = ch.new
                # a rollback puts an old inode back: current again, not a replaced version
                replaced.discard((ch.new.dev, ch.new.ino))
    return frozenset(replaced), installed
