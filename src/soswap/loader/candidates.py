"""Opening a candidate file the way ``open_verify`` and ``_dl_map_object_from_fd`` do (elf/dl-load.c): skip it
(missing, unreadable, wrong class, wrong machine), accept it, or fail fatally with ld.so's message.

Also the file-system caches behind the search: directory listings (so that probing the 19 hwcaps/legacy
subdirectories of a search directory costs set lookups, not system calls) and per-file verdicts.
"""

from __future__ import annotations

import errno as errnomod
import mmap
import os
import stat
import struct
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple, Union

from soswap.elf import ElfCache, ElfFile
from soswap.elf import constants as C
from soswap.elf.file import Segment
from soswap.errors import ElfError, raise_if_exhausted
from soswap.loader.profile import Profile
from soswap.tuples import NamedTuple

#: Verdicts of :func:`verify`.
ACCEPT = "accept"
SKIP = "skip"
OTHER_CLASS = "other-class"
FATAL = "fatal"
CUT = "cut"  # an open error other than ENOENT/EACCES: open_path gives up on the current list
CRASH = "crash"  # open_verify accepted the file; mapping it kills ld.so (SIGBUS: its data lies beyond its end)

FileId = Tuple[int, int]  # (st_dev, st_ino): _dl_get_file_id


class Verdict(NamedTuple):
    """The outcome of opening one candidate."""

    kind: str
    #: For FATAL: the ld.so message (``invalid ELF header``, ``cannot read file data: Is a directory``).
    message: str = ""
    file_id: Optional[FileId] = None
    #: The parsed file (ACCEPT only).
    elf: Optional[ElfFile] = None
    #: The file actually read (the substitute under a what-if).
    file: Optional[str] = None
    substituted: bool = False
    #: FATAL from ``_dl_map_object_from_fd`` (``open_verify`` accepted the file): ld.so's message then names
    #: the object as it was asked for (its ``name``), not the file it opened
    mapped: bool = False


Substitute = Union[str, bytes, ElfFile]


