"""What ``ldd [-d|-r] FILE...`` prints on this system (elf/ldd.bash.in and ld.so's trace mode), without the
load addresses and without running anything.

The script picks the first ld.so of its ``RTLDLIST`` that can run and whose ``--verify`` accepts the file,
then runs ``LD_TRACE_LOADED_OBJECTS=1 [LD_WARN=yes] [LD_BIND_NOW=yes] ld.so FILE`` with standard error merged
into standard output. :func:`ldd` models each of those steps.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple, Union

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.errors import ElfError, SoswapError
from soswap.loader import model as M
from soswap.loader.assertions import init_tls_assertion
from soswap.loader.candidates import ACCEPT, FileSystem, beyond_the_end, load_commands, overlapping
from soswap.loader.cpu import tunables_warning
from soswap.loader.loading import Loader
from soswap.loader.profile import Profile, abi_for, host_abi, same_cpu
from soswap.loader.versions import verneed_assertion
from soswap.textfile import read_regular
from soswap.tuples import NamedTuple

#: x86-64's ``RTLDLIST`` (ldd is generated per architecture; another ABI's is its own ld.so)
DEFAULT_RTLDLIST = ("/lib/ld-linux.so.2", "/lib64/ld-linux-x86-64.so.2", "/libx32/ld-linux-x32.so.2")
_RTLDLIST_RE = re.compile(r'^RTLDLIST="?([^"\n]*)"?\s*$', re.M)

#: ``ldd`` relocation modes.
RELOCS_NONE = "none"
RELOCS_DATA = "data"  # -d
RELOCS_FUNCTION = "function"  # -r
#: :meth:`LddModel.one` where the ldd script exits at that FILE.
EXITED = "exited"
#: What an ld.so run prints before its own output (standard error), in the order of the load's failures.
_STARTUP_WARNINGS = frozenset({M.TUNABLES, M.PRELOAD})


class LddOutput(NamedTuple):
    """What ``ldd`` writes and its exit status."""

    stdout: str
    stderr: str
    status: int


class Rtld(NamedTuple):
    path: str
    profile: Profile


def rtld_list(loader: Loader) -> Tuple[str, ...]:
    """``RTLDLIST`` read from the target's ``/usr/bin/ldd`` script (a file read, not a run)."""
    fs = loader.profile.fs
    for candidate in ("/usr/bin/ldd", "/bin/ldd"):
        try:
            text = read_regular(fs.host(candidate), 1 << 16).decode("utf-8", "replace")
        except OSError:
            continue
        m = _RTLDLIST_RE.search(text)
        if m:
            return tuple(m.group(1).split())
    abi = loader.profile.abi
    return DEFAULT_RTLDLIST if same_cpu(abi.name, "x86_64") else (abi.interpreter,)


def _runnable_abis(profile: Profile) -> Tuple[str, ...]:
    """Loader ABIs whose ``$rtld --version`` succeeds: those the running kernel executes, and for a root built
    for another machine, that machine's (ldd runs there, not under an emulator)."""
    machine = os.uname().machine
    if not same_cpu(profile.abi.name, host_abi()):
        return ("x86_64", "i386") if profile.abi.name == "x86_64" else (profile.abi.name,)
    if machine == "x86_64":
        abis = ["x86_64", "i386"]
        try:
            with open("/proc/cmdline", encoding="utf-8", errors="replace") as f:
                if "syscall.x32=y" in f.read():
                    abis.append("x32")
        except OSError:
            pass
        return tuple(abis)
    if machine == "aarch64":
        return ("aarch64",)
    return (machine,)


