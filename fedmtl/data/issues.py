"""Data issues that multi-task learning amplifies, injected on chosen clients (config ``data_issues``).

Each issue is a component applied to a client's data after the suite made it, so it works with every
suite, seeded by ``(seed, issue index, client)`` and recorded in the run's config. It sits on the named
``clients``, or on a ``fraction`` of the clients drawn from the seed, else on every client. A client that
does not hold the issue's task is left as it is.

* ``label_noise`` (different noise regimes): training labels only; classification flips each label
  with probability ``rate``, uniformly to another class or to class ``to``; regression adds Gaussian
  noise of standard deviation ``scale`` times the client's target standard deviation.
* ``annotation`` (inconsistent annotation standards): the client labels the task by another
  standard, in its training *and* evaluation data (its own ground truth): classes permuted by a
  seeded permutation (``permute``) or merged (``merge: [[0, 1], ...]``: each group becomes its first
  class), or, for ordered classes, decision thresholds shifted (``shift: k``: ``y + k`` clipped to the
  classes; a binary task has no inner threshold to move); regression targets rescaled and shifted
  (``y * scale + offset``).
* ``leakage`` (label leakage): the last input feature of the task's training examples is replaced
  by a code of a label of the same examples (classification ``2 y / (C - 1) - 1``, regression the
  standardised target) times ``strength``: a shortcut the shared encoder can learn. The label is the
  task's own, or with ``source`` another task's (leakage between tasks: e.g. the digit's label in the
  inputs of ``geq5``), which needs a suite whose tasks are questions about the same examples
  (``TaskSuite.tasks_share_examples``: digits, MultiMNIST) and applies on the clients that hold both
  tasks. At evaluation the feature carries the code
  of a scrambled (permuted) label, so the shortcut does not transfer.

* ``drift`` (temporal skew): the client's labelling of the task moves with the rounds, in its training
  and evaluation data alike (the current period is its ground truth). From ``start_round`` on, each
  round adds ``per_round`` to the share of its examples (classification) relabelled to the next class,
  ``(y + 1) mod C``, the examples chosen once by a seeded draw so that the relabelled set only grows; or
  (regression) to an offset of the targets in units of the client's target standard deviation. Round 0,
  the evaluation before any training, is the undrifted data. Tasks from different periods are a drift
  that stands still: ``annotation`` with an ``offset``.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fedmtl.core.errors import require
from fedmtl.core.registry import Component, Registry
from fedmtl.data.suites.base import ClientData, TaskData
from fedmtl.data.task_kinds import TaskSpec

CLASSIFICATION = "classification"


def issue_generator(seed: int, index: int, client: int) -> torch.Generator:
    """The issue's random stream on one client (independent of every other draw of the run)."""
    mixed = np.random.SeedSequence([seed, 7919, index, client]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1)
    return torch.Generator().manual_seed(int(mixed))


class DataIssue(Component):
    """One injected issue: ``task`` on ``clients`` (empty: every client)."""

    REGISTRY: ClassVar[Registry] = Registry("data issue", (__name__,))
    task: str
    clients: tuple[int, ...]
    kinds: ClassVar[tuple[str, ...]] = (CLASSIFICATION, "regression")  # the task kinds it applies to
    drifts: ClassVar[bool] = False  # True: the issue depends on the round (:meth:`at_round`), not :meth:`apply`

    fraction: float

    def holders(self, seed: int, count: int) -> frozenset[int] | None:
        """The clients the issue sits on: the named ones, else ``floor(fraction * count)`` of them (at least
        one) drawn from the seed, the same draw for every issue (a larger fraction adds clients to a smaller
        one's), else None: every client."""
        if self.clients:
            return frozenset(self.clients)
        if self.fraction > 0:
            return drawn_clients(self.fraction, seed, count)
        return None

    def applies_to(self, client: int, data: ClientData, holders: frozenset[int] | None) -> bool:
        return (holders is None or client in holders) and self.task in data.train

    @property
    def label_task(self) -> str:
        """The task whose labels the issue reads or changes (its ``spec`` in :meth:`apply`)."""
        return self.task

    @abstractmethod
    def apply(self, data: ClientData, spec: TaskSpec, generator: torch.Generator) -> ClientData:
        """The client's data with the issue (a new object; ``data`` is never modified); ``spec``: the
        :attr:`label_task`'s."""

    def at_round(self, data: ClientData, spec: TaskSpec, generator: torch.Generator, server_round: int) -> ClientData:
        """The client's data in round ``server_round`` (issues that drift; the others are in :meth:`apply`)."""
        return data

    def spec_in(self, specs: Sequence[TaskSpec]) -> TaskSpec | None:
        """The issue's task among ``specs``, or None."""
        return next((s for s in specs if s.name == self.task), None)

    def check(self, specs: Sequence[TaskSpec], clients: Sequence[int]) -> tuple[str, str] | None:
        """``(key, why)`` when the issue cannot apply to this experiment (``clients``: every client id, member
        or not: an issue sits in a client's data, which does not depend on who takes part), or None."""
        by_name = {s.name: s for s in specs}
        if self.task not in by_name:
            return "task", f"unknown task {self.task!r}; tasks: {', '.join(by_name)}"
        if by_name[self.task].kind not in self.kinds:
            return (
                "task",
                f"{self.task} is a {by_name[self.task].kind} task; {self.name} applies to {' and '.join(self.kinds)}",
            )
        if not 0 <= self.fraction <= 1:
            return "fraction", f"must be in [0, 1], got {self.fraction}"
        if self.fraction > 0 and self.clients:
            return "fraction", "set clients or a fraction of them, not both"
        for i, client in enumerate(self.clients):
            if client not in clients:
                return f"clients[{i}]", f"there is no client {client} (clients.count is {len(clients)})"
        return None


