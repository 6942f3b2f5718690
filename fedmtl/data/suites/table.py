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

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch

from fedmtl.core.errors import ConfigError
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskSuite
from fedmtl.data.suites.columns import Standardize, TargetColumn, column_of, data_key, encode_target, read_table
from fedmtl.data.suites.rows import RowData, check_row_settings, layout_from, numeric_features, reserved_columns
from fedmtl.data.suites.text import TextInput, check_text_settings, largest_token
from fedmtl.data.task_kinds import TaskSpec

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
    if suite.text is not None:
        matrix = suite.text.token_ids(column_of(columns, suite.text.column, data_key("text", "column")))
    else:
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
    # {column: review, max_length: 64, vocab_size: 10000, tokenizer: null}: the input is this column's text as
    # token ids (for model.encoder: huggingface) instead of numeric features; standardize does not apply
    text: TextInput | None = None
    _file: str = field(default="", init=False, repr=False, compare=False)  # ``path`` resolved when the config was built

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "features", tuple(self.features))
        check_row_settings(
            self.targets, self.client_column, self.dirichlet_alpha, self.dirichlet_column, self.eval_fraction
        )
        check_text_settings(self.text, self.features)
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

    def example_input(self) -> torch.Tensor:
        return largest_token(self.rows()) if self.text is not None else super().example_input()

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        standardize = "none" if self.text is not None else self.standardize
        return self.rows().client_data(seed, plan, self.dirichlet_alpha, self.eval_fraction, standardize)
