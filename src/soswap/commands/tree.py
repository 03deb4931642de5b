"""``soswap tree``: what the dynamic loader will load, bind and fail on, without running anything."""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple, TypeVar

from soswap.commands.argtypes import directory_name, positive_jobs
from soswap.errors import EXIT_ERROR, EXIT_FOUND, EXIT_OK, UsageError

if TYPE_CHECKING:
    from soswap.loader.bindstore import BindStore

T = TypeVar("T")

NAME = "tree"
HELP = "show what ld.so would load for each FILE, from where and why, and what would fail"
DESCRIPTION = """\
Emulate glibc's dynamic loader on each FILE (an executable or a shared library) without running it: the
objects it loads in ld.so's breadth-first order, where each was found and why (RPATH of which object,
RUNPATH, LD_LIBRARY_PATH, ld.so.cache, system directory, glibc-hwcaps subdirectory), and every failure with
the exact message ld.so would print. With -r, every symbol reference and symbol version is checked too,
and each unresolved reference is reported as failing at startup or at the first call.

By default the emulation uses the current environment (LD_LIBRARY_PATH, LD_PRELOAD, LD_BIND_NOW, the
working directory), as ldd does. --ldd prints exactly what `ldd FILE...` prints on this system (without the
load addresses) and exits with ldd's status.

Nothing is executed: files are only read. Binding results, and what was printed for each FILE, are kept in
the cache directory and reused while nothing they depend on has changed: every file's device, inode, size,
mtime and ctime, every directory the searches listed, the settings (--no-cache; docs/tree.md).

Exit status: 0 every FILE would load (and, with -r, every reference resolves), 1 a failure is predicted for
some FILE (at startup, or with -r at a first call), 2 error (unreadable or malformed FILE, bad arguments).
With --ldd: the status ldd would return."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="executables or shared libraries")
    parser.add_argument("-r", "--symbols", action="store_true",
                        help="also bind every symbol reference and check symbol versions (like ldd -r)")
    parser.add_argument("-d", "--data-relocs", action="store_true",
                        help="with --ldd: like ldd -d (data relocations only)")
    parser.add_argument("--ldd", action="store_true",
                        help="print exactly what ldd prints (without load addresses), with ldd's exit status")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json-tree.md)")
    parser.add_argument("--root", metavar="DIR", default="/",
                        help="resolve inside this system root (its ld.so.cache, ld.so and libraries)")
    parser.add_argument("--library-path", metavar="PATH", default=None,
                        help="LD_LIBRARY_PATH for the emulation (default: the current one)")
    parser.add_argument("--preload", metavar="LIST", default=None,
                        help="LD_PRELOAD for the emulation (default: the current one)")
    parser.add_argument("--clean-env", action="store_true",
                        help="ignore the current LD_LIBRARY_PATH, LD_PRELOAD and LD_BIND_NOW")
    parser.add_argument("--bind-now", action="store_true", help="as with LD_BIND_NOW=1")
    parser.add_argument("--cwd", metavar="DIR", default=None,
                        help="working directory of the program (default: the current one)")
    sec = parser.add_mutually_exclusive_group()
    sec.add_argument("--secure", dest="secure", action="store_true", default=None,
                     help="emulate secure mode (AT_SECURE, as for a set-user-ID program run by a user)")
    sec.add_argument("--no-secure", dest="secure", action="store_false",
                     help="never emulate secure mode (default: decide from the file's set-ID bits and "
                          "capabilities, its mount and the caller)")
    parser.add_argument("--platform", metavar="NAME", default=None, help="value of $PLATFORM (default: detected)")
    parser.add_argument("--cpuinfo", metavar="FILE", default=None,
                        help="the target's /proc/cpuinfo, or what LD_SHOW_AUXV=1 /bin/true prints there, for "
                             "its glibc-hwcaps and hwcap subdirectories and $PLATFORM (default: this machine's; "
                             "for a --root built for another machine, a CPU without optional features)")
    parser.add_argument("--glibc-hwcaps-mask", metavar="LIST", default=None,
                        help="only these glibc-hwcaps subdirectories (colon-separated), as ld.so's option")
    parser.add_argument("--inhibit-cache", action="store_true", help="do not use ld.so.cache")
    parser.add_argument("--replace", metavar="PATH=FILE", action="append", default=[],
                        help="what-if: resolve as if the file at PATH were FILE (repeatable)")
    parser.add_argument("--all", action="store_true", help="also show repeated requests for loaded objects")
    parser.add_argument("--cache-dir", metavar="DIR", type=directory_name,
                        help="where results are kept between runs (default: $SOSWAP_CACHE_DIR, "
                             "/var/cache/soswap as root, else $XDG_CACHE_HOME/soswap)")
    parser.add_argument("--no-cache", action="store_true",
                        help="compute everything afresh and keep nothing (see docs/tree.md, 'Result cache')")
    parser.add_argument("--jobs", "-j", type=positive_jobs, default=None, metavar="N",
                        help="worker processes for many files (default: one per usable CPU, up to 4; 1 = no workers)")


def _environment(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from soswap.loader import Environment

    environ: Dict[str, str] = dict(os.environ)
    if args.clean_env:
        for k in ("LD_LIBRARY_PATH", "LD_PRELOAD", "LD_BIND_NOW", "LD_DYNAMIC_WEAK"):
            environ.pop(k, None)
    if args.library_path is not None:
        environ["LD_LIBRARY_PATH"] = args.library_path
    if args.preload is not None:
        environ["LD_PRELOAD"] = args.preload
    if args.bind_now:
        environ["LD_BIND_NOW"] = "1"
    cwd = args.cwd
    if os.path.abspath(args.root) != "/":
        # inside a root, FILE and --cwd are the root's paths, and a program starts in its / (as under chroot)
        from soswap.loader.rootfs import RootFS

        cwd = posixpath.normpath(cwd) if cwd else "/"
        if not cwd.startswith("/"):
            raise UsageError(f"--cwd {cwd}: with --root, an absolute path inside the root")
        if not os.path.isdir(RootFS(args.root).host(cwd)):
            raise UsageError(f"--cwd {cwd}: not a directory under {args.root}")
    elif cwd is not None:
        if not os.path.isdir(cwd):
            raise UsageError(f"--cwd {cwd}: not a directory")
        cwd = os.path.abspath(cwd)
    env = Environment.from_environ(environ, cwd=cwd, secure=args.secure)
    changes: Dict[str, object] = {}
    if args.inhibit_cache:
        changes["inhibit_cache"] = True
    if args.glibc_hwcaps_mask is not None:
        changes["hwcaps_mask"] = tuple(x for x in args.glibc_hwcaps_mask.split(":") if x)
    return env.replace(**changes) if changes else env


def _substitutions(items: List[str]) -> Optional[Dict[str, str]]:
    if not items:
        return None
    out: Dict[str, str] = {}
    for item in items:
        path, sep, file = item.partition("=")
        if not sep or not path or not file:
            raise UsageError(f"--replace {item!r}: expected PATH=FILE")
        if not os.path.isfile(file):
            raise UsageError(f"--replace {item!r}: {file} is not a file")
        if out.get(path, file) != file:
            raise UsageError(f"--replace {path}: given twice, with {out[path]} and {file}")
        out[path] = file
    return out


def run(args: argparse.Namespace) -> int:
    import gc

    # A run allocates many small tuples and keeps most of them (the loader's caches) until it ends: the
    # cyclic collector would rescan them again and again for nothing (a third of the time of a large -r run).
    gc.disable()
    try:
        return _run(args)
    finally:
        gc.enable()


def _run(args: argparse.Namespace) -> int:
    from soswap.elf import ElfCache
    from soswap.loader import Loader, Profile

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: not a directory")
    if args.json and args.ldd:
        raise UsageError("--json cannot be combined with --ldd")
    if args.data_relocs and not args.ldd:
        raise UsageError("-d/--data-relocs goes with --ldd (use -r for the full symbol check)")
    env = _environment(args)
    profile = Profile.detect(args.root, cpuinfo=_cpuinfo(args.cpuinfo))
    if args.platform is not None:
        profile = profile.replace(platform=args.platform)
    loader = Loader(profile, env, cache=ElfCache())
    loader.execute_permission = True  # what happens when FILE runs: execve checks the execute bit
    problem = profile.ldcache.problem if not args.ldd else None  # --ldd prints exactly what ldd prints
    if problem:
        sys.stderr.write(f"soswap: warning: {problem}\n")
    if not args.no_cache and (args.symbols or args.data_relocs):  # the version check alone is not kept
        from soswap.loader.bindstore import BindStore

        loader.bind_store = BindStore.in_cache_dir(args.cache_dir)
    try:
        if args.ldd:
            return _run_ldd(loader, args)
        return _run_tree(loader, args)
    finally:
        if loader.bind_store is not None:
            loader.bind_store.save()  # a cache: when it cannot be written, the next run binds afresh


def _cpuinfo(path: Optional[str]) -> Optional[str]:
    """The text of ``--cpuinfo FILE`` (None: not given)."""
    if path is None:
        return None
    from soswap.loader.cpu import is_cpu_text
    from soswap.textfile import read_regular

    try:
        text = read_regular(path, 1 << 20).decode("utf-8", "replace")
    except OSError as exc:
        raise UsageError(f"--cpuinfo {path}: {exc.strerror or exc}") from None
    if not is_cpu_text(text):
        raise UsageError(f"--cpuinfo {path}: neither a /proc/cpuinfo nor what LD_SHOW_AUXV=1 prints")
    return text


def _run_ldd(loader, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from soswap.loader.ldd import EXITED, RELOCS_DATA, RELOCS_FUNCTION, RELOCS_NONE, LddModel

    relocs = RELOCS_FUNCTION if args.symbols else (RELOCS_DATA if args.data_relocs else RELOCS_NONE)
    model = LddModel(loader, relocs)
    out = sys.stdout
    err = sys.stderr
    files = list(args.files)
    single = len(files) == 1
    status = 0
    said, dies = model.shell_start()
    for line in said:
        err.write(line)
    if dies is not None:  # the shell running the ldd script cannot start: nothing else is printed
        return dies

    def one(file: str) -> Tuple[str, str, object]:
        """ldd's output for ``file``; a file soswap cannot emulate is one error line (ok None), and the others
        are still printed, as ldd goes on with the next file after most failures."""
        from soswap.errors import ResourceError, SoswapError, error_line

        try:
            return model.one(file)
        except ResourceError:
            raise  # soswap's own limits: no answer for this FILE or the next
        except SoswapError as exc:
            return "", error_line(_named(exc, file)), None

    for file, (so, se, ok) in zip(files, _map_files(one, files, args.jobs, loader.bind_store)):
        if not single:
            out.write(f"{file}:\n")
        if se:
            out.flush()
            err.write(se)
            err.flush()
        out.write(so)
        if ok == EXITED:  # the ldd script exits here: no later FILE is printed
            return 1
        if ok is None:
            status = EXIT_ERROR
        elif not ok and status != EXIT_ERROR:
            status = 1
    return status


def _run_tree(loader, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    subst = _substitutions(args.replace)
    files = list(args.files)
    # not under --root: paths inside a root are mapped to host paths by resolving the root's links in soswap,
    # so a link changed there would leave every watched host path as it was
    cacheable = not args.no_cache and subst is None and loader.profile.fs.is_host
    store = _result_store(loader, args) if cacheable else None
    kept: Dict[int, object] = {}
    file_facts = None
    if store is not None:
        file_facts = _file_facts(loader)
        # a JSON result is kept as its text (report.output.encoded), a tree as its lines
        kept = store.lookup(files, file_facts, lambda v: isinstance(v, str) and (not args.json or (
            v[:1] == "{" and v[-1:] == "}" and "\n" not in v)))

    bodies: Dict[tuple, object] = {}  # the trees of programs of one shape, made once (report.tree.tree_lines)
    todo = [f for n, f in enumerate(files) if n not in kept]
    # -r decodes every program's symbol tables and references: released after each FILE (not worth a stat of
    # every FILE without them)
    repeats = _repeats(loader, todo) if args.symbols else None

    def one(path: str) -> Tuple[int, object, str, object]:
        """The result, and the FILE's own witness when the result cache may keep it (its objects are then
        witnesses), else None."""
        # a FILE's own witness is taken before its tree is computed (in the worker that computes it): a change
        # after it is seen next time
        facts = file_facts(path) if file_facts is not None else None
        code, payload, err, res = _tree_one(loader, path, args, subst, bodies)
        # another ABI's profile is derived from files the cache does not watch: only the host's is kept
        keep = (store is not None and res is not None and res.profile is loader.profile
                and store.witnesses.add_result(res))
        if res is not None and repeats is not None:
            _release_after_last(loader, res, repeats)
        return code, payload, err, facts if keep else None

    harvest = absorb = None
    if store is not None:
        def harvest() -> object:
            store.witnesses.add_loader(loader)
            return store.witnesses.snapshot()

        absorb = store.witnesses.merge
    computed = iter(_map_files(one, todo, args.jobs, loader.bind_store, harvest, absorb))
    status = EXIT_OK
    docs = []
    out = sys.stdout
    if args.json:
        from soswap.report.output import RawJSON
    for n, file in enumerate(files):
        hit = kept.get(n)
        if hit is not None:
            code, payload, err = hit.status, hit.payload, hit.error  # type: ignore[attr-defined]
        else:
            code, payload, err, facts = next(computed)  # type: ignore[misc]
            if facts is not None:
                store.put(file, facts, code, payload, err)  # type: ignore[union-attr]
        if err:
            out.flush()
            sys.stderr.write(err)
        if args.json:
            docs.append(payload if hit is None else RawJSON(payload))
        elif payload:
            out.write(payload)  # type: ignore[arg-type]
        status = max(status, code)
    if args.json:
        from soswap.report.output import print_json

        print_json({"profile": loader.profile.describe(), "results": docs})
    if store is not None:
        from soswap.loader.resultstore import stat_witness

        store.witnesses.add_loader(loader)
        profile = loader.profile
        store.save([(p, stat_witness(p)) for p in (profile.fs.host(profile.cache_path),
                                                   profile.fs.host(profile.preload_path))])
    return status


def _repeats(loader, files: List[str]) -> Dict[tuple, int]:  # type: ignore[no-untyped-def]
    """How many of ``files`` each file given more than once (under other names: symbolic links, hard links)
    stands for, by identity: its program's tables are kept until the last of them is done."""
    from soswap.elf.source import identity_of

    seen: Dict[tuple, int] = {}
    for f in files:
        try:
            st = os.stat(loader.host_path(f))
        except (OSError, ValueError):
            continue
        ident = identity_of(st)
        seen[ident] = seen.get(ident, 0) + 1
    return {k: n for k, n in seen.items() if n > 1}


