"""A table's columns as read from CSV/TSV or Parquet (shared by the table and hub suites): values, missing
cells, categories, and the keys (``data.<...>``) their errors name."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fedmtl.core.errors import ConfigError
from fedmtl.core.typed import join

SECTION = "data"  # every suite is configured under ``data:``; errors name keys below it
MISSING_TEXT = frozenset({"", "na", "n/a", "nan", "null", "none"})
_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_PARQUET = (".parquet", ".pq")
_LISTED_COLUMNS = 12
Standardize = Literal["global", "client", "none"]


def data_key(*parts: str | int) -> str:
    """``data_key("targets", 0, "column")`` -> ``data.targets[0].column``."""
    path = SECTION
    for part in parts:
        path = join(path, part)
    return path


@dataclass(frozen=True)
class TargetColumn:
    """One task: the column holding its targets (also the task's name) and its kind."""

    column: str
    kind: Literal["regression", "classification", "multilabel"]
    # multilabel: the labels of a row in one cell, split at this (``toxic|insult``; a row with no
    # label writes the separator alone, an empty cell is a missing row as for every kind)
    separator: str = "|"


# --- columns ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """``float64`` values (NaN = missing) when every present value is a number, else ``object`` (str or None)."""

    values: np.ndarray

    @property
    def numeric(self) -> bool:
        return self.values.dtype != object

    def missing(self) -> np.ndarray:
        if self.numeric:
            return np.isnan(self.values)
        return np.fromiter((v is None for v in self.values), dtype=bool, count=len(self.values))

    def first_non_number(self) -> tuple[int, str]:
        """(row, value) of the first present value that is not a number (non-numeric columns only)."""
        for row, value in enumerate(self.values):
            if value is not None:
                try:
                    float(value)
                except ValueError:
                    return row, value
        raise AssertionError("column is numeric")


def text_column(cells: Sequence[str]) -> Column:
    stripped = [cell.strip() for cell in cells]
    missing = [cell.lower() in MISSING_TEXT for cell in stripped]
    try:
        return Column(
            np.array([np.nan if gap else float(cell) for cell, gap in zip(stripped, missing)], dtype=np.float64)
        )
    except ValueError:
        return Column(np.array([None if gap else cell for cell, gap in zip(stripped, missing)], dtype=object))


def arrow_column(array: Any) -> Column:
    """A pyarrow (chunked) array as a :class:`Column`: numbers and booleans as float, the rest as text."""
    import pyarrow as pa

    kind = array.type
    if (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    ):
        return Column(np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64))
    return Column(np.array([None if v is None else str(v) for v in array.to_pylist()], dtype=object))


def read_delimited(path: Path, delimiter: str) -> dict[str, Column]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(
            data_key("path"), f"cannot read {path} as {'TSV' if delimiter == chr(9) else 'CSV'}: {err}"
        ) from None
    if not header:
        raise ConfigError(data_key("path"), f"{path} is empty (no header line)")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ConfigError(data_key("path"), f"{path}: column names repeat in the header: {', '.join(repeated)}")
    for line, row in rows:
        if len(row) != len(header):
            raise ConfigError(
                data_key("path"), f"{path}: line {line} has {len(row)} fields, the header has {len(header)}"
            )
    return {name: text_column([row[j] for _, row in rows]) for j, name in enumerate(header)}


def read_parquet(path: Path) -> dict[str, Column]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            data_key("path"), f"{path} is a Parquet file: reading it needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ConfigError(data_key("path"), f"cannot read {path} as Parquet: {err}") from None
    return {name: arrow_column(table.column(name)) for name in table.column_names}


