"""Renderers for ``install``, ``rollback``, ``recover`` and ``history``: human text and JSON (docs/json-install.md).

No decisions here: the engine (:mod:`soswap.replace`) returns values, these functions format them.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, TextIO

from soswap.replace.records import (
    KIND_REMOVE,
    KIND_SYMLINK,
    Change,
    HistoryEntry,
    InodeRecord,
    InstallResult,
    RecoverOutcome,
    superseded_files,
)
from soswap.report.output import one_line, table

INSTALL_SCHEMA = "soswap.install/1"
RECOVER_SCHEMA = "soswap.recover/1"
HISTORY_SCHEMA = "soswap.history/1"


def action_of(ch: Change) -> str:
    """What a change does, in one word: ``replace``, ``create``, ``remove``, ``flip-link``, ``create-link``."""
    if ch.kind == KIND_SYMLINK:
        return "flip-link" if ch.old is not None else "create-link"
    if ch.kind == KIND_REMOVE:
        return "remove"
    return "replace" if ch.old is not None else "create"


def _backup_path(ch: Change, kept: bool) -> Optional[str]:
    if not kept or not ch.backup or ch.old is None:
        return None
    return os.path.join(ch.directory, ch.backup)


def change_to_json(ch: Change, backups_kept: bool) -> Dict[str, Any]:
    return {
        "action": action_of(ch),
        "kind": ch.kind,
        "dest": ch.dest,
        "requested": ch.requested,
        "source": ch.source,
        "old": ch.old.to_json() if ch.old else None,
        "new": ch.new.to_json() if ch.new else None,
        "backup": _backup_path(ch, backups_kept),
        "link_old": ch.link_old,
        "link_new": ch.link_new,
        "method": ch.method,
        "reapplied_flags": ch.flags,
    }


def problem_to_json(p: Any) -> Any:
    to_json = getattr(p, "to_json", None)
    if callable(to_json):
        return to_json()
    return {"message": str(getattr(p, "message", p))}


def recover_to_json(r: RecoverOutcome) -> Dict[str, Any]:
    return {"txid": r.txid, "state_found": r.state_found, "action": r.action, "files": list(r.files),
            "notes": list(r.notes), "warnings": [str(w) for w in r.warnings]}


def _dest_by_inode(result: InstallResult) -> Dict[Any, str]:
    out: Dict[Any, str] = {(rec.dev, rec.ino): path for path, rec in superseded_files(result.changes)}
    out.update({(c.old.dev, c.old.ino): c.dest for c in result.changes if c.old is not None})
    return out


def use_to_json(use: Any, dests: Dict[Any, str]) -> Dict[str, Any]:
    """One process still using a replaced inode (a ``soswap.proc`` FileUse)."""
    unit = getattr(use, "unit", None)
    return {
        "pid": use.pid,
        "exe": use.exe,
        "cmdline": list(use.cmdline),
        "how": list(use.how),
        "dev": use.dev,
        "ino": use.inode,
        "file": dests.get((use.dev, use.inode)),
        "unit": unit.name if unit is not None else None,
    }


def install_to_json(result: InstallResult, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The JSON object of an install or rollback result."""
    after = result.after
    if after is not None:
        dests = _dest_by_inode(result)
        after = [use_to_json(u, dests) for u in after]
    obj: Dict[str, Any] = {
        "schema": INSTALL_SCHEMA,
        "status": result.status,
        "txid": result.txid,
        "changes": [change_to_json(c, result.backups_kept) for c in result.changes],
        "warnings": [{"path": n.path, "message": n.message} for n in result.warnings],
        "recovered": [recover_to_json(r) for r in result.recovered],
        "problems": [problem_to_json(p) for p in result.problems],
        "backups_kept": result.backups_kept,
        "pruned": list(result.pruned),
        "stale": after,
        "rollback_of": result.rollback_of,
    }
    if extra:
        obj.update(extra)
    return obj


def _inode(rec: Optional[InodeRecord]) -> str:
    return "-" if rec is None else str(rec.ino)


def _change_line(ch: Change, dry: bool) -> List[str]:
    action = action_of(ch)
    verb = {
        "replace": "would replace" if dry else "replaced",
        "create": "would create" if dry else "created",
        "remove": "would remove" if dry else "removed",
        "flip-link": "would flip" if dry else "flipped",
        "create-link": "would link" if dry else "linked",
    }[action]
    if ch.kind == KIND_SYMLINK or (ch.kind == KIND_REMOVE and ch.link_old is not None):
        was = f" (was -> {ch.link_old})" if ch.link_old and action != "remove" else ""
        target = f" -> {ch.link_new}" if ch.link_new else ""
        return [verb, f"{ch.dest}{target}{was}"]
    detail = ""
    if not dry:
        detail = f"inode {_inode(ch.old)} -> {_inode(ch.new)}" + (f", {ch.method}" if ch.method else "")
    elif ch.old is not None:
        detail = f"inode {ch.old.ino}"
    src = f" from {ch.source}" if ch.source and action != "remove" else ""
    return [verb, f"{ch.dest}{src}" + (f" ({detail})" if detail else "")]


