"""Reading and writing the rdeps index file: JSON, replaced atomically, never trusted.

A file that cannot be read or decoded is reported as a reason string (the caller rebuilds the index); nothing
in it is ever evaluated (JSON only: no pickle, no marshal).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Optional, Tuple

#: An index larger than this is not read (a corrupt or hostile file); the index is rebuilt instead.
MAX_INDEX_BYTES = 512 << 20


def read_json(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """``(document, None)``; ``(None, None)`` when the file does not exist; ``(None, reason)`` when it exists
    but is unusable (unreadable, too big, not JSON, not an object)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not _is_regular(st.st_mode):
            return None, "not a regular file"
        if st.st_size > MAX_INDEX_BYTES:
            return None, f"too big ({st.st_size} bytes)"
        chunks = []
        left = st.st_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        return None, f"cannot read: {exc.strerror}"
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError) as exc:
        return None, f"not valid JSON ({type(exc).__name__})"
    if not isinstance(doc, dict):
        return None, "not a JSON object"
    return doc, None


def write_json(path: str, doc: Dict[str, Any]) -> Optional[str]:
    """Replace ``path`` with ``doc`` atomically (temp file in the same directory, fsync, rename, fsync of the
    directory). The directory is created (mode 0700) if missing. Returns None, or why it could not be written
    (the caller goes on without a saved index)."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        return f"{directory}: cannot create: {exc.strerror}"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rdeps-", suffix=".tmp", dir=directory)
    except OSError as exc:
        return f"{directory}: cannot write: {exc.strerror}"
    try:
        data = json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        tmp = ""
        _fsync_dir(directory)
    except (OSError, ValueError) as exc:
        return f"{path}: cannot write: {getattr(exc, 'strerror', None) or exc}"
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return None


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
