"""ABI compatibility of a library and its replacement, as the dynamic loader sees it.

>>> from soswap.abi import diff_files, check_replacement
>>> d = diff_files("/usr/lib/x86_64-linux-gnu/libfoo.so.1", "/tmp/new/libfoo.so.1")
>>> d.verdict, [(c.kind, c.symbol, c.severity) for c in d.breaking]
>>> r = check_replacement("/usr/lib/x86_64-linux-gnu/libfoo.so.1", "/tmp/new/libfoo.so.1")
>>> r.verdict, [(c.path, c.pid, [p.message for p in c.problems]) for c in r.consumers if c.breaks]

* :func:`diff_files` — the ELF-level diff OLD → NEW, each change rated breaking, review or harmless;
* :func:`check_replacement` — the per-consumer verdict: every program, plugin and running process that loads
  TARGET, loaded again with NEW in its place by the loader emulation, with the exact ld.so messages;
* :func:`preflight` — the same for every file of an install transaction (``soswap install`` calls it);
* :class:`RdepsIndex` — the reverse-dependency index of the system behind the default consumer discovery.

See docs/check.md.
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
from soswap.abi.check import check_replacement
from soswap.abi.diff import diff_files, diff_objects
from soswap.abi.preflight import PreflightProblem, preflight
from soswap.abi.problems import CheckResult, ConsumerResult, Discovery, Problem
from soswap.abi.rdeps import Dependent, RdepsIndex

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
    "CheckResult",
    "ConsumerResult",
    "Dependent",
    "Discovery",
    "PreflightProblem",
    "Problem",
    "RdepsIndex",
    "check_replacement",
    "diff_files",
    "diff_objects",
    "preflight",
]
