"""Transactions: dependency order, manifests, soname links, rollback, retention, history, locking, recovery
of a damaged state, and the preflight / stale-report seams."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from replace.helpers import backups, leftovers, maps_of, read_lines_until, run, sha256, soswap
from soswap.replace import InstallOptions, Request, StateDir, install
from support.build import executable, requires_root, shared_lib

pytestmark = [requires_root]


def _trace_renames(path: Path) -> list:
    return [line for line in path.read_text().splitlines() if "renameat" in line and "= 0" in line]


def test_library_committed_before_program(tmp_path, libfoo, state):
    """Given program first, the library it needs is still renamed first (real order seen by strace)."""
    d = tmp_path / "app"
    libfoo.deploy(d)
    trace = tmp_path / "trace"
    soswap(["install", libfoo.loop, libfoo.v2, d], state, check=0,
           prefix=["strace", "-f", "-qq", "-e", "trace=renameat,renameat2", "-o", str(trace)])
    renames = _trace_renames(trace)
    targets = [line.split(",")[3].split(")")[0].strip().strip('"') for line in renames]
    assert targets == ["libfoo.so.1", "loop"]


def test_chain_of_three_ordered(tmp_path, state):
    """app needs libb, libb needs liba: committed liba, libb, app whatever the given order."""
    src = tmp_path / "src"
    a = shared_lib(src / "liba.so.1", "int a(void){return 1;}", soname="liba.so.1")
    b = shared_lib(src / "libb.so.1", "int a(void); int b(void){return a()+1;}", soname="libb.so.1",
                   libs=[str(a)], flags=["-Wl,-rpath,$ORIGIN"])
    app = executable(src / "app", "int b(void); int main(void){return b()-2;}", libs=[str(b), str(a)],
                     flags=["-Wl,-rpath,$ORIGIN"])
    d = tmp_path / "dest"
    d.mkdir()
    r = soswap(["install", "--json", app, b, a, d], state, check=0)
    order = [os.path.basename(c["dest"]) for c in json.loads(r.stdout)["changes"]]
    assert order == ["liba.so.1", "libb.so.1", "app"]
    assert run([d / "app"]).returncode == 0


def test_manifest(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    payload = tmp_path / "pkg"
    payload.mkdir()
    shutil.copyfile(libfoo.v2, payload / "libfoo.so.1")
    shutil.copyfile(libfoo.once, payload / "my tool")
    manifest = payload / "MANIFEST"
    manifest.write_text(
        "# comment line\n"
        f"libfoo.so.1 {d}/\n"
        f"'my tool' '{d}/my tool' mode=0750 owner=1234 group=4321  # trailing comment\n"
    )
    soswap(["install", "--manifest", manifest], state, check=0)
    assert sha256(lib) == libfoo.sha2
    st = (d / "my tool").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 1234, 4321)
    bad = payload / "BAD"
    bad.write_text("ok ok\nonly-one-field\n")
    r = soswap(["install", "--manifest", bad], state, check=2)
    assert "BAD:2:" in r.stderr and r.stderr.count("soswap: error:") == 1


def test_duplicate_destination_refused(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    (d / "alias").symlink_to("libfoo.so.1")
    r = soswap(["install", "--manifest", "/dev/stdin"], state)  # empty stdin: no files
    assert r.returncode == 2
    m = tmp_path / "m"
    m.write_text(f"{libfoo.v2} {lib}\n{libfoo.v1} {d}/alias\n")
    r = soswap(["install", "--manifest", m], state, check=2)
    assert "destination of both" in r.stderr
    assert sha256(lib) == libfoo.sha1


def test_soname_link_flip_is_atomic(tmp_path, libfoo, state):
    """libfoo.so.1.2.4 beside libfoo.so.1.2.3: libfoo.so.1 is flipped by rename of a temp symlink, never
    unlinked; a lower version leaves it alone with a warning; a missing link is created."""
    d = tmp_path / "lib"
    d.mkdir()
    shutil.copyfile(libfoo.v1, d / "libfoo.so.1.2.3")
    (d / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    trace = tmp_path / "trace"
    new = tmp_path / "libfoo.so.1.2.4"
    shutil.copyfile(libfoo.v2, new)
    soswap(["install", new, d], state, check=0,
           prefix=["strace", "-f", "-qq", "-e", "trace=unlink,unlinkat,symlinkat,renameat", "-o", str(trace)])
    assert os.readlink(d / "libfoo.so.1") == "libfoo.so.1.2.4"
    text = trace.read_text()
    assert not [line for line in text.splitlines() if "unlink" in line and '"libfoo.so.1"' in line]
    assert [line for line in text.splitlines() if "symlinkat" in line and ".libfoo.so.1.new-" in line]
    assert [line for line in text.splitlines() if "renameat" in line and '"libfoo.so.1")' in line]
    older = tmp_path / "libfoo.so.1.2.0"
    shutil.copyfile(libfoo.v1, older)
    r = soswap(["install", older, d], state, check=0)
    assert os.readlink(d / "libfoo.so.1") == "libfoo.so.1.2.4" and "higher version" in r.stderr
    e = tmp_path / "empty"
    e.mkdir()
    soswap(["install", new, e], state, check=0)
    assert os.readlink(e / "libfoo.so.1") == "libfoo.so.1.2.4"
    soswap(["install", "--no-soname-links", older, tmp_path / "nolinks" / "x.so"], state, check=2)  # no dir
    (tmp_path / "nolinks").mkdir()
    soswap(["install", "--no-soname-links", new, tmp_path / "nolinks"], state, check=0)
    assert not (tmp_path / "nolinks" / "libfoo.so.1").exists()


def test_control_ldconfig_unlinks_then_symlinks(tmp_path, libfoo):
    """Case 12 control: ldconfig -n replaces a soname link by unlink + symlink (a window with no link)."""
    d = tmp_path / "lib"
    d.mkdir()
    shutil.copyfile(libfoo.v1, d / "libfoo.so.1.2.3")
    shutil.copyfile(libfoo.v2, d / "libfoo.so.1.2.4")
    (d / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    trace = tmp_path / "trace"
    r = run(["strace", "-f", "-qq", "-e", "trace=unlink,unlinkat,symlink,symlinkat", "-o", trace,
             "ldconfig", "-n", d])
    assert r.returncode == 0
    calls = [line for line in trace.read_text().splitlines() if "libfoo.so.1" in line]
    assert any("unlink" in c for c in calls) and any("symlink" in c for c in calls)
    assert os.readlink(d / "libfoo.so.1") == "libfoo.so.1.2.4"


def test_soname_links_only_where_ldconfig_makes_them(tmp_path, libfoo, state):
    """ldconfig -n (the oracle) links a file's DT_SONAME only for names lib*/ld-* containing .so: a plugin
    gateway.so or a program with a SONAME gets no stray libfoo.so.1 link (soswap made one)."""
    for name in ("gateway.so", "libfoo-plugin.so", "my tool", "ld-foo.so", "libfoo.a"):
        oracle, d = tmp_path / "oracle" / name, tmp_path / "dest" / name
        oracle.mkdir(parents=True)
        shutil.copyfile(libfoo.v1, oracle / name)
        assert run(["ldconfig", "-n", oracle]).returncode == 0
        soswap(["install", "--no-check", "--no-report", "-D", libfoo.v1, d / name], state)
        assert sorted(os.listdir(d)) == sorted(os.listdir(oracle)), name
        assert os.path.islink(d / "libfoo.so.1") == (name in ("libfoo-plugin.so", "ld-foo.so"))


def test_rollback_restores_everything(tmp_path, libfoo, state):
    """Install (replace + create + soname link), roll back (old inodes back, new file gone, link back), roll
    the rollback back (re-applied)."""
    d = tmp_path / "lib"
    d.mkdir()
    shutil.copyfile(libfoo.v1, d / "libfoo.so.1.2.3")
    (d / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    shutil.copyfile(libfoo.once, d / "tool")
    new_lib = tmp_path / "libfoo.so.1.2.4"
    shutil.copyfile(libfoo.v2, new_lib)
    old_tool = (d / "tool").stat()
    r = soswap(["install", "--json", new_lib, libfoo.loop, d / "tool"], state)
    assert r.returncode == 2  # 3 paths: the last is not a directory
    r = soswap(["install", "--json", new_lib, d], state, check=0)
    tx1 = json.loads(r.stdout)["txid"]
    r = soswap(["install", "--json", libfoo.loop, d / "tool"], state, check=0)
    tx2 = json.loads(r.stdout)["txid"]
    assert sha256(d / "tool") == sha256(libfoo.loop)

    r = soswap(["rollback", "--json"], state, check=0)  # the latest: tx2
    assert json.loads(r.stdout)["rollback_of"] == tx2
    assert (d / "tool").stat().st_ino == old_tool.st_ino
    r = soswap(["rollback", "--json", tx1], state, check=0)
    rb1 = json.loads(r.stdout)["txid"]
    assert not (d / "libfoo.so.1.2.4").exists()
    assert os.readlink(d / "libfoo.so.1") == "libfoo.so.1.2.3"
    r = soswap(["rollback", tx1], state, check=1)
    assert "already rolled back" in r.stderr
    soswap(["rollback", rb1], state, check=0)
    assert sha256(d / "libfoo.so.1.2.4") == libfoo.sha2
    assert os.readlink(d / "libfoo.so.1") == "libfoo.so.1.2.4"
    assert leftovers(d) == []
    hist = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert [t["kind"] for t in hist] == ["install", "install", "rollback", "rollback", "rollback"]
    assert hist[0]["rolled_back_by"] == rb1


def _privileges(path: Path):  # type: ignore[no-untyped-def]
    st = os.lstat(path)
    try:
        cap = os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        cap = None
    return st.st_ino, stat.S_IMODE(st.st_mode), cap


def test_backups_of_privileged_files_are_stripped_and_rollback_restores(tmp_path, libfoo, state):
    """A set-ID program with file capabilities, replaced: its backup (the old, maybe vulnerable inode) keeps
    neither the set-ID bits nor the capabilities nor a hard link elsewhere's privilege (dpkg's secure unlink);
    the new file has them; a rollback gives them back to the old inode, and strips the rolled-back version."""
    if shutil.which("setcap") is None:
        pytest.skip("no setcap")
    d = tmp_path / "bin"
    d.mkdir()
    prog = d / "tool"
    shutil.copyfile(libfoo.once, prog)
    os.chmod(prog, 0o6755)
    assert run(["setcap", "cap_net_bind_service=+ep", prog]).returncode == 0
    ino1, mode1, cap1 = _privileges(prog)
    assert cap1 is not None
    attacker = tmp_path / "kept-link"
    os.link(prog, attacker)  # a hard link someone made to the old version
    r = soswap(["install", "--json", libfoo.loop, prog], state, check=0)
    tx1 = json.loads(r.stdout)["txid"]
    ino2, mode2, cap2 = _privileges(prog)
    assert ino2 != ino1 and (mode2, cap2) == (mode1, cap1)  # the new file: the old metadata
    (backup,) = backups(d)
    assert _privileges(d / backup) == (ino1, 0o600, None)
    assert _privileges(attacker) == (ino1, 0o600, None)
    entry = json.loads((Path(state) / "tx" / f"{tx1}.json").read_text())["entries"][0]
    assert entry["privileges"] == {"mode": 0o6755, "capability": cap1.hex()}

    soswap(["rollback", tx1], state, check=0)
    ino3, mode3, cap3 = _privileges(prog)  # a copy of the old version, privileged: its inode stays disarmed
    assert ino3 not in (ino1, ino2) and (mode3, cap3) == (mode1, cap1)
    assert sha256(prog) == sha256(libfoo.once)
    assert _privileges(attacker) == (ino1, 0o600, None)
    (backup2,) = backups(d)
    assert _privileges(d / backup2) == (ino2, 0o600, None)  # the rolled-back version's backup

    # without backups kept, the old inode is stripped before its link goes
    os.link(prog, tmp_path / "kept-link-2")
    soswap(["install", "--no-backup", libfoo.loop, prog], state, check=0)
    assert _privileges(tmp_path / "kept-link-2") == (ino3, 0o600, None)
    assert _privileges(prog)[1:] == (mode1, cap1)


def test_rollback_refused_when_file_changed_since(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    r = soswap(["install", "--json", libfoo.v2, lib], state, check=0)
    tx1 = json.loads(r.stdout)["txid"]
    soswap(["install", libfoo.v1, lib], state, check=0)
    current = lib.stat().st_ino
    r = soswap(["rollback", tx1], state, check=1)
    assert "changed since" in r.stderr and r.stderr.count("soswap: error:") == 1
    assert lib.stat().st_ino == current
    # written in place (same inode, same size, another mtime): refused the same way, nothing recorded
    r = soswap(["install", "--json", libfoo.v2, lib], state, check=0)
    data = bytearray(lib.read_bytes())
    data[100:102] = b"ZZ"
    with open(lib, "r+b") as f:
        f.write(bytes(data))
    st = lib.stat()  # a coarse clock could give the write the install's own mtime: make it differ
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    before = len(json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"])
    r = soswap(["rollback"], state, check=1)
    assert "changed since" in r.stderr and "written in place" in r.stderr, r.stderr
    after = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert len(after) == before and lib.read_bytes() == bytes(data)


def test_no_backup_and_retention(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    soswap(["install", "--no-backup", libfoo.v2, lib], state, check=0)
    assert backups(d) == []
    r = soswap(["rollback"], state, check=1)
    assert "--no-backup" in r.stderr
    for i in range(4):
        soswap(["install", "--keep", "2", libfoo.v1 if i % 2 else libfoo.v2, lib], state, check=0)
    assert len(backups(d)) == 2
    hist = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
    assert [t["backups"] for t in hist] == ["none", "pruned", "pruned", "kept", "kept"]
    assert len(os.listdir(state / "tx")) == 2  # only transactions with files on disk stay live
    text = soswap(["history", "-n", "2"], state, check=0).stdout
    assert text.count("kept") == 2 and "pruned" not in text


def test_dry_run_changes_nothing(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    before = sorted(os.listdir(d))
    r = soswap(["install", "--dry-run", "--json", libfoo.v2, lib], state, check=0)
    obj = json.loads(r.stdout)
    assert obj["status"] == "dry-run" and obj["changes"][0]["action"] == "replace"
    assert sorted(os.listdir(d)) == before and sha256(lib) == libfoo.sha1
    assert not state.exists()


def test_lock_serializes_installs(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    state.mkdir()
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"424242\n")
        r = soswap(["install", "--lock-timeout", "0.3", libfoo.v2, lib], state, check=2)
        assert "424242" in r.stderr and "holds the lock" in r.stderr
        assert sha256(lib) == libfoo.sha1
    finally:
        os.close(fd)
    soswap(["install", libfoo.v2, lib], state, check=0)


def test_damaged_journal_is_an_error_not_a_traceback(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    (state / "tx").mkdir(parents=True)
    (state / "tx" / "20200101-000000-000000.json").write_bytes(b"{not json")
    for argv in (["recover"], ["install", libfoo.v2, lib], ["history"]):
        r = soswap(argv, state, check=2)
        assert r.stderr.count("soswap: error:") == 1 and "move it aside" in r.stderr, r.stderr
    assert sha256(lib) == libfoo.sha1
    r = soswap(["recover"], tmp_path / "fresh", check=0)
    assert "nothing to recover" in r.stdout


def test_a_rollback_dry_run_fails_on_a_damaged_journal_as_the_rollback_does(tmp_path, libfoo, state):
    """The oldest live journal damaged: the rollback stops in its recovery (exit 2, 'move it aside'); its dry
    run said 'would roll back ...', exit 0. Now the same line and status."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d, with_programs=False)
    for src in (libfoo.v2, libfoo.v1, libfoo.v2):
        soswap(["install", "--no-check", "--no-report", src, lib], state, check=0)
    oldest = sorted((state / "tx").glob("*.json"))[0]
    oldest.write_bytes(b'{"version":1,"txid":')
    dry = soswap(["rollback", "--dry-run"], state, check=2)
    real = soswap(["rollback"], state, check=2)
    assert dry.stdout == "" and "would roll back" not in dry.stderr
    assert dry.stderr == real.stderr and real.stderr.count("soswap: error:") == 1
    assert f"{oldest}: unreadable journal" in real.stderr and "move it aside" in real.stderr
    assert sha256(lib) == libfoo.sha2


