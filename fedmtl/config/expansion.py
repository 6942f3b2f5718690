"""The configs a study or a sweep runs, each built from the study's resolved config by the same rules as
``--set``: an arm's settings (its base arm's, then its own ``set``), a sweep point's values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmtl.config.arms import ARMS
from fedmtl.config.checks import parse_and_check
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.raw import set_path
from fedmtl.config.study import ArmSpec
from fedmtl.core.errors import ConfigError

UNSWEPT_SECTIONS = ("sweep", "study", "output")  # a sweep point changes the experiment, not how it is run or written


def arm_config(cfg: ExperimentConfig, arm: ArmSpec, pretrained: str | None = None) -> ExperimentConfig:
    """The config arm ``arm`` runs: ``cfg`` without its study and sweep, with the base arm's settings
    and then the arm's own ``set`` applied; its encoder starts from ``pretrained`` (the file its
    pretraining phase wrote) when given."""
    raw = {k: v for k, v in cfg.to_dict().items() if k not in ("study", "sweep")}
    for key, value in ARMS[arm.base].settings.items():
        set_path(raw, key, value, f"study.arms.{arm.name}")
    for key, value in arm.set.items():
        set_path(raw, key, value, f"study.arms.{arm.name}.set.{key}")
    if pretrained is not None:
        set_path(raw, "model.init_from", pretrained, f"study.arms.{arm.name}.pretrain")
    return parse_and_check(raw)


def pretrain_config(cfg: ExperimentConfig, arm: ArmSpec) -> ExperimentConfig:
    """The config of ``arm``'s pretraining phase: ``cfg`` as it stands (fed_mtl) for ``pretrain.rounds``
    rounds on ``pretrain.tasks`` only, among the clients that hold one of them, evaluated at the end."""
    assert arm.pretrain is not None
    raw = {k: v for k, v in cfg.to_dict().items() if k not in ("study", "sweep")}
    names = cfg.data.task_names()
    tasks = arm.pretrain.tasks or names
    holders = [c for c in cfg.clients.member_ids() if set(cfg.clients.tasks_held(c, names)) & set(tasks)]
    for key, value in (
        ("clients.only_tasks", list(tasks)),
        ("clients.members", holders),
        ("rounds", arm.pretrain.rounds),
        ("eval_every", arm.pretrain.rounds),
    ):
        set_path(raw, key, value, f"study.arms.{arm.name}.pretrain")
    return parse_and_check(raw)


def point_config(cfg: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """The config of one sweep point: ``cfg`` without its sweep, with ``values`` set by key path."""
    raw = {k: v for k, v in cfg.to_dict().items() if k != "sweep"}
    for key, value in values.items():
        if key.split(".")[0] in UNSWEPT_SECTIONS:
            raise ConfigError(f"sweep.grid.{key}", "cannot sweep study, sweep or output settings")
        set_path(raw, key, value, f"sweep.grid.{key}")
    return parse_and_check(raw)
