"""The package-manager files of ``soswap hook``: apt and dpkg (contrib/apt/99soswap, contrib/dpkg/soswap),
pacman (contrib/pacman/soswap.hook) and dnf (contrib/dnf/soswap.py, a dnf plugin, with contrib/dnf/soswap.conf).
The contrib files are :func:`hook_files` with soswap looked up in PATH; ``soswap hook setup``/``remove`` write
them into the system with soswap's own absolute command: dpkg runs its status-logger with
PATH=/usr/sbin:/usr/bin:/sbin:/bin, where a soswap in a virtualenv or /usr/local is not found."""

from __future__ import annotations

import glob
import os
import shlex
import stat
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence

from soswap.errors import SoswapError, UsageError
from soswap.textfile import write_atomic

APT, DNF, PACMAN = "apt", "dnf", "pacman"
MANAGERS = (APT, DNF, PACMAN)
APT_CONF = "etc/apt/apt.conf.d/99soswap"
DPKG_CFG = "etc/dpkg/dpkg.cfg.d/soswap"
PACMAN_HOOK = "etc/pacman.d/hooks/soswap.hook"
DNF_CONF = "etc/dnf/plugins/soswap.conf"
#: the plugin's file name in dnf's plugin directory
DNF_PLUGIN = "soswap.py"
#: dnf's plugin directories under the root: dnf is pure Python, its plugins live in the site-packages of the
#: system interpreter that runs it (Fedora/RHEL; Debian's dist-packages)
_DNF_PLUGIN_DIRS = ("usr/lib/python3*/site-packages/dnf-plugins", "usr/lib/python3/dist-packages/dnf-plugins")
#: every file soswap writes starts with one of these (and setup/remove touch no other)
_MARKERS = ("// soswap's apt hooks", "# soswap: note whether dpkg", "# soswap's pacman hook",
            "# soswap's dnf plugin")
_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # what dpkg sets for its status-logger
#: The pre-install command's first word: apt looks its protocol version up as
#: DPkg::Tools::Options::<first word>::Version (pkgDPkgPM::RunScriptsWithPkgs)
_PREINSTALL = "soswap_preinstall"
#: characters a command word cannot hold: apt's configuration parser ends a string at any double quote, and
#: shell-quoting a single quote brings one in ('"'"'); pacman's hook puts the words in double quotes of a
#: single-quoted ``sh -c`` script
_UNSAFE = "\"'\n$`\\"
#: The contrib files' shell test: soswap in PATH, then in /usr/local (dpkg runs its logger with a system PATH)
_PATH_GUARD = "PATH=$PATH:/usr/local/sbin:/usr/local/bin; if command -v soswap >/dev/null 2>&1; then "
_PATH_WHERE = "soswap is looked for in PATH, then in /usr/local."


def hook_files(command: Optional[Sequence[str]] = None, *, refuse: bool = False, restart: bool = False,
               manager: str = APT, plugin_dirs: Sequence[str] = ("usr/lib/python3/dist-packages/dnf-plugins",)
               ) -> Dict[str, str]:
    """{path under the root: text} of ``manager``'s files. ``command``: soswap's argv prefix (absolute), or
    None to look ``soswap`` up in PATH and /usr/local (the files of contrib/). ``plugin_dirs``: where the dnf
    plugin goes (relative to the root)."""
    if command is not None:
        for word in command:
            if any(c in word for c in _UNSAFE):
                raise UsageError(f"soswap's command cannot hold a quote, a newline, $, ` or \\: {word!r}")
    if manager == PACMAN:
        return {PACMAN_HOOK: _pacman_hook(command, restart)}
    if manager == DNF:
        files = {os.path.join(d, DNF_PLUGIN): DNF_PLUGIN_TEXT for d in plugin_dirs}
        files[DNF_CONF] = _dnf_conf(command, restart)
        return files
    return _apt_files(command, refuse, restart)


