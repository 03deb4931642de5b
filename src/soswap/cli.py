"""The ``soswap`` command line: argument parsing and dispatch, nothing else.

Each subcommand lives in its own module under :mod:`soswap.commands`, which exposes ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Errors raised as :class:`soswap.errors.SoswapError` become one
line on stderr and the error's exit code.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import io
import os
import sys
from types import ModuleType
from typing import IO, Any, NoReturn, Optional, Sequence

from soswap import __version__
from soswap.errors import EXIT_ERROR, SoswapError, error_line

# Order of appearance in ``soswap --help``.
COMMAND_MODULES = (
    "tree",
    "check",
    "diff",
    "install",
    "recover",
    "rollback",
    "history",
    "stale",
    "users",
    "rdeps",
    "elf",
    "hook",
    "demo",
)

_PROG = "soswap"


def _terminal_width() -> int:
    """$COLUMNS, else the terminal's width, else 80 (argparse would import shutil, and bz2 and lzma with it,
    on every start just to learn this)."""
    try:
        return max(int(os.environ["COLUMNS"]), 20)
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


class _Parser(argparse.ArgumentParser):
    """argparse with soswap's one-line error format and exit status 2."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=_terminal_width() - 2)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")

    def _print_message(self, message: str, file: Optional[IO[str]] = None) -> None:
        # argparse drops a failed write; --help or --version into a full device is an error here
        if message:
            out = file or sys.stderr
            out.write(message)
            if out is sys.stdout:
                out.flush()


