"""The experiment configuration: typed, frozen, validated once at the edge, then passed down.

Every field's default lives here, next to a comment saying what it means; ``python simulate.py
--print-config`` prints the resolved configuration with all defaults filled in.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fedmtl.core.errors import ConfigError, require
from fedmtl.core.typed import parse_dataclass, to_plain
from fedmtl.data.suites import SyntheticSuite, TaskSuite
from fedmtl.methods.aggregation import Aggregator, FedAvg
from fedmtl.methods.balancing import Balancer, Static
from fedmtl.methods.personalisation import NoPersonalisation, Personalisation
from fedmtl.methods.sharing import Hard, Sharing
from fedmtl.methods.task_sampling import AllTasks, TaskSampler


@dataclass(frozen=True)
class ClientsConfig:
    count: int = 8  # number of simulated clients
    # Explicit task lists, one per client. When empty, client i holds ``tasks_per_client`` tasks
    # starting at task (i mod T), wrapping around: neighbouring clients overlap in one task.
    tasks: tuple[tuple[str, ...], ...] = ()
    tasks_per_client: int = 2  # tasks each client holds when tasks is empty
    samples_per_task: int = 128  # mean training samples per (client, task)
    # Log-normal sigma of a per-client factor on sample counts (0 = every client equal).
    sample_imbalance: float = 0.5
    # Per-task multiplier on training samples, e.g. {aligned: 0.25} makes a data-poor task
    # (overrides the suite's own default, e.g. the synthetic tasks' sample_scale).
    task_sample_scale: Mapping[str, float] = field(default_factory=dict)
    eval_samples_per_task: int = 256  # held-out samples per (client, task) for evaluation
    min_samples: int = 8  # floor on training samples per (client, task)
    # Restrict every client to these tasks (data and sample counts unchanged); used by the
    # single-task study arms. Empty = every task a client holds.
    only_tasks: tuple[str, ...] = ()
    # Which client ids take part (simulated client i plays client members[i]; data unchanged).
    # Empty = all of 0..count-1.
    members: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        require(self.count >= 1, "count", f"must be >= 1, got {self.count}")
        require(self.tasks_per_client >= 1, "tasks_per_client", f"must be >= 1, got {self.tasks_per_client}")
        for key in ("samples_per_task", "eval_samples_per_task", "min_samples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.sample_imbalance >= 0, "sample_imbalance", f"must be >= 0, got {self.sample_imbalance}")
        for task, scale in self.task_sample_scale.items():
            require(scale > 0, f"task_sample_scale.{task}", f"must be > 0, got {scale}")
        require(
            all(0 <= m < self.count for m in self.members) and len(set(self.members)) == len(self.members),
            "members",
            f"must be distinct client ids in [0, {self.count}), got {list(self.members)}",
        )

    def participants(self) -> tuple[int, ...]:
        """The client ids that take part, in the order of simulated clients."""
        return self.members or tuple(range(self.count))


@dataclass(frozen=True)
class ModelConfig:
    encoder_hidden: tuple[int, ...] = (64,)  # hidden widths of the shared MLP encoder
    representation_dim: int = 16  # width of the encoder output fed to every head
    head_hidden: tuple[int, ...] = (16,)  # hidden widths of each private task head
    activation: Literal["relu", "tanh", "gelu"] = "relu"  # after every hidden layer of encoder, heads and adapters
    # mlp: one Linear block per encoder_hidden width; cnn: one 3x3 conv block (+ 2x2 max-pool)
    # per conv_channels entry, then a Linear block to representation_dim (image suites only).
    encoder: Literal["mlp", "cnn"] = "mlp"
    conv_channels: tuple[int, ...] = (16, 32)  # cnn only: output channels of each conv block
    sharing: Sharing = field(default_factory=Hard)  # {name: hard | partial | adapters | soft}
    # How a private head starts: client = drawn from (seed, client), so clients holding one task start
    # from different heads; task = the round-0 head of the task, the same on every client that holds it
    # (as when one initial model is sent to everyone, and as fed_full's server starts).
    head_init: Literal["client", "task"] = "client"

    def __post_init__(self) -> None:
        require(self.representation_dim >= 1, "representation_dim", f"must be >= 1, got {self.representation_dim}")
        for key in ("encoder_hidden", "head_hidden", "conv_channels"):
            widths = getattr(self, key)
            require(all(w >= 1 for w in widths), key, f"layer widths must be >= 1, got {list(widths)}")


@dataclass(frozen=True)
class ClientConfig:
    """What each client does locally, per round (``clients:`` says who the clients are)."""

    local_steps: int = 20  # optimizer steps per round
    batch_size: int = 32  # examples per task in each local step
    optimizer: Literal["sgd", "adam"] = "sgd"  # local optimizer of the encoder, heads and private parameters
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
    # Before each evaluation, fit the private heads to the encoder as received for this many steps
    # (encoder frozen, the fitted heads discarded afterwards): FedRep's head update (Collins et al.,
    # ICML 2021) as an evaluation protocol. 0 = evaluate the heads as the last training left them.
    eval_head_steps: int = 0

    def __post_init__(self) -> None:
        require(self.local_steps >= 1, "local_steps", f"must be >= 1, got {self.local_steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for key, least in (("gradient_diagnostics_every", 0), ("subspace_steps", 1), ("eval_head_steps", 0)):
            require(getattr(self, key) >= least, key, f"must be >= {least}, got {getattr(self, key)}")


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """Step applied to the aggregated direction: ``sgd`` with lr 1 and no momentum is FedAvg."""

    name: Literal["sgd", "adam"] = "sgd"  # sgd: FedAvg (FedAvgM with momentum); adam: FedAdam
    lr: float = 1.0  # server learning rate on the aggregated direction
    momentum: float = 0.0  # sgd only (FedAvgM when > 0)
    betas: tuple[float, float] = (0.9, 0.99)  # adam only (FedAdam)
    eps: float = 1e-3  # adam only; FedAdam's tau

    def __post_init__(self) -> None:
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

    def __post_init__(self) -> None:
        for key in ("fraction_fit", "fraction_evaluate"):
            require(0 < getattr(self, key) <= 1, key, f"must be in (0, 1], got {getattr(self, key)}")
        require(0 <= self.min_fit_fraction <= 1, "min_fit_fraction", f"must be in [0, 1], got {self.min_fit_fraction}")
        norm = self.max_update_norm
        require(norm is None or norm > 0, "max_update_norm", f"must be > 0, got {norm}")
        require(self.round_timeout_s > 0, "round_timeout_s", f"must be > 0, got {self.round_timeout_s}")


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
    # compute); flower: Flower's own run_simulation (an in-memory link state polled every 0.1 s).
    # Both run the same ServerApp and ClientApp and give the same metrics.
    engine: Literal["direct", "flower"] = "direct"


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
    # (noise); see fedmtl.federation.faults. none: nobody attacks.
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


def arm_names() -> tuple[str, ...]:
    """The built-in study arms, as registered in :mod:`fedmtl.study.arms` (imported when a study is parsed)."""
    from fedmtl.study.arms import ARMS

    return tuple(ARMS)


ALL_ARMS = "all"
"""In ``study.compare``, ``[all, b]`` compares every other arm with arm ``b``."""
ARM_LOCKED_SECTIONS = ("seed", "data", "clients", "study", "sweep", "output")
"""What an arm may not change: arms share the study's data, clients and seeds so that their runs pair by seed."""


