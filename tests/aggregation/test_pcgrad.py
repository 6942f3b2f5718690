"""PCGrad against the published rule (Yu et al., NeurIPS 2020), recomputed in parameter space."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedmtl.methods.aggregation import AggregationInput, PCGrad
from fedmtl.methods.aggregation.pcgrad import project_conflicts

pytestmark = pytest.mark.usefixtures("both_projection_loops")  # the native kernel and the torch loop


def published_pcgrad(rows: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Mean of the projected rows; row ``i`` visits ``orders[i]`` and projects on the original rows."""
    projected = []
    for i, order in enumerate(orders):
        g = rows[i].clone()
        for j in order:
            dot = g @ rows[j]
            if dot < 0:
                g = g - dot / (rows[j] @ rows[j]) * rows[j]
        projected.append(g)
    return torch.stack(projected).mean(dim=0)


def inputs(rows: torch.Tensor, generator: torch.Generator | None = None) -> AggregationInput:
    return AggregationInput(rows, torch.ones(rows.shape[0]), generator=generator)


def test_two_conflicting_rows_match_the_closed_form() -> None:
    g1 = torch.tensor([1.0, 0.2, -0.5], dtype=torch.float64)
    g2 = torch.tensor([-2.0, 1.0, 0.3], dtype=torch.float64)
    assert g1 @ g2 < 0
    g1_projected = g1 - (g1 @ g2) / (g2 @ g2) * g2
    g2_projected = g2 - (g1 @ g2) / (g1 @ g1) * g1
    expected = (g1_projected + g2_projected) / 2
    for generator in (None, torch.Generator().manual_seed(3)):
        result = PCGrad()(inputs(torch.stack([g1, g2]), generator))
        torch.testing.assert_close(result.direction, expected, rtol=0, atol=1e-12)
        assert float(result.direction @ g1) >= 0 and float(result.direction @ g2) >= 0


def test_without_a_generator_rows_visit_the_others_in_index_order() -> None:
    rows = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert int((rows @ rows.T < 0).sum()) >= 4
    orders = [[j for j in range(5) if j != i] for i in range(5)]
    expected = published_pcgrad(rows, orders)
    torch.testing.assert_close(PCGrad()(inputs(rows)).direction, expected, rtol=0, atol=1e-12)


def test_with_a_generator_the_result_is_pcgrad_for_some_visiting_orders() -> None:
    rows = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    candidates = [
        published_pcgrad(rows, list(map(list, choice)))
        for choice in itertools.product(*(itertools.permutations([j for j in range(3) if j != i]) for i in range(3)))
    ]
    for seed in range(10):
        direction = PCGrad()(inputs(rows, torch.Generator().manual_seed(seed))).direction
        assert min(float((direction - c).abs().max()) for c in candidates) < 1e-12


def test_different_seeds_can_give_different_results() -> None:
    rows = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    directions = {tuple(PCGrad()(inputs(rows, torch.Generator().manual_seed(s))).direction.tolist()) for s in range(10)}
    assert len(directions) > 1


def test_each_rows_visiting_order_sorts_float64_uniform_draws_from_the_generator() -> None:
    from fedmtl.methods.aggregation.pcgrad import pcgrad_orders

    k = 6
    keys = torch.rand(k, k, generator=torch.Generator().manual_seed(3), dtype=torch.float64).tolist()
    expected = [sorted((j for j in range(k) if j != i), key=lambda j: keys[i][j]) for i in range(k)]
    assert pcgrad_orders(k, torch.Generator().manual_seed(3)).tolist() == expected
    assert pcgrad_orders(3, None).tolist() == [[1, 2], [0, 2], [0, 1]]


def test_a_row_whose_squared_norm_underflowed_to_zero_is_never_a_projection_target() -> None:
    # a float32 Gramian of a row of entries ~1e-25 has 0 on its diagonal (1e-50 underflows) but not in
    # its dot product with a row of ~1e20: that row is not projected onto it (no division by zero)
    gram = torch.tensor([[1.0, -0.5], [-0.5, 0.0]], dtype=torch.float64)
    coefficients = project_conflicts(gram, torch.tensor([[1], [0]]))
    assert torch.equal(coefficients, torch.tensor([[1.0, 0.0], [0.5, 1.0]], dtype=torch.float64))
