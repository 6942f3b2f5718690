"""Property-based tests of every registered aggregator (Hypothesis): random and degenerate row sets
(one row, identical rows, zero rows, anti-parallel rows, norms from 1e-6 to 1e6), each checked for
the invariants the method promises; a failure is shrunk to a minimal matrix.

The table-driven tests beside this file (``test_properties.py``) check the same promises on fixed,
well-conditioned inputs; these search for the inputs where a promise breaks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedmtl.methods.aggregation import AggregationInput, NonFiniteAggregate

from ._specs import SPECS, Spec, build, spec_params

# 40 examples per method and property by default (100 under --hypothesis-profile=explore's 400): the
# solvers make an example cost milliseconds, and there are ~20 methods x 6 properties
EXAMPLES = max(10, settings.default.max_examples * 2 // 5)
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
# entries 0 or of size 1e-3 to 1 (row norms then differ by at most ~1e5 within a matrix: beyond that a
# float64 Gramian cannot resolve the small rows), the whole matrix then scaled from 1e-6 to 1e6
ENTRIES = st.integers(-1000, 1000).map(lambda i: i / 1000)
SCALES = st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e6])


@st.composite
def row_sets(draw: st.DrawFn, max_rows: int = 6, max_width: int = 6) -> np.ndarray:
    """A ``[K, P]`` float64 matrix: general rows, or one of the degenerate shapes, at any scale."""
    k = draw(st.integers(1, max_rows))
    p = draw(st.integers(1, max_width))
    base = draw(arrays(np.float64, (k, p), elements=ENTRIES))
    shape = draw(st.sampled_from(["general", "identical", "zero_rows", "antiparallel", "repeated"]))
    if shape == "identical":
        base = np.repeat(base[:1], k, axis=0)
    elif shape == "zero_rows":
        base[draw(st.integers(0, k - 1)) :] = 0.0
    elif shape == "antiparallel" and k >= 2:
        base[1] = -draw(st.floats(0.1, 10.0)) * base[0]
    elif shape == "repeated" and k >= 2:
        base[-1] = base[0]
    row_scales = draw(arrays(np.float64, (k, 1), elements=st.floats(0.1, 10.0)))
    return base * row_scales * draw(SCALES)


def inputs_of(matrix: np.ndarray, seed: int = 0, dtype: torch.dtype = torch.float64) -> AggregationInput:
    k = matrix.shape[0]
    counts = torch.arange(1, k + 1, dtype=torch.float64)
    losses = 0.5 + torch.arange(k, dtype=torch.float64) / k
    return AggregationInput(
        torch.as_tensor(matrix, dtype=dtype), counts, losses, torch.Generator().manual_seed(seed), "float64"
    )


def atol(spec: Spec, matrix: np.ndarray) -> float:
    """Absolute tolerance on a direction: relative to the largest row norm (iterative solvers looser)."""
    scale = float(np.linalg.norm(matrix, axis=1).max()) or 1.0
    return (1e-7 + 10 * spec.extra_tolerance) * scale


def usable(spec: Spec, matrix: np.ndarray) -> bool:
    return matrix.shape[0] >= spec.min_rows


def unique(spec: Spec, matrix: np.ndarray) -> bool:
    """Whether the method's assumption for a unique direction holds (see ``Spec.unique_if``)."""
    if spec.unique_if == "independent":
        return bool(np.linalg.matrix_rank(matrix) == matrix.shape[0])
    if spec.unique_if == "hull":  # the min-norm point of the hull (MGDA's, exact) is away from the origin
        from fedmtl.methods.aggregation import MGDA

        point = MGDA()(inputs_of(matrix)).direction.numpy()
        return bool(np.linalg.norm(point) > 1e-6 * np.linalg.norm(matrix, axis=1).max())
    if spec.unique_if == "no ties":
        from fedmtl.methods.aggregation.krum import krum_scores

        f = spec.config.get("f", 1)
        scores = np.sort(krum_scores(torch.as_tensor(matrix @ matrix.T), f).numpy())
        return bool(np.all(np.diff(scores) > 1e-9 * max(scores.max(), 1e-300)))
    return True


@pytest.mark.parametrize("spec", spec_params(SPECS))
@SETTINGS
@given(matrix=row_sets())
def test_finite_rows_give_a_finite_direction_that_its_weights_reproduce(spec: Spec, matrix: np.ndarray) -> None:
    if not usable(spec, matrix):
        return
    result = build(spec.config)(inputs_of(matrix))
    direction = result.direction.numpy()
    assert direction.shape == (matrix.shape[1],) and np.isfinite(direction).all()
    if result.weights is not None:
        np.testing.assert_allclose(result.weights.numpy() @ matrix, direction, rtol=0, atol=atol(spec, matrix))
        if spec.simplex_weights:
            weights = result.weights.numpy()
            assert weights.min() >= -1e-9 and math.isclose(weights.sum(), 1.0, abs_tol=1e-6), weights


@pytest.mark.parametrize("spec", spec_params([s for s in SPECS if s.min_rows == 1]))
@SETTINGS
@given(row=arrays(np.float64, (1, 5), elements=ENTRIES), scale=SCALES, copies=st.integers(1, 6))
def test_identical_rows_give_that_row(spec: Spec, row: np.ndarray, scale: float, copies: int) -> None:
    matrix = np.repeat(row * scale, copies, axis=0)
    direction = build(spec.config)(inputs_of(matrix)).direction.numpy()
    np.testing.assert_allclose(direction, matrix[0], rtol=0, atol=atol(spec, matrix))


