"""One participant's round, as pure functions of (config, participant, shared state, private state).

Private state is one flat dict of tensors, kept by the Flower adapter in ``context.state``:
``model.*`` (heads, adapters, encoder blocks that are not shared), ``balancer.*`` (learned task
weights and their history), ``personal.*`` (the personalised copy under soft sharing). None of
it is ever sent; the reply's arrays come only from ``protocol.outgoing_shared``.

A participant is usually one client (with every task it holds, or with one of them); a pooled
participant trains on every client's data at once and reports each client's evaluation separately
(:mod:`fedmtl.data.participants`). Its random streams differ accordingly (:class:`Streams`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from fedmtl.config.experiment import ExperimentConfig, sample_size
from fedmtl.config.sections import ClientConfig
from fedmtl.core import protocol
from fedmtl.core.params import is_head, task_of
from fedmtl.core.seeding import seed_global
from fedmtl.data.participants import Participant, participants_of_client
from fedmtl.data.suites import TaskData
from fedmtl.local import dp_sgd, rollback
from fedmtl.local.affinity import client_lookahead_affinity
from fedmtl.local.data import data_key, participant_data
from fedmtl.local.data_checks import shortcut_check
from fedmtl.local.gates import gate_diagnostics
from fedmtl.local.training import Proximal, TrainStats, evaluate, fit_heads, train_local
from fedmtl.methods.balancing import Static
from fedmtl.methods.privacy import privatise_update
from fedmtl.model.networks import MultiTaskModel, initial_encoder_state, initial_head_state

_HEAD_INIT_STREAM, _PERSONAL_STREAM, _EVAL_HEADS_STREAM, _POOLED_STREAM = 101, 103, 107, 211
_LOCAL_STREAM, _VALIDATION_STREAM, _PRIVACY_STREAM = 109, 113, 127
SHORTCUT_CACHE_SIZE = 4096  # (data, participant, client, task) -> its data check, per process
_shortcut_checks: dict[tuple, dict[str, float]] = {}
PROBE_EXAMPLES = 256  # per task, for client affinity (server.client_affinity_every)
MODEL, BALANCER, PERSONAL, LOCAL = "model.", "balancer.", "personal.", "local."


def assigned_gpu() -> float:
    """The first GPU id Ray assigned to this worker (``CUDA_VISIBLE_DEVICES``), or -1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return float(visible) if visible.isdigit() else -1.0


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing the parts (experiment seed, round, client, ...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Streams:
    """A participant's random streams: its model's initialisation and each round's batches. A client's
    derive from (seed, client); a pooled participant's from its own stream, as one central trainer's."""

    seed: int
    client_id: int
    pooled: bool

    def model(self, stream: int) -> int:
        if not self.pooled:
            return derive_seed(self.seed, stream, self.client_id)
        if stream == _HEAD_INIT_STREAM:
            return derive_seed(self.seed, _POOLED_STREAM)
        return derive_seed(self.seed, _POOLED_STREAM, stream)

    def round(self, server_round: int) -> int:
        if self.pooled:
            return derive_seed(self.seed, _POOLED_STREAM, server_round)
        return derive_seed(self.seed, server_round, self.client_id)


def with_prefix(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().clone() for k, v in state.items()}


def strip_prefix(prefix: str, state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in (state or {}).items() if k.startswith(prefix)}


@dataclass(frozen=True)
class TrainOutcome:
    shared: dict[str, torch.Tensor]  # what goes back to the server
    private: dict[str, torch.Tensor]  # what stays in the participant's state
    metrics: dict[str, float]


class LocalClient:
    """The tasks, data and model of one participant."""

    def __init__(self, cfg: ExperimentConfig, participant: Participant) -> None:
        self.cfg = cfg
        self.participant = participant
        self.client_id = participant.client_id
        all_specs = {spec.name: spec for spec in cfg.data.task_specs()}
        self.specs = {task: all_specs[task] for task in participant.tasks}
        self.sharing = cfg.model.sharing
        self.federated_heads = cfg.server.federate_heads
        self.streams = Streams(cfg.seed, participant.client_id, participant.pooled)
        self.training = self._training_config(cfg, participant)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @classmethod
    def for_client(cls, cfg: ExperimentConfig, client_id: int) -> LocalClient:
        """The participant that is client ``client_id`` with every task it trains (``clients.participants: clients``)."""
        found = participants_of_client(cfg.participants(), client_id)
        if len(found) != 1:
            raise ValueError(f"client {client_id} is not one participant in this layout ({len(found)} match)")
        return cls(cfg, found[0])

    @staticmethod
    def _training_config(cfg: ExperimentConfig, participant: Participant) -> ClientConfig:
        """A pooled participant trains with the federation's compute: ``local_steps`` times the clients
        the server would sample per round."""
        if not participant.pooled:
            return cfg.client
        sampled = sample_size(len(participant.clients), cfg.server.fraction_fit)
        return replace(cfg.client, local_steps=cfg.client.local_steps * sampled)

    def build_model(
        self, shared: dict[str, torch.Tensor], private_model: dict[str, torch.Tensor], stream: int = _HEAD_INIT_STREAM
    ) -> MultiTaskModel:
        """Private parts are initialised from the participant's streams the first time, so eval and train agree."""
        seed_global(self.streams.model(stream))
        model = MultiTaskModel(
            self.cfg.model,
            self.cfg.data.feature_dim(),
            self.specs.values(),
            self.sharing.adapter_rank,
            self.cfg.data.image_shape(),
        )
        state = model.state_dict()
        if stream == _HEAD_INIT_STREAM:
            first = [k for k in state if is_head(k) and k not in shared and k not in private_model]
            state.update(self.cfg.model.head_init.first_heads(first, self._round_zero_heads))
        if self.cfg.model.init_from is not None:  # private encoder blocks start from the file too
            cfg = self.cfg
            initial = initial_encoder_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
            state.update({k: v for k, v in initial.items() if k not in shared and k not in private_model})
        unexpected = sorted(k for k in shared if k not in state or not self.is_shared(k))
        if unexpected:
            raise KeyError(f"server sent parameters this client does not share: {unexpected[:3]}")
        state.update(shared)
        state.update(private_model)
        model.load_state_dict(state)
        return model.to(self.device)

    def _round_zero_heads(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        return initial_head_state(
            cfg.model, cfg.data.feature_dim(), cfg.data.task_specs(), cfg.seed, cfg.data.image_shape()
        )

    def is_shared(self, key: str) -> bool:
        """Federated: what the sharing mode shares, plus the heads when ``server.federate_heads``."""
        return self.sharing.is_shared(key) or (self.federated_heads and is_head(key))

    def own(self, shared: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Of federated heads, keep those of this participant's tasks (the server sends every task's)."""
        return {k: v for k, v in shared.items() if not is_head(k) or task_of(k) in self.specs}

    def _private_part(self, model: MultiTaskModel) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if not self.is_shared(k)}

    def _on_device(self, split: dict[str, TaskData]) -> dict[str, TaskData]:
        return {task: TaskData(d.x.to(self.device), d.y.to(self.device)) for task, d in split.items()}

    def train(
        self, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor] | None, server_round: int
    ) -> TrainOutcome:
        torch.set_num_threads(self.cfg.resources.torch_threads)
        shared, probe_base, probed = protocol.split_probes(shared)
        shared = self.own(shared)
        data, _ = self._training_split(participant_data(self.cfg, self.participant, server_round).train)
        generator = torch.Generator().manual_seed(self.streams.round(server_round))
        model = self.build_model(shared, strip_prefix(MODEL, private))
        client_affinity = {}
        if probed:  # the probes arrive on the CPU; the model may be on a GPU
            base = {k: v.to(self.device) for k, v in probe_base.items()}
            trained = {c: {k: v.to(self.device) for k, v in state.items()} for c, state in probed.items()}
            client_affinity = client_lookahead_affinity(model, self._probe_batches(data), self.specs, base, trained)
        global_encoder = [p.detach().clone() for p in model.encoder_parameters()]
        balancer = self.training.balancing.start(list(self.specs), strip_prefix(BALANCER, private))
        sample_level, steps, accounted = self.cfg.privacy.sample_level, dict[str, torch.Tensor](), dict[str, float]()
        if sample_level.enabled:  # DP-SGD: each example's gradient clipped and noised (fedmtl/local/dp_sgd.py)
            stats = dp_sgd.train_local_dp(model, data, self.specs, self.training, generator, balancer, sample_level)
            steps, accounted = dp_sgd.account(private, data, self.training, sample_level, self.cfg.privacy.delta)
        else:
            stats = train_local(model, data, self.specs, self.training, generator, balancer)
        new_private = {
            **with_prefix(MODEL, self._private_part(model)),
            **with_prefix(BALANCER, balancer.state()),
            **steps,
        }
        if self.sharing.personal_mu is not None:
            new_private.update(self._train_personal(shared, private, data, generator, global_encoder))
        if self.training.rollback.enabled:
            new_private.update(self._train_local_model(shared, private, data, server_round))
        outgoing = {k: v for k, v in model.state_dict().items() if k in shared}
        if self.cfg.privacy.local:
            outgoing = self._privatised(shared, outgoing, server_round)
        outcome = TrainOutcome(
            shared=protocol.outgoing_shared(outgoing, shared.keys()),
            private=new_private,
            metrics={
                **self._train_metrics(stats, data),
                **accounted,
                **{f"{protocol.CLIENT_AFFINITY}/{i}/{self.client_id}": z for i, z in client_affinity.items()},
                **protocol.flatten_task_metrics(protocol.GATE, gate_diagnostics(model, data)),
            },
        )
        self._release_device_memory()
        return outcome

    def _shortcut_check(
        self, train: dict[str, TaskData], held_out: dict[str, TaskData], client: int, task: str
    ) -> dict[str, float]:
        """The data check of ``task`` on ``client``'s held-out data: it depends on the data only, so it is
        computed once per process and reused at every later evaluation."""
        rollback = self.training.rollback
        key = (
            data_key(self.cfg),
            self.participant.clients,
            self.participant.pooled,
            rollback.validation_fraction if rollback.enabled else None,
            client,
            task,
        )
        if key not in _shortcut_checks:
            if len(_shortcut_checks) >= SHORTCUT_CACHE_SIZE:
                _shortcut_checks.pop(next(iter(_shortcut_checks)))
            # the same examples, in the same order, for every task: not pooled clients or carved validation
            shared = self.cfg.data.tasks_share_examples and not self.participant.pooled and not rollback.enabled
            order = self.cfg.data.task_names()
            _shortcut_checks[key] = shortcut_check(train, held_out, self.specs, task, order, shared)
        return dict(_shortcut_checks[key])

    def _privatised(
        self, received: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], server_round: int
    ) -> dict[str, torch.Tensor]:
        """``privacy.noise_at: client``: the update ``received - trained`` clipped and noised here, so the
        server only ever sees ``received - noised update`` (fedmtl/methods/privacy.py)."""
        keys = sorted(trained)
        start = torch.cat([received[k].detach().reshape(-1).float().cpu() for k in keys])
        update = start - torch.cat([trained[k].detach().reshape(-1).float().cpu() for k in keys])
        privacy = self.cfg.privacy
        assert privacy.clip_norm is not None
        generator = torch.Generator().manual_seed(
            derive_seed(self.cfg.seed, _PRIVACY_STREAM, self.client_id, server_round)
        )
        sent = start - privatise_update(update, privacy.clip_norm, privacy.noise_multiplier, generator)
        out, offset = {}, 0
        for key in keys:
            size = trained[key].numel()
            out[key] = sent[offset : offset + size].reshape(trained[key].shape).to(trained[key].dtype)
            offset += size
        return out

    @staticmethod
    def _probe_batches(data: dict[str, TaskData]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The examples client affinity is measured on: each task's first ``PROBE_EXAMPLES`` (no draw)."""
        return {task: (d.x[:PROBE_EXAMPLES], d.y[:PROBE_EXAMPLES]) for task, d in data.items()}

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
        proximal = Proximal(global_encoder, self.sharing.personal_mu or 0.0)
        train_local(personal, data, self.specs, self.training, generator, balancer, proximal)
        return with_prefix(PERSONAL, personal.state_dict())

    def num_train_examples(self) -> int:
        """The examples this participant trains on (FedAvg's weight): what its training reports as ``num_examples``."""
        data, _ = self._training_split(participant_data(self.cfg, self.participant).train)
        return sum(len(d) for d in data.values())

    def _training_split(self, train: dict[str, TaskData]) -> tuple[dict[str, TaskData], dict[str, TaskData]]:
        """(what the models train on, the validation split) on the device; no validation without roll-back."""
        settings = self.training.rollback
        if not settings.enabled:
            return self._on_device(train), {}
        seed = derive_seed(self.cfg.seed, _VALIDATION_STREAM, self.client_id)
        kept, validation = rollback.carve_validation(train, settings.validation_fraction, seed)
        return self._on_device(kept), self._on_device(validation)

    def _train_local_model(
        self,
        shared: dict[str, torch.Tensor],
        private: dict[str, torch.Tensor] | None,
        data: dict[str, TaskData],
        server_round: int,
    ) -> dict[str, torch.Tensor]:
        """The roll-back option: a whole model (encoder and heads) that starts from the first encoder the
        client receives and then trains on the client's own data alone."""
        local_state = strip_prefix(LOCAL, private)
        local = (
            self.build_model(shared, {}, _LOCAL_STREAM)
            if not local_state
            else self.build_model({}, local_state, _LOCAL_STREAM)
        )
        generator = torch.Generator().manual_seed(derive_seed(self.streams.round(server_round), _LOCAL_STREAM))
        balancer = self.training.balancing.start(list(self.specs), {})
        train_local(local, data, self.specs, self.training, generator, balancer)
        return with_prefix(LOCAL, local.state_dict())

    def _train_metrics(self, stats: TrainStats, data: dict[str, TaskData]) -> dict[str, float]:
        per_task = {
            task: {"loss": loss, "num_examples": float(len(data[task])), "weight": stats.task_weights.get(task, 1.0)}
            for task, loss in stats.task_loss.items()
        }
        angles = stats.subspace_angles
        return {
            protocol.CLIENT_ID: float(self.client_id),
            protocol.PARTICIPANT: float(self.participant.index),
            protocol.NUM_EXAMPLES: float(stats.num_examples),
            protocol.TRAIN_LOSS: float(np.mean(list(stats.task_loss.values()))),
            protocol.ON_GPU: float(self.device.type == "cuda"),
            protocol.ASSIGNED_GPU: assigned_gpu(),
            **protocol.flatten_task_metrics(protocol.TRAIN, per_task),
            **protocol.pair_metrics(protocol.TASK_COSINE, stats.task_cosines),
            **protocol.pair_metrics(protocol.TASK_AFFINITY, stats.task_affinity),
            **protocol.pair_metrics(protocol.TASK_ANGLE_MIN, {pair: a[0] for pair, a in angles.items() if a}),
            **protocol.pair_metrics(
                protocol.TASK_ANGLE_MEAN, {pair: float(np.mean(a)) for pair, a in angles.items() if a}
            ),
        }

    def evaluate(
        self, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor] | None, server_round: int = 0
    ) -> list[dict[str, float]]:
        """One report per client the participant speaks for: its held-out data of round ``server_round``,
        evaluated with the encoder as received and the participant's private parts."""
        torch.set_num_threads(self.cfg.resources.torch_threads)
        shared = self.own(shared)
        data = participant_data(self.cfg, self.participant, server_round)
        train, validation = self._training_split(data.train)
        model = self.build_model(shared, strip_prefix(MODEL, private))
        if self.training.eval_head_steps:  # fitted on a throwaway copy: nothing here is kept
            generator = torch.Generator().manual_seed(self.streams.model(_EVAL_HEADS_STREAM))
            steps = self.training.eval_head_steps
            fit_heads(model, train, self.specs, self.training, steps, generator)
        personal_state = strip_prefix(PERSONAL, private)
        personal = self.build_model({}, personal_state, _PERSONAL_STREAM) if personal_state else None
        local_state = strip_prefix(LOCAL, private)
        predictors = None
        if local_state:  # roll-back: choose per task on the validation split, before any evaluation data
            predictors = rollback.Predictors(model, self.build_model({}, local_state, _LOCAL_STREAM))
            validation_losses = predictors.losses(validation, self.specs)
            margin = self.training.rollback.margin
            choices = {task: rollback.choose(losses, margin) for task, losses in validation_losses.items()}
        reports = []
        for client, held_out in data.evals:
            split = self._on_device(held_out)
            specs = {task: self.specs[task] for task in split}
            if predictors is None:
                results = evaluate(model, split, specs)
            else:
                results = predictors.evaluate(choices, split, specs)
            for task, result in results.items():  # the data check (only its numbers leave the client)
                result.update(self._shortcut_check(train, split, client, task) if task in train else {})
            metrics = protocol.flatten_task_metrics(protocol.EVAL, results)
            if predictors is not None:
                evidence = rollback.evidence(choices, validation_losses, predictors.losses(split, specs))
                metrics.update(protocol.flatten_task_metrics(protocol.ROLLBACK, evidence))
            if personal is not None:
                metrics.update(protocol.flatten_task_metrics(protocol.PERSONAL, evaluate(personal, split, specs)))
            reports.append(
                {
                    protocol.CLIENT_ID: float(client),
                    protocol.PARTICIPANT: float(self.participant.index),
                    protocol.NUM_EXAMPLES: float(sum(r["num_examples"] for r in results.values())),
                    **metrics,
                }
            )
        self._release_device_memory()
        return reports

    def _release_device_memory(self) -> None:
        """Simulated clients share Ray workers: leave no cached GPU memory to the next one."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
