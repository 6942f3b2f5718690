"""The one contract between the round driver and whatever carries its messages.

An engine takes one round's instructions (:class:`~fedmtl.core.messages.Send`, one per participant)
and returns what came back (:class:`~fedmtl.core.messages.Exchange`): replies, failures included.
Engines declare what they can do (:class:`EngineCapabilities`) instead of being told apart by class.
fedmtl's engines (``server/engines/``) all carry Flower messages to the same ClientApp: Ray actors
(``direct``), Flower's simulation (``flower``), this process (``inprocess``), or a deployed SuperLink.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedmtl.core.messages import Exchange, Reply, Send


@dataclass(frozen=True)
class EngineCapabilities:
    """``places_nodes``: the engine placed each participant on a node itself, so no node needs to be asked
    which participant it plays. ``fixed_size``: the federation's nodes are all there from the start (a
    simulation); otherwise they may still be connecting (a deployment)."""

    places_nodes: bool
    fixed_size: bool


class Engine(Protocol):
    capabilities: EngineCapabilities

    def connect(self, participants: int, interchangeable: bool) -> None:
        """Wait for the federation's nodes and learn which participant each plays (``interchangeable``:
        every participant is sent the same, so any node may stand for any participant)."""

    def exchange(
        self, sends: Sequence[Send], timeout_s: float, on_reply: Callable[[Reply], None] | None = None
    ) -> Exchange:
        """Deliver ``sends`` and collect the replies until all are in or ``timeout_s`` passed; raise
        :class:`~fedmtl.core.errors.WorkerPoolDied` when a worker died. ``on_reply`` is called with each
        reply (the same object the exchange returns) as it arrives, or at the latest before returning."""
