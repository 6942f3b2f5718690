"""Deterministic fault injection: what goes wrong for a client in a round, drawn from (seed, round, client)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmtl.config.experiment import FaultsConfig

_FAULT_STREAM = 409


class InjectedFault(RuntimeError):
    """A failure requested by the ``faults`` config."""


@dataclass(frozen=True)
class FaultDraw:
    error: bool = False
    nan: bool = False
    delay_s: float = 0.0
    kill_worker: bool = False


def draw_faults(faults: FaultsConfig, seed: int, server_round: int, client_id: int, attempt: int = 0) -> FaultDraw:
    rng = np.random.default_rng([seed, _FAULT_STREAM, server_round, client_id])
    error, nan = rng.random() < faults.client_error_rate, rng.random() < faults.client_nan_rate
    kill = attempt == 0 and faults.worker_kill_round == server_round and faults.worker_kill_client == client_id
    return FaultDraw(error=bool(error), nan=bool(nan), delay_s=faults.client_delay_s, kill_worker=kill)