def _journal_with(state: Path, txid: str, change) -> Path:  # type: ignore[no-untyped-def]
    """The live journal of ``txid`` after ``change(record)``."""
    path = state / "tx" / f"{txid}.json"
    if not path.exists():
        path = state / "history" / f"{txid}.json"
    record = json.loads(path.read_text())
    change(record)
    live = state / "tx" / f"{txid}.json"
    live.parent.mkdir(exist_ok=True)
    live.write_text(json.dumps(record))
    if live != path:
        path.unlink()
    return live


@pytest.mark.parametrize("damage", [
    lambda r: r.update(argv=1),
    lambda r: r.update(state="prepared", dir_flags=5),
    lambda r: r.update(state="staging", dir_flags=[{"dir": 3, "flags": 1}]),
    lambda r: (r.update(state="prepared"), r["entries"][0].update(dest="/tmp/a\u0000b")),
    lambda r: (r.update(state="prepared"), r["entries"][0].update(backup=[1])),
    lambda r: (r.update(state="prepared"), r["entries"][0].update(backup="../../etc/passwd")),
    lambda r: (r.update(state="prepared"), r["entries"][0].update(flags=2**70)),
    lambda r: (r.update(state="prepared"), r["entries"][0]["old"].update(ino="7")),
    lambda r: r["entries"][0].update(privileges={"mode": "4755"}),
    lambda r: r.update(finished=[]),
], ids=["argv", "dir-flags", "dir-flags-dir", "nul-in-dest", "backup-list", "backup-path", "huge-flags",
        "ino-text", "privileges", "finished"])
