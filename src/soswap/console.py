"""The ``soswap`` command's entry point (``python -m soswap`` too): a module that imports nothing, so that a
Ctrl-C while the command loads is exit status 130 without a traceback, as it is once the command runs (for
``stale --nagios``: UNKNOWN, exit 3, as the monitoring-plugins rules want)."""

from __future__ import annotations

import sys


def main() -> int:
    """:func:`soswap.cli.main`, imported here."""
    nagios = _nagios(sys.argv[1:])
    if nagios:  # a monitoring agent's timeout (SIGTERM) while soswap loads is UNKNOWN too
        import signal

        def interrupted(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupted)
    try:
        from soswap import cli

        # after the command, a Ctrl-C (or SIGTERM, SIGHUP) is only remembered (cli.main's finish_quietly), then
        # blocked: the process exits with the command's status, with nothing raised in destructors, and no death
        # by the signal once the interpreter's shutdown has put the default handler back
        status = cli.main(finish_quietly=True)
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        return status
    except KeyboardInterrupt:  # cli.main turns it into 130 (or UNKNOWN) once the command runs; this covers loading
        if not nagios:
            return 130
        try:
            sys.stdout.write("STALE UNKNOWN - interrupted\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        return 3


def _nagios(args: list) -> bool:
    """``stale --nagios`` (or an unambiguous prefix of the option), as :func:`soswap.cli.main` recognises it."""
    options = args[:args.index("--")] if "--" in args else args
    command = next((a for a in options if not a.startswith("-")), None)
    return command == "stale" and any(len(o) >= 4 and "--nagios".startswith(o.split("=", 1)[0]) for o in options)