def install_to_text(result: InstallResult, restarting: bool = False) -> List[str]:
    """Human summary for standard output (warnings are rendered separately, for standard error)."""
    lines: List[str] = []
    for r in result.recovered:
        lines.append(f"recovered interrupted transaction {r.txid}: {r.action}")
    dry = result.status in ("dry-run", "refused")
    if result.status == "refused":
        lines.append(f"refused: {len(result.problems)} problem{'s' if len(result.problems) != 1 else ''} found by "
                     "the preflight check; nothing was changed (use --force to install anyway)")
        for p in result.problems:
            lines.append(f"  {getattr(p, 'message', p)}")
        lines.append("the install would have done:")
    elif result.status == "dry-run":
        what = f"; would roll back transaction {result.rollback_of}" if result.rollback_of else ""
        lines.append(f"dry run: nothing was changed{what}")
    elif result.rollback_of:
        lines.append(f"rolled back transaction {result.rollback_of} (as transaction {result.txid}):")
    elif result.txid:
        lines.append(f"installed (transaction {result.txid}):")
    lines.extend(table([_change_line(c, dry) for c in result.changes], indent="  "))
    if result.status in ("installed", "rolled-back") and result.txid:
        if result.backups_kept and any(c.old is not None for c in result.changes):
            lines.append(f"previous versions kept: soswap rollback {result.txid}")
        if result.pruned:
            lines.append(f"backups pruned: {', '.join(result.pruned)}")
    if result.problems and result.status != "refused":
        lines.append(f"installed despite {len(result.problems)} preflight problem(s) (--force):")
        lines.extend(f"  {getattr(p, 'message', p)}" for p in result.problems)
    if result.after:
        dests = _dest_by_inode(result)
        n = len({u.pid for u in result.after})
        lines.append(f"{n} process{'es still run' if n != 1 else ' still runs'} a replaced version "
                     + ("(--restart was given):" if restarting else "(restart, or use --restart):"))
        rows = []
        for u in result.after:
            unit = getattr(u, "unit", None)
            rows.append([str(u.pid), unit.name if unit is not None else "-", u.exe or "?",
                         dests.get((u.dev, u.inode), f"inode {u.inode}")])
        lines.extend(table(rows, header=["PID", "UNIT", "EXE", "OLD FILE"], indent="  "))
    elif result.after is not None and result.status in ("installed", "rolled-back"):
        lines.append("no running process uses the replaced versions")
    return lines


def emit(lines: Sequence[str], stream: Optional[TextIO] = None) -> None:
    """Write lines; a control character in a file name is escaped (:func:`one_line`), and file names that are
    not valid in the locale's encoding are written as their bytes (surrogateescape) instead of failing (stdout
    is strict in a non-UTF-8-mode UTF-8 locale)."""
    out = stream or sys.stdout
    text = "\n".join(map(one_line, lines)) + "\n"
    try:
        out.write(text)
    except UnicodeEncodeError:
        out.flush()
        encoding = getattr(out, "encoding", None) or "utf-8"
        out.buffer.write(text.encode(encoding, "surrogateescape"))  # type: ignore[attr-defined]
        out.buffer.flush()  # type: ignore[attr-defined]


def warning_lines(result: InstallResult) -> List[str]:
    return [f"soswap: warning: {n}" for n in result.warnings]


def recover_warning_lines(outcomes: Sequence[RecoverOutcome]) -> List[str]:
    return [f"soswap: warning: {w}" for r in outcomes for w in r.warnings]


def recover_to_text(outcomes: Sequence[RecoverOutcome]) -> List[str]:
    if not outcomes:
        return ["nothing to recover"]
    lines = []
    for r in outcomes:
        what = {"undone": "undone: every file is its previous version again",
                "completed": "completed: it had committed; cleanup finished",
                "cleaned": "cleaned: it had changed nothing; temporary files removed"}.get(r.action, r.action)
        lines.append(f"transaction {r.txid} ({r.state_found}): {what}")
        lines.extend(f"  {f}" for f in r.files)
        lines.extend(f"  note: {n}" for n in r.notes)
    return lines


def recover_list_to_json(outcomes: Sequence[RecoverOutcome]) -> Dict[str, Any]:
    return {"schema": RECOVER_SCHEMA, "recovered": [recover_to_json(r) for r in outcomes]}


def history_to_json(entries: Sequence[HistoryEntry], state_dir: str) -> Dict[str, Any]:
    return {
        "schema": HISTORY_SCHEMA,
        "state_dir": state_dir,
        "transactions": [
            {
                "txid": e.txid,
                "kind": e.kind,
                "state": e.state,
                "started": e.started,
                "finished": e.finished,
                "backups": e.backups,
                "rollback_of": e.rollback_of,
                "rolled_back_by": e.rolled_back_by,
                "argv": list(e.argv),
                "changes": [change_to_json(c, e.backups == "kept") for c in e.changes],
            }
            for e in entries
        ],
    }


def history_to_text(entries: Sequence[HistoryEntry], verbose: bool = False) -> List[str]:
    if not entries:
        return ["no transactions"]
    rows = []
    for e in entries:
        state = e.state
        if e.rolled_back_by:
            state += f", rolled back by {e.rolled_back_by}"
        if e.rollback_of:
            state += f", rollback of {e.rollback_of}"
        files = [c.dest for c in e.changes if c.kind != KIND_SYMLINK]
        shown = files[0] if files else (e.changes[0].dest if e.changes else "-")
        if len(e.changes) > 1:
            shown += f" (+{len(e.changes) - 1})"
        rows.append([e.txid, e.started[:19].replace("T", " "), e.kind, state, f"backups {e.backups}", shown])
    lines = table(rows, header=["TXID", "STARTED (UTC)", "KIND", "STATE", "BACKUPS", "FILES"])
    if verbose:
        for e in entries:
            lines.append("")
            lines.append(f"{e.txid}:")
            lines.extend(table([_change_line(c, False) for c in e.changes], indent="  "))
    return lines
