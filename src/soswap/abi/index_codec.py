"""The in-memory data of the rdeps index and its columnar layout in the index file.

The file has two parts (see :mod:`soswap.cachefile`):

* the **core**, read by every run: per directory its name, parent, inode, ctime, subdirectories and ELF files;
  per ELF file its key, type, SONAME, tree and direct dependencies (member ids), fatal message and error; the
  members (the objects trees load) with their keys; the loader profile and environment fingerprints; the
  directories asked for; the *watched* directories (every directory a tree's searches listed) with their
  inode and ctime; the *probed* paths (every path a tree's searches ``stat``-ed) with what ``stat`` gave;
* the **extras**, read only when something changed: per directory the names that are neither subdirectories
  nor ELF files (symlinks, scripts, data: 95 % of the names), per ELF file the names its tree requested,
  ld.so.cache's entries, and the names of each watched directory as the searches saw them. A warm run in which
  nothing changed never decodes them.

Integer columns are little-endian arrays in base64 (one JSON string each: no Python object per number until
it is used); string columns are JSON lists; a directory's list of names is one string joined with ``/`` (a
name cannot contain one). Every column is checked on decoding (types, lengths, every reference in range):
anything wrong raises ``ValueError``/``TypeError``/``KeyError``/``IndexError``, and the caller rebuilds.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import sys
from array import array
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from soswap.digest import sha256_hex

#: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of a file
Key = Tuple[int, int, int, int, int]

# A watched directory's row: [st_ino, st_ctime_ns or W_RELIST or W_ABSENT, names "a/b" (W_UNREADABLE: could not
# be listed; None: in the extras, not read yet)]
W_INO, W_CTIME, W_NAMES = range(3)
#: ctime of a watched directory to list again next time (it changed too recently to be trusted)
W_RELIST = -1
#: ctime of a watched path that was no directory (absent, or not a directory)
W_ABSENT = -2
#: names of a watched directory that exists but could not be listed
W_UNREADABLE = "\0"

# A file row: [key or None, type, soname, tree (member ids; None: not computed), direct (member ids), requested
# names "a/b" (None: in the extras, not read yet), fatal message, error]
F_KEY, F_TYPE, F_SONAME, F_TREE, F_DIRECT, F_REQ, F_FATAL, F_ERR = range(8)

PROGRAM = "program"
LIBRARY = "library"
OTHER = "other"
_TYPE_CHAR = {PROGRAM: "p", LIBRARY: "l", OTHER: "o"}
_CHAR_TYPE = {"p": PROGRAM, "l": LIBRARY, "o": OTHER}

_SWAP = sys.byteorder != "little"
_STR = frozenset({str})
_STR_NONE = frozenset({str, type(None)})


class Dirs:
    """The indexed directories, as columns: ``index`` maps a path to its row. A row holds the directory's
    ctime (-1: list it again), inode, subdirectories and ELF files (names joined with ``/``) and its other
    names (None while they are in the unread extras)."""

    __slots__ = ("ctime", "elves", "index", "ino", "others", "path", "subs")

    def __init__(self) -> None:
        self.index: Dict[str, int] = {}
        self.path: List[str] = []
        self.ctime: List[int] = []
        self.ino: List[int] = []
        self.subs: List[str] = []
        self.elves: List[str] = []
        self.others: List[Optional[str]] = []

    def __len__(self) -> int:
        return len(self.index)

    def put(self, d: str, ctime: int, ino: int, subs: str, elves: str, others: Optional[str]) -> int:
        i = self.index.get(d)
        if i is None:
            i = self.index[d] = len(self.path)
            self.path.append(d)
            self.ctime.append(ctime)
            self.ino.append(ino)
            self.subs.append(subs)
            self.elves.append(elves)
            self.others.append(others)
        else:
            self.ctime[i], self.ino[i], self.subs[i], self.elves[i], self.others[i] = ctime, ino, subs, elves, others
        return i

    def drop(self, d: str) -> Optional[int]:
        """Forget ``d``; its row (None if it was not indexed)."""
        return self.index.pop(d, None)


class IndexData:
    """Everything the index holds (see the module docstring)."""

    def __init__(self) -> None:
        self.profile_fp = ""
        self.env_fp = ""
        #: ld.so.cache's entries ({key: [paths]}); None while they are in the unread extras
        self.ldcache: Optional[Dict[str, List[str]]] = {}
        self.ldcache_digest = ldcache_digest({})
        #: {directory asked for: [recursive, last asked for (time.time())]}
        self.tops: Dict[str, List[Any]] = {}
        self.dirs = Dirs()
        #: {path of an ELF file: row (F_*)}
        self.files: Dict[str, List[Any]] = {}
        self.mpaths: List[str] = []
        self.mkeys: List[Optional[Key]] = []
        self.mids: Dict[str, int] = {}
        #: {directory a tree's searches listed: row (W_*)}
        self.watched: Dict[str, List[Any]] = {}
        #: {path a tree's searches stat-ed: its key, or the errno (int) stat failed with, or None (unknown: a
        #: key too recent to trust)}
        self.probed: Dict[str, Any] = {}
        #: the extras part not decoded yet: (raw JSON, its sha256, the files in stored order, the watched
        #: directories in stored order)
        self.pending: Optional[Tuple[bytes, str, List[str], List[str]]] = None


def ldcache_digest(entries: Dict[str, List[str]]) -> str:
    return sha256_hex(json.dumps(entries, sort_keys=True, ensure_ascii=True).encode("ascii"))


# -- integer columns ---------------------------------------------------------------------------------------


def pack(values: Iterable[int], code: str = "q") -> str:
    a = array(code, values)
    if _SWAP:
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode("ascii")


def unpack(text: Any, code: str = "q", length: Optional[int] = None) -> List[int]:
    if type(text) is not str:
        raise TypeError("an integer column that is not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an integer column that is not base64") from None
    a = array(code)
    if len(raw) % a.itemsize:
        raise ValueError("an integer column of a partial length")
    a.frombytes(raw)
    if _SWAP:
        a.byteswap()
    if length is not None and len(a) != length:
        raise ValueError("an integer column of the wrong length")
    return a.tolist()


def _pack_keys(keys: Sequence[Optional[Key]]) -> Dict[str, str]:
    cols: List[List[int]] = [[], [], [], [], []]
    for k in keys:
        if k is None:
            k = (0, 0, -1, 0, 0)
        for c, v in zip(cols, k):
            c.append(v)
    return {"dev": pack(cols[0], "Q"), "ino": pack(cols[1], "Q"), "size": pack(cols[2]), "mtime": pack(cols[3]),
            "ctime": pack(cols[4])}


def _unpack_keys(doc: Dict[str, Any], n: int) -> List[Optional[Key]]:
    cols = (unpack(doc["dev"], "Q", n), unpack(doc["ino"], "Q", n), unpack(doc["size"], "q", n),
            unpack(doc["mtime"], "q", n), unpack(doc["ctime"], "q", n))
    return [None if k[2] < 0 else k for k in zip(*cols)]


def _strings(v: Any, length: Optional[int] = None, types: frozenset = _STR) -> List[Any]:
    if type(v) is not list or (length is not None and len(v) != length):
        raise TypeError("a string column of the wrong type or length")
    if not set(map(type, v)) <= types:
        raise TypeError("a string column with items of the wrong type")
    return v


def _typed(v: Any, t: type) -> Any:
    if type(v) is not t:
        raise TypeError(f"expected {t.__name__}")
    return v


def _ragged(off: List[int], flat: List[int], n: int, limit: int) -> List[List[int]]:
    """Lists of ids stored flat with offsets (``n + 1`` of them)."""
    if len(off) != n + 1 or off[0] != 0 or off[-1] != len(flat):
        raise ValueError("bad offsets")
    if any(a > b for a, b in zip(off, off[1:])):
        raise ValueError("offsets out of order")
    if flat and (min(flat) < 0 or max(flat) >= limit):
        raise IndexError("a reference to a member that does not exist")
    return [flat[a:b] for a, b in zip(off, off[1:])]


def _flatten(lists: Sequence[Sequence[int]]) -> Tuple[str, str]:
    off = [0]
    flat: List[int] = []
    for ids in lists:
        flat.extend(ids)
        off.append(len(flat))
    return pack(off), pack(flat)


# -- the whole index ---------------------------------------------------------------------------------------


def encode(data: IndexData) -> Tuple[Dict[str, Any], Dict[str, Any], List[str]]:
    """(core, extras) of ``data``, whose extras must have been decoded (see :func:`decode_extras`), and the paths
    of the files the core holds, in its order (:func:`decode_core` reads them back in that order)."""
    dirs = data.dirs
    dir_paths = sorted(dirs.index)
    row_of = {p: i for i, p in enumerate(dir_paths)}
    d_parent: List[int] = []
    d_name: List[str] = []
    d_rows = [dirs.index[p] for p in dir_paths]
    for p in dir_paths:
        head, tail = posixpath.split(p)
        parent = row_of.get(head, -1) if tail else -1
        d_parent.append(parent)
        d_name.append(tail if parent >= 0 else p)
    # members still used by a tree, renumbered
    used: Dict[int, int] = {}
    m_path: List[str] = []
    m_key: List[Optional[Key]] = []

    def ref(i: int) -> int:
        j = used.get(i)
        if j is None:
            j = used[i] = len(m_path)
            m_path.append(data.mpaths[i])
            m_key.append(data.mkeys[i])
        return j

    f_dir: List[int] = []
    f_name: List[str] = []
    f_key: List[Optional[Key]] = []
    f_kind: List[str] = []
    f_soname: List[Optional[str]] = []
    f_tree: List[List[int]] = []
    f_direct: List[List[int]] = []
    f_req: List[str] = []
    f_fatal: Dict[str, str] = {}
    f_err: Dict[str, str] = {}
    order: List[str] = []
    for p, e in data.files.items():
        head, tail = posixpath.split(p)
        row = row_of.get(head)
        if row is None or not tail:
            continue  # not in an indexed directory any more
        n = len(f_dir)
        order.append(p)
        f_dir.append(row)
        f_name.append(tail)
        f_key.append(e[F_KEY])
        char = _TYPE_CHAR[e[F_TYPE]]
        f_kind.append(char.upper() if e[F_TREE] is not None else char)
        f_soname.append(e[F_SONAME])
        f_tree.append([ref(i) for i in e[F_TREE]] if e[F_TREE] is not None else [])
        f_direct.append([ref(i) for i in e[F_DIRECT]])
        f_req.append(e[F_REQ] or "")
        if e[F_FATAL]:
            f_fatal[str(n)] = e[F_FATAL]
        if e[F_ERR]:
            f_err[str(n)] = e[F_ERR]
    tree_off, tree = _flatten(f_tree)
    direct_off, direct = _flatten(f_direct)
    ldcache = data.ldcache if data.ldcache is not None else {}
    w_paths = sorted(data.watched)
    w_rows = [data.watched[p] for p in w_paths]
    p_paths = sorted(data.probed)
    p_vals = [data.probed[p] for p in p_paths]
    core = {
        "profile": data.profile_fp, "env": data.env_fp, "ldcache": ldcache_digest(ldcache), "tops": data.tops,
        "dirs": {"parent": pack(d_parent), "name": d_name, "ino": pack((dirs.ino[i] for i in d_rows), "Q"),
                 "ctime": pack(dirs.ctime[i] for i in d_rows), "subs": [dirs.subs[i] for i in d_rows],
                 "elves": [dirs.elves[i] for i in d_rows]},
        "members": {"path": m_path, "key": _pack_keys(m_key)},
        "files": {"dir": pack(f_dir), "name": f_name, "key": _pack_keys(f_key), "kind": "".join(f_kind),
                  "soname": f_soname, "tree_off": tree_off, "tree": tree, "direct_off": direct_off,
                  "direct": direct, "fatal": f_fatal, "err": f_err},
        "watched": {"path": w_paths, "ino": pack((r[W_INO] for r in w_rows), "Q"),
                    "ctime": pack(r[W_CTIME] for r in w_rows)},
        "probed": {"path": p_paths, "key": _pack_keys([v if type(v) is tuple else None for v in p_vals]),
                   "errno": pack(v if type(v) is int else 0 for v in p_vals)},
    }
    extras = {"others": [dirs.others[i] or "" for i in d_rows], "req": f_req, "ldcache": ldcache,
              "watched": [r[W_NAMES] for r in w_rows]}
    return core, extras, order


def decode_core(doc: Dict[str, Any], extras: bytes, extras_sha: str) -> IndexData:
    """The core part, checked; the extras are kept raw for :func:`decode_extras`."""
    data = IndexData()
    data.profile_fp = _typed(doc["profile"], str)
    data.env_fp = _typed(doc["env"], str)
    data.ldcache = None
    data.ldcache_digest = _typed(doc["ldcache"], str)
    for t, v in _typed(doc["tops"], dict).items():
        if not (type(v) is list and len(v) == 2 and type(v[0]) is bool and type(v[1]) in (int, float)):
            raise TypeError("tops")
        data.tops[t] = [v[0], float(v[1])]
    # directories: parents before children (a parent row < the row's own, -1 for an absolute name)
    d = _typed(doc["dirs"], dict)
    names = _strings(d["name"])
    nd = len(names)
    parents = unpack(d["parent"], "q", nd)
    dirs = data.dirs
    paths = dirs.path
    append = paths.append
    for i, parent in enumerate(parents):
        if parent < 0:
            if not names[i].startswith("/"):
                raise ValueError("a top directory that is not absolute")
            append(names[i])
        elif parent < i:
            pp = paths[parent]
            append((pp + "/" if pp != "/" else "/") + names[i])
        else:
            raise ValueError("a directory listed before its parent")
    dirs.index = dict(zip(paths, range(nd)))
    dirs.ino = unpack(d["ino"], "Q", nd)
    dirs.ctime = unpack(d["ctime"], "q", nd)
    dirs.subs = _strings(d["subs"], nd)
    dirs.elves = _strings(d["elves"], nd)
    # a listed name is one path component: an empty, "." or ".." one would make another path of a directory
    # ("bin//app") that no walk finds again (every stored name is in a listing: _check_listed below)
    if not all(map(_sound_listing, dirs.subs)) or not all(map(_sound_listing, dirs.elves)):
        raise ValueError("a name that is not one path component")
    # An unchanged directory is trusted for its listing: the walk descends only into the subdirectories it
    # lists and rechecks only the ELF files it lists. A row its parent does not list, or a file its directory
    # does not list, would never be looked at again (and its dependents would be missed).
    _check_listed(parents, names, dirs.subs, "a directory its parent does not list")
    dirs.others = [None] * nd
    # members: the objects trees load
    m = _typed(doc["members"], dict)
    data.mpaths = _strings(m["path"])
    nm = len(data.mpaths)
    data.mkeys = _unpack_keys(_typed(m["key"], dict), nm)
    data.mids = dict(zip(data.mpaths, range(nm)))
    # files: the ELF files of the directories
    f = _typed(doc["files"], dict)
    fnames = _strings(f["name"])
    nf = len(fnames)
    fdirs = unpack(f["dir"], "q", nf)
    if fdirs and (min(fdirs) < 0 or max(fdirs) >= nd):
        raise IndexError("a file in a directory that does not exist")
    _check_listed(fdirs, fnames, dirs.elves, "an ELF file its directory does not list")
    keys = _unpack_keys(_typed(f["key"], dict), nf)
    kinds = _typed(f["kind"], str)
    if len(kinds) != nf or not set(kinds) <= set("pPlLoO"):
        raise ValueError("bad file kinds")
    sonames = _strings(f["soname"], nf, _STR_NONE)
    trees = _ragged(unpack(f["tree_off"]), unpack(f["tree"]), nf, nm)
    directs = _ragged(unpack(f["direct_off"]), unpack(f["direct"]), nf, nm)
    fatal = _sparse(f["fatal"], nf)
    err = _sparse(f["err"], nf)
    order: List[str] = []
    files = data.files
    for i in range(nf):
        pp = paths[fdirs[i]]
        p = (pp + "/" if pp != "/" else "/") + fnames[i]
        kind = kinds[i]
        files[p] = [keys[i], _CHAR_TYPE[kind.lower()], sonames[i], trees[i] if kind.isupper() else None,
                    directs[i], None, fatal.get(i), err.get(i)]
        order.append(p)
    w = _typed(doc["watched"], dict)
    w_paths = _strings(w["path"])
    nw = len(w_paths)
    if not all(p.startswith("/") for p in w_paths) or len(set(w_paths)) != nw:
        raise ValueError("a watched directory that is not absolute, or twice")
    w_ctimes = unpack(w["ctime"], "q", nw)
    if w_ctimes and min(w_ctimes) < W_ABSENT:
        raise ValueError("a bad ctime of a watched directory")
    data.watched = {p: [ino, ct, None] for p, ino, ct in zip(w_paths, unpack(w["ino"], "Q", nw), w_ctimes)}
    pr = _typed(doc["probed"], dict)
    p_paths = _strings(pr["path"])
    npr = len(p_paths)
    p_keys = _unpack_keys(_typed(pr["key"], dict), npr)
    p_errnos = unpack(pr["errno"], "q", npr)
    data.probed = {p: (e if e > 0 else k) for p, k, e in zip(p_paths, p_keys, p_errnos)}
    data.pending = (extras, extras_sha, order, w_paths)
    return data


def _listed(listing: str) -> List[str]:
    """The names of a ``/``-joined listing (the empty listing lists nothing)."""
    return listing.split("/") if listing else []


def _sound_listing(listing: str) -> bool:
    """Each name of a ``/``-joined listing is one path component."""
    return all(n and n not in (".", "..") for n in _listed(listing))


def _check_listed(owners: List[int], names: List[str], listings: List[str], problem: str) -> None:
    """Every ``names[i]`` (with an owner row ``owners[i]`` >= 0) is in the owner's ``/``-joined listing."""
    listed: Dict[int, frozenset] = {}
    for owner, name in zip(owners, names):
        if owner < 0:
            continue
        names_of = listed.get(owner)
        if names_of is None:
            names_of = listed[owner] = frozenset(_listed(listings[owner]))
        if name not in names_of:
            raise ValueError(problem)


