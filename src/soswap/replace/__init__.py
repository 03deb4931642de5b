"""Atomic, durable, metadata-preserving replacement of files under running programs, as transactions.

>>> from soswap.replace import install, Request, InstallOptions, StateDir
>>> result = install([Request("build/libfoo.so.1.2.4", "/usr/lib/libfoo.so.1.2.4")])
>>> result.txid, [c.dest for c in result.changes]

A file is never written in place: the new version is staged under a hidden name in the destination's
directory, given the old file's owner, mode, ACL, xattrs and capabilities, fsynced, and renamed over the old
one (running programs keep the old inode). Several files form one journaled transaction; ``recover`` finishes
or undoes an interrupted one, ``rollback`` restores the previous versions. See docs/install.md.
"""

from __future__ import annotations

from typing import Optional

from soswap.replace.installer import DEFAULT_KEEP, InstallOptions, Preflight, StaleReport, install
from soswap.replace.records import Change, HistoryEntry, InodeRecord, InstallResult, Notice, RecoverOutcome
from soswap.replace.recovery import history, journal_facts, prune, recover, rollback
from soswap.replace.statedir import StateDir, default_state_dir
from soswap.replace.targets import Request, read_manifest, requests_from_args


def replace_file(source: str, dest: str, opts: Optional[InstallOptions] = None,
                 state: Optional[StateDir] = None) -> InstallResult:
    """Replace one file: ``install([Request(source, dest)])``."""
    return install([Request(source, dest)], opts, state)


__all__ = [
    "DEFAULT_KEEP",
    "Change",
    "HistoryEntry",
    "InodeRecord",
    "InstallOptions",
    "InstallResult",
    "Notice",
    "Preflight",
    "RecoverOutcome",
    "Request",
    "StaleReport",
    "StateDir",
    "default_state_dir",
    "history",
    "install",
    "journal_facts",
    "prune",
    "read_manifest",
    "recover",
    "replace_file",
    "requests_from_args",
    "rollback",
]