@dataclass(frozen=True)
class ArmSpec:
    """A user-defined arm: built-in arm ``base`` run on the study's config with ``set`` applied
    (``{server.aggregator: {name: pcgrad}}``: any ``key.path: value`` outside the locked sections)."""

    name: str  # the arm's name in the report and its folder arms/<name>/
    base: str = "fed_mtl"  # the built-in arm that runs it (fedmtl.study.arms.ARMS)
    set: Mapping[str, Any] = field(default_factory=dict)  # key.path -> value, as --set takes them

    def __post_init__(self) -> None:
        require(
            bool(self.name) and "/" not in self.name and self.name != ALL_ARMS,
            "name",
            f"{self.name!r} must be non-empty, without '/', and not {ALL_ARMS!r}",
        )
        require(self.base in arm_names(), "base", f"unknown base arm {self.base!r}; valid: {', '.join(arm_names())}")
        for key in self.set:
            require(
                key.split(".")[0] not in ARM_LOCKED_SECTIONS,
                f"set.{key}",
                f"an arm cannot change {', '.join(ARM_LOCKED_SECTIONS)} "
                "(arms share the study's data, clients and seeds so that their runs pair)",
            )


@dataclass(frozen=True)
class StudyConfig:
    """Arms x seeds run one after another by one command (empty arms: a single run)."""

    # Built-in arm names (fed_mtl is this config as it stands, local_stl, fed_stl, fed_full,
    # central_mtl) or user-defined arms {name: pcgrad, base: fed_mtl, set: {server.aggregator: pcgrad}}.
    arms: tuple[str | ArmSpec, ...] = ()
    seeds: tuple[int, ...] = ()  # default: the top-level seed only
    reference_arm: str = "fed_mtl"  # with compare empty: this arm is compared with every other arm
    # Pairs [arm, baseline]: the paired relative delta of arm over baseline; [all, baseline] = every
    # other arm against baseline. Empty = [reference_arm, b] for every other arm b.
    compare: tuple[tuple[str, str], ...] = ()
    # Multiple-testing correction of the flags over the tasks of a pair and over the clients of a
    # task: holm (Holm 1979, family-wise error) or bh (Benjamini-Hochberg 1995, false discovery rate).
    correction: Literal["holm", "bh"] = "holm"
    significance: float = 0.05  # a difference is flagged when its (corrected) p-value is below this

    def __post_init__(self) -> None:
        names = self.arm_names()
        builtin = arm_names()
        for i, arm in enumerate(self.arms):
            require(
                not isinstance(arm, str) or arm in builtin,
                f"arms[{i}]",
                f"unknown arm {arm!r}; valid: {', '.join(builtin)}, or {{name: ..., base: ..., set: {{...}}}}",
            )
            require(
                not (isinstance(arm, ArmSpec) and arm.name in builtin),
                f"arms[{i}].name",
                f"{names[i]!r} is the name of a built-in arm; rename the user-defined arm",
            )
        require(len(set(names)) == len(names), "arms", f"arm names must not repeat, got {list(names)}")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", f"must not repeat, got {list(self.seeds)}")
        require(
            not self.arms or self.reference_arm in names,
            "reference_arm",
            f"{self.reference_arm!r} is not one of the arms {', '.join(names)}",
        )
        for i, (arm, baseline) in enumerate(self.compare):
            unknown = [name for name, allowed in ((arm, (*names, ALL_ARMS)), (baseline, names)) if name not in allowed]
            if unknown:
                raise ConfigError(f"study.compare[{i}]", f"{unknown[0]!r} is not one of the arms {', '.join(names)}")
            if arm == baseline:
                raise ConfigError(f"study.compare[{i}]", f"compares {arm!r} with itself")
        require(0 < self.significance < 1, "significance", f"must be in (0, 1), got {self.significance}")

    def arm_names(self) -> tuple[str, ...]:
        return tuple(arm if isinstance(arm, str) else arm.name for arm in self.arms)

    def arm_spec(self, name: str) -> ArmSpec:
        """The arm called ``name``; a built-in arm is its own base with nothing set."""
        for arm in self.arms:
            if isinstance(arm, ArmSpec) and arm.name == name:
                return arm
        return ArmSpec(name=name, base=name)

    def pairs(self) -> list[tuple[str, str]]:
        """Every (arm, baseline) pair to compare, ``all`` expanded, duplicates dropped, in order."""
        names = self.arm_names()
        if not self.compare:
            return [(self.reference_arm, b) for b in names if b != self.reference_arm]
        expanded = [
            (a, baseline)
            for arm, baseline in self.compare
            for a in (names if arm == ALL_ARMS else (arm,))
            if a != baseline
        ]
        return list(dict.fromkeys(expanded))


