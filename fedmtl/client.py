"""One client's round, as pure functions of (config, client id, shared state, private state).

The Flower ClientApp (``clients/client_app.py``) only converts records to these dicts and back.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from fedmtl import protocol
from fedmtl.config import ExperimentConfig
from fedmtl.models import ENCODER_PREFIX, MultiTaskModel
from fedmtl.partition import client_plan
from fedmtl.suites import ClientData
from fedmtl.training import evaluate, train_local

_DATA_CACHE_SIZE = 64
_data_cache: OrderedDict[tuple[str, int], ClientData] = OrderedDict()
_HEAD_INIT_STREAM = 101


def assigned_gpu() -> float:
    """The first GPU id Ray assigned to this worker (``CUDA_VISIBLE_DEVICES``), or -1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return float(visible) if visible.isdigit() else -1.0


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing the parts (experiment seed, round, client, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def client_data(cfg: ExperimentConfig, client_id: int) -> ClientData:
    """Generated (or loaded) on first use in this process; a bounded cache keeps memory flat at scale."""
    key = (cfg.fingerprint(), client_id)
    if key in _data_cache:
        _data_cache.move_to_end(key)
        return _data_cache[key]
    data = cfg.data.client_data(cfg.seed, client_plan(cfg, client_id))
    _data_cache[key] = data
    if len(_data_cache) > _DATA_CACHE_SIZE:
        _data_cache.popitem(last=False)
    return data


@dataclass(frozen=True)
class TrainOutcome:
    shared: dict[str, torch.Tensor]  # what goes back to the server
    private: dict[str, torch.Tensor]  # what stays in the client's state
    metrics: dict[str, float]


class LocalClient:
    """The tasks, data and model of one client."""

    def __init__(self, cfg: ExperimentConfig, client_id: int) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.plan = client_plan(cfg, client_id)
        all_specs = {spec.name: spec for spec in cfg.data.task_specs()}
        self.specs = {task: all_specs[task] for task in self.plan.tasks}
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def build_model(self, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor] | None) -> MultiTaskModel:
        """Fresh heads are initialised from (seed, client) the first time, so eval and train agree."""
        torch.manual_seed(derive_seed(self.cfg.seed, _HEAD_INIT_STREAM, self.client_id))
        model = MultiTaskModel(self.cfg.model, self.cfg.data.feature_dim(), self.specs.values())
        state = model.state_dict()
        unknown = sorted(set(shared) - {k for k in state if k.startswith(ENCODER_PREFIX)})
        if unknown:
            raise KeyError(f"server sent unknown shared parameters: {unknown[:3]}")
        state.update(shared)
        state.update(private or {})
        model.load_state_dict(state)
        return model.to(self.device)

    def _on_device(self, split: dict) -> dict:
        return {task: type(d)(d.x.to(self.device), d.y.to(self.device)) for task, d in split.items()}

    def train(
        self, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor] | None, server_round: int
    ) -> TrainOutcome:
        torch.set_num_threads(self.cfg.resources.torch_threads)
        model = self.build_model(shared, private)
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, server_round, self.client_id))
        data = client_data(self.cfg, self.client_id)
        stats = train_local(model, self._on_device(data.train), self.specs, self.cfg.training, generator)
        metrics = {
            protocol.CLIENT_ID: float(self.client_id),
            protocol.NUM_EXAMPLES: float(stats.num_examples),
            protocol.TRAIN_LOSS: float(np.mean(list(stats.task_loss.values()))),
            protocol.ON_GPU: float(self.device.type == "cuda"),
            protocol.ASSIGNED_GPU: assigned_gpu(),
            **protocol.flatten_task_metrics(
                protocol.TRAIN,
                {task: {"loss": loss, "num_examples": float(len(data.train[task]))} for task, loss in stats.task_loss.items()},
            ),
        }
        outcome = TrainOutcome(
            shared=protocol.outgoing_shared(model.shared_state(), shared.keys()),
            private={k: v.cpu() for k, v in model.private_state().items()},
            metrics=metrics,
        )
        self._release_device_memory()
        return outcome

    def evaluate(self, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor] | None) -> dict[str, float]:
        torch.set_num_threads(self.cfg.resources.torch_threads)
        model = self.build_model(shared, private)
        results = evaluate(model, self._on_device(client_data(self.cfg, self.client_id).eval), self.specs)
        self._release_device_memory()
        return {
            protocol.CLIENT_ID: float(self.client_id),
            protocol.NUM_EXAMPLES: float(sum(r["num_examples"] for r in results.values())),
            **protocol.flatten_task_metrics(protocol.EVAL, results),
        }

    def _release_device_memory(self) -> None:
        """Simulated clients share Ray workers: leave no cached GPU memory to the next one."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
