"""FedFV (Wang et al., IJCAI 2021) on a three-client case small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fedmtl.core.errors import ConfigError
from fedmtl.core.typed import parse
from fedmtl.methods.aggregation import AggregationInput, Aggregator, FedFV

pytestmark = pytest.mark.usefixtures("both_projection_loops")  # the native kernel and the torch loop

# Losses rank the clients a < b < c. Dots: a.b = -1, a.c = 1, b.c = -1.5; squared norms 1, 2, 1.25.
A, B, C = [1.0, 0.0], [-1.0, 1.0], [1.0, -0.5]


def three_clients(losses: list[float] | None = (0.1, 0.5, 0.9)) -> AggregationInput:
    return AggregationInput(
        matrix=torch.tensor([A, B, C], dtype=torch.float64),
        num_examples=torch.tensor([10.0, 20.0, 30.0]),
        losses=None if losses is None else torch.tensor(losses, dtype=torch.float64),
    )


def test_three_clients_by_hand() -> None:
    # a visits b, c: a.b = -1 -> a + b/2 = (0.5, 0.5); (0.5, 0.5).c = 0.25 >= 0 -> a' = (0.5, 0.5).
    # b visits a, c: b.a = -1 -> b + a = (0, 1); (0, 1).c = -0.5 -> (0, 1) + 0.4 c = (0.4, 0.8).
    # c visits a, b: c.a = 1 >= 0; c.b = -1.5 -> c + 0.75 b = (0.25, 0.25).
    # Mean of projections (1.15, 1.55) / 3, rescaled to the norm of the plain mean (1, 0.5) / 3.
    projected_mean = torch.tensor([1.15, 1.55], dtype=torch.float64) / 3
    expected = projected_mean / projected_mean.norm() * (math.sqrt(1.25) / 3)
    result = FedFV()(three_clients())
    torch.testing.assert_close(result.direction, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.weights @ three_clients().matrix, expected, rtol=0, atol=1e-12)


def test_loss_order_decides_the_result() -> None:
    # Order c < b < a changes b's projections: b visits c first: b.c = -1.5 -> b + 1.2 c = (0.2, 0.4),
    # then (0.2, 0.4).a = 0.2 >= 0. a visits c (no conflict), then b: a + b/2 = (0.5, 0.5). c as before.
    projected_mean = torch.tensor([0.95, 1.15], dtype=torch.float64) / 3
    expected = projected_mean / projected_mean.norm() * (math.sqrt(1.25) / 3)
    result = FedFV()(three_clients(losses=[0.9, 0.5, 0.1]))
    torch.testing.assert_close(result.direction, expected, rtol=0, atol=1e-12)


def test_alpha_keeps_the_largest_loss_clients_unprojected() -> None:
    # ceil((3 - 1) * (1 - 0.5)) = 1: b and c (the two largest losses) keep their updates; a' = (0.5, 0.5).
    # Mean (0.5, 1) / 3 already has the norm of the plain mean, sqrt(1.25) / 3.
    expected = torch.tensor([0.5, 1.0], dtype=torch.float64) / 3
    torch.testing.assert_close(FedFV(alpha=0.5)(three_clients()).direction, expected, rtol=0, atol=1e-12)


def test_alpha_one_is_the_plain_mean() -> None:
    expected = torch.tensor([A, B, C], dtype=torch.float64).mean(dim=0)
    torch.testing.assert_close(FedFV(alpha=1.0)(three_clients()).direction, expected, rtol=0, atol=1e-12)


def test_losses_are_required() -> None:
    with pytest.raises(ValueError, match="fedfv needs client losses"):
        FedFV()(three_clients(losses=None))


def test_history_is_refused() -> None:
    with pytest.raises(ValueError, match=r"tau>0 \(history\) not supported"):
        FedFV(tau=1)
    with pytest.raises(ConfigError, match="server.aggregator"):
        parse(Aggregator, {"name": "fedfv", "tau": 2}, "server.aggregator")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_collinear_conflicting_updates_give_zero_not_rescaled_noise(dtype: torch.dtype) -> None:
    # In one dimension every row conflicts with a row of the other sign and is projected to zero;
    # the projected mean is rounding noise, which FedFV would otherwise rescale to the mean's norm.
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(10, 1, generator=generator, dtype=torch.float64).to(dtype)
    assert bool((rows > 0).any() and (rows < 0).any()) and float(rows.mean().abs()) > 0.01
    losses = torch.rand(10, generator=generator, dtype=torch.float64)
    direction = FedFV()(AggregationInput(rows, torch.ones(10), losses=losses)).direction
    torch.testing.assert_close(direction, torch.zeros(1, dtype=dtype), rtol=0, atol=0)


def test_tied_losses_rank_by_row_index() -> None:
    # equal losses: the order a < b < c, as in test_three_clients_by_hand
    torch.testing.assert_close(
        FedFV()(three_clients(losses=[0.5, 0.5, 0.5])).direction,
        FedFV()(three_clients()).direction,
        rtol=0,
        atol=0,
    )
    many = AggregationInput(
        matrix=torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        num_examples=torch.ones(40),
        losses=torch.ones(40, dtype=torch.float64),
    )
    in_index_order = AggregationInput(many.matrix, many.num_examples, torch.arange(40, dtype=torch.float64))
    torch.testing.assert_close(FedFV()(many).direction, FedFV()(in_index_order).direction, rtol=0, atol=0)


def test_the_kept_share_is_counted_as_in_the_official_code() -> None:
    from fedmtl.methods.aggregation.fedfv import kept_clients

    ascending = torch.arange(10)
    # order[ceil((K - 1) * (1 - alpha)):]: K = 10, alpha = 0.1 -> ceil(8.1) = 9: one client
    assert kept_clients(ascending, 0.1).tolist() == [9]
    assert kept_clients(ascending, 0.5).tolist() == [5, 6, 7, 8, 9]  # ceil(4.5) = 5
    assert kept_clients(ascending, 1.0).tolist() == list(range(10))
    assert kept_clients(ascending, 0.0).tolist() == []


def test_bad_settings_name_the_value() -> None:
    for settings, message in [
        ({"alpha": 1.5}, "alpha must be in [0, 1], got 1.5"),
        ({"alpha": -0.1}, "alpha must be in [0, 1], got -0.1"),
        ({"tau": -1}, "tau must be >= 0, got -1"),
    ]:
        with pytest.raises(ValueError) as raised:
            FedFV(**settings)
        assert str(raised.value) == message
    with pytest.raises(ValueError) as raised:
        FedFV()(three_clients(losses=None))
    assert str(raised.value) == "fedfv needs client losses"
