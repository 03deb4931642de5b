"""soswap: replace shared libraries and executables under running programs, safely."""

__version__ = "0.1.0"


def console() -> int:
    """The ``soswap`` command (``python -m soswap`` too): :func:`soswap.cli.main`, imported here so that a
    Ctrl-C while the command loads is exit status 130 without a traceback, as it is once it runs."""
    try:
        from soswap.cli import main

        return main()
    except KeyboardInterrupt:  # main() turns it into 130 once the command runs; this covers loading
        return 130
