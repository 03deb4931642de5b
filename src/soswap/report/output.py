"""Shared output helpers: JSON to stdout, and plain-text tables."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, List, Optional, Sequence, TextIO


def print_json(obj: Any, stream: Optional[TextIO] = None) -> None:
    """Write ``obj`` as indented JSON (ASCII-safe: undecodable path bytes appear as ``\\udcXX`` escapes)."""
    out = stream or sys.stdout
    json.dump(obj, out, indent=2, ensure_ascii=True)
    out.write("\n")


def table(rows: Iterable[Sequence[str]], header: Optional[Sequence[str]] = None, indent: str = "") -> List[str]:
    """Left-aligned columns; the last column is not padded."""
    body = [list(map(str, r)) for r in rows]
    if header is not None:
        body.insert(0, list(header))
    if not body:
        return []
    widths = [max(len(r[i]) for r in body if i < len(r)) for i in range(max(len(r) for r in body))]
    lines = []
    for r in body:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines
