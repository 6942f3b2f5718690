"""Aggregation methods as pure tensor code: one file per method, one registry here.

Every method maps a ``[K, P]`` matrix of rows in gradient direction to one mean-scaled
direction; the server uses it on client updates, a client on its task gradients.
"""

from __future__ import annotations

from fedmtl.methods.aggregation.base import (
    AggregationInput,
    AggregationResult,
    Aggregator,
    GramianAggregator,
    NonFiniteAggregate,
)
from fedmtl.methods.aggregation.cagrad import CAGrad
from fedmtl.methods.aggregation.fedavg import FedAvg
from fedmtl.methods.aggregation.fedfv import FedFV
from fedmtl.methods.aggregation.krum import Krum
from fedmtl.methods.aggregation.median import CoordinateMedian
from fedmtl.methods.aggregation.mgda import MGDA
from fedmtl.methods.aggregation.nash_mtl import NashMTL
from fedmtl.methods.aggregation.pcgrad import PCGrad
from fedmtl.methods.aggregation.torchjd_methods import IMTLG, AlignedMTL, UPGrad
from fedmtl.methods.aggregation.trimmed_mean import TrimmedMean

_CONFLICT_AWARE = (PCGrad, FedFV, MGDA, CAGrad, UPGrad, IMTLG, NashMTL, AlignedMTL)
_BYZANTINE_ROBUST = (CoordinateMedian, TrimmedMean, Krum)
AGGREGATORS = Aggregator.REGISTRY
for _method in (FedAvg, *_CONFLICT_AWARE, *_BYZANTINE_ROBUST):
    AGGREGATORS.register(_method)

__all__ = [
    "AGGREGATORS",
    "IMTLG",
    "MGDA",
    "AggregationInput",
    "AggregationResult",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "CoordinateMedian",
    "FedAvg",
    "FedFV",
    "GramianAggregator",
    "Krum",
    "NashMTL",
    "NonFiniteAggregate",
    "PCGrad",
    "TrimmedMean",
    "UPGrad",
]
