"""``soswap diff`` (the engine and the CLI) on every case T1–T34: the exact change kinds and severities.

At the library level a removal is breaking even when the case's app survives it (T2, T14): whether a given
consumer breaks is ``soswap check``'s job. Changes that depend on what is installed (a new dependency, a new
version need, a new undefined symbol: T23–T26) are ``review``; the ELF-only blind spots (T32–T34) show
nothing, or only a hint.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from typing import Dict, FrozenSet, Optional, Set, Tuple

import pytest

from soswap.abi import diff_files

from .cases import CASE_IDS, Case

B, R, H = "breaking", "review", "harmless"
Row = Tuple[str, Optional[str], Optional[str], str]  # kind, symbol, version, severity

#: Every change soswap diff must report for each case, and nothing else.
EXPECTED: Dict[str, FrozenSet[Row]] = {k: frozenset(v) for k, v in {
    "T1": {("symbol-removed", "foo", None, B)},
    "T2": {("symbol-removed", "unused", None, B)},
    "T3": {("symbol-removed", "counter", None, B)},
    "T4": {("size-changed", "table", None, B)},
    "T5": {("size-changed", "table", None, B)},
    "T6": {("type-changed", "foo", None, B)},
    "T7": {("type-changed", "tv", None, B)},
    # an IFUNC makes ld mark the object ELFOSABI_GNU, which ld.so accepts
    "T8": {("type-changed", "foo", None, H), ("osabi-changed", None, None, H)},
    "T9": {("binding-changed", "foo", None, H)},
    "T10": {("symbol-removed", "foo", None, B)},
    "T11": {("visibility-changed", "foo", None, R)},
    "T12": {("visibility-changed", "counter", None, B)},
    "T13": {("symbol-added", "foo2", None, H)},
    "T14": {("symbol-removed", "opt", None, B)},
    "T15": {("version-removed", None, "VERS_1", B), ("symbol-moved", "foo", "VERS_1", B),
            ("symbol-moved", "bar", "VERS_1", B), ("version-added", None, "VERS_2", H)},
    "T16": {("symbol-moved", "foo", "VERS_1", B), ("version-added", None, "VERS_2", H)},
    "T17": {("default-version-changed", "foo", "VERS_2", H), ("version-added", None, "VERS_2", H)},
    "T18": {("default-version-removed", "foo", "VERS_1", R)},
    "T19": {("versioning-added", None, None, H)},
    "T20": {("versioning-removed", None, None, B)},
    "T21": {("versioning-added", None, None, H), ("symbol-added", "foo", "VERS_2", H)},
    "T22": {("soname-changed", None, None, B)},
    "T23": {("needed-added", None, None, R), ("undefined-added", "helper", None, R)},
    "T24": {("undefined-added", "dep_b", None, R)},
    "T25": {("undefined-added", "dep_b", "DEP_2.0", R), ("version-need-added", None, "DEP_2.0", R)},
    "T26": {("needed-removed", None, None, R)},
    "T27": {("symbol-removed", "foo", None, B), ("needed-added", None, None, R)},
    "T28": {("elf-class-changed", None, None, B), ("machine-changed", None, None, B)},
    "T29": {("machine-changed", None, None, B)},
    "T30": {("osabi-changed", None, None, B)},
    "T30b": {("osabi-changed", None, None, H)},
    "T31": {("symbol-removed", "foo", None, B)},
    "T32": set(),
    "T33": set(),
    "T34": {("size-changed", "_ZTV5Shape", None, B), ("symbol-added", "_ZNK5Shape9perimeterEv", None, H)},
}.items()}


def _rows(case: Case) -> Set[Row]:
    return {(c.kind, c.symbol, c.version, c.severity) for c in diff_files(str(case.old), str(case.new)).changes}


def test_every_case_has_an_expectation() -> None:
    assert set(EXPECTED) == set(CASE_IDS)


@pytest.mark.parametrize("cid", CASE_IDS)
def test_diff_reports_exactly_the_expected_changes(case: Case, cid: str) -> None:
    assert _rows(case) == set(EXPECTED[cid])


@pytest.mark.parametrize("cid", CASE_IDS)
def test_cli_exit_status_and_json(case: Case, cid: str) -> None:
    r = subprocess.run([sys.executable, "-m", "soswap", "diff", "--json", str(case.old), str(case.new)],
                       capture_output=True, text=True)
    breaking = any(row[3] == B for row in EXPECTED[cid])
    assert r.returncode == (1 if breaking else 0), r.stderr
    doc = json.loads(r.stdout)
    assert doc["old"] == str(case.old) and doc["new"] == str(case.new)
    assert doc["verdict"] == ("incompatible" if breaking else "compatible")
    assert {(c["kind"], c["symbol"], c["version"], c["severity"]) for c in doc["changes"]} == set(EXPECTED[cid])
    assert all(isinstance(c["detail"], str) and c["detail"] for c in doc["changes"])


def test_values_carried_by_the_changes(abi_cases: Dict[str, Case]) -> None:
    """The two sides of a change are in old_value/new_value: sizes, types, files, versions."""
    def one(cid: str, kind: str) -> Tuple[Optional[str], Optional[str]]:
        if cid not in abi_cases:
            pytest.skip(f"{cid} not built")
        (c,) = diff_files(str(abi_cases[cid].old), str(abi_cases[cid].new)).of_kind(kind)
        return c.old_value, c.new_value

    assert one("T4", "size-changed") == ("16", "32")
    assert one("T5", "size-changed") == ("32", "16")
    assert one("T6", "type-changed") == ("FUNC", "OBJECT")
    assert one("T7", "type-changed") == ("OBJECT", "TLS")
    assert one("T12", "visibility-changed") == ("DEFAULT", "PROTECTED")
    assert one("T17", "default-version-changed") == ("foo@@VERS_1", "foo@@VERS_2")
    assert one("T22", "soname-changed") == ("libfoo.so.1", "libfoo.so.2")
    assert one("T23", "needed-added") == (None, "libhelper.so.1")
    assert one("T25", "version-need-added") == (None, "libdep.so.1:DEP_2.0")
    assert one("T26", "needed-removed") == ("libbar.so.1", None)
    assert one("T28", "elf-class-changed") == ("ELFCLASS64", "ELFCLASS32")
    assert one("T30", "osabi-changed") == ("SYSV", "FREEBSD")


def test_human_report_is_grouped_by_severity(abi_cases: Dict[str, Case]) -> None:
    if "T15" not in abi_cases:
        pytest.skip("T15 not built")
    case = abi_cases["T15"]
    r = subprocess.run([sys.executable, "-m", "soswap", "diff", str(case.old), str(case.new)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    out = r.stdout.splitlines()
    assert out[0] == "incompatible: 3 breaking, 0 review, 1 harmless"
    heads = [i for i, line in enumerate(out) if line.startswith(("breaking:", "review:", "harmless:"))]
    assert [out[i].split(":")[0] for i in heads] == ["breaking", "harmless"]
    assert "    foo@@VERS_1 is gone; NEW has foo@@VERS_2" in out
    assert out.index("    version node VERS_1 removed") < heads[1] < out.index("    new version node VERS_2")


# -- an independent oracle: abidiff (libabigail, ELF symbols only: the fixtures carry no DWARF) -------------

_ABIDIFF_REMOVED = re.compile(r"^\s+\[D\] (\S+)$", re.M)


@pytest.mark.skipif(shutil.which("abidiff") is None, reason="abidiff (abigail-tools) not installed")
@pytest.mark.parametrize("cid", CASE_IDS)
def test_every_removal_abidiff_sees_is_a_breaking_change(case: Case, cid: str) -> None:
    """Whatever abidiff calls removed, soswap reports as a breaking change of that symbol (or of the whole
    object: versioning dropped, another ELF class or machine)."""
    r = subprocess.run(["abidiff", str(case.old), str(case.new)], capture_output=True, text=True, timeout=120)
    removed = {m.split("@")[0] for m in _ABIDIFF_REMOVED.findall(r.stdout)}
    rows = _rows(case)
    whole = {k for k, s, _v, sev in rows if s is None and sev == B}
    if whole & {"versioning-removed", "elf-class-changed", "machine-changed"}:
        return
    named = {s for _k, s, _v, sev in rows if s is not None and sev == B}
    assert removed <= named, (removed, rows)
    # and the other way round: what soswap calls removed, abidiff calls removed too
    ours = {s for k, s, _v, _sev in rows if k == "symbol-removed"}
    assert ours <= removed, (ours, r.stdout)
