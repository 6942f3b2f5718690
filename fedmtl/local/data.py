"""The data a participant trains and evaluates on, from the clients' data (generated or loaded on first
use in each process; a cache bounded in bytes keeps memory flat at scale)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.data.issues import apply_drift, apply_issues
from fedmtl.data.participants import Participant
from fedmtl.data.partition import client_plan
from fedmtl.data.suites import ClientData, TaskData

DATA_CACHE_BYTES = 128 * 2**20
"""Tensor bytes of clients' data a process keeps (least recently used dropped first; the newest client's
always): a worker that meets a thousand small clients every round keeps them all (the synthetic clients of
``benchmarks/overhead.py``'s ``many`` workload take 12 KB each), one of large image clients a few."""
_data_cache: OrderedDict[tuple[str, int], tuple[ClientData, int]] = OrderedDict()  # (data, its bytes)
_cached_bytes = 0


def data_key(cfg: ExperimentConfig) -> str:
    """What a client's data depends on (seed, data suite, clients but not who trains): the cache key,
    shared by every arm and run of a study."""
    return cfg.data_fingerprint


def client_data(cfg: ExperimentConfig, client_id: int, server_round: int = 0) -> ClientData:
    """Every task client ``client_id`` holds, train and eval, as it is in round ``server_round`` (a task's
    data never depends on which other tasks a participant trains; only a ``drift`` issue on the round)."""
    global _cached_bytes
    key = (data_key(cfg), client_id)
    if key in _data_cache:
        _data_cache.move_to_end(key)
        data = _data_cache[key][0]
    else:
        data = cfg.data.client_data(cfg.seed, client_plan(cfg.clients, cfg.data, cfg.seed, client_id))
        data = apply_issues(cfg.data_issues, cfg.data.task_specs(), cfg.seed, client_id, data, cfg.clients.count)
        size = data_bytes(data)
        _data_cache[key] = (data, size)
        _cached_bytes += size
        while _cached_bytes > DATA_CACHE_BYTES and len(_data_cache) > 1:
            _cached_bytes -= _data_cache.popitem(last=False)[1][1]
    return apply_drift(
        cfg.data_issues, cfg.data.task_specs(), cfg.seed, client_id, data, server_round, cfg.clients.count
    )


def data_bytes(data: ClientData) -> int:
    """The bytes of a client's tensors, train and eval."""
    return sum(t.x.nbytes + t.y.nbytes for split in (data.train, data.eval) for t in split.values())


@dataclass(frozen=True)
class ParticipantData:
    """What one participant trains on, and the held-out sets it evaluates, per client it speaks for."""

    train: dict[str, TaskData]
    evals: tuple[tuple[int, dict[str, TaskData]], ...]  # (client id, eval data of the client's tasks)


def participant_data(cfg: ExperimentConfig, participant: Participant, server_round: int = 0) -> ParticipantData:
    """A participant's data in round ``server_round``: its client's data of its tasks, or (pooled) every
    member's training data concatenated task by task in client order, and each member's own held-out data."""
    tasks = set(participant.tasks)
    per_client = {c: client_data(cfg, c, server_round) for c in participant.clients}
    held = {c: [t for t in cfg.clients.tasks_of(c, cfg.data.task_names()) if t in tasks] for c in per_client}
    evals = tuple((c, {t: per_client[c].eval[t] for t in held[c]}) for c in participant.clients)
    if not participant.pooled:
        (client,) = participant.clients
        return ParticipantData({t: per_client[client].train[t] for t in participant.tasks}, evals)
    trains = [{t: per_client[c].train[t] for t in held[c]} for c in sorted(participant.clients)]
    return ParticipantData(pool(trains), evals)


def pool(per_client: Sequence[dict[str, TaskData]]) -> dict[str, TaskData]:
    """Concatenate every client's data of each task, in client order."""
    parts: dict[str, list[TaskData]] = {}
    for data in per_client:
        for task, task_data in data.items():
            parts.setdefault(task, []).append(task_data)
    return {t: TaskData(torch.cat([d.x for d in ps]), torch.cat([d.y for d in ps])) for t, ps in parts.items()}