def test_a_journal_with_fields_of_the_wrong_type_is_one_clear_error(tmp_path, libfoo, state, damage):
    """Every field recovery, rollback and history read is checked: a damaged journal is 'malformed journal ...;
    move it aside', exit 2, never an internal error (a fuzz of the fields found hundreds of those)."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    txid = json.loads(soswap(["install", "--json", libfoo.v2, lib], state, check=0).stdout)["txid"]
    _journal_with(state, txid, damage)
    for argv in (["history"], ["recover"], ["rollback"], ["rollback", "--dry-run"]):
        r = soswap(argv, state, check=2)
        assert r.stderr.count("soswap: error:") == 1 and "move it aside" in r.stderr, r.stderr
        assert "internal error" not in r.stderr
    assert sha256(lib) == libfoo.sha2


def test_a_fifo_in_the_state_directory_is_an_error_not_a_wait(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    (state / "tx").mkdir(parents=True)
    os.mkfifo(state / "tx" / "20200101-000000-000000.json")
    for argv in (["history"], ["recover"], ["install", libfoo.v2, lib]):
        r = soswap(argv, state, check=2, timeout=30)
        assert r.stderr.count("soswap: error:") == 1 and "not a regular file" in r.stderr, r.stderr
    assert sha256(lib) == libfoo.sha1


def test_state_dir_option_overrides_environment(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    other = tmp_path / "other-state"
    soswap(["install", "--state-dir", other, libfoo.v2, lib], state, check=0)
    assert os.listdir(other / "tx") and not state.exists()


def test_a_new_version_beside_the_old_one_is_checked_through_the_soname_link(tmp_path, state):
    """Installing libfoo.so.1.1 next to libfoo.so.1.0 flips libfoo.so.1, which consumers load: the preflight
    checks the new file in place of the one the link leads to now, as if it were replaced by name."""
    lib, v2 = tmp_path / "lib", tmp_path / "v2"
    shared_lib(lib / "libfoo.so.1.0", "int foo(int x){return x+1;}\nint bar(int x){return x*2;}\n",
               soname="libfoo.so.1")
    (lib / "libfoo.so.1").symlink_to("libfoo.so.1.0")
    shared_lib(v2 / "libfoo.so.1.1", "int foo(int x){return x+100;}\n", soname="libfoo.so.1")
    app = executable(tmp_path / "app", "int foo(int); int bar(int);\nint main(void){return foo(1)+bar(2);}\n",
                     libs=[str(lib / "libfoo.so.1"), f"-Wl,-rpath,{lib}"])
    where = ["--consumer", str(app), "--scope", str(tmp_path), "--"]
    for dest in (lib / "libfoo.so.1.0", lib):  # by the old file's name, and into the directory
        r = soswap(["install", *where, v2 / "libfoo.so.1.1", dest], state, check=1)
        assert f"breaks program {app}" in r.stdout + r.stderr and "undefined symbol: bar" in r.stdout + r.stderr
        assert os.readlink(lib / "libfoo.so.1") == "libfoo.so.1.0" and not (lib / "libfoo.so.1.1").exists()
    soswap(["install", "--force", *where, v2 / "libfoo.so.1.1", lib], state, check=0)
    assert os.readlink(lib / "libfoo.so.1") == "libfoo.so.1.1"


def test_two_new_files_of_one_soname_link_to_the_highest_and_are_checked(tmp_path, state):
    """libfoo.so.1.11 (compatible) and .12 (without bar) in one install: the link goes to .12 as ldconfig would,
    whatever the order they are given in, and .12 is what the program is checked with; also when .11 comes in
    under the name of the file the link leads to now."""
    lib, new = tmp_path / "lib", tmp_path / "new"
    both = "int foo(void){return 1;} int bar(void){return 2;}\n"
    shared_lib(lib / "libfoo.so.1.10", both, soname="libfoo.so.1")
    (lib / "libfoo.so.1").symlink_to("libfoo.so.1.10")
    v11 = shared_lib(new / "libfoo.so.1.11", both, soname="libfoo.so.1")
    v12 = shared_lib(new / "libfoo.so.1.12", "int foo(void){return 1;}\n", soname="libfoo.so.1")
    app = executable(tmp_path / "app", "int foo(void); int bar(void);\nint main(void){return foo()+bar();}\n",
                     libs=[str(lib / "libfoo.so.1"), f"-Wl,-rpath,{lib}"])
    where = ["--consumer", str(app), "--scope", str(tmp_path), "--"]
    shutil.copyfile(v11, new / "libfoo.so.1.10")  # .11's content under the old file's name
    for files in ([v11, v12], [v12, v11], [new / "libfoo.so.1.10", v12]):
        r = soswap(["install", "--dry-run", *where, *files, lib], state)
        assert r.returncode == 1 and "undefined symbol: bar" in r.stdout + r.stderr, (files, r.stdout, r.stderr)
    r = soswap(["install", "--force", *where, v11, v12, lib], state, check=0)
    assert os.readlink(lib / "libfoo.so.1") == "libfoo.so.1.12"
    # a dangling link is no choice of ldconfig's: it goes to the new file
    (lib / "libfoo.so.1").unlink()
    (lib / "libfoo.so.1").symlink_to("libfoo.so.1.99")
    soswap(["install", *where, v11, lib], state, check=0)
    assert os.readlink(lib / "libfoo.so.1") == "libfoo.so.1.11"


def test_preflight_and_stale_seams(tmp_path, libfoo, procs):
    """The API seams: a preflight problem refuses (nothing changed) unless forced; the stale report gets the
    replaced inode, which is the one a running process still maps."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    out = tmp_path / "loop.out"
    with open(out, "w") as f:
        p = procs.start([d / "loop"], stdout=f.fileno(), wait_maps="libfoo.so.1")
    read_lines_until(out, lambda ls: bool(ls))
    st = StateDir(str(tmp_path / "state"))
    seen_pairs = []

    def preflight(pairs):  # type: ignore[no-untyped-def]
        seen_pairs.extend(pairs)
        return [f"loop (pid {p.pid}): symbol foo_version, version FOO_2 not found"]

    res = install([Request(str(libfoo.v2), str(lib))], InstallOptions(hash=True), st, preflight=preflight)
    assert res.status == "refused" and sha256(lib) == libfoo.sha1
    assert seen_pairs == [(str(libfoo.v2), str(lib))]
    reports = []
    res = install([Request(str(libfoo.v2), str(lib))], InstallOptions(force=True, hash=True), st, preflight=preflight,
                  stale_report=lambda olds: reports.append(list(olds)) or "stale: 1 process")
    assert res.status == "installed" and res.after == "stale: 1 process" and res.problems
    ((dest, old),) = reports[0]
    mapped = {int(line.split()[4]) for line in maps_of(p.pid, "libfoo.so.1")}
    assert dest == str(lib) and mapped == {old.ino} and old.sha256 == libfoo.sha1
    res = install([Request(str(libfoo.v1), str(lib))], InstallOptions(check=False), st, preflight=preflight)
    assert res.status == "installed" and not res.problems