@pytest.mark.parametrize("spec", spec_params(SPECS))
@SETTINGS
@given(matrix=row_sets(), data=st.data())
def test_permuting_the_rows_keeps_the_direction(spec: Spec, matrix: np.ndarray, data: st.DataObject) -> None:
    k = matrix.shape[0]
    if not usable(spec, matrix) or (spec.order_dependent and k > 2):
        return
    assume(unique(spec, matrix))
    order = np.array(data.draw(st.permutations(range(k))))
    aggregator = build(spec.config)
    plain = aggregator(inputs_of(matrix)).direction.numpy()
    k_inputs = inputs_of(matrix)
    permuted_inputs = AggregationInput(
        k_inputs.matrix[order], k_inputs.num_examples[order], k_inputs.losses[order], None, "float64"
    )
    if spec.order_dependent:  # two rows: the draw from the generator does not matter
        plain = aggregator(AggregationInput(k_inputs.matrix, k_inputs.num_examples, k_inputs.losses)).direction.numpy()
    permuted = aggregator(permuted_inputs).direction.numpy()
    np.testing.assert_allclose(permuted, plain, rtol=0, atol=atol(spec, matrix))


@pytest.mark.parametrize("spec", spec_params([s for s in SPECS if s.homogeneous]))
@SETTINGS
@given(matrix=row_sets(), factor=st.sampled_from([1e-4, 0.5, 3.0, 1e4]))
def test_scaling_the_rows_scales_the_direction(spec: Spec, matrix: np.ndarray, factor: float) -> None:
    """Positive homogeneity: a server learning rate and the size of the updates are interchangeable."""
    if not usable(spec, matrix):
        return
    assume(unique(spec, matrix))
    aggregator = build(spec.config)
    plain = aggregator(inputs_of(matrix)).direction.numpy()
    scaled = aggregator(inputs_of(factor * matrix)).direction.numpy()
    np.testing.assert_allclose(scaled / factor, plain, rtol=0, atol=atol(spec, matrix))


@pytest.mark.parametrize("spec", spec_params([s for s in SPECS if s.conflict_free or s.conflict_free_two_rows]))
@SETTINGS
@given(matrix=row_sets())
def test_the_direction_conflicts_with_no_row(spec: Spec, matrix: np.ndarray) -> None:
    if not usable(spec, matrix) or (not spec.conflict_free and matrix.shape[0] != 2):
        return
    result = build(spec.config)(inputs_of(matrix))
    inner = matrix @ result.direction.numpy()
    scale = float(np.linalg.norm(matrix, axis=1).max()) ** 2
    # UPGrad projects onto the dual cone of G + reg_eps * trace(G) * I, which allows this much
    slack = spec.reg_eps * float((matrix**2).sum()) * float(np.abs(result.weights.numpy()).max())
    assert inner.min() >= -(slack + (1e-7 + spec.extra_tolerance) * scale), inner


@pytest.mark.parametrize("spec", spec_params(SPECS))
@settings(max_examples=max(5, EXAMPLES // 3), deadline=None)
@given(matrix=row_sets(), where=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_rows_are_refused(spec: Spec, matrix: np.ndarray, where: st.DataObject, bad: float) -> None:
    if not usable(spec, matrix):
        return
    row = where.draw(st.integers(0, matrix.shape[0] - 1))
    matrix = matrix.copy()
    matrix[row, where.draw(st.integers(0, matrix.shape[1] - 1))] = bad
    with pytest.raises(NonFiniteAggregate) as refused:
        build(spec.config)(inputs_of(matrix))
    assert refused.value.rows == [row]


@pytest.mark.parametrize("spec", spec_params([s for s in SPECS if s.min_rows <= 3]))
def test_huge_float32_rows_do_not_overflow_the_gramian(spec: Spec) -> None:
    """Squared norms of 1e40 overflow float32: the Gramian is then accumulated in float64."""
    matrix = np.array([[1e20, -2e20, 3e19], [-1e20, 1e20, 2e20], [2e20, 1e19, -1e20]])
    inputs = inputs_of(matrix, dtype=torch.float32)
    inputs = AggregationInput(inputs.matrix, inputs.num_examples, inputs.losses, inputs.generator, "float32")
    direction = build(spec.config)(inputs).direction
    assert direction.dtype == torch.float32 and bool(torch.isfinite(direction).all())


def test_non_finite_messages_name_the_rows_or_the_overflow() -> None:
    rows = torch.tensor([[1.0, 2.0, 3.0, 4.0], [float("nan"), 0.0, 0.0, 0.0], [0.0, float("inf"), 0.0, 0.0]])
    refused = NonFiniteAggregate(rows)
    assert str(refused) == "rows [1, 2] of 3 hold NaN or infinite entries"
    assert refused.rows == [1, 2]
    finite_rows = torch.tensor([[3e38, 0.0], [0.0, 1e38]])  # float32: their sum of squares overflows
    overflow = NonFiniteAggregate(finite_rows)
    assert str(overflow) == "the aggregate of finite rows overflowed torch.float32 (largest row norm 3e+38)"
    assert overflow.rows == []
