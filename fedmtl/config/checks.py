"""Cross-field rules of the experiment config that no single section can check on its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedmtl.config.experiment import ExperimentConfig, sample_size
from fedmtl.core.errors import ConfigError
from fedmtl.core.params import ENCODER_PREFIX
from fedmtl.core.typed import parse_dataclass
from fedmtl.data.participants import Participant, client_ids, task_sets
from fedmtl.methods.balancing import Static
from fedmtl.methods.cohorts import OneCohort
from fedmtl.model.encoders import ENCODERS
from fedmtl.model.networks import head_problem, initial_encoder_state, last_weighted_layer, representation_shape


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
        members = cfg.clients.member_ids()
        idle = [c for c in members if not set(cfg.clients.tasks_held(c, task_names)) & set(cfg.clients.only_tasks)]
        if idle:
            raise ConfigError(
                "clients.only_tasks", f"client {idle[0]} holds none of these tasks (restrict clients.members)"
            )
    task_keyed = [("clients.task_sample_scale", cfg.clients.task_sample_scale)]
    task_keyed += [
        (f"client.balancing.{name}", getattr(cfg.client.balancing, name)) for name in cfg.client.balancing.task_keyed
    ]
    for section, mapping in task_keyed:
        for task in mapping:
            if task not in known:
                raise ConfigError(f"{section}.{task}", f"unknown task; tasks: {', '.join(task_names)}")
    encoder = cfg.model.encoder
    if encoder.needs_image and cfg.data.image_shape() is None:
        raise ConfigError(
            "model.encoder", f"{encoder.name} needs an image suite; data suite {cfg.data.name!r} has flat inputs"
        )
    check_heads(cfg)
    check_privacy(cfg)
    check_secure_aggregation(cfg)
    check_sample_level(cfg)
    check_joint_heads(cfg)
    if cfg.model.sharing.adapter_rank > 0 and not encoder.supports_adapters:
        supported = ", ".join(name for name, kind in ENCODERS.items() if kind.supports_adapters)
        raise ConfigError("model.sharing", f"adapters are defined for the {supported} encoder only")
    problem = cfg.model.sharing.check(cfg.model.num_encoder_blocks(cfg.data.feature_dim(), cfg.data.image_shape()))
    if problem:
        raise ConfigError("model.sharing", problem)
    balancer = cfg.client.balancing.start(list(cfg.data.task_names()), {})
    if balancer.differentiates_after_backward:  # GradNorm: the gradient of the encoder's last linear layer
        blocks = encoder.build(cfg.model, cfg.data.feature_dim(), cfg.data.image_shape())
        if last_weighted_layer(blocks[-1]) is None:
            raise ConfigError(
                "client.balancing",
                f"{cfg.client.balancing.name} needs an nn.Linear or nn.Conv2d in the encoder's last block; "
                "model.encoder's has none",
            )
    if cfg.model.init_from is not None:  # the file fits the encoder (ConfigError naming model.init_from)
        initial_encoder_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    for i, issue in enumerate(cfg.data_issues):
        found = issue.check(cfg.data.task_specs(), range(cfg.clients.count))  # a client's data, member or not
        if found is not None:
            raise ConfigError(f"data_issues[{i}].{found[0]}", found[1])
        if issue.label_task != issue.task:  # another task's label: only leakage's source reads one
            problem = shared_examples_problem(cfg, issue.label_task, (issue.task,))
            named = issue.holders(cfg.seed, cfg.clients.count)
            holders = [
                c
                for c in (sorted(named) if named is not None else range(cfg.clients.count))
                if {issue.task, issue.label_task} <= set(cfg.clients.tasks_held(c, task_names))
            ]
            if not problem and not holders:
                problem = f"no client it names holds both {issue.task} and {issue.label_task}"
            if problem:
                raise ConfigError(f"data_issues[{i}].source", problem)
    participants = cfg.participants()
    problem = cfg.server.cohorts.check(participants)
    if problem:
        raise ConfigError("server.cohorts", problem)
    check_grouping(cfg, participants)
    cohorts = cfg.server.cohorts.split(participants)
    per_round = min(sample_size(len(members), cfg.server.fraction_fit) for members in cohorts.values())
    if not cfg.server.cohorts.adopts and per_round < cfg.server.aggregator.min_rows():
        raise ConfigError(
            "server.aggregator",
            f"{cfg.server.aggregator!r} needs at least {cfg.server.aggregator.min_rows()} client updates per round; "
            f"the server samples {per_round} (clients x server.fraction_fit)",
        )
    surgery = cfg.client.surgery  # runs in clients that train more than one task
    several = [len(tasks) for tasks in task_sets(participants) if len(tasks) > 1]
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
    refused = cfg.data.check_client_tasks(cfg.clients.member_ids(), lambda c: cfg.clients.tasks_held(c, task_names))
    if refused:
        client, problem = refused
        raise ConfigError(f"clients.tasks[{client}]" if cfg.clients.tasks else "clients.tasks", problem)
    for i, client in enumerate(cfg.faults.adversarial_clients):
        if client not in cfg.clients.member_ids():
            raise ConfigError(
                f"faults.adversarial_clients[{i}]",
                f"client {client} does not take part (clients.count {cfg.clients.count}, members {list(cfg.clients.members)})",
            )


def check_heads(cfg: ExperimentConfig) -> None:
    """Every task's head fits the encoder's output (a per-pixel task needs a feature map)."""
    blocks = cfg.model.encoder.build(cfg.model, cfg.data.feature_dim(), cfg.data.image_shape())
    try:
        representation = representation_shape(blocks, cfg.data.feature_dim(), cfg.data.example_input())
    except (RuntimeError, IndexError, ValueError) as err:  # e.g. a token id beyond the encoder's vocabulary
        hint = " (a token id beyond the encoder's vocabulary?)" if isinstance(err, IndexError) else ""
        raise ConfigError(
            "model.encoder", f"fails on the inputs of data suite {cfg.data.name!r}: {type(err).__name__}: {err}{hint}"
        ) from None
    for spec in cfg.data.task_specs():
        problem = head_problem(spec, representation, cfg.data.image_shape())
        if problem:
            raise ConfigError("model.encoder", problem)


def check_privacy(cfg: ExperimentConfig) -> None:
    """Client-level DP: nothing that releases or reads raw updates around the mechanism."""
    privacy, server = cfg.privacy, cfg.server
    if not privacy.enabled:
        return
    if server.federate_heads:
        raise ConfigError(
            "server.federate_heads", "would release the heads without privacy: heads stay private under privacy"
        )
    if not privacy.central:
        return
    if not server.aggregator.uniform_mean:
        raise ConfigError(
            "server.aggregator",
            f"is {server.aggregator!r}; noise at the server is calibrated to the uniform mean of clipped updates "
            "(fedavg with weighted: false); other aggregators need privacy.noise_at: client",
        )
    if privacy.target_quantile is not None and privacy.noise_multiplier > 0:
        count_noise = privacy.count_noise_for(sample_size(len(cfg.clients.member_ids()), server.fraction_fit))
        if 2 * count_noise <= privacy.noise_multiplier:
            raise ConfigError(
                "privacy.count_noise",
                f"is {count_noise:g}; adaptive clipping needs 2 * count_noise > noise_multiplier "
                f"({privacy.noise_multiplier:g}), or the count's noise spends the whole budget",
            )
    reads_raw = {
        "server.personalisation": server.personalisation.start() is not None,
        "server.grouping": server.grouping.groups_clients,
        "server.client_affinity_every": server.client_affinity_every > 0,
    }
    for key, used in reads_raw.items():
        if used:
            raise ConfigError(
                key,
                "uses each client's update outside the mean that privacy.noise_at: server noises; use noise_at: client",
            )


def check_sample_level(cfg: ExperimentConfig) -> None:
    """DP-SGD clips each example's gradient of a fixed weighted sum of task losses, and nothing else may
    read the training data's gradients around it."""
    if not cfg.privacy.sample_level.enabled:
        return
    client = cfg.client
    if not isinstance(client.balancing, Static):
        raise ConfigError(
            "client.balancing",
            f"is {client.balancing!r}; per-example clipping (privacy.sample_level) takes fixed task weights: static",
        )
    reads_gradients = {"client.surgery": client.surgery is not None, "client.affinity_every": client.affinity_every > 0}
    for key, used in reads_gradients.items():
        if used:
            raise ConfigError(key, "works on batch gradients that privacy.sample_level does not clip or noise")
    if getattr(cfg.model.encoder, "norm", None) == "batch":
        raise ConfigError(
            "model.encoder.norm",
            "batch statistics mix the examples of a batch: per-example gradients (privacy.sample_level) need norm: group",
        )