@pytest.mark.parametrize("argv", [["install"], ["install", "only-one"], ["install", "--keep", "-1", "a", "b"],
                                  ["rollback", "../../etc"], ["history", "-n", "-3"]])
def test_usage_errors(tmp_path, state, argv):
    r = soswap(argv, state)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_after_report_lists_processes_on_old_inode(tmp_path, libfoo, state, procs):
    """The CLI reports the running program that still maps the replaced library (via the stale engine);
    --restart without systemd changes nothing and says why, and the install still succeeds."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    out = tmp_path / "loop.out"
    with open(out, "w") as f:
        p = procs.start([d / "loop"], stdout=f.fileno(), wait_maps="libfoo.so.1")
    read_lines_until(out, lambda ls: bool(ls))
    old = lib.stat()
    r = soswap(["install", "--json", "--restart", libfoo.v2, lib], state, check=0)
    obj = json.loads(r.stdout)
    (use,) = [u for u in obj["stale"] if u["pid"] == p.pid]
    assert (use["ino"], use["file"]) == (old.st_ino, str(lib))
    assert obj["restart"] or any(w["path"] == "--restart" for w in obj["warnings"])
    with open(tmp_path / "loop2.out", "w") as f:  # a second loop on v2
        procs.start([d / "loop"], stdout=f.fileno(), wait_maps="libfoo.so.1")
    read_lines_until(tmp_path / "loop2.out", lambda ls: bool(ls))
    text = soswap(["install", "--restart", libfoo.v1, lib], state, check=0).stdout
    assert "(--restart was given)" in text and "or use --restart" not in text
    text = soswap(["install", libfoo.v2, lib], state, check=0).stdout  # nobody maps that v1 inode
    text = soswap(["install", libfoo.v1, lib], state, check=0).stdout
    assert "still runs a replaced version" not in text  # nobody maps the v2 inode just replaced
    assert "no running process uses the replaced versions" in text


def test_bad_values_are_one_usage_error_before_anything_starts(tmp_path, state):
    """Owners and groups beyond uid_t, durations that never end, a loop as DEST, a state directory that is a
    file: each is one line and status 2, and no transaction is recorded."""
    (tmp_path / "src").write_text("new\n")
    (tmp_path / "dst").write_text("old\n")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    (tmp_path / "file").write_text("not a directory\n")
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    for argv, says in (
        (["install", "--no-check", "-o", "4294967296", src, dst], "invalid user: '4294967296'"),
        (["install", "--no-check", "-g", "99999999999", src, dst], "invalid group: '99999999999'"),
        (["install", "--no-check", "--lock-timeout", "nan", src, dst], "not a number of seconds: 'nan'"),
        (["install", "--no-check", "--lock-timeout", "inf", src, dst], "not a number of seconds: 'inf'"),
        (["install", "--no-check", "--lock-timeout", "-1", src, dst], "not a number of seconds: '-1'"),
        (["install", "--no-check", src, str(tmp_path / "loop1")], "a symbolic link that cannot be followed"),
        (["install", "--consumer", src, dst], "put -- before SRC DEST"),
        (["history", "--state-dir", str(tmp_path / "file")], "not a directory"),
        (["recover", "--state-dir", str(tmp_path / "file")], "not a directory"),
    ):
        r = soswap(argv, state, check=2)
        assert says in r.stderr and "Traceback" not in r.stderr and r.stdout == "", (argv, r.stderr)
    assert (tmp_path / "dst").read_text() == "old\n"
    assert soswap(["history"], state, check=0).stdout.strip() == "no transactions"


def test_retention_counts_only_transactions_that_hold_backups(tmp_path, state):
    """Creating new files keeps no backup and takes no place among the --keep most recent; --keep 0 prunes
    this transaction's own backup, and the output says none was kept."""
    (tmp_path / "src").write_text("new\n")
    (tmp_path / "lib").write_text("v1\n")
    src = str(tmp_path / "src")
    first = json.loads(soswap(["install", "--no-check", "--json", src, tmp_path / "lib"], state, check=0).stdout)
    for i in range(4):
        soswap(["install", "--no-check", src, tmp_path / f"new{i}"], state, check=0)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".lib.bak-")], "the replaced file's backup was pruned"
    soswap(["rollback", first["txid"]], state, check=0)
    assert (tmp_path / "lib").read_text() == "v1\n"
    (tmp_path / "other").write_text("v1\n")
    r = soswap(["install", "--no-check", "--keep", "0", src, tmp_path / "other"], state, check=0)
    assert "previous versions kept" not in r.stdout and "backups pruned" in r.stdout
    doc = json.loads(soswap(["install", "--no-check", "--keep", "0", "--json", str(tmp_path / "lib"),
                             tmp_path / "other"], state, check=0).stdout)
    assert doc["backups_kept"] is False and all(c["backup"] is None for c in doc["changes"])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".other.bak-")]


