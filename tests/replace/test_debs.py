"""soswap.replace.debs: the ELF files of .deb packages paired with the installed files they replace, through
the package's own names (Debian's versioned real file behind the SONAME link); hostile archives."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from soswap.errors import SoswapError
from soswap.replace.debs import check_debs, deb_replacements, diversions, package_list
from support.build import executable, requires_cc, shared_lib

LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
LIBM = "/usr/lib/x86_64-linux-gnu/libm.so.6"

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("ar") is None,
                                reason="dpkg-deb and ar are needed")


def _deb(path: Path, members: list, package: str = "t") -> Path:
    """A .deb of ``package`` built by hand (ar + tar), so that its data archive holds exactly ``members``:
    (name, kind, payload) with kind "file", "symlink" or "hardlink"."""
    work = path.parent / (path.name + ".parts")
    work.mkdir()
    (work / "debian-binary").write_text("2.0\n")
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:gz") as tar:
        data = (f"Package: {package}\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@localhost>\n"
                "Description: t\n").encode()
        info = tarfile.TarInfo("./control")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (work / "control.tar.gz").write_bytes(control.getvalue())
    with tarfile.open(work / "data.tar", mode="w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    subprocess.run(["ar", "rc", str(path), "debian-binary", "control.tar.gz", "data.tar"], cwd=work, check=True)
    return path


def test_pairs_go_through_the_soname_link_and_new_files_are_listed(tmp_path: Path) -> None:
    inst = tmp_path / "inst"
    inst.mkdir()
    shutil.copyfile(LIBZ, inst / "libx.so.1.0")  # installed: the old real file, behind the SONAME link
    (inst / "libx.so.1").symlink_to("libx.so.1.0")
    (inst / "notes.txt").write_text("old")
    shutil.copyfile(LIBZ, inst / "libsame.so")  # installed under the same name the package ships
    base = "." + str(inst)
    new_real, same, fresh = Path(LIBM).read_bytes(), Path(LIBZ).read_bytes() + b"\0", Path(LIBZ).read_bytes() + b"1"
    lz = Path(LIBZ).read_bytes()
    relocatable = lz[:16] + b"\x01\x00" + lz[18:]  # e_type ET_REL: an object file, a kernel module
    (inst / "mod.ko").write_bytes(relocatable)
    deb = _deb(tmp_path / "x.deb", [
        (f"{base}/libx.so.1.1", "file", new_real),
        (f"{base}/libx.so.1", "symlink", "libx.so.1.1"),
        (f"{base}/libx-hard.so", "hardlink", f"{base}/libx.so.1.1"),
        (f"{base}/libsame.so", "file", same),
        (f"{base}/libfresh.so", "file", fresh),
        (f"{base}/notes.txt", "file", b"new, not ELF"),
        (f"{base}/mod.ko", "file", relocatable + b"new"),  # ld.so never loads it: no consumers, not paired
        (f"{base}/fresh.ko", "file", relocatable),
        (f"{base}/loop1", "symlink", "loop2"),
        (f"{base}/loop2", "symlink", "loop1"),
        (f"{base}/outside", "symlink", "/usr/lib/x86_64-linux-gnu/libz.so.1"),  # not in the package
        ("./.soswap-test-dot/libdot.so", "file", fresh),  # a first component that starts with a dot keeps it
    ])
    work = tmp_path / "work"
    work.mkdir()
    plan = deb_replacements([str(deb)], str(work))
    pairs = {old: Path(new).read_bytes() for new, old in plan.pairs}
    assert pairs == {str(inst / "libx.so.1.0"): new_real, str(inst / "libsame.so"): same}
    fresh_files = {path: Path(new).read_bytes() for new, path in plan.new_files}
    assert fresh_files == {str(inst / "libx.so.1.1"): new_real, str(inst / "libx-hard.so"): new_real,
                           str(inst / "libfresh.so"): fresh, "/.soswap-test-dot/libdot.so": fresh}
    assert all(Path(new).parent.parent == work for new, _ in plan.pairs + plan.new_files)
    assert (inst / "notes.txt").read_text() == "old" and not (inst / "libx.so.1.1").exists()  # nothing unpacked


def test_hostile_member_names_never_leave_the_work_directory(tmp_path: Path) -> None:
    elf = Path(LIBZ).read_bytes()
    victim = tmp_path / "victim"
    deb = _deb(tmp_path / "evil.deb", [
        ("../../../../../../" + str(victim).lstrip("/"), "file", elf),
        (str(victim) + "2", "file", elf),  # an absolute name
        ("./a/../../../" + str(victim).lstrip("/") + "3", "file", elf),
    ])
    work = tmp_path / "work"
    work.mkdir()
    plan = deb_replacements([str(deb)], str(work))
    assert not any(p.name.startswith("victim") for p in tmp_path.iterdir())
    names = sorted(path for _, path in plan.new_files)
    assert all(n.startswith("/") and "/../" not in n for n in names)
    assert all(os.path.commonpath([new, str(work)]) == str(work) for new, _ in plan.new_files)


def test_a_file_that_is_not_a_package_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an ar archive\n")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SoswapError, match=r"bad\.deb: dpkg-deb: "):
        deb_replacements([str(bad)], str(work))


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO would block dpkg-deb forever: the package is opened (O_NONBLOCK) and checked first."""
    import sys

    fifo = tmp_path / "x.deb"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    for path, says in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                       ("/dev/zero", "not a regular file"), ("", "empty file name"),
                       (tmp_path / "none.deb", "No such file or directory")):
        r = subprocess.run([sys.executable, "-m", "soswap", "check", "--deb", str(path)], capture_output=True,
                           text=True, env=env, timeout=60)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert r.stderr == f"soswap: error: {f'{path}: ' if str(path) else ''}{says}\n"