def check_secure_aggregation(cfg: ExperimentConfig) -> None:
    """SecAgg+ gives the server the mean of the sampled clients' encoder updates and nothing else."""
    privacy, server = cfg.privacy, cfg.server
    if not privacy.secure_aggregation.enabled:
        return
    if not server.aggregator.mean_of_rows:
        raise ConfigError(
            "server.aggregator",
            f"is {server.aggregator!r}, which needs each client's update; under privacy.secure_aggregation the "
            "server sees only their mean: use fedavg",
        )
    if privacy.central:
        raise ConfigError(
            "privacy.noise_at", "server clips each update, which secure aggregation hides: use noise_at: client"
        )
    reads_rows = {
        "server.personalisation": server.personalisation.start() is not None,
        "server.grouping": server.grouping.groups_clients,
        "server.cohorts": not isinstance(server.cohorts, OneCohort),
        "server.client_affinity_every": server.client_affinity_every > 0,
        "server.max_update_norm": server.max_update_norm is not None,
    }
    for key, used in reads_rows.items():
        if used:
            raise ConfigError(key, "needs each client's update, which privacy.secure_aggregation hides from the server")
    sampled = sample_size(len(cfg.participants()), server.fraction_fit)
    if sampled < 2:
        raise ConfigError(
            "server.fraction_fit", f"samples {sampled} client a round; secure aggregation needs at least 2"
        )


