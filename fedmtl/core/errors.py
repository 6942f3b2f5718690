"""Errors raised for bad user input; the CLI turns them into one-line messages."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, located by its dotted key path (``server.aggregator.c``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path or "<root>"
        self.message = message
        super().__init__(f"{self.path}: {message}")


class FieldError(ValueError):
    """A bad value of one field, raised by a config dataclass's checks; the parser reports it at
    ``<the dataclass's path>.<key>`` (a :class:`ValueError` is reported at the dataclass's path)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`FieldError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise FieldError(key, message)


class FederationError(RuntimeError):
    """The federation could not go on (no participants connected, too few valid updates, ...)."""


class WorkerPoolDied(FederationError):
    """Simulation workers died; the run restarts from its last checkpoint (``checkpoint.restarts``)."""
