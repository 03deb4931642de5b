"""Reload a native library inside the running Python process.

glibc deduplicates ``dlopen`` by name, by SONAME and by (st_dev, st_ino) (``_dl_map_object``,
``_dl_file_id_match_p``): opening the same path again after the file was replaced returns the *old* handle and
the old code. So each generation is copied to a unique path in a private directory and opened from there with
``RTLD_NOW | RTLD_LOCAL`` (every symbol bound before it is used; nothing leaks into the global scope).

A reload loads the new generation first; if that fails (a missing symbol, a bad file) the old generation stays
in service and :class:`ReloadError` carries the loader's message. Then ``on_unload`` runs (stop the library's
threads, take its state), the old generation is closed, and the loader is asked (``RTLD_NOLOAD``) whether it is
really gone: an object stays mapped when it is NODELETE, defines a GNU_UNIQUE symbol, has a live
``thread_local`` destructor, or another loaded object binds to it (``_dl_close_worker``). Then ``on_load`` runs
with the new handle.

Only the file the caller names is ever loaded.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import shutil
import stat
import tempfile
import threading
import weakref
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.errors import ElfError, SoswapError

RTLD_NOW = getattr(os, "RTLD_NOW", 2)
RTLD_LOCAL = getattr(os, "RTLD_LOCAL", 0)
RTLD_NOLOAD = getattr(os, "RTLD_NOLOAD", 4)

Identity = Tuple[int, int, int, int]


class ReloadError(SoswapError):
    """A generation could not be loaded; the previous one (if any) is still in service."""


class ReloadResult(NamedTuple):
    """What one reload did."""

    generation: int
    path: str  # the private copy now in service
    old_unloaded: Optional[bool]  # None on the first load
    not_unloadable_because: Tuple[str, ...]  # why the old generation stayed mapped, as far as can be told


def unload_blockers(path: str) -> List[str]:
    """Reasons, read from the file, why glibc may keep ``path`` mapped after its last ``dlclose``."""
    reasons = []
    try:
        with ElfFile.open(path) as elf:
            if elf.dynamic.flags_1 & C.DF_1_NODELETE:
                reasons.append("linked with -z nodelete (DF_1_NODELETE)")
            unique = [s.name for s in elf.symbols if s.defined and s.bind == C.STB_GNU_UNIQUE]
            if unique:
                reasons.append(f"defines STB_GNU_UNIQUE symbols ({', '.join(unique[:3])}"
                               f"{'...' if len(unique) > 3 else ''}; build with -fno-gnu-unique)")
            if any(s.name == "__cxa_thread_atexit_impl" and not s.defined for s in elf.symbols):
                reasons.append("registers thread_local destructors (__cxa_thread_atexit_impl): a live thread "
                               "that used them keeps the object")
    except ElfError as exc:
        reasons.append(f"cannot read it: {exc.problem}")
    return reasons


def is_loaded(path: str) -> bool:
    """True if the dynamic loader still has ``path`` (by name or file identity) loaded in this process."""
    try:
        handle = _ctypes.dlopen(path, RTLD_NOW | RTLD_NOLOAD)
    except OSError:
        return False
    if not handle:
        return False
    _ctypes.dlclose(handle)  # RTLD_NOLOAD took a reference: give it back
    return True


def _identity(path: str) -> Identity:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class NativeReloader:
    """Keep a native library loaded in this process and reload it when its file changes.

    ``on_unload(handle) -> state`` runs before the old generation is closed (join the library's threads, unhook
    its callbacks, serialise its state); ``on_load(handle, state)`` runs with each new generation. Keep no
    function pointers, ctypes functions or pointers into the library across a reload: get them again from
    :attr:`handle` (or :meth:`function`) afterwards.
    """

    def __init__(
        self,
        path: str,
        *,
        on_load: Optional[Callable[[ctypes.CDLL, Any], None]] = None,
        on_unload: Optional[Callable[[ctypes.CDLL], Any]] = None,
        workdir: Optional[str] = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self._on_load = on_load
        self._on_unload = on_unload
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="soswap-hotload-")
        os.chmod(self.workdir, 0o700)
        # A private directory this object made is removed with it, or at interpreter exit at the latest
        # (the copies may still be mapped: unlinking a mapped file is harmless).
        self._cleanup = (weakref.finalize(self, shutil.rmtree, self.workdir, True) if self._own_workdir
                         else None)
        self._lock = threading.RLock()
        self.generation = 0
        self.handle: Optional[ctypes.CDLL] = None
        self._copy: Optional[str] = None
        self._loaded_identity: Optional[Identity] = None
        self._state: Any = None
        self.reload()

    # -- public API -------------------------------------------------------------------------------------

    def function(self, name: str, restype: Any = ctypes.c_int, argtypes: Optional[list] = None) -> Any:
        """A ctypes function of the current generation (resolve again after every reload)."""
        if self.handle is None:
            raise ReloadError(f"{self.path}: no generation is loaded")
        fn = getattr(self.handle, name)
        fn.restype = restype
        if argtypes is not None:
            fn.argtypes = argtypes
        return fn

    def changed(self) -> bool:
        """True when the file at :attr:`path` is not the one the current generation was copied from."""
        try:
            return _identity(self.path) != self._loaded_identity
        except OSError:
            return False

    def reload_if_changed(self) -> Optional[ReloadResult]:
        """Reload when the file changed (an in-progress write is retried on the next call). Threads calling it
        at once reload once per change: the check is made under the reload lock."""
        with self._lock:
            return self.reload() if self.changed() else None

    def reload(self) -> ReloadResult:
        """Load the file as a new generation and retire the old one (see the module documentation)."""
        with self._lock:
            gen = self.generation + 1
            new_copy, ident = self._copy_generation(gen)
            keeping = (f"keeping generation {self.generation}" if self.handle is not None
                       else "no generation is in service")
            try:
                _check_complete(new_copy)
                new_handle = ctypes.CDLL(new_copy, mode=RTLD_NOW | RTLD_LOCAL)
            except (OSError, ElfError) as exc:
                why = exc.problem if isinstance(exc, ElfError) else str(exc)
                why += _origin_hint(new_copy, why)
                _unlink(new_copy)
                raise ReloadError(f"{self.path}: generation {gen} not loaded, {keeping}: {why}") from None
            old_handle, old_copy = self.handle, self._copy
            state = None
            if old_handle is not None and self._on_unload is not None:
                try:
                    state = self._on_unload(old_handle)
                except BaseException:
                    _ctypes.dlclose(new_handle._handle)
                    _unlink(new_copy)
                    raise
            unloaded: Optional[bool] = None
            blockers: Tuple[str, ...] = ()
            if old_handle is not None and old_copy is not None:
                _ctypes.dlclose(old_handle._handle)
                unloaded = not is_loaded(old_copy)
                if not unloaded:
                    blockers = tuple(unload_blockers(old_copy)) or (
                        "another loaded object binds to it, or it is still in use",)
                _unlink(old_copy)
            self.handle, self._copy, self._loaded_identity = new_handle, new_copy, ident
            self.generation = gen
            self._state = state
            if self._on_load is not None:
                self._on_load(new_handle, state)
            return ReloadResult(gen, new_copy, unloaded, blockers)

    def close(self) -> Optional[bool]:
        """Run ``on_unload``, close the current generation and remove the private directory; returns whether
        the library really left the process."""
        with self._lock:
            unloaded = None
            if self.handle is not None and self._copy is not None:
                if self._on_unload is not None:
                    self._on_unload(self.handle)
                _ctypes.dlclose(self.handle._handle)
                unloaded = not is_loaded(self._copy)
                _unlink(self._copy)
                self.handle = None
            if self._cleanup is not None:
                self._cleanup()
            return unloaded

    def __enter__(self) -> NativeReloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------

    def _copy_generation(self, gen: int) -> Tuple[str, Identity]:
        base = os.path.basename(self.path)
        stem = base.split(".so")[0] if ".so" in base else base
        # a name no other reloader sharing the directory can have (dlopen would hand back its handle)
        fd, dest = tempfile.mkstemp(prefix=f"{stem}.gen{gen}.", suffix=".so", dir=self.workdir)
        os.close(fd)
        for _attempt in range(3):
            try:
                if not stat.S_ISREG(os.stat(self.path).st_mode):
                    # a device (/dev/zero) would be copied for ever; a FIFO would wait for a writer
                    _unlink(dest)
                    raise ReloadError(f"{self.path}: not a regular file; nothing was loaded")
                before = _identity(self.path)
                shutil.copyfile(self.path, dest)
                after = _identity(self.path)
            except OSError as exc:
                _unlink(dest)
                raise ReloadError(f"{self.path}: cannot copy generation {gen}: {exc.strerror or exc}") from None
            if before == after:  # not caught in the middle of a rewrite
                return dest, after
        _unlink(dest)
        raise ReloadError(f"{self.path}: the file keeps changing while being copied")


def _check_complete(path: str) -> None:
    """Raise :class:`ElfError` unless every loadable segment of ``path`` lies within the file. dlopen maps a
    file cut short (a copy taken in the middle of a write) without complaint, then the process dies of
    SIGBUS when the loader or the code touches a page beyond its end."""
    elf = ElfFile.open(path)
    try:
        for seg in elf.segments_of_type(C.PT_LOAD):
            if seg.offset + seg.filesz > elf.size:
                raise ElfError(path, f"incomplete file: a segment ends at {seg.offset + seg.filesz} bytes, the "
                                     f"file has {elf.size} (cut short, or still being written)")
        elf.dynamic  # noqa: B018  (a dynamic section outside the file raises)
    finally:
        elf.close()


def _origin_hint(copy: str, why: str) -> str:
    """Why a dependency found through $ORIGIN is missing: it names the private copy's directory."""
    if "cannot open shared object file" not in why:
        return ""
    try:
        elf = ElfFile.open(copy)
        try:
            paths = (elf.dynamic.rpath or "") + ":" + (elf.dynamic.runpath or "")
        finally:
            elf.close()
    except (OSError, ElfError):
        return ""
    if "$ORIGIN" in paths or "${ORIGIN}" in paths:
        return (" ($ORIGIN in its RPATH/RUNPATH names the directory of the private copy, not the library's own:"
                " load its dependencies first, or give them absolute paths)")
    return ""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
