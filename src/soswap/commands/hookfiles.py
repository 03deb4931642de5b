"""The apt and dpkg configuration files of ``soswap hook`` (contrib/apt/99soswap, contrib/dpkg/soswap are
:func:`hook_files` with soswap looked up in PATH), and ``soswap hook setup``/``remove``, which write them into
/etc with soswap's own absolute command: dpkg runs its status-logger with PATH=/usr/sbin:/usr/bin:/sbin:/bin,
where a soswap in a virtualenv or /usr/local is not found."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from soswap.errors import SoswapError, UsageError
from soswap.textfile import write_atomic

APT_CONF = "etc/apt/apt.conf.d/99soswap"
DPKG_CFG = "etc/dpkg/dpkg.cfg.d/soswap"
#: every file soswap writes starts with this (and setup/remove touch no other)
_MARKERS = ("// soswap's apt hooks", "# soswap: note whether dpkg")
_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # what dpkg sets for its status-logger
#: The pre-install command's first word: apt looks its protocol version up as
#: DPkg::Tools::Options::<first word>::Version (pkgDPkgPM::RunScriptsWithPkgs)
_PREINSTALL = "soswap_preinstall"


def hook_files(command: Optional[Sequence[str]] = None, *, refuse: bool = False,
               restart: bool = False) -> Dict[str, str]:
    """{path under the root: text}. ``command``: soswap's argv prefix (absolute), or None to look ``soswap`` up
    in PATH and /usr/local (the files of contrib/)."""
    if command is None:
        guard = "PATH=$PATH:/usr/local/sbin:/usr/local/bin; if command -v soswap >/dev/null 2>&1; then "
        run = "soswap"
        where = "soswap is looked for in PATH, then in /usr/local."
        dpkg_where = ("dpkg runs it with\n# PATH=/usr/sbin:/usr/bin:/sbin:/bin, hence /usr/local below; write "
                      "soswap's absolute path if it lives\n# elsewhere (a virtualenv), or use 'soswap hook setup'.")
    else:
        for word in command:
            # apt's configuration parser ends a string at any double quote, and shell-quoting a single quote
            # brings one in ('"'"'): neither can reach the shell intact
            if any(c in word for c in "\"'\n"):
                raise UsageError(f"soswap's command cannot hold a quote or a newline: {word!r}")
        run = " ".join(shlex.quote(w) for w in command)
        guard = f"if [ -x {shlex.quote(command[0])} ]; then "
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


def own_command() -> List[str]:
    """How dpkg and apt can run this soswap: the console script that runs now, else this interpreter with
    ``-m soswap``; checked by running it as dpkg would (system PATH, no PYTHONPATH)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "soswap" and os.access(argv0, os.X_OK):
        command = [os.path.abspath(argv0)]
    else:
        command = [sys.executable, "-m", "soswap"]
    try:
        r = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60,
                           env={"PATH": _SYSTEM_PATH, "LC_ALL": "C.UTF-8"}, stdin=subprocess.DEVNULL)
        ok = r.returncode == 0 and r.stdout.startswith("soswap ")
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        raise SoswapError(f"'{' '.join(command)}' does not run as dpkg would run it (system PATH, no "
                          "PYTHONPATH): install soswap (pip install), or give --command")
    return command


def setup(root: str, command: List[str], *, refuse: bool, restart: bool) -> List[str]:
    """Write the hook files under ``root``, each atomically; a file there that soswap did not write is kept
    and reported. The paths written."""
    files = hook_files(command, refuse=refuse, restart=restart)
    for rel in files:
        _check_ours(os.path.join(root, rel))
    written = []
    for rel, text in files.items():
        path = os.path.join(root, rel)
        if not os.path.isdir(os.path.dirname(path)):
            raise SoswapError(f"{os.path.dirname(path)}: no such directory (is apt/dpkg installed here?)")
        try:
            write_atomic(path, text)
        except OSError as exc:
            raise SoswapError(f"{path}: cannot write: {exc.strerror or exc}") from None
        written.append(path)
    return written


def remove(root: str) -> List[str]:
    """Remove the hook files soswap wrote under ``root``; the paths removed."""
    paths = [os.path.join(root, rel) for rel in (APT_CONF, DPKG_CFG)]
    for path in paths:
        _check_ours(path)
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _check_ours(path: str) -> None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SoswapError(f"{path}: {exc.strerror or exc}") from None
    if not first.startswith(_MARKERS):
        raise SoswapError(f"{path}: not written by soswap; left as it is (move it away first)")
