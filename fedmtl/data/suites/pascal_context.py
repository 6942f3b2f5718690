"""PASCAL-Context from local files, laid out as FedHCA²'s and MTI-Net's repositories expect it (no download):

    <root>/ImageSets/Context/train.txt, val.txt   one image id per line
    <root>/JPEGImages/<id>.jpg                    RGB
    <root>/semseg/VOC12/<id>.png                  21 classes 0..20 (255 ignored); or semseg/pascal-context/<id>.png
    <root>/sal_distill/<id>.png                   saliency in [0, 255] (> 127.5: salient)
    <root>/normals_distill/<id>.png               RGB in [0, 255] for components in [-1, 1]
    <root>/pascal-context/trainval/<id>.mat       LabelMap: the context labels (for edges and the normals' mask)
    <root>/json/nyu_classes.json, context_classes.json   which context classes have normals

Tasks (FedHCA²'s names): ``semseg`` (segmentation, 21 classes), ``sal`` (binary mask), ``normals``
(valid only on pixels whose context class is one of NYUD's, plus ``tvmonitor``, as FedHCA²'s loader
masks them), ``edge`` (binary mask: pixels where the context label changes between 4-neighbours).
What differs from FedHCA²'s loader: its edges are the non-zero Laplacian of the label map thinned to
one pixel (scikit-image's ``thin``), these are the two-pixel boundary without thinning; ``human_parts``
is not read. Clients, resizing and the layout check: :mod:`fedmtl.data.suites.image_folders`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import scipy.io
import torch

from fedmtl.data.dense_kinds import label_boundary
from fedmtl.data.suites.image_folders import ImageFolderSuite, read_array
from fedmtl.data.suites.nyud import unit_normals

PascalTask = Literal["semseg", "sal", "normals", "edge"]
SEMSEG_CLASSES = 21


@dataclass(frozen=True)
class PascalContextSuite(ImageFolderSuite):
    name: ClassVar[str] = "pascal_context"
    DATASET: ClassVar[str] = "PASCAL-Context"
    KINDS: ClassVar[dict[str, str]] = {
        "semseg": "segmentation",
        "sal": "binary_mask",
        "normals": "normals",
        "edge": "binary_mask",
    }
    CLASSES: ClassVar[dict[str, int]] = {"semseg": SEMSEG_CLASSES}
    tasks: tuple[PascalTask, ...] = ("semseg", "sal", "normals", "edge")

    @property
    def tasks_held(self) -> tuple[str, ...]:
        return self.tasks

    def list_file(self, split: str) -> Path:
        return Path(self.root) / "ImageSets" / "Context" / f"{split}.txt"

    def image_file(self, image_id: str) -> Path:
        return Path(self.root) / "JPEGImages" / f"{image_id}.jpg"

    def _context_file(self, image_id: str) -> Path:
        return Path(self.root) / "pascal-context" / "trainval" / f"{image_id}.mat"

    def label_files(self, task: str, image_id: str) -> tuple[Path, ...]:
        root = Path(self.root)
        if task == "semseg":
            voc = root / "semseg" / "VOC12" / f"{image_id}.png"
            return (voc if voc.is_file() else root / "semseg" / "pascal-context" / f"{image_id}.png",)
        if task == "sal":
            return (root / "sal_distill" / f"{image_id}.png",)
        if task == "normals":
            json_dir = root / "json"
            return (root / "normals_distill" / f"{image_id}.png", self._context_file(image_id),
                    json_dir / "nyu_classes.json", json_dir / "context_classes.json")  # fmt: skip
        return (self._context_file(image_id),)

    @cached_property
    def normal_classes(self) -> np.ndarray:
        """Context class ids with normals: NYUD's classes found in the context classes, and ``tvmonitor``."""
        nyu = json.loads((Path(self.root) / "json" / "nyu_classes.json").read_text())
        context = json.loads((Path(self.root) / "json" / "context_classes.json").read_text())
        valid = [context[name] for name in nyu if name in context and name != "unknown"]
        return np.array([*valid, context["tvmonitor"]])

    def _context_labels(self, image_id: str) -> np.ndarray:
        return scipy.io.loadmat(self._context_file(image_id))["LabelMap"]

    def decode(self, task: str, image_id: str) -> np.ndarray:
        if task == "edge":
            return label_boundary(self._context_labels(image_id))
        array = read_array(self.label_files(task, image_id)[0])
        if task == "normals":
            valid = np.isin(self._context_labels(image_id), self.normal_classes)
            return np.where(valid[..., None], array, 127.5)  # 127.5 -> the zero vector: no target there
        return array

    def to_target(self, task: str, labels: np.ndarray) -> torch.Tensor:
        if task == "semseg":
            return torch.from_numpy(labels.astype(np.int64))
        if task == "normals":
            return unit_normals(labels)
        if task == "sal":
            return torch.from_numpy((labels / 255.0 > 0.5).astype(np.int64))
        return torch.from_numpy((labels > 0.5).astype(np.int64))  # edge maps, already 0 / 1
