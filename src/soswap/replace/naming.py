"""Names soswap gives to transactions, temporary files and backups.

Temporary and backup files live in the destination's directory and start with a dot, so ``ldconfig`` never
takes them for libraries: it only considers names starting with ``lib`` or ``ld-`` that contain ``.so``
(elf/ldconfig.c ``search_dir``, elf/dl-is_dso.h ``_dl_is_dso``).
"""

from __future__ import annotations

import os
import time

#: Longest file name the kernel accepts (NAME_MAX).
NAME_MAX = 255

TEMP_MARK = ".new-"
BACKUP_MARK = ".bak-"


def new_txid() -> str:
    """A transaction id: the UTC time to the microsecond, ``YYYYMMDD-HHMMSS-uuuuuu``. Ids sort by start time;
    transactions of one state directory are serialized by its lock, so they never share a microsecond (the
    caller still retries while the id is taken)."""
    now = time.time_ns()
    secs, nanos = divmod(now, 1_000_000_000)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(secs)) + f"-{nanos // 1000:06d}"


def _hidden(name: str, mark: str, txid: str) -> str:
    candidate = f".{name}{mark}{txid}"
    if len(os.fsencode(candidate)) <= NAME_MAX:
        return candidate
    from soswap.digest import sha256_hex  # rare (names near NAME_MAX)

    digest = sha256_hex(os.fsencode(name))[:24]
    return f".soswap-{digest}{mark}{txid}"


def temp_name(name: str, txid: str) -> str:
    """The staged file for ``name`` in transaction ``txid``: ``.NAME.new-TXID``."""
    return _hidden(name, TEMP_MARK, txid)


def backup_name(name: str, txid: str) -> str:
    """The backup hard link of ``name`` kept by transaction ``txid``: ``.NAME.bak-TXID``."""
    return _hidden(name, BACKUP_MARK, txid)
