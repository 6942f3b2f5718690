"""Task suite registry: ``data: {name: synthetic, ...}`` in YAML picks one by name."""

from __future__ import annotations

from fedmtl.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.suites.digits import DigitsSuite
from fedmtl.suites.hub import HubSuite
from fedmtl.suites.synthetic import SyntheticSuite, SyntheticTask
from fedmtl.suites.table import TableSuite, TargetColumn
from fedmtl.typed import register_component_base

SUITES: dict[str, type[TaskSuite]] = {cls.name: cls for cls in (SyntheticSuite, DigitsSuite, TableSuite, HubSuite)}
register_component_base(TaskSuite, SUITES)

__all__ = ["SUITES", "ClientData", "ClientPlan", "DigitsSuite", "HubSuite", "SyntheticSuite", "SyntheticTask", "TableSuite", "TargetColumn", "TaskData", "TaskSuite"]
