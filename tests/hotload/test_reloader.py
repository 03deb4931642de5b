"""Hot reload with real libraries, each scenario in a child Python process (a crash there is an observation,
not a lost test run). Cases 26-29 of replace.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.build import requires_cc, run_cc, shared_lib

pytestmark = requires_cc
SRC = str(Path(__file__).resolve().parents[2] / "src")


def version_lib(path: Path, version: int, extra: str = "", flags: tuple = ()) -> Path:
    """A library whose ``version()`` returns ``version`` (16 filler functions shift the code layout)."""
    filler = "\n".join(f"int filler{i}_{version}(int x) {{ return x * {i + version}; }}" for i in range(16))
    return shared_lib(path, f"{filler}\nint version(void) {{ return {version}; }}\n{extra}", flags=list(flags))


CHILD_PRELUDE = """
import os
def swap(src, dst):
    tmp = dst + ".new"
    with open(src, "rb") as a, open(tmp, "wb") as b:
        b.write(a.read())
    os.replace(tmp, dst)
"""


def run_child(code: str, timeout: float = 60, tmpdir: str = "") -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python; it can call ``swap(src, dst)`` (an atomic rename-replace). Its
    temporary files go to ``tmpdir`` (a test's tmp_path: a child that crashes leaves nothing in /tmp)."""
    env = dict(os.environ, PYTHONPATH=SRC)
    if tmpdir:
        env["TMPDIR"] = tmpdir
    return subprocess.run([sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def swap_and_reload(tmp_path: Path, lib: Path, *news: Path, before: str = "") -> subprocess.CompletedProcess:
    """In a child: a reloader of ``lib`` (after ``before``, Python code); for each of ``news``, that file renamed
    over it and a reload, printing the ReloadError (or "loaded"); then ``version()`` and the generation."""
    return run_child(tmpdir=str(tmp_path), code=before + f"""
from soswap.hotload import NativeReloader, ReloadError
r = NativeReloader({str(lib)!r})
for new in {[str(n) for n in news]!r}:
    swap(new, {str(lib)!r})
    try:
        r.reload()
        print("loaded")
    except ReloadError as e:
        print(e)
print(r.function("version")(), r.generation)
""")


def test_plain_dlopen_after_replace_returns_the_old_code(tmp_path: Path) -> None:
    """The glibc behaviour the reloader exists for: same path, same (old) handle."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    v2 = version_lib(tmp_path / "v2" / "libplug.so", 2)
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import ctypes, os
        a = ctypes.CDLL({str(lib)!r}); print(a.version())
        swap({str(v2)!r}, {str(lib)!r})
        b = ctypes.CDLL({str(lib)!r}); print(b.version(), a._handle == b._handle)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1", "True"]


def test_reload_gives_the_new_code_and_unmaps_the_old(tmp_path: Path) -> None:
    lib = version_lib(tmp_path / "libplug.so", 1)
    v2 = version_lib(tmp_path / "v2" / "libplug.so", 2)
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import os, re
        from soswap.hotload import NativeReloader, is_loaded
        r = NativeReloader({str(lib)!r}, settle=0)
        print(r.function("version")(), r.changed())
        old = r._copy
        swap({str(v2)!r}, {str(lib)!r})
        print(r.changed())
        res = r.reload_if_changed()
        print(r.function("version")(), res.generation, res.old_unloaded, is_loaded(old))
        maps = open("/proc/self/maps").read()
        print(old in maps, "gen2" in maps)
        print(r.close(), os.path.exists(r.workdir))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == ["1 False", "True", "2 2 True False", "False True", "True False"]


def test_a_bad_new_version_keeps_the_old_generation(tmp_path: Path) -> None:
    lib = version_lib(tmp_path / "libplug.so", 1)
    bad = shared_lib(tmp_path / "bad" / "libplug.so", "int nothere(void);\nint version(void){return nothere();}")
    r = swap_and_reload(tmp_path, lib, bad)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "undefined symbol: nothere" in lines[0] and "keeping generation 1" in lines[0]
    assert lines[1] == "1 1"


def test_nodelete_and_gnu_unique_are_reported_as_not_unloadable(tmp_path: Path) -> None:
    nodelete = version_lib(tmp_path / "nd" / "libnd.so", 1, flags=("-Wl,-z,nodelete",))
    cxx_src = tmp_path / "uniq.cc"
    cxx_src.write_text('inline int &counter() { static int c = 0; return c; }\n'
                       'extern "C" int version(void) { return ++counter(); }\n')
    uniq = tmp_path / "uq" / "libuq.so"
    uniq.parent.mkdir()
    run_cc(["-x", "c++", "-shared", "-fPIC", "-o", str(uniq), str(cxx_src), "-lstdc++"])
    r = run_child(tmpdir=str(tmp_path), code=f"""
        from soswap.hotload import NativeReloader
        for path in ({str(nodelete)!r}, {str(uniq)!r}):
            r = NativeReloader(path)
            r.function("version")()
            res = r.reload()
            print(res.old_unloaded, "|", "; ".join(res.not_unloadable_because))
    """)
    assert r.returncode == 0, r.stderr
    nd, uq = r.stdout.splitlines()
    assert nd.startswith("False") and "nodelete" in nd
    assert uq.startswith("False") and "GNU_UNIQUE" in uq


THREAD_LIB = r"""
#include <pthread.h>
#include <unistd.h>
static volatile int running;
static pthread_t th;
static void *spin(void *arg) { (void)arg; while (running) usleep(1000); return 0; }
int start(void) { running = 1; return pthread_create(&th, 0, spin, 0); }
void stop(void) { running = 0; pthread_join(th, 0); }
int version(void) { return VERSION; }
"""


@pytest.mark.parametrize("quiesce", [True, False])
def test_threads_must_be_stopped_before_the_old_generation_goes(tmp_path: Path, quiesce: bool) -> None:
    lib = shared_lib(tmp_path / "libthr.so", THREAD_LIB.replace("VERSION", "1"), libs=["-lpthread"])
    v2 = shared_lib(tmp_path / "v2" / "libthr.so", THREAD_LIB.replace("VERSION", "2"), libs=["-lpthread"])
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import os, time
        from soswap.hotload import NativeReloader
        on_unload = (lambda h: h.stop()) if {quiesce} else None
        r = NativeReloader({str(lib)!r}, on_unload=on_unload, on_load=lambda h, state: h.start())
        swap({str(v2)!r}, {str(lib)!r})
        res = r.reload()
        time.sleep(0.3)
        print(r.function("version")(), res.old_unloaded)
        r.handle.stop()
    """)
    if quiesce:
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["2", "True"]
    else:
        # the old generation was unmapped under its running thread
        assert r.returncode == -signal.SIGSEGV


def test_ctypes_dlclose_once_per_open_then_reopen_gives_new_code(tmp_path: Path) -> None:
    lib = version_lib(tmp_path / "libplug.so", 1)
    v2 = version_lib(tmp_path / "v2" / "libplug.so", 2)
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import ctypes, os, _ctypes
        a = ctypes.CDLL({str(lib)!r}); b = ctypes.CDLL({str(lib)!r}); print(a.version())
        swap({str(v2)!r}, {str(lib)!r})
        _ctypes.dlclose(a._handle)
        print(ctypes.CDLL({str(lib)!r}).version())   # b still holds the old object
        _ctypes.dlclose(b._handle); _ctypes.dlclose(b._handle)
        print(ctypes.CDLL({str(lib)!r}).version())
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1", "2"]


def test_cffi_dlclose_then_call_raises_instead_of_crashing(tmp_path: Path) -> None:
    pytest.importorskip("cffi")
    lib = version_lib(tmp_path / "libplug.so", 1)
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import cffi
        ffi = cffi.FFI(); ffi.cdef("int version(void);")
        lib = ffi.dlopen({str(lib)!r}); print(lib.version())
        ffi.dlclose(lib)
        try:
            lib.version()
        except ValueError as e:
            print("ValueError")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "ValueError"]


