"""Properties every registered aggregator must have, checked on the shared inputs.

Each :class:`Spec` is a YAML-style config (built through the real config parser) plus the
properties its method promises beyond the common ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from fedmtl.config.errors import ConfigError
from fedmtl.config.typed import parse
from fedmtl.methods.aggregation import AGGREGATORS, Aggregator

from ._inputs import (
    ALL,
    CONFLICTING,
    IDENTICAL,
    NON_CONFLICTING,
    RANDOM,
    ZERO_ROW,
    Case,
    for_each_case,
    relative_tolerance,
)

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

    def usable(self, cases: list[Case]) -> list[Case]:
        return [c for c in cases if c.num_rows >= self.min_rows]

    @property
    def id(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.config.items() if k != "name")
        return f"{self.config['name']}[{params}]" if params else self.config["name"]


DEFAULTS = {
    "fedavg": Spec({"name": "fedavg"}),
    "pcgrad": Spec({"name": "pcgrad"}, conflict_free_two_rows=True, mean_when_no_conflict=True, order_dependent=True),
    "fedfv": Spec({"name": "fedfv"}, conflict_free_two_rows=True, mean_when_no_conflict=True),
    "mgda": Spec({"name": "mgda"}, conflict_free=True),
    "cagrad": Spec({"name": "cagrad"}, extra_tolerance=1e-6),
    "upgrad": Spec({"name": "upgrad"}, conflict_free=True, mean_when_no_conflict=True, reg_eps=1e-4),
    # IMTL-G's weights are normalised to sum 1, which can flip the equal projections negative even
    # without conflicts (see test_torchjd_methods.test_imtl_g_can_point_against_every_row).
    "imtl_g": Spec({"name": "imtl_g"}, agrees_without_conflict=False),
    "nash_mtl": Spec({"name": "nash_mtl"}, conflict_free=True),
    "aligned_mtl": Spec({"name": "aligned_mtl"}),
    "median": Spec({"name": "median"}),
    "trimmed_mean": Spec({"name": "trimmed_mean"}),
    "krum": Spec({"name": "krum"}, min_rows=5),  # f = 1
}
VARIANTS = [
    Spec({"name": "fedfv", "alpha": 0.5}, mean_when_no_conflict=True),  # keeps the higher-loss row of 2 as is
    Spec({"name": "mgda", "normalization": "l2"}, conflict_free=True),
    Spec({"name": "mgda", "normalization": "loss+"}, conflict_free=True),
    Spec({"name": "mgda", "normalization": "l2", "max_deviation": 0.05}, extra_tolerance=1e-6),
    Spec({"name": "cagrad", "c": 0.0}, mean_when_no_conflict=True),
    Spec({"name": "cagrad", "c": 1.0, "rescale": 0}, extra_tolerance=1e-6),
    Spec({"name": "upgrad", "solver": "nnls"}, conflict_free=True, mean_when_no_conflict=True, reg_eps=1e-4),
    Spec({"name": "upgrad", "solver": "nnls", "reg_eps": 0.0}, conflict_free=True, mean_when_no_conflict=True),
    Spec({"name": "aligned_mtl", "scale_mode": "rmse"}),
    Spec({"name": "trimmed_mean", "beta": 0.0}, mean_when_no_conflict=True),
    Spec({"name": "trimmed_mean", "beta": 0.45}),
    Spec({"name": "krum", "f": 0, "m": 2}, min_rows=3),
    Spec({"name": "krum", "f": 1, "m": 3, "then": {"name": "upgrad"}}, min_rows=5, reg_eps=1e-4),
    Spec({"name": "krum", "f": 1, "m": 3, "then": {"name": "pcgrad"}}, min_rows=5, order_dependent=True),
    Spec({"name": "krum", "f": 0, "m": 3, "then": {"name": "median"}}, min_rows=3),
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


def test_every_spec_can_be_built_here() -> None:
    """Specs whose solver package is missing would drop out of every property test below; the
    project's own dependencies (torchjd[quadprog-projector]) bring them all."""
    assert not UNAVAILABLE, f"property tests would skip: {UNAVAILABLE}"


def test_every_registered_aggregator_has_a_default_spec_and_a_bad_value() -> None:
    assert set(DEFAULTS) == set(AGGREGATORS)
    assert set(BAD_VALUES) == set(AGGREGATORS)


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_finite_direction_of_shape_p_and_weights_reproduce_it(spec: Spec) -> None:
    aggregator = build(spec.config)

    def check(case: Case) -> None:
        result = aggregator(case.inputs())
        assert result.direction.shape == (case.width,)
        assert result.direction.dtype == case.matrix.dtype
        assert bool(torch.isfinite(result.direction).all())
        if result.weights is not None:
            assert result.weights.shape == (case.num_rows,)
            recombined = result.weights.double() @ case.matrix.double()
            torch.testing.assert_close(result.direction.double(), recombined, rtol=0, atol=tolerance(spec, case))

    for_each_case(spec.usable(ALL), check)


@pytest.mark.parametrize("spec", spec_params([s for s in SPECS if s.min_rows > 1]))
def test_too_few_rows_raise_a_clear_error(spec: Spec) -> None:
    aggregator = build(spec.config)
    for case in [c for c in ALL if c.num_rows < spec.min_rows]:
        with pytest.raises(ValueError, match="needs more than"):
            aggregator(case.inputs())


