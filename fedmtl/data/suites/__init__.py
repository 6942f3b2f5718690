"""Task suite registry: ``data: {name: synthetic, ...}`` in YAML picks one by name."""

from __future__ import annotations

from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.suites.columns import TargetColumn
from fedmtl.data.suites.composite import CompositeSuite, Part
from fedmtl.data.suites.digits import DigitsSuite
from fedmtl.data.suites.hub import HubSuite
from fedmtl.data.suites.multimnist import MultiMNISTSuite
from fedmtl.data.suites.nyud import NYUDSuite
from fedmtl.data.suites.pascal_context import PascalContextSuite
from fedmtl.data.suites.shapes import ShapesSuite
from fedmtl.data.suites.synthetic import SyntheticSuite, SyntheticTask
from fedmtl.data.suites.table import TableSuite

SUITES = TaskSuite.REGISTRY
for _suite in (
    SyntheticSuite,
    DigitsSuite,
    MultiMNISTSuite,
    ShapesSuite,
    NYUDSuite,
    PascalContextSuite,
    TableSuite,
    HubSuite,
    CompositeSuite,
):
    SUITES.register(_suite)

__all__ = [
    "SUITES",
    "ClientData",
    "ClientPlan",
    "CompositeSuite",
    "DigitsSuite",
    "HubSuite",
    "MultiMNISTSuite",
    "NYUDSuite",
    "Part",
    "PascalContextSuite",
    "ShapesSuite",
    "SyntheticSuite",
    "SyntheticTask",
    "TableSuite",
    "TargetColumn",
    "TaskData",
    "TaskSuite",
]
