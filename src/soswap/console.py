"""The ``soswap`` command's entry point (``python -m soswap`` too): a module that imports nothing, so that a
Ctrl-C while the command loads is exit status 130 without a traceback, as it is once the command runs."""

from __future__ import annotations


def main() -> int:
    """:func:`soswap.cli.main`, imported here."""
    try:
        from soswap.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:  # cli.main turns it into 130 once the command runs; this covers loading
        return 130
