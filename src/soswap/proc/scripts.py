"""Finding the script an interpreter runs, from its argv alone.

Nothing is executed, imported or opened from the scanned process: the interpreter family is recognised from the
executable's file name, and its command line is parsed with that family's option rules (which options take a
value, which ones mean "no script file": ``-c``, ``-e``, ``-m``). The result is the script path as the
interpreter received it; the caller resolves a relative one against ``/proc/PID/cwd``.

This is the opposite of what needrestart did (run the target's interpreter to print ``sys.path``, honour its
``PYTHONPATH``), which gave five local root exploits (CVE-2022-30688, CVE-2024-48990/48991/48992/11003).
"""

from __future__ import annotations

from typing import FrozenSet, Optional, Sequence

PYTHON = "python"
PERL = "perl"
RUBY = "ruby"
SHELL = "shell"

_SHELLS = frozenset({b"sh", b"bash", b"dash", b"zsh", b"ksh", b"ksh93", b"mksh"})
_VERSION_CHARS = b"0123456789."


def family(exe: bytes) -> Optional[str]:
    """The interpreter family of an executable path (by its basename), or None.

    ``python``/``pypy`` with an optional version and ABI flags (``python3.11``, ``python3.7m``, ``pypy3``),
    ``perl``/``ruby`` with an optional version (``perl5.36.0``, ``ruby3.1``), and the shells by name. Plain byte
    operations rather than regular expressions: this runs for every distinct mapped file of a scan."""
    base = exe.rsplit(b"/", 1)[-1]
    if base.endswith(b" (deleted)"):
        base = base[: -len(b" (deleted)")]
    if base in _SHELLS:
        return SHELL
    stem = base.rstrip(_VERSION_CHARS)
    if stem in (b"perl", b"ruby"):
        return PERL if stem == b"perl" else RUBY
    stem = base.rstrip(b"dmu").rstrip(_VERSION_CHARS)
    if stem in (b"python", b"pypy"):
        return PYTHON
    return None


class _Rules:
    """Option rules of one family: flags taking a value, flags meaning "no script", long options with values."""

    def __init__(self, with_value: str, no_script: str, long_with_value: FrozenSet[bytes],
                 long_no_script: FrozenSet[bytes] = frozenset(), attached_only: str = "") -> None:
        self.with_value = frozenset(with_value.encode())
        self.no_script = frozenset(no_script.encode())
        self.long_with_value = long_with_value
        self.long_no_script = long_no_script
        # Letters whose value, if any, must be attached (perl -0777, -l, -i.bak, -x dir): never take the next arg.
        self.attached_only = frozenset(attached_only.encode())


# python(1): -c cmd / -m mod end option parsing without a script; -W, -X, -Q (2.x) take a value.
_PY = _Rules("WXQ", "cm", frozenset({b"--check-hash-based-pycs"}),
             long_no_script=frozenset({b"--version", b"--help", b"--help-env", b"--help-xoptions", b"--help-all"}))
# perl(1): -e/-E code; -I, -M/-m, -x, -0, -l, -i, -C, -D, -d, -F take attached values; -I and -e also separate.
_PERL = _Rules("I", "eE", frozenset(), attached_only="MmxliC0DdFV")
# ruby(1): -e code; -I dir, -r lib, -C dir, -E enc take a value (attached or separate); -x, -0, -F, -W attached.
_RUBY = _Rules("IrCE", "e", frozenset({b"--encoding", b"--external-encoding", b"--internal-encoding"}),
               attached_only="x0FWTlK")
# sh/bash: -c string and -s (stdin) mean no script file; -o/+o, -O/+O, --rcfile, --init-file take a value.
_SH = _Rules("oO", "cs", frozenset({b"--rcfile", b"--init-file"}))

_RULES = {PYTHON: _PY, PERL: _PERL, RUBY: _RUBY, SHELL: _SH}


def script_argument(fam: str, argv: Sequence[bytes]) -> Optional[bytes]:
    """The script operand of ``argv`` for interpreter family ``fam``; None for ``-c``/``-e``/``-m``, stdin or
    an interactive interpreter."""
    rules = _RULES[fam]
    i = 1
    n = len(argv)
    while i < n:
        arg = argv[i]
        if arg == b"--":
            i += 1
            break
        if arg == b"-":
            return None
        if arg.startswith(b"--"):
            name = arg.split(b"=", 1)[0]
            if name in rules.long_no_script or (fam == SHELL and name == b"--command"):
                return None
            if name in rules.long_with_value and b"=" not in arg:
                i += 1
            i += 1
            continue
        if arg[:1] in (b"-", b"+") and len(arg) > 1:
            if arg[:1] == b"+" and fam != SHELL:
                break
            j = 1
            skip_next = False
            while j < len(arg):
                letter = arg[j]
                if letter in rules.no_script:
                    return None
                if letter in rules.attached_only:
                    break  # the rest of the word is this option's value
                if letter in rules.with_value:
                    if j + 1 == len(arg):
                        skip_next = True
                    break
                j += 1
            i += 2 if skip_next else 1
            continue
        break
    if i < n:
        return argv[i]
    return None
