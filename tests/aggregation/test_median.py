"""Coordinate-wise median (Yin et al., ICML 2018) against the published rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.methods.aggregation import AggregationInput, CoordinateMedian, FedAvg, order_statistics
from fedmtl.methods.aggregation.order_statistics import column_median


def inputs(rows: torch.Tensor, num_examples: torch.Tensor | None = None) -> AggregationInput:
    counts = torch.ones(rows.shape[0], dtype=torch.float64) if num_examples is None else num_examples
    return AggregationInput(rows, counts)


def test_hand_computed_odd_and_even_counts() -> None:
    odd = torch.tensor([[1.0, 10.0, -3.0], [2.0, 0.0, 5.0], [100.0, 4.0, 1.0]], dtype=torch.float64)
    result = CoordinateMedian()(inputs(odd))
    assert result.direction.tolist() == [2.0, 4.0, 1.0]
    assert result.weights is None  # each coordinate may come from another row: not a combination of rows
    even = torch.tensor([[1.0], [3.0], [7.0], [100.0]], dtype=torch.float64)
    assert CoordinateMedian()(inputs(even)).direction.tolist() == [5.0]  # mean of the two middle values


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 10])
def test_matches_numpy_median(k: int, dtype: torch.dtype) -> None:
    rows = torch.randn(k, 50, generator=torch.Generator().manual_seed(k), dtype=torch.float64).to(dtype)
    expected = torch.from_numpy(np.median(rows.double().numpy(), axis=0)).to(dtype)
    torch.testing.assert_close(CoordinateMedian()(inputs(rows)).direction, expected)


def test_column_chunks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = torch.randn(6, 101, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = column_median(rows)
    monkeypatch.setattr(order_statistics, "CHUNK", 7)
    torch.testing.assert_close(column_median(rows), whole, rtol=0, atol=0)


def test_one_huge_outlier_row_is_ignored_where_the_mean_is_dragged_away() -> None:
    generator = torch.Generator().manual_seed(1)
    honest = 1.0 + 0.1 * torch.randn(6, 20, generator=generator, dtype=torch.float64)
    rows = torch.cat([honest, torch.full((1, 20), 1e6, dtype=torch.float64)])
    direction = CoordinateMedian()(inputs(rows)).direction
    assert bool((direction >= honest.min(dim=0).values).all() and (direction <= honest.max(dim=0).values).all())
    assert float(FedAvg()(inputs(rows)).direction.min()) > 1e5


def test_example_counts_are_ignored() -> None:
    rows = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    skewed = torch.tensor([1e6, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        CoordinateMedian()(inputs(rows, skewed)).direction, CoordinateMedian()(inputs(rows)).direction
    )


def test_trimming_half_the_rows_or_more_is_refused() -> None:
    from fedmtl.methods.aggregation.order_statistics import column_trimmed_mean

    for trim, k in [(2, 4), (3, 5), (-1, 3)]:
        with pytest.raises(ValueError) as raised:
            column_trimmed_mean(torch.ones(k, 2), trim)
        assert str(raised.value) == f"cannot trim {trim} values off each end of {k}"
    torch.testing.assert_close(column_trimmed_mean(torch.tensor([[1.0], [5.0], [2.0]]), 1), torch.tensor([2.0]))
