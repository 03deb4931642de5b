"""Steps 3–6 of replace.md §(a): the new file is written completely under a hidden name next to the
destination — created, filled, given its metadata and fsynced — before anything visible changes.

The temporary file is an unnamed ``O_TMPFILE`` inode (vanishes by itself if soswap dies) linked under its
hidden name only once complete, with ``linkat`` through ``/proc/self/fd`` (``open(2)``). Where the filesystem
has no O_TMPFILE (NFS, FAT, old kernels: EOPNOTSUPP/EISDIR/EINVAL), it is created ``O_EXCL`` under that name.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional, Tuple

from soswap.errors import ReplaceError
from soswap.replace import datacopy, metadata, syscalls
from soswap.replace.checks import check_source_data, describe_oserror
from soswap.replace.pause import pause_point
from soswap.replace.records import InodeRecord
from soswap.tuples import NamedTuple

_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})
_HAVE_PROC_FD = os.path.isdir("/proc/self/fd")


class StagedFile(NamedTuple):
    """A complete new file under ``temp`` in its destination's directory."""

    temp: str
    new: InodeRecord
    old_sha256: Optional[str]
    method: str


def same_identity(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _create_temp(dfd: int, temp: str, dest: str) -> Tuple[int, bool]:
    """Open the temp file; returns (fd, named) where ``named`` says it already has its hidden name."""
    if _HAVE_PROC_FD:
        try:
            return os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dfd), False
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise ReplaceError(describe_oserror(dest, exc, "creating the temporary file")) from None
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError as exc:
        raise ReplaceError(describe_oserror(dest, exc, f"creating the temporary file {temp}")) from None
    return fd, True


def stage_file(
    dfd: int,
    dest: str,
    temp: str,
    source: str,
    source_st: os.stat_result,
    old_st: Optional[os.stat_result],
    md: metadata.Metadata,
    mode_given: bool,
    want_hash: bool,
    known_old_hash: Optional[str] = None,
) -> StagedFile:
    """Write ``source`` into a new hidden file ``temp`` in ``dfd`` with metadata ``md``; fsync it.

    ``source_st``/``old_st`` are the identities seen by the checks: if either file changed since, this fails.
    ``known_old_hash``: the old file's SHA-256 when a journal already knows it (same dev, ino, size, mtime),
    so it is not read again. Nothing is left behind on failure (ReplaceError naming the step).
    """
    name = os.path.basename(dest)
    try:
        src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ReplaceError(describe_oserror(source, exc, "opening the source")) from None
    old_fd = -1
    fd = -1
    named = False
    try:
        st = os.fstat(src_fd)
        if not same_identity(st, source_st):
            raise ReplaceError(f"{source}: changed while soswap was installing it; nothing was replaced")
        check_source_data(src_fd, source, st)  # a pseudo-file, or one that fails to read, is refused
        old_hash: Optional[datacopy.HashJob] = None
        if old_st is not None:
            try:
                old_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                raise ReplaceError(describe_oserror(dest, exc, "opening the file being replaced")) from None
            if not same_identity(os.fstat(old_fd), old_st):
                raise ReplaceError(f"{dest}: changed while soswap was installing (another writer?); nothing "
                                   "was replaced")
            if want_hash and known_old_hash is None:
                old_hash = datacopy.HashJob(old_fd, old_st.st_size)
        new_hash = datacopy.HashJob(src_fd, st.st_size) if want_hash else None

        fd, named = _create_temp(dfd, temp, dest)
        pause_point("temp-created")
        if md.flags and md.flags & syscalls.FS_NOCOW_FL:
            _try_set_flag(fd, syscalls.FS_NOCOW_FL)  # btrfs: only takes effect on an empty file
        try:
            method = datacopy.copy_data(src_fd, fd, st.st_size)
        except OSError as exc:
            raise ReplaceError(describe_oserror(dest, exc, "writing the new file")) from None
        if not same_identity(os.fstat(src_fd), source_st):
            raise ReplaceError(f"{source}: changed while being copied; nothing was replaced")
        pause_point("data-copied")
        times = (source_st.st_atime_ns, source_st.st_mtime_ns)
        metadata.apply(fd, md, dest, mode_given, times)
        pause_point("metadata-set")
        try:
            os.fsync(fd)
        except OSError as exc:
            raise ReplaceError(describe_oserror(dest, exc, "fsync of the new file")) from None
        pause_point("fsynced")
        if not named:
            try:
                os.link(f"/proc/self/fd/{fd}", temp, dst_dir_fd=dfd, follow_symlinks=True)
            except OSError as exc:
                raise ReplaceError(describe_oserror(dest, exc, f"linking the temporary file as {temp}")) from None
            named = True
        pause_point("linked")
        new_st = os.fstat(fd)
        if new_st.st_size != st.st_size:
            raise ReplaceError(f"{dest}: the new file has {new_st.st_size} bytes, the source {st.st_size}; "
                               "nothing was replaced")
        digest = new_hash.result() if new_hash else None
        old_digest = old_hash.result() if old_hash else (known_old_hash if want_hash else None)
        return StagedFile(temp, InodeRecord.of(new_st, digest), old_digest, method)
    except BaseException:
        if named:
            try:
                os.unlink(temp, dir_fd=dfd)
            except OSError:
                pass
        raise
    finally:
        for f in (fd, old_fd, src_fd):
            if f >= 0:
                os.close(f)


def _try_set_flag(fd: int, flag: int) -> None:
    try:
        flags = syscalls.get_flags(fd)
        if flags is not None and not flags & flag:
            syscalls.set_flags(fd, flags | flag)
    except OSError:
        pass


def stage_symlink(dfd: int, dest: str, temp: str, target: str) -> InodeRecord:
    """Create the symlink ``temp`` -> ``target`` next to ``dest`` (to be renamed over it)."""
    try:
        os.unlink(temp, dir_fd=dfd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ReplaceError(describe_oserror(dest, exc, f"removing a stale {temp}")) from None
    try:
        os.symlink(target, temp, dir_fd=dfd)
        st = os.lstat(temp, dir_fd=dfd)
    except OSError as exc:
        raise ReplaceError(describe_oserror(dest, exc, "creating the temporary symlink")) from None
    return InodeRecord.of(st)


def stage_link(dfd: int, dest: str, existing: str, temp: str, expect: InodeRecord) -> InodeRecord:
    """Stage an existing inode (a backup kept by an earlier transaction) as ``temp``: a hard link, no copy."""
    try:
        st = os.lstat(existing, dir_fd=dfd)
    except OSError as exc:
        raise ReplaceError(describe_oserror(dest, exc, f"reading the backup {existing}")) from None
    if not expect.same_inode(st):
        raise ReplaceError(f"{dest}: the backup {existing} is not the version recorded in the journal; "
                           "nothing was changed")
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(existing, dir_fd=dfd)
        return stage_symlink(dfd, dest, temp, target)
    try:
        os.link(existing, temp, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
    except OSError as exc:
        raise ReplaceError(describe_oserror(dest, exc, "linking the backup")) from None
    return InodeRecord.of(st, expect.sha256)
