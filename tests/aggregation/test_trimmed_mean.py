"""Coordinate-wise trimmed mean (Yin et al., ICML 2018) against the published rule and SciPy's ``trim_mean``."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from fedmtl.core.errors import ConfigError
from fedmtl.core.typed import parse
from fedmtl.methods.aggregation import AggregationInput, Aggregator, TrimmedMean
from fedmtl.methods.aggregation.trimmed_mean import trim_count


def inputs(rows: torch.Tensor) -> AggregationInput:
    return AggregationInput(rows, torch.ones(rows.shape[0], dtype=torch.float64))


def test_hand_computed_example() -> None:
    rows = torch.tensor([[1.0, -5.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]], dtype=torch.float64)
    result = TrimmedMean(beta=0.2)(inputs(rows))  # floor(0.2 * 5) = 1 value off each end of every column
    assert result.direction.tolist() == [3.0, 1.0]
    assert result.weights is None


def test_trim_count_rounds_down_and_absorbs_float_error() -> None:
    assert [trim_count(0.3, 10), trim_count(0.29, 100), trim_count(0.1, 5), trim_count(0.49, 3)] == [3, 29, 0, 1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("k", "beta"), [(1, 0.4), (3, 0.34), (5, 0.2), (10, 0.1), (10, 0.3), (11, 0.45), (8, 0.0)])
def test_matches_scipy_trim_mean(k: int, beta: float, dtype: torch.dtype) -> None:
    """SciPy's ``trim_mean(a, p)`` cuts ``int(p * K)`` values off each end: the same rule."""
    rows = torch.randn(k, 40, generator=torch.Generator().manual_seed(k), dtype=torch.float64).to(dtype)
    expected = torch.from_numpy(stats.trim_mean(rows.double().numpy(), beta, axis=0)).to(dtype)
    torch.testing.assert_close(TrimmedMean(beta=beta)(inputs(rows)).direction, expected)


def test_beta_zero_is_the_plain_mean() -> None:
    rows = torch.randn(6, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(TrimmedMean(beta=0.0)(inputs(rows)).direction, rows.mean(dim=0))


def test_one_huge_outlier_row_is_trimmed_away() -> None:
    generator = torch.Generator().manual_seed(1)
    honest = 1.0 + 0.1 * torch.randn(9, 20, generator=generator, dtype=torch.float64)
    rows = torch.cat([honest[:4], torch.full((1, 20), -1e6, dtype=torch.float64), honest[4:]])
    direction = TrimmedMean(beta=0.1)(inputs(rows)).direction
    assert bool((direction >= honest.min(dim=0).values).all() and (direction <= honest.max(dim=0).values).all())


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7])
def test_beta_outside_zero_to_half_is_a_config_error(beta: float) -> None:
    with pytest.raises(ConfigError, match=r"server\.aggregator.*beta"):
        parse(Aggregator, {"name": "trimmed_mean", "beta": beta}, "server.aggregator")


@pytest.mark.parametrize(("k", "beta"), [(5, 0.2), (10, 0.3), (11, 0.45), (50, 0.1)])
def test_matches_torchjds_trimmed_mean_in_chunks(k: int, beta: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchjd.aggregation import TrimmedMean as Reference

    from fedmtl.methods.aggregation import order_statistics

    monkeypatch.setattr(order_statistics, "CHUNK", 13)  # several chunks, one of them partial
    rows = torch.randn(k, 100, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    expected = Reference(trim_number=trim_count(beta, k))(rows)
    torch.testing.assert_close(TrimmedMean(beta=beta)(inputs(rows)).direction, expected)


def test_trim_count_leaves_at_least_one_row_and_is_an_integer() -> None:
    # beta 0.5 asks for half of each end: capped at (K - 1) // 2 so that one row remains
    for beta, rows, expected in [(0.5, 4, 1), (0.5, 5, 2), (0.5, 2, 0), (0.3, 10, 3)]:
        count = trim_count(beta, rows)
        assert count == expected and isinstance(count, int)
