#!/usr/bin/env python3
"""Differential fuzzing of the search and binding model on random worlds of real libraries: the real ``ldd``
and the real program are the oracles.

    python bench/fuzz_worlds.py [--cases N] [--seed S] [--filters] [--many] [--keep DIR]

Each case builds, with gcc, a small world in a new directory: two to five libraries ``libwK.so`` whose
DT_NEEDED entries form a random graph (cycles included) and name them by SONAME, by another name or by a path
from the working directory; each library in zero to two of six directories (two of them ``$LIB`` and
``$PLATFORM``) as a *full* copy (``f_K``, ``g_K``, the data object ``d_K`` and the thread-local ``t_K``,
versions ``VK_1`` and ``VK_2``; some with ``d_K`` and ``g_K`` protected, ``d_K`` larger than the program's
copy, or ``f_K`` at two versions) or a *lean* one (``f_K`` only, ``VK_1`` only), some defining another
library's ``g_J`` and ``d_J`` too, some without symbol versioning, some placed as a symbolic link to another
copy; random DT_RPATH or DT_RUNPATH entries on every object (absolute, ``$ORIGIN``-relative, ``$LIB``,
``$PLATFORM``, braced, relative to the working directory, empty elements, unknown tokens, directories that do
not exist); a program linked against the full copies (some with ``-z now``, some references weak, some
position-dependent and taking a function's address), and a random ``LD_LIBRARY_PATH``, ``LD_PRELOAD`` and
``LD_BIND_NOW``. With ``--filters`` (other worlds for the same seeds), half the library copies also get a
DT_FILTER or DT_AUXILIARY entry naming another library by any of its names, or one that exists nowhere (rings
of filters included). Then, from the world's directory, the program run as
``bin/prog`` or by its absolute path:

* ``ldd`` and ``ldd -r`` against soswap's model of them (``soswap tree --ldd [-r]``): standard output,
  standard error and exit status must be identical;
* the program itself (it references every function and data object of its libraries but calls none) against
  the prediction of ``soswap tree -r``: the fatal line and the exit status, or the warnings and a clean start.
* with ``--many``, ``ldd [-r]`` over several FILEs in one call (the program, a copy of it beside it, up to three
  library files and a copy of the first): the ``FILE:`` headers, the loads the model shares between FILEs of
  one shape, libraries as FILEs (a filter library among them).

Every difference is printed with the case's seed and its world described; ``--keep DIR`` keeps the worlds that
differ there. A known difference (:data:`KNOWN`) is counted apart. The exit status is 1 when a case differs
otherwise, 2 when the tools are missing.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from soswap.elf import ElfCache
from soswap.loader import Environment, Loader, Profile
from soswap.loader.ldd import RELOCS_FUNCTION, RELOCS_NONE, LddModel

CC = os.environ.get("CC", "gcc")
ADDR = re.compile(r" \(0x[0-9a-f]+\)")
_PROFILE = Profile.detect()
#: where libraries go: plain directories, and the expansions of $LIB and $PLATFORM (lib/x86_64-linux-gnu, x86_64)
DIRS = ("d0", "d1", "d2", "sub/d3", _PROFILE.lib, _PROFILE.platform)
#: the directories above as dynamic string tokens name them
_TOKENS = {_PROFILE.lib: ("$LIB", "${LIB}"), _PROFILE.platform: ("$PLATFORM", "${PLATFORM}")}
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}


class World(NamedTuple):
    root: Path
    program: str  #: as run, from ``root``
    env: Dict[str, str]
    description: str


class BuildFailed(Exception):
    pass


def _cc(args: Sequence[str]) -> None:
    r = subprocess.run([CC, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildFailed(f"{CC} {' '.join(args)}:\n{r.stderr}")


def _path_list(rng: random.Random) -> str:
    """A DT_RPATH/DT_RUNPATH or LD_LIBRARY_PATH value: one to three elements."""
    elements = []
    for _ in range(rng.randint(1, 3)):
        d = rng.choice(DIRS)
        token = rng.choice(_TOKENS.get(d, (d,)))
        forms = ["{root}/" + token, "$ORIGIN/../" + token, "${ORIGIN}/../" + d, "$ORIGIN", d, "", "{root}/nothere",
                 "$ORIGIN/../../" + d.split("/")[-1], "$ORIGINAL/../" + d, "$NOTATOKEN/" + d]
        elements.append(rng.choices(forms, weights=[4, 4, 1, 1, 2, 0.5, 0.5, 0.5, 0.3, 0.3])[0])
    return ":".join(elements)


def _search_flags(rng: random.Random, root: Path) -> Tuple[List[str], str]:
    kind = rng.choice(["none", "rpath", "runpath", "runpath"])
    if kind == "none":
        return [], ""
    value = _path_list(rng).replace("{root}", str(root))
    if not value:  # an empty string is no entry at all for the linker
        value = ":"
    tag = "--disable-new-dtags" if kind == "rpath" else "--enable-new-dtags"
    return [f"-Wl,-rpath,{value}", f"-Wl,{tag}"], f"{kind.upper()}={value}"


def _lib_source(k: int, deps: Sequence[int], full: bool, also: Sequence[int] = (), flavour: str = "") -> str:
    """``also``: other libraries whose ``g_j`` and ``d_j`` this one defines too (interposition); ``flavour``:
    "protected" (``d_K`` and ``g_K`` of protected visibility), "bigger" (``d_K`` twice the size the program
    copied) or "two-versions" (``f_K`` at ``VK_1``, hidden, and at ``VK_2``, the default)."""
    ext = "".join(f"extern int f_{j}(void); extern int g_{j}(void); extern int d_{j}; extern __thread int t_{j};\n"
                  for j in deps)
    uses = "".join(f" + f_{j}() + g_{j}() + d_{j} + t_{j}" for j in deps)
    vis = '__attribute__((visibility("protected"))) ' if flavour == "protected" else ""
    data = f"int d_{k}[2] = {{7, 7}};\n" if flavour == "bigger" else f"{vis}int d_{k} = 7;\n"
    own = f"{data}{vis}int g_{k}(void) {{ return 2; }}\n__thread int t_{k} = 3;\n" if full else ""
    own += "".join(f"int d_{j} = 9;\nint g_{j}(void) {{ return 9; }}\n" for j in also)
    if flavour == "two-versions":  # f_K@VK_1 (hidden: what older programs bound to) and f_K@@VK_2
        return (f"{ext}{own}int f_{k}_old(void) {{ return 1{uses}; }}\nint f_{k}_new(void) {{ return 2{uses}; }}\n"
                f'__asm__(".symver f_{k}_old,f_{k}@V{k}_1");\n__asm__(".symver f_{k}_new,f_{k}@@V{k}_2");\n')
    return f"{ext}{own}int f_{k}(void) {{ return 1{uses}; }}\n"


def _version_script(k: int, full: bool, also: Sequence[int] = ()) -> str:
    extra = "".join(f" g_{j}; d_{j};" for j in also)
    if full:
        return f"V{k}_1 {{ global: f_{k};{extra} local: *; }};\nV{k}_2 {{ global: g_{k}; d_{k}; t_{k}; }} V{k}_1;\n"
    return f"V{k}_1 {{ global: f_{k};{extra} local: *; }};\n"


def _build_lib(out: Path, k: int, needed: Sequence[Tuple[int, Path]], full: bool, versioned: bool,
               extra: Sequence[str], soname: str = "", also: Sequence[int] = (), flavour: str = "") -> None:
    """Library ``k`` at ``out``; ``needed``: (library, stub whose DT_SONAME becomes the DT_NEEDED entry)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.name + ".c")
    src.write_text(_lib_source(k, [j for j, _stub in needed], full, also, flavour))
    args = ["-shared", "-fPIC", "-o", str(out), f"-Wl,-soname,{soname or f'libw{k}.so'}", "-Wl,--no-as-needed",
            *extra]
    if versioned:
        vs = out.with_name(out.name + ".map")
        vs.write_text(_version_script(k, full, also))
        args.append(f"-Wl,--version-script,{vs}")
    args += [str(src), *[str(stub) for _j, stub in needed]]
    _cc(args)
    src.unlink()


