"""Dense datasets read from local image folders (NYUD-v2, PASCAL-Context as FedHCA² lays them out):
what they share. A subclass names its split lists, its files per task and how each label decodes;
this base lists the ids, deals them among clients, reads and resizes images and labels, and checks
the layout when the config is built (a missing folder, list or file is an error naming ``data.root``).

Clients: a split list's images dealt among the clients in equal random parts by the seed (as FedHCA²
splits a dataset among its clients), the ``train`` list for training and the ``val`` list for
evaluation; ``max_images`` keeps the first ids of each list; a client's tasks label the same images.
Images resize bilinearly and labels by nearest neighbour to ``image_size`` (``[height, width]``), or
keep the files' size.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from fedmtl.core.errors import ConfigError, require
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskData, TaskSuite
from fedmtl.data.suites.columns import data_key
from fedmtl.data.task_kinds import TaskSpec

_DEAL_STREAM = 61


@lru_cache(maxsize=8)
def image_size_of(path: str) -> tuple[int, int]:
    """(width, height) of an image file, read once per process (the input size is asked for often)."""
    with Image.open(path) as image:
        return image.size


@lru_cache(maxsize=16)
def read_ids(path: str, modified_ns: int, size: int) -> tuple[str, ...]:
    """A split list's ids, read once per version of the file (the signature is part of the key)."""
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


def read_array(path: Path) -> np.ndarray:
    """A label file as float32: ``.npy`` as saved, an image as its pixel values."""
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    return np.asarray(Image.open(path), dtype=np.float32)


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` or ``[H, W, C]`` resized to PIL's ``(width, height)`` by nearest neighbour, channel by channel."""
    channels = [array] if array.ndim == 2 else [array[..., c] for c in range(array.shape[-1])]
    resized = [
        np.asarray(Image.fromarray(c.astype(np.float32)).resize(size, Image.Resampling.NEAREST)) for c in channels
    ]
    return resized[0] if array.ndim == 2 else np.stack(resized, -1)


@dataclass(frozen=True)
class ImageFolderSuite(TaskSuite):
    DATASET: ClassVar[str]  # for messages
    KINDS: ClassVar[dict[str, str]]  # task -> task kind
    CLASSES: ClassVar[dict[str, int]]  # task -> classes (segmentation)
    root: str
    image_size: tuple[int, int] | None = None  # [height, width] to resize to; None keeps the files' size
    max_images: int | None = None  # keep the first ids of each list

    @property
    @abstractmethod
    def tasks_held(self) -> tuple[str, ...]:
        """The subclass's ``tasks`` field (typed with its own task names)."""

    @abstractmethod
    def list_file(self, split: str) -> Path:
        """The file of image ids of ``split`` (train, val)."""

    @abstractmethod
    def image_file(self, image_id: str) -> Path: ...

    @abstractmethod
    def label_files(self, task: str, image_id: str) -> tuple[Path, ...]:
        """The files ``task``'s label of the image is made from."""

    @abstractmethod
    def decode(self, task: str, image_id: str) -> np.ndarray:
        """The task's label of the image at the files' size (``[H, W]`` or ``[H, W, C]``)."""

    @abstractmethod
    def to_target(self, task: str, labels: np.ndarray) -> torch.Tensor:
        """``[N, H, W(, C)]`` decoded labels -> the task kind's targets."""

    def __post_init__(self) -> None:
        tasks = self.tasks_held
        require(bool(tasks) and len(set(tasks)) == len(tasks), "tasks", "must be a non-empty list without repeats")
        if self.image_size is not None:
            size = list(self.image_size)
            require(len(size) == 2 and min(size) >= 1, "image_size", f"must be [height, width], got {size}")
        require(self.max_images is None or self.max_images >= 1, "max_images", f"must be >= 1, got {self.max_images}")
        root = Path(self.root)
        require(root.is_dir(), "root", f"no such folder: {self.root}")
        for split in ("train", "val"):
            for image_id in self.ids(split)[:1]:  # one sample of every file now: a bad layout fails at once
                paths = [self.image_file(image_id), *(p for t in tasks for p in self.label_files(t, image_id))]
                for path in paths:
                    listed = self.list_file(split).relative_to(root)
                    require(path.is_file(), "root", f"missing {path.relative_to(root)} (listed in {listed})")

    def ids(self, split: str) -> list[str]:
        path = self.list_file(split)
        if not path.is_file():
            raise ConfigError(
                data_key("root"),
                f"no {path.relative_to(self.root)} in {self.root} ({self.DATASET} as FedHCA² lays it out)",
            )
        stat = path.stat()
        ids = read_ids(str(path), stat.st_mtime_ns, stat.st_size)  # asked for on every model build
        return list(ids[: self.max_images] if self.max_images is not None else ids)

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(TaskSpec(t, self.KINDS[t], self.CLASSES.get(t, 1)) for t in self.tasks_held)

    def image_shape(self) -> tuple[int, int, int]:
        if self.image_size is not None:
            return (3, *self.image_size)
        width, height = image_size_of(str(self.image_file(self.ids("train")[0])))
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
        image = Image.open(self.image_file(image_id)).convert("RGB")
        if self.image_size is not None:
            image = image.resize(self._size(), Image.Resampling.BILINEAR)
        return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def _targets(self, task: str, ids: list[str]) -> torch.Tensor:
        def label(image_id: str) -> np.ndarray:
            array = self.decode(task, image_id)
            return array if self.image_size is None else resize_nearest(array, self._size())

        if not ids:  # no images: an empty batch shaped like one label (normals carry 3 channels)
            return self.to_target(task, label(self.ids("train")[0])[None][:0])
        return self.to_target(task, np.stack([label(i) for i in ids]))
