"""A user's own table as a task suite: each target column is a task (CSV/TSV, or Parquet with pyarrow).

Rows are samples. ``features`` are numeric columns (default: every column that is not a target,
``client_column`` or ``dirichlet_column``); each entry of ``targets`` names a column and its task
kind. Class labels (numbers or strings) are mapped to ``0..C-1`` in sorted order. A row whose
target is empty (``""``, ``NA``, ``NaN``, ``null``, ``None``; null in Parquet) is dropped for that
task only, so tasks can have different row counts: that is how a table expresses data-poor tasks.

Which client holds a row (shared with the hub suite, see :func:`client_splits`):

* ``client_column`` set: natural partitions. Its distinct values, sorted, are groups
  ``0..K-1``; group ``k`` goes to client ``k mod clients.count``, so ``clients.count`` must be
  ``<= K`` (``== K``: one group per client; fewer clients: several groups per client).
* ``dirichlet_alpha`` set: label skew as in the digits suite (Hsu et al., 2019) over the
  values of ``dirichlet_column`` (default: the first classification target).
* neither: an IID split, rows shuffled by the seed and dealt in equal parts.

Each client's rows are then split into train and eval parts (``eval_fraction``; a row is in the
same part for every task, so no eval row's features are seen in training). ``clients.task_sample_scale``
subsamples a task's training rows; ``clients.samples_per_task`` and ``sample_imbalance`` do not apply.

Standardisation (``standardize``) is fitted on training rows only, never on eval rows:
``global`` uses the union of every client's train part (what one round of secure aggregation of
per-client sums would give a real federation), ``client`` each client's own train part, ``none``
leaves features as they are. Constant features keep a scale of 1.

The file is read once per process (cached by path, modification time and size) when the suite is
built, so a bad path or column is a config error before Flower or Ray start; each client's data
is sliced from it on first use. A relative ``path`` is resolved against the working directory
of the process that builds the config (deployed apps build their own: use absolute paths there).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from fedmtl.core.errors import ConfigError
from fedmtl.core.typed import join
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.suites.digits import dirichlet_partition
from fedmtl.data.task_kinds import TaskSpec

SECTION = "data"  # every suite is configured under ``data:``; errors name keys below it
MISSING_TEXT = frozenset({"", "na", "n/a", "nan", "null", "none"})
_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_PARQUET = (".parquet", ".pq")
_PARTITION_STREAM, _SPLIT_STREAM = 41, 43
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
    kind: Literal["regression", "classification"]


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

    kind: Literal["regression", "classification"]
    values: np.ndarray
    classes: tuple[str, ...] = ()

    def present(self, rows: np.ndarray) -> np.ndarray:
        picked = self.values[rows]
        return ~np.isnan(picked) if self.kind == "regression" else picked >= 0

    def tensor(self, rows: np.ndarray) -> torch.Tensor:
        if self.kind == "regression":
            return torch.from_numpy(self.values[rows].astype(np.float32))
        return torch.from_numpy(self.values[rows].astype(np.int64))

    @property
    def spec_classes(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1


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
    codes, names = categories(column)
    if len(names) < 2:
        raise ConfigError(
            where, f"column {target.column!r} has a single class {names[0]!r}; classification needs at least 2"
        )
    return TargetValues("classification", codes, names)


# --- which client holds which rows (shared with the hub suite) ------------------------------


@dataclass(frozen=True)
class RowLayout:
    """What decides which client holds a row: a natural group per row, or labels to skew a Dirichlet split by."""

    num_rows: int
    groups: np.ndarray | None = None  # group index per row (client_column), 0..num_groups-1
    group_names: tuple[str, ...] = ()
    skew_labels: np.ndarray | None = None  # category per row for the Dirichlet split

    def check_clients(self, count: int) -> str | None:
        if self.groups is not None and len(self.group_names) < count:
            return (f"client_column has {len(self.group_names)} distinct values but clients.count is {count}: "
                    f"natural partitions need clients.count <= {len(self.group_names)}")  # fmt: skip
        return None

    def deal(self, num_clients: int, seed: int, dirichlet_alpha: float | None) -> list[np.ndarray]:
        problem = self.check_clients(num_clients)
        if problem:
            raise ConfigError(data_key("client_column"), problem)
        if self.groups is not None:
            return [np.flatnonzero(self.groups % num_clients == c) for c in range(num_clients)]
        rng = np.random.default_rng([seed, _PARTITION_STREAM])
        if dirichlet_alpha is not None and self.skew_labels is not None:
            return dirichlet_partition(self.skew_labels, num_clients, dirichlet_alpha, rng)
        return np.array_split(rng.permutation(self.num_rows), num_clients)


def client_splits(
    layout: RowLayout, num_clients: int, seed: int, dirichlet_alpha: float | None, eval_fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``(train rows, eval rows)`` of every client; a row is train or eval for all of its tasks."""
    splits = []
    for client, share in enumerate(layout.deal(num_clients, seed, dirichlet_alpha)):
        share = np.random.default_rng([seed, _SPLIT_STREAM, client]).permutation(share)
        n_eval = max(1, round(len(share) * eval_fraction)) if len(share) > 1 else 0
        splits.append((share[n_eval:], share[:n_eval]))
    return tuple(splits)


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / std`` per feature, with the statistics of the rows it was fitted on."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        if len(x) == 0:
            return cls(np.zeros(x.shape[1]), np.ones(x.shape[1]))
        std = x.std(axis=0, dtype=np.float64)
        return cls(x.mean(axis=0, dtype=np.float64), np.where(std > 1e-12, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True)
class RowData:
    """A suite's rows once loaded: targets per task, how rows map to clients, and a feature reader.

    ``features(rows)`` returns float32 ``[len(rows), feature_dim]``; it may decode lazily (images).
    Cached per process, so ``_memo`` holds the seed-dependent splits and global statistics.
    """

    targets: Mapping[str, TargetValues]
    layout: RowLayout
    features: Callable[[np.ndarray], np.ndarray]
    feature_dim: int
    _memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(TaskSpec(name, t.kind, t.spec_classes) for name, t in self.targets.items())

    def splits(
        self, num_clients: int, seed: int, dirichlet_alpha: float | None, eval_fraction: float
    ) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        key = ("splits", num_clients, seed, dirichlet_alpha, eval_fraction)
        if key not in self._memo:
            self._memo[key] = client_splits(self.layout, num_clients, seed, dirichlet_alpha, eval_fraction)
        return self._memo[key]

    def global_standardizer(
        self, num_clients: int, seed: int, dirichlet_alpha: float | None, eval_fraction: float
    ) -> Standardizer:
        key = ("standardizer", num_clients, seed, dirichlet_alpha, eval_fraction)
        if key not in self._memo:
            splits = self.splits(num_clients, seed, dirichlet_alpha, eval_fraction)
            self._memo[key] = Standardizer.fit(self.features(np.sort(np.concatenate([train for train, _ in splits]))))
        return self._memo[key]

    def client_data(
        self, seed: int, plan: ClientPlan, dirichlet_alpha: float | None, eval_fraction: float, standardize: Standardize
    ) -> ClientData:
        train_rows, eval_rows = self.splits(plan.num_clients, seed, dirichlet_alpha, eval_fraction)[plan.client_id]
        x_train, x_eval = self.features(train_rows), self.features(eval_rows)
        if standardize != "none":
            scaler = (
                Standardizer.fit(x_train)
                if standardize == "client"
                else self.global_standardizer(plan.num_clients, seed, dirichlet_alpha, eval_fraction)
            )
            x_train, x_eval = scaler(x_train), scaler(x_eval)
        scales = plan.task_scale or (1.0,) * len(plan.tasks)
        train, evaluation = {}, {}
        for task, scale in zip(plan.tasks, scales):
            target = self.targets[task]
            keep = np.flatnonzero(target.present(train_rows))
            keep = keep[: max(1, round(len(keep) * min(scale, 1.0)))] if len(keep) else keep
            held_out = np.flatnonzero(target.present(eval_rows))
            train[task] = TaskData(torch.from_numpy(x_train[keep]), target.tensor(train_rows[keep]))
            evaluation[task] = TaskData(torch.from_numpy(x_eval[held_out]), target.tensor(eval_rows[held_out]))
        return ClientData(train=train, eval=evaluation)


def check_row_settings(
    targets: Sequence[TargetColumn],
    client_column: str | None,
    dirichlet_alpha: float | None,
    dirichlet_column: str | None,
    eval_fraction: float,
) -> None:
    """Checks on the fields the table and hub suites share (before any data is read)."""
    names = [t.column for t in targets]
    if not names:
        raise ConfigError(data_key("targets"), "must list at least one target column")
    if len(set(names)) != len(names):
        raise ConfigError(data_key("targets"), f"a column is listed twice: {names}")
    if not 0 < eval_fraction < 1:
        raise ConfigError(data_key("eval_fraction"), f"must be in (0, 1), got {eval_fraction}")
    if dirichlet_alpha is not None and dirichlet_alpha <= 0:
        raise ConfigError(data_key("dirichlet_alpha"), f"must be > 0, got {dirichlet_alpha}")
    if client_column is not None and dirichlet_alpha is not None:
        raise ConfigError(
            data_key("dirichlet_alpha"), "client_column already decides which client holds a row; set one of the two"
        )
    if client_column is not None and client_column in names:
        raise ConfigError(data_key("client_column"), f"column {client_column!r} is also a target")
    if dirichlet_column is not None and dirichlet_alpha is None:
        raise ConfigError(data_key("dirichlet_column"), "only applies with dirichlet_alpha")
    if (
        dirichlet_alpha is not None
        and dirichlet_column is None
        and not any(t.kind == "classification" for t in targets)
    ):
        raise ConfigError(
            data_key("dirichlet_column"),
            "the Dirichlet split needs a column to skew by: name one, or add a classification target",
        )


def layout_from(
    columns: Mapping[str, Column], num_rows: int, targets: Sequence[TargetColumn], client_column: str | None,
    dirichlet_alpha: float | None, dirichlet_column: str | None,
) -> RowLayout:  # fmt: skip
    """The rows' layout from the table's columns (``columns`` may hold only the ones named)."""
    if client_column is not None:
        groups, names = categories(column_of(columns, client_column, data_key("client_column")))
        if (groups < 0).any():
            row = int(np.flatnonzero(groups < 0)[0])
            raise ConfigError(
                data_key("client_column"),
                f"column {client_column!r} is empty in data row {row + 1}: every row needs a client",
            )
        return RowLayout(num_rows, groups=groups, group_names=names)
    if dirichlet_alpha is not None:
        skew = dirichlet_column or next(t.column for t in targets if t.kind == "classification")
        labels, _ = categories(column_of(columns, skew, data_key("dirichlet_column")))
        return RowLayout(num_rows, skew_labels=labels)  # a missing value (-1) is a label of its own
    return RowLayout(num_rows)


def numeric_features(
    columns: Mapping[str, Column], names: Sequence[str], explicit: bool, reserved: Mapping[str, str]
) -> np.ndarray:
    """``[N, D]`` float32 from the named columns; each must be numeric and complete."""
    if not names:
        raise ConfigError(data_key("features"), "no feature columns: every column is a target or decides the partition")
    matrix = []
    for i, name in enumerate(names):
        where = data_key("features", i) if explicit else data_key("features")
        column = column_of(columns, name, where)
        if name in reserved:
            raise ConfigError(where, f"column {name!r} is the {reserved[name]}; it cannot also be a feature")
        hint = "" if explicit else " (the default takes every other column: list data.features to leave some out)"
        if not column.numeric:
            row, value = column.first_non_number()
            raise ConfigError(where, f"feature column {name!r} is not numeric ({value!r} in data row {row + 1}){hint}")
        bad = ~np.isfinite(column.values)
        if bad.any():
            raise ConfigError(
                where,
                f"feature column {name!r} has missing or infinite values (first in data row {int(np.flatnonzero(bad)[0]) + 1}); only target columns may have gaps",
            )
        matrix.append(column.values)
    return np.stack(matrix, axis=1).astype(np.float32)


def reserved_columns(
    targets: Sequence[TargetColumn], client_column: str | None, dirichlet_column: str | None
) -> dict[str, str]:
    """Columns with a role other than feature, and the role's name (for messages)."""
    roles = {t.column: f"target of task {t.column!r}" for t in targets}
    if client_column is not None:
        roles[client_column] = "client_column"
    if dirichlet_column is not None:
        roles.setdefault(dirichlet_column, "dirichlet_column")
    return roles


# --- the suite ----------------------------------------------------------------------------------


def file_signature(path: Path, where: str) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError:
        raise ConfigError(where, f"file not found: {path}") from None
    if not path.is_file():
        raise ConfigError(where, f"not a file: {path}")
    return str(path), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=4)
