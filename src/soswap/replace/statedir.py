"""The state directory: transaction journals and the lock that serializes installs.

Location: :func:`soswap.state.default_state_dir` unless given. Layout::

    lock                 flock(2)ed exclusively by install, recover and rollback; holds the owner's PID
    tx/TXID.json         live journals: interrupted transactions, and committed ones whose backups are kept
    history/TXID.json    finished transactions with nothing left on disk (no backups, pruned, undone, failed)

Each journal is replaced atomically (temp + fsync + rename + fsync of the directory). Keeping the live ones
apart bounds the work of every install (recovery and pruning read ``tx/`` only) however long the history.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from soswap.errors import StateError
from soswap.state import default_state_dir
from soswap.textfile import read_regular

JOURNAL_VERSION = 1
#: How long a second install waits for the lock before giving up (never hang).
DEFAULT_LOCK_TIMEOUT = 60.0


class StateDir:
    """The journals of one state directory. Use :meth:`locked` around anything that changes files."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = os.path.abspath(path or default_state_dir())
        self.tx_dir = os.path.join(self.path, "tx")
        self.history_dir = os.path.join(self.path, "history")
        self._lock_fd: Optional[int] = None
        #: what the recovery at the start of this process's last install or rollback resolved (RecoverOutcome)
        self.recovered: Tuple[Any, ...] = ()

    # -- setup and lock -----------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the directories (mode 0700) if missing."""
        for d in (self.tx_dir, self.history_dir):
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StateError(f"{self.path}: cannot create the state directory: {exc.strerror}") from None
            if not os.path.isdir(d):
                raise StateError(f"{d}: not a directory")

    def exists(self) -> bool:
        """True when the journals' directory is there; False when nothing was ever written. Raises
        :class:`StateError` when the path is there but is not a directory (a regular file given by mistake), or
        cannot be read (another user's): reading it as "no transactions" would hide the journals the user
        meant."""
        for d in (self.path, self.tx_dir):
            try:
                st = os.stat(d)
            except FileNotFoundError:
                if os.path.lexists(d):  # a dangling link
                    raise StateError(f"{d}: not a directory") from None
                return False
            except NotADirectoryError:
                raise StateError(f"{d}: not a directory") from None
            except OSError as exc:  # EACCES: there, but not ours to read; "no transactions" would be a lie
                raise StateError(f"{d}: cannot read the state directory: {exc.strerror}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise StateError(f"{d}: not a directory")
        return True

    def lock(self, timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        """Take the exclusive lock, waiting at most ``timeout`` seconds (StateError names the holder)."""
        self.ensure()
        lock_path = os.path.join(self.path, "lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StateError(f"{lock_path}: cannot open the lock file: {exc.strerror}") from None
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                    os.close(fd)
                    raise StateError(f"{lock_path}: cannot lock: {exc.strerror}") from None
            if time.monotonic() >= deadline:
                holder = _read_small(fd).strip() or "unknown"
                os.close(fd)
                raise StateError(f"{self.path}: another soswap (PID {holder}) holds the lock; gave up after "
                                 f"{timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:  # the PID is only informational (for the "holds the lock" message)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
            except OSError:
                pass
            os.close(self._lock_fd)  # closing the last fd releases the flock
            self._lock_fd = None

    def __enter__(self) -> StateDir:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    # -- journals -----------------------------------------------------------------------------------------

    def journal_path(self, txid: str, live: bool = True) -> str:
        return os.path.join(self.tx_dir if live else self.history_dir, f"{txid}.json")

    def claim(self, txid: str) -> bool:
        """True if no journal named ``txid`` exists yet (the caller holds the lock)."""
        return not (os.path.lexists(self.journal_path(txid)) or os.path.lexists(self.journal_path(txid, False)))

    def write(self, record: Dict[str, Any], durable: bool = True) -> None:
        """Replace the journal of ``record["txid"]`` atomically, in ``tx/`` or ``history/`` as its state says.
        The file's data is always synced before the rename; ``durable``: the directory too (the rename
        itself survives a power cut)."""
        txid = record["txid"]
        live = is_live(record)
        directory = self.tx_dir if live else self.history_dir
        data = json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
        tmp = os.path.join(directory, f".{txid}.json.tmp")
        final = self.journal_path(txid, live)
        other = self.journal_path(txid, not live)
        # A move between the directories is not forced durable: only finished records move, and losing one
        # in a power cut loses a history line, never a file (a resurrected tx/ copy is cleaned up again).
        moving = os.path.lexists(other)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                # the data always: renamed over without it, a power cut can leave an empty file in its
                # place (a new name in history/ has no ext4 rename heuristic to save it); the directory only
                # when ``durable``
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            if durable:
                _sync_dir(directory)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StateError(f"{final}: cannot write the journal: {exc.strerror}") from None
        if moving:  # the copy in the other directory is now stale (readers prefer history/ anyway)
            try:
                os.unlink(other)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StateError(f"{other}: cannot remove: {exc.strerror}") from None

    def read(self, txid: str) -> Dict[str, Any]:
        """The journal of ``txid``; StateError if missing or unreadable."""
        if not txid or "/" in txid or txid.startswith("."):
            raise StateError(f"invalid transaction id {txid!r}")
        lost = ""
        for live in (False, True):
            path = self.journal_path(txid, live)
            try:
                raw = read_regular(path, 64 << 20)  # a FIFO in the state directory is an error, not a wait
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StateError(f"{path}: cannot read the journal: {exc.strerror}") from None
            if not live and not raw:
                # history/ is written without fsync (a finished record): a power cut can leave it empty; the
                # tx/ copy, when the crash came before its removal, is the record
                lost = path
                continue
            return _parse(path, raw)
        if lost:
            raise LostJournal(f"{lost}: empty journal (its finished record was lost in a crash); move it aside "
                              "to continue")
        raise StateError(f"no transaction {txid} in {self.path}")

    def _list(self, directory: str) -> List[str]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"{directory}: cannot list journals: {exc.strerror}") from None
        return [n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")]

    def live_records(self) -> List[Dict[str, Any]]:
        """The journals in ``tx/``: interrupted transactions and those whose backups are kept; oldest first."""
        return [self.read(t) for t in sorted(self._list(self.tx_dir))]

    def txids_newest_first(self) -> List[str]:
        return sorted(set(self._list(self.tx_dir)) | set(self._list(self.history_dir)), reverse=True)

    def records(self) -> Iterator[Dict[str, Any]]:
        """Every journal, oldest first (transaction ids sort by start time); a finished record a crash left
        empty is left out (it was only a history line: its files were done with)."""
        for txid in sorted(set(self._list(self.tx_dir)) | set(self._list(self.history_dir))):
            try:
                yield self.read(txid)
            except LostJournal:
                continue


def is_live(record: Dict[str, Any]) -> bool:
    """Whether a journal belongs in ``tx/``: still pending, or committed with backups on disk."""
    state = record.get("state")
    if state in ("staging", "prepared", "committed"):
        return True
    return (state == "done" and bool(record.get("keep_backups")) and not record.get("backups_pruned")
            and not record.get("rolled_back_by"))


def _sync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_small(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace")
    except OSError:
        return ""


class LostJournal(StateError):
    """A journal in history/ that a power cut left empty (written without fsync, renamed in place)."""


def _parse(path: str, raw: bytes) -> Dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateError(f"{path}: unreadable journal ({exc}); move it aside to continue") from None
    if not isinstance(obj, dict) or obj.get("version") != JOURNAL_VERSION or not isinstance(obj.get("entries"), list):
        raise StateError(f"{path}: not a soswap journal of version {JOURNAL_VERSION}; move it aside to continue")
    for key in ("txid", "state", "kind"):
        if not isinstance(obj.get(key), str):
            raise StateError(f"{path}: journal field {key!r} missing; move it aside to continue")
    problem = _record_problem(obj)
    if problem:
        raise StateError(f"{path}: malformed journal ({problem}); move it aside to continue")
    return obj


_OPTIONAL_TEXT = ("started", "finished", "rollback_of", "rolled_back_by", "error")
_ENTRY_TEXT = ("kind", "dest")
_ENTRY_OPTIONAL_TEXT = ("temp", "backup", "source", "requested", "link_old", "link_new", "method")
_INODE_FIELDS = ("dev", "ino", "size", "mtime_ns")


def _text_problem(value: Any, what: str, optional: bool) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str) or "\0" in value:
        return f"{what} is not a file name"
    return None


def _int_problem(value: Any, what: str, bits: int = 64, signed: bool = False) -> Optional[str]:
    low = -(1 << (bits - 1)) if signed else 0
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 1 << bits:
        return f"{what} is not a number"
    return None


def _record_problem(obj: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the types of a journal's fields, or None: everything recovery, rollback and history
    read is checked here, so a damaged journal is one clear error, never an internal one."""
    argv = obj.get("argv")
    if argv is not None and (not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)):
        return "argv is not a list of strings"
    for key in _OPTIONAL_TEXT:
        if obj.get(key) is not None and not isinstance(obj.get(key), str):
            return f"{key} is not a string"
    flags = obj.get("dir_flags")
    if flags is not None:
        if not isinstance(flags, list):
            return "dir_flags is not a list"
        for item in flags:
            if not isinstance(item, dict):
                return "dir_flags holds something else than {dir, flags}"
            problem = _text_problem(item.get("dir"), "dir_flags.dir", False) or _int_problem(
                item.get("flags"), "dir_flags.flags", 32)
            if problem:
                return problem
    for n, e in enumerate(obj["entries"]):
        if not isinstance(e, dict):
            return f"entry {n} is not an object"
        problem = next((p for p in (
            *(_text_problem(e.get(k), f"entry {n} {k}", False) for k in _ENTRY_TEXT),
            *(_text_problem(e.get(k), f"entry {n} {k}", True) for k in _ENTRY_OPTIONAL_TEXT),
            _int_problem(e.get("flags") or 0, f"entry {n} flags", 32)) if p), None)
        if problem:
            return problem
        for k in ("temp", "backup"):  # names in the destination's directory
            if isinstance(e.get(k), str) and ("/" in e[k] or e[k] in ("", ".", "..")):
                return f"entry {n} {k} is not a name in its directory"
        for k in ("old", "new"):
            rec = e.get(k)
            if rec is None:
                continue
            if not isinstance(rec, dict):
                return f"entry {n} {k} is not an inode record"
            problem = next((p for p in (_int_problem(rec.get(f), f"entry {n} {k}.{f}", signed=f == "mtime_ns")
                                        for f in _INODE_FIELDS) if p), None)
            if problem or (rec.get("sha256") is not None and not isinstance(rec.get("sha256"), str)):
                return problem or f"entry {n} {k}.sha256 is not a string"
        for k in ("privileges", "restore"):
            priv = e.get(k)
            if priv is None:
                continue
            if not isinstance(priv, dict) or _int_problem(priv.get("mode"), f"entry {n} {k}.mode", 16) or (
                    priv.get("capability") is not None and not isinstance(priv.get("capability"), str)):
                return f"entry {n} {k} is not a privileges record"
    return None
