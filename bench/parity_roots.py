#!/usr/bin/env python3
"""The parity contract on other glibc releases: ``soswap tree --root R --ldd [-r]`` against the root's own
loader, ``chroot R ldd [-r]``, for every ELF file of R's /usr/bin, /usr/sbin and /usr/lib (recursive).

    python bench/parity_roots.py [--build | --build-only | --add-i386] [--base DIR] [--cache-dir DIR] [ROOT...]

ROOT names a directory under --base (default /srv/qa-roots): bullseye (glibc 2.31), jammy (2.35), noble
(2.39), trixie (2.41), sid (2.43); bullseye and trixie also carry i386 libc6, zlib1g and libstdc++6, so that
32-bit files and the 32-bit loader are among those compared; bookworm-i386 is a 32-bit system (its own /bin/sh
is i386). Roots built for other machines, all Debian 12 (glibc 2.36): bookworm-arm64 (aarch64), bookworm-armhf
(32-bit ARM, hard-float), bookworm-ppc64el (POWER, little-endian) and bookworm-s390x (big-endian); not checked
unless named.

A root of another machine runs under qemu-user (Debian's qemu-user-static, its binfmt_misc entry registered:
``cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register``, binfmt_misc mounted). soswap
models that machine itself, whose kernel maps a vDSO; qemu-user 7.2 maps none for these targets, so the vDSO
line is taken out of soswap's output before the comparison, and is the only thing taken out.

Building (network, a few minutes each; run as root): --build makes the missing roots with debootstrap, then
checks; --build-only makes them and stops. A root is made in NAME.tmp (removed first) and renamed to NAME only
when debootstrap and the i386 step both succeeded; a root that still has debootstrap's own /debootstrap
directory (an unfinished build) is not built, and is replaced. --add-i386 gives existing roots whose recipe has
them the i386 packages, without a rebuild, and stops.

Checking: per root and flag, one ``soswap tree --ldd`` run and one ``chroot ldd`` run over all the files; their
whole standard output, standard error and status are the verdict. The files that differ are then named: the
standard output is split at the ``FILE:`` headers (a missing header is a failure of that file), and a standard
error or status that differs is traced to single files by running both on halves of the list. Each difference
is printed as a unified diff (ldd to soswap). soswap's cache is a fresh directory per run (one subdirectory per
root), removed at the end, unless --cache-dir names one to keep. Results: docs/tree.md, "The parity contract".
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

SRC = str(Path(__file__).resolve().parent.parent / "src")
sys.path.insert(0, SRC)

from soswap.loader.rootfs import RootFS  # noqa: E402


class Recipe(NamedTuple):
    """How debootstrap makes a root: its suite, mirror, --include list, the script of its family for a suite
    this debootstrap has no script for, and whether the i386 packages are added."""

    suite: str
    mirror: str
    include: str
    family: str
    i386: bool = False
    #: debootstrap --arch for a root of another machine ("" = this machine's); its binfmt_misc entry's name
    arch: str = ""
    qemu: str = ""


DEBIAN = "http://deb.debian.org/debian"
UBUNTU = "http://archive.ubuntu.com/ubuntu"
ROOTS = {
    "bullseye": Recipe("bullseye", DEBIAN, "libssl1.1,openssh-client,curl,python3", "sid", True),
    "jammy": Recipe("jammy", UBUNTU, "openssh-client,curl,python3", "gutsy"),
    "noble": Recipe("noble", UBUNTU, "openssh-client,curl,python3", "gutsy"),
    "trixie": Recipe("trixie", DEBIAN, "libssl3t64,openssh-client,curl,python3", "sid", True),
    "sid": Recipe("sid", DEBIAN, "openssh-client,curl", "sid"),
    "bookworm-arm64": Recipe("bookworm", DEBIAN, "libssl3,libcurl4,python3-minimal", "sid", arch="arm64",
                             qemu="qemu-aarch64"),
    "bookworm-s390x": Recipe("bookworm", DEBIAN, "libssl3,python3-minimal", "sid", arch="s390x",
                             qemu="qemu-s390x"),
    "bookworm-armhf": Recipe("bookworm", DEBIAN, "libssl3,libcurl4,python3-minimal", "sid", arch="armhf",
                             qemu="qemu-arm"),
    "bookworm-ppc64el": Recipe("bookworm", DEBIAN, "libssl3,libcurl4,python3-minimal", "sid", arch="ppc64el",
                               qemu="qemu-ppc64le"),
    "bookworm-i386": Recipe("bookworm", DEBIAN, "libssl3,libcurl4,python3-minimal", "sid", arch="i386"),
}
DEFAULT_ROOTS = [n for n, r in ROOTS.items() if not r.qemu]
BINFMT = Path("/proc/sys/fs/binfmt_misc")
#: the kernel's vDSO as ldd lists it (emulated roots: taken out of soswap's output)
VDSO_LINE = re.compile(r"^\tlinux-(?:vdso|gate|vdso32|vdso64)\.so\.1\n", re.M)
SCRIPTS = Path("/usr/share/debootstrap/scripts")
I386 = ("libc6:i386", "zlib1g:i386", "libstdc++6:i386")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ADDR = re.compile(r" \(0x[0-9a-f]+\)$", re.M)
DIFF_LINES = 40  # of one file's diff
DIFF_FILES = 25  # files whose diff is printed; the others are named only


class Run(NamedTuple):
    """What one ``ldd`` or ``soswap tree --ldd`` run printed (load addresses removed) and its exit status."""

    stdout: str
    stderr: str
    status: int


# -- building


def built(root: Path) -> bool:
    """Whether ROOT is a finished root: it has its ldd, and debootstrap's own /debootstrap directory, which it
    removes last, is gone."""
    return (root / "usr/bin/ldd").exists() and not (root / "debootstrap").exists()


def mounts_under(path: Path) -> List[str]:
    """The mount points at or below PATH."""
    top = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
            if point == top or point.startswith(top + "/"):
                found.append(point)
    return found


def remove(path: Path) -> None:
    """Remove the directory tree PATH if it is there; refused while anything is mounted in it (removing would go
    into the mounted file system)."""
    if not os.path.lexists(path):
        return
    mounted = mounts_under(path)
    if mounted:
        raise SystemExit(f"{path}: {', '.join(mounted)} mounted there; unmount, then run again")
    shutil.rmtree(path)


def suite_script(recipe: Recipe) -> List[str]:
    """debootstrap's optional script argument: none when it has a script for the suite, else its family's
    (gutsy for Ubuntu: Debian 12's debootstrap has no ``noble``)."""
    if (SCRIPTS / recipe.suite).exists():
        return []
    return [str(SCRIPTS / recipe.family)]


def in_root(root: Path, *command: str) -> None:
    """Run COMMAND inside ROOT (chroot), non-interactively; an exit status other than 0 is an error."""
    env = {"PATH": PATH, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["chroot", str(root), *command], env=env, cwd="/", check=True)


@contextmanager
def host_resolver(root: Path) -> Iterator[None]:
    """The host's /etc/resolv.conf in ROOT meanwhile (apt needs the network); ROOT's own (file or symlink) is put
    back after, or none left when it had none. An aside copy left by an interrupted run is ROOT's own."""
    conf = root / "etc/resolv.conf"
    aside = root / "etc/resolv.conf.parity-roots"
    had = os.path.lexists(aside)
    if had:
        if os.path.lexists(conf):
            os.unlink(conf)
    elif os.path.lexists(conf):
        os.rename(conf, aside)
        had = True
    try:
        shutil.copyfile("/etc/resolv.conf", conf)
        yield
    finally:
        if os.path.lexists(conf):
            os.unlink(conf)
        if had:
            os.rename(aside, conf)


def has_i386(root: Path) -> bool:
    """Whether the i386 packages are installed in ROOT."""
    return all((root / "var/lib/dpkg/info" / f"{p}.list").exists() for p in I386)


def add_i386(root: Path) -> None:
    """Install the i386 packages in ROOT with its own dpkg and apt. Nothing is mounted: dpkg, apt and these
    packages' maintainer scripts run without /proc (checked on bullseye and trixie), debootstrap made /dev's
    nodes, and dpkg runs without a pseudo-terminal (no /dev/pts). apt's downloaded packages are removed after."""
    with host_resolver(root):
        in_root(root, "dpkg", "--add-architecture", "i386")
        in_root(root, "apt-get", "update")
        in_root(root, "apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", *I386)
        in_root(root, "apt-get", "clean")


def build(root: Path, name: str) -> None:
    """Make ROOT from NAME's recipe in ROOT.tmp (removed first), then replace ROOT (an unfinished build, if any)
    with it when debootstrap and the i386 step both succeeded."""
    recipe = ROOTS[name]
    tmp = root.with_name(root.name + ".tmp")
    remove(tmp)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={recipe.include}", "--no-check-gpg",
                    *([f"--arch={recipe.arch}"] if recipe.arch else []),
                    recipe.suite, str(tmp), recipe.mirror, *suite_script(recipe)], check=True)
    if recipe.i386:
        add_i386(tmp)
    mounted = mounts_under(tmp)
    if mounted or not built(tmp):
        raise SystemExit(f"{tmp}: not finished ({', '.join(mounted) or 'no usr/bin/ldd, or /debootstrap left'})")
    remove(root)
    os.rename(tmp, root)