class LddModel:
    """``ldd`` for many files in one process: the loader, its caches and the usable ld.so list are shared."""

    def __init__(self, loader: Loader, relocs: str = RELOCS_NONE) -> None:
        self.loader = loader
        self.relocs = relocs
        #: the loader of the traces: GLIBC_TUNABLES=glibc.rtld.enable_secure=1 (glibc >= 2.40) puts ldd's shell
        #: in secure mode, which unsets the unsecure variables (unsecvars.h: GLIBC_TUNABLES, LD_LIBRARY_PATH,
        #: LD_PRELOAD, ...) before it runs ld.so: the trace itself is not secure
        self.tracer = loader
        env = loader.env
        if env.tunables_secure(loader.profile.glibc_version):
            self.tracer = loader.sibling(env.replace(library_path=None, preload=None, origin_path=None,
                                                     dynamic_weak=False, cpu_disabled=(), tunables=None))
        self.cwd = loader.env.cwd
        self._rtlds: Optional[List[Rtld]] = None

    def rtlds(self) -> List[Rtld]:
        if self._rtlds is None:
            out = []
            runnable = _runnable_abis(self.loader.profile)
            fs = self.loader.profile.fs
            for path in rtld_list(self.loader):
                host = fs.host(path)
                if not (os.path.exists(host) and os.access(host, os.X_OK)):
                    continue
                try:
                    elf = self.loader.cache.get(host)
                except ElfError:
                    continue
                abi = abi_for(elf.machine, elf.elf_class, elf.header.flags)
                if abi is None or abi.name not in runnable:
                    continue
                profile = self.loader.profile_for(elf.machine, elf.elf_class, elf.header.flags)
                if profile is None:
                    continue
                out.append(Rtld(path, profile.replace(interpreter=path) if profile.interpreter != path
                                else profile))
            self._rtlds = out
        return self._rtlds

    def run(self, files: List[str]) -> LddOutput:
        """The output of ``ldd FILE...``."""
        if not files:
            return LddOutput("", "ldd: missing file arguments\nTry `ldd --help' for more information.\n", 1)
        said, dies = self.shell_start()
        if dies is not None:
            return LddOutput("", "".join(said), dies)
        out: List[str] = []
        err: List[str] = list(said)
        result = 0
        single = len(files) == 1
        for file in files:
            if not single:
                out.append(f"{file}:\n")
            so, se, ok = self.one(file)
            out.append(so)
            err.append(se)
            if ok is EXITED:
                return LddOutput("".join(out), "".join(err), 1)
            if not ok:
                result = 1
        return LddOutput("".join(out), "".join(err), result)

    def shell_start(self) -> Tuple[List[str], Optional[int]]:
        """What the shell running the ldd script prints itself on standard error before anything else (its
        loader's warning for a malformed GLIBC_TUNABLES, and for its own preloads, LD_PRELOAD and
        /etc/ld.so.preload, that cannot be loaded), and the status it dies with when it cannot start, or None:
        a preload that loads can still need a library that is not found, a version that is not there, or a
        symbol it binds at startup. Then ldd prints nothing else."""
        fs = self.loader.profile.fs
        shell = "/bin/bash"
        try:
            first = read_regular(fs.host("/usr/bin/ldd"), 256).split(b"\n", 1)[0]
            if first.startswith(b"#!"):
                shell = os.fsdecode(first[2:].strip().split(b" ")[0]) or shell
        except OSError:
            pass
        loader = self.loader
        if (not loader.env.preload and not os.path.exists(fs.host(loader.profile.preload_path))
                and tunables_warning(loader.env.tunables, loader.profile.glibc_version) is None):
            return [], None
        try:
            res = loader.load(shell, argv0=shell)
            bound = (loader.bind(res) if res.fatal is None and any(o.kind == "preload" for o in res.objects)
                     else None)
        except SoswapError:
            return [], None
        said = [f.line + "\n" for f in res.failures if f.kind in _STARTUP_WARNINGS]
        fatal = res.fatal if res.fatal is not None and res.fatal.kind != M.PRELOAD else (
            bound.fatal if bound is not None else None)
        if fatal is None:
            return said, None
        if fatal.kind == M.CRASH:  # killed by a signal: the shell says nothing itself (status 128 + signal)
            return said, fatal.exit_status
        # ld.so's run of the shell (not traced): the error of the first object that fails, then exit
        return [*said, fatal.line + "\n"], fatal.exit_status

    def one(self, file: str) -> Tuple[str, str, Union[bool, str]]:
        """(stdout, stderr, success) of one file in the ldd loop; success is :data:`EXITED` where the ldd
        script exits (``ld.so --verify`` died: "exited with unknown exit code")."""
        name = file if "/" in file else "./" + file
        host = self._host(name)
        if not os.path.exists(host):
            return "", f"ldd: {name}: No such file or directory\n", False
        if not os.path.isfile(host):
            return "", f"ldd: {name}: not regular file\n", False
        if not os.access(host, os.R_OK):
            return "", f"ldd: error: you do not have read permission for `{name}'\n", False
        rtld, ret, tried = self._select(name, host)
        # each "ld.so --verify" run warns of a malformed GLIBC_TUNABLES on the script's standard error
        env = self.tracer.env
        said = "".join(w + "\n" for w in (tunables_warning(env.tunables, r.profile.glibc_version) for r in tried)
                       if w is not None)
        if ret not in (0, 1, 2):  # the script stops: no later FILE is looked at
            return "", f"{said}ldd: exited with unknown exit code ({ret})\n", EXITED
        if rtld is None or ret == 1:
            return "", f"{said}\tnot a dynamic executable\n", False
        text, status = self.trace(name, rtld)
        return text, said, status == 0

    def _host(self, name: str) -> str:
        path = name if name.startswith("/") else os.path.join(self.cwd, name)
        return self.loader.profile.fs.host(path)

    def _select(self, name: str, host: str) -> Tuple[Optional[Rtld], int, List[Rtld]]:
        """The ld.so that accepts the file, the last ``--verify`` status, and every ld.so run."""
        ret = 1
        tried = []
        for rtld in self.rtlds():
            tried.append(rtld)
            ret = self.verify(host, rtld.profile)
            if ret in (0, 2):
                return rtld, ret, tried
        return None, ret, tried

    def verify(self, host: str, profile: Profile) -> int:
        """``ld.so --verify FILE``: 0 dynamic program with an interpreter, 2 dynamic without one, 1 not
        loadable by this ld.so (rtld.c ``rtld_mode_verify``)."""
        fsys: FileSystem = self.loader.file_system(profile)
        try:
            st = os.stat(host)
            head = read_regular(host, 64)
        except OSError:
            return 1
        if fsys.check_header(head, st.st_size) is not None:
            return 1
        try:
            elf: ElfFile = self.loader.cache.get(host, st)
        except ElfError:
            return 1
        problem, loads = load_commands(elf)  # rtld_mode_verify maps the program as any object
        if problem is not None or (elf.type == C.ET_DYN and overlapping(loads)):
            return 1
        if fsys.noexec(host) and any(seg.flags & C.PF_X for seg in loads):
            return 1  # its executable mapping fails (EPERM) on a noexec mount
        if not elf.segments_of_type(C.PT_DYNAMIC):
            return 1  # main_map->l_ld == NULL
        if beyond_the_end(elf, elf.segments_of_type(C.PT_DYNAMIC)) is not None:
            return 128 + 7  # mapping a truncated program kills ld.so --verify with SIGBUS
        return 0 if elf.segments_of_type(C.PT_INTERP) else 2

    def trace(self, name: str, rtld: Rtld) -> Tuple[str, int]:
        """The merged output of ``LD_TRACE_LOADED_OBJECTS=1 ld.so NAME`` and its exit status."""
        res = self.tracer.load(name, trace=True, argv0=name, rtld_path=rtld.path, profile=rtld.profile)
        return render_trace(self.tracer, res, self.relocs)


