"""Fixtures of the aggregation tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmtl.methods.aggregation.native_network import compiled_network
from fedmtl.methods.aggregation.native_projection import compiled_projection


def _forget_kernels() -> None:
    compiled_network.cache_clear()
    compiled_projection.cache_clear()


@pytest.fixture
def kernel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty kernel cache folder, and no native kernel loaded in this process (as a new process starts)."""
    folder = tmp_path / "cache" / "fedmtl" / "kernels"  # made with its parents
    monkeypatch.setenv("FEDMTL_KERNEL_CACHE", str(folder))
    _forget_kernels()
    yield folder
    _forget_kernels()


@pytest.fixture(params=["native", "torch"])
def both_projection_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """PCGrad's and FedFV's tests run on the native projection (where a compiler is present) and on the torch
    loop, which machines without a compiler and GPUs run."""
    if request.param == "torch":
        from fedmtl.methods.aggregation import pcgrad

        monkeypatch.setattr(pcgrad, "project_conflicts_native", lambda *args: None)
    return str(request.param)
