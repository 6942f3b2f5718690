"""The Gramian built as rows arrive (``GramianStream``): the same whatever the order, equal to the
one-shot Gramian to float32 rounding, and what Gramian aggregators use when given it."""

from __future__ import annotations

import random

import pytest
import torch

from fedmtl.methods.aggregation import AggregationInput
from fedmtl.methods.aggregation.gramian import exact_gramian, gramian
from fedmtl.methods.aggregation.gramian_stream import CHUNK, TILE_ROWS, GramianStream
from fedmtl.methods.aggregation.mgda import MGDA
from fedmtl.methods.aggregation.torchjd_methods import UPGrad

K = 2 * TILE_ROWS + 3  # two full tiles and a short one
P = CHUNK + 1000  # two column chunks, the second short


def rows(k: int = K, p: int = P, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, p, generator=torch.Generator().manual_seed(seed))


def streamed(matrix: torch.Tensor, order: list[int], precision: str = "float32", skip=()) -> GramianStream:
    stream = GramianStream(matrix.shape[0], matrix.shape[1], precision=precision)
    for slot in order:
        if slot not in skip:
            stream.row(slot).copy_(matrix[slot])
            stream.settle(slot, source=("reply", slot))
    return stream


def test_the_products_are_the_same_bit_for_bit_whatever_order_the_rows_arrive_in():
    matrix = rows()
    orders = [list(range(K)), list(reversed(range(K)))] + [random.Random(s).sample(range(K), K) for s in range(3)]
    products = [streamed(matrix, order).gramian() for order in orders]
    for other in products[1:]:
        assert torch.equal(other, products[0])
    assert torch.equal(products[0], products[0].T)  # exactly symmetric


def scaled_error(products: torch.Tensor, exact: torch.Tensor) -> float:
    """The largest error of an entry relative to ``|g_i| |g_j|`` (how float32 products err)."""
    scale = exact.diagonal().sqrt()
    return float(((products - exact).abs() / (scale[:, None] * scale[None, :])).max())


def test_the_products_equal_the_exact_gramian_to_float32_rounding():
    matrix = rows()
    exact = exact_gramian(matrix)
    assert scaled_error(streamed(matrix, list(range(K))).gramian(), exact) < 1e-5
    assert torch.allclose(streamed(matrix, list(range(K)), precision="float64").gramian(), exact, rtol=1e-12, atol=0)


def test_tiles_are_computed_as_they_complete_and_the_rest_at_the_end():
    matrix, stream = rows(), GramianStream(K, P)
    for slot in range(TILE_ROWS - 1):
        stream.row(slot).copy_(matrix[slot])
        stream.settle(slot)
    assert stream.tile_done == [False, False, False] and not stream.products.any()
    stream.row(TILE_ROWS - 1).copy_(matrix[TILE_ROWS - 1])
    stream.settle(TILE_ROWS - 1)
    assert stream.tile_done == [True, False, False]
    first = slice(0, TILE_ROWS)
    assert scaled_error(stream.products[first, first], exact_gramian(matrix[first])) < 1e-5
    assert not stream.products[TILE_ROWS:].any()  # nothing of the tiles still open
    stream.finish()
    assert all(stream.tile_done)


def test_slots_never_filled_are_zero_rows_and_a_subset_is_the_gramian_of_its_rows():
    matrix = rows()
    missing = {3, TILE_ROWS + 1, K - 1}
    stream = streamed(matrix, random.Random(7).sample(range(K), K), skip=missing)
    keep = [s for s in range(K) if s not in missing]
    assert stream.source(3) is None and stream.source(0) == ("reply", 0)
    assert torch.equal(stream.matrix(keep), matrix[keep])
    full = stream.gramian()
    assert not full[sorted(missing)].any()
    assert torch.equal(stream.gramian(keep), full[keep][:, keep])
    assert stream.matrix() is stream.rows and stream.gramian(list(range(K))) is stream.products


def test_a_slot_is_settled_once():
    stream = GramianStream(2, 3)
    stream.settle(0)
    with pytest.raises(ValueError, match="slot 0 is settled already"):
        stream.settle(0)
    with pytest.raises(ValueError, match="slot 0 is settled already"):
        stream.row(0)
    with pytest.raises(ValueError, match="at least one slot and one parameter, got 0 x 3"):
        GramianStream(0, 3)
    with pytest.raises(ValueError, match="at least one slot and one parameter, got 2 x 0"):
        GramianStream(2, 0)
    single = GramianStream(1, 1)  # the smallest stream: one slot of one parameter
    single.row(0).fill_(3.0)
    single.settle(0)
    assert single.gramian().tolist() == [[9.0]]


def test_a_tile_completes_when_its_own_slots_are_in_whatever_the_earlier_tiles():
    matrix, stream = rows(), GramianStream(K, P)
    for slot in range(TILE_ROWS, 2 * TILE_ROWS):  # the second tile only
        stream.row(slot).copy_(matrix[slot])
        stream.settle(slot)
    assert stream.tile_done == [False, True, False]
    second = slice(TILE_ROWS, 2 * TILE_ROWS)
    assert scaled_error(stream.products[second, second], exact_gramian(matrix[second])) < 1e-5
    assert not stream.products[:TILE_ROWS].any()


@pytest.mark.parametrize("method", [MGDA(), UPGrad()], ids=["mgda", "upgrad"])
def test_gramian_aggregators_use_the_streamed_products(method):
    matrix = rows(k=12, p=3000, seed=1)
    counts = torch.ones(12, dtype=torch.float64)
    stream = streamed(matrix, random.Random(1).sample(range(12), 12))
    given = method(AggregationInput(matrix, counts, products=stream.gramian()))
    own = method(AggregationInput(matrix, counts))
    assert torch.equal(given.gramian, stream.gramian())  # used as it is (well-conditioned rows pass the checks)
    assert torch.allclose(given.weights, own.weights, atol=1e-5) and torch.allclose(
        given.direction, own.direction, atol=1e-5
    )


def test_given_products_are_checked_as_a_fresh_product_would_be():
    base = torch.randn(1, 3000, generator=torch.Generator().manual_seed(2))
    similar = base + 1e-3 * torch.randn(6, 3000, generator=torch.Generator().manual_seed(3))  # nearly parallel rows
    stream = streamed(similar, list(range(6)))
    checked = gramian(similar, products=stream.gramian())
    assert not torch.equal(checked, stream.gramian())  # recomputed more precisely, as without products
    assert torch.equal(checked, gramian(similar))


def test_products_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"products must have shape \(2, 2\), got \(3, 3\)"):
        AggregationInput(torch.ones(2, 4), torch.ones(2), products=torch.zeros(3, 3))