@lru_cache(maxsize=4)
def read_table(path: str, mtime_ns: int, size: int) -> Mapping[str, Column]:
    """The file's columns; cached per process, keyed so that an edited file is read again."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in _PARQUET:
        columns = read_parquet(file)
    elif suffix in _DELIMITERS:
        columns = read_delimited(file, _DELIMITERS[suffix])
    else:
        raise ConfigError(data_key("path"), f"cannot tell the format of {file}: use a .csv, .tsv, .parquet or .pq file")
    if not columns or len(next(iter(columns.values())).values) == 0:
        raise ConfigError(data_key("path"), f"{file} has no data rows")
    return columns


def unknown_column(name: str, where: str, names: Sequence[str]) -> ConfigError:
    shown = ", ".join(names[:_LISTED_COLUMNS]) + (
        f", ... ({len(names)} in all)" if len(names) > _LISTED_COLUMNS else ""
    )
    return ConfigError(where, f"unknown column {name!r}; columns: {shown}")


def column_of(columns: Mapping[str, Column], name: str, where: str) -> Column:
    if name not in columns:
        raise unknown_column(name, where, list(columns))
    return columns[name]


def categories(column: Column) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes ``0..C-1`` (``-1`` where missing) in sorted value order, and the values as text."""
    missing = column.missing()
    codes = np.full(len(column.values), -1, dtype=np.int64)
    if column.numeric:
        distinct = np.unique(column.values[~missing])
        codes[~missing] = np.searchsorted(distinct, column.values[~missing])
        names = tuple(str(int(v)) if float(v).is_integer() else str(float(v)) for v in distinct)
        return codes, names
    names = tuple(sorted({v for v in column.values if v is not None}))
    index = {name: i for i, name in enumerate(names)}
    codes[~missing] = [index[v] for v in column.values[~missing]]
    return codes, names


# --- targets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetValues:
    """One task's targets for every row: ``float64`` (NaN = missing) or class codes (``-1`` = missing)."""

    kind: Literal["regression", "classification", "multilabel"]
    values: np.ndarray  # multilabel: [rows, labels] of 0/1, NaN rows missing
    classes: tuple[str, ...] = ()

    def present(self, rows: np.ndarray) -> np.ndarray:
        picked = self.values[rows]
        if self.kind == "multilabel":
            return ~np.isnan(picked[:, 0])
        return ~np.isnan(picked) if self.kind == "regression" else picked >= 0

    def tensor(self, rows: np.ndarray) -> torch.Tensor:
        if self.kind == "classification":
            return torch.from_numpy(self.values[rows].astype(np.int64))
        return torch.from_numpy(self.values[rows].astype(np.float32))

    @property
    def spec_classes(self) -> int:
        return len(self.classes) if self.kind != "regression" else 1


def label_sets(column: Column, target: TargetColumn, where: str) -> TargetValues:
    """A multilabel column: each present cell split at ``target.separator`` into its labels."""
    missing = column.missing()
    cells = [
        None if m else [p.strip() for p in str(v).split(target.separator) if p.strip()]
        for v, m in zip(column.values, missing)
    ]
    names = tuple(sorted({label for cell in cells if cell is not None for label in cell}))
    if not names:
        raise ConfigError(where, f"column {target.column!r} names no label")
    index = {name: i for i, name in enumerate(names)}
    values = np.zeros((len(cells), len(names)))
    for row, cell in enumerate(cells):
        if cell is None:
            values[row] = np.nan
        else:
            values[row, [index[label] for label in cell]] = 1.0
    return TargetValues("multilabel", values, names)


def encode_target(column: Column, target: TargetColumn, where: str) -> TargetValues:
    missing = column.missing()
    if missing.all():
        raise ConfigError(where, f"column {target.column!r} has no values")
    if target.kind == "regression":
        if not column.numeric:
            row, value = column.first_non_number()
            raise ConfigError(
                where,
                f"column {target.column!r} is not numeric ({value!r} in data row {row + 1}): a regression target needs numbers; for labels use kind: classification",
            )
        if np.isinf(column.values).any():
            raise ConfigError(where, f"column {target.column!r} has infinite values")
        return TargetValues("regression", column.values)
    if target.kind == "multilabel":
        return label_sets(column, target, where)
    codes, names = categories(column)
    if len(names) < 2:
        raise ConfigError(
            where, f"column {target.column!r} has a single class {names[0]!r}; classification needs at least 2"
        )
    return TargetValues("classification", codes, names)
