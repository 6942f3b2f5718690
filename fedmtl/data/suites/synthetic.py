"""Synthetic multi-task suite with controlled task relatedness (the default instrument).

Generative model (documented in README, "The synthetic suite"), all drawn from the seed:

* latent ``z ~ N(mu_c, I_d)`` with a client-specific shift ``mu_c = client_shift * v_c``,
  ``v_c ~ N(0, I/d)`` (covariate heterogeneity across clients);
* inputs ``x = A z + input_noise * eps``, ``A`` fixed ``[input_dim, latent_dim]`` with
  ``N(0, 1/latent_dim)`` entries, shared by every client and task (the shared structure);
* task vectors ``theta_t`` (unit norm) with ``theta_s . theta_t = C[s, t]``, ``C`` the configured
  cosine matrix (built as ``V sqrt(Lambda) Q`` from ``C = V Lambda V^T`` and orthonormal ``Q``);
* ``f_t(z) = g(u) + nonlinearity * sum_m sin(alpha_m u + beta_m)`` with ``u = theta_t . z``, the
  frequencies/phases shared by all tasks (the construction of Ma et al., KDD 2018, "MMoE"), and
  the link ``g`` the identity (``link: identity``, MMoE's choice) or the rectifier
  ``g(u) = max(u, 0)`` (``link: relu``);
* regression target ``y = f_t + noise_t * eps``; a classification task with ``K`` classes bins
  ``f_t + noise_t * eps`` at the population ``k/K`` quantiles of ``f_t``.

Because of the shared phases, ``theta_s = -theta_t`` is not an exact sign flip of the task: opposed
tasks need other linear combinations of the same features of ``u``. Under the identity link a
private linear head absorbs the sign of ``u``, so for encoder sharing the magnitude of the cosine
is what relates two tasks. Under the rectifier link it cannot: ``max(-u, 0)`` is not a linear
function of ``max(u, 0)`` (the two are never both positive), so opposed tasks need different
features (configs/study_relatedness.yaml measures the rectifier, study_relatedness_identity_link.yaml
the identity). With ``nonlinearity: 0`` the targets' correlation is ``rho`` (identity) or the
normalised first-order arc-cosine kernel ``(sin phi + (pi - phi) cos phi - 1) / (pi - 1)``,
``phi = arccos rho`` (relu; Cho & Saul, NeurIPS 2009), which is -0.47 at ``rho = -1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.task_kinds import TaskSpec

_NUM_SINUSOIDS = 2
_QUANTILE_SAMPLES = 20_000
_TRAIN, _EVAL, _CLIENT = 0, 1, 2
_LINKS = {"identity": lambda u: u, "relu": lambda u: np.maximum(u, 0.0)}


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    kind: Literal["regression", "classification"] = "regression"
    noise: float = 0.1  # std of the target noise (before binning, for classification)
    num_classes: int = 2  # classification only
    sample_scale: float = 1.0  # multiplier on this task's training samples (< 1: a data-poor task)

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"task {self.name!r}: noise must be >= 0, got {self.noise}")
        if self.sample_scale <= 0:
            raise ValueError(f"task {self.name!r}: sample_scale must be > 0, got {self.sample_scale}")
        if self.kind == "classification" and self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: num_classes must be >= 2, got {self.num_classes}")


DEFAULT_TASKS = (
    SyntheticTask("anchor", "regression", 0.1),
    SyntheticTask("aligned", "regression", 0.1, sample_scale=0.25),  # data-poor
    SyntheticTask("orthogonal", "classification", 0.1, 2),
    SyntheticTask("opposed", "regression", 0.1),
)
# anchor~aligned (0.9), orthogonal to both, opposed to anchor (-0.7): mixed relatedness.
DEFAULT_COSINE = (
    (1.0, 0.9, 0.0, -0.7),
    (0.9, 1.0, 0.0, -0.6),
    (0.0, 0.0, 1.0, 0.0),
    (-0.7, -0.6, 0.0, 1.0),
)


def cosine_matrix_from(task_cosine: float | tuple[tuple[float, ...], ...], num_tasks: int) -> np.ndarray:
    """A scalar ``rho`` means every pair has cosine ``rho``; a matrix is taken as given."""
    if isinstance(task_cosine, float):
        return (1.0 - task_cosine) * np.eye(num_tasks) + task_cosine * np.ones((num_tasks, num_tasks))
    return np.asarray(task_cosine, dtype=np.float64)


def task_vectors(cosines: np.ndarray, latent_dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors ``[T, latent_dim]`` whose Gram matrix equals ``cosines`` exactly."""
    eigenvalues, eigenvectors = np.linalg.eigh(cosines)
    factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    basis, _ = np.linalg.qr(rng.standard_normal((latent_dim, latent_dim)))
    return factor @ basis[:, : cosines.shape[0]].T


