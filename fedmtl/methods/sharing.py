"""How much of the model is federated (config ``model.sharing``).

Each mode is a frozen dataclass that answers two questions through capabilities, never through
its name: which encoder parameters are shared (``is_shared``), and what the model and client
must build besides (``adapter_rank`` for per-task adapters, ``personal_mu`` for a personalised
encoder copy, ``num_experts`` for a mixture of encoder copies with a private gate per task). Everything not shared stays in the client's private state and is never sent.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from fedmtl.core.params import ENCODER_PREFIX, block_index
from fedmtl.core.registry import Component, Registry


class Sharing(Component):
    REGISTRY: ClassVar[Registry] = Registry("sharing mode", (__name__,))

    @property
    def adapter_rank(self) -> int:
        """> 0: each task gets a private residual adapter of this rank after every encoder block."""
        return 0

    @property
    def personal_mu(self) -> float | None:
        """Not None: keep a personalised copy trained with this proximal pull to the global encoder."""
        return None

    @property
    def num_experts(self) -> int:
        """> 0: the encoder is this many experts (copies of its architecture), mixed per task by a gate."""
        return 0

    @abstractmethod
    def is_shared(self, key: str) -> bool:
        """Whether model parameter ``key`` is federated."""

    def check(self, num_encoder_blocks: int) -> str | None:
        """A reason the mode does not fit the encoder, or None."""
        return None


@dataclass(frozen=True)
class Hard(Sharing):
    """Hard parameter sharing: the whole encoder is federated, one private head per task."""

    name: ClassVar[str] = "hard"

    def is_shared(self, key: str) -> bool:
        return key.startswith(ENCODER_PREFIX)


@dataclass(frozen=True)
class Partial(Sharing):
    """Only the first ``shared_blocks`` encoder blocks are federated; later blocks stay on the
    client (FedPer, Arivazhagan et al. 2019; FedRep, Collins et al., ICML 2021, without its
    alternating schedule)."""

    name: ClassVar[str] = "partial"
    shared_blocks: int = 1

    def __post_init__(self) -> None:
        if self.shared_blocks < 1:
            raise ValueError(f"shared_blocks must be >= 1, got {self.shared_blocks}")

    def is_shared(self, key: str) -> bool:
        index = block_index(key)
        return index is not None and index < self.shared_blocks

    def check(self, num_encoder_blocks: int) -> str | None:
        if self.shared_blocks > num_encoder_blocks:
            return f"shared_blocks is {self.shared_blocks} but the encoder has {num_encoder_blocks} blocks"
        return None


@dataclass(frozen=True)
class Adapters(Sharing):
    """Federated encoder plus a small private residual adapter per task after every encoder block
    (``h + B_t act(A_t h)``, ``B_t`` zero-initialised; Houlsby et al., ICML 2019; Rebuffi et al., 2017)."""

    name: ClassVar[str] = "adapters"
    rank: int = 4

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")

    @property
    def adapter_rank(self) -> int:
        return self.rank

    def is_shared(self, key: str) -> bool:
        return key.startswith(ENCODER_PREFIX)


@dataclass(frozen=True)
class Soft(Sharing):
    """Soft sharing in the style of Ditto (Li et al., ICML 2021): the federated encoder is trained
    as usual; each client also keeps a personalised copy (encoder and heads) trained on its own
    loss plus ``mu/2 ||v - w_global||^2`` on the encoder, evaluated separately (split ``personal``).
    With ``mu = 0`` the personalised copy is plain local training."""

    name: ClassVar[str] = "soft"
    mu: float = 0.1

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ValueError(f"mu must be >= 0, got {self.mu}")

    @property
    def personal_mu(self) -> float | None:
        return self.mu

    def is_shared(self, key: str) -> bool:
        return key.startswith(ENCODER_PREFIX)


@dataclass(frozen=True)
class MultiGateMixture(Sharing):
    """Multi-gate mixture of experts (MMoE; Ma et al., "Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts", KDD 2018): the encoder is ``experts`` copies of its
    architecture, each drawn apart; task ``t`` sees ``sum_e softmax(W_t x)_e expert_e(x)``. The experts
    are federated; each task's gate ``W_t`` (a linear map of the input, zero at the start: every task
    begins with the uniform mixture) stays private on the client, so the routing is learned per client."""

    name: ClassVar[str] = "mmoe"
    experts: int = 4  # how many experts (copies of model.encoder), all federated

    def __post_init__(self) -> None:
        if self.experts < 2:
            raise ValueError(f"experts must be >= 2, got {self.experts}")

    @property
    def num_experts(self) -> int:
        return self.experts

    def is_shared(self, key: str) -> bool:
        return key.startswith(ENCODER_PREFIX)


SHARING_MODES = Sharing.REGISTRY
for _mode in (Hard, Partial, Adapters, Soft, MultiGateMixture):
    SHARING_MODES.register(_mode)
