"""Renderers of soswap.abi results: the diff (:class:`AbiDiff`), the check (:class:`CheckResult`) and the rdeps
query, as human text and as the JSON of docs/json-abi.md."""

from __future__ import annotations

import io
import json
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from soswap.abi.changes import KIND_NOTES, SEVERITIES, AbiDiff, Change
from soswap.abi.problems import CheckResult, ConsumerResult, Discovery, Problem
from soswap.abi.rdeps import Dependent

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


# -- soswap check -----------------------------------------------------------------------------------------

#: Consumers listed with their problems, in this order; compatible ones are counted unless --verbose.
_VERDICT_TITLES = {
    "incompatible": "incompatible: NEW breaks these consumers",
    "broken": "broken with OLD already (not blamed on NEW)",
    "compatible": "compatible",
    "unaffected": "unaffected: these consumers do not load TARGET",
}


def problem_to_json(p: Problem) -> Dict[str, Any]:
    return {
        "kind": p.kind,
        "symbol": p.symbol,
        "version": p.version,
        "when": p.when,
        "message": p.message,
        "object": p.object,
        "fatal": p.fatal,
        "silent": p.silent,
        "detail": p.detail,
    }


def consumer_to_json(c: ConsumerResult) -> Dict[str, Any]:
    doc: Dict[str, Any] = {"path": c.path}
    if c.pid is not None:
        doc["pid"] = c.pid
    doc.update({
        "role": c.role,
        "source": c.source,
        "verdict": c.verdict,
        "problems": [problem_to_json(p) for p in c.problems],
        "baseline_count": len(c.baseline),
    })
    if c.verdict == "broken":
        doc["baseline"] = [problem_to_json(p) for p in c.baseline]
    if c.plugins:
        doc["plugins"] = list(c.plugins)
    if c.root is not None:
        doc["root"] = c.root
    if c.note:
        doc["note"] = c.note
    return doc


def check_to_json(result: CheckResult) -> Dict[str, Any]:
    """The JSON object of docs/json-abi.md (``soswap check --json``)."""
    counts = result.counts()
    summary: Dict[str, Any] = {"consumers": len(result.consumers)}
    summary.update(counts)
    summary["changes"] = result.diff.counts()
    d = result.discovery
    index = None
    if d.index_stats is not None:
        index = {"path": d.index_path}
        index.update(d.index_stats)
    return {
        "target": result.target,
        "new": result.new,
        "verdict": result.verdict,
        "partial": d.partial,
        "summary": summary,
        "refusals": [change_to_json(c) for c in result.refusals],
        "self": consumer_to_json(result.self_check) if result.self_check is not None else None,
        "consumers": [consumer_to_json(c) for c in result.consumers],
        "discovery": {
            "sources": list(d.sources),
            "index": index,
            "skipped": [{"pid": pid or None, "reason": why} for pid, why in d.skipped_processes],
            "unreadable": unreadable_to_json(d.unreadable),
            "unaffected": d.unaffected,
            "shortcuts": d.shortcuts,
        },
        "changes": [change_to_json(c) for c in result.diff.changes],
    }


def unreadable_to_json(unreadable: Sequence[Tuple[str, str]]) -> List[Dict[str, str]]:
    """``discovery.unreadable`` of ``check --json`` (``unreadable`` of ``rdeps --json``)."""
    return [{"path": path, "reason": why} for path, why in unreadable]


#: At most this many unreadable paths are named in the text reports (the JSON has them all).
_NAMED_UNREADABLE = 20


def unreadable_lines(unreadable: Sequence[Tuple[str, str]], title: str) -> List[str]:
    """The text section listing what the walk could not read under ``title``, empty when none."""
    if not unreadable:
        return []
    lines = ["", f"{title} ({len(unreadable)}):"]
    lines.extend(f"  {path}: {why}" for path, why in unreadable[:_NAMED_UNREADABLE])
    if len(unreadable) > _NAMED_UNREADABLE:
        lines.append(f"  (and {len(unreadable) - _NAMED_UNREADABLE} more: --json lists them all)")
    return lines


def _unreadable_count(n: int) -> str:
    return f"{n} unreadable file{'s' if n != 1 else ''} or director{'ies' if n != 1 else 'y'}"


def _partial_note(d: Discovery) -> str:
    """What the verdict line adds when the verdict does not speak for everything (``d.partial``)."""
    parts = [_unreadable_count(len(d.unreadable))] if d.unreadable else []
    k = len(d.unchecked_processes)
    if k:
        parts.append(f"{k} process{'es' if k != 1 else ''} that map{'s' if k == 1 else ''} TARGET")
    return f"; PARTIAL: not checked: {' and '.join(parts)} (listed below)" if parts else ""


