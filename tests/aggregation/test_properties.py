"""Properties every registered aggregator must have, checked on the shared inputs.

Each :class:`Spec` is a YAML-style config (built through the real config parser) plus the
properties its method promises beyond the common ones.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmtl.core.errors import ConfigError
from fedmtl.core.typed import parse
from fedmtl.methods.aggregation import AGGREGATORS, Aggregator

from ._inputs import ALL, CONFLICTING, IDENTICAL, NON_CONFLICTING, RANDOM, ZERO_ROW, Case, for_each_case
from ._specs import (
    BAD_VALUES,
    DEFAULTS,
    PATH,
    SPECS,
    UNAVAILABLE,
    Spec,
    build,
    relative_tolerance,
    spec_params,
    tolerance,
)


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


def test_fedavg_weights_are_count_shares_in_float64_reported_in_the_rows_dtype() -> None:
    from fedmtl.methods.aggregation import AggregationInput, FedAvg

    counts = torch.tensor([1.0, 2.0])  # float32 counts: 1 / 3 must still be exact to float64
    rows64 = torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    result = FedAvg()(AggregationInput(rows64, counts))
    torch.testing.assert_close(result.weights, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64), rtol=0, atol=1e-16)
    assert FedAvg()(AggregationInput(rows64.float(), counts)).weights.dtype == torch.float32