class FileSystem:
    """Directory listings and candidate verdicts for one root, shared by every load of a :class:`Loader`."""

    def __init__(self, profile: Profile, cache: ElfCache) -> None:
        self.profile = profile
        self.fs = profile.fs
        self.elf_cache = cache
        self._listings: Dict[str, Optional[FrozenSet[str]]] = {}
        #: (st_ino, st_ctime_ns) of each listed directory, taken before it was listed (None: no directory)
        self._listed_ids: Dict[str, Optional[Tuple[int, int]]] = {}
        self._verdicts: Dict[Tuple[str, FileId, int, int], Verdict] = {}
        self._stat_memo: Dict[str, Union[os.stat_result, int]] = {}
        #: open_path results: (name, directories, capability subdirs, cwd) -> (found, other class, fatal)
        self.path_memo: Dict[tuple, tuple] = {}
        #: (directory names, capability subdirectories, working directory) -> the search plan (session.py)
        self.plan_memo: Dict[tuple, object] = {}
        #: Files read once per run: ld.so's own ELF (path -> ElfFile or None), /etc/ld.so.preload.
        self.file_memo: Dict[object, object] = {}
        self._real_dirs: Dict[str, str] = {}
        self._host_real_dirs: Dict[str, str] = {}

    # -- directory listings -------------------------------------------------------------------------

    def listing(self, host_dir: str) -> Optional[FrozenSet[str]]:
        """The names in ``host_dir`` (None if it is not a readable directory)."""
        hit = self._listings.get(host_dir, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        try:
            # stat first: a change after it gives the directory a later ctime (see listed_directories)
            st = os.stat(host_dir or ".")
            self._listed_ids[host_dir] = (st.st_ino, st.st_ctime_ns)
        except OSError:
            self._listed_ids[host_dir] = None
        try:
            names: Optional[FrozenSet[str]] = frozenset(os.listdir(host_dir or "."))
        except PermissionError:
            names = None if not os.path.isdir(host_dir or ".") else UNLISTABLE
        except OSError:
            names = None
        self._listings[host_dir] = names
        return names

    def listed_directories(self) -> Iterator[Tuple[str, Optional[Tuple[int, int]], Optional[FrozenSet[str]]]]:
        """Every directory a search of this run listed: (host path, (st_ino, st_ctime_ns) taken *before* the
        listing or None, names or None). Names are None for no directory, :data:`UNLISTABLE` for a directory
        that could not be read. A directory whose inode and ctime are still those has still those names
        (create, unlink, rename and utime all set the ctime): what the searches found there still holds."""
        for d, names in self._listings.items():
            yield d, self._listed_ids.get(d), names

    def stat_witnesses(self) -> Iterator[Tuple[str, Union[os.stat_result, int]]]:
        """Every path the searches of this run ``stat``-ed, with what they saw (the result, or the errno): a
        candidate whose file changes (replaced, a dangling link whose target appears, permissions) may change
        what the search finds."""
        return iter(list(self._stat_memo.items()))

    def may_exist(self, host_dir: str, name: str) -> bool:
        """False when ``host_dir/name`` certainly does not exist (fast path of the search)."""
        names = self.listing(host_dir)
        if names is None:
            return False
        if names is UNLISTABLE or name in (".", ".."):
            return True  # every directory holds "." and ".." (listdir leaves them out); ld.so opens them
        return name in names

    def stat(self, host_path: str) -> Union[os.stat_result, int]:
        """``os.stat`` result, or the errno of the failure (memoized: the search asks many times)."""
        hit = self._stat_memo.get(host_path)
        if hit is None:
            try:
                hit = os.stat(host_path)
            except OSError as exc:
                hit = exc.errno or errnomod.ENOENT
            self._stat_memo[host_path] = hit
        return hit

    def realpath(self, path: str, _depth: int = 0) -> str:
        """The canonical target path of the absolute target path ``path`` (``realpath`` inside the root).
        Directories are resolved once per run; the last component costs one ``readlink``."""
        fs = self.fs
        if not fs.is_host:
            return fs.target_realpath(path)
        cut = path.rfind("/")
        base = path[cut + 1:]
        if cut < 0 or base in ("", ".", "..") or _depth > 40:
            return os.path.realpath(path)
        d = path[:cut] or "/"
        try:
            target = os.readlink(path)
        except OSError as exc:
            if exc.errno != errnomod.EINVAL:
                return os.path.realpath(path)
        else:  # a symbolic link: resolve its target the same way
            return self.realpath(target if target.startswith("/") else f"{d.rstrip('/')}/{target}", _depth + 1)
        real = self._real_dirs.get(d)
        if real is None:
            real = self._real_dirs[d] = os.path.realpath(d)
        return (real if real.endswith("/") else real + "/") + base

    def exec_errno(self, host_path: str, machine: int) -> int:
        """0, or the errno ``execve`` fails with for this program interpreter (binfmt_elf ``load_elf_binary``:
        ``open_exec`` wants an executable regular file on a mount that allows it; then the interpreter's ELF
        header must have the magic and the program's machine, and its program headers must be readable)."""
        key = ("exec", host_path, machine)
        hit = self.file_memo.get(key)
        if hit is None:
            st = self.stat(host_path)  # through the memo: a cache of results watches this path
            hit = self.file_memo[key] = st if isinstance(st, int) else _exec_errno(host_path, st, machine)
        return hit  # type: ignore[return-value]

    def noexec(self, path: str) -> bool:
        """``path`` lies on a mount with noexec (once per directory: mount options belong to mounts, and a
        device can be mounted twice)."""
        key = ("noexec", os.path.dirname(path))
        hit = self.file_memo.get(key)
        if hit is None:
            try:
                hit = bool(os.statvfs(path).f_flag & os.ST_NOEXEC)
            except OSError:
                hit = False
            self.file_memo[key] = hit
        return hit  # type: ignore[return-value]

    def host_real_dir(self, host_dir: str) -> str:
        """``os.path.realpath`` of a host directory, once per :class:`FileSystem` (directories do not move during
        a run; what-if substitutions match candidates by canonical directory)."""
        real = self._host_real_dirs.get(host_dir)
        if real is None:
            real = self._host_real_dirs[host_dir] = os.path.realpath(host_dir or ".")
        return real

    # -- open_verify ---------------------------------------------------------------------------------

    def verify(self, host_path: str, substitute: Optional[Substitute] = None,
               sub_id: Optional[FileId] = None) -> Verdict:
        """Open ``host_path`` as ``open_verify`` then ``_dl_map_object_from_fd`` would (for a library, not the
        main program). ``substitute``: read that file instead (a what-if), keeping ``sub_id`` as identity."""
        abi = self.profile.abi
        if substitute is not None:
            return self._verify_substitute(host_path, substitute, sub_id)
        st = self.stat(host_path)
        if isinstance(st, int):
            if st in (errnomod.ENOENT, errnomod.EACCES, errnomod.ENOTDIR):
                return Verdict(SKIP)
            return Verdict(CUT, os.strerror(st))
        fid = (st.st_dev, st.st_ino)
        key = (host_path, fid, st.st_size, st.st_mtime_ns)
        hit = self._verdicts.get(key)
        if hit is not None:
            return hit
        verdict = self._verify_file(host_path, st, abi.elf_class)
        self._verdicts[key] = verdict
        return verdict

    def _verify_file(self, host_path: str, st: os.stat_result, elf_class: int) -> Verdict:
        fid = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            return Verdict(FATAL, f"cannot read file data: {ldso_strerror(errnomod.EISDIR)}", fid)
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            # ld.so would block in open() on a FIFO; never do that here.
            return Verdict(FATAL, "cannot read file data: not a regular file (ld.so would block opening it)",
                           fid)
        try:
            fd = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            raise_if_exhausted(exc, host_path)  # soswap's own limit, not the candidate's fault
            if exc.errno in (errnomod.ENOENT, errnomod.EACCES, errnomod.ENOTDIR):
                return Verdict(SKIP)
            return Verdict(CUT, exc.strerror or str(exc))
        try:
            head = os.pread(fd, 64, 0) if stat.S_ISREG(st.st_mode) else os.read(fd, 64)
        except OSError as exc:
            return Verdict(FATAL, f"cannot read file data: {ldso_strerror(exc.errno or errnomod.EIO)}", fid)
        finally:
            os.close(fd)
        problem = self.check_header(head, st.st_size)
        if problem is not None:
            return problem._replace(file_id=fid)
        try:
            elf = self.elf_cache.get(host_path, st)
        except ElfError as exc:
            return Verdict(FATAL, exc.problem, fid)
        return self._check_mapped(elf, fid, host_path, False)

    def _verify_substitute(self, host_path: str, substitute: Substitute, sub_id: Optional[FileId]) -> Verdict:
        if isinstance(substitute, ElfFile):
            elf: Optional[ElfFile] = substitute
            head = substitute.read(0, min(64, substitute.size), "ELF header") if substitute.size else b""
            size = substitute.size
            file = substitute.path
        elif isinstance(substitute, (bytes, bytearray)):
            head, size, file = bytes(substitute[:64]), len(substitute), "<bytes>"
            elf = None
        else:
            file = substitute
            try:
                with open(substitute, "rb") as f:
                    head = f.read(64)
                    size = os.fstat(f.fileno()).st_size
            except IsADirectoryError:
                return Verdict(FATAL, f"cannot read file data: {ldso_strerror(errnomod.EISDIR)}", sub_id,
                               file=substitute, substituted=True)
            except OSError:
                return Verdict(SKIP, file=substitute, substituted=True)
            elf = None
        problem = self.check_header(head, size)
        if problem is not None:
            return problem._replace(file_id=sub_id, file=file, substituted=True)
        try:
            if elf is None:
                if isinstance(substitute, (bytes, bytearray)):
                    elf = ElfFile.from_bytes(bytes(substitute), host_path)
                else:
                    elf = self.elf_cache.get(str(substitute))
        except ElfError as exc:
            return Verdict(FATAL, exc.problem, sub_id, file=file, substituted=True)
        v = self._check_mapped(elf, sub_id, file, True)
        return v

    def check_header(self, head: bytes, size: int) -> Optional[Verdict]:
        """The ELF header checks of ``open_verify``, in glibc's order; None when the header is acceptable."""
        abi = self.profile.abi
        ehdr_size = 64 if abi.elf_class == 64 else 52
        if len(head) < ehdr_size:
            return Verdict(FATAL, "file too short")
        want_class = C.ELFCLASS64 if abi.elf_class == 64 else C.ELFCLASS32
        want_data = C.ELFDATA2LSB if abi.little_endian else C.ELFDATA2MSB
        ident = head[:16]
        osabi, abiversion = ident[7], ident[8]
        osabi_ok = osabi in (C.ELFOSABI_SYSV, C.ELFOSABI_GNU) or osabi == abi.extra_osabi
        ok8 = (ident[:4] == C.ELFMAG and ident[4] == want_class and ident[5] == want_data and ident[6] == 1
               and osabi_ok)
        abiver_ok = abiversion == 0 or (osabi == C.ELFOSABI_GNU and abiversion < self.profile.libc_abi_max)
        pad_ok = not any(ident[9:16])
        if not (ok8 and abiver_ok and pad_ok):
            if ident[:4] != C.ELFMAG:
                return Verdict(FATAL, "invalid ELF header")
            if ident[4] != want_class:
                return Verdict(OTHER_CLASS)
            if ident[5] != want_data:
                return Verdict(FATAL, "ELF file data encoding not little-endian" if abi.little_endian
                               else "ELF file data encoding not big-endian")
            if ident[6] != 1:
                return Verdict(FATAL, "ELF file version ident does not match current one")
            if not osabi_ok:
                return Verdict(FATAL, "ELF file OS ABI invalid")
            if not abiver_ok:
                return Verdict(FATAL, "ELF file ABI version invalid")
            if not pad_ok:
                return Verdict(FATAL, "nonzero padding in e_ident")
            return Verdict(FATAL, "internal error")
        e = "<" if abi.little_endian else ">"
        e_type, e_machine, e_version = struct.unpack_from(e + "HHI", head, 16)
        if e_version != 1:
            return Verdict(FATAL, "ELF file version does not match current one")
        if e_machine != abi.machine:
            return Verdict(SKIP)
        if abi.refused_float and not abi.accepts_flags(struct.unpack_from(e + "I", head, 36)[0]):
            # an ARM object of the other float ABI (VALID_FLOAT_ABI) is passed over as one of another machine:
            # checked on Debian 12's armhf ld.so (upstream's VALID_ELF_HEADER would call it an "internal error")
            return Verdict(SKIP)
        if e_type not in C.LOADABLE_TYPES:
            return Verdict(FATAL, "only ET_DYN and ET_EXEC can be loaded")
        if abi.elf_class == 64:
            phoff, phentsize, phnum = struct.unpack_from(e + "Q", head, 32)[0], *struct.unpack_from(
                e + "HH", head, 54)
        else:
            phoff, phentsize, phnum = struct.unpack_from(e + "I", head, 28)[0], *struct.unpack_from(
                e + "HH", head, 42)
        if phentsize != (56 if abi.elf_class == 64 else 32):
            return Verdict(FATAL, "ELF file's phentsize not the expected size")
        if phoff + phnum * phentsize > size:
            return Verdict(FATAL, "cannot read file data")
        return None

    def _check_mapped(self, elf: ElfFile, fid: Optional[FileId], file: str, substituted: bool) -> Verdict:
        # _dl_map_object_from_fd, for an object that is not the main program; its errors are "mapped" ones

        def refused(message: str, kind: str = FATAL) -> Verdict:
            return Verdict(kind, message, fid, file=file, substituted=substituted, mapped=True)

        problem, loads = load_commands(elf)
        if problem is not None:
            return refused(problem)
        if elf.type != C.ET_DYN:
            return refused("cannot dynamically load executable")
        if overlapping(loads):
            return refused(MISALIGNED)
        if not substituted and self.noexec(file) and any(seg.flags & C.PF_X for seg in loads):
            # an executable mapping of a file on a noexec mount fails (EPERM) in _dl_map_segments
            return refused("failed to map segment from shared object")
        dyn_segs = elf.segments_of_type(C.PT_DYNAMIC)
        # _dl_map_segments zero-fills the end of each segment's last file page, then the dynamic section is read
        crash = beyond_the_end(elf, dyn_segs, MAPPING_TABLES)
        if crash is not None:
            return refused(crash, CRASH)
        if not dyn_segs:
            return refused("object file has no dynamic section")
        try:
            dyn = elf.dynamic
        except ElfError as exc:
            return refused(exc.problem)
        if dyn.flags_1 & C.DF_1_PIE:
            return refused("cannot dynamically load position-independent executable")
        return Verdict(ACCEPT, "", fid, elf, file, substituted)


MISALIGNED = "ELF load command address/offset not page-aligned"


def kernel_interp_errno(elf: ElfFile) -> int:
    """Why binfmt_elf ``load_elf_binary`` refuses the program's PT_INTERP before opening it, or 0: a size
    outside 2..PATH_MAX or a name without its NUL is ENOEXEC; a short read of it (a file cut there) EIO."""
    segs = elf.segments_of_type(C.PT_INTERP)
    if not segs:
        return 0
    if not 2 <= segs[0].filesz <= 4096:
        return errnomod.ENOEXEC
    if segs[0].offset + segs[0].filesz > elf.size:
        return errnomod.EIO
    raw = elf.interpreter_bytes
    return 0 if raw and raw[-1] == 0 else errnomod.ENOEXEC


def program_header_refusal(elf_class: int, phentsize: int, phnum: int, phoff: int, size: int) -> Optional[str]:
    """Why binfmt_elf ``load_elf_phdrs`` cannot read the program header table of a program it is asked to run
    (execve's ENOEXEC), or None: an entry size other than the class's ``Elf_Phdr``, no entries or more than
    64 KiB of them, a table that runs past the end of the file (``elf_read``'s short read)."""
    entry = 56 if elf_class == 64 else 32
    if phentsize != entry:
        return f"e_phentsize is {phentsize}, not the {entry} bytes of an Elf{elf_class}_Phdr"
    table = phentsize * phnum
    if table == 0:
        return "it has no program headers"
    if table > 65536:
        return f"its program header table is larger than 64 KiB ({table} bytes)"
    if phoff + table > size:
        return (f"its program header table ({table} bytes at {phoff:#x}) runs past the end of the file "
                f"({size} bytes)")
    return None


def _exec_errno(host_path: str, st: os.stat_result, machine: int) -> int:
    try:
        if not stat.S_ISREG(st.st_mode) or not os.access(host_path, os.X_OK):
            return errnomod.EACCES
        if os.statvfs(host_path).f_flag & os.ST_NOEXEC:
            return errnomod.EACCES
        fd = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        return exc.errno or errnomod.ENOENT
    try:
        head = os.pread(fd, 64, 0)
        if len(head) < 52 or head[:4] != C.ELFMAG:
            return errnomod.EIO if len(head) < 52 else errnomod.ELIBBAD
        e = "<" if head[5] == C.ELFDATA2LSB else ">"
        if struct.unpack_from(e + "H", head, 18)[0] != machine:
            return errnomod.ELIBBAD
        if head[4] == C.ELFCLASS64:
            if len(head) < 64:
                return errnomod.EIO
            phoff = struct.unpack_from(e + "Q", head, 32)[0]
            phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
        else:
            phoff = struct.unpack_from(e + "I", head, 28)[0]
            phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
        # load_elf_phdrs: any problem is "not an interpreter" (the -ELIBBAD set before its checks)
        elf_class = 64 if head[4] == C.ELFCLASS64 else 32
        if program_header_refusal(elf_class, phentsize, phnum, phoff, st.st_size) is not None:
            return errnomod.ELIBBAD
        size = phentsize * phnum
        if len(os.pread(fd, size, phoff)) != size:  # a file cut since it was stat()ed
            return errnomod.ELIBBAD
        return 0
    except OSError as exc:
        return exc.errno or errnomod.EIO
    finally:
        os.close(fd)


def load_commands(elf: ElfFile) -> Tuple[Optional[str], List[Segment]]:
    """The program header loop of ``_dl_map_object_from_fd``, in file order: (its error, or None; the PT_LOAD
    segments). A segment whose offset and address differ by other than whole pages cannot be mapped."""
    page = mmap.PAGESIZE
    loads = []
    for seg in elf.segments:
        if seg.type == C.PT_DYNAMIC and seg.filesz == 0:
            return "object file has no dynamic section", loads
        if seg.type == C.PT_LOAD:
            if (seg.vaddr - seg.offset) % page:
                return MISALIGNED, loads
            loads.append(seg)
    if not loads:
        return "object file has no loadable segments", loads
    return None, loads


def kernel_cannot_map(elf: ElfFile) -> bool:
    """binfmt_elf ``elf_load`` (a program, or its interpreter): a PT_LOAD with file data is mapped from the file
    at its offset, which must be page-aligned with its address; one without (bss only) is anonymous memory,
    whatever its offset. ld.so never checks the program's own segments (only ``ld.so --verify``, hence ldd)."""
    page = mmap.PAGESIZE
    return any(seg.type == C.PT_LOAD and seg.filesz and (seg.vaddr - seg.offset) % page for seg in elf.segments)


def overlapping(loads: Sequence[Segment]) -> bool:
    """``_dl_map_segments`` (ET_DYN): segments with holes between them whose last one starts (page-aligned)
    before the first one's file pages end."""
    page = mmap.PAGESIZE

    def start(s: Segment) -> int:
        return s.vaddr - s.vaddr % page

    def end(s: Segment) -> int:
        return -(-(s.vaddr + s.filesz) // page) * page

    holes = any(end(a) != start(b) for a, b in zip(loads, loads[1:]))
    return holes and start(loads[-1]) < end(loads[0])


def beyond_the_end(elf: ElfFile, dyn_segs: Sequence[Segment],
                   tables: Sequence[Tuple[int, Optional[int]]] = ()) -> Optional[str]:
    """Why mapping ``elf`` kills ld.so with SIGBUS, or None. A truncated file maps without error, but a page of
    it that lies wholly beyond the file's end faults when touched: ``_dl_map_segments`` writes zeros after
    each segment's file data up to its page's end, ``elf_get_dynamic_info`` reads the dynamic section and
    ``_dl_setup_hash`` the hash table's header (``ld.so --verify`` goes no further); loading it as a dependency
    reads the rest of :data:`MAPPING_TABLES` (pass them as ``tables``)."""
    why = zero_fill_beyond(elf) if elf.cut_short else None  # whole segments fill no page past the end
    if why is not None:
        return why
    for seg in dyn_segs[-1:]:  # l_ld: _dl_map_object_from_fd keeps the last PT_DYNAMIC
        if seg.filesz and seg.offset - seg.offset % mmap.PAGESIZE >= elf.mapped_end:
            return f"its dynamic section (offset {seg.offset:#x}) lies beyond the end of the file ({elf.size} bytes)"
    missing = missing_pages(elf) if elf.cut_short else []
    return _table_beyond(elf, missing, tables, hash_header=True) if missing else None


def zero_fill_beyond(elf: ElfFile) -> Optional[str]:
    """Where the zeros that follow a segment's file data up to the end of its page (``.bss``) must be written
    in a page wholly beyond the end of the file, or None: ``_dl_map_segments`` for ld.so (SIGBUS), the
    kernel's ``padzero`` for a program (EFAULT after exec's point of no return: SIGSEGV)."""
    page = mmap.PAGESIZE
    for seg in elf.segments_of_type(C.PT_LOAD):
        end = seg.offset + seg.filesz
        if seg.memsz > seg.filesz and end % page and end - end % page >= elf.mapped_end:
            return (f"the end of the segment at {seg.offset:#x} ({seg.filesz} bytes) lies beyond the end of the file "
                    f"({elf.size} bytes)")
    return None


def missing_pages(elf: ElfFile) -> List[Tuple[int, int]]:
    """Address ranges of the pages mapped from ``elf`` that lie wholly beyond the end of the file (touching one
    is SIGBUS); empty for a whole file."""
    end = elf.mapped_end
    return [(seg.vaddr + max(seg.offset, end) - seg.offset, seg.vaddr + seg.filesz)
            for seg in elf.segments_of_type(C.PT_LOAD) if seg.offset + seg.filesz > end]


# What ld.so touches of an object, named by its dynamic section, by when: (address tag, size tag or None where
# only the start is known).
#: While loading, in every mode (ldd's too): the names of DT_NEEDED and DT_SONAME, the version check
#: (_dl_check_map_versions), and the hash table's header (_dl_setup_hash; the GNU one where there is one).
MAPPING_TABLES = ((C.DT_STRTAB, C.DT_STRSZ), (C.DT_VERDEF, None), (C.DT_VERNEED, None))
#: While relocating (ldd -r/-d, a real run): what the lookups read of every object in the scope...
_LOOKUP_TABLES = ((C.DT_SYMTAB, None), (C.DT_VERSYM, None))
#: ...and each object's own relocation tables (their targets are checked too).
_RELOCATION_TABLES = ((C.DT_REL, C.DT_RELSZ), (C.DT_RELA, C.DT_RELASZ), (C.DT_JMPREL, C.DT_PLTRELSZ),
                      (C.DT_RELR, C.DT_RELRSZ))
#: Before main, in a real run only (_dl_init): DT_INIT and DT_INIT_ARRAY; DT_PREINIT_ARRAY of the program only.
_INIT_TABLES = ((C.DT_INIT, None), (C.DT_INIT_ARRAY, C.DT_INIT_ARRAYSZ))
_PREINIT_TABLES = ((C.DT_PREINIT_ARRAY, C.DT_PREINIT_ARRAYSZ),)
_TABLE_NAMES = {C.DT_HASH: "DT_HASH", C.DT_GNU_HASH: "DT_GNU_HASH", C.DT_STRTAB: "DT_STRTAB",
                C.DT_SYMTAB: "DT_SYMTAB", C.DT_VERSYM: "DT_VERSYM", C.DT_VERDEF: "DT_VERDEF",
                C.DT_VERNEED: "DT_VERNEED", C.DT_REL: "DT_REL", C.DT_RELA: "DT_RELA", C.DT_JMPREL: "DT_JMPREL",
                C.DT_RELR: "DT_RELR", C.DT_PREINIT_ARRAY: "DT_PREINIT_ARRAY", C.DT_INIT: "DT_INIT",
                C.DT_INIT_ARRAY: "DT_INIT_ARRAY"}


def _table_beyond(elf: ElfFile, missing: List[Tuple[int, int]], tables: Sequence[Tuple[int, Optional[int]]],
                  hash_header: bool = False) -> Optional[str]:
    """Why touching one of ``tables`` of ``elf`` (and with ``hash_header`` the header of the hash table
    _dl_setup_hash reads) faults in a page of ``missing``, or None."""
    try:
        tags = elf.dynamic.tags
    except ElfError:
        return None  # what cannot be read is reported where it is read
    wanted = list(tables)
    if hash_header:
        wanted.append((C.DT_GNU_HASH if C.DT_GNU_HASH in tags else C.DT_HASH, None))
    for addr_tag, size_tag in wanted:
        if addr_tag in tags:
            lo = tags[addr_tag]
            hi = lo + max(tags.get(size_tag, 1) if size_tag else 1, 1)
            if any(lo < b and a < hi for a, b in missing):
                return (f"its {_TABLE_NAMES[addr_tag]} (at {lo:#x}) lies in a page beyond the end of the file "
                        f"({elf.size} bytes)")
    return None


def relocation_beyond(elf: ElfFile) -> Optional[Tuple[str, bool]]:
    """Why relocating with ``elf`` loaded faults in a page past the end of its file, or None: (the reason, True
    when it is a table the lookups of every object read, False when it is ``elf``'s own relocations: their
    tables, or a target they write (a lazy PLT slot too: ``elf_machine_lazy_rel`` adds the load address))."""
    from soswap.elf.hashtab import _words
    from soswap.elf.relocs import relocation_table_ranges

    missing = missing_pages(elf)
    if not missing:
        return None
    why = _table_beyond(elf, missing, _LOOKUP_TABLES)
    if why is not None:
        return why, True
    why = _table_beyond(elf, missing, _RELOCATION_TABLES)
    if why is not None:
        return why, False
    try:
        lay = elf.layout
        code = "Q" if lay.is64 else "I"
        for t in relocation_table_ranges(elf):
            offsets = _words(elf.read_at_vaddr(t.vaddr, t.size, t.name), code, lay.little)[::t.entsize // lay.addr_size]
            for a, b in missing:
                bad = next((o for o in offsets if a <= o < b), None)
                if bad is not None:
                    return (f"its {t.name} relocations write at {bad:#x}, in a page beyond the end of the file "
                            f"({elf.size} bytes)"), False
    except ElfError:
        return None  # what cannot be read is reported where it is read
    return None


def init_beyond(elf: ElfFile, preinit: bool = False) -> Optional[str]:
    """Why ``_dl_init`` faults running ``elf``'s DT_INIT or DT_INIT_ARRAY in a page past the end of its file,
    or None; with ``preinit``, its DT_PREINIT_ARRAY instead (the program's, run before every other
    initializer; a shared library's is ignored)."""
    missing = missing_pages(elf)
    return _table_beyond(elf, missing, _PREINIT_TABLES if preinit else _INIT_TABLES) if missing else None


UNLISTABLE: FrozenSet[str] = frozenset({"\0unlistable"})

#: The few messages of ld.so's own ``__strerror_r`` (elf/dl-minimal.c); every other errno is "Error N".
_LDSO_STRERROR = {
    errnomod.ENOMEM: "Cannot allocate memory",
    errnomod.EINVAL: "Invalid argument",
    errnomod.ENOENT: "No such file or directory",
    errnomod.EPERM: "Operation not permitted",
    errnomod.EIO: "Input/output error",
    errnomod.EACCES: "Permission denied",
}


def ldso_strerror(err: int) -> str:
    """``strerror`` as ld.so prints it."""
    return _LDSO_STRERROR.get(err, f"Error {err}")
