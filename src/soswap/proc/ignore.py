"""The ignore list: mappings that are deleted or temporary *by design* and never mean "old code".

Each rule has a name (used in docs and to disable it), a bytes regular expression matched with ``re.search``
against the mapped path (unescaped, without " (deleted)"), and a reason. The defaults are documented in
docs/stale.md; users add patterns with ``--ignore REGEX`` or an ignore file and drop the defaults with
``--no-default-ignores`` (or a ``no-defaults`` line in the file).

Deliberately absent: a blanket ``/tmp/`` or ``/home/`` rule (needrestart, checkrestart). Real programs do run
libraries from those places; only the known temporary-file *names* below are ignored there.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, List, Optional, Pattern, Sequence, Tuple

from soswap.errors import UsageError
from soswap.tuples import NamedTuple

#: The administrator's ignore file, read by ``soswap stale`` and the apt hook when it exists.
DEFAULT_IGNORE_FILE = "/etc/soswap/stale-ignore"


class IgnoreRule(NamedTuple):
    name: str
    regex: bytes  #: the bytes regular expression, searched in the path
    reason: str
    #: Literal byte strings of which the path must contain one for ``regex`` to match (empty: no prefilter).
    #: The default rules carry them, so that a scan compiles none of their expressions unless a path could match.
    needles: Tuple[bytes, ...] = ()

    @property
    def pattern(self) -> Pattern[bytes]:
        return re.compile(self.regex)  # re's own cache keeps the compiled expression

    def search(self, path: bytes) -> bool:
        if self.needles and not any(n in path for n in self.needles):
            return False
        return re.search(self.regex, path) is not None


def _rule(name: str, regex: bytes, reason: str, *needles: bytes) -> IgnoreRule:
    return IgnoreRule(name, regex, reason, needles)


#: The default rules, in the order they are tried.
DEFAULT_RULES: Tuple[IgnoreRule, ...] = (
    _rule("memfd", rb"^/memfd:", "memfd_create() object (JIT code, runc/lxc-attach exe, NVIDIA, Qt)", b"/memfd:"),
    _rule("sysv-shm", rb"^/SYSV[0-9a-fA-F]{8}$", "System V shared memory segment (shmat)", b"/SYSV"),
    _rule("dev", rb"^/dev/", "device or MAP_SHARED|MAP_ANONYMOUS (/dev/zero) mapping, POSIX shm (/dev/shm)",
          b"/dev/"),
    _rule("aio", rb"^/\[aio\]$", "io_setup() ring", b"/[aio]"),
    _rule("drm", rb"^/(drm mm object|i915|kgsl)", "GPU buffer object", b"drm mm object", b"i915", b"kgsl"),
    _rule("kde-inode", rb"^/#[0-9]+$", "KDE/KIO anonymous shared memory", b"/#"),
    _rule("libffi", rb"/ffi[A-Za-z0-9]{6}$", "libffi closure trampoline temp file", b"/ffi"),
    _rule("jna", rb"(/jna[0-9-]+\.tmp$|/\.cache/JNA/)", "JNA native stub unpacked to a temp file", b"/jna",
          b"/.cache/JNA/"),
    _rule("orcexec", rb"/orcexec\.[A-Za-z0-9]+$", "GStreamer ORC JIT temp file", b"/orcexec."),
    _rule("java-tmp", rb"/(hsperfdata_[^/]+/[0-9]+|\.java_pid[0-9]+)$", "JVM perf-data / attach file",
          b"/hsperfdata_", b"/.java_pid"),
)


class IgnoreList:
    """An ordered set of ignore rules; ``match(path)`` returns the first rule that matches, else None."""

    def __init__(self, rules: Iterable[IgnoreRule] = DEFAULT_RULES) -> None:
        self.rules: Tuple[IgnoreRule, ...] = tuple(rules)

    def match(self, path: bytes) -> Optional[IgnoreRule]:
        for rule in self.rules:
            if rule.search(path):
                return rule
        return None

    @classmethod
    def build(
        cls,
        *,
        defaults: bool = True,
        extra: Sequence[str] = (),
        files: Sequence[str] = (),
    ) -> IgnoreList:
        """Defaults (unless ``defaults`` is False) plus ``extra`` regexes plus the patterns of ``files``."""
        rules: List[IgnoreRule] = []
        use_defaults = defaults
        for path in files:
            file_rules, file_defaults = load_ignore_file(path)
            rules.extend(file_rules)
            use_defaults = use_defaults and file_defaults
        for i, text in enumerate(extra):
            rules.append(_compile_user(text, f"--ignore #{i + 1}"))
        if use_defaults:
            rules = list(DEFAULT_RULES) + rules
        return cls(rules)


def _compile_user(text: str, where: str) -> IgnoreRule:
    regex = os.fsencode(text)
    try:
        re.compile(regex)
    except re.error as exc:
        raise UsageError(f"{where}: bad regular expression {text!r}: {exc}") from None
    return IgnoreRule(f"user:{text}", regex, f"user pattern ({where})")


def load_ignore_file(path: str) -> Tuple[List[IgnoreRule], bool]:
    """Read an ignore file: one regex per line, ``#`` comments, and ``no-defaults`` to drop the defaults.

    Returns (rules, whether the defaults stay on)."""
    from soswap.textfile import read_regular

    try:  # never blocking: a FIFO would wait for a writer forever; a directory is no file either
        data = read_regular(path, 1 << 20)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ignore file: {exc.strerror or exc}") from None
    rules = []
    keep_defaults = True
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if line == b"no-defaults":
            keep_defaults = False
            continue
        rules.append(_compile_user(os.fsdecode(line), f"{path}:{lineno}"))
    return rules, keep_defaults


DEFAULT_IGNORE = IgnoreList()
