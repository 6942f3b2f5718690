"""The experiment's sections besides data, clients and model: local training, the server, resources,
the simulation engine, faults, checkpoints and output. Every default lives here, next to a comment
saying what it means (docs/CONFIGURATION.md is generated from these comments)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fedmtl.config.engines import DirectEngine, EngineKind
from fedmtl.core.errors import require
from fedmtl.core.layout import MetricsFormat
from fedmtl.methods.aggregation import Aggregator, FedAvg
from fedmtl.methods.balancing import Balancer, Static
from fedmtl.methods.cohorts import Cohorts, OneCohort
from fedmtl.methods.grouping import Grouping, NoGrouping
from fedmtl.methods.optimizers import OPTIMIZERS, SGD, Optimizer
from fedmtl.methods.personalisation import NoPersonalisation, Personalisation
from fedmtl.methods.task_sampling import AllTasks, TaskSampler


@dataclass(frozen=True)
class RollbackConfig:
    """Per-client roll-back (fedmtl/local/rollback.py): each client holds out a validation split of its
    training data, trains a local model beside the federated one, and predicts each task with the
    federated model, the local one or their mean output, whichever validates best."""

    # Fraction of each task's training examples held out for the choice (0 = off: no roll-back).
    validation_fraction: float = 0.0
    # local or mix is chosen only when its validation loss is below the federated one by this fraction
    margin: float = 0.0

    def __post_init__(self) -> None:
        fraction = self.validation_fraction
        require(0 <= fraction < 1, "validation_fraction", f"must be in [0, 1), got {fraction}")
        require(0 <= self.margin < 1, "margin", f"must be in [0, 1), got {self.margin}")

    @property
    def enabled(self) -> bool:
        return self.validation_fraction > 0


@dataclass(frozen=True)
class ClientConfig:
    """What each client does locally, per round (``clients:`` says who the clients are)."""

    local_steps: int = 20  # optimizer steps per round
    batch_size: int = 32  # examples per task in each local step
    optimizer: Optimizer = field(default_factory=SGD)  # local optimizer of the model and private parameters: sgd | adam
    lr: float = 0.05  # local learning rate
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # L2 penalty of the local optimizer
    balancing: Balancer = field(default_factory=Static)  # {name: static | uncertainty | gradnorm | dwa}
    # Gradient surgery on the per-task gradients of the encoder, with the server's aggregators
    # (e.g. {name: pcgrad}); none by default.
    surgery: Aggregator | None = None
    task_sampling: TaskSampler = field(default_factory=AllTasks)  # {name: all | proportional | uniform | temperature}
    # Measure per-task encoder gradients every k steps for the conflict diagnostics (0 = never).
    gradient_diagnostics_every: int = 5
    subspace_steps: int = 4  # measurements per task spanning its gradient subspace (principal angles)
    # Measure TAG's lookahead task affinity Z(i -> j) on the encoder every k steps (0 = never): one
    # extra gradient and T lookahead evaluations per probe (fedmtl/local/affinity.py).
    affinity_every: int = 0
    # Before each evaluation, fit the private heads to the encoder as received for this many steps
    # (encoder frozen, the fitted heads discarded afterwards): FedRep's head update (Collins et al.,
    # ICML 2021) as an evaluation protocol. 0 = evaluate the heads as the last training left them.
    eval_head_steps: int = 0
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    # false: the encoder stays as received (frozen) and only the private heads train: heads on frozen
    # shared embeddings, the alternative to multi-task training with a pretrained encoder (model.init_from).
    train_encoder: bool = True

    def __post_init__(self) -> None:
        require(self.local_steps >= 1, "local_steps", f"must be >= 1, got {self.local_steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        at_least = (
            ("gradient_diagnostics_every", 0),
            ("subspace_steps", 1),
            ("eval_head_steps", 0),
            ("affinity_every", 0),
        )
        for key, least in at_least:
            require(getattr(self, key) >= least, key, f"must be >= {least}, got {getattr(self, key)}")


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """Step applied to the aggregated direction: ``sgd`` with lr 1 and no momentum is FedAvg."""

    name: str = (
        "sgd"  # an optimizer (fedmtl/methods/optimizers.py): sgd = FedAvg (FedAvgM with momentum), adam = FedAdam
    )
    lr: float = 1.0  # server learning rate on the aggregated direction
    momentum: float = 0.0  # sgd only (FedAvgM when > 0)
    betas: tuple[float, float] = (0.9, 0.99)  # adam only (FedAdam)
    eps: float = 1e-3  # adam only; FedAdam's tau

    def __post_init__(self) -> None:
        require(self.name in OPTIMIZERS, "name", f"must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(all(0 <= b < 1 for b in self.betas), "betas", f"must be in [0, 1), got {list(self.betas)}")
        require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")


@dataclass(frozen=True)
class ServerConfig:
    aggregator: Aggregator = field(default_factory=FedAvg)  # {name: fedavg | ...}
    optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    fraction_fit: float = 1.0  # fraction of clients trained each round
    # fraction of clients evaluated at each evaluation (large federations: a seeded sample per round)
    fraction_evaluate: float = 1.0
    # Where the K x P update matrix is aggregated: auto = CUDA when the server process sees a GPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Gramian-based aggregators: float32 = one matrix product, recomputed in float64 when the rows are
    # nearly dependent (fedmtl/methods/aggregation/gramian.py); float64 = always accumulated in float64.
    gramian_precision: Literal["float32", "float64"] = "float32"
    round_timeout_s: float = 600.0  # how long the server waits for replies in a round
    # A round aggregates only if at least this fraction of the sampled clients sent a valid update;
    # otherwise the run stops with a clear message (everything written so far stays valid).
    min_fit_fraction: float = 0.5
    max_update_norm: float | None = None  # reject client updates whose L2 norm exceeds this
    # Also federate the task heads (averaged among the clients holding each task): the naive design
    # that the study's fed_full arm measures. Default false: heads never leave the clients.
    federate_heads: bool = False
    # With federate_heads: average the heads of all tasks together (one head serves every task, as
    # whole-model FedAvg does when clients hold different tasks of the same output shape). Default
    # false: a head is averaged only among the clients that hold its task.
    heads_across_tasks: bool = False
    # Per-client encoders (FedHCA²-style): {name: none | mixed | learned, alpha: 0.5, ...}; each client
    # receives the global encoder plus its own offset (fedmtl/methods/personalisation.py).
    personalisation: Personalisation = field(default_factory=NoPersonalisation)
    # Which participants share an encoder: one (the federation), task (one encoder per task: fed_stl)
    # or participant (each keeps its own, nothing aggregated: local training) (fedmtl/methods/cohorts.py).
    cohorts: Cohorts = field(default_factory=OneCohort)
    # Groups of clients that each keep their own encoder, formed during the run: none | given (groups:
    # [[0, 1], [2, 3]]) | cfl (clustered FL's split rule) | affinity (clustered once after warm-up on
    # update cosines or task affinity) (fedmtl/methods/grouping/). Needs server.cohorts: one.
    grouping: Grouping = field(default_factory=NoGrouping)
    # With a grouping: the lowest this many encoder blocks stay federated across all groups (averaged
    # over the groups after each round, weighted by their clients' examples); the blocks above are each
    # group's own. 0: groups share nothing.
    shared_across_groups: int = 0
    # > 0: client affinity Z(i -> j), how much client i's round update lowers client j's losses, measured
    # by j on its own data (every this many rounds, probed in the round after). Each training message of
    # the next round then carries the updates of the client's group: the clients see each other's
    # trained encoders (never heads or data). 0: off (docs/METHODS.md).
    client_affinity_every: int = 0

    def __post_init__(self) -> None:
        for key in ("fraction_fit", "fraction_evaluate"):
            require(0 < getattr(self, key) <= 1, key, f"must be in (0, 1], got {getattr(self, key)}")
        require(0 <= self.min_fit_fraction <= 1, "min_fit_fraction", f"must be in [0, 1], got {self.min_fit_fraction}")
        norm = self.max_update_norm
        require(norm is None or norm > 0, "max_update_norm", f"must be > 0, got {norm}")
        require(self.round_timeout_s > 0, "round_timeout_s", f"must be > 0, got {self.round_timeout_s}")
        shared = self.shared_across_groups
        require(shared >= 0, "shared_across_groups", f"must be >= 0, got {shared}")
        every = self.client_affinity_every
        require(every >= 0, "client_affinity_every", f"must be >= 0, got {every}")


@dataclass(frozen=True)
class SecureAggregationConfig:
    """Flower's SecAgg+ (Bell et al., CCS 2020) on the encoder updates: the server learns only their
    (weighted) mean, never one client's update (server/engines/secure.py; docs/METHODS.md, "Privacy")."""

    enabled: bool = False  # true: training rounds aggregate the encoder updates with SecAgg+
    # each client's secrets are shared with this fraction of the clients sampled in the round (Flower's num_shares)
    num_shares: float = 1.0
    # the fraction of a client's shares needed to reconstruct its mask (Flower's reconstruction_threshold)
    reconstruction_threshold: float = 0.5
    # every update coordinate (times its weight over the largest weight) must lie in +-clipping_range: a
    # value outside is cut to it (counted in server.jsonl as secure_aggregation.clipped_values)
    clipping_range: float = 8.0
    quantization_range: int = 4194304  # 2^22 levels over [-clipping_range, clipping_range]
    modulus_range: int = 4294967296  # 2^32: the masked sums wrap modulo this (a power of 2)

    def __post_init__(self) -> None:
        require(0 < self.num_shares <= 1, "num_shares", f"must be a fraction in (0, 1], got {self.num_shares}")
        threshold = self.reconstruction_threshold
        require(0 < threshold <= 1, "reconstruction_threshold", f"must be a fraction in (0, 1], got {threshold}")
        require(self.clipping_range > 0, "clipping_range", f"must be > 0, got {self.clipping_range}")
        require(self.quantization_range > 0, "quantization_range", f"must be > 0, got {self.quantization_range}")
        modulus = self.modulus_range
        require(
            modulus > self.quantization_range and modulus & (modulus - 1) == 0,
            "modulus_range",
            f"must be a power of 2 above quantization_range, got {modulus}",
        )


