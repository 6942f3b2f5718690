"""Aggregation methods as pure tensor code: one file per method, one registry here.

Every method maps a ``[K, P]`` matrix of rows in gradient direction to one mean-scaled
direction; the server uses it on client updates, a client on its task gradients.
"""

from __future__ import annotations

from fedmtl.aggregation.base import AggregationInput, AggregationResult, Aggregator, GramianAggregator
from fedmtl.aggregation.cagrad import CAGrad
from fedmtl.aggregation.fedavg import FedAvg
from fedmtl.aggregation.fedfv import FedFV
from fedmtl.aggregation.mgda import MGDA
from fedmtl.aggregation.nash_mtl import NashMTL
from fedmtl.aggregation.pcgrad import PCGrad
from fedmtl.aggregation.torchjd_methods import IMTLG, AlignedMTL, UPGrad
from fedmtl.typed import register_component_base

AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvg, PCGrad, FedFV, MGDA, CAGrad, UPGrad, IMTLG, NashMTL, AlignedMTL)
}
register_component_base(Aggregator, AGGREGATORS)

__all__ = [
    "AGGREGATORS",
    "IMTLG",
    "MGDA",
    "AggregationInput",
    "AggregationResult",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "FedAvg",
    "FedFV",
    "GramianAggregator",
    "NashMTL",
    "PCGrad",
    "UPGrad",
]
