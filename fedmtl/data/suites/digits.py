"""Real data shipped with scikit-learn: the 8x8 handwritten digits (1,797 images, UCI ML
hand-written digits test set, Alpaydin & Kaynak 1998), loaded offline from the installed package.

Tasks are different questions about the same image, so they share features to different
degrees: ``digit`` (10 classes), ``parity`` (odd/even), ``geq5`` (digit >= 5), ``loops`` (has a
closed loop: 0, 6, 8, 9). Clients get non-IID label skew through a Dirichlet split over digit
identity (Hsu et al., 2019): for each digit, its images are divided among clients with
proportions drawn from ``Dirichlet(alpha)``; small ``alpha`` = strong skew. Each client's share
is split into train and eval parts (``eval_fraction``); ``clients.task_sample_scale`` subsamples
a task's training set. ``clients.samples_per_task`` and ``sample_imbalance`` do not apply: sizes
come from the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.task_kinds import TaskSpec

DigitTask = Literal["digit", "parity", "geq5", "loops"]
DIGIT_QUESTIONS = {
    "digit": (10, lambda d: d),
    "parity": (2, lambda d: d % 2),
    "geq5": (2, lambda d: (d >= 5).astype(np.int64)),
    "loops": (2, lambda d: np.isin(d, (0, 6, 8, 9)).astype(np.int64)),
}
_SPLIT_STREAM, _SUBSAMPLE_STREAM = 31, 37


@lru_cache(maxsize=1)
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Images scaled to [0, 1] (``[N, 64]``) and digit labels; from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a declared dependency
        raise RuntimeError("the digits suite needs scikit-learn (pip install scikit-learn)") from err
    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Indices per client; every label's samples are split by Dirichlet(alpha) proportions."""
    shares: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            shares[client].extend(part.tolist())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shares]


@dataclass(frozen=True)
class DigitsSuite(TaskSuite):
    name: ClassVar[str] = "digits"
    tasks_share_examples: ClassVar[bool] = True
    tasks: tuple[DigitTask, ...] = ("digit", "parity", "geq5", "loops")
    dirichlet_alpha: float = 0.5
    eval_fraction: float = 0.3

    def __post_init__(self) -> None:
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks must be a non-empty list without repeats")
        if self.dirichlet_alpha <= 0 or not 0 < self.eval_fraction < 1:
            raise ValueError("need dirichlet_alpha > 0 and 0 < eval_fraction < 1")

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(TaskSpec(t, "classification", DIGIT_QUESTIONS[t][0]) for t in self.tasks)

    def feature_dim(self) -> int:
        return 64

    def image_shape(self) -> tuple[int, int, int]:
        return (1, 8, 8)

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        images, digits = load_digit_images()
        share = dirichlet_partition(
            digits, plan.num_clients, self.dirichlet_alpha, np.random.default_rng([seed, _SPLIT_STREAM])
        )[plan.client_id]
        rng = np.random.default_rng([seed, _SUBSAMPLE_STREAM, plan.client_id])
        share = rng.permutation(share)
        n_eval = max(1, round(len(share) * self.eval_fraction)) if len(share) > 1 else 0
        eval_idx, train_idx = share[:n_eval], share[n_eval:]
        scales = plan.task_scale or (1.0,) * len(plan.tasks)
        train, evaluation = {}, {}
        for task, scale in zip(plan.tasks, scales):
            keep = train_idx[: max(1, round(len(train_idx) * min(scale, 1.0)))] if len(train_idx) else train_idx
            train[task] = self._task_data(task, images, digits, keep)
            evaluation[task] = self._task_data(task, images, digits, eval_idx)
        return ClientData(train=train, eval=evaluation)

    @staticmethod
    def _task_data(task: str, images: np.ndarray, digits: np.ndarray, index: np.ndarray) -> TaskData:
        return TaskData(
            torch.from_numpy(images[index]), torch.from_numpy(DIGIT_QUESTIONS[task][1](digits[index])).long()
        )
