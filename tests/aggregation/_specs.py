"""The registered aggregators as YAML-style configs, with the properties each method promises beyond
the common ones: shared by the table-driven property tests (``test_properties.py``) and the
Hypothesis ones (``test_hypothesis.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from fedmtl.core.typed import parse
from fedmtl.methods.aggregation import Aggregator

from ._inputs import Case, relative_tolerance

PATH = "server.aggregator"


@dataclass(frozen=True)
class Spec:
    config: dict[str, Any]
    conflict_free: bool = False  # <d, g_i> >= 0 for every row, any K
    conflict_free_two_rows: bool = False  # ... only guaranteed for K = 2
    mean_when_no_conflict: bool = False  # exactly the plain mean when all pairwise dots are >= 0
    agrees_without_conflict: bool = True  # positive inner product with the mean when all pairwise dots are > 0
    order_dependent: bool = False  # declared randomness / fixed visiting order: permutation-invariant only for K <= 2
    extra_tolerance: float = 0.0  # iterative solvers: added to the dtype's relative tolerance
    reg_eps: float = 0.0  # UPGrad's regulariser, which loosens its non-conflict guarantee
    min_rows: int = 1  # Krum needs K > 2f + 2: cases with fewer rows are left out (and must raise)
    homogeneous: bool = True  # scaling every row by c > 0 scales the direction by c
    # The direction is unique (so permutation- and scale-equivariant) only under an assumption:
    # "hull": the origin is outside the convex hull of the rows (CAGrad's paper assumes it; otherwise
    # every direction of a ball is optimal); "independent": the rows are linearly independent (MGDA
    # with normalised rows: the min-norm point is unique, its weights, and so the mean-scaling, not);
    # "no ties": no two Krum scores tie (ties go to the lower row index, so the order decides).
    unique_if: str | None = None
    simplex_weights: bool = False  # weights are >= 0 and sum to 1 (a convex combination of the rows)

    def usable(self, cases: list[Case]) -> list[Case]:
        return [c for c in cases if c.num_rows >= self.min_rows]

    @property
    def id(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.config.items() if k != "name")
        return f"{self.config['name']}[{params}]" if params else self.config["name"]


DEFAULTS = {
    "fedavg": Spec({"name": "fedavg"}, simplex_weights=True),
    "pcgrad": Spec({"name": "pcgrad"}, conflict_free_two_rows=True, mean_when_no_conflict=True, order_dependent=True),
    "fedfv": Spec({"name": "fedfv"}, conflict_free_two_rows=True, mean_when_no_conflict=True),
    "mgda": Spec({"name": "mgda"}, conflict_free=True, simplex_weights=True),
    "cagrad": Spec({"name": "cagrad"}, extra_tolerance=1e-6, unique_if="hull"),
    "upgrad": Spec({"name": "upgrad"}, conflict_free=True, mean_when_no_conflict=True, reg_eps=1e-4),
    # IMTL-G's weights are normalised to sum 1, which can flip the equal projections negative even
    # without conflicts (see test_torchjd_methods.test_imtl_g_can_point_against_every_row).
    "imtl_g": Spec({"name": "imtl_g"}, agrees_without_conflict=False),
    "nash_mtl": Spec({"name": "nash_mtl"}, conflict_free=True, simplex_weights=True),
    "aligned_mtl": Spec({"name": "aligned_mtl"}),
    "median": Spec({"name": "median"}),
    "trimmed_mean": Spec({"name": "trimmed_mean"}),
    "krum": Spec({"name": "krum"}, min_rows=5, simplex_weights=True, unique_if="no ties"),  # f = 1
}
VARIANTS = [
    Spec({"name": "fedfv", "alpha": 0.5}, mean_when_no_conflict=True),  # keeps the higher-loss row of 2 as is
    Spec({"name": "mgda", "normalization": "l2"}, conflict_free=True, unique_if="independent"),
    Spec({"name": "mgda", "normalization": "loss+"}, conflict_free=True, unique_if="independent"),
    Spec({"name": "mgda", "normalization": "l2", "max_deviation": 0.05}, extra_tolerance=1e-6, unique_if="independent"),
    Spec({"name": "cagrad", "c": 0.0}, mean_when_no_conflict=True),
    Spec({"name": "cagrad", "c": 1.0, "rescale": 0}, extra_tolerance=1e-6, unique_if="hull"),
    Spec({"name": "upgrad", "solver": "nnls"}, conflict_free=True, mean_when_no_conflict=True, reg_eps=1e-4),
    # unregularised: on nearly dependent rows the projections are sensitive at 1e-7 of the row scale, and which
    # tests ran earlier in the process moved a direction by that much (test_hypothesis, scaled rows)
    Spec(
        {"name": "upgrad", "solver": "nnls", "reg_eps": 0.0},
        conflict_free=True,
        mean_when_no_conflict=True,
        extra_tolerance=1e-7,
    ),
    Spec({"name": "upgrad", "reg_eps": 0.0}, conflict_free=True, mean_when_no_conflict=True, extra_tolerance=1e-7),
    Spec({"name": "aligned_mtl", "scale_mode": "rmse"}),
    Spec({"name": "trimmed_mean", "beta": 0.0}, mean_when_no_conflict=True),
    Spec({"name": "trimmed_mean", "beta": 0.45}),
    Spec({"name": "krum", "f": 0, "m": 2}, min_rows=3, unique_if="no ties"),
    Spec({"name": "krum", "f": 1, "m": 3, "then": {"name": "upgrad"}}, min_rows=5, reg_eps=1e-4, unique_if="no ties"),
    Spec({"name": "krum", "f": 1, "m": 3, "then": {"name": "pcgrad"}}, min_rows=5, order_dependent=True),
    Spec({"name": "krum", "f": 0, "m": 3, "then": {"name": "median"}}, min_rows=3, unique_if="no ties"),
]
ALL_SPECS = list(DEFAULTS.values()) + VARIANTS
# A value each method must reject, and the key path the error must name.
BAD_VALUES: dict[str, dict[str, Any]] = {
    "fedavg": {"weighted": "yes"},
    "pcgrad": {"order": "random"},
    "fedfv": {"alpha": 1.5},
    "mgda": {"max_deviation": -0.1},
    "cagrad": {"c": -1},
    "upgrad": {"reg_eps": -1.0, "solver": "nnls"},
    "imtl_g": {"eps": 1e-3},
    "nash_mtl": {"ridge": -1.0},
    "aligned_mtl": {"scale_mode": "max"},
    "median": {"beta": 0.1},
    "trimmed_mean": {"beta": 0.5},
    "krum": {"f": -1},
}


def build(config: dict[str, Any]) -> Aggregator:
    """Parse the YAML-style config; skip when an optional solver package is not installed here."""
    try:
        return parse(Aggregator, dict(config), PATH)
    except ImportError as err:
        pytest.skip(str(err))


def missing_dependency(spec: Spec) -> str | None:
    try:
        parse(Aggregator, dict(spec.config), PATH)
    except ImportError as err:
        return str(err)
    return None


# Specs whose optional solver packages are missing (test_every_spec_can_be_built_here fails then).
UNAVAILABLE = {spec.id: reason for spec in ALL_SPECS if (reason := missing_dependency(spec)) is not None}
SPECS = [spec for spec in ALL_SPECS if spec.id not in UNAVAILABLE]


def spec_params(specs: list[Spec]) -> list:
    return [pytest.param(s, id=s.id) for s in specs]


def tolerance(spec: Spec, case: Case) -> float:
    """Absolute tolerance on directions, relative to the largest row norm."""
    scale = float(case.matrix.double().norm(dim=1).max()) or 1.0
    return (relative_tolerance(case.matrix.dtype) + spec.extra_tolerance) * scale