def _apt_files(command: Optional[Sequence[str]], refuse: bool, restart: bool) -> Dict[str, str]:
    if command is None:
        guard = _PATH_GUARD
        run = "soswap"
        where = _PATH_WHERE
        dpkg_where = ("dpkg runs it with\n# PATH=/usr/sbin:/usr/bin:/sbin:/bin, hence /usr/local below; write "
                      "soswap's absolute path if it lives\n# elsewhere (a virtualenv), or use 'soswap hook setup'.")
    else:
        run = " ".join(shlex.quote(w) for w in command)
        guard = f"if {_present(command, shlex.quote)}; then "
        where = "Written by 'soswap hook setup' with soswap's absolute command."
        dpkg_where = "Written by\n# 'soswap hook setup' with soswap's absolute command."
    pre = f"{run} hook apt-preinstall --refuse" if refuse else f"{run} hook apt-preinstall || true"
    post = f"{run} hook apt{' --restart' if restart else ''} || true"
    apt = (
        "// soswap's apt hooks (docs/hooks.md). Install as /etc/apt/apt.conf.d/99soswap, together with\n"
        "// contrib/dpkg/soswap as /etc/dpkg/dpkg.cfg.d/soswap (without it, every apt run is checked afterwards).\n"
        f"// {where}\n"
        "//\n"
        "// Before dpkg unpacks anything: check every ELF file the packages replace against what uses it (as\n"
        "// soswap install does) and warn. To stop apt instead, replace \"apt-preinstall || true\" with\n"
        "// \"apt-preinstall --refuse\" (SOSWAP_FORCE=1 then lets one apt run through).\n"
        "// Protocol version 3 (apt names the packages it removes: their programs are not checked); apt reads the\n"
        "// option under the command's first word, the shell function's name.\n"
        f'DPkg::Pre-Install-Pkgs {{ "{_PREINSTALL}() {{ {guard}{pre}; else cat >/dev/null; fi; }}; '
        f'{_PREINSTALL}"; }};\n'
        f'DPkg::Tools::Options::{_PREINSTALL}()::Version "3";\n'
        "// After the dpkg runs: list the services, sessions, containers and processes that still run old code.\n"
        "// \"|| true\": this hook never fails apt. Add --restart after \"hook apt\" to restart the services too.\n"
        f'DPkg::Post-Invoke {{ "{guard}{post}; fi"; }};\n')
    dpkg = (
        "# soswap: note whether dpkg unpacked or removed packages and whether it failed, for the apt hook\n"
        f"# (contrib/apt/99soswap, docs/hooks.md). Install as /etc/dpkg/dpkg.cfg.d/soswap. {dpkg_where}\n"
        "# The status stream is always read to its end (\"cat\" when soswap is missing or fails).\n"
        f"status-logger={guard}{run} hook dpkg-status || cat >/dev/null; else cat >/dev/null; fi\n")
    return {APT_CONF: apt, DPKG_CFG: dpkg}


def _present(command: Sequence[str], quote: Callable[[str], str]) -> str:
    """A shell test that soswap's command is there to run: its file is executable; for ``PYTHON -I -m soswap``,
    that the interpreter still finds the module (a removed soswap must stay quiet)."""
    if len(command) == 1:
        return f"[ -x {quote(command[0])} ]"
    return f"{' '.join(map(quote, command))} --version >/dev/null 2>&1"


def _double_quoted(word: str) -> str:
    return f'"{word}"'


