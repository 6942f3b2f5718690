"""The float32 Gramian (one GEMM) against the exact float64 one: where it is used, every Gramian
method gives the exact path's weights within float32 tolerance; where the rows are nearly
dependent, the exact Gramian is used instead. ``FEDMTL_TEST_DEVICE=cuda`` runs them on a GPU."""

from __future__ import annotations

import os

import pytest
import torch

from fedmtl.methods.aggregation import AGGREGATORS, AggregationInput, GramianAggregator
from fedmtl.methods.aggregation import gramian as gramian_module
from fedmtl.methods.aggregation.gramian import (
    FLOAT32_MIN_EIGENVALUE,
    centred_gramian,
    exact_gramian,
    full_float32_matmul,
    gramian,
    smallest_correlation_eigenvalue,
)

DEVICE = torch.device(os.environ.get("FEDMTL_TEST_DEVICE", "cpu"))
GRAMIAN_METHODS = sorted(name for name, cls in AGGREGATORS.items() if issubclass(cls, GramianAggregator))


def _inputs(matrix: torch.Tensor, precision: str) -> AggregationInput:
    k = matrix.shape[0]
    losses = torch.linspace(0.5, 1.5, k, dtype=torch.float64, device=matrix.device)
    counts = torch.ones(k, dtype=torch.float64, device=matrix.device)
    return AggregationInput(matrix, counts, losses, torch.Generator().manual_seed(0), precision)


