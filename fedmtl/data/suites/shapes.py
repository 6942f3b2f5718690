"""Synthetic dense scenes: shapes on a canvas, with per-pixel labels for four tasks (no download).

Each image holds ``shapes_per_image`` shapes, each a circle, a square or a triangle (``classes``: the
first 1-3 of them) at a random place and size, later shapes drawn over earlier ones. Each shape raises
a height surface with its class's profile: a dome (circle), a flat plateau (square), a ramp (triangle).
A second, independent surface (a sum of random smooth waves) stands for scene structure the shapes do
not explain. The scene's height is ``relatedness * shapes + (1 - relatedness) * waves``; the image is the
shapes' colours (the background grey) shaded by that height under one light (Lambertian), plus noise.

Tasks (FedHCA²'s NYUD-v2 tasks, in miniature):

* ``segmentation``: the class of the topmost shape at each pixel, 0 for background (``classes + 1`` classes);
* ``depth``: ``DEPTH_OFFSET - height`` (so always positive);
* ``normals``: the height surface's unit normals;
* ``edges``: pixels whose segmentation label differs from a 4-neighbour's.

``relatedness`` is the knob the vector synthetic suite has as ``task_cosine``: at 1 depth, normals,
segmentation and edges all follow the same shapes; at 0 depth and normals follow a surface unrelated to
the shapes that segmentation and edges see, and the tasks compete for the encoder.

Clients differ by the mix of shape classes (a Dirichlet draw per client, ``dirichlet_alpha``) and by a
colour shift (``client_shift``: each client's palette moves by that much per channel, a camera or
domain difference). A client's tasks are labels of the same images, as in NYUD-v2: a task with fewer
samples (``clients.task_sample_scale``) takes the first of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.core.errors import require
from fedmtl.data.dense_kinds import label_boundary
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.task_kinds import TaskSpec

DenseTask = Literal["segmentation", "depth", "normals", "edges"]
_KIND = {"segmentation": "segmentation", "depth": "depth", "normals": "normals", "edges": "binary_mask"}
_TRAIN, _EVAL, _CLIENT, _WORLD = 0, 1, 2, 3
DEPTH_OFFSET = 2.0
_PALETTE = np.array([[0.85, 0.25, 0.2], [0.2, 0.7, 0.3], [0.25, 0.35, 0.9]])  # circle, square, triangle
_BACKGROUND = np.array([0.5, 0.5, 0.5])
_LIGHT = np.array([-0.4, -0.5, 0.77]) / np.linalg.norm([-0.4, -0.5, 0.77])
_WAVES = 3


def surface_normals(height: np.ndarray) -> np.ndarray:
    """``[N, 3, H, W]`` unit normals of ``[N, H, W]`` height surfaces (heights per unit of canvas side)."""
    side = height.shape[-1]
    dy, dx = np.gradient(height * side, axis=(1, 2))
    normal = np.stack([-dx, -dy, np.ones_like(dx)], axis=1)
    return normal / np.linalg.norm(normal, axis=1, keepdims=True)


@dataclass(frozen=True)
class Scenes:
    """``count`` rendered scenes: image ``[N, 3, H, W]``, labels ``[N, H, W]``, height ``[N, H, W]``."""

    image: np.ndarray
    labels: np.ndarray
    height: np.ndarray

    def normals(self) -> np.ndarray:
        return surface_normals(self.height)

    def edges(self) -> np.ndarray:
        """``[N, H, W]`` 1 where a 4-neighbour has another label."""
        return label_boundary(self.labels)


@dataclass(frozen=True)
class ShapesSuite(TaskSuite):
    name: ClassVar[str] = "shapes"
    tasks_share_examples: ClassVar[bool] = True
    tasks: tuple[DenseTask, ...] = ("segmentation", "depth", "normals", "edges")
    canvas: int = 32  # side of the square image in pixels
    classes: int = 3  # shape classes: circle, square, triangle (the first `classes` of them)
    shapes_per_image: int = 3
    relatedness: float = 1.0  # share of the height the shapes make; the rest is an unrelated surface
    dirichlet_alpha: float = 1.0  # skew of each client's mix of shape classes (smaller = more skew)
    client_shift: float = 0.15  # size of each client's colour shift per channel
    noise: float = 0.03  # pixel noise (standard deviation)

    def __post_init__(self) -> None:
        require(
            bool(self.tasks) and len(set(self.tasks)) == len(self.tasks),
            "tasks",
            "must be a non-empty list without repeats",
        )
        require(self.canvas >= 8, "canvas", f"must be >= 8 pixels, got {self.canvas}")
        require(1 <= self.classes <= len(_PALETTE), "classes", f"must be in [1, {len(_PALETTE)}], got {self.classes}")
        require(self.shapes_per_image >= 1, "shapes_per_image", f"must be >= 1, got {self.shapes_per_image}")
        require(0.0 <= self.relatedness <= 1.0, "relatedness", f"must be in [0, 1], got {self.relatedness}")
        require(self.dirichlet_alpha > 0, "dirichlet_alpha", f"must be > 0, got {self.dirichlet_alpha}")
        require(self.client_shift >= 0, "client_shift", f"must be >= 0, got {self.client_shift}")
        require(self.noise >= 0, "noise", f"must be >= 0, got {self.noise}")

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(TaskSpec(t, _KIND[t], self.classes + 1 if t == "segmentation" else 1) for t in self.tasks)

    def feature_dim(self) -> int:
        return 3 * self.canvas * self.canvas

    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.canvas, self.canvas)

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        client_rng = np.random.default_rng([seed, _CLIENT, plan.client_id])
        class_mix = client_rng.dirichlet(np.full(self.classes, self.dirichlet_alpha))
        palette_shift = self.client_shift * client_rng.standard_normal(3)
        splits = []
        for split, counts in ((_TRAIN, plan.train_samples), (_EVAL, plan.eval_samples)):
            rng = np.random.default_rng([seed, split, plan.client_id])
            scenes = self.render(max(counts, default=0), class_mix, palette_shift, rng)
            splits.append({task: self._task_data(task, scenes, n) for task, n in zip(plan.tasks, counts)})
        return ClientData(train=splits[0], eval=splits[1])

    def render(self, count: int, class_mix: np.ndarray, shift: np.ndarray, rng: np.random.Generator) -> Scenes:
        side = self.canvas
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        labels = np.zeros((count, side, side), dtype=np.int64)
        shape_height = np.zeros((count, side, side))
        for _ in range(self.shapes_per_image):
            kind = rng.choice(self.classes, size=count, p=class_mix)
            centre = rng.uniform(0.2, 0.8, size=(count, 2, 1, 1))
            radius = rng.uniform(0.1, 0.22, size=(count, 1, 1))
            peak = rng.uniform(0.3, 0.8, size=(count, 1, 1))
            dy, dx = (ys - centre[:, 0]) / radius, (xs - centre[:, 1]) / radius
            profiles = (
                (dx**2 + dy**2 < 1, peak * np.sqrt(np.clip(1 - dx**2 - dy**2, 0, None))),  # dome
                (np.maximum(abs(dx), abs(dy)) < 0.85, peak * np.ones_like(dx)),  # plateau
                ((dy < 0.7) & (abs(dx) < (dy + 1) / 1.7), peak * (0.7 - dy) / 1.7),  # ramp up to the apex
            )
            for c in range(self.classes):
                inside, height = profiles[c]
                inside = inside & (kind[:, None, None] == c)
                labels[inside] = c + 1
                shape_height[inside] = height[inside]
        waves = np.zeros((count, side, side))
        for _ in range(_WAVES):
            frequency = rng.uniform(1.0, 3.0, size=(count, 2, 1, 1)) * np.pi
            phase = rng.uniform(0, 2 * np.pi, size=(count, 1, 1))
            waves += 0.25 * np.sin(frequency[:, 0] * ys + frequency[:, 1] * xs + phase)
        height = self.relatedness * shape_height + (1 - self.relatedness) * (waves + 0.4)
        albedo = np.concatenate([_BACKGROUND[None], _PALETTE[: self.classes]])[labels] + shift  # [N, H, W, 3]
        shading = 0.35 + 0.65 * np.clip(np.einsum("nchw,c->nhw", surface_normals(height), _LIGHT), 0, None)
        image = albedo.transpose(0, 3, 1, 2) * shading[:, None] + self.noise * rng.standard_normal(
            (count, 3, side, side)
        )
        return Scenes(image, labels, height)

    @staticmethod
    def _task_data(task: str, scenes: Scenes, count: int) -> TaskData:
        targets = {
            "segmentation": lambda: scenes.labels,
            "depth": lambda: DEPTH_OFFSET - scenes.height,
            "normals": scenes.normals,
            "edges": scenes.edges,
        }
        target = torch.from_numpy(np.ascontiguousarray(targets[task]()[:count]))
        x = torch.from_numpy(scenes.image[:count].reshape(count, -1)).float()
        return TaskData(x, target.float() if target.is_floating_point() else target)
