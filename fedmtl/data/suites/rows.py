"""Which client holds which rows of a table, the train/eval split and standardisation (shared by the table
and hub suites)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedmtl.core.errors import ConfigError
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData
from fedmtl.data.suites.columns import Column, Standardize, TargetColumn, TargetValues, categories, column_of, data_key
from fedmtl.data.suites.digits import dirichlet_partition
from fedmtl.data.task_kinds import TaskSpec

_PARTITION_STREAM, _SPLIT_STREAM = 41, 43

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