def test_a_file_cut_short_is_refused_instead_of_killing_the_process(tmp_path: Path) -> None:
    """A new version caught in the middle of being written (cut at several sizes): dlopen would map it and the
    process would die of SIGBUS; the reload is refused and generation 1 stays in service."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    v2 = version_lib(tmp_path / "v2" / "libplug.so", 2).read_bytes()
    cuts = [size for size in (4000, 8000, 12000) if size < len(v2)]
    for n, size in enumerate(cuts):
        (tmp_path / f"cut{n}.so").write_bytes(v2[:size])
    r = run_child(tmpdir=str(tmp_path), code=f"""
        from soswap.hotload import NativeReloader, ReloadError
        r = NativeReloader({str(lib)!r}, settle=0)
        for n in range({len(cuts)}):
            swap({str(tmp_path)!r} + f"/cut{{n}}.so", {str(lib)!r})
            try:
                r.reload_if_changed()
                print("loaded", n, r.function("version")())
            except ReloadError as e:
                print("refused", n, "keeping generation 1" in str(e))
        print(r.function("version")(), r.generation)
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines == [f"refused {n} True" for n in range(len(cuts))] + ["1 1"], lines


def test_reloaders_sharing_a_workdir_and_threads_reloading_at_once(tmp_path: Path) -> None:
    """Two reloaders of libraries with the same file name in one workdir each keep their own code; two threads
    calling reload_if_changed() after one change reload once."""
    a = version_lib(tmp_path / "a" / "libplugin.so", 1)
    b = version_lib(tmp_path / "b" / "libplugin.so", 2)
    v3 = version_lib(tmp_path / "v3" / "libplugin.so", 3)
    wd = tmp_path / "wd"
    wd.mkdir()
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import threading
        from soswap.hotload import NativeReloader
        A = NativeReloader({str(a)!r}, workdir={str(wd)!r}, settle=0)
        B = NativeReloader({str(b)!r}, workdir={str(wd)!r})
        print(A.function("version")(), B.function("version")())
        swap({str(v3)!r}, {str(a)!r})
        done = []
        ts = [threading.Thread(target=lambda: done.append(A.reload_if_changed())) for _ in range(2)]
        for t in ts: t.start()
        for t in ts: t.join()
        print(A.function("version")(), A.generation, sum(1 for d in done if d is not None))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["1 2", "3 2 1"]