def test_a_diverted_path_pairs_with_where_dpkg_puts_the_file(tmp_path: Path) -> None:
    """Another package diverts /x/libdiv.so to /x/libdiv.so.distrib: dpkg writes this package's file there, so
    that is the installed file it replaces; the package that diverts keeps its own path."""
    inst = tmp_path / "inst"
    inst.mkdir()
    shutil.copyfile(LIBZ, inst / "libdiv.so")  # the diverting package's file
    shutil.copyfile(LIBM, inst / "libdiv.so.distrib")  # this package's previous version, moved aside
    new = Path(LIBM).read_bytes() + b"\0new"
    deb = _deb(tmp_path / "t.deb", [("." + str(inst / "libdiv.so"), "file", new)])  # control: Package: t
    table = tmp_path / "diversions"
    table.write_text(f"/usr/share/man/man1/x.1.gz\n/usr/share/man/man1/x.distrib.1.gz\nx\n"
                     f"{inst / 'libdiv.so'}\n{inst / 'libdiv.so.distrib'}\nother\n/truncated\n")
    assert diversions(str(table)) == {"/usr/share/man/man1/x.1.gz": ("/usr/share/man/man1/x.distrib.1.gz", "x"),
                                      str(inst / "libdiv.so"): (str(inst / "libdiv.so.distrib"), "other")}
    assert diversions(str(tmp_path / "none")) == {}
    for by, installed in (("other", inst / "libdiv.so.distrib"), ("t", inst / "libdiv.so")):
        work = tmp_path / f"work-{by}"
        work.mkdir()
        plan = deb_replacements([str(deb)], str(work), {str(inst / "libdiv.so"): (str(inst / "libdiv.so.distrib"),
                                                                                   by)})
        assert [(Path(n).read_bytes(), old) for n, old in plan.pairs] == [(new, str(installed))]


# -- what the transaction deletes ---------------------------------------------------------------------------

def _admin(tmp_path: Path, lists: dict) -> Path:
    """A dpkg database holding only ``info/NAME.list`` files: {list name: [path, ...]}."""
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    for name, paths in lists.items():
        (admin / "info" / f"{name}.list").write_text("/.\n" + "".join(f"{p}\n" for p in paths))
    return admin


def test_package_lists_are_found_by_name_and_architecture(tmp_path: Path) -> None:
    admin = _admin(tmp_path, {"plain": [], "same:amd64": [], "two:amd64": [], "two:i386": []})
    info = admin / "info"
    assert package_list("plain", None, str(admin)) == str(info / "plain.list")
    assert package_list("plain", "amd64", str(admin)) == str(info / "plain.list")  # not Multi-Arch: same
    assert package_list("same", "amd64", str(admin)) == str(info / "same:amd64.list")
    assert package_list("same", None, str(admin)) == str(info / "same:amd64.list")  # the only one
    assert package_list("two", None, str(admin)) is None  # which one is meant is not known
    assert package_list("two", "i386", str(admin)) == str(info / "two:i386.list")
    for name, arch in (("none", None), ("../dpkg/info/plain", None), ("plain", "../x"), ("", None), ("A", None)):
        assert package_list(name, arch, str(admin)) is None


