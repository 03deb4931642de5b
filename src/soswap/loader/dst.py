"""Dynamic string tokens: ``$ORIGIN``, ``$PLATFORM``, ``$LIB`` and their braced forms (elf/dl-load.c:
``is_dst``, ``_dl_dst_count``, ``_dl_dst_substitute``, ``is_trusted_path_normalize``)."""

from __future__ import annotations

from typing import Optional, Sequence

_NAMES = ("ORIGIN", "PLATFORM", "LIB")


def _is_ident(c: str) -> bool:
    return ("A" <= c <= "Z") or ("a" <= c <= "z") or ("0" <= c <= "9") or c == "_"


def is_dst(text: str, pos: int, ref: str) -> int:
    """``is_dst``: the length of token ``ref`` at ``text[pos:]`` (just after the ``$``), 0 if it is not there.

    The name counts only when the next character cannot continue an identifier; ``${NAME}`` needs the brace.
    """
    curly = pos < len(text) and text[pos] == "{"
    if curly:
        pos += 1
    if not text.startswith(ref, pos):
        return 0
    after = pos + len(ref)
    nxt = text[after] if after < len(text) else ""
    if curly and nxt != "}":
        return 0
    if nxt and _is_ident(nxt):
        return 0
    return len(ref) + 2 if curly else len(ref)


def has_dst(text: str) -> bool:
    """``_dl_dst_count(text) != 0``."""
    pos = text.find("$")
    while pos >= 0:
        for ref in _NAMES:
            n = is_dst(text, pos + 1, ref)
            if n:
                return True
        pos = text.find("$", pos + 1)
    return False


def substitute(text: str, *, origin: Optional[str], platform: Optional[str], lib: str, secure: bool,
               is_executable: bool, trusted_dirs: Sequence[str]) -> str:
    """``_dl_dst_substitute``: expand the tokens of one path element or name; ``""`` when a token has no
    value (unknown origin, no platform) or secure-mode rules reject it — the caller then drops the element.

    ``origin`` None means the loader could not compute it (``l_origin == -1``).
    """
    if "$" not in text:
        return text
    out = []
    i = 0
    n = len(text)
    check_trusted = False
    while i < n:
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        i += 1
        repl: Optional[str] = None
        length = is_dst(text, i, "ORIGIN")
        rejected = False
        if length:
            # In secure mode $ORIGIN must be the whole first component (elf/dl-load.c).
            after = text[i + length] if i + length < n else ""
            if secure and not (i == 1 and after in ("", "/")):
                rejected = True
            else:
                repl = origin
            check_trusted = secure and is_executable
        else:
            length = is_dst(text, i, "PLATFORM")
            if length:
                repl = platform
            else:
                length = is_dst(text, i, "LIB")
                if length:
                    repl = lib
        if repl is not None and not rejected:
            out.append(repl)
            i += length
        elif length:
            return ""
        else:
            out.append("$")
    result = "".join(out)
    if check_trusted and not is_trusted_path(result, trusted_dirs):
        return ""
    return result


def is_trusted_path(path: str, trusted_dirs: Sequence[str]) -> bool:
    """``is_trusted_path_normalize``: after removing ``.``/``..``/``//``, does ``path`` lie under one of the
    system directories (each given with a trailing ``/``)?"""
    if not path:
        return False
    out: list = []
    i = 0
    n = len(path)
    while i < n:
        if path[i] == "/":
            if path.startswith("/..", i) and (i + 3 == n or path[i + 3] == "/"):
                while out and out.pop() != "/":
                    pass
                i += 3
                continue
            if path.startswith("/.", i) and (i + 2 == n or path[i + 2] == "/"):
                i += 2
                continue
            if out and out[-1] == "/":
                i += 1
                continue
        out.append(path[i])
        i += 1
    if not out or out[-1] != "/":
        out.append("/")
    norm = "".join(out)
    return any(norm.startswith(d) for d in trusted_dirs)
