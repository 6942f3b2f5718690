"""MultiMNIST on scikit-learn's 8x8 digits: two digits overlaid on one canvas, one task per digit.

The construction of Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization"
(NeurIPS 2018; their ``multi_mnist_loader.py``): every source image becomes the left digit of an
example, paired with another randomly drawn image as the right digit; the left digit sits at the
top-left of a larger canvas, the right one at the bottom-right, and they are combined by
pixel-wise max where they overlap. Here the digits are 8x8 (not 28x28 MNIST), the canvas is
``canvas`` x ``canvas`` (12 by default, no resize), and each digit moves by up to ``max_shift``
pixels towards the centre along each axis (the random shifts of Sabour et al.'s MultiMNIST).

Tasks: ``left`` and ``right`` (10 classes each, the digit on that side), and the digits suite's
questions about the left digit: ``left_parity``, ``left_geq5``, ``left_loops``.

Clients: the source images are split among clients by a Dirichlet split over digit identity
(``dirichlet_alpha``, as in the digits suite), so the left digits follow the client's skew; each
client's images are then split into train and eval pools (``eval_fraction``) and pairs are formed
within a pool only, the right digit drawn from the same pool. So no source image appears in two
clients, nor in both a client's train and eval examples. ``pairs_per_image`` training examples
use each train-pool image as their left digit (eval: one each). ``clients.task_sample_scale`` subsamples a task's training pairs;
``clients.samples_per_task`` and ``sample_imbalance`` do not apply: sizes come from the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.suites.digits import DIGIT_QUESTIONS, dirichlet_partition, load_digit_images
from fedmtl.data.task_kinds import TaskSpec

MultiDigitTask = Literal["left", "right", "left_parity", "left_geq5", "left_loops"]
_SIDE_QUESTION = {
    "left": ("left", "digit"),
    "right": ("right", "digit"),
    "left_parity": ("left", "parity"),
    "left_geq5": ("left", "geq5"),
    "left_loops": ("left", "loops"),
}
_SPLIT_STREAM, _PAIR_STREAM = 53, 59
DIGIT_SIDE = 8  # scikit-learn's digits are 8x8


@dataclass(frozen=True)
class Pairs:
    """One pool's examples: source image indices (into ``load_digit_images``) and where each digit sits.

    ``left_at`` / ``right_at`` are ``[N, 2]`` (row, column) of the digit's top-left corner on the canvas.
    """

    left: np.ndarray
    right: np.ndarray
    left_at: np.ndarray
    right_at: np.ndarray

    def __len__(self) -> int:
        return len(self.left)

    def take(self, count: int) -> Pairs:
        return Pairs(self.left[:count], self.right[:count], self.left_at[:count], self.right_at[:count])


def overlay(images: np.ndarray, pairs: Pairs, canvas: int) -> np.ndarray:
    """``[N, canvas * canvas]``: each pair's two 8x8 images (rows of ``images``) placed and max-combined."""
    digits = images.reshape(-1, DIGIT_SIDE, DIGIT_SIDE)
    out = np.zeros((len(pairs), canvas, canvas), dtype=images.dtype)
    for i in range(len(pairs)):
        for source, (row, col) in ((pairs.left[i], pairs.left_at[i]), (pairs.right[i], pairs.right_at[i])):
            window = out[i, row : row + DIGIT_SIDE, col : col + DIGIT_SIDE]
            np.maximum(window, digits[source], out=window)
    return out.reshape(len(pairs), canvas * canvas)


