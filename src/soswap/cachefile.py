"""Cache files (the rdeps index, the binding results of ``soswap tree``): JSON parts with checksums, replaced
atomically, never trusted.

The file is a header line ``{"format": F, "version": V, "parts": [[BYTES, SHA256], ...]}`` followed by each
part (one JSON object, ASCII) on its own line. The caller decodes a part only when it needs it (the index's
extras are read only when something changed): :func:`decode_part` checks its checksum first. The file is
written to a temporary file in the same directory and renamed over the old one, so a reader sees the old or
the new file, never a mix, whatever other soswap processes do at the same time (the last writer wins). It is
a cache: it is not fsynced; a file damaged by a power cut fails its checksum and is rebuilt.

A file that cannot be used is reported as a reason string (the caller computes its contents again): missing, not a
regular file, not ours (another owner, or writable by others: its answers could be forged), too big, a bad
header, another format or version, a checksum mismatch (truncated, edited), not JSON. Nothing in it is ever
evaluated (JSON only: no pickle, no marshal).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from soswap.digest import sha256_hex
from soswap.textfile import read_fd

#: A cache file larger than this is not read (a corrupt or hostile file); it is rebuilt instead.
MAX_FILE_BYTES = 512 << 20
#: A temporary file of a writer older than this was left by a killed process: removed by the next writer.
STALE_TEMP_S = 600
_TEMP_PREFIX = ".soswap-cache-"
_TEMP_SUFFIX = ".tmp"


class Unusable(Exception):
    """Why a cache file cannot be used (the message is the reason shown to the user)."""


class Part:
    """One part of the file, not decoded yet."""

    __slots__ = ("raw", "sha256")

    def __init__(self, raw: bytes, sha256: str) -> None:
        self.raw = raw
        self.sha256 = sha256

    def intact(self) -> bool:
        """Its checksum matches (a part written back without being decoded must be checked first)."""
        return sha256_hex(self.raw) == self.sha256


def read_document(path: str, fmt: str, version: int) -> Tuple[Optional[List[Part]], Optional[str]]:
    """``(parts, None)``; ``(None, None)`` when the file does not exist; ``(None, reason)`` when it exists but
    is unusable. ``reason`` starts with ``version`` for a file of another version, else ``corrupt``."""
    try:
        raw = _read_own_file(path)
    except FileNotFoundError:
        return None, None
    except Unusable as exc:
        return None, f"corrupt: {exc}"
    head, _, rest = raw.partition(b"\n")
    try:
        header = json.loads(head.decode("ascii"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, "corrupt: no valid header"
    if not isinstance(header, dict) or header.get("format") != fmt:
        return None, f"corrupt: not a {fmt} file"
    if header.get("version") != version:
        return None, f"version {header.get('version')!r} (this soswap writes {version})"
    layout = header.get("parts")
    if not (isinstance(layout, list) and all(isinstance(x, list) and len(x) == 2 and type(x[0]) is int
                                             and x[0] >= 0 and isinstance(x[1], str) for x in layout)):
        return None, "corrupt: bad header"
    parts = []
    at = 0
    for size, sha in layout:
        chunk = rest[at:at + size]
        if len(chunk) != size or rest[at + size:at + size + 1] != b"\n":
            return None, "corrupt: truncated"
        parts.append(Part(chunk, sha))
        at += size + 1
    if at != len(rest):
        return None, "corrupt: trailing data"
    return parts, None


def decode_part(part: Part) -> Dict[str, Any]:
    """The JSON object of ``part``; ``Unusable`` when its checksum does not match or it is not an object."""
    if not part.intact():
        raise Unusable("checksum mismatch (truncated or edited)")
    try:
        doc = json.loads(part.raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Unusable(f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise Unusable("not a JSON object")
    return doc


def _create_temp(directory: str) -> Tuple[int, str]:
    """A new file of mode 0600 in ``directory``, open for writing, with a name no other writer uses
    (``O_EXCL``; what ``tempfile.mkstemp`` does, without its import: tempfile, random and shutil cost 4 ms
    of a run that writes its cache)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
    for _ in range(100):
        path = os.path.join(directory, f"{_TEMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}{_TEMP_SUFFIX}")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", directory)


def _read_own_file(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Unusable(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unusable("not a regular file")
        if st.st_uid not in (os.geteuid(), 0) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Unusable(f"owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: not trusted")
        if st.st_size > MAX_FILE_BYTES:
            raise Unusable(f"too big ({st.st_size} bytes)")
        return read_fd(fd, st.st_size + 1)
    except OSError as exc:
        raise Unusable(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def write_document(path: str, fmt: str, version: int, docs: Sequence[Union[Dict[str, Any], Part]]) -> Optional[str]:
    """Replace ``path`` with the parts ``docs`` atomically (a temporary file in the same directory, renamed
    over it). A :class:`Part` is written as it was read (check :meth:`Part.intact` first). The directory is
    created (mode 0700) if missing. Returns None, or why it could not be written (the caller goes on with what
    it has in memory)."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        return f"{directory}: cannot create: {exc.strerror}"
    try:
        bodies = [doc.raw if isinstance(doc, Part) else
                  json.dumps(doc, ensure_ascii=True, separators=(",", ":"), check_circular=False).encode("ascii")
                  for doc in docs]
    except (ValueError, TypeError) as exc:  # pragma: no cover - a bug: the encoder writes plain data only
        return f"{path}: cannot encode: {exc}"
    header = json.dumps({"format": fmt, "version": version,
                         "parts": [[len(b), sha256_hex(b)] for b in bodies]},
                        separators=(",", ":")).encode("ascii")
    _remove_stale_temps(directory)
    try:
        fd, tmp = _create_temp(directory)
    except OSError as exc:
        return f"{directory}: cannot write: {exc.strerror}"
    try:
        for part in [header, *bodies]:
            view = memoryview(part + b"\n")
            while view:
                n = os.write(fd, view)
                view = view[n:]
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        tmp = ""
    except OSError as exc:
        return f"{path}: cannot write: {exc.strerror or exc}"
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return None


def _remove_stale_temps(directory: str) -> None:
    """Temporary files of writers that were killed before their rename (a live writer's is younger)."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith(_TEMP_PREFIX) and n.endswith(_TEMP_SUFFIX)]
    except OSError:
        return
    limit = time.time() - STALE_TEMP_S
    for n in names:
        p = os.path.join(directory, n)
        try:
            if os.lstat(p).st_mtime < limit:
                os.unlink(p)
        except OSError:
            pass
