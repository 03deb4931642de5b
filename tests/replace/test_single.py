"""Single-file replacement under running programs, and what is preserved (replace.md §(b) 1–11, 13)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest

from replace.helpers import ask_value, backups, leftovers, maps_of, read_lines_until, run, sha256, soswap
from support.build import requires_root

pytestmark = [requires_root]


def _start_loop(procs, directory: Path, out: Path, expect: str = "v=1"):  # type: ignore[no-untyped-def]
    with open(out, "w") as f:
        p = procs.start([directory / "loop"], stdout=f.fileno(), wait_maps="libfoo.so.1")
    assert read_lines_until(out, lambda ls: bool(ls))[:1] == [expect]
    return p


def test_library_replaced_under_running_program(tmp_path, libfoo, state, procs):
    """Case 1: the running program survives, keeps v1 (maps: old inode, deleted); a new one gets v2."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    old_ino = lib.stat().st_ino
    out = tmp_path / "loop.out"
    p = _start_loop(procs, d, out)

    soswap(["install", libfoo.v2, lib], state, check=0)

    assert sha256(lib) == libfoo.sha2
    assert ask_value(p.pid, out) == "v=1"
    assert p.alive()
    lines = maps_of(p.pid, "libfoo.so.1")
    assert lines and all(line.endswith("(deleted)") and f" {old_ino} " in line for line in lines)
    assert run([d / "once"]).returncode == 0
    p2 = _start_loop(procs, d, tmp_path / "loop2.out", expect="v=2")
    assert p2.alive()
    assert leftovers(d) == []


def test_control_cp_in_place_breaks_running_program(tmp_path, libfoo, procs):
    """Case 2 (baseline, what soswap never does): cp over the mapped library crashes the program or makes it
    compute garbage."""
    broken = 0
    for i in range(10):
        d = tmp_path / f"cp{i}"
        lib = libfoo.deploy(d)
        out = tmp_path / f"cp{i}.out"
        p = _start_loop(procs, d, out)
        shutil.copyfile(libfoo.v2, lib)  # open(O_TRUNC) + write: in place
        alive = p.alive
        lines = read_lines_until(out, lambda ls, alive=alive: len(ls) > 1 or not alive(), timeout=0.5)
        if not p.alive() or any(line not in ("v=1", "v=2") for line in lines):
            broken += 1
        p.stop()
        if broken:
            break
    assert broken >= 1


def test_control_truncate_gives_sigbus(tmp_path, libfoo, procs):
    """Case 3 (baseline): truncating the mapped library kills the program with SIGBUS."""
    d = tmp_path / "t"
    lib = libfoo.deploy(d)
    out = tmp_path / "t.out"
    p = _start_loop(procs, d, out)
    os.truncate(lib, 0)
    rc = p.popen.wait(timeout=10)
    assert rc == -signal.SIGBUS


def test_running_executable_replaced(tmp_path, libfoo, state, procs):
    """Case 4: the running executable is replaced without ETXTBSY; /proc/PID/exe shows it deleted. Control:
    cp gets 'Text file busy'."""
    d = tmp_path / "app"
    libfoo.deploy(d)
    out = tmp_path / "loop.out"
    p = _start_loop(procs, d, out)
    control = run(["cp", libfoo.once, d / "loop"])
    assert control.returncode != 0 and "Text file busy" in control.stderr

    soswap(["install", libfoo.once, d / "loop"], state, check=0)

    assert os.readlink(f"/proc/{p.pid}/exe").endswith("(deleted)")
    assert ask_value(p.pid, out) == "v=1"
    assert sha256(d / "loop") == sha256(libfoo.once)


def test_capabilities_preserved_and_install_loses_them(tmp_path, libfoo, state):
    """Case 5: file capabilities survive; install(1) drops them (control)."""
    d = tmp_path / "caps"
    libfoo.deploy(d, with_programs=False)
    prog = d / "prog"
    shutil.copyfile(libfoo.loop, prog)
    prog.chmod(0o755)
    assert run(["setcap", "cap_net_bind_service=+ep", prog]).returncode == 0
    before = run(["getcap", prog]).stdout.split()[-1]

    soswap(["install", libfoo.once, prog], state, check=0)
    assert run(["getcap", prog]).stdout.split()[-1] == before
    assert sha256(prog) == sha256(libfoo.once)

    ctl = d / "control"
    shutil.copyfile(libfoo.loop, ctl)
    run(["setcap", "cap_net_bind_service=+ep", ctl])
    assert run(["install", "-m755", libfoo.once, ctl]).returncode == 0
    assert run(["getcap", ctl]).stdout.strip() == ""


