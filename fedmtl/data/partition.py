"""How many samples of each task a client holds: a pure function of the clients, the suite and the seed."""

from __future__ import annotations

import numpy as np

from fedmtl.data.clients import ClientsConfig
from fedmtl.data.suites import ClientPlan, TaskSuite

_SIZE_STREAM = 11


def client_plan(clients: ClientsConfig, suite: TaskSuite, seed: int, client_id: int) -> ClientPlan:
    """Client ``client_id``'s tasks and sample counts; lazily computable for any one client.

    The plan covers every task the client holds, even under ``clients.only_tasks`` or a participant
    layout that trains one task at a time: the data of a task must not depend on which other tasks an
    arm trains (participants filter afterwards).
    """
    if not 0 <= client_id < clients.count:
        raise ValueError(f"client id {client_id} outside [0, {clients.count})")
    tasks = clients.tasks_held(client_id, suite.task_names())
    sigma = clients.sample_imbalance
    size_factor = float(
        np.exp(sigma * np.random.default_rng([seed, _SIZE_STREAM, client_id]).standard_normal() - sigma**2 / 2)
    )
    scales = tuple(clients.task_sample_scale.get(t, suite.default_sample_scale(t)) for t in tasks)
    train = tuple(max(clients.min_samples, round(clients.samples_per_task * scale * size_factor)) for scale in scales)
    return ClientPlan(
        client_id, clients.count, tasks, train, tuple(clients.eval_samples_per_task for _ in tasks), scales
    )