@dataclass(frozen=True)
class MultiMNISTSuite(TaskSuite):
    name: ClassVar[str] = "multimnist"
    tasks_share_examples: ClassVar[bool] = True
    tasks: tuple[MultiDigitTask, ...] = ("left", "right")  # left_parity, left_geq5, left_loops ask about the left digit
    canvas: int = 12  # side of the square canvas in pixels (the digits are 8x8)
    max_shift: int = 1  # each digit moves 0 .. max_shift pixels towards the centre, per axis
    pairs_per_image: int = 1  # training examples with each train-pool image as the left digit
    dirichlet_alpha: float = 0.5  # label skew of the split over digit identity (smaller = more skew)
    eval_fraction: float = 0.3  # share of each client's images kept for its eval pairs

    def __post_init__(self) -> None:
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks must be a non-empty list without repeats")
        if self.dirichlet_alpha <= 0 or not 0 < self.eval_fraction < 1:
            raise ValueError("need dirichlet_alpha > 0 and 0 < eval_fraction < 1")
        if self.max_shift < 0 or self.pairs_per_image < 1:
            raise ValueError("need max_shift >= 0 and pairs_per_image >= 1")
        if self.canvas - DIGIT_SIDE <= 2 * self.max_shift:
            raise ValueError(
                f"canvas {self.canvas} leaves no room to keep the right digit below and right of the left one: "
                f"need canvas > {DIGIT_SIDE} + 2 * max_shift = {DIGIT_SIDE + 2 * self.max_shift}"
            )

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(TaskSpec(t, "classification", DIGIT_QUESTIONS[_SIDE_QUESTION[t][1]][0]) for t in self.tasks)

    def feature_dim(self) -> int:
        return self.canvas * self.canvas

    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.canvas, self.canvas)

    def client_pairs(self, seed: int, client_id: int, num_clients: int) -> tuple[Pairs, Pairs]:
        """Client ``client_id``'s train and eval pairs, from ``seed`` and the client alone (not its tasks)."""
        _, digits = load_digit_images()
        share = dirichlet_partition(
            digits, num_clients, self.dirichlet_alpha, np.random.default_rng([seed, _SPLIT_STREAM])
        )[client_id]
        rng = np.random.default_rng([seed, _PAIR_STREAM, client_id])
        share = rng.permutation(share)
        # a pool needs two images to pair; a share too small for two pools trains on all of it
        n_eval = min(max(2, round(len(share) * self.eval_fraction)), len(share) - 2) if len(share) >= 4 else 0
        return self._pair_pool(share[n_eval:], self.pairs_per_image, rng), self._pair_pool(share[:n_eval], 1, rng)

    def _pair_pool(self, pool: np.ndarray, repeats: int, rng: np.random.Generator) -> Pairs:
        if len(pool) < 2:  # nothing to pair an image with
            return Pairs(pool[:0], pool[:0], np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))
        left = np.tile(pool, repeats)
        # another image of the pool: move each position on by 1 .. len - 1, cyclically
        position = np.tile(np.arange(len(pool)), repeats)
        right = pool[(position + rng.integers(1, len(pool), size=len(left))) % len(pool)]
        far = self.canvas - DIGIT_SIDE
        left_at = rng.integers(0, self.max_shift + 1, size=(len(left), 2))
        right_at = far - rng.integers(0, self.max_shift + 1, size=(len(left), 2))
        order = rng.permutation(len(left))
        return Pairs(left[order], right[order], left_at[order], right_at[order])

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        images, digits = load_digit_images()
        train_pairs, eval_pairs = self.client_pairs(seed, plan.client_id, plan.num_clients)
        scales = plan.task_scale or (1.0,) * len(plan.tasks)
        train_x, eval_x = overlay(images, train_pairs, self.canvas), overlay(images, eval_pairs, self.canvas)
        train, evaluation = {}, {}
        for task, scale in zip(plan.tasks, scales):
            keep = max(1, round(len(train_pairs) * min(scale, 1.0))) if len(train_pairs) else 0
            train[task] = self._task_data(task, train_x[:keep], digits, train_pairs.take(keep))
            evaluation[task] = self._task_data(task, eval_x, digits, eval_pairs)
        return ClientData(train=train, eval=evaluation)

    @staticmethod
    def _task_data(task: str, x: np.ndarray, digits: np.ndarray, pairs: Pairs) -> TaskData:
        side, question = _SIDE_QUESTION[task]
        sources = pairs.left if side == "left" else pairs.right
        labels = DIGIT_QUESTIONS[question][1](digits[sources])
        return TaskData(torch.tensor(x), torch.from_numpy(labels).long())  # a copy: tasks share no storage
