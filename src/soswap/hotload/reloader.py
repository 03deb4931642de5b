"""Reload a native library inside the running Python process.

glibc deduplicates ``dlopen`` by name, by SONAME and by (st_dev, st_ino) (``_dl_map_object``,
``_dl_file_id_match_p``): opening the same path again after the file was replaced returns the *old* handle and
the old code. So each generation is copied to a unique path in a private directory and opened from there with
``RTLD_NOW | RTLD_LOCAL`` (every symbol bound before it is used; nothing leaks into the global scope).

A reload loads the new generation first; if that fails (a missing symbol, a bad file) the old generation stays
in service and :class:`ReloadError` carries the loader's message. Before ``dlopen``, ld.so checks the copy in a
process of its own, in trace mode with every symbol bound (what ``ldd -r`` does: nothing of the library runs
there): a file whose damage makes ld.so abort or crash is refused instead of ending this process.

Then ``on_unload`` runs (stop the library's threads, take its state), the old generation is closed, and the
loader is asked (``RTLD_NOLOAD``) whether it is really gone: an object stays mapped when it is NODELETE, defines
a GNU_UNIQUE symbol, has a live ``thread_local`` destructor, or another loaded object binds to it
(``_dl_close_worker``). Then ``on_load`` runs with the new handle.

Only the file the caller names is ever loaded.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.errors import ElfError, SoswapError
from soswap.tuples import NamedTuple

RTLD_NOW = getattr(os, "RTLD_NOW", 2)
RTLD_LOCAL = getattr(os, "RTLD_LOCAL", 0)
RTLD_NOLOAD = getattr(os, "RTLD_NOLOAD", 4)

Identity = Tuple[int, int, int, int, int]


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
            # glibc's __cxa_thread_atexit_impl, or libstdc++'s __cxa_thread_atexit that g++ calls for them
            atexit = sorted({s.name for s in elf.symbols if not s.defined
                             and s.name in ("__cxa_thread_atexit_impl", "__cxa_thread_atexit")})
            if atexit:
                reasons.append(f"registers thread_local destructors ({atexit[0]}): a live thread that used them "
                               "keeps the object")
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
    # the ctime too: a new file can get a freed inode number back with the same size and mtime (install -p,
    # tar x), and no system call sets the ctime
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
        settle: float = 1.0,
    ) -> None:
        self.path = os.path.abspath(path)
        self._on_load = on_load
        self._on_unload = on_unload
        #: where this reloader's private directory is made (None: the system's temporary directory)
        # absolute: a relative one would follow a later os.chdir() (and the old directory be left behind)
        self._parent_dir = os.path.abspath(workdir) if workdir is not None else None
        #: :meth:`reload_if_changed` waits until the file has not been written for this many seconds
        self.settle = settle
        self._lock = threading.RLock()
        self.workdir = ""
        self._cleanup: Optional[weakref.finalize] = None
        self._closed = False
        self._make_workdir()
        self.generation = 0
        self.handle: Optional[ctypes.CDLL] = None
        self._copy: Optional[str] = None
        self._loaded_identity: Optional[Identity] = None
        #: (identity of the file, monotonic time it was first seen so) for reload_if_changed's settle rule
        self._seen: Optional[Tuple[Identity, float]] = None
        #: copy -> the process that made it: only that one removes it (a forked child shares the parent's)
        self._copy_maker: Dict[str, int] = {}
        self._state: Any = None
        self.reload()

    # -- public API -------------------------------------------------------------------------------------

    def function(self, name: str, restype: Any = ctypes.c_int, argtypes: Optional[list] = None) -> Any:
        """A ctypes function of the current generation (resolve again after every reload). Each call makes a
        function object of its own, so callers with different prototypes do not change each other's. A name
        the generation does not define raises AttributeError, as ctypes does."""
        if self.handle is None:
            raise ReloadError(f"{self.path}: no generation is loaded")
        fn = self.handle[name]
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
        """Reload when the file changed and has not been written for :attr:`settle` seconds; None otherwise (a
        file still being written is taken on a later call). Threads calling it at once reload once per change:
        the check is made under the reload lock."""
        with self._lock:
            if not self.changed():
                return None
            try:
                ident = _identity(self.path)
            except OSError:
                return None
            # settled: its mtime is `settle` seconds old, or (a clock that puts mtimes in the future) this
            # reloader has seen it unchanged for `settle` seconds
            now = time.monotonic()
            if self._seen is None or self._seen[0] != ident:
                self._seen = (ident, now)
            if time.time_ns() - ident[3] < self.settle * 1e9 and now - self._seen[1] < self.settle:
                return None  # written moments ago: maybe between two writes of an in-place rewrite
            return self.reload(_settled_since=ident[3])

    def reload(self, *, _settled_since: Optional[int] = None) -> ReloadResult:
        """Load the file as a new generation and retire the old one (see the module documentation). Call it
        when the file is complete: unlike :meth:`reload_if_changed`, it does not wait for writes to settle."""
        with self._lock:
            if self._closed:
                raise ReloadError(f"{self.path}: this reloader is closed; nothing was loaded")
            gen = self.generation + 1
            new_copy, ident = self._copy_generation(gen, _settled_since)
            keeping = (f"keeping generation {self.generation}" if self.handle is not None
                       else "no generation is in service")
            try:
                _check_loadable(new_copy)
                _probe_with_ld_so(new_copy)
                _check_not_interposed(new_copy)
                new_handle = ctypes.CDLL(new_copy, mode=RTLD_NOW | RTLD_LOCAL)
            except (OSError, ElfError) as exc:
                why = exc.problem if isinstance(exc, ElfError) else str(exc)
                why += _origin_hint(new_copy, why) + _noexec_hint(new_copy, why)
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
                self._retire(old_copy)
            self.handle, self._copy, self._loaded_identity = new_handle, new_copy, ident
            self._copy_maker[new_copy] = os.getpid()
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
                self._retire(self._copy)
                self.handle = None
            self._closed = True
            if self._cleanup is not None:
                self._cleanup()
            return unloaded

    def _retire(self, copy: str) -> None:
        """Remove a copy no longer in service here, if this process made it: one made before a fork is in
        service in the parent too, and the child leaves it to the parent."""
        if self._copy_maker.get(copy) == os.getpid():
            _unlink(copy)
        self._copy_maker.pop(copy, None)

    def __enter__(self) -> NativeReloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------

    def _make_workdir(self) -> None:
        """A private directory of this reloader's own (mode 0700), inside ``workdir=`` if given: a directory the
        caller names is never changed. Removed with this object, or at interpreter exit at the latest (the
        copies may still be mapped: unlinking a mapped file is harmless), only by the process that made it (a
        forked child exiting must not take its parent's copies)."""
        if self._cleanup is not None:
            self._cleanup.detach()
        try:
            self.workdir = tempfile.mkdtemp(prefix="soswap-hotload-", dir=self._parent_dir)  # mode 0700
        except OSError as exc:
            raise ReloadError(f"{self.path}: cannot make a private directory in "
                              f"{self._parent_dir or tempfile.gettempdir()}: {exc.strerror or exc}") from None
        self._cleanup = weakref.finalize(self, _remove_own_dir, self.workdir, os.getpid())

    def _copy_generation(self, gen: int, settled_since: Optional[int] = None) -> Tuple[str, Identity]:
        base = os.path.basename(self.path)
        stem = base.split(".so")[0] if ".so" in base else base
        if not os.path.isdir(self.workdir):
            self._make_workdir()  # removed under us (a temporary-file cleaner): a new one, never the same name
        # a name no other reloader sharing the directory can have (dlopen would hand back its handle)
        try:
            fd, dest = tempfile.mkstemp(prefix=f"{stem}.gen{gen}.", suffix=".so", dir=self.workdir)
        except OSError as exc:
            raise ReloadError(f"{self.path}: cannot copy generation {gen} into {self.workdir}: "
                              f"{exc.strerror or exc}") from None
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
                # soswap stale calls a file written after the process started "modified" (changed in place
                # under the process): this copy never is, so it carries a time no later than the start
                os.utime(dest, ns=(after[3], min(after[3], _process_start_ns())))
            except OSError as exc:
                _unlink(dest)
                raise ReloadError(f"{self.path}: cannot copy generation {gen}: {exc.strerror or exc}") from None
            if before == after and (settled_since is None or after[3] == settled_since):
                return dest, after  # not caught in the middle of a rewrite (nor written since it settled)
        _unlink(dest)
        raise ReloadError(f"{self.path}: the file keeps changing while being copied")


def _remove_own_dir(path: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, True)


def _process_start_ns() -> int:
    """When this process started, in CLOCK_REALTIME nanoseconds (``/proc/self/stat`` field 22, clock ticks of
    CLOCK_BOOTTIME); now when that cannot be read."""
    now = time.time_ns()
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        boottime = time.clock_gettime_ns(getattr(time, "CLOCK_BOOTTIME", 7))
        return now - (boottime - ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return now


def _check_loadable(path: str) -> None:
    """Raise :class:`ElfError` unless ``path`` is an ELF file of this process's class, byte order and machine
    whose every loadable segment lies within the file. dlopen maps a file cut short (a copy taken in the middle
    of a write) without complaint, then the process dies of SIGBUS when the loader or the code touches a page
    beyond its end; a file of another machine is only "cannot open shared object file"."""
    own = _own_abi()
    elf = ElfFile.open(path)
    try:
        if own is not None and (elf.elf_class, elf.little_endian, elf.machine) != own[:3]:
            raise ElfError(path, f"built for {elf.machine_name} (ELFCLASS{elf.elf_class}, "
                                 f"{'little' if elf.little_endian else 'big'}-endian); this process is "
                                 f"{own[3]} (ELFCLASS{own[0]}, {'little' if own[1] else 'big'}-endian)")
        for seg in elf.segments_of_type(C.PT_LOAD):
            if seg.offset + seg.filesz > elf.size:
                raise ElfError(path, f"incomplete file: a segment ends at {seg.offset + seg.filesz} bytes, the "
                                     f"file has {elf.size} (cut short, or still being written)")
        elf.dynamic  # noqa: B018  (a dynamic section outside the file raises)
    finally:
        elf.close()


#: Symbols the linker defines in every object (the global scope always has the program's).
_LINKER_SYMBOLS = frozenset({"_init", "_fini", "_edata", "_end", "__bss_start", "_DYNAMIC", "_GLOBAL_OFFSET_TABLE_"})


def _check_not_interposed(path: str) -> None:
    """Raise :class:`ElfError` when symbols the new generation defines are already defined in this process's
    global scope (the program, its libraries, a copy of this library opened ``RTLD_GLOBAL``): ``do_lookup_x``
    searches the global scope before the object's own, so the new generation's calls to its own functions and
    its uses of its own globals would reach that other copy (its SONAME names libc or ld.so: a second glibc in
    a process cannot work). A library linked ``-Bsymbolic``, or whose symbols are protected, binds to itself."""
    elf = ElfFile.open(path)
    try:
        soname = elf.soname
        symbolic = elf.dynamic.symbolic
        try:
            names = [sym.name for sym in elf.symbol_table.defined()
                     if sym.name and sym.name not in _LINKER_SYMBOLS and sym.visibility == C.STV_DEFAULT]
        except ElfError:
            names = []  # ld.so took it (checked first): a table only soswap's decoder finds odd
    finally:
        elf.close()
    if soname and (soname.startswith(("libc.so", "ld-linux", "ld.so", "ld64.so"))):
        raise ElfError(path, f"it is {soname}, which this process already runs: a second copy of glibc cannot work "
                             "in one process")
    if symbolic:
        return
    everything = ctypes.CDLL(None)  # dlopen(NULL): the global scope
    taken = [n for n in names if _defined(everything, n)]
    if taken:
        shown = ", ".join(taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
        raise ElfError(path, f"{shown} {'is' if len(taken) == 1 else 'are'} already defined in this process's "
                             "global scope (the program, or a copy of the library opened with RTLD_GLOBAL): the "
                             "new generation's own calls and globals would go there (ld.so searches the global "
                             "scope first); link the library -Bsymbolic or load it only through this reloader")


def _defined(scope: ctypes.CDLL, name: str) -> bool:
    try:
        getattr(scope, name)
    except AttributeError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _own_abi() -> Optional[Tuple[int, bool, int, str, Optional[str]]]:
    """(class, little-endian, machine, machine name, PT_INTERP) of this process's program; None if unreadable."""
    try:
        with ElfFile.open("/proc/self/exe") as elf:
            return elf.elf_class, elf.little_endian, elf.machine, elf.machine_name, elf.interpreter
    except (OSError, ElfError):
        return None


#: ld.so's own complaint when one of its assertions fails (``_dl_fatal_printf`` in ``__assert_fail``)
_LD_SO_ASSERTION = b"Inconsistency detected by ld.so"


def _probe_with_ld_so(path: str, timeout: float = 30.0) -> None:
    """Run this process's ld.so on ``path`` in trace mode with every symbol bound (``ldd -r``'s
    LD_TRACE_LOADED_OBJECTS, LD_WARN, LD_BIND_NOW): it maps and relocates the file and its dependencies, and
    runs none of their code. Raise :class:`ElfError` when it crashes or one of its assertions fails there:
    glibc does not validate what it maps (a damaged hash table, relocation or program header), and the same
    failure inside ``dlopen`` would end this process. Anything else it says (a missing dependency or symbol) is
    left to ``dlopen`` in this process, whose already-loaded objects may satisfy it. Skipped where ld.so
    cannot be run."""
    own = _own_abi()
    interp = own[4] if own is not None else None
    if not interp or not os.path.isfile(interp):
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    for k in ("LD_LIBRARY_PATH", "LD_PRELOAD"):
        if k in os.environ:
            env[k] = os.environ[k]
    # with SIGCHLD ignored (a daemon's habit) the kernel reaps children itself and their status is lost: an
    # interpreter of ours, SIGCHLD set back to the default, runs ld.so and says how it ended
    lost_status = signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
    argv = [sys.executable, "-S", "-c", _REPORT_STATUS, interp, path] if lost_status else [interp, path]
    if not lost_status:  # (the interpreter of ours is not traced: it gives the variables to ld.so alone)
        env.update(_TRACE_ENV)
    try:
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE if lost_status else subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ElfError(path, f"ld.so did not finish checking it in {timeout:.0f} s") from None
    except OSError:
        return
    if lost_status:
        try:
            r.returncode = int(r.stdout.strip() or b"0")
        except ValueError:
            raise ElfError(path, "ld.so's check of it gave no status") from None
    if r.returncode < 0 and _static_program(path):
        raise ElfError(path, "a statically linked program, not a shared library")
    if r.returncode < 0:
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        raise ElfError(path, f"ld.so crashes loading it ({name}): a damaged file")
    if _LD_SO_ASSERTION in r.stderr:
        line = next(ln for ln in r.stderr.splitlines() if _LD_SO_ASSERTION in ln)
        raise ElfError(path, f"ld.so aborts loading it: {line.decode('utf-8', 'replace').strip()}")


#: ``ldd -r``'s variables: trace mode, every symbol bound, undefined ones reported.
_TRACE_ENV = {"LD_TRACE_LOADED_OBJECTS": "1", "LD_WARN": "yes", "LD_BIND_NOW": "yes"}
#: Run by an interpreter of ours with SIGCHLD ignored in the caller: ld.so's status on standard output.
_REPORT_STATUS = ("import os, signal, subprocess, sys\n"
                  "signal.signal(signal.SIGCHLD, signal.SIG_DFL)\n"
                  f"env = dict(os.environ, **{_TRACE_ENV!r})\n"
                  "r = subprocess.run(sys.argv[1:], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)\n"
                  "sys.stdout.write(str(r.returncode))\n")


def _static_program(path: str) -> bool:
    """A program without PT_DYNAMIC (ld.so's trace mode crashes on one: not the file's fault)."""
    try:
        with ElfFile.open(path) as elf:
            return elf.header.type == C.ET_EXEC and not elf.is_dynamic
    except (OSError, ElfError):
        return False


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


def _noexec_hint(copy: str, why: str) -> str:
    """Why a copy cannot be mapped: its directory (``workdir=``, or $TMPDIR) is on a noexec mount."""
    if "failed to map segment" not in why:
        return ""
    try:
        noexec = bool(os.statvfs(os.path.dirname(copy)).f_flag & os.ST_NOEXEC)
    except OSError:
        return ""
    return (f" (its private copy lies in {os.path.dirname(copy)}, on a noexec mount: give workdir= a directory "
            "that allows execution)") if noexec else ""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
