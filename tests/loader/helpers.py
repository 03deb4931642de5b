"""Oracles and helpers for the loader tests: the real ``ldd``, the real program, and soswap's model of both."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

from soswap.elf import ElfCache
from soswap.loader import Environment, Loader, Profile
from soswap.loader.ldd import RELOCS_NONE, LddModel

PathLike = Union[str, Path]
_ADDR = re.compile(r" \(0x[0-9a-f]+\)")

#: The environment the fixtures run in: no LD_* variable of the test runner leaks in.
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}


class Outcome(NamedTuple):
    stdout: str
    stderr: str
    status: int


def env_with(**extra: str) -> Dict[str, str]:
    env = dict(BASE_ENV)
    env.update(extra)
    return env


def real_ldd(*files: PathLike, cwd: Optional[PathLike] = None, env: Optional[Mapping[str, str]] = None,
             flag: Optional[str] = None) -> Outcome:
    """``ldd [flag] FILE...`` with the load addresses removed."""
    args = ["ldd"] + ([flag] if flag else []) + [str(f) for f in files]
    r = subprocess.run(args, cwd=cwd, env=dict(env if env is not None else BASE_ENV), capture_output=True,
                       text=True, errors="surrogateescape", timeout=60)
    return Outcome(_ADDR.sub("", r.stdout), r.stderr, r.returncode)


def model_ldd(*files: PathLike, cwd: Optional[PathLike] = None, env: Optional[Mapping[str, str]] = None,
              relocs: str = RELOCS_NONE, profile: Optional[Profile] = None) -> Outcome:
    """soswap's model of the same ``ldd`` call."""
    loader = make_loader(cwd=cwd, env=env, profile=profile)
    out = LddModel(loader, relocs).run([str(f) for f in files])
    return Outcome(out.stdout, out.stderr, out.status)


def make_loader(*, cwd: Optional[PathLike] = None, env: Optional[Mapping[str, str]] = None,
                profile: Optional[Profile] = None, secure: Optional[bool] = None) -> Loader:
    environment = Environment.from_environ(dict(env if env is not None else BASE_ENV),
                                           cwd=str(cwd) if cwd is not None else os.getcwd(), secure=secure)
    return Loader(profile or PROFILE, environment, cache=ElfCache())


PROFILE = Profile.detect()


def run_program(prog: PathLike, *args: str, cwd: Optional[PathLike] = None,
                env: Optional[Mapping[str, str]] = None) -> Outcome:
    """Run a fixture program (built by the test itself) and capture what the loader prints."""
    r = subprocess.run([str(prog), *args], cwd=cwd, env=dict(env if env is not None else BASE_ENV),
                       capture_output=True, text=True, errors="surrogateescape", timeout=60)
    return Outcome(r.stdout, r.stderr, r.returncode)


def predict(prog: PathLike, *, cwd: Optional[PathLike] = None, env: Optional[Mapping[str, str]] = None,
            symbols: bool = True, argv0: Optional[str] = None, secure: Optional[bool] = None,
            profile: Optional[Profile] = None):  # type: ignore[no-untyped-def]
    """soswap's prediction for running ``prog``: (LoadResult, BindResult)."""
    loader = make_loader(cwd=cwd, env=env, secure=secure, profile=profile)
    res = loader.load(str(prog), argv0=argv0 or str(prog))
    bound = loader.bind(res, relocate=symbols)
    return res, bound


def assert_ldd_parity(*files: PathLike, cwd: Optional[PathLike] = None, env: Optional[Mapping[str, str]] = None,
                      flag: Optional[str] = None) -> Outcome:
    """soswap's ``ldd`` model prints byte for byte what ``ldd`` prints (and exits the same)."""
    relocs = {None: "none", "-d": "data", "-r": "function"}[flag]
    want = real_ldd(*files, cwd=cwd, env=env, flag=flag)
    got = model_ldd(*files, cwd=cwd, env=env, relocs=relocs)
    assert got.stdout == want.stdout, f"stdout differs:\n--- ldd\n{want.stdout}--- soswap\n{got.stdout}"
    assert got.status == want.status
    assert got.stderr == want.stderr
    return want


