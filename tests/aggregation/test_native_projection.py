"""PCGrad's and FedFV's conflict projection in native code against the torch loop, and the fall-back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from fedmtl.methods.aggregation import native_projection
from fedmtl.methods.aggregation.native_projection import compiled_projection, project_conflicts_native
from fedmtl.methods.aggregation.pcgrad import orders_skipping_self, pcgrad_orders, project_conflicts
from tests.aggregation._kernels import fake_compiler, needs_compiler


def conflicting_gram(k: int, seed: int, zero_rows: int = 0) -> torch.Tensor:
    """The float64 Gramian of ``k`` rows in 6 dimensions (so many pairs conflict), the last ``zero_rows`` zero."""
    rows = torch.randn(k, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows[k - zero_rows :] = 0
    return rows @ rows.T


@needs_compiler
@pytest.mark.parametrize("k", [1, 2, 3, 7, 50, 130])
def test_the_kernel_gives_the_torch_loops_bits(k: int, kernel_cache: Path) -> None:
    gram = conflicting_gram(k, seed=k, zero_rows=min(2, k - 1))
    frozen = torch.rand(k, generator=torch.Generator().manual_seed(1)) < 0.3
    random_orders = pcgrad_orders(k, torch.Generator().manual_seed(k))
    for orders in (random_orders, orders_skipping_self(-gram), random_orders.int()):  # int32 orders: widened
        for rows_frozen in (None, frozen):
            expected = project_conflicts(gram, orders, rows_frozen, native=False)
            assert k < 7 or not torch.equal(expected, torch.eye(k, dtype=torch.float64))  # rows project
            assert torch.equal(project_conflicts(gram, orders, rows_frozen), expected)
    assert len(list(kernel_cache.glob("projection-*.so"))) == 1


@needs_compiler
def test_rows_split_over_threads_give_the_same_bits(kernel_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = 61
    wide = conflicting_gram(k + 3, seed=5)
    gram = wide[:k, :k]  # rows strided in a wider matrix: copied to contiguous rows first
    orders = pcgrad_orders(k, torch.Generator().manual_seed(5))
    expected = project_conflicts(gram, orders, native=False)
    monkeypatch.setattr(native_projection, "ROWS_PER_THREAD", 4)
    threads: list[int] = []
    monkeypatch.setattr(native_projection.torch, "get_num_threads", lambda: 3)
    empty = torch.empty

    def recording_empty(*size: int, **kwargs: object) -> torch.Tensor:
        threads.append(size[0])
        return empty(*size, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(native_projection.torch, "empty", recording_empty)
    assert torch.equal(project_conflicts_native(gram, orders, torch.ones(k, dtype=torch.bool)), expected)
    few = gram[:10, :10]  # 10 rows, 4 a thread: two threads
    few_orders = pcgrad_orders(10, torch.Generator().manual_seed(6))
    expected = project_conflicts(few, few_orders, native=False)
    assert torch.equal(project_conflicts_native(few, few_orders, torch.ones(10, dtype=torch.bool)), expected)
    assert threads == [3, 2]  # each thread's scratch row


@needs_compiler
def test_the_kernel_leaves_its_inputs_unchanged(kernel_cache: Path) -> None:
    gram = conflicting_gram(20, seed=3)
    orders = pcgrad_orders(20, torch.Generator().manual_seed(3))
    before = (gram.clone(), orders.clone())
    project_conflicts(gram, orders)
    assert torch.equal(gram, before[0]) and torch.equal(orders, before[1])


def test_only_float64_gramians_on_the_cpu_take_the_kernel(kernel_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")  # a build that is tried would warn
    gram = conflicting_gram(4, seed=0)
    orders, movable = pcgrad_orders(4, None), torch.ones(4, dtype=torch.bool)
    assert project_conflicts_native(gram.float(), orders, movable) is None
    assert project_conflicts_native(gram.to("meta"), orders, movable) is None
    assert compiled_projection.cache_info().misses == 0  # neither tried a build


def test_without_a_compiler_the_torch_loop_answers_and_says_why_once(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    gram = conflicting_gram(9, seed=2)
    orders = pcgrad_orders(9, torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger=native_projection.__name__):
        assert project_conflicts_native(gram, orders, torch.ones(9, dtype=torch.bool)) is None
        assert torch.equal(project_conflicts(gram, orders), project_conflicts(gram, orders, native=False))
    assert [record.getMessage() for record in caplog.records] == [
        "conflict projection: no native kernel (no C++ compiler '/nonexistent/c++' on PATH (set CXX)); using the torch loop"
    ]
    assert not kernel_cache.exists()


def test_a_failed_build_falls_back_with_the_compilers_first_line(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    fake_compiler(tmp_path, "echo 'projection.cpp:3: error: no' >&2\nexit 1", monkeypatch)
    with caplog.at_level(logging.WARNING, logger=native_projection.__name__):
        assert compiled_projection() is None
    assert "conflict projection: no native kernel (the build failed: projection.cpp:3: error: no)" in caplog.text


def test_orders_of_the_wrong_shape_are_refused_before_the_kernel_reads_them() -> None:
    gram, movable = conflicting_gram(4, seed=0), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"orders \(4, 2\) and movable \(4,\) for a 4 x 4 Gramian"):
        project_conflicts_native(gram, pcgrad_orders(4, None)[:, :2], movable)
    with pytest.raises(ValueError, match=r"movable \(3,\)"):
        project_conflicts_native(gram, pcgrad_orders(4, None), movable[:3])