def _pacman_hook(command: Optional[Sequence[str]], restart: bool) -> str:
    option = " --restart" if restart else ""
    if command is None:
        where = _PATH_WHERE
        script = f"{_PATH_GUARD}soswap hook post-transaction{option}; fi"
    else:
        where = "Written by 'soswap hook setup --manager pacman' with soswap's absolute command."
        run = " ".join(map(_double_quoted, command))
        script = f"if {_present(command, _double_quoted)}; then {run} hook post-transaction{option}; fi"
    # alpm splits Exec into words as sh does (quotes kept together) and runs it without a shell
    return (
        "# soswap's pacman hook (docs/hooks.md). Install as /etc/pacman.d/hooks/soswap.hook.\n"
        f"# {where}\n"
        "#\n"
        "# After each transaction: list the services, sessions, containers and processes that still run old code.\n"
        "# It never fails pacman (soswap exits 0 here). Add --restart after \"post-transaction\" to restart the\n"
        "# services too.\n"
        "[Trigger]\n"
        "Operation = Install\n"
        "Operation = Upgrade\n"
        "Operation = Remove\n"
        "Type = Package\n"
        "Target = *\n"
        "\n"
        "[Action]\n"
        "Description = Looking for processes that still run old code (soswap)...\n"
        "When = PostTransaction\n"
        f"Exec = /bin/sh -c '{script}'\n")


def _dnf_conf(command: Optional[Sequence[str]], restart: bool) -> str:
    if command is None:
        where = ("# Install as /etc/dnf/plugins/soswap.conf, with contrib/dnf/soswap.py in dnf's plugin directory\n"
                 "# (/usr/lib/python3.*/site-packages/dnf-plugins/).")
        run = "soswap"
    else:
        where = "# Written by 'soswap hook setup --manager dnf' with soswap's absolute command."
        # libdnf's parser takes the quotes off a value that is wholly quoted: one path is written bare (the
        # plugin takes an existing path whole), several words shell-quoted
        run = command[0] if len(command) == 1 else " ".join(shlex.quote(w) for w in command)
    return (
        "# soswap's dnf plugin: its configuration (docs/hooks.md).\n"
        f"{where}\n"
        "[main]\n"
        "enabled = 1\n"
        "# soswap's command: an absolute path, or a name looked up in PATH, then in /usr/local/sbin and\n"
        "# /usr/local/bin\n"
        f"command = {run}\n"
        "# added after \"soswap hook post-transaction\": --restart restarts the services too\n"
        f"options = {'--restart' if restart else ''}\n".replace(" \n", "\n"))


#: The dnf plugin (dnf 4: RHEL 8 and 9, Fedora up to 40). It runs inside dnf, on the system's Python (3.6 on
#: RHEL 8): nothing of soswap is imported, soswap runs as a command.
DNF_PLUGIN_TEXT = '''\
# soswap's dnf plugin (docs/hooks.md): after each transaction, list the services, sessions, containers and
# processes that still run old code ("soswap hook post-transaction"). It never fails dnf.
# Install in dnf's plugin directory (/usr/lib/python3.*/site-packages/dnf-plugins/soswap.py), with its
# configuration in /etc/dnf/plugins/soswap.conf ("soswap hook setup --manager dnf" writes both).
import os
import shlex
import shutil
import subprocess
import sys

import dnf


class Soswap(dnf.Plugin):
    name = "soswap"

    def __init__(self, base, cli):
        super().__init__(base, cli)
        self.base = base

    def transaction(self):
        """dnf calls this once after a transaction ran."""
        try:
            conf = self.read_config(self.base.conf)
            command = conf.get("main", "command") if conf.has_option("main", "command") else "soswap"
            options = conf.get("main", "options") if conf.has_option("main", "options") else ""
            # one path, whole (it may hold spaces), or shell words
            argv = [command] if os.path.isabs(command) and os.path.isfile(command) else shlex.split(command)
            if not argv:
                return
            if not os.path.isabs(argv[0]):
                path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/local/bin"
                found = shutil.which(argv[0], path=path)
                if found is None:
                    return
                argv[0] = found
            elif not os.access(argv[0], os.X_OK):
                return
            if len(argv) > 1 and subprocess.call([*argv, "--version"], stdin=subprocess.DEVNULL,
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                 timeout=60) != 0:
                return  # PYTHON -I -m soswap with soswap removed: quiet
            sys.stdout.flush()
            subprocess.call([*argv, "hook", "post-transaction", *shlex.split(options)], stdin=subprocess.DEVNULL,
                            timeout=600)
        except Exception as exc:  # a hook never fails the package manager
            sys.stderr.write(f"soswap: dnf plugin: {exc}; skipped\\n")
'''