def write_check_json(result: CheckResult, stream: TextIO) -> None:
    """Write the JSON document on one line (ASCII-safe, like :func:`write_diff_json`)."""
    stream.write(json.dumps(check_to_json(result), ensure_ascii=True, separators=(", ", ": ")))
    stream.write("\n")


def _problem_line(p: Problem) -> str:
    if p.message is None:
        text = f"(ld.so prints nothing) {p.detail}"
    elif p.silent:
        text = f"(silent; LD_WARN=1 prints:) {p.message}"
    else:
        text = p.message
    return f"{p.when:<10}  {text}"


def _consumer_title(c: ConsumerResult) -> str:
    who = f"pid {c.pid} {c.path}" if c.pid is not None else c.path
    extra = f", plugins: {', '.join(c.plugins)}" if c.plugins else ""
    note = f" ({c.note})" if c.note else ""
    return f"  {who}  [{c.role}{extra}]{note}"


def check_to_text(result: CheckResult, verbose: bool = False) -> List[str]:
    """Human report: the verdict, the consumers NEW breaks with the exact ld.so messages, the rest counted."""
    counts = result.counts()
    checked = len(result.consumers) - counts.get("unaffected", 0)
    broken_by_new = counts.get("incompatible", 0)
    if result.verdict == "incompatible" and broken_by_new:
        head = f"incompatible: NEW breaks {broken_by_new} of {checked} consumer{'s' if checked != 1 else ''}"
    elif result.verdict == "incompatible":
        head = "incompatible: the replacement is refused" if result.refusals else \
            "incompatible: NEW itself cannot be loaded here"
    else:
        head = f"compatible: NEW breaks none of the {checked} consumer{'s' if checked != 1 else ''} checked"
    diff_counts = result.diff.counts()
    lines = [
        head + _partial_note(result.discovery),
        f"  target: {result.target}",
        f"  new:    {result.new}",
        "  changes: " + ", ".join(f"{diff_counts[s]} {s}" for s in SEVERITIES) + " (soswap diff TARGET NEW)",
    ]
    if result.refusals:
        lines.append("")
        lines.append("refused whatever the consumers:")
        for c in result.refusals:
            lines.append(f"  {c.kind}: {c.detail}")
    for verdict in ("incompatible", "broken"):
        group = [c for c in result.consumers if c.verdict == verdict]
        if not group:
            continue
        lines.append("")
        lines.append(f"{_VERDICT_TITLES[verdict]} ({len(group)}):")
        for c in group:
            lines.append(_consumer_title(c))
            if verdict == "incompatible":
                shown = list(c.problems)
            else:  # what it already dies of with OLD
                shown = [next((p for p in c.baseline if p.fatal), c.baseline[0])] if c.baseline else []
            for p in shown:
                lines.append(f"    {_problem_line(p)}")
            more = len(c.baseline) - len(shown) if verdict == "broken" else 0
            if more > 0:
                lines.append(f"    (and {more} more with OLD: --json lists them)")
    s = result.self_check
    if s is not None and s.verdict in ("incompatible", "review"):
        lines.append("")
        why = f" ({s.note})" if s.verdict == "review" and s.note else ""
        where = f" in {s.root}" if s.root else ""
        lines.append(f"NEW itself at {s.path}{where}: {s.verdict}{why}")
        for p in s.problems:
            lines.append(f"    {_problem_line(p)}")
    compat = [c for c in result.consumers if c.verdict == "compatible"]
    reviewed = [c for c in compat if c.note.startswith("review:")]
    if reviewed:  # shown without --verbose: ELF cannot tell whether these consumers are hurt (the note says why)
        lines.append("")
        lines.append(f"compatible, to review ({len(reviewed)}): whether NEW hurts these consumers depends on what "
                     "ELF does not record (the note says what to check)")
        lines.extend(_consumer_title(c) for c in reviewed)
    if compat:
        lines.append("")
        if verbose:
            lines.append(f"compatible ({len(compat)}):")
            lines.extend(_consumer_title(c) for c in compat)
        else:
            lines.append(f"compatible: {len(compat)} consumer{'s' if len(compat) != 1 else ''} (--verbose lists them)")
    unaffected = [c for c in result.consumers if c.verdict == "unaffected"]
    if unaffected:
        lines.append("")
        lines.append(f"{_VERDICT_TITLES['unaffected']} ({len(unaffected)}):")
        lines.extend(_consumer_title(c) for c in unaffected)
    skipped = result.discovery.unchecked_processes
    if skipped:  # a process that maps TARGET and was not checked: the verdict does not speak for it
        lines.append("")
        lines.append(f"not checked: these processes map TARGET ({len(skipped)}):")
        lines.extend(f"  pid {pid}: {why}" for pid, why in skipped)
    lines.extend(unreadable_lines(result.discovery.unreadable,
                                  "not checked: could not be read, may be consumers of TARGET"))
    lines.append("")
    lines.append("consumers from: " + _discovery_text(result))
    if result.verdict == "compatible" and result.diff.breaking:
        lines.append(f"note: {len(result.diff.breaking)} breaking ELF-level change(s) hit none of the consumers "
                     "checked (a program not found here may still use them: soswap diff TARGET NEW)")
    lines.append("ELF-level only: signatures, struct layouts and vtable slots are not compared (docs/check.md).")
    return lines


