"""The ELF files a set of .deb packages would put in place, paired with the installed files they replace.

:func:`deb_replacements` reads each package's data archive (``dpkg-deb --fsys-tarfile``, streamed through
:mod:`tarfile`; nothing is unpacked onto the system and nothing from the package is run), copies its ELF
members into a private directory, and pairs each with the installed file it replaces. The pairing goes through
the names the package ships, symbolic links included: Debian's library packages name the real file by the full
version (``libfoo.so.1.2.4``), which the installed system does not have yet, and replace the installed
``libfoo.so.1.2.3`` only through the link ``libfoo.so.1`` that consumers load. So a package name that resolves,
inside the package, to an ELF member, and on the system to an installed ELF file, pairs the two.

It also names the installed files the transaction takes away (:attr:`DebReplacements.leaving`): the files of
the packages it removes, and those an upgraded package no longer ships (dpkg deletes them when it unpacks the
new version), read from dpkg's file lists. They are no consumers any more once the transaction is done.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import signal
import stat
import subprocess
import tarfile
import threading
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from soswap.abi.sysdirs import canonical_path
from soswap.cpus import usable_cpus
from soswap.elf import is_loadable_elf
from soswap.errors import SoswapError
from soswap.textfile import read_regular
from soswap.tuples import NamedTuple

_ELF_MAGIC = b"\x7fELF"
#: symbolic links followed inside one package before giving up (ELOOP in the kernel is 40)
_MAX_LINKS = 40


class DebReplacements(NamedTuple):
    """``pairs``: (extracted new file, installed file it replaces); ``new_files``: (extracted file, the path it
    will have) of ELF files nothing is installed at yet; ``packages``: the .deb files read; ``labels``: each
    extracted file's name for people, ``PACKAGE.deb:/path/in/package``; ``leaving``: the installed ELF files the
    transaction deletes, as canonical paths (see :func:`soswap.abi.sysdirs.canonical_path`)."""

    pairs: List[Tuple[str, str]]
    new_files: List[Tuple[str, str]]
    packages: List[str]
    labels: Dict[str, str]
    leaving: FrozenSet[str] = frozenset()


class _Package:
    """The members of one package's data archive that matter: ELF files (copied out) and symbolic links."""

    def __init__(self) -> None:
        self.name = ""  #: the control file's Package field
        self.arch = ""  #: its Architecture field
        self.elf: Dict[str, str] = {}  #: absolute path in the package -> the extracted copy
        self.links: Dict[str, str] = {}  #: absolute path -> link target, absolute
        self.others: set = set()  #: other regular files and directories

    def paths(self) -> Set[str]:
        """Every absolute path the package ships."""
        return {*self.elf, *self.links, *self.others}

    def resolve(self, path: str) -> Optional[str]:
        """The ELF member ``path`` names inside the package (following its links), or None."""
        for _ in range(_MAX_LINKS):
            if path in self.elf:
                return path
            target = self.links.get(path)
            if target is None:
                return None
            path = target
        return None


#: dpkg's diversions: "from", "to" and the diverting package ("PACKAGE" or ":" for a local one), one per line
DIVERSIONS = "/var/lib/dpkg/diversions"
#: dpkg's database: ``info/PACKAGE.list`` (``PACKAGE:ARCH.list`` for Multi-Arch: same) lists each installed
#: package's files, one absolute path per line
ADMINDIR = "/var/lib/dpkg"
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*\Z")  # Debian policy 5.6.1 (package), 5.6.8 (architecture)
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]*\Z")


def diversions(path: str = DIVERSIONS) -> Dict[str, Tuple[str, str]]:
    """{diverted path: (where dpkg puts other packages' file instead, diverting package)}; empty when the file
    cannot be read (no dpkg, or no diversion)."""
    try:
        lines = read_regular(path).decode("utf-8", "surrogateescape").split("\n")
    except OSError:
        return {}
    return {lines[i]: (lines[i + 1], lines[i + 2]) for i in range(0, len(lines) - 2, 3)
            if lines[i].startswith("/") and lines[i + 1].startswith("/")}