def test_an_origin_dependency_is_explained(tmp_path: Path) -> None:
    """$ORIGIN in the library's RUNPATH names the private copy's directory: the refusal says so."""
    shared_lib(tmp_path / "libhelper.so", "int helper(void) { return 100; }\n", soname="libhelper.so")
    lib = shared_lib(tmp_path / "liborig.so", "int helper(void);\nint version(void) { return helper() + 1; }\n",
                     libs=[f"-L{tmp_path}", "-lhelper", "-Wl,-rpath,$ORIGIN"])
    r = run_child(tmpdir=str(tmp_path), code=f"""
        from soswap.hotload import NativeReloader, ReloadError
        try:
            NativeReloader({str(lib)!r})
        except ReloadError as e:
            print(e)
    """)
    assert r.returncode == 0, r.stderr
    assert "no generation is in service" in r.stdout and "$ORIGIN in its RPATH/RUNPATH" in r.stdout, r.stdout


def test_a_device_at_the_path_is_refused_not_copied_for_ever(tmp_path: Path) -> None:
    """The path leads to /dev/zero (a symlink swapped in): the copy of a device never ends and filled the
    disk; it is refused at once, and the generation in service stays."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    r = run_child(tmpdir=str(tmp_path), timeout=30, code=f"""
        import os
        from soswap.hotload import NativeReloader, ReloadError
        r = NativeReloader({str(lib)!r})
        os.rename({str(lib)!r}, {str(tmp_path / "kept.so")!r})
        os.symlink("/dev/zero", {str(lib)!r})
        try:
            r.reload()
            print("loaded")
        except ReloadError as e:
            print("refused", "not a regular file" in str(e))
        print(r.function("version")(), r.generation)
        r.close()
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["refused True", "1 1"]
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 10 << 20


# -- QA round: the caller's directory, the settle time, damaged files, stale's view -----------------------------

