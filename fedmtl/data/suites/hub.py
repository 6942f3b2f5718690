"""A Hugging Face dataset as a task suite: columns as tasks, e.g. CelebA's 40 binary attributes
with natural per-identity partitions (``client_column: celeb_id``).

``dataset`` is a hub id (``flwrlabs/celeba``), a folder written by ``Dataset.save_to_disk`` or
``DatasetDict.save_to_disk``, or a folder of data files (CSV, Parquet, images, ...). Inputs are
either one image column (converted to grayscale or RGB, resized to ``image_size`` squared,
scaled to [0, 1] and flattened channel-first: :meth:`image_shape` feeds the CNN encoder) or
scalar numeric columns. Targets, partitions, the train/eval split and standardisation work as in
the table suite (:mod:`fedmtl.data.suites.table`); a ``ClassLabel`` column keeps its own class names
and treats ``-1`` as missing. ``max_examples`` keeps the first rows of the split.

Labels and partition columns are read when the suite is built (so bad columns are config errors
before Flower or Ray start); images are decoded per client, on first use, in the process that
trains it (``standardize: global`` on images decodes every training image once per process).

Offline: ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) makes a dataset that is neither a
local folder nor in the local Hugging Face cache fail at once with a :class:`ConfigError` naming
``data.dataset``; the variables are re-applied here in case the libraries were imported before
they were set. Without them, an unreachable hub fails after the library's own retries.

The ``datasets`` package is optional: ``pip install 'fedmtl[hub]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from fedmtl.core.errors import ConfigError
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskSuite
from fedmtl.data.suites.columns import (
    Column,
    TargetColumn,
    TargetValues,
    arrow_column,
    data_key,
    encode_target,
    unknown_column,
)
from fedmtl.data.suites.rows import RowData, check_row_settings, layout_from, numeric_features, reserved_columns
from fedmtl.data.suites.text import TextInput, check_text_settings, largest_token
from fedmtl.data.task_kinds import TaskSpec

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = frozenset({"1", "ON", "YES", "TRUE"})
_SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what save_to_disk writes


def hub_offline() -> bool:
    return any(os.environ.get(name, "").upper() in _TRUE for name in OFFLINE_VARIABLES)


def import_datasets() -> ModuleType:
    """The ``datasets`` package, with the offline variables in force even if it was imported before them."""
    try:
        import datasets
        import huggingface_hub.constants
    except ImportError:
        raise ConfigError(
            data_key("name"), "the hub suite needs the Hugging Face datasets package: pip install 'fedmtl[hub]'"
        ) from None
    if hub_offline():  # both libraries read the variables once, at import
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    return datasets


def load_split(source: str, split: str, subset: str | None, revision: str | None) -> Any:
    """One split as a ``datasets.Dataset``; every failure is a :class:`ConfigError` naming its key."""
    datasets = import_datasets()
    local = Path(source).expanduser()
    if local.is_dir() and any((local / marker).is_file() for marker in _SAVED_MARKERS):
        loaded = datasets.load_from_disk(str(local))
        if not isinstance(loaded, datasets.DatasetDict):
            return loaded  # a single saved Dataset has no splits: ``split`` does not apply
        if split not in loaded:
            raise ConfigError(data_key("split"), f"unknown split {split!r}; {source} has {', '.join(loaded)}")
        return loaded[split]
    try:
        return datasets.load_dataset(str(local) if local.is_dir() else source, subset, split=split, revision=revision)
    except ConnectionError as err:
        reason = (
            "offline mode is on (HF_HUB_OFFLINE) and it is not in the local cache"
            if hub_offline()
            else f"the Hugging Face Hub could not be reached ({err})"
        )
        raise ConfigError(
            data_key("dataset"),
            f"{source!r} is not a local dataset folder and {reason}; download it once with a connection, or point data.dataset at a folder written by save_to_disk",
        ) from None
    except FileNotFoundError as err:  # DatasetNotFoundError and friends
        raise ConfigError(
            data_key("dataset"), f"{source!r} was not found locally or on the Hugging Face Hub ({err})"
        ) from None
    except ValueError as err:  # an unknown split or configuration name
        key = "split" if "split" in str(err).lower() else "subset" if subset is not None else "dataset"
        raise ConfigError(data_key(key), f"{source!r}: {err}") from None


def source_signature(source: str) -> tuple[str, int]:
    """A local folder by absolute path and modification time (a re-saved dataset is read again); a hub id as given."""
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local.resolve()), local.stat().st_mtime_ns
    return source, 0


def pixels(image: Any, size: int, grayscale: bool) -> np.ndarray:
    """A PIL image as ``[C * size * size]`` float32 in [0, 1], channel-first."""
    from PIL import Image

    array = (
        np.asarray(
            image.convert("L" if grayscale else "RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32
        )
        / 255.0
    )
    return (array[None] if grayscale else array.transpose(2, 0, 1)).reshape(-1)


def image_reader(dataset: Any, column: str, size: int, grayscale: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Rows -> their images as pixel rows, decoded on each call (the caller caches the client's data)."""
    dim = (1 if grayscale else 3) * size * size

    def read(rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([pixels(image, size, grayscale) for image in dataset.select(rows.tolist())[column]])

    return read


@dataclass(frozen=True)
class HubRows:
    rows: RowData
    image_shape: tuple[int, int, int] | None


def scalar_columns(dataset: Any, datasets: ModuleType) -> dict[str, Column]:
    """Every column holding one number, boolean, string or class per row (not images, lists, ...)."""
    table = dataset.with_format("arrow")
    return {
        name: arrow_column(table[name])
        for name, feature in dataset.features.items()
        if isinstance(feature, (datasets.Value, datasets.ClassLabel))
    }


def require_column(dataset: Any, name: str, where: str) -> Any:
    """The column's ``datasets`` feature type; an unknown name lists the dataset's columns."""
    if name not in dataset.features:
        raise unknown_column(name, where, list(dataset.column_names))
    return dataset.features[name]


def hub_target(
    dataset: Any, scalars: Mapping[str, Column], target: TargetColumn, index: int, datasets: ModuleType
) -> TargetValues:
    where = data_key("targets", index)
    feature = require_column(dataset, target.column, data_key("targets", index, "column"))
    if target.column not in scalars:
        raise ConfigError(where, f"column {target.column!r} holds {type(feature).__name__} values, not scalars")
    if isinstance(feature, datasets.ClassLabel):  # codes 0..C-1 with the dataset's own names; -1 = no label
        codes = scalars[target.column].values
        if target.kind == "classification":
            return TargetValues(
                "classification", np.where(codes >= 0, codes, -1).astype(np.int64), tuple(feature.names)
            )
        return encode_target(Column(np.where(codes >= 0, codes, np.nan)), target, where)
    return encode_target(scalars[target.column], target, where)


def pick_features(
    suite: HubSuite, dataset: Any, scalars: Mapping[str, Column], reserved: Mapping[str, str], datasets: ModuleType
) -> tuple[str, ...]:
    """``data.features``, or by default the dataset's image column, else its numeric scalar columns."""
    images = [name for name, f in dataset.features.items() if isinstance(f, datasets.Image) and name not in reserved]
    if suite.features:
        for i, name in enumerate(suite.features):
            feature = require_column(dataset, name, data_key("features", i))
            if name not in scalars and not isinstance(feature, datasets.Image):
                raise ConfigError(
                    data_key("features", i),
                    f"column {name!r} holds {type(feature).__name__} values: use one image column or scalar numeric columns",
                )
        return suite.features
    if len(images) > 1:
        raise ConfigError(
            data_key("features"), f"the dataset has several image columns ({', '.join(images)}): name one"
        )
    if images:
        return tuple(images)
    return tuple(name for name, column in scalars.items() if name not in reserved and column.numeric)


@lru_cache(maxsize=2)
def hub_rows(suite: HubSuite, signature: tuple[str, int]) -> HubRows:
    datasets = import_datasets()
    dataset = load_split(suite._source, suite.split, suite.subset, suite.revision)
    if suite.max_examples is not None:
        dataset = dataset.select(range(min(suite.max_examples, len(dataset))))
    if len(dataset) == 0:
        raise ConfigError(data_key("dataset"), f"{suite.dataset!r} split {suite.split!r} has no rows")
    scalars = scalar_columns(dataset, datasets)
    targets = {t.column: hub_target(dataset, scalars, t, i, datasets) for i, t in enumerate(suite.targets)}
    for key, name in (("client_column", suite.client_column), ("dirichlet_column", suite.dirichlet_column)):
        if name is not None and name not in scalars:
            feature = require_column(dataset, name, data_key(key))
            raise ConfigError(data_key(key), f"column {name!r} holds {type(feature).__name__} values, not scalars")
    layout = layout_from(
        scalars, len(dataset), suite.targets, suite.client_column, suite.dirichlet_alpha, suite.dirichlet_column
    )
    reserved = reserved_columns(suite.targets, suite.client_column, suite.dirichlet_column)
    names = pick_features(suite, dataset, scalars, reserved, datasets) if suite.text is None else ()
    if any(isinstance(dataset.features[name], datasets.Image) for name in names):
        if len(names) != 1:
            raise ConfigError(data_key("features"), f"an image column must be the only feature, got {list(names)}")
        read = image_reader(dataset, names[0], suite.image_size, suite.grayscale)
        read(np.arange(1))  # decode one now: a broken image column fails before Flower or Ray start
        shape = (1 if suite.grayscale else 3, suite.image_size, suite.image_size)
        return HubRows(RowData(targets, layout, read, int(np.prod(shape))), shape)
    if suite.text is not None:
        if suite.text.column not in scalars:
            feature = require_column(dataset, suite.text.column, data_key("text", "column"))
            raise ConfigError(
                data_key("text", "column"),
                f"column {suite.text.column!r} holds {type(feature).__name__} values, not text",
            )
        matrix = suite.text.token_ids(scalars[suite.text.column])
    else:
        matrix = numeric_features(scalars, names, bool(suite.features), reserved)
    return HubRows(RowData(targets, layout, lambda rows: matrix[rows], matrix.shape[1]), None)


@dataclass(frozen=True)
class HubSuite(TaskSuite):
    name: ClassVar[str] = "hub"
    dataset: str  # hub id, a save_to_disk folder, or a folder of data files
    targets: tuple[TargetColumn, ...]  # one task per entry: {column: Smiling, kind: classification}
    split: str = "train"
    subset: str | None = None  # the hub dataset's configuration name, if it has several
    revision: str | None = None  # hub commit, tag or branch (pin it for reproducible runs)
    features: tuple[str, ...] = ()  # one image column, or numeric columns; default: the image column if any
    image_size: int = 32  # images are resized to image_size x image_size
    grayscale: bool = True  # 1 channel; false: 3 (RGB)
    client_column: str | None = None  # natural partitions, e.g. celeb_id: each distinct value is a group
    dirichlet_alpha: float | None = None  # label-skewed split instead of IID (when no client_column)
    dirichlet_column: str | None = None  # column the Dirichlet split skews; default: first classification target
    eval_fraction: float = 0.3
    # Fitted on train rows only (see the table suite); auto = none for images (already in [0, 1]), global otherwise.
    standardize: Literal["auto", "global", "client", "none"] = "auto"
    max_examples: int | None = None  # keep the first rows of the split only
    # {column: text, max_length: 64, vocab_size: 10000, tokenizer: null}: the input is this column's text as
    # token ids (for model.encoder: huggingface), as in the table suite
    text: TextInput | None = None
    _source: str = field(default="", init=False, repr=False, compare=False)  # a local ``dataset`` resolved

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "features", tuple(self.features))
        check_row_settings(
            self.targets, self.client_column, self.dirichlet_alpha, self.dirichlet_column, self.eval_fraction
        )
        if self.image_size < 1:
            raise ConfigError(data_key("image_size"), f"must be >= 1, got {self.image_size}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(data_key("max_examples"), f"must be >= 1, got {self.max_examples}")
        check_text_settings(self.text, self.features)
        object.__setattr__(self, "_source", source_signature(self.dataset)[0])
        self.loaded()  # read labels and partitions now: a bad dataset or column fails before Flower or Ray start

    def loaded(self) -> HubRows:
        return hub_rows(self, source_signature(self._source))

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return self.loaded().rows.task_specs()

    def feature_dim(self) -> int:
        return self.loaded().rows.feature_dim

    def image_shape(self) -> tuple[int, int, int] | None:
        return self.loaded().image_shape

    def class_names(self, task: str) -> tuple[str, ...]:
        return self.loaded().rows.targets[task].classes

    def check_clients(self, count: int) -> str | None:
        """Why ``clients.count`` does not fit the natural partitions, or None."""
        return self.loaded().rows.layout.check_clients(count)

    def example_input(self) -> torch.Tensor:
        return largest_token(self.loaded().rows) if self.text is not None else super().example_input()

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        loaded = self.loaded()
        standardize = self.standardize if self.standardize != "auto" else ("none" if loaded.image_shape else "global")
        standardize = "none" if self.text is not None else standardize
        return loaded.rows.client_data(seed, plan, self.dirichlet_alpha, self.eval_fraction, standardize)