def _well_conditioned(k: int = 12, p: int = 20_000, spread: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(k, p, generator=generator) + 0.5 * torch.randn(1, p, generator=generator)  # cosines about 0.2
    return (rows * torch.logspace(-spread, spread, k)[:, None]).to(DEVICE)


def _correlated(k: int = 8, p: int = 20_000, cosine: float = 0.8) -> torch.Tensor:
    """Pairwise cosines about ``cosine``: smallest correlation eigenvalue about ``1 - cosine``."""
    generator = torch.Generator().manual_seed(5)
    common = torch.randn(1, p, generator=generator)
    return (cosine**0.5 * common + (1 - cosine) ** 0.5 * torch.randn(k, p, generator=generator)).to(DEVICE)


def _nearly_parallel(k: int = 6, p: int = 20_000, cosine_gap: float = 1e-6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    common = torch.randn(1, p, generator=generator, dtype=torch.float64)
    noise = torch.randn(k, p, generator=generator, dtype=torch.float64)
    noise *= (2 * cosine_gap) ** 0.5 * common.norm() / noise.norm(dim=1, keepdim=True)
    return (common + noise).float().to(DEVICE)


def test_float32_gramian_is_one_product_within_1e_5_of_the_exact_one(monkeypatch):
    rows = _well_conditioned()
    exact = exact_gramian(rows)
    monkeypatch.setattr(
        gramian_module, "exact_gramian", lambda *_: pytest.fail("the well-conditioned path must not recompute")
    )
    fast = gramian(rows)
    assert smallest_correlation_eigenvalue(exact) > FLOAT32_MIN_EIGENVALUE
    assert fast.dtype == torch.float64
    assert float((fast - exact).abs().max() / exact.abs().max()) < 1e-5


@pytest.mark.parametrize(
    "rows",
    [_nearly_parallel(), torch.tensor([[0.3, -1.0], [-0.6, 2.0]], device=DEVICE)],
    ids=["cos=1-1e-6", "anti-parallel"],
)
def test_nearly_dependent_rows_get_the_exact_gramian(rows):
    assert smallest_correlation_eigenvalue(exact_gramian(rows)) < FLOAT32_MIN_EIGENVALUE
    assert torch.equal(gramian(rows), exact_gramian(rows))


@pytest.mark.parametrize("cosine", [0.97, 0.985])
def test_rows_sharing_a_large_component_get_the_centred_gramian_accurate_on_their_differences(cosine, monkeypatch):
    rows = _correlated(cosine=cosine)
    exact = exact_gramian(rows)
    assert smallest_correlation_eigenvalue(exact) < FLOAT32_MIN_EIGENVALUE  # the plain float32 product is not enough
    monkeypatch.setattr(gramian_module, "exact_gramian", lambda *_: pytest.fail("these rows must not need float64"))
    fast = gramian(rows)
    # what the solvers act on: the Gramian of the differences between rows, D D^T, of norm ~ (1 - cosine) |g|^2
    centring = torch.eye(rows.shape[0], dtype=torch.float64, device=rows.device) - 1.0 / rows.shape[0]
    spread_exact, spread_fast = centring @ exact @ centring, centring @ fast @ centring
    assert float((spread_fast - spread_exact).abs().max() / spread_exact.abs().max()) < 1e-4


@pytest.mark.parametrize("name", GRAMIAN_METHODS)
@pytest.mark.parametrize(
    "rows",
    [
        _well_conditioned(),
        _well_conditioned(spread=2.0),
        _correlated(),
        _correlated(cosine=0.97),
        _correlated(cosine=0.985),
    ],
    ids=["cosines-0.2", "norms-1e-2..1e2", "cosines-0.8", "cosines-0.97-centred", "cosines-0.985-centred"],
)
def test_every_gramian_method_gives_the_exact_paths_weights_within_float32_tolerance(name, rows, monkeypatch):
    aggregator = AGGREGATORS[name]()
    exact = aggregator(_inputs(rows, "float64"))
    monkeypatch.setattr(gramian_module, "exact_gramian", lambda *_: pytest.fail("these rows must take a float32 path"))
    fast = aggregator(_inputs(rows, "float32"))
    scale = float(exact.weights.abs().max())
    assert float((fast.weights - exact.weights).abs().max()) <= 1e-4 * scale
    assert torch.allclose(fast.direction, exact.direction, rtol=1e-4, atol=1e-4 * float(exact.direction.abs().max()))


def test_the_gramian_is_returned_for_the_diagnostics():
    rows = _well_conditioned(k=4, p=100)
    result = AGGREGATORS["mgda"]()(_inputs(rows, "float32"))
    assert result.gramian is not None and torch.allclose(result.gramian, exact_gramian(rows), rtol=1e-5)
    assert result.direction.device == rows.device


@pytest.mark.parametrize(("name", "builds_one"), [("mgda", True), ("fedavg", False)])
def test_the_server_reuses_the_aggregators_gramian_for_its_diagnostics(name, builds_one, monkeypatch):
    from fedmtl.config.sections import ServerOptimizerConfig
    from fedmtl.federation import server_update

    calls = []
    monkeypatch.setattr(
        server_update, "gramian", lambda matrix, precision, products=None: calls.append(1) or exact_gramian(matrix)
    )
    initial = {"encoder.w": torch.zeros(50)}
    updater = server_update.ServerUpdater(
        initial, AGGREGATORS[name](), ServerOptimizerConfig(), seed=0, device=DEVICE.type
    )
    states = [{"encoder.w": torch.randn(50, generator=torch.Generator().manual_seed(i))} for i in range(3)]
    diagnostics = updater.step([0, 1, 2], states, [1.0, 1.0, 1.0])
    assert len(calls) == (0 if builds_one else 1)  # one Gramian per round either way
    assert len(diagnostics.cosines_upper) == 3


def test_the_gramian_product_runs_without_tf32_and_restores_the_users_setting():
    torch.set_float32_matmul_precision("high")  # what users set for fast training on GPUs
    try:
        with full_float32_matmul():
            assert torch.get_float32_matmul_precision() == "highest"
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_the_centred_gramian_accumulates_its_chunks_and_the_mean_norm_in_float64() -> None:
    # one column per chunk: every float32 product is exact, but the sums 2^24 + 1 are not float32 numbers
    rows = torch.tensor([[8192.0, 2.0], [0.0, 0.0]])  # mean (4096, 1), deviations +-(4096, 1)
    centred, error_scale = centred_gramian(rows, chunk=1)
    assert centred.dtype == torch.float64
    assert torch.equal(centred, torch.tensor([[67108868.0, 0.0], [0.0, 0.0]], dtype=torch.float64))  # rows @ rows.T
    assert error_scale == (2**24 + 1) + 2 * (2**24 + 1)  # max |d|^2 + 2 max |d| |m|, here |d| = |m|


def test_the_centred_gramians_error_scale_below_one():
    rows = torch.tensor([[1.5, 0.0], [0.5, 0.0]])  # mean (1, 0), deviations +-(0.5, 0): |d|^2 = 0.25
    _, error_scale = centred_gramian(rows)
    assert error_scale == 0.25 + 2 * (0.25 * 1.0) ** 0.5


@pytest.mark.parametrize("name", ["mgda", "upgrad", "nash_mtl"])
def test_one_row_is_its_own_aggregate_with_weight_one_of_its_dtype_and_device(name: str) -> None:
    aggregator = AGGREGATORS[name]()
    row = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    result = aggregator.aggregate(AggregationInput(matrix=row, num_examples=torch.ones(1)))
    assert torch.equal(result.direction, row[0]) and torch.equal(result.weights, torch.ones(1, dtype=torch.float64))
    assert result.weights.dtype == torch.float64
    on_meta = AggregationInput(matrix=torch.empty(1, 2, device="meta"), num_examples=torch.ones(1))
    assert aggregator.aggregate(on_meta).weights.device.type == "meta"


@pytest.mark.parametrize("name", ["mgda", "upgrad", "nash_mtl"])
def test_weights_solved_in_float64_are_returned_in_the_rows_dtype(name: str) -> None:
    rows = torch.tensor([[1.0, 0.0], [-0.5, 1.0]])  # float32
    weights = AGGREGATORS[name]().aggregate(AggregationInput(matrix=rows, num_examples=torch.ones(2))).weights
    assert weights is not None and weights.dtype == torch.float32


def test_half_precision_rows_are_multiplied_in_float32() -> None:
    """Rows in float16 or bfloat16 (a half-precision model's update) get the float32 product, not one
    accumulated in their own 11 or 8 bits of mantissa."""
    generator = torch.Generator().manual_seed(6)
    rows = _well_conditioned(k=4, p=4_000)
    for dtype in (torch.float16, torch.bfloat16):
        low = (rows + 0.01 * torch.randn(rows.shape, generator=generator).to(DEVICE)).to(dtype)
        single = low.float()
        with full_float32_matmul():
            expected = (single @ single.T).double()
        assert torch.equal(gramian(low), expected)
        assert not torch.equal((low @ low.T).double(), expected)  # the product in half precision differs


def test_cpu_passes_take_cache_sized_chunks_and_accelerators_large_ones() -> None:
    from fedmtl.methods.aggregation.gramian import CPU_CHUNK, GPU_CHUNK, default_chunk

    assert CPU_CHUNK < GPU_CHUNK
    assert default_chunk(torch.device("cpu")) == CPU_CHUNK
    for accelerator in ("cuda", "mps", "meta"):
        assert default_chunk(torch.device(accelerator)) == GPU_CHUNK


def test_inputs_whose_counts_or_losses_do_not_match_the_rows_are_refused_naming_both_shapes() -> None:
    rows, counts = torch.zeros(3, 2), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^num_examples must have shape \(3,\), got \(2,\)$"):
        AggregationInput(rows, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^losses must have shape \(3,\), got \(3, 1\)$"):
        AggregationInput(rows, counts, torch.ones(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^matrix must be \[K, P\] with K >= 1, got shape \(0, 2\)$"):
        AggregationInput(torch.zeros(0, 2), torch.ones(0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^matrix must be \[K, P\] with K >= 1, got shape \(3,\)$"):
        AggregationInput(torch.zeros(3), counts)  # one vector is not K rows
    AggregationInput(torch.zeros(3, 0), counts)  # rows of no parameters: nothing to aggregate, but well formed


def test_float64_rows_with_float64_precision_get_their_own_product() -> None:
    # rows already in float64: one float64 product is exact to float64 rounding, no chunked accumulation
    matrix = torch.randn(7, 200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # several chunks
    assert torch.equal(gramian(matrix, "float64"), matrix @ matrix.T)
