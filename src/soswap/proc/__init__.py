"""soswap.proc: reading /proc as bytes, finding processes that run stale code, and who uses a file.

Public API (see docs/stale.md):

>>> from soswap.proc import scan_stale, ScanOptions, find_users, processes_using_inodes, processes_mapping
>>> report = scan_stale(ScanOptions(pids=[1234]))
>>> [(f.path, f.kind, f.role) for p in report.processes for f in p.files]
>>> processes_using_inodes({(st_dev, st_ino)})   # old inodes recorded by a replacement
>>> processes_mapping("/usr/lib/x86_64-linux-gnu/libssl.so.3")

Imports are lazy so that ``soswap --help`` does not pay for the scanner.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "scan_stale": "soswap.proc.scan",
    "ScanOptions": "soswap.proc.scan",
    "check_pid_alive": "soswap.proc.scan",
    "find_users": "soswap.proc.users",
    "processes_using_inodes": "soswap.proc.users",
    "processes_mapping": "soswap.proc.users",
    "IgnoreList": "soswap.proc.ignore",
    "DEFAULT_IGNORE": "soswap.proc.ignore",
    "StaleReport": "soswap.proc.model",
    "StaleProcess": "soswap.proc.model",
    "StaleFile": "soswap.proc.model",
    "JournalView": "soswap.proc.model",
    "FileRecord": "soswap.proc.model",
    "FileUse": "soswap.proc.model",
    "UsersReport": "soswap.proc.model",
    "Unit": "soswap.proc.cgroup",
    "KernelStatus": "soswap.proc.kernel",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'soswap.proc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
