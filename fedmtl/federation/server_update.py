"""The server's step on the shared encoder, as pure tensor code.

The global encoder is held as one flat parameter vector. Each round, client states become
rows of pseudo-gradients ``global - local`` (gradient direction), the configured aggregator
combines them into a mean-scaled direction, and a torch optimizer steps along it. With
``fedavg`` and ``sgd(lr=1, momentum=0)`` this is exactly FedAvg:
``global - (global - weighted_mean(local)) = weighted_mean(local)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from fedmtl.config.sections import PrivacyConfig, ServerOptimizerConfig
from fedmtl.core.errors import ConfigError
from fedmtl.methods.aggregation import AggregationInput, Aggregator
from fedmtl.methods.aggregation.gramian import GramianPrecision, cosine_matrix, gramian
from fedmtl.methods.aggregation.gramian_stream import GramianStream
from fedmtl.methods.optimizers import OPTIMIZERS, OptimizerSettings
from fedmtl.methods.personalisation import Personalisation
from fedmtl.methods.privacy import CentralMechanism


@dataclass(frozen=True)
class FlatLayout:
    """Key order and shapes of a state dict, to move between dicts and one flat vector."""

    keys: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> FlatLayout:
        keys = tuple(sorted(state))
        return cls(keys, tuple(state[k].shape for k in keys))

    @property
    def expected_shapes(self) -> dict[str, torch.Size]:
        return dict(zip(self.keys, self.shapes))

    def flatten(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[k].detach().reshape(-1).to(torch.float32) for k in self.keys])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for key, shape in zip(self.keys, self.shapes):
            size = shape.numel()
            out[key] = flat[offset : offset + size].detach().reshape(shape).clone()
            offset += size
        return out


@dataclass(frozen=True)
class RoundDiagnostics:
    """What the aggregation did this round (written to the run's server metrics)."""

    clients: tuple[int, ...]  # client ids, in row order
    weights: tuple[float, ...] | None
    cosines_upper: tuple[float, ...]  # upper triangle (i < j, row-major) of the K x K cosine matrix
    conflict_fraction: float  # fraction of client pairs whose updates have negative cosine
    aggregate_norm: float
    mean_norm: float
    personal_alphas: tuple[float, ...] | None = None  # each row's weight on its own update (server.personalisation)
    update_norms: tuple[float, ...] = ()  # each row's L2 norm
    clip_norm: float | None = None  # privacy.noise_at: server: the bound the rows were clipped to this round


def central_mechanism(privacy: PrivacyConfig, rows_per_round: int) -> CentralMechanism:
    """The server's DP mechanism for ``privacy``."""
    assert privacy.clip_norm is not None
    count_noise = privacy.count_noise_for(rows_per_round)
    return CentralMechanism(
        privacy.clip_norm, privacy.noise_multiplier, privacy.target_quantile, privacy.clip_lr, count_noise
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when this process sees a GPU, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("server.device", "is cuda but the server process sees no GPU")
    return torch.device(device)


def make_server_optimizer(cfg: ServerOptimizerConfig, param: torch.nn.Parameter) -> torch.optim.Optimizer:
    """``server.optimizer`` over the flat encoder: SGD (FedAvg, FedAvgM) or Adam (FedAdam), by name."""
    settings = OptimizerSettings(lr=cfg.lr, momentum=cfg.momentum, betas=cfg.betas, eps=cfg.eps)
    return OPTIMIZERS[cfg.name]().make([param], settings)


class ServerUpdater:
    """Global encoder + aggregator + server optimizer; checkpointable through ``state_dict``."""

    def __init__(
        self,
        initial: Mapping[str, torch.Tensor],
        aggregator: Aggregator,
        optimizer: ServerOptimizerConfig,
        seed: int,
        device: str = "cpu",
        gramian_precision: GramianPrecision = "float32",
        personalisation: Personalisation | None = None,
        central_privacy: PrivacyConfig | None = None,
        rows_per_round: int = 1,
    ) -> None:
        self.layout = FlatLayout.of(initial)
        # privacy.noise_at: server: the server clips every row and noises the mean
        self.privacy = None if central_privacy is None else central_mechanism(central_privacy, rows_per_round)
        self.gramian_precision = gramian_precision
        self.aggregator = aggregator
        self.param = torch.nn.Parameter(self.layout.flatten(initial))
        self.optimizer = make_server_optimizer(optimizer, self.param)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = resolve_device(device)
        self.personal = personalisation.start() if personalisation is not None else None

    def global_state(self) -> dict[str, torch.Tensor]:
        return self.layout.unflatten(self.param)

    def client_offset(self, client_id: int) -> torch.Tensor | None:
        """Client ``client_id``'s personal encoder minus the global one; None when it gets the global encoder."""
        return None if self.personal is None else self.personal.offset(client_id)

    def client_state(self, client_id: int) -> dict[str, torch.Tensor]:
        """The encoder client ``client_id`` receives: the global one plus its offset (``server.personalisation``)."""
        offset = self.client_offset(client_id)
        return self.global_state() if offset is None else self.layout.unflatten(self.param.detach() + offset)

    def step(
        self,
        client_ids: Sequence[int],
        client_states: Sequence[Mapping[str, torch.Tensor]],
        num_examples: Sequence[float],
        losses: Sequence[float] | None = None,
        streamed: tuple[GramianStream, Sequence[int]] | None = None,
    ) -> RoundDiagnostics:
        """Aggregate the clients' encoders (rows in ``client_ids`` order) and step the global one;
        with personalisation, rows are taken against each client's own encoder and its offset moves.
        ``streamed``: the rows were written into a stream as they arrived (:meth:`stream`), at these
        slots, so they and most of their Gramian are there already."""
        products = None
        if streamed is not None:
            stream, slots = streamed
            matrix, products = stream.matrix(slots), stream.gramian(slots)
        else:
            offsets = None if self.personal is None else [self.personal.offset(c) for c in client_ids]
            matrix = self.update_matrix(client_states, offsets)
        bound = None if self.privacy is None else self.privacy.clip(matrix)
        personal = None if self.personal is None else (self.personal, self.param.detach().clone())
        inputs = AggregationInput(
            matrix=matrix,
            num_examples=torch.tensor(num_examples, dtype=torch.float64, device=self.device),
            losses=None if losses is None else torch.tensor(losses, dtype=torch.float64, device=self.device),
            generator=self.generator,
            gramian_precision=self.gramian_precision,
            products=products,
        )
        result = self.aggregator(inputs)
        direction = result.direction
        if self.privacy is not None:
            direction = self.privacy.noise(direction, len(client_ids), self.generator)
        self.param.grad = direction.reshape(self.param.shape).cpu()  # the rows' dtype: float32, as the encoder
        self.optimizer.step()
        gram = (
            result.gramian if result.gramian is not None else gramian(matrix, self.gramian_precision, products=products)
        )
        diagnostics = replace(diagnose(client_ids, matrix, result.direction, result.weights, gram), clip_norm=bound)
        if personal is None:
            return diagnostics
        tracker, before = personal
        alphas = tracker.observe(client_ids, matrix, before - self.param.detach())
        return replace(diagnostics, personal_alphas=alphas)

    def update_matrix(
        self,
        client_states: Sequence[Mapping[str, torch.Tensor]],
        offsets: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """``[K, P]`` rows ``global - local`` on the aggregation device, written in place row by row;
        ``offsets[k]`` (client k's encoder minus the global one, when it had its own) is added to row k."""
        current = self.param.detach().to(self.device)
        matrix = torch.empty(len(client_states), current.numel(), dtype=current.dtype, device=self.device)
        for k, (row, state) in enumerate(zip(matrix, client_states)):
            self.write_row(row, state, current)
            own = None if offsets is None else offsets[k]
            if own is not None:
                row.add_(own.to(self.device))
        return matrix

    def write_row(self, row: torch.Tensor, state: Mapping[str, torch.Tensor], current: torch.Tensor) -> None:
        """``row = current - flatten(state)``, in place (``current``: the flat encoder on ``row``'s device)."""
        offset = 0
        for key in self.layout.keys:
            value = state[key].detach().reshape(-1)
            row[offset : offset + value.numel()].copy_(value)
            offset += value.numel()
        torch.sub(current, row, out=row)

    @property
    def streams(self) -> bool:
        """Whether rows may be taken as replies arrive (:meth:`stream`): each row is then the update
        against the global encoder as it is, with nothing done to it before it is aggregated (no
        personal encoders, no clipping for central privacy)."""
        return self.personal is None and self.privacy is None

    def stream(self, slots: int) -> GramianStream:
        """A stream for ``slots`` rows this round, on the aggregation device, in ``server.gramian_precision``."""
        return GramianStream(slots, self.param.numel(), self.device, self.gramian_precision)

    def state_dict(self) -> dict:
        state = {
            "param": self.param.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }
        if self.personal is not None:
            state["personal"] = self.personal.state_dict()
        if self.privacy is not None:
            state["privacy"] = self.privacy.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.param.copy_(state["param"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if (self.personal is None) != ("personal" not in state):
            raise ValueError(
                "the checkpoint and server.personalisation disagree on per-client encoders: resume with the run's config"
            )
        if self.personal is not None:
            self.personal.load_state_dict(state["personal"])
        if self.privacy is not None:
            self.privacy.load_state_dict(state["privacy"])


def diagnose(
    client_ids: Sequence[int],
    matrix: torch.Tensor,
    direction: torch.Tensor,
    weights: torch.Tensor | None,
    gram: torch.Tensor,
) -> RoundDiagnostics:
    """``gram``: the rows' Gramian (the aggregator's own when it built one)."""
    cosines = cosine_matrix(gram)
    k = matrix.shape[0]
    upper = cosines[torch.triu_indices(k, k, offset=1).unbind()]  # empty for one row
    return RoundDiagnostics(
        clients=tuple(int(c) for c in client_ids),
        # tolist(): one conversion in C; iterating a tensor makes a Python tensor per element (K = 1,000: 499,500)
        weights=None if weights is None else tuple(weights.tolist()),
        cosines_upper=tuple(upper.tolist()),
        conflict_fraction=float((upper < 0).double().mean()) if k > 1 else 0.0,
        aggregate_norm=float(direction.norm()),
        mean_norm=float(matrix.mean(dim=0).norm()),
        update_norms=tuple(gram.diagonal().clamp_min(0).sqrt().tolist()),
    )
