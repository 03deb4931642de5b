"""The exception hierarchy of soswap, and the exit codes the CLI maps them to.

Every failure a user can cause (a malformed file, a vanished process, a refused replacement, a bad argument)
raises a subclass of :class:`SoswapError`. The CLI prints ``soswap: error: <message>`` on one line and exits
with the exception's ``exit_code``. No other exception type is meant to escape the library on bad input.
"""

from __future__ import annotations

import errno
from typing import Optional

#: Exit status: success, nothing to report.
EXIT_OK = 0
#: Exit status: the command worked and found something that needs action (stale processes, an incompatible
#: library, a refused replacement, a predicted load failure).
EXIT_FOUND = 1
#: Exit status: the command could not do its job (bad input, unreadable file, I/O error, bad usage).
EXIT_ERROR = 2


class SoswapError(Exception):
    """Base class of every error soswap raises on purpose."""

    exit_code = EXIT_ERROR


def error_line(message: str) -> str:
    """``soswap: error: MESSAGE`` on one line (see :func:`message_line`), with its newline."""
    return f"soswap: error: {message_line(message)}\n"


def message_line(message: str) -> str:
    """``message`` as one line for a terminal: a newline in a file name, or a message of several lines, is
    joined with spaces; another control character is escaped (:func:`escape_controls`)."""
    return escape_controls(" ".join(message.splitlines()))


def escape_controls(text: str) -> str:
    """``text`` with its C0 and C1 control characters escaped (``\\n``, ``\\t``, ``\\xNN``): an escape sequence in a
    name taken from a file or from a tool's output never reaches the terminal (U+009B is a CSI to some
    terminals). Undecodable bytes (surrogates) are left to the stream's error handler."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0:
            out.append({"\n": "\\n", "\t": "\\t"}.get(ch, f"\\x{code:02x}"))
        else:
            out.append(ch)
    return "".join(out)


class ResourceError(SoswapError):
    """The system refused soswap a resource it needs to read a file (descriptors: ``ulimit -n``; kernel
    memory). Never reported as something about the file: an answer computed without it would be wrong."""


#: errno values of :class:`ResourceError`
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def raise_if_exhausted(exc: OSError, path: str) -> None:
    """Raise :class:`ResourceError` when ``exc`` (opening or reading ``path``) is a resource failure."""
    if exc.errno in RESOURCE_ERRNOS:
        hint = " (raise 'ulimit -n')" if exc.errno == errno.EMFILE else ""
        raise ResourceError(f"{path}: {exc.strerror or exc}{hint}") from None


class UsageError(SoswapError):
    """A bad command-line argument or API argument."""


class ElfError(SoswapError):
    """A file is not a readable ELF file, or is malformed.

    ``path`` names the file, ``problem`` says what is wrong, ``offset`` (when known) where in the file.
    """

    def __init__(self, path: str, problem: str, offset: Optional[int] = None) -> None:
        self.path = path
        self.problem = problem
        self.offset = offset
        where = f" (at file offset {offset:#x})" if offset is not None else ""
        super().__init__(f"{path}: {problem}{where}")


class CacheError(SoswapError):
    """A malformed ``ld.so.cache`` or loader configuration file."""


class ProcessGone(SoswapError):
    """A process vanished (or its PID was reused) while it was being read."""

    def __init__(self, pid: int, detail: str = "") -> None:
        self.pid = pid
        super().__init__(f"process {pid} is gone" + (f": {detail}" if detail else ""))


class AccessDenied(SoswapError):
    """The kernel refused access to a process's /proc entries."""

    def __init__(self, pid: int, what: str) -> None:
        self.pid = pid
        self.what = what
        super().__init__(f"access to /proc/{pid}/{what} denied")


class ReplaceError(SoswapError):
    """A replacement could not be carried out; the destination is left as it was (or journaled)."""


class StateError(SoswapError):
    """The transaction journal or state directory is unusable."""


class Refused(SoswapError):
    """soswap refused an action because it would break something (exit status 1, nothing changed)."""

    exit_code = EXIT_FOUND