def test_a_workdir_given_is_never_changed_and_each_reloader_keeps_its_own_directory(tmp_path: Path) -> None:
    """workdir= was chmod-ed 0700 (as root, workdir="/tmp" locked every user out of /tmp); a private directory
    removed under the reloader (a /tmp cleaner) made every later reload fail with a raw FileNotFoundError; a
    forked child that exited removed its parent's copies."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import os, shutil, stat
        from soswap.hotload import NativeReloader, ReloadError
        r = NativeReloader({str(lib)!r}, workdir={str(shared)!r})
        print(oct(stat.S_IMODE(os.stat({str(shared)!r}).st_mode)), os.path.dirname(r.workdir) == {str(shared)!r},
              oct(stat.S_IMODE(os.stat(r.workdir).st_mode)))
        pid = os.fork()
        if pid == 0:
            raise SystemExit(0)  # a normal exit: the finalizers run in the child too
        os.waitpid(pid, 0)
        print(os.path.isdir(r.workdir))
        shutil.rmtree(r.workdir)
        print(r.reload().generation, r.function("version")())
        r.close()
        try:
            r.reload()
        except ReloadError as e:
            print("closed" in str(e))
        try:
            NativeReloader({str(lib)!r}, workdir={str(tmp_path / "missing")!r})
        except ReloadError as e:
            print("cannot make a private directory" in str(e))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["0o1777 True 0o700", "True", "2 1", "True", "True"], r.stdout


def test_reload_if_changed_waits_until_the_file_is_no_longer_written(tmp_path: Path) -> None:
    """An in-place rewrite (dd conv=notrunc, rsync --inplace) caught between two writes is a mix of two versions
    that passes every check a copy can make, and ld.so aborted the process on it: reload_if_changed takes a
    file only once it has not been written for `settle` seconds."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    v2 = version_lib(tmp_path / "v2" / "libplug.so", 2).read_bytes()
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import os, time
        from soswap.hotload import NativeReloader
        r = NativeReloader({str(lib)!r}, settle=0.5)
        data = {v2!r}
        fd = os.open({str(lib)!r}, os.O_WRONLY)
        os.pwrite(fd, data[:len(data) // 2], 0)   # the first half of an in-place rewrite
        print(r.changed(), r.reload_if_changed())
        os.pwrite(fd, data[len(data) // 2:], len(data) // 2)
        os.ftruncate(fd, len(data))
        os.close(fd)
        print(r.reload_if_changed())
        time.sleep(0.6)
        res = r.reload_if_changed()
        print(res.generation, r.function("version")())
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["True None", "None", "2 2"], r.stdout


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_a_damaged_file_that_would_end_the_process_in_ld_so_is_refused(tmp_path: Path) -> None:
    """ld.so does not validate what it maps: a GNU hash table whose bloom size is not a power of two made it
    abort the process inside dlopen ("Inconsistency detected by ld.so"). ld.so now checks the copy in a process
    of its own first. A file of another machine says so instead of "cannot open shared object file"."""
    import struct

    from soswap.elf import ElfFile
    from soswap.elf import constants as C

    lib = version_lib(tmp_path / "libplug.so", 1)
    good = version_lib(tmp_path / "v2" / "libplug.so", 2)
    data = good.read_bytes()
    with ElfFile.open(str(good)) as elf:
        gnu_hash = elf.dynamic.tags[C.DT_GNU_HASH]
        at = next(s.offset + gnu_hash - s.vaddr for s in elf.segments_of_type(C.PT_LOAD)
                  if s.vaddr <= gnu_hash < s.vaddr + s.filesz)
    bloom = tmp_path / "bloom.so"
    bloom.write_bytes(_patched(data, at + 8, struct.pack("<I", 3)))  # bloom_size must be a power of two
    arm = tmp_path / "arm.so"
    arm.write_bytes(_patched(data, 18, struct.pack("<H", 183)))  # e_machine: EM_AARCH64
    r = swap_and_reload(tmp_path, lib, bloom, arm)
    assert r.returncode == 0, (r.returncode, r.stderr)
    lines = r.stdout.splitlines()
    assert "keeping generation 1: ld.so aborts loading it: Inconsistency detected by ld.so" in lines[0], lines
    assert "built for aarch64" in lines[1] and "this process is x86-64" in lines[1], lines
    assert lines[2] == "1 1"


def test_g_plus_plus_thread_local_destructors_are_named_as_a_reason(tmp_path: Path) -> None:
    """g++ registers thread_local destructors through libstdc++'s __cxa_thread_atexit, not glibc's
    __cxa_thread_atexit_impl: the reason was never given."""
    from soswap.hotload import unload_blockers

    src = tmp_path / "tl.cc"
    src.write_text('struct S { ~S() {} int v = 1; };\nthread_local S s;\n'
                   'extern "C" int version(void) { return s.v; }\n')
    out = tmp_path / "libtl.so"
    run_cc(["-x", "c++", "-shared", "-fPIC", "-fno-gnu-unique", "-o", str(out), str(src), "-lstdc++"])
    assert any("thread_local destructors (__cxa_thread_atexit)" in r for r in unload_blockers(str(out)))


def test_function_gives_each_caller_its_own_prototype(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "libtwice.so", "long twice(long x) { return 2 * x; }\n")
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import ctypes
        from soswap.hotload import NativeReloader
        r = NativeReloader({str(lib)!r})
        a = r.function("twice", ctypes.c_long, [ctypes.c_long])
        b = r.function("twice", ctypes.c_char_p, [ctypes.c_long])
        print(a is b, a(21), a.restype is ctypes.c_long)
        try:
            r.function("nothere")
        except AttributeError:
            print("AttributeError")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["False 42 True", "AttributeError"]


def test_stale_does_not_call_a_generation_in_service_modified(tmp_path: Path) -> None:
    """Each copy is written after the process started, then mapped: soswap stale called it "modified" (changed
    in place under the process) for ever, and --restart would have restarted the program that reloads itself.
    The copy carries a time no later than the process start; a retired generation still mapped stays visible
    as deleted."""
    import json

    lib = version_lib(tmp_path / "libplug.so", 1)
    v2 = version_lib(tmp_path / "v2" / "libplug.so", 2)
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import time
        from soswap.hotload import NativeReloader
        r = NativeReloader({str(lib)!r})
        swap({str(v2)!r}, {str(lib)!r})
        r.reload()
        open({str(ready)!r}, "w").close()
        time.sleep(120)
    """)
    env = dict(os.environ, PYTHONPATH=SRC, TMPDIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-c", CHILD_PRELUDE + code], env=env, stdout=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), "the child did not get ready"
        r = subprocess.run([sys.executable, "-m", "soswap", "stale", "--no-kernel", "--json", "--pid", str(p.pid)],
                           env=dict(env, SOSWAP_STATE_DIR=str(tmp_path / "state")), capture_output=True, text=True,
                           timeout=60)
        doc = json.loads(r.stdout)
        kinds = [f["kind"] for proc in doc["processes"] for f in proc["files"] if "soswap-hotload-" in f["path"]]
        assert "modified" not in kinds, r.stdout
    finally:
        p.kill()
        p.wait()


def test_a_file_dated_in_the_future_settles_by_observation(tmp_path: Path) -> None:
    """A clock skew put the new file's mtime in the future: reload_if_changed never took it (QA regression
    round). A file this reloader has seen unchanged for `settle` seconds has settled too."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    v2 = version_lib(tmp_path / "v2" / "libplug.so", 2)
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import os, time
        from soswap.hotload import NativeReloader
        r = NativeReloader({str(lib)!r}, settle=0.3)
        swap({str(v2)!r}, {str(lib)!r})
        future = time.time_ns() + 3600 * 10**9
        os.utime({str(lib)!r}, ns=(future, future))
        print(r.reload_if_changed())
        time.sleep(0.4)
        res = r.reload_if_changed()
        print(res.generation, r.function("version")())
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["None", "2 2"], r.stdout


def test_a_forked_child_closing_leaves_the_parents_copy(tmp_path: Path) -> None:
    """close() (or a reload) in a forked child unlinked the copy in service in the parent, which soswap stale
    then reported as a deleted library (QA regression round)."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import os
        from soswap.hotload import NativeReloader
        r = NativeReloader({str(lib)!r})
        pid = os.fork()
        if pid == 0:
            r.close()
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.path.exists(r._copy), r.function("version")())
        print(" (deleted)" in open("/proc/self/maps").read())
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["True 1", "False"], r.stdout


# QA round of 2026-12-01 ---------------------------------------------------------------------------------------
def test_a_copy_opened_rtld_global_elsewhere_is_refused_not_silently_used(tmp_path: Path) -> None:
    """Another copy of the library opened RTLD_GLOBAL in the process: ld.so searches the global scope first, so
    the new generation's own calls went to that copy while the reload said it succeeded."""
    lib = version_lib(tmp_path / "libplug.so", 1, extra="int twice(void) { return 2 * version(); }\n")
    other = tmp_path / "other" / "libplug.so"
    other.parent.mkdir()
    other.write_bytes(lib.read_bytes())
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import ctypes
        from soswap.hotload import NativeReloader, ReloadError
        ctypes.CDLL({str(other)!r}, mode=ctypes.RTLD_GLOBAL)
        try:
            NativeReloader({str(lib)!r})
            print("loaded")
        except ReloadError as e:
            print(e)
        """)
    assert "already defined in this process's global scope" in r.stdout and "\nloaded" not in r.stdout, r


def test_glibc_itself_is_refused(tmp_path: Path) -> None:
    """libc.so.6 loaded a second time (pthread_create through it aborted the process)."""
    libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                            "/lib64/libc.so.6") if os.path.exists(p))
    r = run_child(tmpdir=str(tmp_path), code=f"""
        from soswap.hotload import NativeReloader, ReloadError
        try:
            NativeReloader({libc!r})
        except ReloadError as e:
            print(e)
        """)
    assert "a second copy of glibc cannot work" in r.stdout, r


def test_the_ld_so_check_holds_with_sigchld_ignored(tmp_path: Path) -> None:
    """A daemon that ignores SIGCHLD: the kernel reaps the ld.so probe itself and its crash read as status 0,
    so a file on which ld.so crashes was loaded and ended the process."""
    from soswap.elf import ElfFile
    from soswap.elf import constants as C

    lib = version_lib(tmp_path / "libplug.so", 1)
    good = version_lib(tmp_path / "v2" / "libplug.so", 2)
    with ElfFile.open(str(good)) as elf:
        dyn = elf.segments_of_type(C.PT_DYNAMIC)[0]
        n = next(i for i, (tag, _v) in enumerate(elf.dynamic.entries) if tag == C.DT_GNU_HASH)
    bad = tmp_path / "bad.so"  # DT_GNU_HASH's address far away: ld.so dies of SIGSEGV reading it
    bad.write_bytes(_patched(good.read_bytes(), dyn.offset + 16 * n + 15, b"\x2f"))
    r = swap_and_reload(tmp_path, lib, bad, before="import signal\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\n")
    assert r.returncode == 0 and "ld.so crashes loading it (SIGSEGV)" in r.stdout and r.stdout.endswith("1 1\n"), r


def test_a_rewrite_in_place_with_size_and_mtime_put_back_is_a_change(tmp_path: Path) -> None:
    """The same inode rewritten with the same size and its mtime put back (or a new file that got a freed
    inode number back: install -p, tar x): changed() said no. The ctime tells."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    v2 = version_lib(tmp_path / "v2" / "libplug.so", 2)
    assert lib.stat().st_size == v2.stat().st_size
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import os, time
        from soswap.hotload import NativeReloader
        r = NativeReloader({str(lib)!r})
        st = os.stat({str(lib)!r})
        time.sleep(0.02)
        with open({str(lib)!r}, "r+b") as f:
            f.write(open({str(v2)!r}, "rb").read())
        os.utime({str(lib)!r}, ns=(st.st_atime_ns, st.st_mtime_ns))
        print(r.changed())
        r.reload()
        print(r.function("version")())
        """)
    assert r.stdout.split() == ["True", "2"], r


def test_a_relative_workdir_is_removed_after_a_chdir(tmp_path: Path) -> None:
    """workdir="." then os.chdir(): the private directory was looked for in the new working directory, a new
    one made there, and the first left behind after close()."""
    lib = version_lib(tmp_path / "libplug.so", 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r = run_child(tmpdir=str(tmp_path), code=f"""
        import os
        from soswap.hotload import NativeReloader
        os.chdir({str(tmp_path / "a")!r})
        r = NativeReloader({str(lib)!r}, workdir=".")
        os.chdir({str(tmp_path / "b")!r})
        r.reload()
        r.close()
        print(sorted(os.listdir({str(tmp_path / "a")!r})), sorted(os.listdir({str(tmp_path / "b")!r})))
        """)
    assert r.stdout.strip() == "[] []", r


def test_a_static_program_at_the_path_is_called_so(tmp_path: Path) -> None:
    """A statically linked program put at the library's path: ld.so's trace mode crashes on it, and the
    reloader called the file damaged."""
    from support.build import executable

    lib = version_lib(tmp_path / "libplug.so", 1)
    static = executable(tmp_path / "static", "int main(void) { return 0; }\n", flags=["-static"])
    r = swap_and_reload(tmp_path, lib, static)
    assert "a statically linked program, not a shared library" in r.stdout, r