# -- checking


def elf_files(root: Path) -> Dict[str, int]:
    """Every ELF file of ROOT's /usr/bin, /usr/sbin and /usr/lib (recursive), sorted, with its class (32 or
    64 bits)."""
    fs = RootFS(str(root))
    out = {}
    for d, recursive in (("/usr/bin", False), ("/usr/sbin", False), ("/usr/lib", True)):
        top = str(root) + d
        walk = os.walk(top) if recursive else [(top, [], os.listdir(top))]
        for here, _dirs, names in walk:
            for n in names:
                target = here[len(str(root)):] + "/" + n
                if "\n" in target or " " in target or ":" in target:
                    continue  # the FILE: headers could not be split back
                try:
                    with open(fs.host(target), "rb") as f:
                        head = f.read(5)
                except OSError:
                    continue
                if head[:4] == b"\x7fELF":
                    out[target] = 32 if head[4:] == b"\x01" else 64
    return dict(sorted(out.items()))


def text(data: bytes) -> str:
    """DATA as text; bytes that are not UTF-8 kept as surrogates."""
    return data.decode("utf-8", "surrogateescape")


def ldd(root: Path, flag: str, files: List[str]) -> Run:
    """``chroot ROOT ldd [FLAG] FILES...``, one run."""
    p = subprocess.run(["chroot", str(root), "/usr/bin/ldd", *([flag] if flag else []), *files],
                       env={"PATH": PATH}, capture_output=True, cwd="/", timeout=3600)
    return Run(ADDR.sub("", text(p.stdout)), text(p.stderr), p.returncode)