def _command_module(name: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(f"soswap.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"soswap.commands.{name}":
            raise
        return None


def _selected_command(argv: Sequence[str]) -> Optional[str]:
    """The subcommand named on the command line, if any (the first word that is not an option)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMAND_MODULES else None
    return None


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser. With ``command``, only that subcommand's module is imported (start-up time
    matters for a tool run from hooks and monitoring; ``""``: none is); without, every subcommand is
    (``soswap --help``)."""
    parser = _Parser(
        prog=_PROG,
        description="Replace shared libraries and executables under running programs, safely.",
        epilog="Exit status: 0 ok, 1 something found or refused, 2 error. See docs/exit-codes.md.",
    )
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        if command is not None and name != command:
            if not command:
                sub.add_parser(name)  # a placeholder, for the list of commands in a usage error
            continue  # another command was named: this one is never parsed
        module = _command_module(name)
        if module is None:
            continue
        cmd = sub.add_parser(
            module.NAME,  # type: ignore[attr-defined]
            help=module.HELP,  # type: ignore[attr-defined]
            description=getattr(module, "DESCRIPTION", module.HELP),  # type: ignore[attr-defined]
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)  # type: ignore[attr-defined]
        cmd.set_defaults(_run=module.run, _parser=cmd)  # type: ignore[attr-defined]
    return parser


def main(argv: Optional[Sequence[str]] = None, *, finish_quietly: bool = False) -> int:
    """Entry point of the ``soswap`` console script; returns the exit status. ``finish_quietly`` (the console
    script): a Ctrl-C after the command ended is only remembered (:data:`_INTERRUPTED`), not raised in the
    destructors that run as the command's objects go."""
    _standard_streams()
    stdout = sys.stdout
    sys.stdout = _NamedStream(stdout, _STDOUT)  # type: ignore[assignment]
    try:
        return _main(argv, finish_quietly)
    finally:
        if sys.stdout.__class__ is _NamedStream:
            sys.stdout = stdout


_STDOUT = "standard output"


class _NamedStream:
    """A standard stream whose write errors name it: an OSError of ``write`` or ``flush`` names no file, and
    "No space left on device" alone does not say that it was standard output (``>/dev/full``)."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self._stream = stream
        self._name = name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise self._named(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._named(exc) from None

    def _named(self, exc: OSError) -> OSError:
        if exc.filename is None:
            exc.filename = self._name
        return exc

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def _main(argv: Optional[Sequence[str]], finish_quietly: bool) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _selected_command(args_list)
    if command is None and not {"-h", "--help"} & set(args_list):
        command = ""  # --version or a usage error: no subcommand's arguments are needed
    options = args_list[:args_list.index("--")] if "--" in args_list else args_list
    # argparse also takes a unique prefix ("--nag"); "--n" alone is ambiguous with --no-kernel
    nagios = command == "stale" and any(len(o) >= 4 and "--nagios".startswith(o.split("=", 1)[0]) for o in options)
    # a package manager's hook never fails it, bad arguments included (a hand-edited hook line)
    hook_event = next((o for o in options if o in _HOOK_EVENTS), None) if command == "hook" else None
    parser = build_parser(command)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said) if hook_event else contextlib.nullcontext():
            args, extra = parser.parse_known_args(args_list)
            if extra:  # said by the subcommand's parser, with its own usage line, not the top level's
                getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:
        if nagios and exc.code == EXIT_ERROR:
            return _nagios_unknown("bad arguments (see the line above)")
        if hook_event and exc.code == EXIT_ERROR:
            # enforcing (apt-preinstall --refuse): a check that cannot run stops apt, as a soswap that cannot
            # start does
            # (argparse takes a unique prefix, and --refuse=VALUE is refused as it is: both enforce as --refuse)
            enforcing = hook_event == "apt-preinstall" and any(
                len(o) >= 5 and "--refuse".startswith(o.split("=", 1)[0]) for o in options)
            return _hook_usage_error(hook_event, said.getvalue(), EXIT_ERROR if enforcing else 0)
        sys.stderr.write(said.getvalue())
        raise
    except OSError as err:  # --help, --version, a usage error: a standard stream failed (a full device, ...)
        if not isinstance(err, BrokenPipeError):
            _error_line(_describe_oserror(err))
        if err.filename == _STDOUT:
            _silence_stdout()
        return _nagios_unknown(_describe_oserror(err)) if nagios else EXIT_ERROR
    if nagios:  # a monitoring check killed at its timeout still says UNKNOWN
        from soswap.commands.install import terminate_as_interrupt

        terminate_as_interrupt()
    previous = _watch_interrupts()
    try:
        _ensure_descriptors(refuse=hook_event is None)  # a hook meets the limit inside, as its check's error
        status = int(args._run(args))
        if _INTERRUPTED:  # a Ctrl-C raised inside a destructor is printed and dropped by Python
            raise KeyboardInterrupt
        return status
    except SoswapError as exc:
        _error_line(str(exc))
        return _nagios_unknown(str(exc)) if nagios else exc.exit_code
    except KeyboardInterrupt:
        return _nagios_unknown("interrupted") if nagios else 130
    except BrokenPipeError:
        # The reader went away (``soswap ... | head``): not an error worth a message.
        _silence_stdout()
        return EXIT_ERROR
    except OSError as exc:
        text = _describe_oserror(exc)
        _error_line(text)
        if exc.filename == _STDOUT:
            _silence_stdout()
        return _nagios_unknown(text) if nagios else EXIT_ERROR
    except MemoryError:
        _error_line("out of memory")
        return _nagios_unknown("out of memory") if nagios else EXIT_ERROR
    except Exception as exc:  # pragma: no cover - a bug, but still never a traceback for the user
        if os.environ.get("SOSWAP_DEBUG"):
            raise
        _error_line(f"internal error: {type(exc).__name__}: {exc} (set SOSWAP_DEBUG=1 for a traceback)")
        return EXIT_ERROR
    finally:
        _stop_watching(previous, finish_quietly)


_INTERRUPTED = False


def _interrupted(signum: int, frame: object) -> None:
    global _INTERRUPTED
    _INTERRUPTED = True
    raise KeyboardInterrupt


def _remember_interrupt(signum: int, frame: object) -> None:
    global _INTERRUPTED
    _INTERRUPTED = True


def _watch_interrupts() -> object:
    """SIGINT raises KeyboardInterrupt as Python's own handler does, and is remembered: Python drops one raised
    in a destructor or a callback ("Exception ignored in ..."), and the command would finish with status 0.
    A SIGINT ignored by whoever started soswap (a script's background job) stays ignored. Returns the handler
    replaced (None: none was)."""
    import signal

    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupted)
            sys.unraisablehook = _unraisable
            return previous
    except ValueError:  # not the main thread (an embedding program)
        pass
    return None


def _unraisable(unraisable: Any) -> None:
    """A KeyboardInterrupt raised in a destructor is remembered (:func:`_interrupted`), not printed."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)


def _stop_watching(previous: object, quietly: bool) -> None:
    import signal

    if quietly:  # SIGTERM/SIGHUP handlers soswap set (stale --nagios, install) would raise after the command too
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                if callable(signal.getsignal(sig)):
                    signal.signal(sig, _remember_interrupt)
            except (ValueError, OSError):
                pass
    if previous is None:
        return
    signal.signal(signal.SIGINT, _remember_interrupt if quietly else previous)  # type: ignore[arg-type]
    if not quietly:
        sys.unraisablehook = sys.__unraisablehook__


#: Descriptors soswap asks for (raising a lower soft ``ulimit -n`` up to the hard limit), and the least it runs
#: with: the ELF cache keeps a quarter of the limit open, directory walks one per level, -j workers pipes.
_WANTED_DESCRIPTORS = 1024
MIN_DESCRIPTORS = 64


def _ensure_descriptors(refuse: bool = True) -> None:
    """Raise the soft RLIMIT_NOFILE towards :data:`_WANTED_DESCRIPTORS`, or (``refuse``) refuse to run below
    :data:`MIN_DESCRIPTORS`: out of descriptors, files would look unreadable and answers would be wrong."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return
    if soft == resource.RLIM_INFINITY:
        return
    from soswap.limits import descriptors_in_use

    extra = max(0, descriptors_in_use(below=soft) - 3)  # open besides the standard streams (a caller's)
    want = max(_WANTED_DESCRIPTORS, extra + MIN_DESCRIPTORS)
    if soft >= want:
        return
    want = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError):
            pass
    if soft - extra < MIN_DESCRIPTORS and refuse:
        held = (f", and {extra} descriptor{' is' if extra == 1 else 's are'} open already") if extra else ""
        raise SoswapError(f"too few file descriptors: 'ulimit -n' is {soft} (hard limit {hard}){held}; soswap "
                          f"needs at least {MIN_DESCRIPTORS}" + (" more" if extra else ""))


#: ``soswap hook`` events run by a package manager (not setup/remove, an admin's commands)
_HOOK_EVENTS = ("dpkg-status", "apt", "apt-preinstall", "post-transaction")


def _hook_usage_error(event: str, said: str, status: int) -> int:
    """Bad arguments of a hook: argparse's error as one line, the input its package manager pipes read to the
    end; ``status``."""
    lines = [line for line in said.splitlines() if line.strip()]
    what = lines[-1].split(": error: ", 1)[-1] if lines else "bad arguments"
    try:  # the format of the hooks' own problems (soswap.commands.hook)
        sys.stderr.write(f"{_PROG} hook {event}: {what}; {'apt stops (--refuse)' if status else 'skipped'}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if event in ("dpkg-status", "apt-preinstall"):
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
    return status


def _standard_streams() -> None:
    """Give a closed standard descriptor /dev/null (dpkg starts its status-logger with standard output closed):
    else the next file opened would take its number, and a child's output would land in it; and
    ``sys.stdout`` would be None."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - lives as long as the process
    for stream in (sys.stdout, sys.stderr):
        # file names that are not UTF-8 are written back as the same bytes (surrogateescape), as ldd does; an
        # encoding without UTF-8 (PYTHONIOENCODING=ascii, a Latin-1 locale) shows what it lacks as escapes
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            utf8 = codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "utf-8"
            try:
                reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")
            except (ValueError, OSError):
                pass


def _silence_stdout() -> None:
    """Standard output failed: nothing more goes there, not even the flush at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _nagios_unknown(message: str) -> int:
    """``stale --nagios`` could not check: the monitoring-plugins rule is UNKNOWN (3) with a status line on
    standard output (an exit status 2 would page someone as CRITICAL)."""
    try:
        sys.stdout.write(f"STALE UNKNOWN - {' '.join(message.splitlines())}\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    return 3


def _describe_oserror(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    name = exc.filename
    if isinstance(name, int):  # an error on an open file descriptor names its number (os.fdopen, os.read)
        return f"file descriptor {name}: {text}"
    if name is not None:
        return f"{os.fsdecode(name)}: {text}"
    return text


def _error_line(message: str) -> None:
    try:
        sys.stderr.write(error_line(message))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
