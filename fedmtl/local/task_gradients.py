"""Per-task gradients on the shared encoder inside a client, and the conflict diagnostics built
on them: pairwise cosines, and principal angles between per-task gradient subspaces spanned by
gradients from several mini-batches (Björck & Golub, 1973)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch


def task_gradient_matrix(terms: Mapping[str, torch.Tensor], params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """``[T, P]``: row t is the gradient of ``terms[t]`` w.r.t. ``params`` (graph kept)."""
    rows = []
    for term in terms.values():
        grads = torch.autograd.grad(term, list(params), retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        )
    return torch.stack(rows)


def write_flat_gradient(params: Sequence[torch.nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        size = p.numel()
        p.grad = flat[offset : offset + size].reshape(p.shape).to(p.dtype).clone()
        offset += size


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between ``span(rows of a)`` and ``span(rows of b)``."""
    qa, _ = torch.linalg.qr(a.T.double())
    qb, _ = torch.linalg.qr(b.T.double())
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines)).sort().values


class TaskGradientTracker:
    """Accumulates per-step task-gradient matrices of one round; summarises conflicts at the end."""

    def __init__(self, subspace_steps: int) -> None:
        self.subspace_steps = subspace_steps
        self.cosine_sums: dict[tuple[str, str], float] = {}
        self.cosine_counts: dict[tuple[str, str], int] = {}
        self.history: dict[str, list[torch.Tensor]] = {}

    def add(self, tasks: Sequence[str], matrix: torch.Tensor) -> None:
        unit = matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cosines = unit @ unit.T
        for (i, a), (j, b) in itertools.combinations(enumerate(tasks), 2):
            pair = (min(a, b), max(a, b))
            self.cosine_sums[pair] = self.cosine_sums.get(pair, 0.0) + float(cosines[i, j])
            self.cosine_counts[pair] = self.cosine_counts.get(pair, 0) + 1
        for task, row in zip(tasks, matrix.detach()):
            rows = self.history.setdefault(task, [])
            rows.append(row.clone())
            del rows[: -self.subspace_steps]

    def mean_cosines(self) -> dict[tuple[str, str], float]:
        return {pair: self.cosine_sums[pair] / self.cosine_counts[pair] for pair in sorted(self.cosine_sums)}

    def subspace_angles(self) -> dict[tuple[str, str], list[float]]:
        tasks = sorted(t for t, rows in self.history.items() if rows)
        return {
            (a, b): principal_angles(torch.stack(self.history[a]), torch.stack(self.history[b])).tolist()
            for a, b in itertools.combinations(tasks, 2)
        }