def contrib_files() -> Dict[str, str]:
    """{path under contrib/: text}: every manager's files with soswap looked up in PATH (scripts/gen-docs
    writes them, a test keeps them in step)."""
    apt = hook_files(None)
    return {"apt/99soswap": apt[APT_CONF], "dpkg/soswap": apt[DPKG_CFG],
            "pacman/soswap.hook": hook_files(None, manager=PACMAN)[PACMAN_HOOK],
            "dnf/soswap.py": DNF_PLUGIN_TEXT, "dnf/soswap.conf": hook_files(None, manager=DNF)[DNF_CONF]}


def dnf_plugin_dirs(root: str) -> List[str]:
    """dnf's plugin directories that exist under ``root``, relative to it."""
    found = []
    for pattern in _DNF_PLUGIN_DIRS:
        for d in sorted(glob.glob(os.path.join(glob.escape(root), pattern))):
            if os.path.isdir(d):
                found.append(os.path.relpath(d, root))
    return found


def own_command() -> List[str]:
    """How the package manager can run this soswap: the console script that runs now, else this interpreter
    with ``-I -m soswap``; checked by running it as dpkg would (system PATH, no PYTHONPATH, from ``/``).

    ``-I``: ``python -m`` puts the working directory first on ``sys.path``, and apt runs its hooks from /tmp or
    wherever root typed ``apt``: a ``soswap.py`` planted there would run as root. Isolated mode leaves the
    working directory, the user's site-packages and every PYTHON* variable out."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "soswap" and os.access(argv0, os.X_OK):
        command = [os.path.abspath(argv0)]
    else:
        command = [sys.executable, "-I", "-m", "soswap"]
    _runs(command)
    return command


def check_command(root: str, command: List[str]) -> None:
    """``--command``: an absolute path to an executable regular file; for this system (root ``/``) it must run
    as the package manager would run it (system PATH, no PYTHONPATH) and say it is soswap. For another root it
    is looked for inside it, then on this system (a tree staged here)."""
    path = command[0]
    places = [path] if root == "/" else [os.path.join(root, path.lstrip("/")), path]
    if not any(os.path.isfile(p) and os.access(p, os.X_OK) for p in places):
        raise UsageError(f"--command {path}: not an executable file" + (f" (nor under {root})" if root != "/" else ""))
    if root == "/":
        _runs(command)


def _runs(command: List[str]) -> None:
    try:
        r = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, cwd="/",
                           env={"PATH": _SYSTEM_PATH, "LC_ALL": "C.UTF-8"}, stdin=subprocess.DEVNULL)
        ok = r.returncode == 0 and r.stdout.startswith("soswap ")
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        raise SoswapError(f"'{' '.join(command)}' does not run as the package manager would run it (system PATH, "
                          "no PYTHONPATH): install soswap (pip install), or give --command")


def setup(root: str, command: List[str], *, refuse: bool, restart: bool, manager: str = APT) -> List[str]:
    """Write ``manager``'s hook files under ``root``, each atomically, all or none: a failure puts back what
    this run wrote. A file there that soswap did not write is kept and reported. The paths written."""
    plugin_dirs: List[str] = []
    if manager == DNF:
        plugin_dirs = dnf_plugin_dirs(root)
        if not plugin_dirs:
            raise SoswapError(f"no dnf plugin directory under {root} ({' or '.join(_DNF_PLUGIN_DIRS)}): is dnf "
                              "installed here?")
        conf_dir = os.path.join(root, os.path.dirname(DNF_CONF))
        if not os.path.isdir(conf_dir):
            raise SoswapError(f"{conf_dir}: no such directory (is dnf installed here?)")
    elif manager == PACMAN:
        hooks = os.path.join(root, os.path.dirname(PACMAN_HOOK))
        if not os.path.exists(os.path.join(root, "etc/pacman.conf")):
            raise SoswapError(f"{os.path.join(root, 'etc/pacman.conf')}: no such file (is pacman installed here?)")
        try:
            os.makedirs(hooks, mode=0o755, exist_ok=True)  # pacman's default HookDir, not made by every install
        except OSError as exc:
            raise SoswapError(f"{hooks}: cannot create: {exc.strerror or exc}") from None
    files = hook_files(command, refuse=refuse, restart=restart, manager=manager, plugin_dirs=plugin_dirs)
    before: Dict[str, Optional[bytes]] = {}
    for rel in files:
        path = os.path.join(root, rel)
        before[path] = _check_ours(path)
        if not os.path.isdir(os.path.dirname(path)):
            raise SoswapError(f"{os.path.dirname(path)}: no such directory (is {manager} installed here?)")
    written: List[str] = []
    for rel, text in files.items():
        path = os.path.join(root, rel)
        try:
            write_atomic(path, text)
        except OSError as exc:
            undone = _undo(written, before)
            raise SoswapError(f"{path}: cannot write: {exc.strerror or exc}; {undone}") from None
        written.append(path)
    return written


def _undo(written: List[str], before: Dict[str, Optional[bytes]]) -> str:
    """Put back what a failed setup wrote; what it says about that."""
    left = []
    for path in written:
        try:
            old = before[path]
            if old is None:
                os.unlink(path)
            else:
                write_atomic(path, old)
        except OSError:
            left.append(path)
    return "nothing changed" if not left else f"could not undo {', '.join(left)}"


def remove(root: str, manager: str = APT) -> List[str]:
    """Remove ``manager``'s hook files that soswap wrote under ``root`` (every one it can, then the first
    problem is raised); the paths removed."""
    if manager == PACMAN:
        rels = [PACMAN_HOOK]
    elif manager == DNF:
        rels = [DNF_CONF, *(os.path.join(d, DNF_PLUGIN) for d in dnf_plugin_dirs(root))]
    else:
        rels = [APT_CONF, DPKG_CFG]
    paths = [os.path.join(root, rel) for rel in rels]
    removed: List[str] = []
    problems: List[str] = []
    present = []
    for path in paths:  # every file of soswap's goes, whatever stands at the other paths
        try:
            if _check_ours(path) is not None:
                present.append(path)
        except SoswapError as exc:
            problems.append(str(exc))
    for path in present:
        try:
            os.unlink(path)
            removed.append(path)
        except OSError as exc:
            problems.append(f"{path}: cannot remove: {exc.strerror or exc}")
            continue
        if path.endswith("/" + DNF_PLUGIN):  # and what dnf's Python compiled of it
            stem = os.path.splitext(DNF_PLUGIN)[0]
            for cached in glob.glob(os.path.join(glob.escape(os.path.dirname(path)), "__pycache__",
                                                 f"{stem}.cpython-*.pyc")):
                try:
                    os.unlink(cached)
                except OSError:
                    pass
    if problems:
        raise PartlyRemoved(removed, "; ".join(problems))
    return removed


class PartlyRemoved(SoswapError):
    """``remove`` removed some files (``removed``) and could not remove others (the message)."""

    def __init__(self, removed: List[str], message: str) -> None:
        super().__init__(message)
        self.removed = removed


def _check_ours(path: str) -> Optional[bytes]:
    """The contents of the file soswap wrote at ``path``, None when there is none; raises for anything else (a
    file soswap did not write, a symbolic link, a directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SoswapError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise SoswapError(f"{path}: {what}, not written by soswap; left as it is (move it away first)")
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise SoswapError(f"{path}: {exc.strerror or exc}") from None
    if not data.decode("utf-8", "replace").startswith(_MARKERS):
        raise SoswapError(f"{path}: not written by soswap; left as it is (move it away first)")
    return data