@dataclass(frozen=True)
class SampleLevelConfig:
    """DP-SGD inside each client (Abadi et al., CCS 2016): every example's gradient clipped, Gaussian noise
    on their sum, each client's own epsilon (fedmtl/local/dp_sgd.py; docs/METHODS.md, "Privacy")."""

    clip_norm: float | None = None  # L2 bound on one example's gradient (all trained parameters); null = off
    noise_multiplier: float = 1.0  # sigma: noise of std sigma * clip_norm on each step's sum of clipped gradients

    def __post_init__(self) -> None:
        bound = self.clip_norm
        require(bound is None or bound > 0, "clip_norm", f"must be > 0, got {bound}")
        require(self.noise_multiplier >= 0, "noise_multiplier", f"must be >= 0, got {self.noise_multiplier}")

    @property
    def enabled(self) -> bool:
        return self.clip_norm is not None


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy of the encoder updates (DP-FedAvg; fedmtl/methods/privacy.py)."""

    # L2 bound C on each client's encoder update (clipped to it); null = no privacy mechanism
    clip_norm: float | None = None
    noise_multiplier: float = 0.0  # z: Gaussian noise of std z * C on the sum of the clipped updates
    # server: the server clips every update and adds the noise to their uniform mean (a trusted server);
    # client: each client clips its own update and adds N(0, (z C)^2) before sending it (an untrusted server)
    noise_at: Literal["server", "client"] = "server"
    delta: float = 1e-5  # the delta at which epsilon is reported
    # Adaptive clipping (noise_at: server; Andrew et al., NeurIPS 2021): the bound follows this quantile of
    # the update norms, starting at clip_norm; null = the bound stays clip_norm
    target_quantile: float | None = None
    clip_lr: float = 0.2  # adaptive clipping: the geometric step of the bound per round
    # adaptive clipping: std of the noise on the count of updates within the bound; null = clients per round / 20
    count_noise: float | None = None
    epsilon_budget: float | None = None  # stop the run before the round that would spend more than this
    # SecAgg+: {enabled: true, ...}; with FedAvg only, alone or with noise_at: client (docs/METHODS.md)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    # DP-SGD inside each client: {clip_norm: 1.0, noise_multiplier: 1.0}; epsilon per client at privacy.delta
    sample_level: SampleLevelConfig = field(default_factory=SampleLevelConfig)

    def __post_init__(self) -> None:
        bound = self.clip_norm
        require(bound is None or bound > 0, "clip_norm", f"must be > 0, got {bound}")
        require(self.noise_multiplier >= 0, "noise_multiplier", f"must be >= 0, got {self.noise_multiplier}")
        require(bound is not None or self.noise_multiplier == 0, "noise_multiplier", "needs privacy.clip_norm")
        require(0 < self.delta < 1, "delta", f"must be in (0, 1), got {self.delta}")
        budget = self.epsilon_budget
        require(budget is None or budget > 0, "epsilon_budget", f"must be > 0, got {budget}")
        require(budget is None or self.noise_multiplier > 0, "epsilon_budget", "needs privacy.noise_multiplier > 0")
        quantile = self.target_quantile
        require(quantile is None or 0 < quantile < 1, "target_quantile", f"must be in (0, 1), got {quantile}")
        require(
            quantile is None or self.noise_at == "server", "target_quantile", "adaptive clipping needs noise_at: server"
        )
        require(self.clip_lr > 0, "clip_lr", f"must be > 0, got {self.clip_lr}")
        require(self.count_noise is None or self.count_noise > 0, "count_noise", f"must be > 0, got {self.count_noise}")

    @property
    def enabled(self) -> bool:
        return self.clip_norm is not None

    @property
    def central(self) -> bool:
        """The server clips and adds noise (rather than each client)."""
        return self.enabled and self.noise_at == "server"

    @property
    def local(self) -> bool:
        return self.enabled and self.noise_at == "client"

    def count_noise_for(self, clients_per_round: int) -> float:
        """Adaptive clipping's noise on the count: ``count_noise``, or Andrew et al.'s clients per round / 20."""
        return self.count_noise if self.count_noise is not None else clients_per_round / 20


@dataclass(frozen=True)
class ResourcesConfig:
    """Ray backend of Flower's simulation engine."""

    client_cpus: float = 1.0  # CPUs reserved per simulated client (Ray actor)
    client_gpus: float = 0.0  # GPUs (fraction allowed) per simulated client
    num_cpus: int | None = None  # CPUs Ray may use; default: all of this machine's
    num_gpus: int | None = None  # GPUs Ray may use; default: those torch sees
    torch_threads: int = 1  # intra-op threads per client process
    # An existing Ray cluster (`ray start --head` on the head node; "auto", "host:port" or
    # "ray://host:port"): clients run on its nodes; num_cpus/num_gpus must then stay unset.
    ray_address: str | None = None

    def __post_init__(self) -> None:
        require(self.client_cpus > 0, "client_cpus", f"must be > 0, got {self.client_cpus}")
        require(self.client_gpus >= 0, "client_gpus", f"must be >= 0, got {self.client_gpus}")
        require(self.torch_threads >= 1, "torch_threads", f"must be >= 1, got {self.torch_threads}")