@dataclass(frozen=True)
class SyntheticSuite(TaskSuite):
    name: ClassVar[str] = "synthetic"
    tasks: tuple[SyntheticTask, ...] = DEFAULT_TASKS
    task_cosine: float | tuple[tuple[float, ...], ...] = field(default=DEFAULT_COSINE)
    input_dim: int = 24
    latent_dim: int = 8
    input_noise: float = 0.1
    nonlinearity: float = 0.5
    client_shift: float = 0.5
    link: Literal["identity", "relu"] = "identity"

    def __post_init__(self) -> None:
        names = [task.name for task in self.tasks]
        if not names:
            raise ValueError("tasks must not be empty")
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        if len(names) > self.latent_dim:
            raise ValueError(f"latent_dim ({self.latent_dim}) must be >= number of tasks ({len(names)})")
        if self.input_dim < 1 or self.latent_dim < 1:
            raise ValueError("input_dim and latent_dim must be >= 1")
        if min(self.input_noise, self.nonlinearity, self.client_shift) < 0:
            raise ValueError("input_noise, nonlinearity and client_shift must be >= 0")
        self._check_cosines(cosine_matrix_from(self.task_cosine, len(names)), len(names))

    @staticmethod
    def _check_cosines(cosines: np.ndarray, num_tasks: int) -> None:
        if cosines.shape != (num_tasks, num_tasks):
            raise ValueError(f"task_cosine must be a number or a {num_tasks}x{num_tasks} matrix, got {cosines.shape}")
        if not np.allclose(cosines, cosines.T) or not np.allclose(np.diag(cosines), 1.0):
            raise ValueError("task_cosine matrix must be symmetric with ones on the diagonal")
        if np.abs(cosines).max() > 1.0 + 1e-12:
            raise ValueError("task_cosine entries must lie in [-1, 1]")
        if np.linalg.eigvalsh(cosines).min() < -1e-9:
            raise ValueError("task_cosine is not positive semi-definite: no set of vectors has these cosines")

    # --- TaskSuite -------------------------------------------------------------------------

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(TaskSpec(t.name, t.kind, t.num_classes if t.kind == "classification" else 1) for t in self.tasks)

    def default_sample_scale(self, task: str) -> float:
        return next(t.sample_scale for t in self.tasks if t.name == task)

    def feature_dim(self) -> int:
        return self.input_dim

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        world = self.world(seed)
        shift = (
            self.client_shift
            * np.random.default_rng([seed, _CLIENT, plan.client_id]).standard_normal(self.latent_dim)
            / np.sqrt(self.latent_dim)
        )
        index = {name: i for i, name in enumerate(self.task_names())}
        splits = {}
        for split, counts in ((_TRAIN, plan.train_samples), (_EVAL, plan.eval_samples)):
            splits[split] = {
                task: world.sample(
                    index[task], count, shift, np.random.default_rng([seed, split, plan.client_id, index[task]])
                )
                for task, count in zip(plan.tasks, counts)
            }
        return ClientData(train=splits[_TRAIN], eval=splits[_EVAL])

    def world(self, seed: int) -> SyntheticWorld:
        return _world(self, seed)


@lru_cache(maxsize=4)
def _world(suite: SyntheticSuite, seed: int) -> SyntheticWorld:
    """Built once per (suite, seed) and process: every client of a run shares it."""
    return SyntheticWorld.build(suite, seed)


@dataclass(frozen=True)
class SyntheticWorld:
    """The seeded draw of everything shared by all clients: mixing matrix, task vectors, sinusoids."""

    suite: SyntheticSuite
    mixing: np.ndarray
    theta: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray
    thresholds: tuple[np.ndarray, ...]

    @classmethod
    def build(cls, suite: SyntheticSuite, seed: int) -> SyntheticWorld:
        rng = np.random.default_rng([seed, 7919])
        mixing = rng.standard_normal((suite.input_dim, suite.latent_dim)) / np.sqrt(suite.latent_dim)
        theta = task_vectors(cosine_matrix_from(suite.task_cosine, len(suite.tasks)), suite.latent_dim, rng)
        frequencies = rng.uniform(0.5, 2.0, _NUM_SINUSOIDS)
        phases = rng.uniform(0.0, 2 * np.pi, _NUM_SINUSOIDS)
        world = cls(suite, mixing, theta, frequencies, phases, ())
        reference = rng.standard_normal((_QUANTILE_SAMPLES, suite.latent_dim))
        thresholds = tuple(
            np.quantile(world.signal(t, reference), np.arange(1, task.num_classes) / task.num_classes)
            if task.kind == "classification"
            else np.empty(0)
            for t, task in enumerate(suite.tasks)
        )
        return cls(suite, mixing, theta, frequencies, phases, thresholds)

    def signal(self, task_index: int, latent: np.ndarray) -> np.ndarray:
        u = latent @ self.theta[task_index]
        waves = np.sin(np.outer(u, self.frequencies) + self.phases).sum(axis=1)
        return _LINKS[self.suite.link](u) + self.suite.nonlinearity * waves

    def sample(self, task_index: int, count: int, shift: np.ndarray, rng: np.random.Generator) -> TaskData:
        task = self.suite.tasks[task_index]
        latent = shift + rng.standard_normal((count, self.suite.latent_dim))
        x = latent @ self.mixing.T + self.suite.input_noise * rng.standard_normal((count, self.suite.input_dim))
        noisy = self.signal(task_index, latent) + task.noise * rng.standard_normal(count)
        if task.kind == "classification":
            y = torch.from_numpy(np.searchsorted(self.thresholds[task_index], noisy)).long()
        else:
            y = torch.from_numpy(noisy).float()
        return TaskData(torch.from_numpy(x).float(), y)
