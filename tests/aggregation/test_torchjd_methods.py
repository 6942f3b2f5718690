"""The torchjd-backed aggregators against torchjd itself and against independent solutions."""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest
import torch
import torchjd.aggregation as tjd
from scipy.optimize import minimize

from fedmtl.methods.aggregation import IMTLG, AggregationInput, AlignedMTL, UPGrad, torchjd_methods

from ._inputs import CONFLICTING, NON_CONFLICTING, RANDOM, Case, for_each_case

HAS_QUADPROG = find_spec("quadprog") is not None and find_spec("qpsolvers") is not None
HAS_CVXPY = find_spec("cvxpy") is not None and find_spec("ecos") is not None


def inputs(rows: torch.Tensor) -> AggregationInput:
    return AggregationInput(rows, torch.ones(rows.shape[0]))


def random_rows(k: int, p: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, p, generator=generator, dtype=torch.float64)
    return rows * torch.exp(torch.randn(k, 1, generator=generator, dtype=torch.float64))


def dual_cone_projection(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``argmin_x ||x - vector||^2`` s.t. ``rows @ x >= 0``, solved in parameter space."""
    result = minimize(
        lambda x: float((x - vector) @ (x - vector)),
        vector,
        jac=lambda x: 2 * (x - vector),
        constraints=[{"type": "ineq", "fun": lambda x: rows @ x, "jac": lambda x: rows}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return result.x


@pytest.mark.parametrize(("k", "p", "seed"), [(2, 5, 0), (3, 6, 1), (5, 8, 2), (4, 10, 3)])
def test_upgrad_is_the_mean_of_the_projections_onto_the_dual_cone(k: int, p: int, seed: int) -> None:
    rows = random_rows(k, p, seed)
    array = rows.numpy()
    expected = np.mean([dual_cone_projection(array, row) for row in array], axis=0)
    result = UPGrad(solver="nnls", reg_eps=0.0)(inputs(rows))
    scale = float(rows.norm(dim=1).max())
    np.testing.assert_allclose(result.direction.numpy(), expected, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("case", CONFLICTING, ids=lambda c: c.id)
def test_upgrad_does_not_conflict_with_any_row(case: Case) -> None:
    result = UPGrad(solver="nnls", reg_eps=0.0)(case.inputs())
    inner = case.matrix.double() @ result.direction.double()
    assert float(inner.min()) >= -1e-5 * float(case.matrix.double().norm(dim=1).max()) ** 2


def test_upgrad_nnls_solver_matches_torchjd_with_the_same_qp() -> None:
    # torchjd's UPGrad with its own weighting code, only the QP solver swapped for the NNLS one.
    for case in RANDOM[:10]:
        rows = case.matrix.double()
        expected = tjd.UPGrad(projector=torchjd_methods.NNLSDualConeProjector(reg_eps=1e-4))(rows)
        torch.testing.assert_close(UPGrad(solver="nnls")(case.inputs()).direction.double(), expected)


@pytest.mark.skipif(not HAS_QUADPROG, reason="torchjd's UPGrad needs qpsolvers and quadprog")
def test_upgrad_equals_torchjds_own_upgrad() -> None:
    def check(case: Case) -> None:
        rows = case.matrix.double()
        expected = tjd.UPGrad()(rows)  # trace >= 1e-4 on these inputs, where the trace normalisation is a no-op
        scale = float(rows.norm(dim=1).max())
        for solver in ("quadprog", "nnls", "batched"):
            result = UPGrad(solver=solver)(inputs(rows))
            torch.testing.assert_close(result.direction, expected, rtol=0, atol=1e-6 * scale)

    for_each_case(RANDOM + CONFLICTING, check)


def test_upgrad_is_scale_equivariant_even_for_tiny_updates() -> None:
    # torchjd treats a Gramian of trace < 1e-4 as zero (and returns the mean); the wrapper normalises first.
    rows = random_rows(4, 6, seed=9)
    small = 1e-4 * rows
    assert float((small**2).sum()) < 1e-4
    large = UPGrad(solver="nnls")(inputs(rows)).direction
    torch.testing.assert_close(UPGrad(solver="nnls")(inputs(small)).direction, 1e-4 * large)
    assert not torch.allclose(large, rows.mean(dim=0))


def test_upgrad_quadprog_needs_its_packages_or_says_which(monkeypatch) -> None:
    """Whether or not they are installed here: with both hidden, the config error names both."""
    from fedmtl.methods.aggregation import torchjd_methods

    real_find_spec = torchjd_methods.find_spec
    monkeypatch.setattr(
        torchjd_methods, "find_spec", lambda name: None if name in ("qpsolvers", "quadprog") else real_find_spec(name)
    )
    with pytest.raises(ImportError, match="qpsolvers, quadprog"):
        UPGrad(solver="quadprog")
    assert UPGrad().solver == "batched"  # the default solver needs neither
    assert UPGrad(solver="nnls").solver == "nnls"  # nor does the SciPy one


@pytest.mark.parametrize("case", RANDOM + CONFLICTING, ids=lambda c: c.id)
def test_imtl_g_equals_torchjd_and_projects_equally_on_unit_rows(case: Case) -> None:
    rows = case.matrix.double()
    result = IMTLG()(inputs(rows))
    scale = float(rows.norm(dim=1).max())
    torch.testing.assert_close(result.direction, tjd.IMTLG()(rows), rtol=1e-6, atol=1e-9 * scale)
    if case.full_rank and case.num_rows > 1:
        projections = rows @ result.direction / rows.norm(dim=1)
        assert float(projections.max() - projections.min()) < 1e-8 * float(result.direction.norm())
        assert abs(float(result.weights.sum()) - 1) < 1e-9


def test_imtl_g_can_point_against_every_row() -> None:
    # Pairwise non-conflicting rows, yet the weights (normalised to sum 1) flip the equal projections
    # negative: the paper's closed form, and torchjd's, both do this.
    case = next(c for c in NON_CONFLICTING if c.id == "nonconflicting-K5-P7-float64")
    rows = case.matrix
    direction = IMTLG()(inputs(rows)).direction
    torch.testing.assert_close(direction, tjd.IMTLG()(rows))
    assert float((rows @ direction).max()) < 0


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_equals_torchjd(scale_mode: str) -> None:
    for case in RANDOM + CONFLICTING:
        rows = case.matrix.double()
        expected = tjd.AlignedMTL(scale_mode=scale_mode)(rows)
        result = AlignedMTL(scale_mode=scale_mode)(inputs(rows)).direction
        torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-9 * float(rows.norm(dim=1).max()))


def test_upgrad_settings_errors_say_what_is_valid(monkeypatch) -> None:
    with pytest.raises(ValueError) as raised:
        UPGrad(reg_eps=-1.0)
    assert str(raised.value) == "reg_eps must be >= 0, got -1.0"
    with pytest.raises(ValueError) as raised:
        UPGrad(solver="cvxpy")  # type: ignore[arg-type]
    assert str(raised.value) == "solver must be one of ['batched', 'nnls', 'quadprog'], got 'cvxpy'"
    monkeypatch.setattr(torchjd_methods, "find_spec", lambda name: None)
    with pytest.raises(ImportError) as missing:
        UPGrad(solver="quadprog")
    assert str(missing.value) == (
        "upgrad with solver 'quadprog' needs the missing package(s) qpsolvers, quadprog; "
        'install them with pip install "torchjd[quadprog_projector]==0.18.0", '
        "or set solver: batched (the default; same QP, solved in torch)"
    )


@pytest.mark.skipif(not HAS_QUADPROG, reason="torchjd's UPGrad needs qpsolvers and quadprog")
def test_upgrad_quadprog_uses_the_configured_regulariser() -> None:
    rows = random_rows(3, 5, seed=4)
    directions = []
    for reg_eps in (0.0, 0.5):
        expected = UPGrad(solver="nnls", reg_eps=reg_eps)(inputs(rows)).direction  # the same QP, solved by NNLS
        torch.testing.assert_close(UPGrad(solver="quadprog", reg_eps=reg_eps)(inputs(rows)).direction, expected)
        directions.append(expected)
    assert not torch.allclose(*directions)  # the regulariser matters for these rows


@pytest.mark.parametrize(
    "projector_class", [torchjd_methods.NNLSDualConeProjector, torchjd_methods.BatchedDualConeProjector]
)
def test_projector_normalises_a_gramian_whose_trace_is_exactly_the_threshold(projector_class) -> None:
    # trace 1e-4 is not below torchjd's threshold: normalised like any larger Gramian, not zeroed
    projector = projector_class(reg_eps=0.0)
    gram = torch.tensor([[5e-5, -4e-5], [-4e-5, 5e-5]], dtype=torch.float64)
    assert float(gram.trace()) == torchjd_methods.TORCHJD_NORM_EPS
    u = torch.eye(2, dtype=torch.float64) / 2
    torch.testing.assert_close(projector(u, gram), projector(u, gram * 1e4), rtol=0, atol=1e-12)
    # by hand: rows at cosine -0.8; e_1 / 2 projected onto {v: G v >= 0 in weight space} needs v_2 = 0.4 v_1
    torch.testing.assert_close(projector(u, gram)[0], torch.tensor([0.5, 0.4], dtype=torch.float64))


@pytest.mark.parametrize(
    "projector_class", [torchjd_methods.NNLSDualConeProjector, torchjd_methods.BatchedDualConeProjector]
)
def test_projector_keeps_the_shape_and_dtype_it_is_given(projector_class) -> None:
    projector = projector_class(reg_eps=0.0)
    gram = torch.tensor([[1.0, -0.8], [-0.8, 1.0]])  # float32
    u = torch.tensor([0.5, 0.0], dtype=torch.bfloat16)  # one vector of weights, in any float dtype
    projected = projector(u, gram)
    assert projected.shape == (2,) and projected.dtype == torch.float32
    torch.testing.assert_close(projected, torch.tensor([0.5, 0.4]), rtol=0, atol=1e-6)


def test_torchjds_projection_gramian_is_symmetrised_trace_normalised_and_regularised_in_float64() -> None:
    from fedmtl.methods.aggregation.torchjd_methods import TORCHJD_NORM_EPS, torchjd_projection_gramian

    G = torch.tensor([[2.0, 1.0], [0.0, 6.0]])  # noqa: N806 (torchjd's names); symmetrised: off-diagonal 0.5
    expected = torch.tensor([[0.25 + 1e-4, 0.0625], [0.0625, 0.75 + 1e-4]], dtype=torch.float64)
    assert torch.equal(torchjd_projection_gramian(G, 1e-4), expected)
    tiny = torch.eye(2, dtype=torch.float64) * (TORCHJD_NORM_EPS / 3)  # trace below the threshold: zeroed
    assert torch.equal(torchjd_projection_gramian(tiny, 1e-4), torch.eye(2, dtype=torch.float64) * 1e-4)


def test_the_nnls_projector_names_its_class_and_regularisation() -> None:
    assert repr(torchjd_methods.NNLSDualConeProjector(1e-4)) == "NNLSDualConeProjector(reg_eps=0.0001)"


def test_the_nnls_projector_prints_as_torchjds_own_projectors_do() -> None:
    assert repr(torchjd_methods.NNLSDualConeProjector(reg_eps=1e-4)) == "NNLSDualConeProjector(reg_eps=0.0001)"
