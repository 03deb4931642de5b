"""``diff_files``/``diff_objects``: the ELF-level ABI diff of a library (or executable) OLD and its
replacement NEW, as the dynamic loader sees them. Reads both files through :mod:`soswap.elf` only."""

from __future__ import annotations

from typing import List

from soswap.abi.changes import AbiDiff, Change, sorted_changes
from soswap.abi.exports import symbol_view
from soswap.abi.object_diff import diff_dynamic, diff_header, diff_loader_flags
from soswap.abi.symbol_diff import diff_symbols, diff_versions
from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.errors import ElfError


def diff_objects(old: ElfFile, new: ElfFile) -> AbiDiff:
    """Compare two opened ELF files. Raises :class:`ElfError` when either is malformed, or when OLD is not
    something the loader loads (a relocatable object, a core file)."""
    if old.type not in C.LOADABLE_TYPES:
        raise ElfError(old.path, f"not a shared library or executable (e_type {old.type_name})")
    changes: List[Change]
    changes, foreign = diff_header(old, new)
    if not foreign:
        changes.extend(diff_dynamic(old, new))
        old_view, new_view = symbol_view(old), symbol_view(new)
        changes.extend(diff_versions(old_view, new_view))
        changes.extend(diff_symbols(old_view, new_view))
        changes.extend(diff_loader_flags(old, new))
    return AbiDiff(old.path, new.path, sorted_changes(changes))


def diff_files(old_path: str, new_path: str) -> AbiDiff:
    """Open and compare the files at ``old_path`` and ``new_path``."""
    with ElfFile.open(old_path) as old, ElfFile.open(new_path) as new:
        return diff_objects(old, new)