def soswap(root: Path, flag: str, files: List[str], cache: Path, state: Path) -> Run:
    """``soswap tree --root ROOT --ldd [FLAG] FILES...``, one run, with CACHE as its cache directory (for a
    root of another machine, without the vDSO line that qemu-user's ldd cannot print)."""
    env = {"PATH": PATH, "PYTHONPATH": SRC, "SOSWAP_CACHE_DIR": str(cache), "SOSWAP_STATE_DIR": str(state)}
    p = subprocess.run([sys.executable, "-m", "soswap", "tree", "--root", str(root), "--ldd",
                        *([flag] if flag else []), *files], env=env, capture_output=True, cwd="/", timeout=3600)
    out = text(p.stdout)
    if emulated(root):
        out = VDSO_LINE.sub("", out)
    return Run(out, text(p.stderr), p.returncode)


def emulated(root: Path) -> bool:
    """ROOT is built for another machine, whose programs run under qemu-user here."""
    recipe = ROOTS.get(root.name)
    return bool(recipe and recipe.qemu)


def split(out: str, files: List[str]) -> Dict[str, Optional[str]]:
    """OUT, the standard output of ldd on FILES, cut into each file's part: the text after its ``FILE:`` header
    line up to the next header found. Headers are looked for in FILES' order, each at the start of a line after
    the previous one found; a file whose header is not there has None. The text before the first header found
    is under "". One file: all of OUT (ldd prints no header)."""
    if len(files) == 1:
        return {files[0]: out}
    found: List[Tuple[str, int, int]] = []  # file, start of its header, end of it
    pos = 0
    for f in files:
        header = f + ":\n"
        at = out.find(header, pos)
        while at > 0 and out[at - 1] != "\n":
            at = out.find(header, at + 1)
        if at >= 0:
            found.append((f, at, at + len(header)))
            pos = at + len(header)
    parts: Dict[str, Optional[str]] = {"": out[:found[0][1]] if found else out, **dict.fromkeys(files)}
    for i, (f, _at, start) in enumerate(found):
        parts[f] = out[start:found[i + 1][1] if i + 1 < len(found) else len(out)]
    return parts


