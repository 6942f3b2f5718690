"""Task suite registry: ``data: {name: synthetic, ...}`` in YAML picks one by name."""

from __future__ import annotations

from fedmtl.config.typed import register_component_base
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.suites.digits import DigitsSuite
from fedmtl.data.suites.hub import HubSuite
from fedmtl.data.suites.multimnist import MultiMNISTSuite
from fedmtl.data.suites.synthetic import SyntheticSuite, SyntheticTask
from fedmtl.data.suites.table import TableSuite, TargetColumn

SUITES: dict[str, type[TaskSuite]] = {
    cls.name: cls for cls in (SyntheticSuite, DigitsSuite, MultiMNISTSuite, TableSuite, HubSuite)
}
register_component_base(TaskSuite, SUITES)

__all__ = [
    "SUITES",
    "ClientData",
    "ClientPlan",
    "DigitsSuite",
    "HubSuite",
    "MultiMNISTSuite",
    "SyntheticSuite",
    "SyntheticTask",
    "TableSuite",
    "TargetColumn",
    "TaskData",
    "TaskSuite",
]
