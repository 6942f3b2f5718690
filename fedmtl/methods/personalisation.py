"""Personalised aggregation of the shared encoder (config ``server.personalisation``), as pure tensor code.

After the server's aggregator has turned the round's K client updates into one conflict-averse
direction and the server optimizer has stepped the global encoder along it, every client that
trained gets its *own* encoder, a mix of its own update and the aggregated step. In parameter
space, with ``start_i`` the encoder client ``i`` received this round, ``u_i = start_i - local_i``
its update (gradient direction, the row the aggregator saw) and ``s = global_prev - global_new``
the server's step (``lr * d`` for ``sgd`` without momentum, ``d`` the configured aggregator's
direction: cagrad, upgrad, pcgrad, ...)::

    personal_i = start_i - alpha_i * u_i - (1 - alpha_i) * s

``alpha_i = 1`` is pure local training (``personal_i = local_i``); ``alpha_i = 0`` for every
client is the non-personalised federation (``personal_i = global_new``).

Storage: a client's encoder is held as its offset from the global encoder, ``o_i = personal_i -
global``, a flat vector only for clients whose encoder differs (none before they first train).
Since ``start_i = global_prev + o_i``, the rule above is ``o_i <- o_i + alpha_i (s - u_i)``; a
client that is not sampled keeps its offset and so follows the global encoder's progress.

The learned variant follows FedHCA² (Lu et al., "FedHCA²: Towards Hetero-Client Federated
Multi-Task Learning", CVPR 2024; code: github.com/innovator-zero/FedHCA2, ``models/hyperweight.py``
``HyperAggWeight`` and ``aggregate.py`` ``update_hyperweight``): the per-client weight is a
hyper-parameter of the aggregation, learned by the hypergradient of the client's own loss. The
client's next local update from ``personal_i`` stands in for the gradient of its loss there
(``u_next_i ~ lr_local * grad L_i(personal_i)``), so by the chain rule
``dL_i / d alpha_i ~ <u_next_i, d personal_i / d alpha_i> = <u_next_i, s - u_i>``, and

    alpha_i <- clip(alpha_i - lr * <u_next_i, s - u_i>, 0, 1)

(``normalize: true`` uses the cosine instead of the inner product: a scale-free signed step).
Differences from the authors' code: their rule is additive, ``new_i = last_i - u_i - alpha_i d_ca``
(their ``flatten_delta[i] + alpha[i] * flatten_delta_update``, the CAGrad direction with
``c = 0.4``, no server learning rate), here it is the convex mix above with the configured
aggregator and server optimizer; they update the weights with SGD (lr 0.01, momentum 0.9, weight
decay 1e-4) on an unclipped parameter clamped to [0, 1] in the forward pass, here plain signed
gradient steps on a weight kept in [0, 1]; they average the updates of clients with the same
dataset and tasks before mixing ("homo aggregation"), here every client mixes its own update;
every client trains every round there, here a client's pending direction waits until it is next
sampled. The decoder half of FedHCA² (hyper cross-attention over task heads) is not implemented:
heads stay private.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedmtl.core.registry import Component, Registry


def personalised_encoder(start: torch.Tensor, own: torch.Tensor, step: torch.Tensor, alpha: float) -> torch.Tensor:
    """``start - alpha * own - (1 - alpha) * step``: the rule, in parameter space (flat vectors)."""
    return start - alpha * own - (1 - alpha) * step


def hypergradient(next_update: torch.Tensor, direction: torch.Tensor, normalize: bool) -> float:
    """``<u_next, d personal / d alpha>`` (or their cosine): the estimate of ``dL / d alpha``."""
    inner = float(torch.dot(next_update.double(), direction.double()))
    if not normalize:
        return inner
    norms = float(next_update.double().norm() * direction.double().norm())
    return inner / norms if norms > 0 else 0.0


class PersonalEncoders:
    """The server's per-client encoders: offsets from the global encoder and mixing weights.

    Stateful on purpose (explicit ``state_dict``/``load_state_dict``, checkpointed with the
    server's updater); ``lr = None`` keeps every weight at ``alpha``.
    """

    def __init__(self, alpha: float, lr: float | None = None, normalize: bool = False) -> None:
        self.initial_alpha = alpha
        self.lr = lr
        self.normalize = normalize
        self.alphas: dict[int, float] = {}  # learned weights (only clients that moved away from the initial one)
        self.offsets: dict[int, torch.Tensor] = {}  # personal - global, only where nonzero
        self.directions: dict[int, torch.Tensor] = {}  # d personal / d alpha, awaiting the client's next update

    @property
    def learns(self) -> bool:
        return self.lr is not None

    def alpha(self, client: int) -> float:
        return self.alphas.get(client, self.initial_alpha)

    def offset(self, client: int) -> torch.Tensor | None:
        return self.offsets.get(client)

    def observe(self, clients: Sequence[int], rows: torch.Tensor, step: torch.Tensor) -> tuple[float, ...]:
        """One round: ``rows[k]`` is client ``clients[k]``'s update ``start - local`` and ``step`` the
        global encoder's ``prev - new``. Learns the weights from the rows (the feedback on last
        round's mixing), then moves each client's offset; returns the weights used, in row order."""
        if rows.shape[0] != len(clients) or rows.shape[1:] != step.shape:
            raise ValueError(
                f"rows {tuple(rows.shape)} do not match {len(clients)} clients and step {tuple(step.shape)}"
            )
        step = step.detach().to(torch.float32).cpu()
        used = []
        for client, row in zip(clients, rows):
            own = row.detach().to(torch.float32).cpu()
            if self.lr is not None and client in self.directions:
                feedback = hypergradient(own, self.directions.pop(client), self.normalize)
                self.alphas[client] = min(1.0, max(0.0, self.alpha(client) - self.lr * feedback))
            alpha = self.alpha(client)
            used.append(alpha)
            direction = step - own
            if self.lr is not None:
                self.directions[client] = direction
            if alpha != 0:
                previous = self.offsets.get(client)
                moved = alpha * direction
                self.offsets[client] = moved if previous is None else previous + moved
        return tuple(used)

    def state_dict(self) -> dict[str, Any]:
        return {
            "alphas": dict(self.alphas),
            "offsets": {c: v.clone() for c, v in self.offsets.items()},
            "directions": {c: v.clone() for c, v in self.directions.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.alphas = {int(client): float(alpha) for client, alpha in state["alphas"].items()}
        self.offsets = {int(c): v.clone() for c, v in state["offsets"].items()}
        self.directions = {int(c): v.clone() for c, v in state["directions"].items()}

    def __repr__(self) -> str:
        return f"PersonalEncoders(alpha={self.initial_alpha}, lr={self.lr}, normalize={self.normalize}, clients={len(self.offsets)})"


class Personalisation(Component):
    """How the server turns the round's updates into per-client encoders (config component)."""

    REGISTRY: ClassVar[Registry] = Registry("personalisation", (__name__,))

    @abstractmethod
    def start(self) -> PersonalEncoders | None:
        """Fresh per-client state for a run, or None when every client gets the global encoder."""


@dataclass(frozen=True)
class NoPersonalisation(Personalisation):
    """Every client receives the global encoder (the plain federation)."""

    name: ClassVar[str] = "none"

    def start(self) -> PersonalEncoders | None:
        return None


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


@dataclass(frozen=True)
class Mixed(Personalisation):
    """A fixed weight ``alpha`` on each client's own update, ``1 - alpha`` on the aggregated step."""

    name: ClassVar[str] = "mixed"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)

    def start(self) -> PersonalEncoders:
        return PersonalEncoders(self.alpha)


@dataclass(frozen=True)
class Learned(Personalisation):
    """FedHCA²-style learned per-client weights, starting at ``alpha``, moved by ``lr`` times the
    hypergradient of the client's loss (its next update; see the module docstring)."""

    name: ClassVar[str] = "learned"
    alpha: float = 0.5
    lr: float = 0.01
    normalize: bool = False  # True: step by the cosine, not the inner product

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def start(self) -> PersonalEncoders:
        return PersonalEncoders(self.alpha, self.lr, self.normalize)


PERSONALISATIONS = Personalisation.REGISTRY
for _rule in (NoPersonalisation, Mixed, Learned):
    PERSONALISATIONS.register(_rule)

__all__ = [
    "PERSONALISATIONS",
    "Learned",
    "Mixed",
    "NoPersonalisation",
    "PersonalEncoders",
    "Personalisation",
    "hypergradient",
    "personalised_encoder",
]
