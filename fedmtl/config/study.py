"""Studies and sweeps (config ``study`` and ``sweep``): which arms run over which seeds, how they are
compared, and the grid a sweep runs the study over."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedmtl.config.arms import ALL_ARMS, ARM_LOCKED_SECTIONS, ARMS
from fedmtl.core.errors import ConfigError, require


@dataclass(frozen=True)
class Pretraining:
    """A federated pretraining phase before the arm's own run (sequential transfer; heads on a pretrained,
    frozen encoder): the study's federation as it stands (``fed_mtl``), for ``rounds`` rounds, on ``tasks``
    only, among the clients that hold one of them. The arm's run then starts its encoder from the
    phase's ``encoder.pt`` (``model.init_from``); the phase's run directory is
    ``<study>/pretrain/arms/<arm>/seed-<seed>``."""

    tasks: tuple[str, ...] = ()  # the source tasks (empty: every task)
    rounds: int = 5  # rounds of the pretraining phase (on top of the arm's own rounds)

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be >= 1, got {self.rounds}")


@dataclass(frozen=True)
class ArmSpec:
    """A user-defined arm: built-in arm ``base`` run on the study's config with ``set`` applied
    (``{server.aggregator: {name: pcgrad}}``: any ``key.path: value`` outside the locked sections),
    optionally after a federated pretraining phase (``pretrain``)."""

    name: str  # the arm's name in the report and its folder arms/<name>/
    base: str = "fed_mtl"  # the built-in arm whose settings it starts from (fedmtl/config/arms.py)
    set: Mapping[str, Any] = field(default_factory=dict)  # key.path -> value, as --set takes them
    # {tasks: [...], rounds: n}: first federate only these tasks for n rounds, then run the arm from that encoder
    pretrain: Pretraining | None = None

    def __post_init__(self) -> None:
        require(
            bool(self.name) and "/" not in self.name and self.name != ALL_ARMS,
            "name",
            f"{self.name!r} must be non-empty, without '/', and not {ALL_ARMS!r}",
        )
        require(self.base in tuple(ARMS), "base", f"unknown base arm {self.base!r}; valid: {', '.join(tuple(ARMS))}")
        for key in self.set:
            require(
                key.split(".")[0] not in ARM_LOCKED_SECTIONS,
                f"set.{key}",
                f"an arm cannot change {', '.join(ARM_LOCKED_SECTIONS)} "
                "(arms share the study's data, clients and seeds so that their runs pair)",
            )
        require(
            self.pretrain is None or "model.init_from" not in self.set,
            "set.model.init_from",
            "the arm starts from its pretraining phase's encoder (pretrain); set one or the other",
        )


@dataclass(frozen=True)
class StudyConfig:
    """Arms x seeds run one after another by one command (empty arms: a single run)."""

    # Built-in arm names (fed_mtl is this config as it stands, local_stl, fed_stl, fed_full,
    # central_mtl, adaptive) or user-defined arms {name: pcgrad, base: fed_mtl, set: {server.aggregator: pcgrad}}.
    arms: tuple[str | ArmSpec, ...] = ()
    seeds: tuple[int, ...] = ()  # default: the top-level seed only
    reference_arm: str = "fed_mtl"  # with compare empty: this arm is compared with every other arm
    # Pairs [arm, baseline]: the paired relative delta of arm over baseline; [all, baseline] = every
    # other arm against baseline. Empty = [reference_arm, b] for every other arm b.
    compare: tuple[tuple[str, str], ...] = ()
    # Multiple-testing correction of the flags over the tasks of a pair and over the clients of a
    # task: holm (Holm 1979, family-wise error) or bh (Benjamini-Hochberg 1995, false discovery rate).
    correction: Literal["holm", "bh"] = "holm"
    significance: float = 0.05  # a difference is flagged when its (corrected) p-value is below this
    # How many of the study's runs go at once, each a Ray task (a whole federation, its clients one at a
    # time in that task's process, reserving resources.client_cpus/client_gpus) on any node of the
    # cluster: 0 = with resources.ray_address, as many as the cluster fits, else 1 (one after another,
    # the machine's cores for each run's clients).
    # The study directory must be on a filesystem every node sees at the same path (docs/STUDIES.md).
    max_concurrent_runs: int = 0

    def __post_init__(self) -> None:
        require(self.max_concurrent_runs >= 0, "max_concurrent_runs", f"must be >= 0, got {self.max_concurrent_runs}")
        names = self.arm_names()
        builtin = tuple(ARMS)
        for i, arm in enumerate(self.arms):
            require(
                not isinstance(arm, str) or arm in builtin,
                f"arms[{i}]",
                f"unknown arm {arm!r}; valid: {', '.join(builtin)}, or {{name: ..., base: ..., set: {{...}}}}",
            )
            require(
                not (isinstance(arm, ArmSpec) and arm.name in builtin),
                f"arms[{i}].name",
                f"{names[i]!r} is the name of a built-in arm; rename the user-defined arm",
            )
        require(len(set(names)) == len(names), "arms", f"arm names must not repeat, got {list(names)}")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", f"must not repeat, got {list(self.seeds)}")
        require(
            not self.arms or self.reference_arm in names,
            "reference_arm",
            f"{self.reference_arm!r} is not one of the arms {', '.join(names)}",
        )
        for i, (arm, baseline) in enumerate(self.compare):
            unknown = [name for name, allowed in ((arm, (*names, ALL_ARMS)), (baseline, names)) if name not in allowed]
            if unknown:
                raise ConfigError(f"study.compare[{i}]", f"{unknown[0]!r} is not one of the arms {', '.join(names)}")
            if arm == baseline:
                raise ConfigError(f"study.compare[{i}]", f"compares {arm!r} with itself")
        require(0 < self.significance < 1, "significance", f"must be in (0, 1), got {self.significance}")

    def arm_names(self) -> tuple[str, ...]:
        return tuple(arm if isinstance(arm, str) else arm.name for arm in self.arms)

    def arm_spec(self, name: str) -> ArmSpec:
        """The arm called ``name``; a built-in arm is its own base with nothing set."""
        for arm in self.arms:
            if isinstance(arm, ArmSpec) and arm.name == name:
                return arm
        return ArmSpec(name=name, base=name)

    def pairs(self) -> list[tuple[str, str]]:
        """Every (arm, baseline) pair to compare, ``all`` expanded, duplicates dropped, in order."""
        names = self.arm_names()
        if not self.compare:
            return [(self.reference_arm, b) for b in names if b != self.reference_arm]
        expanded = [
            (a, baseline)
            for arm, baseline in self.compare
            for a in (names if arm == ALL_ARMS else (arm,))
            if a != baseline
        ]
        return list(dict.fromkeys(expanded))


@dataclass(frozen=True)
class SweepConfig:
    """A grid over config keys (``key.path: [values]``); every point runs the study."""

    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # key.path -> the values it takes

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(self.grid[k] for k in keys))]
