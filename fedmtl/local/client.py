"""One client's round, as pure functions of (config, client id, shared state, private state).

Private state is one flat dict of tensors, kept by the Flower adapter in ``context.state``:
``model.*`` (heads, adapters, encoder blocks that are not shared), ``balancer.*`` (learned task
weights and their history), ``personal.*`` (the personalised copy under soft sharing). None of
it is ever sent; the reply's arrays come only from ``protocol.outgoing_shared``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.core import protocol
from fedmtl.core.params import is_head, task_of
from fedmtl.data.partition import client_plan, tasks_of_client
from fedmtl.data.suites import ClientData, TaskData
from fedmtl.local.training import Proximal, TrainStats, evaluate, fit_heads, train_local
from fedmtl.methods.balancing import Static
from fedmtl.model.networks import MultiTaskModel, initial_head_state

_DATA_CACHE_SIZE = 64
_data_cache: OrderedDict[tuple[str, int], ClientData] = OrderedDict()
_HEAD_INIT_STREAM, _PERSONAL_STREAM, _EVAL_HEADS_STREAM = 101, 103, 107
MODEL, BALANCER, PERSONAL = "model.", "balancer.", "personal."


def assigned_gpu() -> float:
    """The first GPU id Ray assigned to this worker (``CUDA_VISIBLE_DEVICES``), or -1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return float(visible) if visible.isdigit() else -1.0


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing the parts (experiment seed, round, client, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def client_data(cfg: ExperimentConfig, client_id: int) -> ClientData:
    """Generated (or loaded) on first use in this process; a bounded cache keeps memory flat at scale.

    Holds only the tasks the client trains (``clients.only_tasks``), cut from the data of all it holds.
    """
    key = (cfg.data_fingerprint(), client_id)
    if key in _data_cache:
        _data_cache.move_to_end(key)
        return _data_cache[key]
    full = cfg.data.client_data(cfg.seed, client_plan(cfg, client_id))
    tasks = tasks_of_client(cfg, client_id)
    data = ClientData({t: full.train[t] for t in tasks}, {t: full.eval[t] for t in tasks})
    _data_cache[key] = data
    if len(_data_cache) > _DATA_CACHE_SIZE:
        _data_cache.popitem(last=False)
    return data


def with_prefix(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().clone() for k, v in state.items()}


def strip_prefix(prefix: str, state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in (state or {}).items() if k.startswith(prefix)}


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
        self.plan = client_plan(cfg, client_id)  # every task the client holds (specs: those it trains)
        all_specs = {spec.name: spec for spec in cfg.data.task_specs()}
        self.specs = {task: all_specs[task] for task in tasks_of_client(cfg, client_id)}
        self.sharing = cfg.model.sharing
        self.federated_heads = cfg.server.federate_heads
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def build_model(
        self, shared: dict[str, torch.Tensor], private_model: dict[str, torch.Tensor], stream: int = _HEAD_INIT_STREAM
    ) -> MultiTaskModel:
        """Private parts are initialised from (seed, client) the first time, so eval and train agree."""
        torch.manual_seed(derive_seed(self.cfg.seed, stream, self.client_id))
        model = MultiTaskModel(
            self.cfg.model,
            self.cfg.data.feature_dim(),
            self.specs.values(),
            self.sharing.adapter_rank,
            self.cfg.data.image_shape(),
        )
        state = model.state_dict()
        first_heads = [k for k in state if is_head(k) and k not in shared and k not in private_model]
        if self.cfg.model.head_init == "task" and stream == _HEAD_INIT_STREAM and first_heads:
            heads = initial_head_state(
                self.cfg.model,
                self.cfg.data.feature_dim(),
                self.cfg.data.task_specs(),
                self.cfg.seed,
                self.cfg.data.image_shape(),
            )
            state.update({k: heads[k] for k in first_heads})
        unexpected = sorted(k for k in shared if k not in state or not self.is_shared(k))
        if unexpected:
            raise KeyError(f"server sent parameters this client does not share: {unexpected[:3]}")
        state.update(shared)
        state.update(private_model)
        model.load_state_dict(state)
        return model.to(self.device)

    def is_shared(self, key: str) -> bool:
        """Federated: what the sharing mode shares, plus the heads when ``server.federate_heads``."""
        return self.sharing.is_shared(key) or (self.federated_heads and is_head(key))

    def own(self, shared: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Of federated heads, keep those of this client's tasks (the server sends every task's)."""
        return {k: v for k, v in shared.items() if not is_head(k) or task_of(k) in self.specs}

    def _private_part(self, model: MultiTaskModel) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if not self.is_shared(k)}

    def _on_device(self, split: dict[str, TaskData]) -> dict[str, TaskData]:
        return {task: TaskData(d.x.to(self.device), d.y.to(self.device)) for task, d in split.items()}

    def train(
        self, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor] | None, server_round: int
    ) -> TrainOutcome:
        torch.set_num_threads(self.cfg.resources.torch_threads)
        shared = self.own(shared)
        data = self._on_device(client_data(self.cfg, self.client_id).train)
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, server_round, self.client_id))
        model = self.build_model(shared, strip_prefix(MODEL, private))
        global_encoder = [p.detach().clone() for p in model.encoder_parameters()]
        balancer = self.cfg.client.balancing.start(list(self.specs), strip_prefix(BALANCER, private))
        stats = train_local(model, data, self.specs, self.cfg.client, generator, balancer)
        new_private = {**with_prefix(MODEL, self._private_part(model)), **with_prefix(BALANCER, balancer.state())}
        if self.sharing.personal_mu is not None:
            new_private.update(self._train_personal(shared, private, data, generator, global_encoder))
        outcome = TrainOutcome(
            shared=protocol.outgoing_shared(
                {k: v for k, v in model.state_dict().items() if k in shared}, shared.keys()
            ),
            private=new_private,
            metrics=self._train_metrics(stats, data),
        )
        self._release_device_memory()
        return outcome

    def _train_personal(
        self,
        shared: dict[str, torch.Tensor],
        private: dict[str, torch.Tensor] | None,
        data: dict[str, TaskData],
        generator: torch.Generator,
        global_encoder: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Ditto's personalised copy: starts as the first global model it sees, then only ever
        trains locally with the proximal pull towards the current global encoder."""
        personal_state = strip_prefix(PERSONAL, private)
        personal = (
            self.build_model(shared, {}, _PERSONAL_STREAM)
            if not personal_state
            else self.build_model({}, personal_state, _PERSONAL_STREAM)
        )
        balancer = Static().start(list(self.specs), {})
        train_local(
            personal,
            data,
            self.specs,
            self.cfg.client,
            generator,
            balancer,
            Proximal(global_encoder, self.sharing.personal_mu or 0.0),
        )
        return with_prefix(PERSONAL, personal.state_dict())

    def _train_metrics(self, stats: TrainStats, data: dict[str, TaskData]) -> dict[str, float]:
        per_task = {
            task: {"loss": loss, "num_examples": float(len(data[task])), "weight": stats.task_weights.get(task, 1.0)}
            for task, loss in stats.task_loss.items()
        }
        angles = stats.subspace_angles
        return {
            protocol.CLIENT_ID: float(self.client_id),
            protocol.NUM_EXAMPLES: float(stats.num_examples),
            protocol.TRAIN_LOSS: float(np.mean(list(stats.task_loss.values()))),
            protocol.ON_GPU: float(self.device.type == "cuda"),
            protocol.ASSIGNED_GPU: assigned_gpu(),
            **protocol.flatten_task_metrics(protocol.TRAIN, per_task),
            **protocol.pair_metrics(protocol.TASK_COSINE, stats.task_cosines),
            **protocol.pair_metrics(protocol.TASK_ANGLE_MIN, {pair: a[0] for pair, a in angles.items() if a}),
            **protocol.pair_metrics(
                protocol.TASK_ANGLE_MEAN, {pair: float(np.mean(a)) for pair, a in angles.items() if a}
            ),
        }

    def evaluate(self, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor] | None) -> dict[str, float]:
        torch.set_num_threads(self.cfg.resources.torch_threads)
        shared = self.own(shared)
        data = self._on_device(client_data(self.cfg, self.client_id).eval)
        model = self.build_model(shared, strip_prefix(MODEL, private))
        if self.cfg.client.eval_head_steps:  # fitted on a throwaway copy: nothing here is kept
            train = self._on_device(client_data(self.cfg, self.client_id).train)
            generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, _EVAL_HEADS_STREAM, self.client_id))
            fit_heads(model, train, self.specs, self.cfg.client, self.cfg.client.eval_head_steps, generator)
        results = evaluate(model, data, self.specs)
        metrics = protocol.flatten_task_metrics(protocol.EVAL, results)
        personal_state = strip_prefix(PERSONAL, private)
        if personal_state:
            personal = self.build_model({}, personal_state, _PERSONAL_STREAM)
            metrics.update(protocol.flatten_task_metrics(protocol.PERSONAL, evaluate(personal, data, self.specs)))
        self._release_device_memory()
        return {
            protocol.CLIENT_ID: float(self.client_id),
            protocol.NUM_EXAMPLES: float(sum(r["num_examples"] for r in results.values())),
            **metrics,
        }

    def _release_device_memory(self) -> None:
        """Simulated clients share Ray workers: leave no cached GPU memory to the next one."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
