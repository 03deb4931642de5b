"""DT_FILTER and DT_AUXILIARY (dl-deps.c): the filtee goes before its filter in the search list and in the chain
of loaded objects (what ldd prints); in trace mode a missing filtee is a "not found" entry there, while the
program itself dies of a missing DT_FILTER filtee and ignores a missing DT_AUXILIARY one. ``ldd``, ``ldd -r``
and running the program are the oracles."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from loader.helpers import assert_ldd_parity, assert_run_prediction, env_with, predict
from support.build import executable, requires_cc, shared_lib

pytestmark = requires_cc

X = "int x(void) { return 0; }\n"
Y = "int y(void) { return 0; }\n"
MAIN_X = "int x(void);\nint main(void) { return x(); }\n"


def _filters(tmp_path: Path, *flags: str, needs: List[str] = ()) -> Path:  # type: ignore[assignment]
    """A program that calls x() from libfilt.so (built with ``flags``: --filter/--auxiliary), found through
    RUNPATH $ORIGIN, needing ``needs`` after libfilt.so; the filtees libx.so/liby.so are in lib/."""
    shared_lib(tmp_path / "lib" / "libx.so", X, soname="libx.so")
    shared_lib(tmp_path / "lib" / "liby.so", Y, soname="liby.so")
    shared_lib(tmp_path / "libfilt.so", X, soname="libfilt.so", flags=list(flags))
    return executable(tmp_path / "prog", MAIN_X, flags=["-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags",
                                                        "-Wl,--no-as-needed"],
                      libs=[f"-L{tmp_path}", "-lfilt", f"-L{tmp_path / 'lib'}", *[f"-l{n}" for n in needs]])


@pytest.mark.parametrize("flag", ["--filter", "--auxiliary"])
@pytest.mark.parametrize("found", [False, True])
def test_one_filtee_found_or_missing(tmp_path: Path, flag: str, found: bool) -> None:
    prog = _filters(tmp_path, f"-Wl,{flag},libx.so")
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "lib")) if found else None
    for relocs in (None, "-r"):
        out = assert_ldd_parity(prog, env=env, flag=relocs)
    assert out.status == 0
    lines = out.stdout.splitlines()
    at = [n for n, line in enumerate(lines) if line.startswith("\tlibx.so =>")]
    assert at and lines[at[0] + 1].startswith("\tlibfilt.so =>")  # right before its filter
    real = assert_run_prediction(prog, env=env)
    assert (real.status == 127) == (flag == "--filter" and not found)
    if found:
        res, _ = predict(prog, env=env)
        names = [o.name for o in res.objects]
        assert names.index("libx.so") + 1 == names.index("libfilt.so")
        filt = next(o for o in res.objects if o.name == "libfilt.so")
        assert filt.needed_names == ("libx.so",)  # the tree's label for the filtee


def test_two_filtees_keep_their_order_before_the_filter(tmp_path: Path) -> None:
    prog = _filters(tmp_path, "-Wl,--auxiliary,libx.so", "-Wl,--auxiliary,liby.so")  # ld keeps one --filter
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "lib"))
    out = assert_ldd_parity(prog, env=env)
    order = [line.split()[0] for line in out.stdout.splitlines()]
    assert order.index("libx.so") < order.index("liby.so") < order.index("libfilt.so")
    assert_ldd_parity(prog, flag="-r", env=env)
    assert assert_ldd_parity(prog).stdout.count("=> not found") == 2  # both missing
    assert_run_prediction(prog, env=env)


@pytest.mark.parametrize("needs", [["x"], ["y", "x"]])
def test_a_filtee_the_program_also_needs_later_moves_before_the_filter(tmp_path: Path, needs: List[str]) -> None:
    """libx.so is already in the list behind libfilt.so (a DT_NEEDED of the program after it): dl-deps.c moves
    it before the filter, in the search list and in the chain."""
    prog = _filters(tmp_path, "-Wl,--filter,libx.so", needs=needs)
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "lib"))
    for relocs in (None, "-r"):
        assert_ldd_parity(prog, env=env, flag=relocs)
    assert_run_prediction(prog, env=env)
    res, _ = predict(prog, env=env)
    names = [res.objects[i].name for i in res.scope]
    assert names.index("libx.so") < names.index("libfilt.so")


def test_a_filter_library_given_to_ldd(tmp_path: Path) -> None:
    """ldd of the filter library itself: no DT_NEEDED, so "statically linked", even with its filtee missing."""
    _filters(tmp_path, "-Wl,--filter,libx.so")
    out = assert_ldd_parity(tmp_path / "libfilt.so")
    assert out.status == 0
