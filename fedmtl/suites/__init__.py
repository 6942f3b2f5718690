"""Task suite registry: ``data: {name: synthetic, ...}`` in YAML picks one by name."""

from __future__ import annotations

from fedmtl.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.suites.synthetic import SyntheticSuite, SyntheticTask
from fedmtl.typed import register_component_base

SUITES: dict[str, type[TaskSuite]] = {cls.name: cls for cls in (SyntheticSuite,)}
register_component_base(TaskSuite, SUITES)

__all__ = ["SUITES", "ClientData", "ClientPlan", "SyntheticSuite", "SyntheticTask", "TaskData", "TaskSuite"]
