"""Thin wrappers over torchjd 0.18.0 Gramian weightings: UPGrad, IMTL-G and Aligned-MTL.

Every weighting here is invariant to scaling the Gramian by a positive constant, so each wrapper
passes ``G G^T / trace(G G^T)``. That changes nothing for inputs of ordinary size and removes
torchjd's absolute thresholds, which otherwise bite on small client updates (its UPGrad projector
treats a Gramian of trace below ``1e-4`` as zero and silently returns the plain mean).

Optional solver packages are checked when the aggregator is constructed (that is, when the config
is parsed), and a missing one raises :class:`ImportError` naming it. torchjd itself is imported
when a weighting is first used: every process that parses a config (each simulated client) would
otherwise pay its import, and cvxpy's when installed, about a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.methods.aggregation._solvers import nonneg_shift_qp, psd_sqrt, to_numpy
from fedmtl.methods.aggregation.base import AggregationInput, GramianAggregator
from fedmtl.methods.aggregation.dual_cone_batched import project_rows

# torchjd's default: a Gramian whose trace is below this is treated as zero by its UPGrad projector.
TORCHJD_NORM_EPS = 1e-4


def require_packages(method: str, packages: tuple[str, ...], hint: str) -> None:
    """Raise :class:`ImportError` naming every package of ``packages`` that is not importable."""
    missing = [package for package in packages if find_spec(package) is None]
    if missing:
        raise ImportError(f"{method} needs the missing package(s) {', '.join(missing)}; {hint}")


def trace_normalized(gram: torch.Tensor) -> torch.Tensor:
    """``gram / trace(gram)``, or ``gram`` unchanged when its trace is not positive (all-zero rows)."""
    gram = gram.detach()
    trace = gram.diagonal().sum()
    return gram / trace if trace > 0 else gram


def torchjd_projection_gramian(G: torch.Tensor, reg_eps: float) -> torch.Tensor:  # noqa: N803 (torchjd's names)
    """The Gramian torchjd's ``QuadprogProjector`` solves on: float64, trace-normalised (zeroed when the trace
    is below ``1e-4``), plus ``reg_eps * I``."""
    gram = G.detach().to(torch.float64)
    gram = (gram + gram.T) / 2
    trace = float(gram.diagonal().sum())
    gram = gram / trace if trace >= TORCHJD_NORM_EPS else torch.zeros_like(gram)
    return gram + reg_eps * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)


class NNLSDualConeProjector:
    """torchjd's dual-cone projection QP, solved exactly with SciPy's NNLS instead of quadprog
    (a ``torchjd.linalg.DualConeProjector`` by its interface: torchjd calls it, it checks no type).

    Same problem as :class:`torchjd.linalg.QuadprogProjector` (:func:`torchjd_projection_gramian`): each
    ``u`` maps to ``argmin_{v >= u} v^T G v``. Substituting ``v = u + z`` with ``S = sqrt(G)`` gives the
    NNLS problem ``min_{z >= 0} ||S z + S u||^2``, which Lawson-Hanson solves with an exact active set.
    """

    def __init__(self, reg_eps: float) -> None:
        self.reg_eps = reg_eps

    def __repr__(self) -> str:
        """As torchjd's own projectors print (it shows in UPGrad's repr)."""
        return f"{type(self).__name__}(reg_eps={self.reg_eps})"

    def __call__(self, U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:  # noqa: N803 (torchjd's names)
        gram = to_numpy(torchjd_projection_gramian(G, self.reg_eps))
        root = psd_sqrt(gram)
        lower = U.detach().to("cpu", torch.float64).numpy().reshape(-1, gram.shape[0])
        projected = np.stack([nonneg_shift_qp(root, row) for row in lower]).reshape(U.shape)
        return torch.as_tensor(projected, dtype=G.dtype, device=G.device)


class BatchedDualConeProjector(NNLSDualConeProjector):
    """The same QP as :class:`NNLSDualConeProjector`, every row's projection solved together by batched
    primal-dual active-set Newton steps in torch (:mod:`~fedmtl.methods.aggregation.dual_cone_batched`),
    on the Gramian's device."""

    def __call__(self, U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:  # noqa: N803 (torchjd's names)
        gram = torchjd_projection_gramian(G, self.reg_eps)
        lower = U.detach().to(gram.device, torch.float64).reshape(-1, gram.shape[0])
        return project_rows(gram, lower).reshape(U.shape).to(G.dtype)


def _quadprog_projector(reg_eps: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from torchjd.linalg import QuadprogProjector

    return QuadprogProjector(norm_eps=TORCHJD_NORM_EPS, reg_eps=reg_eps)  # type: ignore[return-value]  # G: a PSD Tensor


_PROJECTORS: dict[str, Callable[[float], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "quadprog": _quadprog_projector,
    "nnls": lambda reg_eps: NNLSDualConeProjector(reg_eps=reg_eps),
    "batched": lambda reg_eps: BatchedDualConeProjector(reg_eps=reg_eps),
}
_PROJECTOR_PACKAGES: dict[str, tuple[str, ...]] = {"quadprog": ("qpsolvers", "quadprog"), "nnls": (), "batched": ()}


@dataclass(frozen=True)
class UPGrad(GramianAggregator):
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, 2024).

    Variant implemented: torchjd 0.18.0 ``UPGradWeighting`` with the default (uniform) preference
    vector: project every row onto the dual cone of all rows and average, i.e. weights
    ``sum_i argmin_{v >= e_i / K} v^T G v``, with the Gramian trace-normalised and regularised by
    ``reg_eps * I`` (torchjd's default ``1e-4``). ``solver`` (one QP per row, all on the same Gramian):
    ``batched`` (the default) solves the ``K`` QPs together, exactly, with batched active-set Newton steps
    in torch (:class:`BatchedDualConeProjector`); ``quadprog`` is torchjd's own ``QuadprogProjector`` (one
    quadprog call per row; needs the ``qpsolvers`` and ``quadprog`` packages); ``nnls`` solves each QP
    exactly with SciPy's NNLS (:class:`NNLSDualConeProjector`). On the tests the three agree to 1e-6
    of the rows' scale (``batched`` and ``nnls`` to 1e-7 of the largest weight).
    The result has a non-negative inner product with every row (up to
    ``reg_eps``) and equals the plain mean when no two rows conflict.

    Scale: torchjd's, unchanged. It is mean-scaled: ``K`` identical rows give that row (every row
    is already in the dual cone, so the weights are ``1/K``). The weights need not sum to 1 when
    rows conflict; that growth is part of the method.
    """

    name: ClassVar[str] = "upgrad"
    reg_eps: float = 1e-4
    solver: Literal["batched", "quadprog", "nnls"] = "batched"

    def __post_init__(self) -> None:
        if self.reg_eps < 0:
            raise ValueError(f"reg_eps must be >= 0, got {self.reg_eps}")
        if self.solver not in _PROJECTORS:
            raise ValueError(f"solver must be one of {sorted(_PROJECTORS)}, got {self.solver!r}")
        require_packages(
            f"upgrad with solver {self.solver!r}",
            _PROJECTOR_PACKAGES[self.solver],
            'install them with pip install "torchjd[quadprog_projector]==0.18.0", '
            "or set solver: batched (the default; same QP, solved in torch)",
        )

    def weights_from_gramian(self, gram: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        from torchjd.aggregation import UPGradWeighting

        weighting = UPGradWeighting(projector=_PROJECTORS[self.solver](self.reg_eps))  # type: ignore[arg-type]
        return weighting(trace_normalized(gram))


@dataclass(frozen=True)
class IMTLG(GramianAggregator):
    """IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang; "Towards Impartial Multi-task Learning", ICLR 2021).

    Variant implemented: torchjd 0.18.0 ``IMTLGWeighting``, the generalisation of the paper's
    closed form to linearly dependent rows: ``v = pinv(G G^T) d`` with ``d_i = ||g_i||``, weights
    ``v / sum(v)``, so the aggregate has equal projections on every unit-normalised row. Exact (one
    pseudo-inverse).

    Scale: torchjd's weights already sum to 1, so ``K`` identical rows give that row. When
    ``|sum(v)| < 1e-12`` (after trace normalisation) torchjd returns zero weights: the direction is
    then zero.
    """

    name: ClassVar[str] = "imtl_g"

    def weights_from_gramian(self, gram: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        from torchjd.aggregation import IMTLGWeighting

        return IMTLGWeighting()(trace_normalized(gram))


@dataclass(frozen=True)
class AlignedMTL(GramianAggregator):
    """Aligned-MTL (Senushkin, Patakin, Kuznetsov, Konushin; "Independent Component Alignment for
    Multi-Task Learning", CVPR 2023).

    Variant implemented: torchjd 0.18.0 ``AlignedMTLWeighting`` with the uniform preference vector:
    weights ``B 1/K`` with ``B = sqrt(scale) V Sigma^-1/2 V^T`` from the eigendecomposition of the
    Gramian restricted to its numerical rank, ``scale`` being the smallest (``min``, torchjd's
    default), median (``median``) or mean (``rmse``, the original code) retained eigenvalue. Exact
    (one symmetric eigendecomposition).

    Scale: torchjd's, unchanged. It is mean-scaled: ``K`` identical rows give that row (rank one,
    ``B = 1 1^T / K``); in general the weights do not sum to 1, by design of the method.
    """

    name: ClassVar[str] = "aligned_mtl"
    scale_mode: Literal["min", "median", "rmse"] = "min"

    def weights_from_gramian(self, gram: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        from torchjd.aggregation import AlignedMTLWeighting

        return AlignedMTLWeighting(scale_mode=self.scale_mode)(trace_normalized(gram))
