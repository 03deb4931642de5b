"""The what-if API: ``loader.load(path, substitutions={P: F})`` predicts what happens once file F sits at path P,
without touching the disk. Each prediction is then checked by really putting F at P and running the program."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loader.helpers import by_name, make_loader, predict, run_program
from soswap.elf import ElfFile
from support.build import executable, requires_cc, rpath_flags, shared_lib

pytestmark = requires_cc


def _app(tmp: Path) -> Path:
    lib = tmp / "lib"
    shared_lib(lib / "libapp.so.1", "int f1(void) { return 0; }\nint f2(void) { return 3; }\n", soname="libapp.so.1")
    main = "int f1(void); int f2(void);\nint main(int c, char **v) { return c > 1 ? f2() : f1(); }\n"
    return executable(tmp / "e", main, flags=rpath_flags(str(lib)), libs=[f"-L{lib}", "-l:libapp.so.1"])


def test_substitute_a_library_missing_a_function(tmp_path: Path) -> None:
    e = _app(tmp_path)
    target = tmp_path / "lib" / "libapp.so.1"
    new = shared_lib(tmp_path / "new" / "libapp.so.1", "int f1(void) { return 0; }\n", soname="libapp.so.1")
    before = target.read_bytes()
    loader = make_loader()
    res = loader.load(str(e), substitutions={str(target): str(new)})
    lib = by_name(res, "libapp.so.1")
    assert lib.path == str(target) and lib.file == str(new) and lib.substituted
    bound = loader.bind(res)
    assert [(u.symbol, u.when) for u in bound.unresolved] == [("f2", "first-call")]
    assert target.read_bytes() == before  # nothing on disk changed
    # the oracle: really install it
    shutil.copy(new, target)
    assert run_program(e).status == 0
    real = run_program(e, "x")
    assert real.status == 127 and bound.failures[-1].line in real.stderr


def test_substitute_with_another_soname_and_origin_of_p(tmp_path: Path) -> None:
    e = _app(tmp_path)
    target = tmp_path / "lib" / "libapp.so.1"
    helper = shared_lib(tmp_path / "lib" / "libhelper.so", "int h(void) { return 0; }\n", soname="libhelper.so")
    new = shared_lib(tmp_path / "new" / "libapp.so.1", "int h(void);\nint f1(void) { return h(); }\n"
                     "int f2(void) { return 3; }\n", soname="libapp-renamed.so.1",
                     libs=[f"-L{helper.parent}", "-lhelper"], flags=rpath_flags("$ORIGIN"))
    loader = make_loader()
    res = loader.load(str(e), substitutions={str(target): str(new)})
    lib = by_name(res, "libapp.so.1")
    assert "libapp-renamed.so.1" in lib.names and lib.origin == str(target.parent)
    assert by_name(res, "libhelper.so").path == str(helper)  # found through $ORIGIN of P, not of F
    assert loader.bind(res).fatal is None
    shutil.copy(new, target)
    assert run_program(e).status == 0


def test_substitute_a_new_library_that_did_not_exist(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shared_lib(tmp_path / "build" / "libnew.so", "int n(void) { return 5; }\n", soname="libnew.so")
    e = executable(tmp_path / "e", "int n(void);\nint main(void) { return n(); }\n", flags=rpath_flags(str(lib)),
                   libs=[f"-L{tmp_path / 'build'}", "-lnew"])
    lib.mkdir()
    res, _ = predict(e)
    assert res.fatal is not None
    loader = make_loader()
    res = loader.load(str(e), substitutions={str(lib / "libnew.so"): str(tmp_path / "build" / "libnew.so")})
    assert res.fatal is None and by_name(res, "libnew.so").path == f"{lib}/libnew.so"
    shutil.copy(tmp_path / "build" / "libnew.so", lib / "libnew.so")
    assert run_program(e).status == 5


def test_substitution_reaches_every_path_to_the_same_file(tmp_path: Path) -> None:
    e = _app(tmp_path)
    real = tmp_path / "lib" / "libapp.so.1"
    alias = tmp_path / "alias"
    os.symlink(real.parent, alias)
    new = shared_lib(tmp_path / "new" / "libapp.so.1", "int f1(void) { return 0; }\n", soname="libapp.so.1")
    loader = make_loader()
    # P is named through a symlinked directory; the program finds the file through its RUNPATH
    res = loader.load(str(e), substitutions={str(alias / "libapp.so.1"): str(new)})
    assert by_name(res, "libapp.so.1").substituted


def test_substitute_with_bytes_and_elffile(tmp_path: Path) -> None:
    e = _app(tmp_path)
    target = tmp_path / "lib" / "libapp.so.1"
    new = shared_lib(tmp_path / "new" / "libapp.so.1", "int f1(void) { return 0; }\n", soname="libapp.so.1")
    loader = make_loader()
    for f in (new.read_bytes(), ElfFile.open(str(new))):
        res = loader.load(str(e), substitutions={str(target): f})
        assert [u.symbol for u in loader.bind(res).unresolved] == ["f2"]


def test_substitute_a_broken_file(tmp_path: Path) -> None:
    e = _app(tmp_path)
    target = tmp_path / "lib" / "libapp.so.1"
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"\x7fELF" + b"\0" * 20)
    res = make_loader().load(str(e), substitutions={str(target): str(bad)})
    assert res.fatal is not None and res.fatal.message.endswith("file too short")
    shutil.copy(bad, target)
    real = run_program(e)
    assert real.status == 127 and res.fatal.line in real.stderr


def test_substitute_the_program_itself(tmp_path: Path) -> None:
    e = _app(tmp_path)
    other = executable(tmp_path / "other", "int f9(void);\nint main(void) { return f9(); }\n",
                       flags=["-Wl,--unresolved-symbols=ignore-all"], libs=[f"-L{tmp_path / 'lib'}", "-l:libapp.so.1"])
    res = make_loader().load(str(e), substitutions={str(e): str(other)})
    assert res.objects[0].substituted