def test_owner_and_setuid_preserved(tmp_path, libfoo, state):
    """Case 6: owner 1234:4321 and mode 4755 (setuid) are kept, although chown clears setuid."""
    d = tmp_path / "own"
    lib = libfoo.deploy(d, with_programs=False)
    os.chown(lib, 1234, 4321)
    os.chmod(lib, 0o4755)
    soswap(["install", libfoo.v2, lib], state, check=0)
    st = lib.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o4755)


def test_acl_preserved(tmp_path, libfoo, state):
    """Case 7: getfacl output is identical."""
    d = tmp_path / "acl"
    lib = libfoo.deploy(d, with_programs=False)
    assert run(["setfacl", "-m", "u:nobody:rx", lib]).returncode == 0
    before = run(["getfacl", "-p", lib]).stdout
    soswap(["install", libfoo.v2, lib], state, check=0)
    assert run(["getfacl", "-p", lib]).stdout == before
    assert "user:nobody:r-x" in before


def test_a_default_acl_of_the_directory_is_not_added_on_replace(tmp_path, libfoo, state):
    """The replaced file had no ACL; its directory has a default ACL (set later): the new file has none
    either (it used to keep the ACL its temporary file inherited, and a later chmod 660 let that user read
    it). A file created where there was none inherits the directory's default ACL, as any new file does."""
    d = tmp_path / "dacl"
    lib = libfoo.deploy(d, with_programs=False)
    lib.chmod(0o600)
    before = run(["getfacl", "-p", lib]).stdout
    assert run(["setfacl", "-d", "-m", "u:nobody:rwx", d]).returncode == 0
    soswap(["install", "--no-check", libfoo.v2, lib], state, check=0)
    assert run(["getfacl", "-p", lib]).stdout == before and "nobody" not in before
    assert stat.S_IMODE(lib.stat().st_mode) == 0o600
    soswap(["install", "--no-check", libfoo.v2, d / "created.so"], state, check=0)
    assert "user:nobody:rwx" in run(["getfacl", "-p", d / "created.so"]).stdout


def test_user_xattr_kept_ima_dropped(tmp_path, libfoo, state):
    """Case 8: user.note is preserved; a security.ima set by hand is not copied (and the user is told)."""
    d = tmp_path / "x"
    lib = libfoo.deploy(d, with_programs=False)
    os.setxattr(lib, "user.note", b"keep me")
    os.setxattr(lib, "security.ima", b"\x03\x02\x04\x00")
    r = soswap(["install", libfoo.v2, lib], state, check=0)
    assert os.getxattr(lib, "user.note") == b"keep me"
    assert "security.ima" not in os.listxattr(lib)
    assert "security.ima not copied" in r.stderr


@pytest.mark.skipif(not os.path.exists("/sys/fs/selinux/enforce"), reason="SELinux is not enabled on this kernel")
def test_selinux_label_preserved(tmp_path, libfoo, state):  # pragma: no cover - needs an SELinux host
    """Case 9: a label set with chcon survives."""
    d = tmp_path / "se"
    lib = libfoo.deploy(d, with_programs=False)
    assert run(["chcon", "-t", "textrel_shlib_t", lib]).returncode == 0
    before = os.getxattr(lib, "security.selinux")
    soswap(["install", libfoo.v2, lib], state, check=0)
    assert os.getxattr(lib, "security.selinux") == before


def test_hard_link_twin_keeps_old_version(tmp_path, libfoo, state):
    """Case 10: dest gets v2, its hard link twin keeps v1, and a warning says so."""
    d = tmp_path / "hl"
    lib = libfoo.deploy(d, with_programs=False)
    twin = d / "h2"
    os.link(lib, twin)
    r = soswap(["install", libfoo.v2, lib], state, check=0)
    assert sha256(lib) == libfoo.sha2
    assert sha256(twin) == libfoo.sha1
    assert "other hard link" in r.stderr