def test_leaving_is_what_dpkg_deletes_and_nobody_else_owns(tmp_path: Path) -> None:
    """Package t's installed version lists files its new version no longer ships; package gone is removed.
    /lib is an alias of /usr/lib (merged /usr): a path is the same file under either name."""
    inst = tmp_path / "inst"
    usr_lib = inst / "usr" / "lib"
    usr_lib.mkdir(parents=True)
    (inst / "lib").symlink_to("usr/lib")
    for name in ("dropped.so", "kept.so", "shared.so", "gone.so", "handed-over.so"):
        shutil.copyfile(LIBZ, usr_lib / name)
    (usr_lib / "notes.txt").write_text("not ELF")
    (usr_lib / "link.so").symlink_to("kept.so")
    lib, ulib = str(inst / "lib"), str(usr_lib)
    admin = _admin(tmp_path, {
        "t": [str(inst), ulib, f"{lib}/dropped.so", f"{ulib}/kept.so", f"{ulib}/shared.so", f"{ulib}/notes.txt",
              f"{ulib}/link.so"],
        "other": [f"{lib}/shared.so"],  # dpkg keeps a file another package still owns
        "gone:amd64": [f"{ulib}/gone.so", f"{ulib}/handed-over.so"],
    })
    new = Path(LIBZ).read_bytes() + b"\0new"
    deb = _deb(tmp_path / "t.deb", [("." + f"{lib}/kept.so", "file", new),  # the same file, by its alias
                                     ("." + f"{ulib}/handed-over.so", "file", new)])
    work = tmp_path / "work"
    work.mkdir()
    plan = deb_replacements([str(deb)], str(work), {}, [("gone", None), ("not-installed", None)], str(admin))
    assert plan.leaving == {f"{ulib}/dropped.so", f"{ulib}/gone.so"}
    assert sorted(old for _, old in plan.pairs) == [f"{ulib}/handed-over.so", f"{ulib}/kept.so"]
    work2 = tmp_path / "work2"
    work2.mkdir()
    assert deb_replacements([str(deb)], str(work2), {}, (), str(tmp_path / "no-dpkg")).leaving == frozenset()


CONSUMED = "int foo(void) { return 1; }\nint bar(void) { return 2; }\n"
CONSUMER = "int foo(void); int bar(void);\nint main(void) { return foo() + bar(); }\n"


@requires_cc
def test_a_consumer_the_transaction_deletes_is_not_checked(tmp_path: Path) -> None:
    """libq's new version drops bar, which the program uses: refused while the program stays, not when its
    package is removed or no longer ships it. A running process would still be checked (processes are not
    files that go away)."""
    inst = tmp_path / "inst"
    shared_lib(inst / "libq.so.1.0", CONSUMED, soname="libq.so.1")
    (inst / "libq.so.1").symlink_to("libq.so.1.0")
    prog = executable(inst / "prog", CONSUMER, libs=[str(inst / "libq.so.1"), f"-Wl,-rpath,{inst}"])
    v2 = shared_lib(tmp_path / "v2" / "libq.so.1.1", "int foo(void) { return 1; }\n", soname="libq.so.1")
    deb = _deb(tmp_path / "libq.deb", [("." + str(inst / "libq.so.1.1"), "file", v2.read_bytes()),
                                       ("." + str(inst / "libq.so.1"), "symlink", "libq.so.1.1")], package="libq")
    discovery = dict(scope=[str(inst)], processes=False, cache_dir=str(tmp_path / "cache"), diverted={})
    staying = check_debs([str(deb)], admindir=str(_admin(tmp_path / "a", {"user": [str(prog)]})), **discovery)
    assert [p.consumer for p in staying.problems] == [str(prog)] and staying.leaving == frozenset()
    assert "undefined symbol: bar" in staying.problems[0].message
    removed = check_debs([str(deb)], removing=[("user", None)],
                         admindir=str(_admin(tmp_path / "b", {"user": [str(prog)]})), **discovery)
    assert removed.problems == [] and removed.leaving == {str(prog)}
    # libq's own installed version shipped the program; the new one does not
    dropped = check_debs([str(deb)], admindir=str(_admin(tmp_path / "c", {"libq": [str(inst / "libq.so.1.0"),
                                                                                    str(prog)]})), **discovery)
    assert dropped.problems == [] and dropped.leaving == {str(prog), str(inst / "libq.so.1.0")}