def test_journal_facts_after_a_rollback(tmp_path, libfoo, state):
    """The old inode a rollback put back is current again: not among the replaced inodes the journal gives
    the stale engine (install --restart rescans with it), while the version rolled back is."""
    from soswap.replace import journal_facts

    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    v1 = (lib.stat().st_dev, lib.stat().st_ino)
    soswap(["install", libfoo.v2, lib], state, check=0)
    v2 = (lib.stat().st_dev, lib.stat().st_ino)
    assert v1 in journal_facts(StateDir(str(state)))[0]
    soswap(["rollback"], state, check=0)
    replaced, installed = journal_facts(StateDir(str(state)))
    assert v1 not in replaced and v1 in installed
    assert v2 in replaced


def test_a_newline_in_a_file_name_stays_on_its_report_line(tmp_path, libfoo, state):
    """install's text report escapes control characters in names (as stale does): one line per change."""
    d = tmp_path / "odd\nname"
    lib = libfoo.deploy(d, with_programs=False)
    r = soswap(["install", libfoo.v2, lib], state, check=0)
    (line,) = [ln for ln in r.stdout.splitlines() if ln.lstrip().startswith("replaced")]
    assert "odd\\nname/libfoo.so.1" in line
    assert json.loads(soswap(["history", "--json"], state, check=0).stdout)  # JSON keeps the real name
