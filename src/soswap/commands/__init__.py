"""Subcommands of the soswap CLI, one module each."""
