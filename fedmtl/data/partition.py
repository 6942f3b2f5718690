"""Which tasks and how many samples each client holds: a pure function of the config."""

from __future__ import annotations

import numpy as np

from fedmtl.config.experiment import ExperimentConfig, tasks_held
from fedmtl.data.suites import ClientPlan

_SIZE_STREAM = 11


def tasks_of_client(cfg: ExperimentConfig, client_id: int) -> tuple[str, ...]:
    """The tasks a client trains and evaluates: those it holds, restricted by ``clients.only_tasks``."""
    held = tasks_held(cfg, client_id)
    return tuple(t for t in held if t in cfg.clients.only_tasks) if cfg.clients.only_tasks else held


def client_plan(cfg: ExperimentConfig, client_id: int) -> ClientPlan:
    """Client ``client_id``'s tasks and sample counts; lazily computable for any one client.

    The plan covers every task the client holds, even under ``clients.only_tasks``: the data of a
    task must not depend on which other tasks a study arm trains (clients filter afterwards).
    """
    clients = cfg.clients
    if not 0 <= client_id < clients.count:
        raise ValueError(f"client id {client_id} outside [0, {clients.count})")
    tasks = tasks_held(cfg, client_id)
    sigma = clients.sample_imbalance
    size_factor = float(
        np.exp(sigma * np.random.default_rng([cfg.seed, _SIZE_STREAM, client_id]).standard_normal() - sigma**2 / 2)
    )
    scales = tuple(clients.task_sample_scale.get(t, cfg.data.default_sample_scale(t)) for t in tasks)
    train = tuple(max(clients.min_samples, round(clients.samples_per_task * scale * size_factor)) for scale in scales)
    return ClientPlan(
        client_id, clients.count, tasks, train, tuple(clients.eval_samples_per_task for _ in tasks), scales
    )