@functools.lru_cache(maxsize=64)
def drawn_clients(fraction: float, seed: int, count: int) -> frozenset[int]:
    """``floor(fraction * count)`` clients (at least one) drawn from the seed; computed once, not for every
    client's data (a permutation of all ``count`` clients)."""
    order = np.random.default_rng([seed, 104729]).permutation(count)
    return frozenset(int(c) for c in order[: max(1, int(fraction * count))])


def with_task(
    data: ClientData, task: str, train: TaskData | None = None, evaluation: TaskData | None = None
) -> ClientData:
    return ClientData(
        {**data.train, task: train if train is not None else data.train[task]},
        {**data.eval, task: evaluation if evaluation is not None else data.eval[task]},
    )


@dataclass(frozen=True)
class LabelNoise(DataIssue):
    """Noisy training labels (symmetric or to one class; Gaussian for regression)."""

    name: ClassVar[str] = "label_noise"
    task: str = ""
    clients: tuple[int, ...] = ()
    fraction: float = 0.0  # with clients empty: this share of the clients, drawn from the seed (0: every client)
    rate: float = 0.0  # classification: the probability that a training label is flipped
    to: int | None = None  # classification: flip to this class (default: uniformly to another class)
    scale: float = 0.0  # regression: noise std in units of the client's target std

    def __post_init__(self) -> None:
        require(0 <= self.rate <= 1, "rate", f"must be in [0, 1], got {self.rate}")
        require(self.scale >= 0, "scale", f"must be >= 0, got {self.scale}")

    def check(self, specs: Sequence[TaskSpec], clients: Sequence[int]) -> tuple[str, str] | None:
        problem = super().check(specs, clients)
        spec = self.spec_in(specs)
        if problem is None and self.to is not None and spec is not None and not 0 <= self.to < spec.num_classes:
            return "to", f"must be a class of {self.task} in [0, {spec.num_classes}), got {self.to}"
        return problem

    def apply(self, data: ClientData, spec: TaskSpec, generator: torch.Generator) -> ClientData:
        train = data.train[self.task]
        y = train.y.clone()
        if spec.kind == CLASSIFICATION:
            flip = torch.rand(len(y), generator=generator) < self.rate
            if self.to is not None:
                y[flip] = self.to
            else:  # uniformly to one of the other classes
                shift = torch.randint(1, max(spec.num_classes, 2), (len(y),), generator=generator)
                y[flip] = (y[flip] + shift[flip]) % spec.num_classes
        else:
            std = float(y.std()) if len(y) > 1 else 0.0
            y = y + self.scale * std * torch.randn(len(y), generator=generator, dtype=y.dtype)
        return with_task(data, self.task, train=TaskData(train.x, y))