def _discovery_text(result: CheckResult) -> str:
    d = result.discovery
    by_source: Dict[str, int] = {}
    for c in result.consumers:
        by_source[c.source] = by_source.get(c.source, 0) + 1
    names = {"named": "named files", "scope": "--scope directories", "system": "system directories",
             "processes": "running processes", "pid": "--pid"}
    parts = []
    for src in d.sources:
        key = "process" if src in ("processes", "pid") else src
        n = by_source.get(key, 0)
        text = f"{names.get(src, src)} ({n})"
        if src == "processes":
            skipped = d.unchecked_processes
            if skipped:
                text = f"{names[src]} ({n}; {len(skipped)} not checked)"
        parts.append(text)
    out = ", ".join(parts) if parts else "none"
    if d.shortcuts:
        out += f"; {d.shortcuts} proved safe by the diff alone (not bound: --full binds them)"
    if d.index_stats is not None:
        st = d.index_stats
        where = d.index_path or "in memory"
        out += (f"; rdeps index {where}: {st.get('files')} ELF files, {st.get('reread')} re-read, "
                f"{st.get('trees')} trees updated")
        if st.get("rebuilt"):
            out += f", rebuilt ({st['rebuilt']})"
        if st.get("save_error"):
            out += f", not saved ({st['save_error']})"
    return out


# -- soswap rdeps -----------------------------------------------------------------------------------------


def rdeps_to_json(library: str, soname: Optional[str], dependents: List[Dependent], index_path: Optional[str],
                  stats: Dict[str, Any], unreadable: Sequence[Tuple[str, str]] = ()) -> Dict[str, Any]:
    """The JSON object of ``soswap rdeps --json`` (docs/json-abi.md). ``unreadable``: what the walk could not
    read, as ``(path, why)`` (the answer is then ``partial``)."""
    summary = {"program": 0, "plugin": 0, "library": 0}
    for d in dependents:
        summary[d.role] = summary.get(d.role, 0) + 1
    index = {"path": index_path}
    index.update(stats)
    return {
        "library": library,
        "soname": soname,
        "summary": summary,
        "dependents": [{"path": d.path, "role": d.role, "direct": d.direct, "soname": d.soname,
                        "fatal": d.fatal} for d in dependents],
        "partial": bool(unreadable),
        "unreadable": unreadable_to_json(unreadable),
        "index": index,
    }


def rdeps_to_text(library: str, soname: Optional[str], dependents: List[Dependent], index_path: Optional[str],
                  stats: Dict[str, Any], unreadable: Sequence[Tuple[str, str]] = ()) -> List[str]:
    """Human report of ``soswap rdeps``: the count, the dependents by role, what could not be read, the index."""
    doc = rdeps_to_json(library, soname, dependents, index_path, stats, unreadable)
    s = doc["summary"]
    name = f" ({soname})" if soname else ""
    partial = (f"; PARTIAL: {_unreadable_count(len(unreadable))} (listed below)" if unreadable else "")
    lines = [f"{library}{name}: {len(dependents)} dependents ({s['program']} programs, {s['plugin']} plugins, "
             f"{s['library']} libraries){partial}"]
    titles = {"program": "programs", "plugin": "plugins (shared libraries no indexed file loads: dlopen'ed)",
              "library": "libraries (loaded by other indexed files)"}
    for role in ("program", "plugin", "library"):
        group = [d for d in dependents if d.role == role]
        if not group:
            continue
        lines.append("")
        lines.append(f"{titles[role]}:")
        for d in group:
            flags = ["direct" if d.direct else "indirect"]
            if d.fatal:
                flags.append(f"does not start: {d.fatal}")
            lines.append(f"  {d.path}  ({'; '.join(flags)})")
    lines.extend(unreadable_lines(unreadable, "not read: these may load LIB"))
    lines.append("")
    where = index_path or "in memory"
    lines.append(f"index: {where} ({stats.get('files')} ELF files, {stats.get('reread')} re-read, "
                 f"{stats.get('trees')} trees updated, {stats.get('seconds')} s"
                 + (f", not saved ({stats['save_error']})" if stats.get("save_error") else "") + ")")
    return lines
