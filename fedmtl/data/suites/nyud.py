"""NYUD-v2 from local files, laid out as FedHCA²'s and MTI-Net's repositories expect it (no download):

    <root>/gt_sets/train.txt, val.txt    one image id per line
    <root>/images/<id>.png               RGB
    <root>/segmentation/<id>.png         40 classes as 1..40, 0 = unlabelled (read as 0..39, 255 ignored)
    <root>/depth/<id>.npy                metres, 0 = missing
    <root>/normals/<id>.png              RGB in [0, 255] for components in [-1, 1]
    <root>/edge/<id>.png                 0 / 255

Tasks (FedHCA²'s names): ``semseg`` (segmentation, 40 classes), ``depth``, ``normals``, ``edge`` (a
binary mask). Images and labels are resized to ``image_size`` (``[height, width]``; images bilinear, labels
nearest) or kept at their size when it is not set. Clients: the ``train`` list's
images dealt among the clients in equal random parts (by the seed, as FedHCA² splits a dataset among its
clients), likewise the ``val`` list's for evaluation; ``max_images`` keeps the first ids of each list.
A client's tasks label the same images. Files are read on first use in the process that trains the
client; a missing file or folder is a config error naming ``data.root`` when the suite is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from fedmtl.core.errors import ConfigError, require
from fedmtl.data.dense_kinds import IGNORE_INDEX
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.suites.columns import data_key
from fedmtl.data.task_kinds import TaskSpec

NYUDTask = Literal["semseg", "depth", "normals", "edge"]
SEMSEG_CLASSES = 40
_FILES = {"images": ".png", "semseg": ".png", "depth": ".npy", "normals": ".png", "edge": ".png"}
_FOLDERS = {"images": "images", "semseg": "segmentation", "depth": "depth", "normals": "normals", "edge": "edge"}
_KIND = {"semseg": "segmentation", "depth": "depth", "normals": "normals", "edge": "binary_mask"}
_DEAL_STREAM = 61


def read_ids(root: Path, split: str) -> list[str]:
    path = root / "gt_sets" / f"{split}.txt"
    if not path.is_file():
        raise ConfigError(data_key("root"), f"no {path.relative_to(root)} in {root} (NYUD-v2 as FedHCA² lays it out)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=8)
def image_size_of(path: str) -> tuple[int, int]:
    """(width, height) of an image file, read once per process (the input size is asked for often)."""
    with Image.open(path) as image:
        return image.size


@dataclass(frozen=True)
class NYUDSuite(TaskSuite):
    name: ClassVar[str] = "nyud"
    root: str  # the NYUD-v2 folder (gt_sets/, images/, segmentation/, depth/, normals/, edge/)
    tasks: tuple[NYUDTask, ...] = ("semseg", "depth", "normals", "edge")
    image_size: tuple[int, int] | None = None  # [height, width] to resize to; None keeps the files' size
    max_images: int | None = None  # keep the first ids of each list

    def __post_init__(self) -> None:
        require(
            bool(self.tasks) and len(set(self.tasks)) == len(self.tasks),
            "tasks",
            "must be a non-empty list without repeats",
        )
        if self.image_size is not None:
            require(
                len(self.image_size) == 2 and min(self.image_size) >= 1,
                "image_size",
                f"must be [height, width], got {list(self.image_size)}",
            )
        require(self.max_images is None or self.max_images >= 1, "max_images", f"must be >= 1, got {self.max_images}")
        root = Path(self.root)
        require(root.is_dir(), "root", f"no such folder: {self.root}")
        for split in ("train", "val"):
            for image_id in self.ids(split)[:1]:  # one sample of every file kind now: a bad layout fails at once
                for part in ("images", *self.tasks):
                    path = self.file(part, image_id)
                    require(path.is_file(), "root", f"missing {path.relative_to(root)} (listed in gt_sets/{split}.txt)")

    def ids(self, split: str) -> list[str]:
        ids = read_ids(Path(self.root), split)
        return ids[: self.max_images] if self.max_images is not None else ids

    def file(self, part: str, image_id: str) -> Path:
        return Path(self.root) / _FOLDERS[part] / f"{image_id}{_FILES[part]}"

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(TaskSpec(t, _KIND[t], SEMSEG_CLASSES if t == "semseg" else 1) for t in self.tasks)

    def image_shape(self) -> tuple[int, int, int]:
        if self.image_size is not None:
            return (3, *self.image_size)
        width, height = image_size_of(str(self.file("images", self.ids("train")[0])))
        return (3, height, width)

    def feature_dim(self) -> int:
        return int(np.prod(self.image_shape()))

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        """The client's share of each list; ``clients.task_sample_scale`` keeps a prefix of a task's training images."""
        scales = plan.task_scale or (1.0,) * len(plan.tasks)
        splits = []
        for split in ("train", "val"):
            ids = self.ids(split)
            order = np.random.default_rng([seed, _DEAL_STREAM, split == "val"]).permutation(len(ids))
            mine = [ids[i] for i in np.array_split(order, plan.num_clients)[plan.client_id]]
            image = torch.from_numpy(np.stack([self._image(i) for i in mine]).reshape(len(mine), -1)) if mine else None
            data = {}
            for task, scale in zip(plan.tasks, scales):
                keep = max(1, round(len(mine) * min(scale, 1.0))) if split == "train" and mine else len(mine)
                x = image[:keep] if image is not None else torch.zeros(0, self.feature_dim())
                data[task] = TaskData(x, self._targets(task, mine[:keep]))
            splits.append(data)
        return ClientData(train=splits[0], eval=splits[1])

    def _size(self) -> tuple[int, int]:
        """PIL's (width, height) to resize to; only called when ``image_size`` is set."""
        assert self.image_size is not None
        return (self.image_size[1], self.image_size[0])

    def _image(self, image_id: str) -> np.ndarray:
        image = Image.open(self.file("images", image_id)).convert("RGB")
        if self.image_size is not None:
            image = image.resize(self._size(), Image.Resampling.BILINEAR)
        return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def _label(self, part: str, image_id: str) -> np.ndarray:
        path = self.file(part, image_id)
        array = (
            np.load(path).astype(np.float32)
            if path.suffix == ".npy"
            else np.asarray(Image.open(path), dtype=np.float32)
        )
        if self.image_size is None:
            return array
        channels = [array] if array.ndim == 2 else [array[..., c] for c in range(array.shape[-1])]
        resized = [np.asarray(Image.fromarray(c).resize(self._size(), Image.Resampling.NEAREST)) for c in channels]
        return resized[0] if array.ndim == 2 else np.stack(resized, -1)

    def _targets(self, task: str, ids: list[str]) -> torch.Tensor:
        labels = np.stack([self._label(task, i) for i in ids]) if ids else np.zeros((0, *self.image_shape()[1:]))
        if task == "semseg":
            codes = labels.astype(np.int64) - 1
            codes[codes < 0] = IGNORE_INDEX
            return torch.from_numpy(codes)
        if task == "normals":
            vectors = 2.0 * labels / 255.0 - 1.0  # [N, H, W, 3]
            return torch.from_numpy(np.ascontiguousarray(vectors.transpose(0, 3, 1, 2), dtype=np.float32))
        if task == "edge":
            return torch.from_numpy((labels / 255.0 > 0.5).astype(np.int64))
        return torch.from_numpy(labels.astype(np.float32))