@pytest.mark.parametrize("spec", spec_params([s for s in SPECS if s.min_rows <= 1]))
def test_single_row_is_returned(spec: Spec) -> None:
    aggregator = build(spec.config)

    def check(case: Case) -> None:
        direction = aggregator(case.inputs()).direction
        torch.testing.assert_close(direction, case.matrix[0], rtol=0, atol=tolerance(spec, case))

    for_each_case(spec.usable([c for c in RANDOM + ZERO_ROW if c.num_rows == 1]), check)


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_identical_rows_give_that_row(spec: Spec) -> None:
    aggregator = build(spec.config)

    def check(case: Case) -> None:
        direction = aggregator(case.inputs()).direction
        torch.testing.assert_close(direction, case.matrix[0], rtol=0, atol=tolerance(spec, case))

    for_each_case(spec.usable(IDENTICAL), check)


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_permuting_rows_permutes_weights_and_keeps_direction(spec: Spec) -> None:
    aggregator = build(spec.config)

    def check(case: Case) -> None:
        permutation = torch.randperm(case.num_rows, generator=torch.Generator().manual_seed(case.seed))
        original = aggregator(case.inputs(generator=False))
        permuted = aggregator(case.inputs(generator=False, permutation=permutation))
        atol = tolerance(spec, case)
        torch.testing.assert_close(permuted.direction, original.direction, rtol=0, atol=atol)
        if original.weights is not None and case.full_rank:  # otherwise the weights need not be unique
            weight_atol = atol / float(case.matrix.double().norm(dim=1).min())
            torch.testing.assert_close(permuted.weights, original.weights[permutation], rtol=0, atol=weight_atol)

    cases = RANDOM + NON_CONFLICTING + CONFLICTING
    if spec.order_dependent:  # declared randomness, or a visiting order fixed by row index
        cases = [c for c in cases if c.num_rows <= 2 or c in NON_CONFLICTING]
    for_each_case(spec.usable(cases), check)


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_without_conflict_the_direction_agrees_with_the_mean(spec: Spec) -> None:
    aggregator = build(spec.config)

    def check(case: Case) -> None:
        direction = aggregator(case.inputs()).direction.double()
        mean = case.matrix.double().mean(dim=0)
        if spec.agrees_without_conflict:
            assert float(direction @ mean) > 0, "direction opposes the mean"
        if spec.mean_when_no_conflict:
            torch.testing.assert_close(direction, mean, rtol=0, atol=tolerance(spec, case))

    for_each_case(spec.usable(NON_CONFLICTING), check)


@pytest.mark.parametrize("spec", spec_params([s for s in SPECS if s.conflict_free or s.conflict_free_two_rows]))
def test_no_conflict_with_any_row(spec: Spec) -> None:
    aggregator = build(spec.config)

    def check(case: Case) -> None:
        result = aggregator(case.inputs())
        inner = case.matrix.double() @ result.direction.double()
        gram_trace = float((case.matrix.double() ** 2).sum())
        # UPGrad projects onto the dual cone of G + reg_eps * trace(G) * I, which allows this much.
        slack = spec.reg_eps * gram_trace * float(result.weights.abs().max())
        scale = float(case.matrix.double().norm(dim=1).max()) ** 2
        assert float(inner.min()) >= -(slack + 10 * relative_tolerance(case.matrix.dtype) * scale), inner

    cases = RANDOM + CONFLICTING + ZERO_ROW
    if not spec.conflict_free:
        cases = [c for c in cases if c.num_rows == 2]
    for_each_case(cases, check)


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_repr_shows_every_hyperparameter(spec: Spec) -> None:
    aggregator = build(spec.config)
    text = repr(aggregator)
    for item in dataclasses.fields(aggregator):
        assert f"{item.name}={getattr(aggregator, item.name)!r}" in text


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_parsing_a_name_gives_the_registered_class_with_defaults(name: str) -> None:
    aggregator = build({"name": name})
    assert type(aggregator) is AGGREGATORS[name]
    assert aggregator == AGGREGATORS[name]()


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_a_bad_hyperparameter_is_a_config_error_naming_the_path(name: str) -> None:
    try:
        AGGREGATORS[name]()
    except ImportError as err:
        pytest.skip(str(err))
    with pytest.raises(ConfigError) as raised:
        parse(Aggregator, {"name": name, **BAD_VALUES[name]}, PATH)
    assert PATH in str(raised.value)


def test_unknown_name_is_a_config_error_listing_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        parse(Aggregator, {"name": "gradnorm"}, PATH)
    assert PATH in str(raised.value)
    assert all(name in str(raised.value) for name in AGGREGATORS)


def test_pcgrad_is_reproducible_from_the_generator_seed() -> None:
    aggregator = build(DEFAULTS["pcgrad"].config)

    def check(case: Case) -> None:
        first, second = aggregator(case.inputs()).direction, aggregator(case.inputs()).direction
        torch.testing.assert_close(first, second, rtol=0, atol=0)

    for_each_case([c for c in CONFLICTING if c.num_rows > 2], check)