@requires_cc
def test_check_deb_says_its_review_notes(tmp_path: Path) -> None:
    """A process that maps the library and cannot be checked (its program deleted) is a review note: no reason
    to stop apt, but ``check --deb`` dropped it, and so every note (what the scan could not read, too). Now in
    ``notes``, printed as ``note:`` lines."""
    import signal
    import sys
    import time

    inst = tmp_path / "inst"
    shared_lib(inst / "libq.so.1.0", CONSUMED, soname="libq.so.1")
    (inst / "libq.so.1").symlink_to("libq.so.1.0")
    prog = executable(tmp_path / "prog", "#include <unistd.h>\nint foo(void);\n"
                      "int main(void) { pause(); return foo(); }\n",
                      libs=[str(inst / "libq.so.1"), f"-Wl,-rpath,{inst}"])
    v2 = shared_lib(tmp_path / "v2" / "libq.so.1.1", CONSUMED, soname="libq.so.1")
    deb = _deb(tmp_path / "libq.deb", [("." + str(inst / "libq.so.1.1"), "file", v2.read_bytes()),
                                       ("." + str(inst / "libq.so.1"), "symlink", "libq.so.1.1")], package="libq")
    proc = subprocess.Popen([str(prog)])
    try:
        maps = Path(f"/proc/{proc.pid}/maps")
        for _ in range(500):  # until the loader has mapped the library
            if "libq.so.1.0" in maps.read_text():
                break
            time.sleep(0.01)
        prog.unlink()
        result = check_debs([str(deb)], admindir=str(_admin(tmp_path / "a", {})), scope=[str(inst)],
                            processes=True, cache_dir=str(tmp_path / "cache"), diverted={})
        assert result.problems == []
        assert [n.pid for n in result.notes] == [proc.pid] and result.notes[0].kind == "review", result.notes
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
        # the default discovery, where the processes are (it builds the system's rdeps index: some seconds)
        r = subprocess.run([sys.executable, "-m", "soswap", "check", "--deb", str(deb), "--cache-dir",
                            str(tmp_path / "cache")], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and f"note: {inst}" in r.stdout and f"process {proc.pid}" in r.stdout, r
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_check_deb_remove_names_installed_packages(tmp_path: Path) -> None:
    """``soswap check --deb ... --remove PACKAGE``: the package's ELF files are left out (listed in --json);
    a package that is not installed, or --remove without --deb, is a usage error."""
    import json
    import sys

    if package_list("coreutils", None) is None:
        pytest.skip("coreutils is not installed through dpkg here")
    deb = _deb(tmp_path / "new.deb", [("./opt/soswap-test-none/libnew.so", "file", Path(LIBZ).read_bytes())])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    run = [sys.executable, "-m", "soswap", "check"]
    r = subprocess.run([*run, "--deb", str(deb), "--remove", "coreutils", "--json"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["checked"] == 0 and os.path.join(os.path.realpath("/usr/bin"), "ls") in doc["leaving"]
    for args, says in ((["--deb", str(deb), "--remove", "soswap-no-such-package"],
                        "--remove soswap-no-such-package: not an installed package"),
                       ([LIBZ, LIBZ, "--remove", "coreutils"], "--remove applies to --deb only")):
        r = subprocess.run([*run, *args], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2 and says in r.stderr and r.stdout == "", r.stderr


def _gz_deb(path: Path, data_dir: Path, tar_args: list) -> Path:
    """A .deb whose data.tar.gz is made by GNU tar from ``data_dir`` (``tar_args``: e.g. ``--sparse``)."""
    work = path.parent / (path.name + ".parts")
    work.mkdir()
    (work / "debian-binary").write_text("2.0\n")
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:gz") as tar:
        data = b"Package: t\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@localhost>\nDescription: t\n"
        info = tarfile.TarInfo("./control")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (work / "control.tar.gz").write_bytes(control.getvalue())
    subprocess.run(["tar", "-czf", str(work / "data.tar.gz"), *tar_args, "-C", str(data_dir), "."], check=True)
    subprocess.run(["ar", "rc", str(path), "debian-binary", "control.tar.gz", "data.tar.gz"], cwd=work, check=True)
    return path


@pytest.mark.parametrize("kind", ["sparse", "zeros"])
def test_a_package_that_unpacks_to_far_more_than_its_size_is_refused(tmp_path: Path, kind: str) -> None:
    """A small .deb whose library is an ELF header and then 256 MiB of a hole (a sparse member, which dpkg
    refuses) or of zeros (a compression bomb): every byte was written to $TMPDIR (GiBs from a 53 KB package,
    as root from the apt hook). One error line now, and little written."""
    data = tmp_path / "data" / "usr" / "lib"
    data.mkdir(parents=True)
    lib = data / "libbomb.so.1"
    with open(lib, "wb") as f:
        f.write(Path(LIBZ).read_bytes()[:4096])
        if kind == "sparse":
            f.truncate(256 << 20)
        else:
            for _ in range(256):
                f.write(bytes(1 << 20))
    deb = _gz_deb(tmp_path / "bomb.deb", tmp_path / "data", ["--sparse", "--format=gnu"] if kind == "sparse" else [])
    lib.unlink()
    assert deb.stat().st_size < 2 << 20
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SoswapError, match="sparse file in the archive" if kind == "sparse" else "compression bomb"):
        deb_replacements([str(deb)], str(work))
    written = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    assert written < 128 << 20