def table_rows(suite: TableSuite, signature: tuple[str, int, int]) -> RowData:
    columns = read_table(*signature)
    num_rows = len(next(iter(columns.values())).values)
    targets = {
        t.column: encode_target(
            column_of(columns, t.column, data_key("targets", i, "column")), t, data_key("targets", i)
        )
        for i, t in enumerate(suite.targets)
    }
    layout = layout_from(
        columns, num_rows, suite.targets, suite.client_column, suite.dirichlet_alpha, suite.dirichlet_column
    )
    reserved = reserved_columns(suite.targets, suite.client_column, suite.dirichlet_column)
    names = suite.features or tuple(name for name in columns if name not in reserved)
    matrix = numeric_features(columns, names, bool(suite.features), reserved)
    return RowData(targets, layout, lambda rows: matrix[rows], matrix.shape[1])


@dataclass(frozen=True)
class TableSuite(TaskSuite):
    name: ClassVar[str] = "table"
    path: str  # .csv / .tsv, or .parquet / .pq (needs pyarrow)
    targets: tuple[TargetColumn, ...]  # one task per entry: {column: y, kind: regression | classification}
    features: tuple[str, ...] = ()  # numeric feature columns; default: every column without another role
    client_column: str | None = None  # natural partitions: each distinct value is a group of rows
    dirichlet_alpha: float | None = None  # label-skewed split instead of IID (when no client_column)
    dirichlet_column: str | None = None  # column the Dirichlet split skews; default: first classification target
    eval_fraction: float = 0.3  # share of each client's rows held out for evaluation
    standardize: Standardize = "global"  # fitted on train rows only: all clients' (global), own (client), or none
    _file: str = field(default="", init=False, repr=False, compare=False)  # ``path`` resolved when the config was built

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "features", tuple(self.features))
        check_row_settings(
            self.targets, self.client_column, self.dirichlet_alpha, self.dirichlet_column, self.eval_fraction
        )
        object.__setattr__(self, "_file", str(Path(self.path).expanduser().resolve()))
        self.rows()  # read and check the table now: a bad file or column fails before Flower or Ray start

    def rows(self) -> RowData:
        return table_rows(self, file_signature(Path(self._file), data_key("path")))

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return self.rows().task_specs()

    def feature_dim(self) -> int:
        return self.rows().feature_dim

    def class_names(self, task: str) -> tuple[str, ...]:
        """The original labels of a classification task, in the order of their codes ``0..C-1``."""
        return self.rows().targets[task].classes

    def check_clients(self, count: int) -> str | None:
        """Why ``clients.count`` does not fit the natural partitions, or None."""
        return self.rows().layout.check_clients(count)

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        return self.rows().client_data(seed, plan, self.dirichlet_alpha, self.eval_fraction, self.standardize)