def culprits(root: Path, flag: str, files: List[str], cache: Path, state: Path,
             runs: Optional[Tuple[Run, Run]] = None) -> List[Tuple[str, Run, Run]]:
    """The files whose own runs (ldd's, soswap's) differ in standard error or status, with those runs: found by
    running both on halves of FILES while the halves' runs differ. RUNS: both runs on FILES, when made."""
    want, got = runs or (ldd(root, flag, files), soswap(root, flag, files, cache, state))
    if (want.stderr, want.status) == (got.stderr, got.status):
        return []
    if len(files) == 1:
        return [(files[0], want, got)]
    mid = len(files) // 2
    return (culprits(root, flag, files[:mid], cache, state) +
            culprits(root, flag, files[mid:], cache, state))


def diff(want: Optional[str], got: Optional[str], what: str) -> List[str]:
    """The unified diff from ldd's WANT to soswap's GOT (None: no ``FILE:`` header), at most DIFF_LINES lines."""
    def lines(s: Optional[str]) -> List[str]:
        return ["(no FILE: header)\n"] if s is None else s.splitlines(keepends=True)

    out = []
    for line in difflib.unified_diff(lines(want), lines(got), f"ldd: {what}", f"soswap: {what}"):
        out.append(line[:-1] if line.endswith("\n") else line)
        if not line.endswith("\n"):
            out.append("\\ No newline at end of file")
    more = len(out) - DIFF_LINES
    out = out[:DIFF_LINES] + ([f"... {more} more lines"] if more > 0 else [])
    return [line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for line in out]


def show(lines: List[str]) -> None:
    """Print LINES indented under a file's name."""
    for line in lines:
        print("      " + line)


def verdict(want: str, got: str) -> str:
    """How soswap's whole GOT compares with ldd's WANT."""
    return "identical" if got == want else "DIFFERS"


def check(root: Path, name: str, flag: str, files: Dict[str, int], cache: Path, state: Path) -> int:
    """Compare one flag on ROOT; print the verdict and every difference. Returns the number of differences
    (files, and whole-run outputs that differ without a file to name)."""
    names = list(files)
    label = f"ldd {flag}".strip()
    t0 = time.monotonic()
    want = ldd(root, flag, names)
    t1 = time.monotonic()
    got = soswap(root, flag, names, cache, state)
    t2 = time.monotonic()
    want_parts, got_parts = split(want.stdout, names), split(got.stdout, names)
    stdout_differ = {f for f in names if got_parts[f] != want_parts[f]}
    errors_differ = (want.stderr, want.status) != (got.stderr, got.status)
    traced = {f: (w, g) for f, w, g in culprits(root, flag, names, cache, state, (want, got))} if errors_differ else {}
    differ = [f for f in names if f in stdout_differ or f in traced]
    print(f"{name} {label}: {len(names)} files ({sum(b == 32 for b in files.values())} 32-bit), "
          f"{len(names) - len(differ)} identical; standard output {verdict(want.stdout, got.stdout)}, standard "
          f"error {verdict(want.stderr, got.stderr)}, status {got.status} (ldd {want.status}); ldd {t1 - t0:.1f} s, "
          f"soswap {t2 - t1:.1f} s")
    for i, f in enumerate(differ):
        print(f"  differs: {f}")
        if i >= DIFF_FILES:
            continue
        if f in stdout_differ:
            show(diff(want_parts[f], got_parts[f], f"{label} {f}, standard output"))
        if f in traced:
            w, g = traced[f]
            if w.stderr != g.stderr:
                show(diff(w.stderr, g.stderr, f"{label} {f} alone, standard error"))
            if w.status != g.status:
                show([f"status of {label} {f} alone: ldd {w.status}, soswap {g.status}"])
    bad = len(differ)
    if got_parts.get("") != want_parts.get(""):
        print("  standard output before the first header differs:")
        show(diff(want_parts.get(""), got_parts.get(""), f"{label}, before the first header"))
        bad += 1
    elif got.stdout != want.stdout and not stdout_differ:
        print("  standard output differs outside the files' parts:")
        show(diff(want.stdout, got.stdout, f"{label}, whole standard output"))
        bad += 1
    if errors_differ and not traced:
        print("  standard error or status differs, and on no single file:")
        show(diff(want.stderr, got.stderr, f"{label}, whole standard error"))
        show([f"status: ldd {want.status}, soswap {got.status}"])
        bad += 1
    return bad