def deb_replacements(debs: Sequence[str], workdir: str, diverted: Optional[Dict[str, Tuple[str, str]]] = None,
                     removing: Sequence[Tuple[str, Optional[str]]] = (), admindir: str = ADMINDIR
                     ) -> DebReplacements:
    """Read ``debs`` (paths of .deb files) and pair their ELF files with the installed ones (module docstring).
    A path another package diverts (``diverted``, default :func:`diversions`) lands where dpkg diverts it: that
    is the installed file it replaces. ``removing``: (package, architecture or None) of the packages the same
    transaction removes; with the packages' own names and dpkg's database in ``admindir``, they give
    :attr:`DebReplacements.leaving`. The ELF members are copied into ``workdir``, which the caller removes.
    Raises :class:`SoswapError` when a package cannot be read."""
    if diverted is None:
        diverted = diversions()
    pairs: Dict[str, str] = {}  # installed file -> new file
    new_files: Dict[str, str] = {}
    # dpkg-deb's decompression is most of the time: one per CPU at once (the threads only wait on its pipe)
    from concurrent.futures import ThreadPoolExecutor

    readers = _Readers()
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(debs), usable_cpus(), 8)))
    try:
        packages = list(pool.map(readers.read, debs, [os.path.join(workdir, str(n)) for n in range(len(debs))]))
    except BaseException:  # an error, or the hook's timeout: no thread or dpkg-deb outlives the call
        readers.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    labels: Dict[str, str] = {}
    for deb, pkg in zip(debs, packages):
        for path, copy in pkg.elf.items():
            labels.setdefault(copy, f"{os.path.basename(deb)}:{path}")
        for packaged in sorted({*pkg.elf, *pkg.links}):
            member = pkg.resolve(packaged)
            if member is None:
                continue
            to, by = diverted.get(packaged, (packaged, pkg.name))
            name = to if by != pkg.name else packaged  # dpkg writes another package's diverted file at "to"
            if not os.path.lexists(name):
                if packaged == member and is_loadable_elf(pkg.elf[member]):
                    new_files.setdefault(name, pkg.elf[member])
                continue
            installed = os.path.realpath(name)
            if is_loadable_elf(installed):  # what ld.so loads: an object file or a kernel module has no consumers
                pairs.setdefault(installed, pkg.elf[member])
    leaving = _leaving(packages, removing, admindir, diverted)
    return DebReplacements([(new, old) for old, new in pairs.items()],
                           [(new, path) for path, new in new_files.items()], list(debs), labels, leaving)


def package_list(name: str, arch: Optional[str], admindir: str = ADMINDIR) -> Optional[str]:
    """The file list of the installed package ``name`` (``arch``: its architecture, or None when not known),
    or None when it is not installed or the name is not a package name. dpkg names the list
    ``NAME:ARCH.list`` for a Multi-Arch: same package and ``NAME.list`` otherwise; without ``arch``, a
    ``NAME:ARCH.list`` is taken only when it is the only one."""
    if not _NAME.match(name) or (arch is not None and not _ARCH.match(arch)):
        return None
    info = os.path.join(admindir, "info")
    candidates = [f"{name}:{arch}.list"] if arch else []
    candidates.append(f"{name}.list")
    for n in candidates:
        if os.path.isfile(os.path.join(info, n)):
            return os.path.join(info, n)
    if arch is None:
        try:
            qualified = [n for n in os.listdir(info) if n.startswith(f"{name}:") and n.endswith(".list")]
        except OSError:
            return None
        if len(qualified) == 1:
            return os.path.join(info, qualified[0])
    return None


def _listed(path: Optional[str]) -> List[str]:
    if path is None:
        return []
    try:
        data = read_regular(path)
    except OSError:
        return []
    return [os.fsdecode(line) for line in data.split(b"\n") if line.startswith(b"/") and line != b"/."]


def _leaving(packages: Sequence[_Package], removing: Sequence[Tuple[str, Optional[str]]], admindir: str,
             diverted: Dict[str, Tuple[str, str]]) -> FrozenSet[str]:
    """The installed ELF files the transaction deletes, canonical: every file of a removed package, and each
    file an upgraded package's installed version lists but its new version does not ship, unless a package of
    the transaction ships it (dpkg then hands it over) or another installed package lists it too (dpkg keeps a
    file while a package owns it)."""
    gone: Dict[str, str] = {}  # listed path -> the package that lists it
    lists: Set[str] = set()
    for pkg in packages:
        lst = package_list(pkg.name, pkg.arch or None, admindir) if pkg.name else None
        if lst is not None:
            lists.add(lst)
            shipped = pkg.paths()
            for path in _listed(lst):
                if path not in shipped:
                    gone.setdefault(path, pkg.name)
    for name, arch in removing:
        lst = package_list(name, arch, admindir)
        if lst is not None:
            lists.add(lst)
            for path in _listed(lst):
                gone.setdefault(path, name)
    if not gone:
        return frozenset()
    # one directory under two names (merged /usr: /lib is /usr/lib) is compared by its real path
    staying = {canonical_path(p) for pkg in packages for p in pkg.paths()}
    out: Set[str] = set()
    for path, owner in gone.items():
        to, by = diverted.get(path, (path, owner))
        on_disk = to if by != owner else path
        try:
            if not stat.S_ISREG(os.lstat(on_disk).st_mode):
                continue  # directories and links are no consumers
        except OSError:
            continue
        canon = canonical_path(on_disk)
        if canon not in staying and is_loadable_elf(on_disk):
            out.add(canon)
    if out:
        out -= _owned_elsewhere(out, lists, admindir)
    return frozenset(out)


