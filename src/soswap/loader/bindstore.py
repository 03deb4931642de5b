"""Binding results kept between runs: the outcome of :meth:`Loader.bind` for a load result already bound by an
earlier run, when nothing it depends on has changed.

What a binding result depends on, all of it in the key:

* the code: soswap's version and the size and mtime of every module of ``soswap.elf`` and ``soswap.loader``
  (a store written by other code is dropped whole);
* the settings binding reads: the glibc version and ISA level of the profile, ``LD_DYNAMIC_WEAK``,
  ``LD_BIND_NOW`` and the ``bind_now``/``warn``/``relocate`` arguments;
* the load result's shape: every object's names, paths, kind, found flag and needed entries (what binding
  reads of it), the scope, the ``l_initfini`` order, the load failures, trace and secure mode, argv[0];
* the contents of every object's file, by (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) at the time it
  was read. A replaced file has another inode; a file rewritten in place has another ctime, even when its
  size and mtime were put back (no system call sets the ctime).

The search itself (which file a name resolves to) is never kept: every run loads afresh, so a library that
appears earlier in a search path, a new ld.so.cache or another environment changes the key.

Racy files: file times have the kernel's coarse clock granularity, so a file written twice within one tick
can keep its ctime. A result is stored only when every file it read changed at least :data:`RACY_NS` before
this run started (git's "racily clean" rule): a later write then gives a later ctime.

The file lives in the cache directory (:func:`soswap.state.cache_dir`) as ``bindings.json`` and is read and
written by :mod:`soswap.cachefile`: JSON with a checksum, only if owned by this user or root and not writable
by others, replaced atomically, rebuilt when unusable. Nothing in it is evaluated; every entry is type-checked
before use.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from soswap import __version__
from soswap.cachefile import Unusable, decode_part, read_document, write_document
from soswap.digest import blake2b, sha256_hex
from soswap.elf.source import Identity, identity_of
from soswap.loader import model as M

FORMAT = "soswap-bindings"
VERSION = 1
FILE = "bindings.json"
#: Oldest entries beyond this many are dropped when the file is written.
MAX_ENTRIES = 20_000
#: A file that changed less than this before the run started is not trusted to change its ctime again.
RACY_NS = 2_000_000_000

_NONE = type(None)
#: Field types of Failure and Unresolved, in order (entries that do not match are ignored).
_FAILURE_TYPES: Tuple[tuple, ...] = (
    (str,), (str,), (int, _NONE), (str,), (str,), (str,), (bool,), (str, _NONE), (str, _NONE), (int, _NONE), (bool,))
_UNRESOLVED_TYPES: Tuple[tuple, ...] = ((int,), (str,), (str, _NONE), (str,), (bool,), (bool,))


def code_fingerprint() -> str:
    """soswap's version and the (name, size, mtime) of the modules a binding result comes from."""
    here = os.path.dirname(os.path.abspath(__file__))
    parts: List[object] = [__version__]
    for d in (os.path.join(os.path.dirname(here), "elf"), here):
        try:
            with os.scandir(d) as it:
                for e in sorted(it, key=lambda e: e.name):
                    if e.name.endswith(".py"):
                        st = e.stat()
                        parts.append((e.name, st.st_size, st.st_mtime_ns))
        except OSError:
            parts.append((d, None))
    return sha256_hex(repr(parts).encode())


