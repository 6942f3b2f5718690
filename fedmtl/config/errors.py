"""Errors raised for bad user input; the CLI turns them into one-line messages."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, located by its dotted key path (``server.aggregator.c``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path or "<root>"
        self.message = message
        super().__init__(f"{self.path}: {message}")
