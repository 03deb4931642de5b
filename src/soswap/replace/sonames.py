"""Soname links: after installing ``libfoo.so.1.2.4`` whose DT_SONAME is ``libfoo.so.1``, point the link
``libfoo.so.1`` at it — atomically (a temporary symlink renamed over the old one), never ``unlink`` +
``symlink`` as ldconfig's ``create_links`` does.

The link is flipped only when ldconfig would choose the same file (the highest version, compared as
elf/dl-cache.c ``_dl_cache_libcmp`` does), so a later ``ldconfig`` run leaves it alone.
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Union

from soswap.loader.ldcache import libcmp
from soswap.tuples import NamedTuple


class LinkPlan(NamedTuple):
    """Point ``link`` (a path) at ``target`` (a name in the same directory); ``old_target`` is the current
    link text, or None when the link does not exist yet."""

    link: str
    target: str
    old_target: Optional[str]


def ldconfig_considers(name: str) -> bool:
    """ldconfig makes soname links only for files named ``lib*`` or ``ld-*`` containing ``.so``, and not for
    prelink's temporaries (``….#prelink#``, ``….#prelink#.XXXXXX``) (elf/ldconfig.c, ``search_dir``): a plugin
    ``gateway.so`` or a program with a DT_SONAME gets none."""
    if name.endswith(".#prelink#") or name[-17:-6] == ".#prelink#.":
        return False
    return name.startswith(("lib", "ld-")) and ".so" in name


def plan_soname_link(directory: str, name: str, soname: Optional[str]) -> Union[LinkPlan, str, None]:
    """What to do with the soname link of the library installed as ``directory/name``: a :class:`LinkPlan`,
    a warning string when the link is left alone for a reason the user should know, or None."""
    if not soname or soname == name or "/" in soname or soname in (".", "..") or not ldconfig_considers(name):
        return None
    link = os.path.join(directory, soname)
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        return LinkPlan(link, name, None)
    except OSError as exc:
        return f"soname link {soname} unreadable ({exc.strerror}); left alone"
    if not stat.S_ISLNK(st.st_mode):
        return f"{soname} is a regular file, not a symbolic link; left alone (it shadows {name})"
    try:
        current = os.readlink(link)
    except OSError as exc:
        return f"soname link {soname} unreadable ({exc.strerror}); left alone"
    if current == name or os.path.normpath(os.path.join(directory, current)) == os.path.join(directory, name):
        return None
    current_name = os.path.basename(current)
    dangling = not os.path.exists(os.path.join(directory, current))  # ldconfig chooses among existing files
    if dangling or os.path.dirname(current) not in ("", ".") or libcmp(name, current_name) >= 0:
        # (a dangling link is mended whatever ldconfig would choose: it leads nowhere now)
        higher = None if dangling else _higher_version(directory, name, soname, current_name)
        if higher is not None:
            return (f"{higher} has the SONAME {soname} too and a higher version than {name}; the soname link is "
                    f"left alone (ldconfig would point it at {higher})")
        return LinkPlan(link, name, current)
    return (f"soname link {soname} points to {current}, a higher version than {name}; left alone "
            "(ldconfig would keep the highest version)")


def _higher_version(directory: str, name: str, soname: str, skip: str) -> Optional[str]:
    """Another library of the directory with the same DT_SONAME and a higher version than ``name`` (ldconfig's
    ``search_dir`` keeps, per SONAME, the file whose name compares highest), other than ``skip``; the highest
    one, or None."""
    from soswap.elf import ElfFile
    from soswap.errors import SoswapError

    best: Optional[str] = None
    try:
        entries = os.listdir(directory)
    except OSError:
        return None
    stem = soname.split(".so", 1)[0] + ".so"
    for entry in entries:
        if entry in (name, skip, soname) or not entry.startswith(stem) or not ldconfig_considers(entry):
            continue
        if libcmp(entry, name) <= 0 or (best is not None and libcmp(entry, best) <= 0):
            continue
        path = os.path.join(directory, entry)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode) or ElfFile.open(path).soname != soname:
                continue
        except (OSError, SoswapError):
            continue
        best = entry
    return best