def _needed_name(rng: random.Random, k: int) -> str:
    """The DT_NEEDED entry naming library ``k``: its SONAME, another name of it, or a path from the working
    directory (a name with a slash is opened as it is)."""
    return rng.choices([f"libw{k}.so", f"libw{k}.so.1", f"{rng.choice(DIRS)}/libw{k}.so"], weights=[7, 2, 1])[0]


def _filter_flags(rng: random.Random, k: int, n: int) -> Tuple[List[str], str]:
    """Sometimes a DT_FILTER or DT_AUXILIARY entry on a copy of library ``k``: another library by any name it
    can be needed by, or a library that exists nowhere."""
    if rng.random() >= 0.5:
        return [], ""
    tag = rng.choice(["filter", "auxiliary"])
    others = [j for j in range(n) if j != k]
    name = "libnothere.so" if not others or rng.random() < 0.25 else _needed_name(rng, rng.choice(others))
    return [f"-Wl,--{tag}={name}"], f", {tag} {name}"


def build_world(rng: random.Random, root: Path, filters: Optional[random.Random] = None) -> World:
    """A random world in ``root`` (see the module's description); ``filters`` draws the DT_FILTER and
    DT_AUXILIARY entries of the libraries (none without it: the worlds of a seed stay as they were before
    filters were drawn)."""
    n = rng.randint(2, 5)
    versioned = [rng.random() < 0.7 for _ in range(n)]
    deps = [rng.sample([j for j in range(n) if j != k], rng.randint(0, min(2, n - 1))) for k in range(n)]
    prog_deps = rng.sample(range(n), rng.randint(1, min(3, n)))
    build = root / "build"
    stubs: Dict[Tuple[int, str], Path] = {}

    def stub(k: int) -> Tuple[int, Path]:
        """A full copy of library ``k`` without DT_NEEDED, whose DT_SONAME is the name a dependent uses."""
        name = _needed_name(rng, k)
        hit = stubs.get((k, name))
        if hit is None:
            hit = stubs[(k, name)] = build / str(len(stubs)) / f"libw{k}.so"
            _build_lib(hit, k, [], True, versioned[k], [], soname=name)
        return k, hit

    def names(needed: Sequence[Tuple[int, Path]]) -> List[str]:
        return [next(nm for (j2, nm), p in stubs.items() if p == path) for _j, path in needed]

    lines = [f"world: {n} libraries"]
    for k in range(n):
        placed: List[Path] = []
        for d in rng.sample(DIRS, rng.choices([0, 1, 2], weights=[1, 5, 4])[0]):
            file = rng.choices([f"libw{k}.so", f"libw{k}.so.1"], weights=[4, 1])[0]
            target = root / d / file
            if placed and rng.random() < 0.3:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.relpath(placed[0], target.parent), target)
                lines.append(f"  {d}/{file} -> {placed[0].relative_to(root)}")
                continue
            full = rng.random() < 0.6
            flags, search = _search_flags(rng, root)
            if rng.random() < 0.15:
                flags.append("-Wl,-z,now")
                search += ", -z now"
            needed = [stub(j) for j in deps[k]]
            # mostly versioned as the copy the others linked against, sometimes not (or the other way round)
            copy_versioned = versioned[k] if rng.random() < 0.8 else not versioned[k]
            also = [j for j in range(n) if j != k and rng.random() < 0.1]
            flavour = rng.choices(["", "protected", "bigger", "two-versions"],
                                  weights=[8, 1, 1, 2 if copy_versioned else 0])[0] if full else ""
            if filters is not None:
                filter_flags, filter_said = _filter_flags(filters, k, n)
                flags += filter_flags
                search += filter_said
            _build_lib(target, k, needed, full, copy_versioned, flags, also=also, flavour=flavour)
            if also:
                search += f", defines g/d of {also}"
            if flavour:
                search += f", {flavour} d_{k}"
            placed.append(target)
            if rng.random() < 0.2:  # the other name of the same file
                other = target.with_name(f"libw{k}.so.1" if file == f"libw{k}.so" else f"libw{k}.so")
                os.symlink(target.name, other)
                lines.append(f"  {d}/{other.name} -> {file}")
            lines.append(f"  {d}/{file}: {'full' if full else 'lean'}{'' if copy_versioned else ', unversioned'}, "
                         f"needs {names(needed)}{', ' + search.lstrip(', ') if search else ''}")
    needed = [stub(j) for j in prog_deps]
    weak = [j for j in prog_deps if rng.random() < 0.25]  # g_j and d_j referenced weakly: missing, they are 0
    ext = "".join(f"extern int f_{j}(void);\nextern __thread int t_{j};\n"
                  + ("__attribute__((weak)) " if j in weak else "") + f"extern int g_{j}(void);\n"
                  + ("__attribute__((weak)) " if j in weak else "") + f"extern int d_{j};\n" for j in prog_deps)
    uses = "".join(f" + f_{j}() + t_{j} + (g_{j} ? g_{j}() : 0) + (&d_{j} ? d_{j} : 0)" if j in weak
                   else f" + f_{j}() + t_{j} + g_{j}() + d_{j}" for j in prog_deps)
    # a position-dependent program taking a function's address: a canonical PLT entry (protected functions)
    fixed = rng.random() < 0.2
    if fixed:
        uses += "".join(f" + (int)(long)&g_{j}" for j in prog_deps)
    src = root / "prog.c"
    src.write_text(f"{ext}int main(int argc, char **argv) {{ (void)argv; if (argc > 100) return 0{uses}; "
                   "return 0; }\n")
    flags, search = _search_flags(rng, root)
    now = rng.random() < 0.25
    prog = root / "bin" / "prog"
    prog.parent.mkdir(parents=True, exist_ok=True)
    _cc(["-o", str(prog), "-Wl,--no-as-needed", *flags, *(["-Wl,-z,now"] if now else []),
         *(["-no-pie", "-fno-pic"] if fixed else []), str(src), *[str(p) for _j, p in needed]])
    prog_names = names(needed)
    shutil.rmtree(build)
    env = dict(BASE_ENV)
    if rng.random() < 0.5:
        env["LD_LIBRARY_PATH"] = _path_list(rng).replace("{root}", str(root))
    if rng.random() < 0.15:
        env["LD_BIND_NOW"] = "1"
    if rng.random() < 0.15:
        k = rng.randrange(n)
        env["LD_PRELOAD"] = rng.choice([f"libw{k}.so", f"{root}/{rng.choice(DIRS)}/libw{k}.so", "libnothere.so"])
    lines.append(f"  bin/prog needs {prog_names}{', ' + search if search else ''}{', -z now' if now else ''}"
                 f"{', -no-pie, takes &g' if fixed else ''}"
                 f"{', weak g/d of ' + str(weak) if weak else ''}")
    lines.append("  " + " ".join(f"{v}={env[v]!r}" for v in ("LD_LIBRARY_PATH", "LD_PRELOAD", "LD_BIND_NOW")
                                 if v in env))
    run_as = "bin/prog" if rng.random() < 0.5 else str(prog)
    return World(root, run_as, env, "\n".join(lines))


