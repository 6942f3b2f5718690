"""The comparator network behind the median and the trimmed mean, against sorting.

Batcher's network is checked by the 0-1 principle (Knuth, TAOCP vol. 3, 5.3.4, theorem Z: a comparator
network sorts every input if it sorts every sequence of zeros and ones) and by its published size
``(t^2 - t + 4) 2^(t-2) - 1`` comparators on ``2^t`` wires; the pruned networks against ``torch.sort``
on random columns with ties, in chunks and threads."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedmtl.methods.aggregation import order_statistics
from fedmtl.methods.aggregation.order_statistics import batcher_network, column_ranks, comparator_network


@pytest.mark.parametrize("rows", range(1, 13))
def test_the_network_sorts_every_zero_one_column(rows: int) -> None:
    columns = torch.tensor(list(itertools.product((0.0, 1.0), repeat=rows))).T  # [rows, 2^rows]
    ranked = column_ranks(columns, range(rows))
    assert torch.equal(ranked, columns.sort(dim=0).values)


@pytest.mark.parametrize("t", range(1, 8))
def test_batchers_network_on_a_power_of_two_has_its_published_size(t: int) -> None:
    assert len(batcher_network(2**t)) == (t * t - t + 4) * 2 ** (t - 2) - 1


def test_comparators_join_two_real_wires_low_to_high() -> None:
    for rows in (5, 50, 65):
        assert all(0 <= low < high < rows for low, high in batcher_network(rows))


def test_pruning_keeps_only_what_the_wanted_ranks_need() -> None:
    assert comparator_network(50, tuple(range(50))) == tuple(batcher_network(50))
    assert len(comparator_network(50, (24, 25))) == 330  # the median of 50: 330 of 403
    assert comparator_network(1, (0,)) == ()


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 17, 50, 64, 65])
def test_ranks_equal_sorting_on_random_columns_with_ties(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(rows)
    matrix = torch.randint(-4, 5, (rows, 301), generator=generator).double()  # many ties
    ranks = sorted({0, rows - 1, rows // 2, *torch.randint(0, rows, (4,), generator=generator).tolist()})
    expected = matrix.sort(dim=0).values[ranks]
    assert torch.equal(column_ranks(matrix, ranks), expected)  # one chunk
    monkeypatch.setattr(order_statistics, "CHUNK", 7)  # 43 chunks, the last one partial
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):  # inline, and chunks spread over two threads
            torch.set_num_threads(count)
            assert torch.equal(column_ranks(matrix, ranks), expected)
    finally:
        torch.set_num_threads(threads)


def test_the_input_is_left_as_it_was() -> None:
    matrix = torch.randn(9, 11, generator=torch.Generator().manual_seed(0))
    before = matrix.clone()
    column_ranks(matrix, range(9))  # one chunk covers every column: a view would be sorted in place
    assert torch.equal(matrix, before)


def test_ranks_outside_the_rows_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ranks \[0, 3\] outside 0\.\.2"):
        column_ranks(torch.zeros(3, 4), [0, 3])
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        column_ranks(torch.zeros(3, 4), [-1])


def test_ranks_keep_the_matrix_dtype() -> None:
    matrix = torch.tensor([[1.0 + 1e-12, 3.0], [1.0, 2.0]], dtype=torch.float64)  # 1 + 1e-12 is 1 in float32
    ranked = column_ranks(matrix, [0, 1])
    assert ranked.dtype == torch.float64 and ranked[1, 0].item() == 1.0 + 1e-12


def test_cpu_chunks_spread_over_threads_and_accelerator_chunks_go_one_after_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(order_statistics, "CHUNK", 10)
    monkeypatch.setattr(order_statistics, "ACCELERATOR_CHUNK", 100)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert order_statistics.chunking(torch.device("cpu"), 25) == (range(0, 25, 10), 2)
        torch.set_num_threads(8)
        assert order_statistics.chunking(torch.device("cpu"), 25) == (range(0, 25, 10), 3)  # one thread a chunk
        assert order_statistics.chunking(torch.device("cpu"), 5) == (range(0, 5, 10), 1)
        for accelerator in ("cuda", "mps", "meta"):
            assert order_statistics.chunking(torch.device(accelerator), 250) == (range(0, 250, 100), 1)
    finally:
        torch.set_num_threads(threads)


def test_a_matrix_off_the_cpu_is_ranked_on_its_device() -> None:
    """The accelerator path (large chunks, no threads), run on the meta device: shapes and device only."""
    ranked = column_ranks(torch.empty(5, 3, device="meta"), [0, 4])
    assert ranked.device.type == "meta" and ranked.shape == (2, 3)
