"""Files that an interrupted run leaves valid: atomic replacement, and append-only tidy tables (JSON lines
or CSV) read back with their numbers. No torch here: a study can be read on any machine."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    return list(iter_rows(path))


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """A metrics table's rows one at a time (a large run's ``server.jsonl`` holds gigabytes)."""
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                yield {k: _number(v) for k, v in row.items()}
        return
    with path.open() as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def keep_rows(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite a metrics table atomically with only the rows ``keep`` accepts, one row at a time and each
    kept row exactly as it was written; how many were kept."""
    kept = 0

    def write(tmp: Path) -> None:
        nonlocal kept
        if path.suffix == ".csv":
            with path.open(newline="") as source, tmp.open("w", newline="") as out:
                reader, writer = csv.reader(source), csv.writer(out)
                header = next(reader)
                writer.writerow(header)
                for fields in reader:
                    if keep({k: _number(v) for k, v in zip(header, fields)}):
                        writer.writerow(fields)
                        kept += 1
            return
        with path.open() as source, tmp.open("w") as out:
            for line in source:
                if line.strip() and keep(json.loads(line)):
                    out.write(line if line.endswith("\n") else line + "\n")
                    kept += 1

    atomic_write(path, write)
    return kept


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
