"""NYUD-v2 from local files, laid out as FedHCA²'s and MTI-Net's repositories expect it (no download):

    <root>/gt_sets/train.txt, val.txt    one image id per line
    <root>/images/<id>.png               RGB
    <root>/segmentation/<id>.png         40 classes as 1..40, 0 = unlabelled (read as 0..39, 255 ignored)
    <root>/depth/<id>.npy                metres, 0 = missing
    <root>/normals/<id>.png              RGB in [0, 255] for components in [-1, 1]
    <root>/edge/<id>.png                 0 / 255

Tasks (FedHCA²'s names): ``semseg`` (segmentation, 40 classes), ``depth``, ``normals``, ``edge`` (a
binary mask). Clients, resizing and the layout check: :mod:`fedmtl.data.suites.image_folders`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.data.dense_kinds import IGNORE_INDEX
from fedmtl.data.suites.image_folders import ImageFolderSuite, read_array

NYUDTask = Literal["semseg", "depth", "normals", "edge"]
SEMSEG_CLASSES = 40
_FILES = {
    "semseg": ("segmentation", ".png"),
    "depth": ("depth", ".npy"),
    "normals": ("normals", ".png"),
    "edge": ("edge", ".png"),
}


def unit_normals(labels: np.ndarray) -> torch.Tensor:
    """``[N, H, W, 3]`` PNG values in [0, 255] -> ``[N, 3, H, W]`` components in [-1, 1]."""
    vectors = 2.0 * labels / 255.0 - 1.0
    return torch.from_numpy(np.ascontiguousarray(vectors.transpose(0, 3, 1, 2), dtype=np.float32))


@dataclass(frozen=True)
class NYUDSuite(ImageFolderSuite):
    name: ClassVar[str] = "nyud"
    DATASET: ClassVar[str] = "NYUD-v2"
    KINDS: ClassVar[dict[str, str]] = {
        "semseg": "segmentation",
        "depth": "depth",
        "normals": "normals",
        "edge": "binary_mask",
    }
    CLASSES: ClassVar[dict[str, int]] = {"semseg": SEMSEG_CLASSES}
    tasks: tuple[NYUDTask, ...] = ("semseg", "depth", "normals", "edge")

    @property
    def tasks_held(self) -> tuple[str, ...]:
        return self.tasks

    def list_file(self, split: str) -> Path:
        return Path(self.root) / "gt_sets" / f"{split}.txt"

    def image_file(self, image_id: str) -> Path:
        return Path(self.root) / "images" / f"{image_id}.png"

    def label_files(self, task: str, image_id: str) -> tuple[Path, ...]:
        folder, suffix = _FILES[task]
        return (Path(self.root) / folder / f"{image_id}{suffix}",)

    def decode(self, task: str, image_id: str) -> np.ndarray:
        return read_array(self.label_files(task, image_id)[0])

    def to_target(self, task: str, labels: np.ndarray) -> torch.Tensor:
        if task == "semseg":
            codes = labels.astype(np.int64) - 1
            codes[codes < 0] = IGNORE_INDEX
            return torch.from_numpy(codes)
        if task == "normals":
            return unit_normals(labels)
        if task == "edge":
            return torch.from_numpy((labels / 255.0 > 0.5).astype(np.int64))
        return torch.from_numpy(labels.astype(np.float32))
