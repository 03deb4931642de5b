"""Shared output helpers: JSON to stdout, and plain-text tables."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, List, Optional, Sequence, TextIO

# error_line lives in soswap.errors (the CLI prints it without importing this package); kept importable here
from soswap.errors import error_line as error_line
from soswap.errors import escape_controls


def print_json(obj: Any, stream: Optional[TextIO] = None) -> None:
    """Write ``obj`` as JSON (:func:`json_text`; ASCII-safe: undecodable path bytes appear as ``\\udcXX``
    escapes)."""
    out = stream or sys.stdout
    out.write(json_text(obj))
    out.write("\n")


#: Objects and lists down to this depth get a line per member; deeper values are written on one line.
LINE_DEPTH = 2
_encode = json.JSONEncoder(ensure_ascii=True, check_circular=False).encode


class RawJSON(str):
    """One value's JSON text, made by :func:`encoded`: :func:`json_text` writes it as it is. A worker process
    encodes its results itself (in parallel, and a string is cheap to send back to the parent)."""


def encoded(obj: Any) -> RawJSON:
    """``obj`` as the one line :func:`json_text` writes for a value at :data:`LINE_DEPTH` or deeper."""
    return RawJSON(_encode(obj))


def json_text(obj: Any, depth: int = 0) -> str:
    """``obj`` as JSON with the members of the outer two levels on lines of their own (two spaces per level)
    and each deeper value on one line: a thousand results read one per line. Every deeper value is encoded
    by the C encoder; ``json.dump(indent=2)`` runs the pure-Python one, 5-6 times slower on big documents
    (0.28 s against 0.05 s for `tree --json` on 1,064 programs)."""
    if isinstance(obj, RawJSON):
        return str(obj)
    if depth >= LINE_DEPTH or not obj or not isinstance(obj, (dict, list, tuple)):
        return _encode(obj)
    pad = "\n" + "  " * (depth + 1)
    if isinstance(obj, dict):
        # keys as json writes them: strings, and the JSON text of numbers, true, false and null as strings
        body = ("," + pad).join(f"{_encode(k if isinstance(k, str) else _encode(k))}: {json_text(v, depth + 1)}"
                                for k, v in obj.items())
        return "{" + pad + body + "\n" + "  " * depth + "}"
    body = ("," + pad).join(json_text(v, depth + 1) for v in obj)
    return "[" + pad + body + "\n" + "  " * depth + "]"


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (:func:`soswap.errors.escape_controls`): a file name with a
    newline stays on its line of a report."""
    return escape_controls(text)


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
