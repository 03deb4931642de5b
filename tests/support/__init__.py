"""Helpers shared by the test suite: gcc-built fixtures and process handling."""