def decode_extras(data: IndexData, doc: Dict[str, Any], files_in_order: List[str], dirs_stored: int,
                  watched_in_order: List[str]) -> None:
    """Fill in what the extras part holds (for the rows that came from the file and still lack it)."""
    others = _strings(doc["others"], dirs_stored)
    if not all(map(_sound_listing, others)):
        raise ValueError("a name that is not one path component")
    req = _strings(doc["req"], len(files_in_order))
    watched_names = _strings(doc["watched"], len(watched_in_order))
    ldcache = {}
    for k, v in _typed(doc["ldcache"], dict).items():
        ldcache[k] = _strings(v)
    if ldcache_digest(ldcache) != data.ldcache_digest:
        raise ValueError("the extras do not belong to the core")
    dirs = data.dirs
    for i in range(dirs_stored):
        if dirs.others[i] is None:
            dirs.others[i] = others[i]
    for p, names in zip(files_in_order, req):
        e = data.files.get(p)
        if e is not None and e[F_REQ] is None:
            e[F_REQ] = names
    for p, names in zip(watched_in_order, watched_names):
        row = data.watched.get(p)
        if row is not None and row[W_NAMES] is None:
            row[W_NAMES] = names
    data.ldcache = ldcache


def _sparse(v: Any, n: int) -> Dict[int, str]:
    out = {}
    for k, text in _typed(v, dict).items():
        i = int(k)
        if not 0 <= i < n or type(text) is not str:
            raise ValueError("a message for a file that does not exist")
        out[i] = text
    return out