def _owned_elsewhere(paths: Set[str], skip: Set[str], admindir: str) -> Set[str]:
    """Those of ``paths`` (canonical) that some file list other than ``skip`` names, under any alias."""
    info = os.path.join(admindir, "info")
    by_name: Dict[bytes, List[str]] = {}
    for p in paths:
        by_name.setdefault(os.fsencode(posixpath.basename(p)), []).append(p)
    owned: Set[str] = set()
    try:
        names = [n for n in os.listdir(info) if n.endswith(".list")]
    except OSError:
        return owned
    for n in names:
        lst = os.path.join(info, n)
        if lst in skip:
            continue
        try:
            data = read_regular(lst)
        except OSError:
            continue
        for base, wanted in by_name.items():
            if b"/" + base + b"\n" not in data and not data.endswith(b"/" + base):
                continue
            for line in data.split(b"\n"):
                if line.endswith(b"/" + base):
                    canon = canonical_path(os.fsdecode(line))
                    if canon in wanted:
                        owned.add(canon)
    return owned


class _Readers:
    """The package readers of one call, run on a thread pool; :meth:`stop` kills their dpkg-deb processes
    (the threads then see the end of the archive and return) and makes the readers not started yet return
    at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Set[subprocess.Popen] = set()
        self._stopped = False

    def read(self, deb: str, into: str) -> _Package:
        return _read(deb, into, self)

    def started(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.add(proc)
            if not self._stopped:
                return
        _kill_group(proc)

    def ended(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            running = list(self._running)
        for proc in running:
            _kill_group(proc)

    @property
    def stopped(self) -> bool:
        return self._stopped


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill dpkg-deb and the decompressor it forked (its own process group), unless already reaped."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass


def _read(deb: str, into: str, readers: _Readers) -> _Package:
    if readers.stopped:
        raise SoswapError(f"{deb}: not read (stopped)")
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise SoswapError("dpkg-deb is not installed")
    if not deb:
        raise SoswapError("empty file name")
    # opened here, never blocking (a FIFO would hang dpkg-deb), and handed over as its standard input: the
    # file checked is the file read
    try:
        fd = os.open(deb, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise SoswapError(f"{deb}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SoswapError(f"{deb}: not a regular file")
        deb_size = st.st_size
        os.set_blocking(fd, True)
        os.makedirs(into, mode=0o700)
        pkg = _Package()
        # its own process group, known to the readers: a hook's timeout kills it as it kills the others
        field = subprocess.Popen([dpkg_deb, "--field", "/dev/stdin", "Package", "Architecture"], stdin=fd,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        readers.started(field)
        try:
            out, _ = field.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            field.kill()
            out, _ = field.communicate()
        finally:
            readers.ended(field)
        if readers.stopped:
            raise SoswapError(f"{deb}: not read (stopped)")
        if field.returncode == 0:  # "Package: NAME" and "Architecture: ARCH" lines
            fields = dict(line.partition(": ")[::2] for line in out.decode(errors="replace").split("\n"))
            pkg.name, pkg.arch = fields.get("Package", "").strip(), fields.get("Architecture", "").strip()
        os.lseek(fd, 0, os.SEEK_SET)
        # its own process group: stop() kills it with the decompressor it forks
        proc = subprocess.Popen([dpkg_deb, "--fsys-tarfile", "/dev/stdin"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=fd, start_new_session=True)
    finally:
        os.close(fd)
    readers.started(proc)
    problem = None
    refused = False
    try:
        assert proc.stdout is not None
        budget = [_UNPACK_FLOOR + _UNPACK_RATIO * deb_size]
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for count, member in enumerate(tar):
                    _take(pkg, tar, member, os.path.join(into, str(count)), budget)
        except _Refused as exc:
            problem, refused = f"{deb}: {exc}: not checked", True
            try:  # nothing more of it is read (it may unpack to terabytes)
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        except (tarfile.TarError, OSError) as exc:
            problem = f"{deb}: cannot read the package's files: {exc}"
        if not refused:
            while proc.stdout.read(1 << 20):  # to its end, for dpkg-deb's own verdict
                pass
    finally:
        _, err = proc.communicate()
        readers.ended(proc)
    if refused:
        raise SoswapError(problem)
    if proc.returncode != 0:  # its own message says more than the empty or cut archive it left
        text = " ".join(err.decode(errors="replace").split()) or f"exit status {proc.returncode}"
        text = text[len("dpkg-deb: "):] if text.startswith("dpkg-deb: ") else text
        text = text.replace("/dev/stdin", deb)
        raise SoswapError(f"{deb}: dpkg-deb: {text}")
    if problem is not None:
        raise SoswapError(problem)
    return pkg


#: What the ELF files of one package may unpack to, at most: this much plus this many times the package's size
#: (xz packs libraries 3 to 10 times; a member of zeros, or a sparse one, is a bomb)
_UNPACK_FLOOR = 64 << 20
_UNPACK_RATIO = 50


class _Refused(Exception):
    """A package soswap does not unpack (a sparse member, or ELF files far larger than the package)."""


def _take(pkg: _Package, tar: tarfile.TarFile, member: tarfile.TarInfo, copy: str, budget: List[int]) -> None:
    path = posixpath.normpath("/" + member.name.lstrip("/"))
    if member.issparse():  # dpkg's tar extractor refuses these as well
        raise _Refused(f"{path} is a sparse file in the archive, which dpkg refuses")
    if member.issym():
        pkg.links[path] = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.linkname))
    elif member.islnk():  # a hard link to an earlier member: the same file under a second name
        first = posixpath.normpath("/" + member.linkname.lstrip("/"))
        if first in pkg.elf:
            pkg.elf[path] = pkg.elf[first]
    elif member.isreg():
        source = tar.extractfile(member)
        if source is None:
            return
        head = source.read(4)
        if head != _ELF_MAGIC:
            pkg.others.add(path)
            return
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            budget[0] -= len(head)
            while True:
                chunk = source.read(1 << 20)
                if not chunk:
                    break
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise _Refused(f"its ELF files unpack to far more than the package's size ({path} and before "
                                   "it: a compression bomb?)")
                out.write(chunk)
        pkg.elf[path] = copy
    else:
        pkg.others.add(path)


class DebCheck(NamedTuple):
    """What :func:`check_debs` found: how many installed ELF files the packages replace (``checked``), and the
    problems (:class:`soswap.abi.PreflightProblem`), which name the packages' files as ``PACKAGE.deb:/path``
    instead of their temporary copies."""

    checked: int
    packages: int
    problems: list
    #: the installed ELF files the transaction deletes (not checked as consumers), canonical paths
    leaving: FrozenSet[str] = frozenset()
    #: the review notes (kind ``review``: what could not be checked, compatible consumers to review), no reason
    #: to stop apt but never silent
    notes: tuple = ()


def check_debs(debs: Sequence[str], diverted: Optional[Dict[str, Tuple[str, str]]] = None,
               removing: Sequence[Tuple[str, Optional[str]]] = (), admindir: str = ADMINDIR,
               **discovery: object) -> DebCheck:
    """Check what installing ``debs`` would replace against its consumers, as one transaction, before anything
    is unpacked (``soswap install``'s preflight; ``discovery`` as for it: default, the running processes and the
    system's programs and plugins). The programs and plugins the transaction deletes (the packages it
    ``removing``, the files upgraded packages drop) are not checked; running processes always are."""
    import tempfile

    from soswap.abi.preflight import REVIEW_NOTE, preflight

    with tempfile.TemporaryDirectory(prefix="soswap-debs-") as work:
        plan = deb_replacements(debs, work, diverted, removing, admindir)
        problems = preflight(plan.pairs + plan.new_files, leaving=plan.leaving,
                             **discovery)  # type: ignore[arg-type]
    out = []
    notes = []
    for p in problems:
        text = p.message
        for copy, label in plan.labels.items():
            text = text.replace(copy, label)
        new = plan.labels.get(p.new, p.new)
        if p.kind == "consumer":  # "NEW breaks ..." -> "libfoo1_2.0_amd64.deb:/usr/lib/... breaks ..."
            text = text.replace("NEW ", f"{new} ", 1)
        # a review note is no reason to stop apt: said, not counted as a problem
        (notes if p.kind == REVIEW_NOTE else out).append(p._replace(new=new, message=text))
    return DebCheck(len(plan.pairs), len(debs), out, plan.leaving, tuple(notes))
