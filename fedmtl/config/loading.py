"""From YAML and overrides to a validated :class:`ExperimentConfig`, once, at the edge.

A study's every arm and a sweep's every point are built here too, before anything runs, by the same
functions the study runner uses (:mod:`fedmtl.config.expansion`): an invalid arm or point stops the
command with its key path, never a study half-way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmtl.config.checks import parse_and_check
from fedmtl.config.expansion import UNSWEPT_SECTIONS, arm_config, point_config, pretrain_config
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.raw import apply_override, load_raw
from fedmtl.config.study import ArmSpec
from fedmtl.core.errors import ConfigError


def build_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    cfg = parse_and_check(raw)
    check_arms(cfg)
    for key, values in cfg.sweep.grid.items():  # every point must be a valid study on its own
        if key.split(".")[0] in UNSWEPT_SECTIONS:
            raise ConfigError(f"sweep.grid.{key}", "cannot sweep study, sweep or output settings")
        for i, value in enumerate(values):
            try:
                check_arms(point_config(cfg, {key: value}))
            except ConfigError as err:
                raise ConfigError(f"sweep.grid.{key}[{i}]", f"gives an invalid config: {err}") from None
    return cfg


def check_arms(cfg: ExperimentConfig) -> None:
    """Build every arm of ``cfg.study`` as the runner will; the first invalid one names its entry."""
    for i, entry in enumerate(cfg.study.arms):
        arm = cfg.study.arm_spec(entry if isinstance(entry, str) else entry.name)
        swept = [key for key in arm.set if key in cfg.sweep.grid]
        if swept:
            raise ConfigError(f"study.arms[{i}].set.{swept[0]}", "is also swept by sweep.grid: the arm would ignore it")
        try:
            arm_config(cfg, arm)
        except ConfigError as err:
            where = f"study.arms[{i}].set" if isinstance(entry, ArmSpec) else f"study.arms[{i}]"
            raise ConfigError(where, f"arm {arm.name!r} gives an invalid config: {err}") from None
        if arm.pretrain is not None:
            try:
                pretrain_config(cfg, arm)
            except ConfigError as err:
                raise ConfigError(
                    f"study.arms[{i}].pretrain", f"arm {arm.name!r}'s pretraining gives an invalid config: {err}"
                ) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """YAML file (optional) + ``key.path=value`` overrides -> validated :class:`ExperimentConfig`."""
    raw = load_raw(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return build_config(raw)
