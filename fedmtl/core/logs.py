"""Quieting a chatty library's logger for one block."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quieted(logger_name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Logger ``logger_name`` drops records below ``level`` inside the block, as it did before after it."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