def check_grouping(cfg: ExperimentConfig, participants: Sequence[Participant]) -> None:
    grouping = cfg.server.grouping
    check_shared_across_groups(cfg)
    check_client_affinity(cfg, participants)
    if not grouping.groups_clients:
        return
    if cfg.server.cohorts.name != "one":
        raise ConfigError(
            "server.grouping",
            f"groups clients that share an encoder; server.cohorts is {cfg.server.cohorts.name!r}, not 'one'",
        )
    unmet = grouping.check_settings(lambda path: _setting(cfg, path))
    if unmet is not None:
        raise ConfigError(f"server.grouping.{unmet[0]}", unmet[1])
    problem = grouping.check(client_ids(participants).tolist(), cfg.server.fraction_fit)
    if problem:
        key, why = problem
        raise ConfigError(f"server.grouping.{key}", why)
    smallest = min(len(g) for g in grouping.initial(client_ids(participants).tolist()))
    if sample_size(smallest, cfg.server.fraction_fit) < cfg.server.aggregator.min_rows():
        raise ConfigError(
            "server.grouping",
            f"a group of {smallest} clients is sampled below the {cfg.server.aggregator.min_rows()} updates "
            f"{cfg.server.aggregator!r} needs per round",
        )


def _setting(cfg: ExperimentConfig, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def check_client_affinity(cfg: ExperimentConfig, participants: Sequence[Participant]) -> None:
    if cfg.server.client_affinity_every == 0:
        return
    if cfg.server.personalisation.start() is not None:
        raise ConfigError(
            "server.client_affinity_every",
            f"probes one encoder per group; server.personalisation ({cfg.server.personalisation.name}) sends each client its own",
        )
    ids = [p.client_id for p in participants]
    if any(p.pooled or len(p.clients) != 1 for p in participants) or len(set(ids)) != len(ids):
        raise ConfigError(
            "server.client_affinity_every",
            "measures affinity between clients: needs one participant per client (clients.participants: clients)",
        )


def check_shared_across_groups(cfg: ExperimentConfig) -> None:
    shared = cfg.server.shared_across_groups
    if shared == 0:
        return
    if not cfg.server.grouping.groups_clients:
        raise ConfigError(
            "server.shared_across_groups",
            f"is {shared} but server.grouping ({cfg.server.grouping.name}) forms no groups of clients",
        )
    if cfg.server.personalisation.start() is not None:
        raise ConfigError(
            "server.shared_across_groups",
            f"shares blocks of one encoder per group; server.personalisation ({cfg.server.personalisation.name}) "
            "gives each client its own",
        )
    if cfg.model.sharing.num_experts:
        raise ConfigError(
            "server.shared_across_groups",
            f"shares the lowest encoder blocks; model.sharing ({cfg.model.sharing.name}) splits the encoder into experts",
        )
    blocks = cfg.model.num_encoder_blocks(cfg.data.feature_dim(), cfg.data.image_shape())
    federated = sum(cfg.model.sharing.is_shared(f"{ENCODER_PREFIX}{i}.weight") for i in range(blocks))
    if shared >= federated:
        raise ConfigError(
            "server.shared_across_groups",
            f"is {shared} but must be below the {federated} federated blocks of the encoder's {blocks} "
            "(model.sharing): groups would share every federated block",
        )


def parse_and_check(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Parse a raw mapping and check its cross-field rules (a study's arms and sweep points aside:
    :func:`fedmtl.config.loading.build_config` checks those too)."""
    cfg = parse_dataclass(ExperimentConfig, raw, "")
    check_consistency(cfg)
    return cfg


def shared_examples_problem(cfg: ExperimentConfig, source: str, tasks: Sequence[str]) -> str | None:
    """Why ``source``'s labels are not defined for every training example of ``tasks``, or None: they are
    when the suite's tasks share their examples and ``source`` keeps at least as many of them."""
    if not cfg.data.tasks_share_examples:
        return f"needs tasks that share their examples; the {cfg.data.name} suite's tasks each have their own"

    def scale(task: str) -> float:
        return cfg.clients.task_sample_scale.get(task, cfg.data.default_sample_scale(task))

    fewer = [task for task in tasks if scale(task) > scale(source)]
    if fewer:
        return (
            f"{source} keeps fewer training examples than {fewer[0]} (clients.task_sample_scale), so some of "
            f"{fewer[0]}'s examples have no {source} label"
        )
    return None


def check_joint_heads(cfg: ExperimentConfig) -> None:
    """``model.joint_heads``: classification tasks of the suite that share their examples, heads that stay
    private and start per client (a joint head has no per-task round-0 head or per-task average)."""
    specs = {spec.name: spec for spec in cfg.data.task_specs()}
    for i, group in enumerate(cfg.model.joint_heads):
        for j, task in enumerate(group):
            if task not in specs:
                raise ConfigError(f"model.joint_heads[{i}][{j}]", f"unknown task {task!r}; tasks: {', '.join(specs)}")
            if specs[task].kind != "classification":
                raise ConfigError(
                    f"model.joint_heads[{i}][{j}]",
                    f"{task} is a {specs[task].kind} task; a joint head is for classification",
                )
        problem = shared_examples_problem(cfg, group[0], ())  # one network over the label sets of an example
        if problem:
            raise ConfigError(f"model.joint_heads[{i}]", problem)
    if not cfg.model.joint_heads:
        return
    refused = {
        "server.federate_heads": (cfg.server.federate_heads, "averages heads per task; a joint head stays private"),
        "model.head_init": (
            cfg.model.head_init.name != "client",
            "a joint head has no per-task round-0 head: use client",
        ),
        "privacy.sample_level": (cfg.privacy.sample_level.enabled, "does not clip per example through a joint head"),
    }
    for key, (on, why) in refused.items():
        if on:
            raise ConfigError(key, f"with model.joint_heads: {why}")
