"""The arms of a negative-transfer study: each one writes a normal run directory.

Every arm trains the same clients on the same data (``fedmtl.local.client.client_data``: a task's data
never depends on which other tasks an arm trains) with the same local training code, and
evaluates each (client, task) on that client's held-out data, so their metrics compare directly.

* ``fed_mtl``: the configured federated multi-task run (Flower + Ray).
* ``fed_stl``: one federation per task among the clients that hold it (``clients.only_tasks`` +
  ``clients.members``), merged into one run directory.
* ``fed_full``: ``fed_mtl`` with the heads federated too (``server.federate_heads``), averaged
  among the clients that hold each task: what keeping heads private buys.
* ``local_stl``: each client trains each of its tasks alone, no federation: the same client code,
  fed back its own encoder every round. In process, no Ray.
* ``central_mtl``: all clients' training data pooled, one multi-task model (the upper bound),
  trained with the federation's compute: ``local_steps`` x clients sampled per round, per round.

A user-defined arm (``study.arms: [{name: pcgrad, base: fed_mtl, set: {...}}]``) runs its base
arm on the study's config with its settings applied (:func:`fedmtl.config.experiment.arm_config`).

The federated arms call a ``Federate`` callback (the Flower adapter), so this module knows
nothing about Flower.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from fedmtl.config.experiment import ExperimentConfig, sample_size, tasks_held
from fedmtl.core import protocol
from fedmtl.core.files import RowWriter, read_rows
from fedmtl.core.layout import CLIENTS_FILE, SERVER_FILE
from fedmtl.data.suites import TaskData
from fedmtl.federation.rounds import evaluation_rounds
from fedmtl.local.client import LocalClient, client_data, derive_seed
from fedmtl.local.training import evaluate, train_local
from fedmtl.model.networks import MultiTaskModel, initial_shared_state
from fedmtl.runfiles.recorder import Recorder
from fedmtl.runfiles.rundir import RunDirectory

Federate = Callable[[ExperimentConfig, Path], None]  # run one federation writing the run directory at the path
_CENTRAL_STREAM = 211


def at(cfg: ExperimentConfig, run_dir: Path, **clients: Any) -> ExperimentConfig:
    """``cfg`` writing into ``run_dir`` (quietly), with ``clients`` fields replaced."""
    output = replace(cfg.output, run_dir=str(run_dir), progress=False)
    return replace(cfg, output=output, clients=replace(cfg.clients, **clients))


class Arm(ABC):
    name: ClassVar[str]
    federated: ClassVar[bool]
    single_task: ClassVar[bool] = False  # one model per task: the baseline that defines transfer
    settings: ClassVar[Mapping[str, Any]] = {}  # key.path -> value this arm sets before a user-defined arm's own

    @abstractmethod
    def run(self, cfg: ExperimentConfig, run_dir: Path, federate: Federate) -> None:
        """Train and evaluate; write ``run_dir`` (which must not exist yet)."""


class FedMTL(Arm):
    name = "fed_mtl"
    federated = True

    def run(self, cfg: ExperimentConfig, run_dir: Path, federate: Federate) -> None:
        federate(at(cfg, run_dir), run_dir)


class FedSTL(Arm):
    name = "fed_stl"
    federated = True
    single_task = True

    def run(self, cfg: ExperimentConfig, run_dir: Path, federate: Federate) -> None:
        run = RunDirectory.create(at(cfg, run_dir))
        per_task: list[Path] = []
        for spec in cfg.data.task_specs():
            holders = tuple(c for c in cfg.clients.participants() if spec.name in tasks_held(cfg, c))
            if not holders:
                continue
            task_dir = run.path / "tasks" / spec.name
            federate(at(cfg, task_dir, only_tasks=(spec.name,), members=holders), task_dir)
            per_task.append(task_dir)
        merge_task_runs(run, per_task)


def merge_task_runs(run: RunDirectory, task_dirs: list[Path]) -> None:
    """One run directory from per-task federations: all metric rows; per round, summed time and traffic."""
    rows = [row for d in task_dirs for row in read_rows(d / run.metrics_path.name)]
    RowWriter(run.metrics_path, list(rows[0]) if rows else ["round"]).write(rows)
    totals: dict[int, dict[str, float]] = {}
    for d in task_dirs:
        for row in read_rows(d / SERVER_FILE):
            total = totals.setdefault(
                row["round"],
                {"round": row["round"], "seconds": 0.0, "replies": 0, "failures": 0, "bytes_up": 0, "bytes_down": 0},
            )
            for key in ("seconds", "replies", "failures", "bytes_up", "bytes_down"):
                total[key] += row.get(key) or 0
    RowWriter(run.path / SERVER_FILE, ["round", "seconds", "replies", "failures", "bytes_up", "bytes_down"]).write(
        [totals[r] for r in sorted(totals)]
    )


class FedFull(Arm):
    name = "fed_full"
    federated = True
    settings = {"server.federate_heads": True}

    def run(self, cfg: ExperimentConfig, run_dir: Path, federate: Federate) -> None:
        federate(at(cfg, run_dir), run_dir)


class LocalSTL(Arm):
    name = "local_stl"
    federated = False
    single_task = True

    def run(self, cfg: ExperimentConfig, run_dir: Path, federate: Federate) -> None:
        run = RunDirectory.create(at(cfg, run_dir))
        recorder = Recorder(run)
        initial = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
        evaluated = set(evaluation_rounds(cfg))
        for client_id in cfg.clients.participants():
            for task in tasks_held(cfg, client_id):
                client = LocalClient(at(cfg, run_dir, only_tasks=(task,)), client_id)
                shared, private = dict(initial), None
                recorder.record_clients(0, protocol.EVAL, [client.evaluate(shared, private)])
                for server_round in range(1, cfg.rounds + 1):
                    outcome = client.train(shared, private, server_round)
                    shared, private = outcome.shared, outcome.private
                    recorder.record_clients(server_round, protocol.TRAIN, [outcome.metrics])
                    if server_round in evaluated:
                        recorder.record_clients(server_round, protocol.EVAL, [client.evaluate(shared, private)])
        recorder.close()


class CentralMTL(Arm):
    name = "central_mtl"
    federated = False

    def run(self, cfg: ExperimentConfig, run_dir: Path, federate: Federate) -> None:
        run = RunDirectory.create(at(cfg, run_dir))
        recorder = Recorder(run)
        participants = cfg.clients.participants()
        specs = {s.name: s for s in cfg.data.task_specs() if any(s.name in tasks_held(cfg, c) for c in participants)}
        pooled = pool({c: client_data(cfg, c).train for c in participants})
        torch.manual_seed(derive_seed(cfg.seed, _CENTRAL_STREAM))
        model = MultiTaskModel(
            cfg.model, cfg.data.feature_dim(), specs.values(), cfg.model.sharing.adapter_rank, cfg.data.image_shape()
        )
        model.load_state_dict(
            {
                **model.state_dict(),
                **initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape()),
            }
        )
        sampled = sample_size(len(participants), cfg.server.fraction_fit)  # as the server samples
        train_cfg = replace(cfg.client, local_steps=cfg.client.local_steps * sampled)
        balancer_state: dict[str, torch.Tensor] = {}
        evaluated = set(evaluation_rounds(cfg))

        def record_eval(server_round: int) -> None:
            reports = []
            for c in participants:
                held = {t: specs[t] for t in tasks_held(cfg, c)}
                results = evaluate(model, client_data(cfg, c).eval, held)
                reports.append({protocol.CLIENT_ID: float(c), **protocol.flatten_task_metrics(protocol.EVAL, results)})
            recorder.record_clients(server_round, protocol.EVAL, reports)

        record_eval(0)
        for server_round in range(1, cfg.rounds + 1):
            generator = torch.Generator().manual_seed(derive_seed(cfg.seed, _CENTRAL_STREAM, server_round))
            balancer = cfg.client.balancing.start(list(specs), balancer_state)
            stats = train_local(model, pooled, specs, train_cfg, generator, balancer)
            balancer_state = balancer.state()
            per_task = {
                t: {"loss": loss, "num_examples": float(len(pooled[t])), "weight": stats.task_weights.get(t, 1.0)}
                for t, loss in stats.task_loss.items()
            }
            recorder.record_clients(
                server_round,
                protocol.TRAIN,
                [{protocol.CLIENT_ID: -1.0, **protocol.flatten_task_metrics(protocol.TRAIN, per_task)}],
            )
            if server_round in evaluated:
                record_eval(server_round)
        (run.path / CLIENTS_FILE).touch()
        recorder.close()


def pool(per_client: Mapping[int, Mapping[str, TaskData]]) -> dict[str, TaskData]:
    """Concatenate every client's data of each task (client order, so deterministic)."""
    tasks: dict[str, list[TaskData]] = {}
    for client in sorted(per_client):
        for task, data in per_client[client].items():
            tasks.setdefault(task, []).append(data)
    return {t: TaskData(torch.cat([d.x for d in parts]), torch.cat([d.y for d in parts])) for t, parts in tasks.items()}


ARMS: dict[str, type[Arm]] = {cls.name: cls for cls in (LocalSTL, FedSTL, FedMTL, FedFull, CentralMTL)}
