"""The directories whose ELF files are the system's consumers: program directories (``PATH``, libexec) and
library directories (every directory of ld.so.cache, and ld.so's trusted system directories).

Program directories are read flat (``PATH`` semantics); library and libexec directories recursively (plugins
live in subdirectories: gconv, security, python dist-packages...). Each directory is canonicalised, and a
directory inside a recursive one is dropped (it is walked already).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from typing import Dict, List, Mapping, Optional, Sequence

from soswap.errors import SoswapError, UsageError, raise_if_exhausted
from soswap.loader import Profile
from soswap.tuples import NamedTuple

#: Added to ``$PATH``: the directories a root shell, a package hook or a unit has on its PATH.
DEFAULT_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
#: Helper programs outside PATH (walked recursively).
LIBEXEC_DIRS = ("/usr/libexec", "/usr/local/libexec")


class Top(NamedTuple):
    """A directory the index covers: ``recursive`` or flat."""

    path: str
    recursive: bool


def canonical_tops(tops: Sequence[Top]) -> List[Top]:
    """Real paths, existing directories only, duplicates and directories inside a recursive one dropped
    (unless on another file system: a mount point the walk of the outer one does not enter); a directory given
    both flat and recursive is recursive."""
    wanted: Dict[str, bool] = {}
    for t in tops:
        if t.path and os.path.isabs(t.path):
            wanted[t.path] = wanted.get(t.path, False) or t.recursive
    best: Dict[str, bool] = {}
    for path, recursive in wanted.items():
        real = os.path.realpath(path)
        if not _directory_or_denied(real):
            continue
        # never walk the whole file system: "/" is read flat
        best[real] = (best.get(real, False) or recursive) and real != "/"
    recursive_dirs = sorted(p for p, r in best.items() if r)
    out = []
    for p in sorted(best):
        if any(p != r and _inside(p, r) and _same_device(p, r) for r in recursive_dirs):
            continue
        out.append(Top(p, best[p]))
    return out


def _directory_or_denied(path: str) -> bool:
    """``path`` is a directory, or may be one this user cannot look up (``EACCES``: a parent it cannot search):
    kept, so that the walk says it could not read it (:meth:`soswap.abi.rdeps.RdepsIndex.unreadable`) instead
    of leaving it out unsaid."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as exc:
        return exc.errno in (errno.EACCES, errno.EPERM)


def scope_directory(path: str) -> str:
    """The absolute path of a ``--scope`` directory; :class:`UsageError` when it is not one, or cannot be listed
    (the directory asked for: an error, not a partial answer)."""
    if not path:
        raise UsageError("--scope: empty directory name")
    try:
        with os.scandir(path):
            pass
    except NotADirectoryError:
        raise UsageError(f"--scope {path}: not a directory") from None
    except OSError as exc:
        raise_if_exhausted(exc, path)
        raise UsageError(f"--scope {path}: {exc.strerror or exc}") from None
    return os.path.abspath(path)


def _same_device(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return True


def canonical_path(path: str) -> str:
    """``path`` with its directory resolved and its own name kept (a link stays the link): one name for a file
    reached through directory aliases (merged /usr: /lib/x.so is /usr/lib/x.so)."""
    head, name = posixpath.split(os.path.abspath(path))
    return posixpath.join(os.path.realpath(head), name)


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def under(path: str, top: Top) -> bool:
    """True when ``path`` (a file) belongs to ``top``: in it (flat) or anywhere below it (recursive)."""
    if top.recursive:
        return _inside(path, top.path)
    return posixpath.dirname(path) == top.path


def system_tops(profile: Profile, environ: Optional[Mapping[str, str]] = None) -> List[Top]:
    """The system's program and library directories (see the module docstring)."""
    env = os.environ if environ is None else environ
    tops: List[Top] = []
    for d in (env.get("PATH") or "").split(":"):
        if d.startswith("/"):
            tops.append(Top(d, False))
    tops.extend(Top(d, False) for d in DEFAULT_PATH)
    tops.extend(Top(d, True) for d in LIBEXEC_DIRS)
    tops.extend(Top(d.rstrip("/") or "/", True) for d in profile.system_dirs)
    try:
        entries = profile.ldcache.entries
    except SoswapError:
        entries = ()
    cache_dirs = set()
    for e in entries:
        d = posixpath.dirname(e.value)
        if e.hwcaps_subdir and "/glibc-hwcaps/" in d:
            d = d.split("/glibc-hwcaps/", 1)[0]
        if d:
            cache_dirs.add(d)
    tops.extend(Top(d, True) for d in sorted(cache_dirs))
    return canonical_tops(tops)