@dataclass(frozen=True)
class SweepConfig:
    """A grid over config keys (``key.path: [values]``); every point runs the study."""

    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # key.path -> the values it takes

    def points(self) -> list[dict[str, Any]]:
        import itertools

        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(self.grid[k] for k in keys))]


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"  # parent folder of run directories
    run_dir: str | None = None  # exact run directory; default <dir>/<timestamp>-<name>
    metrics_format: Literal["jsonl", "csv"] = "jsonl"  # the per-round metrics file: metrics.jsonl or metrics.csv
    progress: bool = True  # one line per round on the terminal
    # Also write TensorBoard event files to <run_dir>/tensorboard (needs the tensorboard extra:
    # pip install -e ".[tensorboard]"), fed from the same rows as the run files.
    tensorboard: bool = False


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"  # names the run directory (<output.dir>/<timestamp>-<name>) and the summaries
    seed: int = 0  # the one seed every random draw derives from (data, head initialisation, batch order)
    rounds: int = 15  # federated rounds: local training on the sampled clients, then one server step
    eval_every: int = 1  # evaluate every k rounds (and at round 0): the encoder each client receives, its private heads
    data: TaskSuite = field(default_factory=SyntheticSuite)  # {name: synthetic, ...}
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be >= 1, got {self.rounds}")
        require(self.eval_every >= 1, "eval_every", f"must be >= 1, got {self.eval_every}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def data_fingerprint(self) -> str:
        """Stable hash of what the clients' data depends on (seed, data suite, clients): the key of the
        per-process client-data cache, shared by every run of a study that uses the same data."""
        plain = self.to_dict()
        return _digest({key: plain[key] for key in ("seed", "data", "clients")})


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def num_encoder_blocks(model: ModelConfig) -> int:
    return (len(model.conv_channels) if model.encoder == "cnn" else len(model.encoder_hidden)) + 1


TASK_KEYED_FIELDS = ("weights",)  # component fields keyed by task name, checked against the suite


def sample_size(clients: int, fraction: float) -> int:
    """How many of ``clients`` a round samples at ``fraction``: ``round(fraction * clients)``, at least one."""
    return max(1, round(clients * fraction))


def check_consistency(cfg: ExperimentConfig) -> None:
    """Cross-field rules that no single section can check on its own."""
    task_names = cfg.data.task_names()
    known = set(task_names)
    if cfg.clients.tasks:
        if len(cfg.clients.tasks) != cfg.clients.count:
            raise ConfigError(
                "clients.tasks", f"has {len(cfg.clients.tasks)} entries but clients.count is {cfg.clients.count}"
            )
        for i, held in enumerate(cfg.clients.tasks):
            if not held:
                raise ConfigError(f"clients.tasks[{i}]", "a client must hold at least one task")
            for j, task in enumerate(held):
                if task not in known:
                    raise ConfigError(
                        f"clients.tasks[{i}][{j}]", f"unknown task {task!r}; tasks: {', '.join(task_names)}"
                    )
            if len(set(held)) != len(held):
                raise ConfigError(f"clients.tasks[{i}]", "lists a task twice")
    elif cfg.clients.tasks_per_client > len(task_names):
        raise ConfigError(
            "clients.tasks_per_client", f"is {cfg.clients.tasks_per_client} but the suite has {len(task_names)} tasks"
        )
    for i, task in enumerate(cfg.clients.only_tasks):
        if task not in known:
            raise ConfigError(f"clients.only_tasks[{i}]", f"unknown task {task!r}; tasks: {', '.join(task_names)}")
    if cfg.clients.only_tasks:
        idle = [c for c in cfg.clients.participants() if not set(tasks_held(cfg, c)) & set(cfg.clients.only_tasks)]
        if idle:
            raise ConfigError(
                "clients.only_tasks", f"client {idle[0]} holds none of these tasks (restrict clients.members)"
            )
    task_keyed = [("clients.task_sample_scale", cfg.clients.task_sample_scale)]
    task_keyed += [
        (f"client.balancing.{name}", getattr(cfg.client.balancing, name))
        for name in TASK_KEYED_FIELDS
        if hasattr(cfg.client.balancing, name)
    ]
    for section, mapping in task_keyed:
        for task in mapping:
            if task not in known:
                raise ConfigError(f"{section}.{task}", f"unknown task; tasks: {', '.join(task_names)}")
    if cfg.model.encoder == "cnn" and cfg.data.image_shape() is None:
        raise ConfigError("model.encoder", f"cnn needs an image suite; data suite {cfg.data.name!r} has flat inputs")
    if cfg.model.encoder == "cnn" and cfg.model.sharing.adapter_rank > 0:
        raise ConfigError("model.sharing", "adapters are defined for the mlp encoder only")
    problem = cfg.model.sharing.check(num_encoder_blocks(cfg.model))
    if problem:
        raise ConfigError("model.sharing", problem)
    per_round = sample_size(len(cfg.clients.participants()), cfg.server.fraction_fit)
    if per_round < cfg.server.aggregator.min_rows():
        raise ConfigError(
            "server.aggregator",
            f"{cfg.server.aggregator!r} needs at least {cfg.server.aggregator.min_rows()} client updates per round; "
            f"the server samples {per_round} (clients x server.fraction_fit)",
        )
    surgery = cfg.client.surgery  # runs in clients that train more than one task
    several = [n for c in cfg.clients.participants() if (n := len(tasks_held(cfg, c))) > 1]
    if surgery is not None and several and min(several) < surgery.min_rows():
        raise ConfigError(
            "client.surgery",
            f"{surgery!r} needs at least {surgery.min_rows()} tasks per client; a client holds {min(several)}",
        )
    if cfg.server.heads_across_tasks:
        if not cfg.server.federate_heads:
            raise ConfigError("server.heads_across_tasks", "needs server.federate_heads: true")
        shapes = {(spec.kind, spec.output_dim) for spec in cfg.data.task_specs()}
        if len(shapes) > 1:
            raise ConfigError(
                "server.heads_across_tasks",
                f"needs every task's head to have one shape; the tasks have {sorted(shapes)}",
            )
    if cfg.sweep.grid and len(cfg.study.arms) < 2:
        raise ConfigError("sweep", "needs study.arms: the reference arm and at least one arm to compare it with")
    problem = cfg.data.check_clients(cfg.clients.count)
    if problem:
        raise ConfigError("clients.count", problem)
    for i, client in enumerate(cfg.faults.adversarial_clients):
        if client not in cfg.clients.participants():
            raise ConfigError(
                f"faults.adversarial_clients[{i}]",
                f"client {client} does not take part (clients.count {cfg.clients.count}, members {list(cfg.clients.members)})",
            )


def tasks_held(cfg: ExperimentConfig, client_id: int) -> tuple[str, ...]:
    """The tasks client ``client_id`` holds before ``clients.only_tasks`` (fedmtl.data.partition uses it too)."""
    if cfg.clients.tasks:
        return cfg.clients.tasks[client_id]
    names = cfg.data.task_names()
    return tuple(names[(client_id + j) % len(names)] for j in range(cfg.clients.tasks_per_client))


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``key.path=value`` (value parsed as YAML) to the raw config mapping in place."""
    if "=" not in assignment:
        raise ConfigError("--set", f"expected key.path=value, got {assignment!r}")
    path, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(path, f"value {text!r} is not valid YAML ({err.problem})") from None
    set_path(raw, path.strip(), value, "--set")


def set_path(raw: dict[str, Any], path: str, value: Any, source: str) -> None:
    """Set ``raw[k1][k2]...`` for ``path = "k1.k2..."`` in place (creating mappings on the way)."""
    keys = path.split(".")
    if not all(keys):
        raise ConfigError(source, f"bad key path {path!r}")
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if isinstance(child, str):  # a component given by bare name, e.g. aggregator: cagrad
            child = node[key] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys[: depth + 1]), f"is not a mapping, cannot set {path}")
        node = child
    node[keys[-1]] = value


def load_raw(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ConfigError("--config", f"file not found: {file}")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("--config", f"{file} is not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{file} must hold a mapping at the top level")
    return raw


def build_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    cfg = parse_dataclass(ExperimentConfig, raw, "")
    check_consistency(cfg)
    for i, arm in enumerate(cfg.study.arms):  # every user-defined arm must be a valid config on its own
        swept = [key for key in arm.set if key in cfg.sweep.grid] if isinstance(arm, ArmSpec) else []
        if swept:
            raise ConfigError(f"study.arms[{i}].set.{swept[0]}", "is also swept by sweep.grid: the arm would ignore it")
        if isinstance(arm, ArmSpec) and arm.set:  # built-in arms and their settings are valid on any valid config
            try:
                arm_config(raw, arm)
            except ConfigError as err:
                raise ConfigError(f"study.arms[{i}].set", f"arm {arm.name!r} gives an invalid config: {err}") from None
    for key, values in cfg.sweep.grid.items():  # every point must be a valid config on its own
        if key.split(".")[0] in UNSWEPT_SECTIONS:
            raise ConfigError(f"sweep.grid.{key}", "cannot sweep study, sweep or output settings")
        for i, value in enumerate(values):
            try:
                point_config(raw, {key: value})
            except ConfigError as err:
                raise ConfigError(f"sweep.grid.{key}[{i}]", f"gives an invalid config: {err}") from None
    return cfg


UNSWEPT_SECTIONS = ("sweep", "study", "output")  # a sweep point changes the experiment, not how it is run or written


def point_config(raw: Mapping[str, Any], values: Mapping[str, Any]) -> ExperimentConfig:
    """The config of one sweep point: ``raw`` without its sweep, with ``values`` set by key path."""
    point = copy.deepcopy({k: v for k, v in raw.items() if k != "sweep"})
    for key, value in values.items():
        if key.split(".")[0] in UNSWEPT_SECTIONS:
            raise ConfigError(f"sweep.grid.{key}", "cannot sweep study, sweep or output settings")
        set_path(point, key, value, f"sweep.grid.{key}")
    return build_config(point)


def arm_config(raw: Mapping[str, Any], arm: ArmSpec) -> ExperimentConfig:
    """The config one arm runs: ``raw`` without its study and sweep, with the base arm's settings
    (``fed_full``: ``server.federate_heads``) and then the arm's own ``set`` applied."""
    from fedmtl.study.arms import ARMS

    config = copy.deepcopy({k: v for k, v in raw.items() if k not in ("study", "sweep")})
    for key, value in ARMS[arm.base].settings.items():
        set_path(config, key, value, f"study.arms.{arm.name}")
    for key, value in arm.set.items():
        set_path(config, key, copy.deepcopy(value), f"study.arms.{arm.name}.set.{key}")
    return build_config(config)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """YAML file (optional) + ``key.path=value`` overrides -> validated :class:`ExperimentConfig`."""
    raw = load_raw(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return build_config(raw)