def render_trace(loader: Loader, res: M.LoadResult, relocs: str) -> Tuple[str, int]:
    """The lines ld.so prints in trace mode for ``res`` (load addresses left out) and its exit status."""
    lines: List[str] = []
    for f in res.failures:
        if f.kind in _STARTUP_WARNINGS:
            lines.append(f.line)
    if res.fatal is not None and res.fatal.kind == M.CRASH:  # ld.so died mapping its objects: nothing more printed
        return "".join(x + "\n" for x in lines), res.fatal.exit_status or 135
    if res.fatal is not None and res.fatal.kind != M.PRELOAD:
        lines.append(res.fatal.line)
        return "".join(x + "\n" for x in lines), 127
    main = res.objects[0]
    warn = relocs != RELOCS_NONE
    b = loader.bind(res, bind_now=relocs == RELOCS_FUNCTION, warn=warn, relocate=warn)
    if b.unchecked:  # what ld.so makes of a file whose tables cannot be decoded is not known
        i, why = b.unchecked[0]
        raise ElfError(res.objects[i].path or res.argv0, f"its references cannot be checked: {why}")
    aborted = (verneed_assertion(res.profile.glibc_version), init_tls_assertion(res.profile.glibc_version))
    for f in b.failures:
        if f.kind in (M.VERSION, M.NO_VERSION_INFO, M.WEAK_VERSION):
            lines.append(f.line)
        elif f.line in aborted:
            lines.append(f.line)  # the version check aborted, or init_tls after it
            return "".join(x + "\n" for x in lines), 127
    if main.elf is None or not main.elf.dynamic.needed:
        lines.append("\tstatically linked")
    else:
        unlisted = res.unlisted
        for o in res.objects[1:]:
            if o.index in unlisted:  # rtld lists main_map->l_next onwards: a filtee of the program is before it
                continue
            name = o.name or res.argv0  # DSO_FILENAME: an empty name prints as the program's
            if not o.found:
                lines.append(f"\t{name} => not found")
            elif o.name == o.path:
                lines.append(f"\t{name}")
            else:
                lines.append(f"\t{name} => {o.path or res.argv0}")
    status = 0
    if warn:
        for f in b.failures:
            if f.kind == M.UNDEFINED_SYMBOL and f.symbol is not None:
                text = f"undefined symbol: {f.symbol}" + (f", version {f.version}" if f.version is not None else "")
                lines.append(f"{text}\t({f.name})")
            elif f.kind in (M.COPY_SIZE, M.PROTECTED_COPY, M.PROTECTED_FUNCTION):
                lines.append(f.line)
            elif f.kind in (M.ASSERTION, M.INDIRECT_EXTERN_ACCESS, M.BAD_RELOCATION):
                lines.append(f.line)
                status = 127
            elif f.kind == M.CRASH:
                status = 139  # the shell's command substitution keeps what was printed; ldd says nothing
    return "".join(x + "\n" for x in lines), status


def ldd(loader: Loader, files: List[str], relocs: str = RELOCS_NONE) -> LddOutput:
    """``ldd [-d|-r] FILE...`` (see :class:`LddModel`)."""
    return LddModel(loader, relocs).run(files)


__all__ = ["ACCEPT", "EXITED", "LddModel", "LddOutput", "ldd", "render_trace"]