def _release_after_last(loader, res, repeats: Dict[tuple, int]) -> None:  # type: ignore[no-untyped-def]
    """:meth:`Loader.release` the program of ``res`` unless another FILE still to come is the same file."""
    elf = res.objects[0].elf if res.objects else None
    left = repeats.get(elf.identity, 0) if elf is not None else 0
    if left > 1:
        repeats[elf.identity] = left - 1  # type: ignore[union-attr]
    else:
        loader.release(res)


def _result_store(loader, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The results of earlier runs with these settings (docs/tree.md, "Result cache")."""
    from soswap.loader.resultstore import ResultStore

    # who reads: the IDs are in the environment; supplementary groups and capabilities decide access too
    settings = ("tree", args.symbols, args.json, args.all, repr(loader.env), repr(loader.profile),
                sorted(os.getgroups()), _capabilities())
    return ResultStore.in_cache_dir(args.cache_dir, settings)


def _capabilities() -> str:
    """The effective capability set of this process (``CapEff`` of /proc/self/status): root without
    CAP_DAC_OVERRIDE reads less than root."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return line.split()[1].decode("ascii", "replace")
    except OSError:
        pass
    return ""


def _file_facts(loader) -> Callable[[str], Tuple[object, Optional[str], Optional[bool]]]:  # type: ignore[no-untyped-def]
    """A FILE's witness for the result cache: its stat key (or errno), the ``$ORIGIN`` it would get, and for
    a file whose set-ID bits or capabilities may make it secure, whether its mount is ``nosuid``."""
    import stat

    from soswap.loader.environment import mount_nosuid
    from soswap.loader.resultstore import stat_key
    from soswap.loader.session import main_origin

    profile, env = loader.profile, loader.env
    fsys = loader.file_system(profile)
    fs = profile.fs
    host_of = (lambda p: p) if fs.is_host else fs.host
    origins: Dict[str, Optional[str]] = {}
    setid = stat.S_ISUID | stat.S_ISGID
    root_caller = env.uid == env.euid == 0 and env.gid == env.egid

    def facts(path: str) -> Tuple[object, Optional[str], Optional[bool]]:
        full = path if path[:1] == "/" else posixpath.join(env.cwd, path)
        host = host_of(full)
        try:
            st = os.lstat(host)
            link = stat.S_ISLNK(st.st_mode)
            if link:
                st = os.stat(host)
        except OSError as exc:
            return exc.errno or 0, None, None
        nosuid = mount_nosuid(host) if not root_caller or st.st_mode & setid else None
        # _dl_get_origin: the canonical directory; the same for every file of a directory but symbolic links
        d = full.rpartition("/")[0]
        origin = origins.get(d, False) if not link else False
        if origin is False:
            try:
                origin = main_origin(fsys, env, path, trace=False)
            except (OSError, ValueError):
                origin = None
            if not link:
                origins[d] = origin
        return stat_key(st), origin, nosuid  # type: ignore[return-value]

    return facts


def _tree_one(loader, path: str, args: argparse.Namespace, subst, bodies=None):  # type: ignore[no-untyped-def]
    """(exit status for this file, rendered text or JSON document, error line, the load result or None)."""
    from soswap.errors import ResourceError, SoswapError, error_line
    from soswap.loader.model import FIRST_CALL
    from soswap.report.tree import error_json, render_text, result_json

    if args.json:
        from soswap.report.output import encoded

    try:
        res = loader.load(path, substitutions=subst)
        bound = loader.bind(res) if args.symbols else loader.bind(res, relocate=False)
    except ResourceError:
        raise  # soswap's own limits: no answer for this FILE or the next
    except SoswapError as exc:
        text = " ".join(_named(exc, path).splitlines())
        return EXIT_ERROR, encoded(error_json(path, text)) if args.json else "", error_line(text), None
    # a failure at startup, an unresolved symbol, or what kills the program at a first call (check_match's
    # assertion; a warning printed at a first call has no exit status)
    failed = bound.fatal is not None or bound.unresolved or any(
        f.when == FIRST_CALL and f.exit_status is not None for f in bound.failures)
    code = EXIT_FOUND if failed else EXIT_OK
    # an object whose references cannot be checked (a malformed file): the report stands, the answer is open
    err = "".join(error_line(f"{res.objects[i].path or path}: its references cannot be checked: {why}")
                  for i, why in bound.unchecked)
    if err:
        code = EXIT_ERROR
    if args.json:
        return code, encoded(result_json(res, bound, args.symbols)), err, res
    return code, render_text(res, bound, show_all=args.all, symbols=args.symbols, bodies=bodies), err, res


def _named(exc: Exception, path: str) -> str:
    """The error text naming ``path`` as given: parsed files are shared by identity, so an error about the same
    file reached through another name (a second symlink to it) would name the first."""
    from soswap.errors import ElfError

    if isinstance(exc, ElfError) and exc.path != path:
        try:
            if os.path.samefile(exc.path, path):
                return str(ElfError(path, exc.problem, exc.offset))
        except OSError:
            pass
    return str(exc)


# -- many files on several CPUs ----------------------------------------------------------------------------

def _map_files(fn: Callable[[str], T], files: List[str], jobs: Optional[int],
               store: Optional[BindStore] = None,
               harvest: Optional[Callable[[], object]] = None,
               absorb: Optional[Callable[[object], None]] = None) -> List[T]:
    """``[fn(f) for f in files]``, over forked worker processes when there are many files
    (:mod:`soswap.commands.workers`). Each worker keeps its own caches; results come back in order, and the
    binding results the workers computed go into ``store``. ``harvest`` runs in each worker after its last
    file, and ``absorb`` gets what it returned in the parent (the result cache's witnesses). Falls back to one
    process where fork is unavailable."""
    if len(files) < 2 or jobs == 1:  # one file: not even the workers' module is imported
        return [fn(f) for f in files]
    from soswap.commands.workers import map_items

    def finish() -> Tuple[Dict[str, object], object]:
        return (store.take_new() if store is not None else {}), (harvest() if harvest is not None else None)

    out, finished = map_items(fn, files, jobs, prepare=store.load if store is not None else None, finish=finish)
    for new, harvested in finished:  # type: ignore[misc]
        if store is not None:
            store.merge(new)
        if absorb is not None:
            absorb(harvested)
    return out