def _loader(world: World, profile: Profile) -> Loader:
    return Loader(profile, Environment.from_environ(world.env, cwd=str(world.root)), cache=ElfCache())


#: How long a command of a world may run (ldd, the program).
TIMEOUT = 60

#: The stack a command runs with when it did not end in :data:`TIMEOUT` seconds. Filters that walk one another
#: for ever in trace mode with a library not found among them make a new "not found" object at every turn, so
#: every turn is slower than the last: ld.so's 8 MiB stack runs out after 9 minutes here (ldd's status 1,
#: nothing printed), 1 MiB after 4 s, 256 KiB after 0.2 s. Nothing else ld.so does comes near that depth.
SMALL_STACK = 256 * 1024


def _small_stack() -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (SMALL_STACK, SMALL_STACK))


def _run(cmd: Sequence[str], world: World) -> Optional[subprocess.CompletedProcess]:
    """``cmd`` run in the world's directory and environment, in a session of its own; when it still runs after
    :data:`TIMEOUT` seconds it is killed with all its processes (ldd's ld.so too) and run once more with a
    :data:`SMALL_STACK` (the result's ``args`` then end with :data:`SMALL`); None when that does not end
    either."""
    for limit in (None, _small_stack):
        with subprocess.Popen(cmd, cwd=world.root, env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, errors="surrogateescape", start_new_session=True,
                              preexec_fn=limit) as proc:
            try:
                out, err = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                continue
        return subprocess.CompletedProcess([*cmd, SMALL] if limit else cmd, proc.returncode, out, err)
    return None