def test_symlink_chain_target_replaced_links_kept(tmp_path, libfoo, state):
    """Case 11: libfoo.so -> libfoo.so.1 -> libfoo.so.1.2.3: the file at the end is replaced, both links stay."""
    d = tmp_path / "chain"
    d.mkdir()
    real = d / "libfoo.so.1.2.3"
    shutil.copyfile(libfoo.v1, real)
    (d / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    (d / "libfoo.so").symlink_to("libfoo.so.1")
    soswap(["install", libfoo.v2, d / "libfoo.so"], state, check=0)
    assert os.readlink(d / "libfoo.so") == "libfoo.so.1"
    assert os.readlink(d / "libfoo.so.1") == "libfoo.so.1.2.3"
    assert sha256(real) == libfoo.sha2


def test_the_notice_says_which_part_is_the_symbolic_link(tmp_path, libfoo, state):
    """A destination reached through a symbolically linked directory (merged /usr: lib -> usr/lib) is no
    symbolic link itself; the notice said it was (third regression round)."""
    d = tmp_path / "usr-lib"
    d.mkdir()
    (tmp_path / "lib").symlink_to("usr-lib")
    shutil.copyfile(libfoo.v1, d / "libfoo.so.1")
    (d / "libfoo.so").symlink_to("libfoo.so.1")
    r = soswap(["install", libfoo.v2, tmp_path / "lib" / "libfoo.so.1"], state, check=0)
    assert f"{tmp_path / 'lib' / 'libfoo.so.1'}: is reached through a symbolically linked directory" in r.stderr, \
        r.stderr
    r = soswap(["install", libfoo.v1, d / "libfoo.so"], state, check=0)
    assert f"{d / 'libfoo.so'}: is a symbolic link; replacing {d / 'libfoo.so.1'}" in r.stderr, r.stderr


def test_replace_link_itself(tmp_path, libfoo, state):
    """--replace-link: the symlink becomes a regular file, its old target is untouched."""
    d = tmp_path / "rl"
    d.mkdir()
    shutil.copyfile(libfoo.v1, d / "real")
    (d / "link").symlink_to("real")
    soswap(["install", "--replace-link", libfoo.v2, d / "link"], state, check=0)
    assert not (d / "link").is_symlink() and sha256(d / "link") == libfoo.sha2
    assert sha256(d / "real") == libfoo.sha1


def test_dangling_symlink_refused(tmp_path, libfoo, state):
    d = tmp_path / "dl"
    d.mkdir()
    (d / "link").symlink_to("nowhere")
    r = soswap(["install", libfoo.v2, d / "link"], state, check=2)
    assert "dangling" in r.stderr and r.stderr.count("soswap: error:") == 1
    assert os.readlink(d / "link") == "nowhere"


def test_immutable_refused_then_forced(tmp_path, libfoo, state):
    """Case 13: chattr +i refuses (exit 1, file intact); --force-immutable replaces and sets +i again."""
    d = tmp_path / "imm"
    lib = libfoo.deploy(d, with_programs=False)
    assert run(["chattr", "+i", lib]).returncode == 0
    try:
        r = soswap(["install", libfoo.v2, lib], state, check=1)
        assert "immutable" in r.stderr and "--force-immutable" in r.stderr
        assert sha256(lib) == libfoo.sha1
        assert leftovers(d) == []
        soswap(["install", "--force-immutable", libfoo.v2, lib], state, check=0)
        assert sha256(lib) == libfoo.sha2
        assert "i" in run(["lsattr", lib]).stdout.split()[0]
        # its rollback puts the +i version back; the install is marked rolled back although its backup (that
        # very inode, immutable again) cannot be deleted: a second rollback does not pick it again
        soswap(["rollback"], state, check=0)
        assert sha256(lib) == libfoo.sha1
        history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
        assert history[0]["rolled_back_by"] == history[1]["txid"], history
        assert "no committed transaction to roll back" in soswap(["rollback", "--dry-run"], state, check=2).stderr
    finally:
        run(["chattr", "-i", lib])
        for b in backups(d):
            run(["chattr", "-i", d / b])


def test_backups_that_cannot_be_pruned_are_not_called_pruned(tmp_path, libfoo, state):
    """Pruning in an immutable directory cannot delete the backup: the transaction keeps it on record (the
    next pruning tries again) instead of saying "backups pruned" over a file left for good."""
    d = tmp_path / "immprune"
    lib = libfoo.deploy(d, with_programs=False)
    other = tmp_path / "other"
    other.mkdir()
    soswap(["install", "--no-check", "--no-report", libfoo.v2, lib], state, check=0)
    assert run(["chattr", "+i", d]).returncode == 0
    try:
        r = soswap(["install", "--no-check", "--no-report", "--keep", "0", libfoo.v1, other / "x"], state, check=0)
        assert "backups pruned" not in r.stdout, r.stdout
        history = json.loads(soswap(["history", "--json"], state, check=0).stdout)["transactions"]
        assert history[0]["backups"] == "kept"
    finally:
        run(["chattr", "-i", d])
    r = soswap(["install", "--no-check", "--no-report", "--keep", "0", libfoo.v1, other / "y"], state, check=0)
    assert backups(d) == [] and "backups pruned" in r.stdout


def test_immutable_directory_refused(tmp_path, libfoo, state):
    d = tmp_path / "immdir"
    lib = libfoo.deploy(d, with_programs=False)
    assert run(["chattr", "+i", d]).returncode == 0
    try:
        r = soswap(["install", libfoo.v2, lib], state, check=1)
        assert "immutable" in r.stderr
        soswap(["install", "--force-immutable", libfoo.v2, lib], state, check=0)
        assert sha256(lib) == libfoo.sha2
        assert "i" in run(["lsattr", "-d", d]).stdout.split()[0]
        # a rollback there is refused up front (it failed half-way, and its stuck journal blocked every
        # later install until the flag was cleared by hand)
        r = soswap(["rollback"], state, check=1)
        assert "immutable" in r.stderr and "nothing was changed" in r.stderr
        assert sha256(lib) == libfoo.sha2 and leftovers(d) == []
        soswap(["recover"], state, check=0)
        run(["chattr", "-i", d])
        soswap(["rollback"], state, check=0)
        assert sha256(lib) == libfoo.sha1
    finally:
        run(["chattr", "-i", d])


def test_append_only_refused(tmp_path, libfoo, state):
    d = tmp_path / "app"
    lib = libfoo.deploy(d, with_programs=False)
    assert run(["chattr", "+a", lib]).returncode == 0
    try:
        r = soswap(["install", libfoo.v2, lib], state, check=1)
        assert "append-only" in r.stderr
        assert sha256(lib) == libfoo.sha1
    finally:
        run(["chattr", "-a", lib])


def test_new_file_install_options(tmp_path, libfoo, state):
    """-D creates the directory; -m/-o/-g set mode and owner; a new file defaults to 0755 like install(1)."""
    dest = tmp_path / "new" / "deep" / "libfoo.so.1"
    soswap(["install", "-D", "-m", "u=rwx,g=rx,o=", "-o", "1234", "-g", "4321", libfoo.v2, dest], state, check=0)
    st = dest.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1234, 4321)
    other = tmp_path / "new" / "plain"
    soswap(["install", libfoo.v1, other], state, check=0)
    assert stat.S_IMODE(other.stat().st_mode) == 0o755
    assert sha256(other) == libfoo.sha1


