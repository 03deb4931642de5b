"""The birth time of a file (``statx(2)`` ``STATX_BTIME``), which ``os.stat`` does not expose on Linux < 3.12.

Used for interpreter scripts only: a script whose inode was *created* after the interpreter started is a new
file at the old name (replaced), even when its mtime was preserved (``cp -p``, tar, dpkg). The call goes to
the C library already loaded in this process (``ctypes.CDLL(None)``); nothing is loaded from a scanned file.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Optional

_AT_FDCWD = -100
_STATX_BTIME = 0x800
_STATX_BASIC_STATS = 0x7FF
_BUF_SIZE = 256
_BTIME_OFFSET = 80  # struct statx: stx_btime after mask..attributes_mask and stx_atime

_libc_statx: Any = None
_unavailable = False


def _function() -> Any:
    global _libc_statx, _unavailable
    if _libc_statx is None and not _unavailable:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.statx
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
            fn.restype = ctypes.c_int
            _libc_statx = (fn, ctypes)
        except (OSError, AttributeError, ImportError):
            _unavailable = True
    return _libc_statx


def birth_time_ns(path: bytes) -> Optional[int]:
    """The birth time of ``path`` in ns (realtime), or None when the kernel/filesystem does not record it."""
    entry = _function()
    if entry is None:
        return None
    fn, ctypes = entry
    buf = ctypes.create_string_buffer(_BUF_SIZE)
    if fn(_AT_FDCWD, os.fsencode(path), 0, _STATX_BASIC_STATS | _STATX_BTIME, buf) != 0:
        return None
    raw = buf.raw
    (mask,) = struct.unpack_from("=I", raw, 0)
    if not mask & _STATX_BTIME:
        return None
    sec, nsec = struct.unpack_from("=qI", raw, _BTIME_OFFSET)
    return sec * 1_000_000_000 + nsec
