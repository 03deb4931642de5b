"""The command line: --version, --help everywhere, errors as one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from soswap import __version__
from soswap.cli import build_parser


def soswap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soswap", *args], capture_output=True, text=True)


def test_version() -> None:
    r = soswap("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"soswap {__version__}"


def test_version_and_usage_errors_import_no_command() -> None:
    """Monitoring probes run ``soswap --version``: it must not import every subcommand (a third of its time)."""
    code = ("import sys\nfrom soswap.cli import main\n"
            "for argv in (['--version'], [], ['--bogus'], ['nosuch']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('soswap.commands.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "[]", r.stdout + r.stderr
    assert "invalid choice: 'nosuch'" in r.stderr


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&- 2>&-"])
def test_closed_standard_streams(closed: str, tmp_path) -> None:
    """dpkg starts its status-logger with standard output closed: no traceback, and no file opened later may
    take the number of a closed standard descriptor (a child would write into it)."""
    log = tmp_path / "log"
    script = (f'"$0" -c "import os, sys; sys.argv[0] = \'soswap\'; from soswap.cli import main; rc = main(); '
              f'fd = os.open(os.devnull, os.O_RDONLY); os.write(3, b\'%d %d\' % (rc, fd))" elf /bin/true '
              f'{closed} 3>{log}')
    r = subprocess.run(["sh", "-c", script, sys.executable], capture_output=True, text=True)
    assert "Traceback" not in r.stderr and r.returncode == 0, r.stderr
    rc, fd = map(int, log.read_text().split())
    assert rc == 0 and fd > 3


def _commands() -> list:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_help_for_every_command(command: str) -> None:
    r = soswap(command, "--help")
    assert r.returncode == 0 and "usage: soswap " + command in r.stdout


def test_no_command_is_a_usage_error() -> None:
    r = soswap()
    assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr


def test_unknown_option_is_a_usage_error() -> None:
    r = soswap("elf", "--bogus", "/bin/true")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last == "soswap elf: error: unrecognized arguments: --bogus"
    assert r.stderr.startswith("usage: soswap elf ")  # the subcommand's usage, not the top level's


def test_nagios_errors_are_unknown_never_critical() -> None:
    """The monitoring-plugins rules: an error of 'stale --nagios' is UNKNOWN (3) with a status line on standard
    output; exit status 2 would be CRITICAL."""
    for nagios, args in (("--nagios", ["--pid", "999999999"]), ("--nagios", ["--pid", "abc"]),
                         ("--nagios", ["--identical-max-size", "12X"]), ("--nag", ["--bogus"]),
                         ("--nagio", ["--pid", "x"]), ("--nagios=1", []), ("--nag=x", ["--bogus"])):
        # argparse takes a unique prefix too, and an "=value" it then refuses
        r = soswap("stale", nagios, "--no-kernel", *args)
        assert r.returncode == 3 and r.stdout.startswith("STALE UNKNOWN - "), (args, r.stdout, r.stderr)
        assert "error" in r.stderr and "Traceback" not in r.stderr


def test_nagios_killed_at_its_timeout_is_unknown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A monitoring agent kills a check that overruns with SIGTERM: 'stale --nagios' still says UNKNOWN (3)
    rather than dying of the signal. strace holds the scan in its read of a process's maps meanwhile."""
    import os
    import shutil
    import signal
    import time

    if shutil.which("strace") is None:
        pytest.skip("strace is needed")
    sleeper = subprocess.Popen(["sleep", "60"])
    trace = None
    try:
        maps = f"/proc/{sleeper.pid}/maps"
        trace = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-P", maps, "-e",
                                  "inject=openat:delay_enter=3000000", sys.executable, "-m", "soswap", "stale",
                                  "--nagios", "--no-kernel", "--pid", str(sleeper.pid)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=dict(os.environ, SOSWAP_STATE_DIR=str(tmp_path / "state"),
                                          SOSWAP_CACHE_DIR=str(tmp_path / "cache")))
        deadline = time.monotonic() + 20
        child = None
        while child is None and time.monotonic() < deadline:  # the traced python, once it reads the maps
            for pid in (p for p in os.listdir("/proc") if p.isdigit() and int(p) != trace.pid):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:5]
                except OSError:
                    continue
                if argv == [sys.executable.encode(), b"-m", b"soswap", b"stale", b"--nagios"]:
                    child = int(pid)
            time.sleep(0.05)
        assert child is not None
        time.sleep(1.0)  # in the delayed openat by now
        os.kill(child, signal.SIGTERM)
        out, _err = trace.communicate(timeout=30)
        assert trace.returncode == 3 and out == "STALE UNKNOWN - interrupted\n", (trace.returncode, out, _err)
    finally:
        for p in (trace, sleeper):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_json_errors_go_to_standard_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """tree --json names an unreadable FILE on standard error as well as in its document, under the name it was
    given (two symlinks to one file are two names); elf --json of one unreadable file prints null."""
    import json

    (tmp_path / "notelf.txt").write_text("not elf\n")
    (tmp_path / "link1").symlink_to("notelf.txt")
    (tmp_path / "link2").symlink_to("notelf.txt")
    r = soswap("tree", "--json", str(tmp_path / "link1"), str(tmp_path / "link2"), str(tmp_path / "none"))
    results = json.loads(r.stdout)["results"]
    assert r.returncode == 2 and [x["file"] for x in results] == [str(tmp_path / n) for n in ("link1", "link2",
                                                                                            "none")]
    assert all(x["error"].startswith(x["file"] + ": ") for x in results), results
    assert r.stderr.count("soswap: error: ") == 3 and f"{tmp_path / 'link2'}: not an ELF file" in r.stderr
    r = soswap("elf", "--json", str(tmp_path / "notelf.txt"))
    assert r.returncode == 2 and r.stdout == "null\n" and r.stderr.startswith("soswap: error: ")