class BindStore:
    """The binding results of earlier runs (see the module documentation). Not thread-safe; a forked worker
    hands what it added to its parent with :meth:`take_new` and :meth:`merge`."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: why the file could not be used or written, if it could not (for diagnostics; never fatal)
        self.problem: Optional[str] = None
        self._entries: Optional[Dict[str, Any]] = None
        self._new: Dict[str, Any] = {}
        self._used: Set[str] = set()
        self._code = ""
        self._disk_identity: Optional[Identity] = None
        self._racy_limit = time.time_ns() - RACY_NS
        #: lookups answered from the store, and not
        self.hits = 0
        self.misses = 0
        #: id of a LoadedObject -> (the object, its part of the key): results of one shape share objects
        self._object_text: Dict[int, Tuple[M.LoadedObject, Optional[bytes]]] = {}

    @classmethod
    def in_cache_dir(cls, directory: Optional[str] = None) -> BindStore:
        """The store of this user: ``bindings.json`` in :func:`soswap.state.cache_dir`."""
        from soswap.state import cache_dir

        return cls(os.path.join(cache_dir(directory), FILE))

    # -- reading ----------------------------------------------------------------------------------------------

    def load(self) -> Dict[str, Any]:
        """Read the file (once; done before forking workers so that they share what was read)."""
        if self._entries is None:
            self._code = code_fingerprint()
            self._entries = self._read() or {}
        return self._entries

    def _identity_on_disk(self) -> Optional[Identity]:
        try:
            return identity_of(os.stat(self.path))
        except OSError:
            return None

    def _read(self) -> Optional[Dict[str, Any]]:
        self._disk_identity = self._identity_on_disk()
        parts, problem = read_document(self.path, FORMAT, VERSION)
        if parts is None:
            self.problem = problem
            return None
        try:
            if len(parts) != 1:
                raise Unusable("expected one part")
            doc = decode_part(parts[0])
        except Unusable as exc:
            self.problem = f"corrupt: {exc}"
            return None
        entries = doc.get("entries")
        if doc.get("code") != self._code or not isinstance(entries, dict):
            return None  # written by other code: every entry may be wrong
        return entries

    def key(self, res: M.LoadResult, bind_now: Optional[bool], warn: bool, relocate: bool) -> Optional[str]:
        """The key of binding ``res`` with these arguments, or None when a file has no on-disk identity
        (an in-memory image)."""
        h = blake2b(digest_size=16)
        memo = self._object_text
        for o in res.objects:
            hit = memo.get(id(o))
            if hit is None or hit[0] is not o:
                hit = memo[id(o)] = (o, _object_text(o))
            if hit[1] is None:
                return None
            h.update(hit[1])  # type: ignore[arg-type]
        profile, env = res.profile, res.env
        head = (res.path, res.scope, res.initfini, tuple(map(tuple, res.failures)),
                tuple(res.fatal) if res.fatal is not None else None, res.secure, res.trace, res.argv0, res.static,
                res.substitutes_rejected, profile.glibc_version, profile.isa_level, env.bind_now,
                env.dynamic_weak, bind_now, warn, relocate)
        h.update(repr(head).encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def get(self, key: str, res: M.LoadResult) -> Optional[M.BindResult]:
        """The stored result for ``key`` rebuilt over ``res``, or None."""
        value = self._new.get(key)
        if value is None:
            value = self.load().get(key)
        result = _decode(value, res) if value is not None else None
        if result is None:
            self.misses += 1
            return None
        self.hits += 1
        self._used.add(key)
        return result

    # -- writing ----------------------------------------------------------------------------------------------

    def put(self, key: str, res: M.LoadResult, result: M.BindResult) -> None:
        """Keep ``result`` (unless a file it read changed too recently to be told apart from a later change, or
        some object's references could not be checked: that error is found again each run)."""
        if result.unchecked:
            return
        for o in res.objects:
            fp = o.elf.fingerprint if o.elf is not None else None
            if fp is not None and fp[4] > self._racy_limit:
                return
        self.load()
        self._new[key] = _encode(res, result)

    def take_new(self) -> Dict[str, Any]:
        """The entries added since the last call (a worker process returns them to its parent)."""
        new, self._new = self._new, {}
        return new

    def merge(self, entries: Dict[str, Any]) -> None:
        """Add entries a worker computed (see :meth:`take_new`)."""
        self.load()
        self._new.update(entries)

    def save(self) -> Optional[str]:
        """Write the file if this run added entries. Returns None, or why it could not be written."""
        if not self._new:
            return None
        entries = self.load()
        now = self._identity_on_disk()
        if now is not None and now != self._disk_identity:
            entries = self._read() or {}  # another run wrote meanwhile: keep its entries too
        used = self._used
        merged = {k: v for k, v in entries.items() if k not in used and k not in self._new}
        merged.update((k, entries[k]) for k in used if k in entries)
        merged.update(self._new)
        if len(merged) > MAX_ENTRIES:
            keys = list(merged)
            merged = {k: merged[k] for k in keys[len(keys) - MAX_ENTRIES:]}
        problem = write_document(self.path, FORMAT, VERSION, [{"code": self._code, "entries": merged}])
        if problem is None:
            self._entries = merged
            self._new = {}
        self.problem = problem
        return problem


def _object_text(o: M.LoadedObject) -> Optional[bytes]:
    """What an object contributes to a key; None for an in-memory image (nothing identifies its contents)."""
    fp = None
    if o.elf is not None:
        fp = o.elf.fingerprint
        if fp is None:
            return None
    # what binding.py and versions.py read of a LoadedObject (not its reason, depth, origin or requesters)
    fields = (o.index, o.name, o.names, o.path, o.file, o.kind, o.found, o.needed, o.substituted, o.display, fp)
    return repr(fields).encode("utf-8", "surrogateescape") + b"\0"


def _encode(res: M.LoadResult, result: M.BindResult) -> List[Any]:
    fatal: Any = None
    if result.fatal is not None:
        if result.fatal is res.fatal:
            fatal = "load"
        else:
            fatal = next((n for n, f in enumerate(result.failures) if f is result.fatal), None)
    return [[list(f) for f in result.failures], [list(u) for u in result.unresolved], fatal,
            result.bindings_checked]


def _typed(row: Any, types: Tuple[tuple, ...]) -> bool:
    return (type(row) is list and len(row) == len(types)
            and all(type(v) in t for v, t in zip(row, types)))


def _decode(value: Any, res: M.LoadResult) -> Optional[M.BindResult]:
    if type(value) is not list or len(value) != 4:
        return None
    rows, unres, fatal_at, checked = value
    if type(rows) is not list or type(unres) is not list or type(checked) is not int:
        return None
    if not all(_typed(r, _FAILURE_TYPES) for r in rows) or not all(_typed(u, _UNRESOLVED_TYPES) for u in unres):
        return None
    failures = tuple(M.Failure(*r) for r in rows)
    if fatal_at is None:
        fatal = None
    elif fatal_at == "load" and res.fatal is not None:
        fatal = res.fatal
    elif type(fatal_at) is int and 0 <= fatal_at < len(failures):
        fatal = failures[fatal_at]
    else:
        return None
    return M.BindResult(res, failures, tuple(M.Unresolved(*u) for u in unres), fatal, checked)
