"""The native comparator network against the torch one, its cache folder, and the fall-back to torch
when no kernel can be built."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import torch

from fedmtl.methods.aggregation import native_build, native_network, order_statistics
from fedmtl.methods.aggregation.native_network import compiled_network, kernel_source
from fedmtl.methods.aggregation.order_statistics import (
    column_median,
    column_rank_mean,
    column_trimmed_mean,
    comparator_network,
    rank_range_network,
    torch_network,
)
from tests.aggregation._kernels import fake_compiler, needs_compiler


@needs_compiler
def test_a_machine_with_a_compiler_builds_kernels_for_both_float_types(kernel_cache: Path) -> None:
    assert native_network.available(torch.float32) and native_network.available(torch.float64)
    assert not native_network.available(torch.float16)  # no C type: the torch network
    assert len(list(kernel_cache.glob("network-*.so"))) == 2


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 17, 50, 65])
def test_the_kernel_gives_the_torch_networks_bits(rows: int, dtype: torch.dtype, kernel_cache: Path) -> None:
    """Ranks and means of ranges, on columns with ties, a width that is no multiple of a vector (301
    columns: 37 full float32 vectors and a partial one), rows strided in a wider matrix."""
    generator = torch.Generator().manual_seed(rows)
    wide = torch.randint(-4, 5, (rows, 310), generator=generator).to(dtype) + torch.rand(
        rows, 310, generator=generator, dtype=dtype
    ).round(decimals=1)
    matrix = wide[:, 3:304]  # row stride 310, columns contiguous
    ranks = sorted({0, rows - 1, rows // 2})
    outputs = (*((rank,) for rank in ranks), tuple(range(rows // 3, rows - rows // 3)))
    network = comparator_network(rows, tuple(ranks))
    kernel = compiled_network(rows, network, outputs, dtype)
    assert kernel is not None
    out = torch.full((len(outputs), 301), float("nan"), dtype=dtype)
    before = wide.clone()
    kernel(matrix, out, 0, 301)
    assert torch.equal(out, torch_network(matrix, network, outputs))
    assert torch.equal(wide, before)  # the input is read, never written


@needs_compiler
def test_the_kernel_writes_only_its_columns(kernel_cache: Path) -> None:
    matrix = torch.randn(7, 40, generator=torch.Generator().manual_seed(0))
    network = comparator_network(7, (3,))
    kernel = compiled_network(7, network, ((3,),), torch.float32)
    assert kernel is not None
    out = torch.zeros(1, 40)
    kernel(matrix, out, 5, 22)  # a start and a stop inside vectors
    expected = torch.zeros(1, 40)
    expected[:, 5:22] = matrix[:, 5:22].sort(dim=0).values[3]
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    ("rows", "low", "high"), [(1, 0, 1), (6, 2, 4), (7, 3, 4), (10, 0, 10), (10, 1, 9), (50, 5, 45)]
)
def test_a_rank_mean_equals_the_mean_of_the_sorted_range(rows: int, low: int, high: int) -> None:
    matrix = torch.randn(rows, 123, generator=torch.Generator().manual_seed(rows), dtype=torch.float64)
    expected = matrix.sort(dim=0).values[low:high].mean(dim=0)
    torch.testing.assert_close(column_rank_mean(matrix, low, high), expected, rtol=1e-12, atol=1e-12)


def test_a_rank_range_is_pruned_to_the_shorter_side() -> None:
    """The trimmed mean of 50 with 5 off each end needs its 10 ends fixed (323 comparators), not its 40
    middle ranks; the median its 2 middle ones (330), not the 48 others."""
    ends = (*range(5), *range(45, 50))
    assert len(comparator_network(50, ends)) < len(comparator_network(50, tuple(range(5, 45))))
    assert rank_range_network(50, 5, 45) == comparator_network(50, ends)
    assert len(comparator_network(50, (24, 25))) < len(comparator_network(50, (*range(24), *range(26, 50))))
    assert rank_range_network(50, 24, 26) == comparator_network(50, (24, 25))
    assert rank_range_network(8, 0, 8) == ()  # every rank: no comparator is needed to sum them all


def test_rank_means_outside_the_rows_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ranks 2\.\.3 outside 0\.\.2"):
        column_rank_mean(torch.zeros(3, 4), 2, 4)
    with pytest.raises(ValueError, match=r"ranks 1\.\.0 outside"):
        column_rank_mean(torch.zeros(3, 4), 1, 1)


def test_without_a_compiler_the_torch_network_answers_and_says_why_once(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    matrix = torch.randn(9, 50, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger=native_network.__name__):
        assert torch.equal(column_median(matrix), matrix.sort(dim=0).values[4])
        column_median(matrix)
    assert [record.getMessage() for record in caplog.records] == [
        "order statistics: no native kernel (no C++ compiler '/nonexistent/c++' on PATH (set CXX)); using the torch network"
    ]
    assert not kernel_cache.exists()


def test_a_failed_build_falls_back_with_the_compilers_first_line(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    fake_compiler(tmp_path, "echo 'network.cpp:1: error: out of luck' >&2\necho second line >&2\nexit 1", monkeypatch)
    matrix = torch.randn(4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger=native_network.__name__):
        torch.testing.assert_close(column_trimmed_mean(matrix, 1), matrix.sort(dim=0).values[1:3].mean(dim=0))
    assert "the build failed: network.cpp:1: error: out of luck" in caplog.text
    assert list(kernel_cache.glob("*.so")) == []  # nothing half-built is left to be loaded later


@needs_compiler
def test_a_built_kernel_is_loaded_from_the_cache_folder_without_compiling(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix = torch.randn(6, 30, generator=torch.Generator().manual_seed(0))
    expected = column_median(matrix)
    built = list(kernel_cache.glob("network-*.so"))
    assert len(built) == 1
    compiled_network.cache_clear()  # as a new process would start

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert compiled_network(6, comparator_network(6, (2, 3)), ((2, 3),), torch.float32) is not None
    assert torch.equal(column_median(matrix), expected)
    assert list(kernel_cache.glob("network-*.so")) == built


def test_a_compiler_that_says_nothing_is_named_by_its_exit_status(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    fake_compiler(tmp_path, "exit 3", monkeypatch)
    with caplog.at_level(logging.WARNING, logger=native_network.__name__):
        assert not native_network.available()
    assert "(the build failed: exit status 3)" in caplog.text


def test_a_compiler_that_hangs_is_given_up_on(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    fake_compiler(tmp_path, "exec sleep 30", monkeypatch)
    monkeypatch.setattr(native_build, "COMPILE_TIMEOUT_S", 0.5)
    with caplog.at_level(logging.WARNING, logger=native_network.__name__):
        assert not native_network.available()
    assert "timed out after 0.5 seconds" in caplog.text


def test_a_network_over_the_limit_stays_on_torch_without_a_build(
    kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")  # a build that is tried fails, with a warning
    network = ((0, 1), (1, 2), (0, 1))
    monkeypatch.setattr(native_network, "MAX_COMPARATORS", 2)
    with caplog.at_level(logging.INFO, logger=native_network.__name__):
        assert compiled_network(3, network, ((1,),), torch.float32) is None
    assert [record.levelname for record in caplog.records] == ["INFO"]  # over the limit: no build tried
    assert "3 comparators, over 2 for a native build" in caplog.text
    caplog.clear()
    monkeypatch.setattr(native_network, "MAX_COMPARATORS", 3)
    with caplog.at_level(logging.INFO, logger=native_network.__name__):
        assert compiled_network(3, network, ((0,),), torch.float32) is None
    assert "no C++ compiler" in caplog.text  # at the limit: the build was tried
    matrix = torch.randn(241, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(column_median(matrix), matrix.sort(dim=0).values[120])  # 3,000+ comparators, on torch


def test_the_median_of_240_rows_and_the_trimmed_mean_of_230_are_built_natively() -> None:
    assert len(rank_range_network(240, 119, 121)) <= native_network.MAX_COMPARATORS
    assert len(rank_range_network(230, 23, 207)) <= native_network.MAX_COMPARATORS  # beta = 0.1


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    assert native_build.one_line(OSError()) == "OSError"
    assert native_build.one_line(OSError("first\nsecond")) == "first"


@needs_compiler
def test_the_build_happens_inside_the_cache_folder(kernel_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built beside its final place, so that the rename into the cache is atomic (one filesystem)."""
    folders: list[Path] = []
    run = subprocess.run

    def recording_run(*args: object, **kwargs: object) -> object:
        folders.append(Path(str(kwargs["cwd"])))
        return run(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "run", recording_run)
    assert native_network.available()
    assert [folder.parent for folder in folders] == [kernel_cache]


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDMTL_KERNEL_CACHE", str(tmp_path / "mine"))
    assert native_build.cache_folder() == tmp_path / "mine"
    monkeypatch.delenv("FEDMTL_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native_build.cache_folder() == tmp_path / "xdg" / "fedmtl" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert native_build.cache_folder() == Path.home() / ".cache" / "fedmtl" / "kernels"


def test_the_source_sums_each_output_in_order_and_divides_only_means() -> None:
    source = kernel_source(3, ((0, 1), (1, 2), (0, 1)), ((1,), (0, 2)), "double")
    assert "typedef double scalar;" in source
    assert "{ vec r = w1; memcpy(out + 0 * out_stride" in source
    assert "{ vec r = w0 + w2; r = r / (scalar)2; memcpy(out + 1 * out_stride" in source
    assert source.count("a < b ? a : b") == 3


def test_a_matrix_with_strided_columns_is_read_as_its_values() -> None:
    matrix = torch.randn(40, 11, generator=torch.Generator().manual_seed(4)).T  # [11, 40], column stride 40
    assert matrix.stride(1) != 1
    assert torch.equal(column_median(matrix), matrix.sort(dim=0).values[5])


def test_the_median_is_the_same_with_either_network(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = torch.randn(50, 1000, generator=torch.Generator().manual_seed(3))
    native = column_median(matrix)
    monkeypatch.setattr(order_statistics, "compiled_network", lambda *args: None)
    assert torch.equal(column_median(matrix), native)
