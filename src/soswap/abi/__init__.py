"""ABI compatibility of a library and its replacement, as the dynamic loader sees it.

>>> from soswap.abi import diff_files
>>> d = diff_files("/usr/lib/x86_64-linux-gnu/libfoo.so.1", "/tmp/new/libfoo.so.1")
>>> d.verdict, [(c.kind, c.symbol, c.severity) for c in d.breaking]

Part 1 (this package today): the ELF-level diff OLD -> NEW. The per-consumer verdict built on
:mod:`soswap.loader` comes next.
"""

from soswap.abi.changes import (
    BREAKING,
    COMPATIBLE,
    HARMLESS,
    INCOMPATIBLE,
    KINDS,
    REVIEW,
    SEVERITIES,
    AbiDiff,
    Change,
)
from soswap.abi.diff import diff_files, diff_objects

__all__ = [
    "BREAKING",
    "COMPATIBLE",
    "HARMLESS",
    "INCOMPATIBLE",
    "KINDS",
    "REVIEW",
    "SEVERITIES",
    "AbiDiff",
    "Change",
    "diff_files",
    "diff_objects",
]
