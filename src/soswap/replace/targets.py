"""What to install where: command-line forms, the manifest format, and the symlink policy.

Forms (as install(1)): ``SRC DEST`` (DEST is not a directory), ``SRC... DIR`` (each SRC goes to DIR/basename),
or a manifest. A destination that is a symlink is resolved: the file at the end of the chain is replaced and
the links are kept (``replace_link`` replaces the link itself with a regular file instead).
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import List, Optional, Sequence

from soswap.errors import ReplaceError, UsageError, raise_if_exhausted
from soswap.replace.modespec import parse_group, parse_mode, parse_owner
from soswap.textfile import read_regular
from soswap.tuples import NamedTuple

#: Largest manifest read (a manifest is a list of paths, not data).
MANIFEST_MAX = 16 << 20


class Request(NamedTuple):
    """Install ``source`` as ``dest`` (a file path, never a directory); per-file mode/owner override -m/-o/-g."""

    source: str
    dest: str
    mode: Optional[int] = None
    uid: Optional[int] = None
    gid: Optional[int] = None


class Target(NamedTuple):
    """A request resolved: ``path`` is the name that will be renamed over (symlinks followed unless the link
    itself is replaced), ``requested`` the destination as given."""

    request: Request
    path: str
    requested: str

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def requests_from_args(paths: Sequence[str], make_dirs: bool) -> List[Request]:
    """``SRC DEST`` or ``SRC... DIR`` from the positional arguments (at least two)."""
    if len(paths) < 2:
        raise UsageError("need a source and a destination (SRC DEST, SRC... DIR, or --manifest FILE)")
    *sources, dest = paths
    is_dir = os.path.isdir(dest)
    if len(sources) > 1 or is_dir or (make_dirs and dest.endswith("/")):
        if not is_dir and not make_dirs:
            raise UsageError(f"target {dest!r} is not a directory" + (
                "" if os.path.exists(dest) else " (use -D to create it)"))
        return [Request(s, os.path.join(dest, os.path.basename(s.rstrip("/")))) for s in sources]
    if dest.endswith("/"):
        raise UsageError(f"target {dest!r} is not a directory")
    return [Request(sources[0], dest)]


def _without_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a word outside quotes, as sh reads it (``lib#1.so`` is one word;
    shlex's ``comments=True`` would cut it)."""
    quote = ""
    escaped = False
    word_start = True  # after unquoted, unescaped blanks
    for i, c in enumerate(line):
        at_start, word_start = word_start, False
        if escaped:
            escaped = False
        elif quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"':
                escaped = True
        elif c == "\\":
            escaped = True
        elif c in "'\"":
            quote = c
        elif c in " \t":
            word_start = True
        elif c == "#" and at_start:
            return line[:i]
    return line


def read_manifest(path: str) -> List[Request]:
    """Parse a manifest: one ``SRC DEST [mode=MODE] [owner=USER] [group=GROUP]`` per line, shell-quoted;
    blank lines and ``#`` comments ignored. Relative SRC/DEST are relative to the manifest's directory. A
    DEST ending in ``/`` is a directory (the file keeps its name)."""
    try:  # a pipe is read to its end; a FIFO nobody writes to reads as empty rather than block the open (fifo(7))
        raw = read_regular(path, MANIFEST_MAX + 1, pipes=True)
    except OSError as exc:
        raise_if_exhausted(exc, path)
        raise UsageError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    if len(raw) > MANIFEST_MAX:
        raise UsageError(f"{path}: manifest larger than {MANIFEST_MAX} bytes")
    if b"\0" in raw:
        raise UsageError(f"{path}: not a text manifest (contains NUL bytes)")
    base = os.path.dirname(os.path.abspath(path))
    out: List[Request] = []
    for lineno, line in enumerate(raw.decode("utf-8", "surrogateescape").splitlines(), 1):
        try:
            words = shlex.split(_without_comment(line))
        except ValueError as exc:
            raise UsageError(f"{path}:{lineno}: {exc}") from None
        if not words:
            continue
        if len(words) < 2:
            raise UsageError(f"{path}:{lineno}: expected 'SRC DEST [mode=MODE] [owner=USER] [group=GROUP]'")
        src, dest = (os.path.join(base, w) for w in words[:2])
        if words[1].endswith("/"):
            dest = os.path.join(dest, os.path.basename(src))
        mode = uid = gid = None
        given = set()
        for opt in words[2:]:
            key, sep, value = opt.partition("=")
            if not sep or not value:
                raise UsageError(f"{path}:{lineno}: bad option {opt!r} (mode=, owner=, group=)")
            if key in given:  # which one was meant is not for soswap to guess
                raise UsageError(f"{path}:{lineno}: {key}= given twice")
            given.add(key)
            try:
                if key == "mode":
                    mode = parse_mode(value)
                elif key == "owner":
                    uid = parse_owner(value)
                elif key == "group":
                    gid = parse_group(value)
                else:
                    raise UsageError(f"unknown option {key!r} (mode=, owner=, group=)")
            except UsageError as exc:
                raise UsageError(f"{path}:{lineno}: {exc}") from None
        out.append(Request(src, dest, mode, uid, gid))
    if not out:
        raise UsageError(f"{path}: the manifest lists no files")
    return out


def resolve(request: Request, replace_link: bool, make_dirs: bool) -> Target:
    """Apply the symlink policy and canonicalize the directory (the journal records absolute paths)."""
    dest = os.path.abspath(request.dest)
    if os.path.basename(dest) in ("", ".", ".."):
        raise UsageError(f"{request.dest!r}: not a file name")
    parent = os.path.dirname(dest)
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ReplaceError(f"{request.dest}: {exc.strerror}") from None
    if st is not None and stat.S_ISLNK(st.st_mode) and not replace_link:
        try:
            os.stat(dest)
        except FileNotFoundError:
            pass  # dangling: said below, with where it points
        except OSError as exc:  # ELOOP: a loop, or a chain longer than the kernel follows
            raise ReplaceError(f"{request.dest}: a symbolic link that cannot be followed ({exc.strerror}); use "
                               "--replace-link to replace the link itself") from None
        real = os.path.realpath(dest)
        if not os.path.lexists(real):
            raise ReplaceError(f"{request.dest}: a dangling symbolic link (to {real}); use --replace-link to "
                               "replace the link itself")
        return Target(request, real, dest)
    real_parent = os.path.realpath(parent)
    if not os.path.isdir(real_parent) and not make_dirs:
        raise ReplaceError(f"{parent}: no such directory (use -D to create it)")
    return Target(request, os.path.join(real_parent, os.path.basename(dest)), dest)