@dataclass(frozen=True)
class Annotation(DataIssue):
    """The client's own labelling standard for the task, in its training and evaluation data."""

    name: ClassVar[str] = "annotation"
    task: str = ""
    clients: tuple[int, ...] = ()
    fraction: float = 0.0  # with clients empty: this share of the clients, drawn from the seed (0: every client)
    permute: bool = False  # classification: classes permuted (one seeded permutation per client)
    merge: tuple[tuple[int, ...], ...] = ()  # classification: each group of classes becomes its first
    # classification with ordered classes (grades): every boundary between neighbouring classes moved by
    # ``shift`` classes, ``y + shift`` clipped to [0, C - 1] (a stricter or laxer annotator)
    shift: int = 0
    scale: float = 1.0  # regression: y * scale + offset
    offset: float = 0.0

    def __post_init__(self) -> None:
        require(
            len(self.clients) >= 1 or self.fraction > 0,
            "clients",
            "must name the clients that annotate differently (or set fraction: the share of them)",
        )
        for i, group in enumerate(self.merge):
            require(len(group) >= 2, f"merge[{i}]", f"must name two classes or more, got {list(group)}")

    def check(self, specs: Sequence[TaskSpec], clients: Sequence[int]) -> tuple[str, str] | None:
        problem = super().check(specs, clients)
        spec = self.spec_in(specs)
        if problem is not None or spec is None:
            return problem
        if spec.kind == CLASSIFICATION and not (self.permute or self.merge or self.shift):
            return "permute", "a classification task needs permute: true, merge: [[a, b], ...] or shift: k"
        if self.shift and not 0 < abs(self.shift) < spec.num_classes - 1:
            return "shift", (
                f"must move the boundaries by 1 to {spec.num_classes - 2} classes of {self.task}'s {spec.num_classes} "
                f"(more would give every example one class), got {self.shift}"
            )
        for i, group in enumerate(self.merge):
            if any(not 0 <= c < spec.num_classes for c in group):
                return f"merge[{i}]", f"classes of {self.task} are in [0, {spec.num_classes}), got {list(group)}"
        return None

    def relabel(self, y: torch.Tensor, spec: TaskSpec, permutation: torch.Tensor) -> torch.Tensor:
        if spec.kind != CLASSIFICATION:
            return y * self.scale + self.offset
        mapping = permutation.clone() if self.permute else torch.arange(spec.num_classes)
        for group in self.merge:
            for c in group:
                mapping[c] = mapping[group[0]]
        return (mapping[y] + self.shift).clamp(0, spec.num_classes - 1)

    def apply(self, data: ClientData, spec: TaskSpec, generator: torch.Generator) -> ClientData:
        permutation = torch.randperm(spec.num_classes, generator=generator)
        train, evaluation = data.train[self.task], data.eval[self.task]
        return with_task(
            data,
            self.task,
            train=TaskData(train.x, self.relabel(train.y, spec, permutation)),
            evaluation=TaskData(evaluation.x, self.relabel(evaluation.y, spec, permutation)),
        )


@dataclass(frozen=True)
class Leakage(DataIssue):
    """A label of the task's examples (its own or ``source``'s) written into the last input feature of its
    training examples (scrambled at evaluation)."""

    name: ClassVar[str] = "leakage"
    task: str = ""
    clients: tuple[int, ...] = ()
    fraction: float = 0.0  # with clients empty: this share of the clients, drawn from the seed (0: every client)
    strength: float = 1.0  # the code's scale in the input feature
    # the task whose label leaks into the task's inputs; empty: the task's own. Another task's needs a suite
    # whose tasks share their examples (digits, multimnist) and a source with at least the task's examples.
    source: str = ""

    def __post_init__(self) -> None:
        require(self.strength > 0, "strength", f"must be > 0, got {self.strength}")

    @property
    def label_task(self) -> str:
        return self.source or self.task

    def applies_to(self, client: int, data: ClientData, holders: frozenset[int] | None) -> bool:
        return super().applies_to(client, data, holders) and self.label_task in data.train  # where it is held

    def check(self, specs: Sequence[TaskSpec], clients: Sequence[int]) -> tuple[str, str] | None:
        problem = super().check(specs, clients)
        source = next((s for s in specs if s.name == self.label_task), None)
        if problem is None and source is None:
            return "source", f"unknown task {self.source!r}; tasks: {', '.join(s.name for s in specs)}"
        if problem is None and source is not None and source.kind not in self.kinds:
            return "source", f"{self.source} is a {source.kind} task; its label is not one value to leak"
        return problem

    def source_labels(self, data: ClientData) -> tuple[torch.Tensor, torch.Tensor]:
        """The leaking labels of the task's training and evaluation examples (the source task's labels of
        the same examples: the task's examples are the first of the source's, all features but the last,
        which an earlier leak may have written, equal)."""
        labels = []
        for split in (data.train, data.eval):
            task, source = split[self.task], split[self.label_task]
            n = len(task)
            if len(source) < n or not torch.equal(source.x[:n, ..., :-1], task.x[..., :-1]):
                raise ValueError(
                    f"leakage of {self.source} into {self.task}: the tasks do not share their examples on this client"
                )
            labels.append(source.y[:n])
        return labels[0], labels[1]

    def code(self, y: torch.Tensor, spec: TaskSpec, reference: torch.Tensor) -> torch.Tensor:
        if spec.kind == CLASSIFICATION:
            return self.strength * (2 * y.double() / max(spec.num_classes - 1, 1) - 1)
        std = float(reference.std()) if len(reference) > 1 else 1.0
        return self.strength * (y.double() - float(reference.mean())) / (std or 1.0)

    @staticmethod
    def written(x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, -1] = feature.to(x.dtype)
        return x

    def apply(self, data: ClientData, spec: TaskSpec, generator: torch.Generator) -> ClientData:
        train, evaluation = data.train[self.task], data.eval[self.task]
        leaked, held_out = self.source_labels(data)
        scrambled = held_out[torch.randperm(len(held_out), generator=generator)]
        return with_task(
            data,
            self.task,
            train=TaskData(self.written(train.x, self.code(leaked, spec, leaked)), train.y),
            evaluation=TaskData(self.written(evaluation.x, self.code(scrambled, spec, leaked)), evaluation.y),
        )