def assert_run_prediction(prog: PathLike, *args: str, cwd: Optional[PathLike] = None,
                          env: Optional[Mapping[str, str]] = None) -> Outcome:
    """Run the program (without arguments: startup only) and check soswap predicted its loader messages and
    exit status. Returns the real outcome."""
    real = run_program(prog, *args, cwd=cwd, env=env)
    res, bound = predict(prog, cwd=cwd, env=env)
    fatal = bound.fatal
    loader_lines = [ln for ln in real.stderr.splitlines() if ln]
    if fatal is None:
        assert real.status != 127, f"soswap predicted a clean start; the program said {real.stderr!r}"
        warnings = [f.line for f in list(res.failures) + list(bound.failures)
                    if f.when == "warning" and f.kind != "copy-size"]
        assert warnings == loader_lines, f"warnings: {warnings} vs {loader_lines}"
    elif fatal.kind == "crash":  # killed by a signal: nobody prints the line, the warnings before it are printed
        assert real.status == 128 - fatal.exit_status, (real, fatal)
        warnings = [f.line for f in res.failures if f.when == "warning"]
        assert warnings == loader_lines, f"warnings: {warnings} vs {loader_lines}"
    else:
        assert real.status == fatal.exit_status, (real, fatal)
        assert fatal.line in loader_lines, f"predicted {fatal.line!r}, the program said {real.stderr!r}"
    return real


def lines(text: str) -> List[str]:
    return [ln for ln in text.splitlines() if ln]


def paths_of(res) -> List[str]:  # type: ignore[no-untyped-def]
    return [o.path for o in res.objects]


def by_name(res, name: str):  # type: ignore[no-untyped-def]
    for o in res.objects:
        if o.name == name or name in o.names:
            return o
    raise AssertionError(f"{name} not in {[o.name for o in res.objects]}")


def write_text(path: PathLike, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def sources_needing(*names: str) -> str:
    """A C program that calls ``int NAME(void)`` for each name and returns 0."""
    decls = "".join(f"int {n}(void);\n" for n in names)
    calls = "".join(f"    {n}();\n" for n in names)
    return f"{decls}int main(void) {{\n{calls}    return 0;\n}}\n"


def lib_source(*names: str, calls: Sequence[str] = ()) -> str:
    """A C library defining ``int NAME(void) { return 1; }`` for each name; ``calls`` are other functions
    it calls (declared extern)."""
    decls = "".join(f"int {c}(void);\n" for c in calls)
    body = "".join(f"{c}() + " for c in calls)
    return decls + "".join(f"int {n}(void) {{ return {body}1; }}\n" for n in names)


#: Two versions of libfoo.so of the same size: V2 lacks bar (what the cache tests replace V1 with).
CACHE_V1 = "int foo(void) { return 1; }\nint bar(void) { return 2; }\n"
CACHE_V2 = "int foo(void) { return 1; }\nint baz(void) { return 2; }\n"


def program_sets(root: Path, names: Sequence[str]) -> Dict[str, Path]:
    """One directory per name, for the tests of the caches kept between runs: ``lib/libfoo.so`` (V1),
    ``v2/libfoo.so`` (V2), ``prog`` and ``prog2`` (calling foo and bar, RUNPATH ``lib``) and an ``empty/``
    directory. The caller lets them age past the racy window before the first run."""
    from support.build import executable, rpath_flags, shared_lib

    out = {}
    for name in names:
        d = root / name
        lib = shared_lib(d / "lib" / "libfoo.so", CACHE_V1, soname="libfoo.so")
        shared_lib(d / "v2" / "libfoo.so", CACHE_V2, soname="libfoo.so")
        for prog in ("prog", "prog2"):
            executable(d / prog, sources_needing("foo", "bar"), flags=rpath_flags(str(lib.parent)),
                       libs=[f"-L{lib.parent}", "-lfoo"])
        (d / "empty").mkdir()
        out[name] = d
    return out
