"""Parsing ``/proc/PID/maps`` as bytes.

A line is ``start-end perms offset major:minor inode    path``. The kernel (``show_map_vma``) pads the path to a
fixed column, escapes only ``\\n`` in it (as ``\\012``, via ``seq_file_path(m, file, "\\n")``) and appends
`` (deleted)`` when the dentry is unlinked (``d_path``). Paths may contain spaces and any other byte, so a line
is split on the first five runs of spaces only and the rest is the path, verbatim.
"""

from __future__ import annotations

import os
import re
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from soswap.tuples import NamedTuple

DELETED_SUFFIX = b" (deleted)"

# One maps line after its address field: "perms offset major:minor inode   path". Compiled by re on first use
# (the PROCMAP_QUERY path of the scan never parses maps text this way).
_TAIL_RE = rb"([r-][w-][x-][ps]) [0-9a-f]+ ([0-9a-f]+:[0-9a-f]+) ([0-9]+) +(.*)"

#: (exec flag b"x"/b"-", b"maj:min", b"inode", raw path) of one file-backed line.
Tail = Tuple[bytes, bytes, bytes, bytes]


class Mapping(NamedTuple):
    """One file-backed line of /proc/PID/maps."""

    start: int
    end: int
    perms: bytes  #: e.g. b"r-xp"
    offset: int
    major: int
    minor: int
    inode: int
    path: bytes  #: unescaped, without the " (deleted)" suffix
    deleted: bool  #: the line ended with " (deleted)"
    raw_path: bytes  #: the path exactly as the line shows it

    @property
    def dev(self) -> int:
        return os.makedev(self.major, self.minor)

    @property
    def executable(self) -> bool:
        return self.perms[2:3] == b"x"

    @property
    def accessible(self) -> bool:
        """False for PROT_NONE guard/hole mappings (``---p``), which can never fault on the file."""
        return self.perms[:3] != b"---"


def unescape(raw: bytes) -> bytes:
    """Undo the kernel's ``\\012`` escape of newlines (the only character it escapes in maps)."""
    if b"\\012" in raw:
        return raw.replace(b"\\012", b"\n")
    return raw


def split_deleted(raw: bytes) -> Tuple[bytes, bool]:
    """(path without one trailing " (deleted)", whether it was there)."""
    if raw.endswith(DELETED_SUFFIX):
        return raw[: -len(DELETED_SUFFIX)], True
    return raw, False


def line_tails(data: bytes) -> FrozenSet[bytes]:
    """The distinct lines of a maps file with their address field cut off.

    On 64-bit, almost every address field is "12 hex digits-12 hex digits " (26 bytes), so a slice removes it;
    other widths (non-PIE executables, [vsyscall]) are cut at the first space. Processes running the same
    program then share nearly all their tails, which are parsed once (:func:`parse_tail`) and cached."""
    return frozenset([line[26:] if line[25:26] == b" " else line.partition(b" ")[2] for line in data.split(b"\n")])


def parse_tail(tail: bytes) -> Optional[Tail]:
    """(exec, dev, inode, raw path) of a file-backed tail, or None (anonymous, [heap], anon_inode:, garbage)."""
    m = re.match(_TAIL_RE, tail, re.S)
    if m is None:
        return None
    perms, dev, inode, raw = m.groups()
    if inode == b"0" or not raw.startswith(b"/"):
        return None
    return perms[2:3], dev, inode, raw


def tail_identity(tail: bytes) -> Optional[Tuple[int, int, bytes]]:
    """(dev in st_dev encoding, inode, raw path) of a file-backed tail, else None — without a regex."""
    parts = tail.split(None, 4)
    if len(parts) < 5 or parts[3] == b"0" or not parts[4].startswith(b"/"):
        return None
    major, _, minor = parts[2].partition(b":")
    try:
        return os.makedev(int(major, 16), int(minor, 16)), int(parts[3]), parts[4]
    except ValueError:
        return None


def line_tail(line: bytes) -> bytes:
    """A maps line without its address field (see :func:`line_tails`)."""
    return line[26:] if line[25:26] == b" " else line.partition(b" ")[2]


def file_tails(data: bytes) -> Set[Tail]:
    """The distinct (exec, dev, inode, path) rows of a maps file, without building a Mapping per line."""
    out = set()
    for tail in line_tails(data):
        parsed = parse_tail(tail)
        if parsed is not None:
            out.add(parsed)
    return out


def parse_dev(dev: bytes) -> Tuple[int, int]:
    major, _, minor = dev.partition(b":")
    return int(major, 16), int(minor, 16)


def parse_line(line: bytes) -> Mapping | None:
    """Parse one line; None for anonymous mappings and pseudo names ([heap], [stack], anon_inode:...)."""
    parts = line.split(None, 5)
    if len(parts) < 6:
        return None
    addr, perms, offset, dev, inode = parts[:5]
    # split(None, 5) strips the padding before the path but keeps spaces inside and at the end of it.
    raw_path = parts[5]
    if not raw_path.startswith(b"/") or inode == b"0":
        return None
    start, _, end = addr.partition(b"-")
    major, minor = parse_dev(dev)
    path, deleted = split_deleted(raw_path)
    return Mapping(int(start, 16), int(end, 16), perms, int(offset, 16), major, minor, int(inode),
                   unescape(path), deleted, raw_path)


def file_of(dev: bytes, inode: bytes, raw: bytes) -> Tuple[int, ...]:
    """(st_dev, inode, path) from the "dev", "inode" and "path" fields of a line, by :func:`parse_line`'s
    rules (path unescaped, without " (deleted)"), or () for an anonymous or pseudo mapping."""
    if inode == b"0" or not raw.startswith(b"/"):
        return ()
    try:
        major, minor = parse_dev(dev)
        return os.makedev(major, minor), int(inode), unescape(split_deleted(raw)[0])
    except ValueError:
        return ()


def parse_maps(data: bytes) -> List[Mapping]:
    """Every file-backed mapping of a maps file, in address order."""
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        m = parse_line(line)
        if m is not None:
            out.append(m)
    return out


def lines_containing(data: bytes, needles: Sequence[bytes]) -> bytes:
    """The lines of a maps file that contain one of ``needles`` (none holds a newline), in file order and
    joined by newlines: what is left to parse when only some files matter. C-level searches only; the cost
    follows the number of hits, not of lines."""
    starts = set()
    for needle in needles:
        at = data.find(needle)
        while at >= 0:
            starts.add(data.rfind(b"\n", 0, at) + 1)
            end = data.find(b"\n", at)
            if end < 0:
                break
            at = data.find(needle, end)
    lines = []
    for start in sorted(starts):
        end = data.find(b"\n", start)
        lines.append(data[start:] if end < 0 else data[start:end])
    return b"\n".join(lines)


def maps_form(path: bytes) -> bytes:
    """``path`` as a maps line shows it: ``show_map_vma`` → ``seq_path(..., "\\n")`` escapes newlines as ``\\012``."""
    return path.replace(b"\n", b"\\012")


def group_by_file(mappings: List[Mapping]) -> Dict[Tuple[int, int, bytes, bool], List[Mapping]]:
    """Mappings grouped by (dev, inode, path, deleted): one group per distinct file the process maps."""
    groups: Dict[Tuple[int, int, bytes, bool], List[Mapping]] = {}
    for m in mappings:
        groups.setdefault((m.dev, m.inode, m.path, m.deleted), []).append(m)
    return groups


def mapped_inodes(data: bytes) -> FrozenSet[int]:
    """The inode numbers of every file-backed mapping (for the inode-set queries)."""
    return frozenset(int(t[2]) for t in file_tails(data))