def test_mode_option_overrides_old_mode_with_acl(tmp_path, libfoo, state):
    d = tmp_path / "m"
    lib = libfoo.deploy(d, with_programs=False)
    run(["setfacl", "-m", "u:nobody:rwx", lib])
    soswap(["install", "-m", "0750", libfoo.v2, lib], state, check=0)
    assert stat.S_IMODE(lib.stat().st_mode) == 0o750
    assert "user:nobody:rwx" in run(["getfacl", "-p", lib]).stdout


def test_several_sources_into_directory(tmp_path, libfoo, state):
    d = tmp_path / "dir"
    d.mkdir()
    soswap(["install", libfoo.v2, libfoo.once, d], state, check=0)
    assert sha256(d / "libfoo.so.1") == libfoo.sha2
    assert sha256(d / "once") == sha256(libfoo.once)


@pytest.mark.parametrize("case", ["same-file", "dest-is-dir", "missing-source", "fifo-dest", "no-dir"])
def test_bad_arguments_one_error_line(tmp_path, libfoo, state, case):
    d = tmp_path / "bad"
    lib = libfoo.deploy(d, with_programs=False)
    if case == "same-file":
        args = [lib, lib]
    elif case == "dest-is-dir":
        (d / "sub" / "libfoo.so.1").mkdir(parents=True)
        args = [libfoo.v2, d / "sub" / "libfoo.so.1", d / "sub"]
    elif case == "missing-source":
        args = [d / "nope", lib]
    elif case == "fifo-dest":
        os.mkfifo(d / "fifo")
        args = [libfoo.v2, d / "fifo"]
    else:
        args = [libfoo.v2, d / "missing-dir" / "x"]
    r = soswap(["install", "--no-check", *args], state)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("soswap: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert sha256(lib) == libfoo.sha1
    assert leftovers(d) == []


def test_json_output(tmp_path, libfoo, state):
    import json

    d = tmp_path / "j"
    lib = libfoo.deploy(d, with_programs=False)
    old = lib.stat()
    r = soswap(["install", "--json", "--hash", libfoo.v2, lib], state, check=0)
    obj = json.loads(r.stdout)
    assert obj["schema"] == "soswap.install/1" and obj["status"] == "installed"
    (ch,) = obj["changes"]
    assert ch["action"] == "replace" and ch["dest"] == str(lib)
    assert (ch["old"]["dev"], ch["old"]["ino"]) == (old.st_dev, old.st_ino)
    assert ch["old"]["sha256"] == libfoo.sha1 and ch["new"]["sha256"] == libfoo.sha2
    assert ch["new"]["ino"] == lib.stat().st_ino
    assert ch["backup"] and os.path.samefile(ch["backup"], d / backups(d)[0])


def test_a_rolled_back_library_is_not_stale(tmp_path, libfoo, state, procs):
    """install then rollback under a running program: it runs the file at the path again (the old inode, put
    back), so `soswap stale` lists nothing, although maps still says "(deleted)" and the journal recorded the
    inode as replaced (it was reported 'replaced' for good)."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    p = _start_loop(procs, d, tmp_path / "loop.out")
    soswap(["install", libfoo.v2, lib], state, check=0)
    r = soswap(["stale", "--json", "--pid", str(p.pid)], state)
    assert [f["kind"] for proc in json.loads(r.stdout)["processes"] for f in proc["files"]] == ["replaced"]
    soswap(["rollback"], state, check=0)
    assert sha256(lib) == libfoo.sha1
    r = soswap(["stale", "--json", "--pid", str(p.pid)], state, check=0)
    assert json.loads(r.stdout)["processes"] == []


def test_a_process_on_the_version_a_soname_link_led_to_is_listed(tmp_path, libfoo, state, procs):
    """libfoo.so.1.2.4 installed beside libfoo.so.1.2.3 flips libfoo.so.1: the running program still maps
    1.2.3 (not deleted, not changed) and gets 1.2.4 only when restarted. The after-report lists it, under
    the file it maps; it said no process ran old code."""
    d = tmp_path / "app"
    d.mkdir()
    shutil.copyfile(libfoo.v1, d / "libfoo.so.1.2.3")
    os.symlink("libfoo.so.1.2.3", d / "libfoo.so.1")
    shutil.copyfile(libfoo.loop, d / "loop")
    os.chmod(d / "loop", 0o755)
    p = _start_loop(procs, d, tmp_path / "loop.out")
    new = tmp_path / "libfoo.so.1.2.4"
    shutil.copyfile(libfoo.v2, new)
    r = soswap(["install", "--json", new, d], state, check=0)
    doc = json.loads(r.stdout)
    assert os.readlink(d / "libfoo.so.1") == "libfoo.so.1.2.4"
    assert [(u["pid"], u["file"]) for u in doc["stale"]] == [(p.pid, str(d / "libfoo.so.1.2.3"))]
    from soswap.replace import StateDir, journal_facts

    old = (d / "libfoo.so.1.2.3").stat()
    assert (old.st_dev, old.st_ino) in journal_facts(StateDir(str(state)))[0]  # install --restart sees it
    link = d / "libfoo.so.1"
    os.symlink("libfoo.so.1.2.3", d / ".flip")
    os.rename(d / ".flip", link)  # flipped back by hand (ldconfig -n after removing 1.2.4 does the same)
    assert (old.st_dev, old.st_ino) not in journal_facts(StateDir(str(state)))[0]
    (d / "placeholder").write_text("")  # likely takes the link's freed inode: the new link gets another one
    os.symlink("libfoo.so.1.2.4", d / ".flip")
    os.rename(d / ".flip", link)
    # a link re-created by hand with the install's target is unchanged for rollback, whatever its inode
    soswap(["rollback"], state, check=0)  # the link back on 1.2.3: current again
    assert (old.st_dev, old.st_ino) not in journal_facts(StateDir(str(state)))[0]
