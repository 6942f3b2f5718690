"""Files that an interrupted run leaves valid: atomic replacement, and append-only tidy tables (JSON lines
or CSV) read back with their numbers. No torch here: a study can be read on any machine."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a sibling temporary file, then rename it over ``path``: readers (and a resumed run
    after a crash) see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    write(tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


class RowWriter:
    """Append-only tidy table in JSONL or CSV (fixed columns, header written once)."""

    def __init__(self, path: Path, columns: Sequence[str], csv_format: bool | None = None) -> None:
        """``csv_format``: default from the suffix (``.csv``)."""
        self.path = path
        self.columns = tuple(columns)
        self.csv = path.suffix == ".csv" if csv_format is None else csv_format
        if self.csv and not path.exists():
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)
        elif self.csv and path.stat().st_size:  # appending (a resumed run): keep the header the file has
            with path.open(newline="") as handle:
                self.columns = tuple(next(csv.reader(handle), self.columns))

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with self.path.open("a", newline="") as handle:
            if self.csv:
                writer = csv.writer(handle)
                for row in rows:
                    writer.writerow(["" if row.get(c) is None else row.get(c) for c in self.columns])
            else:
                for row in rows:
                    handle.write(json.dumps({c: row.get(c) for c in self.columns}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace a metrics table atomically with ``rows`` (same format as :class:`RowWriter`)."""
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            columns = next(csv.reader(handle))
        atomic_write(path, lambda tmp: RowWriter(tmp, columns, csv_format=True).write(rows))
        return
    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows)))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Read a metrics table back (CSV values converted to numbers where possible)."""
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
