"""Values the replace engine returns and journals: inode records, planned changes, results."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from soswap.tuples import NamedTuple


class InodeRecord(NamedTuple):
    """One version of a file, as the journal records it (the stale engine matches processes against these)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    sha256: Optional[str] = None

    @classmethod
    def of(cls, st: os.stat_result, sha256: Optional[str] = None) -> InodeRecord:
        """The record of a stat result (``sha256`` of the content when it was computed)."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256)

    def same_inode(self, st: os.stat_result) -> bool:
        """True when ``st`` is this inode (device and inode number; content is not compared)."""
        return st.st_dev == self.dev and st.st_ino == self.ino

    def to_json(self) -> Dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "size": self.size, "mtime_ns": self.mtime_ns,
                "sha256": self.sha256}

    @classmethod
    def from_json(cls, obj: Any) -> Optional[InodeRecord]:
        if obj is None:
            return None
        return cls(int(obj["dev"]), int(obj["ino"]), int(obj["size"]), int(obj["mtime_ns"]), obj.get("sha256"))


#: Kinds of change in a transaction.
KIND_FILE = "file"  # a regular file put at dest (new or replacing)
KIND_SYMLINK = "symlink"  # a symbolic link put at dest (soname link flip)
KIND_REMOVE = "remove"  # dest removed (rolling back the creation of a file)


class Change(NamedTuple):
    """One entry of a transaction: what is put at ``dest`` and what was there.

    ``temp`` and ``backup`` are names in the directory of ``dest``. ``old``/``new`` are None when there was no
    file before / there is none after. ``flags`` are the inode flags (``+i``/``+a``) to re-set on ``dest``
    after the rename, when ``--force-immutable`` cleared them. ``privileges`` are the old file's permission
    bits and ``security.capability`` (hex) when it was set-user/group-ID or had file capabilities: its backup
    is stripped of them once the transaction is committed, as dpkg does to a replaced set-ID file (a hard link
    to the old, vulnerable version must not stay privileged). ``restore`` are the privileges a rollback gives
    back to the backup it puts in place.
    """

    kind: str
    dest: str
    temp: Optional[str]
    backup: Optional[str]
    source: Optional[str] = None
    requested: Optional[str] = None
    old: Optional[InodeRecord] = None
    new: Optional[InodeRecord] = None
    flags: int = 0
    link_old: Optional[str] = None
    link_new: Optional[str] = None
    method: Optional[str] = None
    privileges: Optional[Tuple[int, Optional[str]]] = None
    restore: Optional[Tuple[int, Optional[str]]] = None

    @property
    def directory(self) -> str:
        return os.path.dirname(self.dest) or "."

    @property
    def name(self) -> str:
        return os.path.basename(self.dest)

    def to_json(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "dest": self.dest,
            "requested": self.requested,
            "source": self.source,
            "temp": self.temp,
            "backup": self.backup,
            "old": self.old.to_json() if self.old else None,
            "new": self.new.to_json() if self.new else None,
            "flags": self.flags,
            "link_old": self.link_old,
            "link_new": self.link_new,
            "method": self.method,
            "privileges": _privileges_json(self.privileges),
            "restore": _privileges_json(self.restore),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Change:
        return cls(
            kind=str(obj["kind"]),
            dest=str(obj["dest"]),
            temp=obj.get("temp"),
            backup=obj.get("backup"),
            source=obj.get("source"),
            requested=obj.get("requested"),
            old=InodeRecord.from_json(obj.get("old")),
            new=InodeRecord.from_json(obj.get("new")),
            flags=int(obj.get("flags") or 0),
            link_old=obj.get("link_old"),
            link_new=obj.get("link_new"),
            method=obj.get("method"),
            privileges=_privileges_from_json(obj.get("privileges")),
            restore=_privileges_from_json(obj.get("restore")),
        )


def _privileges_json(p: Optional[Tuple[int, Optional[str]]]) -> Optional[Dict[str, Any]]:
    return None if p is None else {"mode": p[0], "capability": p[1]}


def _privileges_from_json(obj: Any) -> Optional[Tuple[int, Optional[str]]]:
    if obj is None:
        return None
    cap = obj.get("capability")
    if cap is not None:
        bytes.fromhex(cap)  # ValueError: a malformed journal entry
    return int(obj["mode"]) & 0o7777, cap


class Notice(NamedTuple):
    """A non-fatal finding (other hard links, a soname link left alone...). ``path`` is the file concerned."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RecoverOutcome(NamedTuple):
    """How one interrupted transaction was resolved: ``undone`` (every file is its old version again),
    ``completed`` (it had committed; the cleanup was finished) or ``cleaned`` (it never changed anything;
    its temporary files were removed). ``notes`` lists anything unusual, per file."""

    txid: str
    state_found: str
    action: str
    files: Tuple[str, ...]
    notes: Tuple[str, ...] = ()
    #: what the cleanup of a committed transaction could not do that matters: a replaced set-ID or capability
    #: version that keeps its privileges
    warnings: Tuple[Notice, ...] = ()


class InstallResult(NamedTuple):
    """What ``install`` did (or, with ``dry_run``, would do).

    ``status``: ``installed``, ``dry-run`` or ``refused`` (the preflight found problems; nothing changed).
    ``changes`` are in commit order. ``recovered`` lists the interrupted transactions resolved first.
    ``problems`` are the preflight's findings; ``after`` is whatever the stale-report hook returned.
    """

    txid: Optional[str]
    status: str
    changes: Tuple[Change, ...]
    warnings: Tuple[Notice, ...]
    recovered: Tuple[RecoverOutcome, ...] = ()
    problems: Tuple[Any, ...] = ()
    after: Any = None
    backups_kept: bool = False
    pruned: Tuple[str, ...] = ()
    rollback_of: Optional[str] = None


class HistoryEntry(NamedTuple):
    """One transaction as ``soswap history`` lists it."""

    txid: str
    kind: str
    state: str
    started: str
    finished: Optional[str]
    changes: Tuple[Change, ...]
    backups: str  # "kept", "pruned", "none"
    rollback_of: Optional[str]
    rolled_back_by: Optional[str]
    argv: Tuple[str, ...]


def superseded_files(changes: Sequence[Change]) -> List[Tuple[str, InodeRecord]]:
    """(path, record) of each file a soname link of ``changes`` led to before it was flipped, while that file is
    still there, no change of ``changes`` replaced it and the link leads elsewhere now: processes that map it
    run the previous version (a restart loads the new one through the link), though nothing of it was
    deleted."""
    replaced = {c.dest for c in changes if c.kind != KIND_SYMLINK}
    out: List[Tuple[str, InodeRecord]] = []
    for c in changes:
        if c.kind != KIND_SYMLINK or not c.link_old:
            continue
        path = os.path.normpath(os.path.join(c.directory, c.link_old))
        if path in replaced or any(p == path for p, _ in out):
            continue
        try:
            st = os.stat(path)
            now = os.stat(c.dest)  # where the link leads today: flipped back (by anyone), nothing is superseded
        except OSError:
            continue
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            continue
        out.append((path, InodeRecord.of(st)))
    return out