def glibc(root: Path) -> str:
    """The first line of ROOT's ``ldd --version`` (its glibc release and package version)."""
    p = subprocess.run(["chroot", str(root), "/usr/bin/ldd", "--version"], env={"PATH": PATH},
                       capture_output=True, cwd="/", check=True)
    return text(p.stdout).splitlines()[0]


def check_root(root: Path, name: str, cache: Path, state: Path) -> int:
    """Compare both flags on ROOT with a cache directory of its own; print when, glibc and the wall time."""
    start = time.monotonic()
    recipe = ROOTS.get(name)
    lacking = " (no i386 packages: --add-i386 adds them)" if recipe and recipe.i386 and not has_i386(root) else ""
    print(f"{name}: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {glibc(root)}{lacking}")
    files = elf_files(root)
    (cache / name).mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    bad = sum(check(root, name, flag, files, cache / name, state) for flag in ("", "-r"))
    print(f"{name}: {time.monotonic() - start:.0f} s wall time")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="*", default=DEFAULT_ROOTS, metavar="ROOT")
    ap.add_argument("--base", default="/srv/qa-roots")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--build", action="store_true", help="make missing roots with debootstrap, then check")
    mode.add_argument("--build-only", action="store_true", help="make missing roots with debootstrap; no check")
    mode.add_argument("--add-i386", action="store_true",
                      help="install the i386 packages in existing roots whose recipe has them; no check")
    ap.add_argument("--cache-dir", type=Path,
                    help="soswap's cache (one subdirectory per root; default: a fresh one, removed at the end)")
    args = ap.parse_args()
    unknown = [n for n in args.roots if n not in ROOTS and (args.build or args.build_only or args.add_i386)]
    if unknown:
        ap.error(f"no recipe for {', '.join(unknown)} (known: {', '.join(ROOTS)})")
    work = Path(tempfile.mkdtemp(prefix="parity-roots-"))
    try:
        bad = 0
        for name in args.roots:
            root = Path(args.base) / name
            if args.add_i386:
                if not built(root):
                    print(f"{name}: no finished root at {root}")
                    bad += 1
                elif not ROOTS[name].i386 or has_i386(root):
                    print(f"{name}: {'has the i386 packages' if ROOTS[name].i386 else 'no i386 in its recipe'}")
                else:
                    add_i386(root)
                    print(f"{name}: i386 packages added")
                continue
            qemu = ROOTS[name].qemu if name in ROOTS else ""
            if qemu and not (BINFMT / qemu).exists():
                print(f"{name}: {BINFMT / qemu} is not registered (qemu-user-static: see the top of this file)")
                bad += 1
                continue
            if not built(root):
                if not (args.build or args.build_only):
                    print(f"{name}: no finished root at {root} (--build makes it)")
                    continue
                build(root, name)
                print(f"{name}: built at {root}")
            if not args.build_only:
                bad += check_root(root, name, args.cache_dir or work / "cache", work / "state")
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