@dataclass(frozen=True)
class SimulationConfig:
    # direct: each message handed straight to a Ray actor, no polling (a round costs what its clients
    # compute); flower: Flower's own run_simulation (an in-memory link state polled every 0.1 s);
    # inprocess: every client in this process, one after another (no Ray: debugging, small tests).
    # All run the same ServerApp and ClientApp and give the same metrics (fedmtl/config/engines.py).
    engine: EngineKind = field(default_factory=DirectEngine)


@dataclass(frozen=True)
class FaultsConfig:
    """Fault injection for robustness studies and tests; every draw derives from (seed, round, client)."""

    client_error_rate: float = 0.0  # probability that a client's training call raises
    client_nan_rate: float = 0.0  # probability that a client's update is corrupted with NaN
    client_delay_s: float = 0.0  # seconds every training call sleeps (slow clients, timeouts)
    worker_kill_round: int = 0  # > 0: in this round the worker running worker_kill_client dies
    worker_kill_client: int = 0  # the client id whose worker dies in worker_kill_round
    # In how many attempts of that round the worker dies: 1 = only the first (the restart from the last
    # checkpoint then succeeds); more than checkpoint.restarts = the run gives up.
    worker_kill_attempts: int = 1
    # Adversarial (Byzantine) clients: each round they replace their encoder update g = global - local
    # by -attack_scale * g (sign_flip), attack_scale * g (scale) or Gaussian noise of std attack_scale
    # (noise); see fedmtl.local.faults. none: nobody attacks.
    attack: Literal["none", "sign_flip", "scale", "noise"] = "none"
    attack_scale: float = 1.0  # the factor for sign_flip and scale, the standard deviation for noise
    # Who attacks, the same clients every round: floor(fraction * participants) of them, drawn from
    # the seed (a larger fraction adds clients to a smaller one's set). Set this or adversarial_clients.
    adversarial_fraction: float = 0.0
    adversarial_clients: tuple[int, ...] = ()  # named attackers (client ids), instead of a fraction

    def __post_init__(self) -> None:
        for key in ("client_error_rate", "client_nan_rate", "adversarial_fraction"):
            require(0 <= getattr(self, key) <= 1, key, f"must be in [0, 1], got {getattr(self, key)}")
        for key in ("client_delay_s", "worker_kill_round", "worker_kill_client"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        require(
            self.worker_kill_attempts >= 1, "worker_kill_attempts", f"must be >= 1, got {self.worker_kill_attempts}"
        )
        require(
            0 < self.attack_scale < float("inf"), "attack_scale", f"must be > 0 and finite, got {self.attack_scale}"
        )
        ids = self.adversarial_clients
        require(
            min(ids, default=0) >= 0 and len(set(ids)) == len(ids),
            "adversarial_clients",
            f"must be distinct ids >= 0, got {list(ids)}",
        )
        if self.adversarial_fraction > 0 and self.adversarial_clients:
            raise ValueError("set adversarial_fraction or adversarial_clients, not both")
        attackers = "adversarial_clients" if self.adversarial_clients else "adversarial_fraction"
        require(
            self.attack != "none" or not (self.adversarial_fraction > 0 or self.adversarial_clients),
            attackers,
            "attackers are set but faults.attack is none: choose sign_flip, scale or noise",
        )


@dataclass(frozen=True)
class CheckpointConfig:
    # Server state (encoder, aggregator and optimizer state, RNGs, round) is written atomically every
    # `every` rounds; clients persist their private state after each round they train. 0 = never.
    every: int = 1
    restarts: int = 2  # automatic restarts from the last checkpoint when the Ray worker pool dies

    def __post_init__(self) -> None:
        require(self.every >= 0, "every", f"must be >= 0, got {self.every}")
        require(self.restarts >= 0, "restarts", f"must be >= 0, got {self.restarts}")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"  # parent folder of run directories
    run_dir: str | None = None  # exact run directory; default <dir>/<timestamp>-<name>
    metrics_format: MetricsFormat = "jsonl"  # the per-round metrics file: metrics.jsonl or metrics.csv
    progress: bool = True  # one line per round on the terminal
    # Also write TensorBoard event files to <run_dir>/tensorboard (needs the tensorboard extra:
    # pip install -e ".[tensorboard]"), fed from the same rows as the run files.
    tensorboard: bool = False
