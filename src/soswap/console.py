"""The ``soswap`` command's entry point (``python -m soswap`` too): a module that imports nothing, so that a
Ctrl-C while the command loads is exit status 130 without a traceback, as it is once the command runs."""

from __future__ import annotations


def main() -> int:
    """:func:`soswap.cli.main`, imported here."""
    try:
        from soswap import cli

        status = cli.main(finish_quietly=True)
    except KeyboardInterrupt:  # cli.main turns it into 130 once the command runs; this covers loading
        return 130
    # The command is over (its status says an interrupt it met), and a Ctrl-C since was only remembered. One
    # now, while the interpreter exits, ends the process as a Ctrl-C does, instead of a KeyboardInterrupt
    # "ignored" with a traceback in its shutdown.
    import signal

    if signal.getsignal(signal.SIGINT) is cli._remember_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return status