@dataclass(frozen=True)
class Drift(DataIssue):
    """The client's labels of the task drift over the rounds (training and evaluation data alike)."""

    name: ClassVar[str] = "drift"
    drifts: ClassVar[bool] = True
    task: str = ""
    clients: tuple[int, ...] = ()
    fraction: float = 0.0  # with clients empty: this share of the clients, drawn from the seed (0: every client)
    per_round: float = 0.1  # classification: share relabelled added per round; regression: offset in target stds
    start_round: int = 1  # the first round whose data has drifted

    def __post_init__(self) -> None:
        require(self.per_round >= 0, "per_round", f"must be >= 0, got {self.per_round}")
        require(self.start_round >= 1, "start_round", f"must be >= 1, got {self.start_round}")

    def periods(self, server_round: int) -> int:
        """How many rounds of drift the data of ``server_round`` carries."""
        return max(0, server_round - self.start_round + 1)

    def apply(self, data: ClientData, spec: TaskSpec, generator: torch.Generator) -> ClientData:
        return data

    def at_round(self, data: ClientData, spec: TaskSpec, generator: torch.Generator, server_round: int) -> ClientData:
        train, evaluation = data.train[self.task], data.eval[self.task]
        amount = self.per_round * self.periods(server_round)
        if spec.kind == CLASSIFICATION:  # the same draws every round: the relabelled examples only grow
            share = min(1.0, amount)
            moved = [torch.rand(len(d.y), generator=generator) < share for d in (train, evaluation)]
            relabel = [torch.where(m, (d.y + 1) % spec.num_classes, d.y) for m, d in zip(moved, (train, evaluation))]
        else:
            std = float(train.y.std()) if len(train.y) > 1 else 1.0
            relabel = [d.y + amount * std for d in (train, evaluation)]
        return with_task(
            data, self.task, train=TaskData(train.x, relabel[0]), evaluation=TaskData(evaluation.x, relabel[1])
        )


def apply_issues(
    issues: Sequence[DataIssue], specs: Sequence[TaskSpec], seed: int, client: int, data: ClientData, count: int
) -> ClientData:
    """``data`` of ``client`` (of ``count``) with every issue that applies to it, in config order."""
    by_name = {s.name: s for s in specs}
    for index, issue in enumerate(issues):
        if issue.applies_to(client, data, issue.holders(seed, count)):
            data = issue.apply(data, by_name[issue.label_task], issue_generator(seed, index, client))
    return data


def apply_drift(
    issues: Sequence[DataIssue],
    specs: Sequence[TaskSpec],
    seed: int,
    client: int,
    data: ClientData,
    server_round: int,
    count: int,
) -> ClientData:
    """``data`` of ``client`` (of ``count``) as it is in round ``server_round``: every drifting issue that
    applies to it."""
    if not any(issue.drifts for issue in issues):  # every train and evaluate call passes here
        return data
    by_name = {s.name: s for s in specs}
    for index, issue in enumerate(issues):
        if issue.drifts and issue.applies_to(client, data, issue.holders(seed, count)):
            generator = issue_generator(seed, index, client)
            data = issue.at_round(data, by_name[issue.task], generator, server_round)
    return data


DATA_ISSUES = DataIssue.REGISTRY
for _issue in (LabelNoise, Annotation, Leakage, Drift):
    DATA_ISSUES.register(_issue)