@pytest.mark.parametrize("command", ["elf", "tree", "diff"])
def test_a_newline_in_a_file_name_keeps_the_error_on_one_line(command: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    odd = str(tmp_path / "new\nline")
    r = soswap(command, *([odd, odd] if command == "diff" else [odd]))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("soswap: error: "), r.stderr


def test_bad_stale_arguments_are_one_line_usage_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A directory as --ignore-file (the read failed on a file descriptor: a traceback), a bad --deny regex
    (an internal error) and --deny without --restart: one line, status 2 (3, UNKNOWN, under --nagios)."""
    for args in (["--ignore-file", str(tmp_path)], ["--restart", "--dry-run", "--deny", "("], ["--deny", "x"]):
        r = soswap("stale", *args)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        n = soswap("stale", "--nagios", *args)
        assert n.returncode == 3 and n.stdout.startswith("STALE UNKNOWN"), (args, n.stdout)


def test_elf_json_of_one_unreadable_file_is_null(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One document always: null for one file that cannot be read, [] for several."""
    import json

    bad = tmp_path / "bad"
    bad.write_bytes(b"not ELF")
    one = soswap("elf", "--json", str(bad))
    two = soswap("elf", "--json", str(bad), str(bad))
    assert one.returncode == two.returncode == 2
    assert json.loads(one.stdout) is None and json.loads(two.stdout) == []


def test_history_of_a_state_directory_it_cannot_read_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As another user, an unreadable state directory is not "no transactions" (exit 2, one line)."""
    import os
    import shutil
    from pathlib import Path

    system_python = "/usr/bin/python3"
    if os.geteuid() != 0 or not os.access(system_python, os.X_OK) or shutil.which("setpriv") is None:
        pytest.skip("needs root, setpriv and /usr/bin/python3")
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="soswap-nobody-", dir="/tmp"))  # pytest's tmp_path is 0700 up the tree
    try:
        _history_as_nobody(top, system_python)
    finally:
        shutil.rmtree(top)


def _history_as_nobody(top, system_python: str) -> None:  # type: ignore[no-untyped-def]
    import shutil
    from pathlib import Path

    src = top / "src"
    shutil.copytree(Path(__file__).resolve().parents[1] / "src" / "soswap", src / "soswap")
    state = top / "state"
    (state / "tx").mkdir(parents=True)
    for p in [top, *src.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o005)
    state.chmod(0o700)
    for command in ("history", "recover"):
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", system_python, "-m",
                            "soswap", command, "--state-dir", str(state)],
                           env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Permission denied" in r.stderr and len(r.stderr.splitlines()) == 1, r


def test_install_refuses_a_source_longer_than_its_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """/proc/cpuinfo says 0 bytes: copying its size would install an empty file. Refused, nothing created."""
    dest = tmp_path / "cpuinfo"
    r = soswap("install", "--no-check", "--no-report", "/proc/cpuinfo", str(dest))
    assert r.returncode == 2 and not dest.exists(), r.stderr
    assert r.stderr == ("soswap: error: /proc/cpuinfo: a proc pseudo-file, whose size (0 bytes) says nothing of its "
                        "content; copy it to a regular file first; nothing was replaced\n")
    assert not list(tmp_path.iterdir())  # no temporary file left either


def test_too_few_descriptors_is_one_error_and_a_low_soft_limit_is_raised(tmp_path) -> None:
    import os
    import resource

    env = dict(os.environ, SOSWAP_STATE_DIR=str(tmp_path / "state"), SOSWAP_CACHE_DIR=str(tmp_path / "cache"))
    code = "import resource, sys\nfrom soswap.console import main\nsys.exit(main())\n"
    probe = ("import resource, sys\nfrom soswap import cli\ncli._ensure_descriptors()\n"
             "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")

    def run(soft: int, hard: int, *args: str, script: str = code) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                              timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))

    r = run(40, 40, "tree", "/bin/sh")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("soswap: error: too few file descriptors: 'ulimit -n' is 40 (hard limit 40); soswap needs at "
                        "least 64\n")
    assert run(40, 4096, "tree", "/bin/sh").returncode == 0
    assert run(40, 4096, script=probe).stdout == "1024\n"
    assert run(40, 200, script=probe).stdout == "200\n"
    # descriptors the caller hands over count: 45 of 64 open leave too few
    held = ("import os, resource, sys\nfds = [os.open(os.devnull, os.O_RDONLY) for _ in range(45)]\n"
            "for fd in fds:\n    os.set_inheritable(fd, True)\n"
            "os.execv(sys.executable, [sys.executable, '-c', 'import sys; from soswap.console import main; "
            "sys.exit(main())', 'tree', '/bin/sh'])\n")
    r = run(80, 80, script=held)
    assert r.returncode == 2, r.stderr
    assert "and 45 descriptors are open already; soswap needs at least 64 more" in r.stderr
    assert run(64, 4096, script=held).returncode == 0
    # a package manager's hook is never failed for it: it meets the limit inside, as its check's error
    r = subprocess.run([sys.executable, "-c", code, "hook", "dpkg-status", "--state-dir", str(tmp_path / "state")],
                       env=env, input="status installed libfoo:amd64 1.0\n", capture_output=True, text=True,
                       timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)))
    assert (r.returncode, r.stderr) == (0, "")


@pytest.mark.parametrize("command, option", [("tree", "--cache-dir"), ("check", "--cache-dir"),
                                             ("rdeps", "--cache-dir"), ("install", "--cache-dir"),
                                             ("install", "--state-dir"), ("history", "--state-dir"),
                                             ("recover", "--state-dir"), ("rollback", "--state-dir")])
def test_an_empty_directory_name_is_a_usage_error(command: str, option: str) -> None:
    # an unset shell variable ("--cache-dir $DIR") fell back to the default directory unseen
    r = soswap(command, option, "", "/bin/sh")
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == (f"soswap {command}: error: argument {option}: "
                                                               "empty directory name")


def test_nagios_interrupted_while_loading_is_unknown_and_a_late_interrupt_keeps_the_result(tmp_path) -> None:
    import os

    env = dict(os.environ, SOSWAP_STATE_DIR=str(tmp_path / "state"), SOSWAP_CACHE_DIR=str(tmp_path / "cache"))
    # a Ctrl-C (or a monitoring agent's SIGTERM) while soswap.cli is imported: UNKNOWN, not 130
    loading = ("import builtins, sys\nreal = builtins.__import__\n"
               "def imp(name, *a, **k):\n"
               "    if name == 'soswap' and a and a[2] and 'cli' in a[2]:\n"
               "        raise KeyboardInterrupt\n"
               "    return real(name, *a, **k)\n"
               "builtins.__import__ = imp\n"
               "from soswap.console import main\nsys.argv = ['soswap', 'stale', '--nagios']\nsys.exit(main())\n")
    r = subprocess.run([sys.executable, "-c", loading], env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (3, "STALE UNKNOWN - interrupted\n", "")
    # a Ctrl-C after the result was printed: the printed status stays (it was killed by SIGINT at exit)
    for sig in ("SIGINT", "SIGTERM", "SIGHUP"):  # a monitoring agent's timeout sends SIGTERM
        late = ("import os, signal, sys\nfrom soswap.console import main\nsys.argv = ['soswap', 'stale', '--nagios']\n"
                f"status = main()\nos.kill(os.getpid(), signal.{sig})\nsys.exit(status)\n")
        r = subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True, timeout=120)
        printed = r.stdout.split(" ", 2)[1]
        assert r.returncode == {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[printed], (sig, r.returncode,
                                                                                               r.stdout)
        # one report (its long text lists the stale processes this machine happens to have, if any)
        assert "Traceback" not in r.stderr and r.stdout.startswith("STALE ") and "\nSTALE " not in r.stdout


@pytest.mark.parametrize("content", [b"", b"\x7fELF\x02\x01\x01" + bytes(200), b"model: x\nsome text\n"])
def test_tree_refuses_a_cpuinfo_that_says_nothing_of_a_cpu(tmp_path: Path, content: bytes) -> None:
    """An empty file, an ELF file or other text given as --cpuinfo described a CPU without any feature: the tree
    then predicted "CPU ISA level is lower than required" for libc. A usage error now, status 2."""
    junk = tmp_path / "cpuinfo"
    junk.write_bytes(content)
    r = soswap("tree", "--no-cache", "--cpuinfo", str(junk), "/bin/true")
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr == f"soswap: error: --cpuinfo {junk}: neither a /proc/cpuinfo nor what LD_SHOW_AUXV=1 prints\n"
    good = tmp_path / "good"
    good.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # another machine's text is still taken
    assert soswap("tree", "--no-cache", "--cpuinfo", str(good), "/bin/true").returncode in (0, 1)


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_stale_and_check_refuse_a_bad_pid_alike(value: str) -> None:
    """``stale --pid 0`` said "no process with PID 0" and ``--pid abc`` argparse's "invalid int value"; ``check``
    said "not a process ID": one usage error for both now."""
    for command in ("stale", "check"):
        r = soswap(command, f"--pid={value}")
        assert r.returncode == 2 and f"argument --pid: not a process ID: {value!r}" in r.stderr, (command, r)


def test_history_count_and_elf_empty_name_are_said_like_the_other_commands(tmp_path: Path) -> None:
    """``history -n -1`` was a ``soswap: error:`` line where other bad option values are argparse's usage error;
    ``elf ""`` said ": No such file or directory" where tree says "empty file name"."""
    r = soswap("history", "-n", "-1", "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 2 and "argument -n/--last: not a count: '-1' (0 or more)" in r.stderr, r
    r = soswap("elf", "", "/bin/true")
    assert r.returncode == 2 and r.stderr == "soswap: error: empty file name\n" and "ELF64" in r.stdout, r


def test_stale_pid_of_a_thread_checks_its_process_once() -> None:
    """``stale --pid PID TID`` reported the thread as a process of its own (same exe, same start time: two
    entries for one process, and a ``--batch`` line for the thread)."""
    import json
    import os
    import threading

    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    try:
        tid = thread.native_id
        r = soswap("stale", "--json", "--pid", str(os.getpid()), str(tid))
    finally:
        done.set()
        thread.join()
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"soswap: note: {tid} is a thread of process {os.getpid()}, which is checked\n"
    assert json.loads(r.stdout)["scanned"] == 1
