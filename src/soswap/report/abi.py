"""Renderers for :class:`soswap.abi.AbiDiff`: human text grouped by severity, and the JSON of docs/json-abi.md."""

from __future__ import annotations

import io
import json
from typing import Any, Dict, Iterator, List, TextIO, Tuple

from soswap.abi.changes import KIND_NOTES, SEVERITIES, AbiDiff, Change

#: One line per severity, shown above its changes.
SEVERITY_TITLES = {
    "breaking": "breaking: existing consumers fail (or misbehave) with NEW",
    "review": "review: may break, depending on what is installed and how consumers use it (soswap check)",
    "harmless": "harmless: existing binaries keep working",
}


def diff_to_json(diff: AbiDiff, with_changes: bool = True) -> Dict[str, Any]:
    """The JSON object of docs/json-abi.md."""
    doc: Dict[str, Any] = {
        "old": diff.old,
        "new": diff.new,
        "verdict": diff.verdict,
        "summary": diff.counts(),
    }
    if with_changes:
        doc["changes"] = [change_to_json(c) for c in diff.changes]
    return doc


def change_to_json(c: Change) -> Dict[str, Any]:
    return {
        "kind": c.kind,
        "symbol": c.symbol,
        "version": c.version,
        "severity": c.severity,
        "detail": c.detail,
        "old_value": c.old_value,
        "new_value": c.new_value,
    }


def write_diff_json(diff: AbiDiff, stream: TextIO, batch: int = 2000) -> None:
    """Write the JSON document to ``stream`` (ASCII-safe: undecodable path bytes become ``\\udcXX``).

    The changes are encoded in batches, each by one ``json.dumps`` call that runs in the C encoder: fast for
    the tens of thousands of changes of a big library, without holding the whole text in memory. The output
    is compact (one line); pipe it through ``jq`` to read it.
    """
    text = json.dumps(diff_to_json(diff, with_changes=False), ensure_ascii=True)
    stream.write(text[:-1] + ', "changes": [')
    changes = diff.changes
    for start in range(0, len(changes), batch):
        if start:
            stream.write(", ")
        rows = [change_to_json(c) for c in changes[start:start + batch]]
        stream.write(json.dumps(rows, ensure_ascii=True)[1:-1])
    stream.write("]}\n")


def diff_json_text(diff: AbiDiff) -> str:
    """The JSON document as text (see :func:`write_diff_json`)."""
    buf = io.StringIO()
    write_diff_json(diff, buf)
    return buf.getvalue()


def _grouped(diff: AbiDiff) -> Iterator[Tuple[str, List[Tuple[str, List[Change]]]]]:
    for sev in SEVERITIES:
        kinds: Dict[str, List[Change]] = {}
        for c in diff.changes:
            if c.severity == sev:
                kinds.setdefault(c.kind, []).append(c)
        if kinds:
            yield sev, list(kinds.items())


def _summary_line(diff: AbiDiff) -> str:
    counts = diff.counts()
    if not diff.changes:
        return "compatible: no ELF-level change"
    parts = ", ".join(f"{counts[s]} {s}" for s in SEVERITIES)
    return f"{diff.verdict}: {parts}"


def diff_to_text(diff: AbiDiff, summary_only: bool = False) -> List[str]:
    """Human report: a verdict line, then the changes grouped by severity and kind."""
    lines = [
        _summary_line(diff),
        f"  old: {diff.old}",
        f"  new: {diff.new}",
    ]
    for sev, kinds in _grouped(diff):
        lines.append("")
        lines.append(SEVERITY_TITLES.get(sev, sev))
        for kind, changes in kinds:
            if summary_only:
                lines.append(f"  {kind}: {len(changes)}")
                continue
            note = KIND_NOTES.get(kind)
            lines.append(f"  {kind} ({len(changes)})" + (f": {note}" if note else ""))
            for c in changes:
                lines.append(f"    {c.detail}")
    if diff.changes and not summary_only:
        lines.append("")
        lines.append("ELF-level only: signatures, struct layouts and vtable slots are not compared (docs/check.md).")
    return lines