#: What :func:`_run` appends to the arguments of a run that needed the small stack.
SMALL = "<small stack>"


def ldd_difference(world: World, profile: Profile, flag: Optional[str],
                   files: Optional[List[str]] = None) -> Optional[str]:
    """The difference between ``ldd [flag] FILE...`` and soswap's model of it, or None; ``files``: the FILEs
    (default: the program alone; :func:`many_files` for several in one call)."""
    files = [world.program] if files is None else files
    out = LddModel(_loader(world, profile), RELOCS_FUNCTION if flag else RELOCS_NONE).run(files)
    got = (out.stdout, out.stderr, out.status)
    command = f"ldd {flag + ' ' if flag else ''}{' '.join(files)}"
    r = _run(["ldd", *([flag] if flag else []), *files], world)
    if r is None:
        return f"{command}: still ran after {TIMEOUT} s, with a small stack too; soswap said {got!r}"
    want = (ADDR.sub("", r.stdout), r.stderr, r.returncode)
    if got == want:
        return None
    if flag and reads_past_versions(world, profile):
        return KNOWN + f"{command}: read past a version array:\n" + _delta(want, got)
    if r.args[-1] == SMALL and want == (_SEARCH_LIST_LINE.sub("", got[0]), *got[1:]):
        return KNOWN + f"{command}: a FILE whose copies of filtees exhaust ld.so's memory ran out of the small " \
                       "stack the harness gives ld.so when another FILE loops for ever"
    if (_OUT_OF_MAPS.sub(_SEARCH_LIST, want[0]), *want[1:]) == got:
        return KNOWN + f"{command}: the mappings ran out while a segment was mapped, not at the search list's " \
                       "allocation"
    return f"{command}:\n" + _delta(want, got)


