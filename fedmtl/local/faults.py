"""Deterministic fault injection: what goes wrong for a client in a round, drawn from (seed, round, client).

Besides failures (errors, NaN updates, delays, dead workers), ``faults.attack`` makes a fixed set of
clients adversarial (Byzantine): every round they send a forged encoder update instead of their
honest one. The update is what the server aggregates, ``g = received - trained`` (gradient
direction, against the encoder the client received); an attacker sends ``received - forged(g)``,
so the server's row for it is exactly ``forged(g)``. Task heads are never attacked (private heads
never leave the client; federated heads are averaged separately, not by the aggregator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedmtl.config.sections import FaultsConfig
from fedmtl.core.params import is_head

_FAULT_STREAM = 409
_ADVERSARY_STREAM = 410  # which clients attack (fixed for a run)
_ATTACK_STREAM = 411  # an attacker's noise in a round


class InjectedFault(RuntimeError):
    """A failure requested by the ``faults`` config."""


@dataclass(frozen=True)
class FaultDraw:
    error: bool = False
    nan: bool = False
    delay_s: float = 0.0
    kill_worker: bool = False
    attack: str = "none"  # faults.attack when this client is adversarial, else "none"


def adversarial_clients(faults: FaultsConfig, seed: int, participants: Sequence[int]) -> frozenset[int]:
    """The clients that attack in every round: ``faults.adversarial_clients`` when listed, else the
    first ``floor(adversarial_fraction * len(participants))`` of a permutation of ``participants``
    drawn from ``seed``, so a larger fraction adds attackers to a smaller one's set. Empty when
    ``faults.attack`` is ``none``."""
    if faults.attack == "none":
        return frozenset()
    if faults.adversarial_clients:
        return frozenset(faults.adversarial_clients)
    count = math.floor(faults.adversarial_fraction * len(participants) + 1e-9)
    order = np.random.default_rng([seed, _ADVERSARY_STREAM]).permutation(sorted(participants))
    return frozenset(int(c) for c in order[:count])


def draw_faults(
    faults: FaultsConfig,
    seed: int,
    server_round: int,
    client_id: int,
    attempt: int = 0,
    adversaries: Collection[int] = (),
) -> FaultDraw:
    """``adversaries``: :func:`adversarial_clients` of the run."""
    rng = np.random.default_rng([seed, _FAULT_STREAM, server_round, client_id])
    error, nan = rng.random() < faults.client_error_rate, rng.random() < faults.client_nan_rate
    kill = (
        attempt < faults.worker_kill_attempts
        and faults.worker_kill_round == server_round
        and faults.worker_kill_client == client_id
    )
    attack = faults.attack if client_id in adversaries else "none"
    return FaultDraw(error=bool(error), nan=bool(nan), delay_s=faults.client_delay_s, kill_worker=kill, attack=attack)


# forged(update, attack_scale, generator): the update an attacker reports instead of its own.
ForgedUpdate = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
ATTACKS: dict[str, ForgedUpdate] = {
    "sign_flip": lambda update, scale, _: -scale * update,  # pushes the encoder up the clients' loss
    "scale": lambda update, scale, _: scale * update,  # a client that dominates the mean
    # Gaussian Byzantine workers (Blanchard et al., NeurIPS 2017): noise unrelated to the data
    "noise": lambda update, scale, generator: (
        scale * torch.randn(update.shape, generator=generator, dtype=update.dtype)
    ),
}


def attack_generator(seed: int, server_round: int, client_id: int) -> torch.Generator:
    """The attacker's randomness for one round, drawn from (seed, round, client) like every fault."""
    draw = np.random.default_rng([seed, _ATTACK_STREAM, server_round, client_id]).integers(2**62)
    return torch.Generator().manual_seed(int(draw))


def attack_update(
    attack: str,
    scale: float,
    received: Mapping[str, torch.Tensor],
    trained: Mapping[str, torch.Tensor],
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """What an attacking client sends instead of ``trained``: for every floating-point encoder entry,
    ``received - forged(received - trained)``; head entries and integer buffers go out unchanged."""
    forge = ATTACKS[attack]
    sent = dict(trained)
    for key in sorted(trained):
        local = trained[key]
        if is_head(key) or not local.is_floating_point():
            continue
        start = received[key].to(local.dtype)
        sent[key] = start - forge(start - local, scale, generator)
    return sent