def many_files(world: World) -> List[str]:
    """FILEs for one ``ldd FILE...`` call: the program, a copy of it beside it (the same shape: the model shares
    the first one's load with it), and up to three of the world's library files as FILEs of their own (each
    its own load, with its own filters and RUNPATH), with a copy of the first beside it (a name no search
    asks for)."""
    prog = world.root / world.program if not world.program.startswith("/") else Path(world.program)
    twin = prog.with_name(prog.name + "-twin")
    if not twin.exists():
        shutil.copy2(prog, twin)
    files = [world.program, str(twin)]
    libs = sorted(p for d in DIRS for p in (world.root / d).glob("libw*.so*")
                  if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF")[:3]
    if libs:
        copy = libs[0].with_name(libs[0].name + ".twin")
        shutil.copy2(libs[0], copy)
        libs.insert(1, copy)
    return files + [str(p) for p in libs]


#: Where the copies of objects linked before the main map exhaust the process's mappings decides ld.so's message:
#: a copy whose segment cannot be mapped, or (soswap's prediction) the search list's allocation after it.
_OUT_OF_MAPS = re.compile(
    r"(: error while loading shared libraries: )[^:\n]+: failed to map segment from shared object$", re.M)
_SEARCH_LIST = r"\1cannot allocate symbol search list: Cannot allocate memory"
_SEARCH_LIST_LINE = re.compile(
    r"^[^\n]*: error while loading shared libraries: cannot allocate symbol search list: Cannot allocate memory\n",
    re.M)


def _delta(want: Tuple[str, str, int], got: Tuple[str, str, int]) -> str:
    """What soswap said differently from ldd: a unified diff of the standard output, then the rest."""
    import difflib

    lines = list(difflib.unified_diff(want[0].splitlines(), got[0].splitlines(), "ldd", "soswap", lineterm="", n=2))
    if want[1] != got[1]:
        lines.append(f"stderr: ldd {want[1]!r}, soswap {got[1]!r}")
    if want[2] != got[2]:
        lines.append(f"status: ldd {want[2]}, soswap {got[2]}")
    return "\n".join("    " + line for line in lines)


#: The start of a difference that is known and documented (docs/tree.md, "Remaining known differences"):
#: ``ldd -r`` with a dependency not found reads past the array of an object's version names (its size counts
#: only the versions of the files found), and prints what lies there, or dies of it. soswap models that memory
#: (``binding.VersionArena``) but not what lies past the last array or a hash taken as a pointer (see
#: :func:`reads_past_versions`).
KNOWN = "known: "


def reads_past_versions(world: World, profile: Profile) -> bool:
    """Whether ``ldd -r`` reads past an object's ``l_versions`` (``_dl_check_map_versions`` in trace mode sizes
    it by the version indexes of its definitions and of the files found; a relocation through a symbol whose
    DT_VERSYM index is higher reads what follows the array)."""
    from soswap.loader.symtab import RawSymbols, relocation_infos

    res = _loader(world, profile).load(world.program, trace=True, argv0=world.program)
    objs = res.objects

    def found(name: str) -> bool:  # find_needed: the first object of the chain known by that name
        return next((o.found for o in objs if name == o.path or name in o.names), False)

    for o in objs:
        if not o.found or o.elf is None or o.kind in ("vdso", "interpreter"):
            continue
        elf = o.elf
        high = max([d.index for d in elf.version_definitions]
                   + [e.index for need in elf.version_needs if found(need.file) for e in need.entries], default=0)
        versym = RawSymbols(elf).versym
        if high == 0 or versym is None:
            continue
        shift = 32 if elf.elf_class == 64 else 8
        if any(versym[i >> shift] & 0x7FFF > high for infos, _plt in relocation_infos(elf) for i in infos):
            return True
    return False


def run_difference(world: World, profile: Profile) -> Optional[str]:
    """The difference between running the program and what ``soswap tree -r`` predicts, or None."""
    r = _run([world.program], world)
    if r is None:
        return f"run: the program still ran after {TIMEOUT} s, with a small stack too"
    said = [ln for ln in r.stderr.splitlines() if ln]
    loader = _loader(world, profile)
    res = loader.load(world.program, argv0=world.program)
    bound = loader.bind(res)
    fatal = bound.fatal
    if fatal is None:
        warnings = [f.line for f in list(res.failures) + list(bound.failures)
                    if f.when == "warning"]
        if r.returncode == 0 and warnings == said:
            return None
        return f"run: predicted a clean start with {warnings!r}; the program exited {r.returncode}: {said!r}"
    if fatal.kind == "crash":  # killed by a signal: nobody prints the line, the warnings before it are printed
        warnings = [f.line for f in res.failures if f.when == "warning"]
        if r.returncode in (fatal.exit_status, 128 - fatal.exit_status) and warnings == said:
            return None
    elif r.returncode == fatal.exit_status and fatal.line in said:
        return None
    return f"run: predicted {fatal.line!r} (status {fatal.exit_status}); the program exited {r.returncode}: {said!r}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100, help="worlds to build and compare (default 100)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first case (default 1; case i uses seed+i)")
    ap.add_argument("--keep", metavar="DIR", help="copy the worlds that differ into DIR")
    ap.add_argument("--many", action="store_true",
                    help="also compare one ldd call over several FILEs: the program, a copy of it, libraries")
    ap.add_argument("--filters", action="store_true",
                    help="also give some library copies a DT_FILTER or DT_AUXILIARY entry (other worlds)")
    args = ap.parse_args(argv)
    if shutil.which(CC) is None or shutil.which("ldd") is None:
        print(f"fuzz_worlds: needs {CC} and ldd", file=sys.stderr)
        return 2
    profile = _PROFILE
    differ = known = 0
    with tempfile.TemporaryDirectory(prefix="soswap-worlds-") as tmp:
        for i in range(args.cases):
            seed = args.seed + i
            root = Path(tmp) / f"w{seed}"
            root.mkdir()
            try:
                world = build_world(random.Random(seed), root, random.Random(-seed) if args.filters else None)
            except BuildFailed as exc:
                print(f"seed {seed}: could not build the world: {exc}", file=sys.stderr)
                return 2
            found = [d for d in (ldd_difference(world, profile, None), ldd_difference(world, profile, "-r"),
                                 run_difference(world, profile)) if d is not None]
            if args.many:
                files = many_files(world)
                found += [d for d in (ldd_difference(world, profile, None, files),
                                      ldd_difference(world, profile, "-r", files)) if d is not None]
            if found and all(d.startswith(KNOWN) for d in found):
                known += 1
                print(f"seed {seed}: {found[0]}")
            elif found:
                differ += 1
                print(f"seed {seed}: {len(found)} difference(s)\n{world.description}")
                for d in found:
                    print("  " + d)
                if args.keep:
                    shutil.copytree(root, Path(args.keep) / root.name, symlinks=True)
            shutil.rmtree(root)
    print(f"{args.cases} worlds, {differ} with a difference, {known} with only a known one")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
