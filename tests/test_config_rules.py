"""Every validation rule of the experiment config, triggered once: each bad value is a ConfigError that
names the exact key path of the offending value (the section's own path only where a rule involves two
keys), with a message that says what is allowed. ``tests/test_config.py`` covers parsing, files and
overrides; the components' own parameters are covered beside each method."""

from __future__ import annotations

import pytest

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError

ARMS = "study.arms=[fed_mtl, local_stl]"

# (overrides, the key path the error names, a fragment of its message)
RULES = [
    # clients
    (["clients.count=0"], "clients.count", "must be >= 1"),
    (["clients.tasks_per_client=0"], "clients.tasks_per_client", "must be >= 1"),
    (["clients.samples_per_task=0"], "clients.samples_per_task", "must be >= 1"),
    (["clients.eval_samples_per_task=0"], "clients.eval_samples_per_task", "must be >= 1"),
    (["clients.min_samples=0"], "clients.min_samples", "must be >= 1"),
    (["clients.sample_imbalance=-1"], "clients.sample_imbalance", "must be >= 0"),
    (["clients.task_sample_scale={anchor: 0}"], "clients.task_sample_scale.anchor", "must be > 0"),
    (["clients.members=[0, 0]"], "clients.members", "distinct client ids in [0, 8)"),
    (["clients.members=[8]"], "clients.members", "distinct client ids in [0, 8)"),
    (["clients.count=2", "clients.tasks=[[anchor], []]"], "clients.tasks[1]", "at least one task"),
    (["clients.only_tasks=[nope]"], "clients.only_tasks[0]", "unknown task 'nope'"),
    (
        ["clients.count=2", "clients.tasks=[[anchor], [aligned]]", "clients.only_tasks=[anchor]"],
        "clients.only_tasks",
        "client 1 holds none of these tasks",
    ),
    # model
    (["model.encoder_hidden=[0]"], "model.encoder_hidden", "layer widths must be >= 1"),
    (["model.head_hidden=[4, 0]"], "model.head_hidden", "layer widths must be >= 1"),
    (["model.conv_channels=[0]"], "model.conv_channels", "layer widths must be >= 1"),
    (["model.representation_dim=0"], "model.representation_dim", "must be >= 1"),
    (["model.encoder=cnn"], "model.encoder", "cnn needs an image suite"),
    (["data.name=digits", "model.encoder=cnn", "model.sharing={name: adapters}"], "model.sharing", "mlp encoder only"),
    (["model.head_init=server"], "model.head_init.name", "unknown head initialisation 'server'; valid: client, task"),
    # client (local training)
    (["client.local_steps=0"], "client.local_steps", "must be >= 1"),
    (["client.batch_size=0"], "client.batch_size", "must be >= 1"),
    (["client.lr=0"], "client.lr", "must be > 0"),
    (["client.momentum=1"], "client.momentum", "must be in [0, 1)"),
    (["client.weight_decay=-1"], "client.weight_decay", "must be >= 0"),
    (["client.gradient_diagnostics_every=-1"], "client.gradient_diagnostics_every", "must be >= 0"),
    (["client.subspace_steps=0"], "client.subspace_steps", "must be >= 1"),
    (["client.eval_head_steps=-1"], "client.eval_head_steps", "must be >= 0"),
    (["client.optimizer=lbfgs"], "client.optimizer.name", "unknown optimizer 'lbfgs'; valid: adam, sgd"),
    (["client.surgery={name: krum}"], "client.surgery", "needs at least 5 tasks per client; a client holds 2"),
    # server
    (["server.optimizer.lr=0"], "server.optimizer.lr", "must be > 0"),
    (["server.optimizer.momentum=1"], "server.optimizer.momentum", "must be in [0, 1)"),
    (["server.optimizer.momentum=-0.5"], "server.optimizer.momentum", "must be in [0, 1)"),
    (["server.optimizer.betas=[0.9, 1.0]"], "server.optimizer.betas", "must be in [0, 1)"),
    (["server.optimizer.betas=[0.9]"], "server.optimizer.betas", "must be a list of 2 items"),
    (["server.optimizer.eps=0"], "server.optimizer.eps", "must be > 0"),
    (["server.optimizer.name=rmsprop"], "server.optimizer.name", "must be one of sgd, adam, got 'rmsprop'"),
    (["server.fraction_fit=0"], "server.fraction_fit", "must be in (0, 1]"),
    (["server.fraction_evaluate=0"], "server.fraction_evaluate", "must be in (0, 1]"),
    (["server.fraction_evaluate=1.5"], "server.fraction_evaluate", "must be in (0, 1]"),
    (["server.min_fit_fraction=1.5"], "server.min_fit_fraction", "must be in [0, 1]"),
    (["server.min_fit_fraction=-0.1"], "server.min_fit_fraction", "must be in [0, 1]"),
    (["server.max_update_norm=0"], "server.max_update_norm", "must be > 0"),
    (["server.round_timeout_s=0"], "server.round_timeout_s", "must be > 0"),
    (["server.device=tpu"], "server.device", "must be one of 'auto', 'cpu', 'cuda'"),
    (["server.gramian_precision=float16"], "server.gramian_precision", "must be one of 'float32', 'float64'"),
    (
        ["server.aggregator={name: krum, f: 1}", "clients.count=4"],
        "server.aggregator",
        "needs at least 5 client updates per round; the server samples 4",
    ),
    (
        ["server.aggregator={name: krum, f: 1}", "server.fraction_fit=0.5"],
        "server.aggregator",
        "the server samples 4",
    ),
    (["server.heads_across_tasks=true"], "server.heads_across_tasks", "needs server.federate_heads: true"),
    (
        ["data.name=digits", "server.federate_heads=true", "server.heads_across_tasks=true"],
        "server.heads_across_tasks",
        "every task's head to have one shape",
    ),
    # resources, simulation
    (["resources.client_cpus=0"], "resources.client_cpus", "must be > 0"),
    (["resources.client_gpus=-1"], "resources.client_gpus", "must be >= 0"),
    (["resources.torch_threads=0"], "resources.torch_threads", "must be >= 1"),
    (
        ["simulation.engine=grpc"],
        "simulation.engine.name",
        "unknown simulation engine 'grpc'; valid: direct, flower, inprocess",
    ),
    # faults
    (["faults.client_error_rate=2"], "faults.client_error_rate", "must be in [0, 1]"),
    (["faults.client_nan_rate=-0.1"], "faults.client_nan_rate", "must be in [0, 1]"),
    (["faults.client_delay_s=-1"], "faults.client_delay_s", "must be >= 0"),
    (["faults.worker_kill_round=-1"], "faults.worker_kill_round", "must be >= 0"),
    (["faults.worker_kill_client=-1"], "faults.worker_kill_client", "must be >= 0"),
    (["faults.worker_kill_attempts=0"], "faults.worker_kill_attempts", "must be >= 1"),
    (["faults.attack=sign_flip", "faults.attack_scale=0"], "faults.attack_scale", "must be > 0 and finite"),
    (["faults.attack_scale=.inf"], "faults.attack_scale", "must be > 0 and finite"),
    (["faults.attack=scale", "faults.adversarial_fraction=2"], "faults.adversarial_fraction", "must be in [0, 1]"),
    (["faults.attack=scale", "faults.adversarial_clients=[1, 1]"], "faults.adversarial_clients", "distinct ids"),
    (["faults.attack=scale", "faults.adversarial_clients=[-1]"], "faults.adversarial_clients", "distinct ids >= 0"),
    (
        ["faults.attack=scale", "faults.adversarial_clients=[1]", "faults.adversarial_fraction=0.5"],
        "faults",
        "set adversarial_fraction or adversarial_clients, not both",
    ),
    (["faults.adversarial_clients=[1]"], "faults.adversarial_clients", "faults.attack is none"),
    (["faults.adversarial_fraction=0.5"], "faults.adversarial_fraction", "faults.attack is none"),
    (["faults.attack=scale", "faults.adversarial_clients=[9]"], "faults.adversarial_clients[0]", "does not take part"),
    (["faults.attack=fake"], "faults.attack", "must be one of"),
    # checkpoint, schedule, output
    (["checkpoint.every=-1"], "checkpoint.every", "must be >= 0"),
    (["checkpoint.restarts=-1"], "checkpoint.restarts", "must be >= 0"),
    (["rounds=0"], "rounds", "must be >= 1"),
    (["eval_every=0"], "eval_every", "must be >= 1"),
    (["output.metrics_format=xml"], "output.metrics_format", "must be one of 'jsonl', 'csv'"),
    # study
    (["study.arms=[fed_mtl, nope]"], "study.arms[1]", "unknown arm 'nope'"),
    (["study.arms=[fed_mtl, {name: 'a/b'}]"], "study.arms[1].name", "without '/'"),
    (["study.arms=[fed_mtl, {name: all}]"], "study.arms[1].name", "not 'all'"),
    (["study.arms=[fed_mtl, {name: ''}]"], "study.arms[1].name", "must be non-empty"),
    (["study.arms=[fed_mtl, {name: x, base: nope}]"], "study.arms[1].base", "unknown base arm 'nope'"),
    (["study.arms=[fed_mtl, {name: x, set: {seed: 3}}]"], "study.arms[1].set.seed", "an arm cannot change seed"),
    (["study.arms=[fed_mtl, {name: x, set: {clients.count: 3}}]"], "study.arms[1].set.clients.count", "cannot change"),
    (["study.arms=[fed_mtl, {name: local_stl}]"], "study.arms[1].name", "the name of a built-in arm"),
    (["study.arms=[fed_mtl, fed_mtl]"], "study.arms", "must not repeat"),
    (["study.arms=[fed_mtl]", "study.seeds=[1, 1]"], "study.seeds", "must not repeat"),
    (["study.arms=[local_stl, fed_stl]"], "study.reference_arm", "'fed_mtl' is not one of the arms"),
    ([ARMS, "study.compare=[[nope, local_stl]]"], "study.compare[0]", "'nope' is not one of the arms"),
    ([ARMS, "study.compare=[[fed_mtl, all]]"], "study.compare[0]", "'all' is not one of the arms"),
    ([ARMS, "study.compare=[[fed_mtl, fed_mtl]]"], "study.compare[0]", "compares 'fed_mtl' with itself"),
    (["study.significance=1"], "study.significance", "must be in (0, 1)"),
    (["study.significance=0"], "study.significance", "must be in (0, 1)"),
    (["study.correction=bonferroni"], "study.correction", "must be one of 'holm', 'bh'"),
    (
        ["study.arms=[fed_mtl, {name: x, set: {server.aggregator.nope: 3}}]"],
        "study.arms[1].set",
        "arm 'x' gives an invalid config: server.aggregator.nope: unknown key",
    ),
    # sweep
    (["sweep.grid={rounds: [1, 2]}"], "sweep", "needs study.arms"),
    (
        ["study.arms=[fed_mtl, {name: x, set: {rounds: 3}}]", "sweep.grid={rounds: [1, 2]}"],
        "study.arms[1].set.rounds",
        "also swept by sweep.grid",
    ),
    ([ARMS, "sweep.grid={rounds: [1, 0]}"], "sweep.grid.rounds[1]", "gives an invalid config: rounds: must be >= 1"),
    ([ARMS, "sweep.grid={output.dir: [a]}"], "sweep.grid.output.dir", "cannot sweep study, sweep or output"),
    ([ARMS, "sweep.grid={study.significance: [0.1]}"], "sweep.grid.study.significance", "cannot sweep"),
    ([ARMS, "sweep.grid={sweep.grid: [{}]}"], "sweep.grid.sweep.grid", "cannot sweep"),
    # grouping
    (["server.grouping={name: cfl, max_mean_ratio: 1.5}"], "server.grouping.max_mean_ratio", "must be in (0, 1)"),
    (["server.grouping={name: cfl, max_groups: 9}"], "server.grouping.max_groups", "is 9 but there are 8 clients"),
    (
        ["server.grouping={name: cfl}", "server.fraction_fit=0.5"],
        "server.grouping.name",
        "needs server.fraction_fit: 1.0",
    ),
    (["server.grouping={name: affinity, min_silhouette: -2}"], "server.grouping.min_silhouette", "in [-1, 1]"),
    (["server.shared_across_groups=-1"], "server.shared_across_groups", "must be >= 0"),
    (["server.client_affinity_every=-1"], "server.client_affinity_every", "must be >= 0"),
    (
        ["server.client_affinity_every=1", "server.personalisation={name: mixed}"],
        "server.client_affinity_every",
        "server.personalisation (mixed) sends each client its own",
    ),
    (
        ["server.grouping={name: affinity, signal: clients}"],
        "server.grouping.signal",
        "is 'clients', which needs server.client_affinity_every > 0",
    ),
    (
        ["server.grouping={name: affinity, signal: tasks}"],
        "server.grouping.signal",
        "is 'tasks', which needs client.affinity_every > 0",
    ),
    (["server.shared_across_groups=1"], "server.shared_across_groups", "server.grouping (none) forms no groups"),
    (
        ["server.grouping={name: cfl}", "server.shared_across_groups=2"],
        "server.shared_across_groups",
        "must be below the 2 federated blocks of the encoder's 2",
    ),
    (
        ["server.grouping={name: cfl}", "server.shared_across_groups=1", "model.sharing={name: partial}"],
        "server.shared_across_groups",
        "must be below the 1 federated blocks of the encoder's 2 (model.sharing)",
    ),
    (
        ["server.grouping={name: cfl}", "server.shared_across_groups=1", "model.sharing={name: mmoe}"],
        "server.shared_across_groups",
        "model.sharing (mmoe) splits the encoder into experts",
    ),
    (["model.sharing={name: mmoe, experts: 1}"], "model.sharing", "experts must be >= 2, got 1"),
    (
        ["server.grouping={name: cfl}", "server.shared_across_groups=1", "server.personalisation={name: mixed}"],
        "server.shared_across_groups",
        "server.personalisation (mixed) gives each client its own",
    ),
    (
        ["server.client_affinity_every=1", "clients.participants=client_tasks"],
        "server.client_affinity_every",
        "needs one participant per client",
    ),
    (
        ["server.client_affinity_every=3", "server.grouping={name: affinity, signal: clients, warmup_rounds: 3}"],
        "server.grouping.warmup_rounds",
        "client affinity is first measured in round 4",
    ),
    (
        ["clients.count=3", "server.grouping={name: given, groups: [[0, 1], [2, 9]]}"],
        "server.grouping.groups[1]",
        "names client 9, which does not take part",
    ),
    (
        ["clients.count=3", "server.grouping={name: given, groups: [[0, 1]]}"],
        "server.grouping.groups",
        "leaves clients [2] in no group",
    ),
    (
        [
            "clients.count=3",
            "server.grouping={name: given, groups: [[0, 1, 2]]}",
            "server.aggregator={name: krum, f: 1}",
        ],
        "server.grouping",
        "a group of 3 clients is sampled below the 5 updates",
    ),
    (
        ["clients.participants=client_tasks", "server.cohorts=task", "server.grouping={name: cfl}"],
        "server.grouping",
        "server.cohorts is 'task', not 'one'",
    ),
    # override syntax
    (["rounds=[1"], "rounds", "is not valid YAML"),
    (["a..b=1"], "--set", "bad key path 'a..b'"),
    (["name"], "--set", "expected key.path=value"),
]


@pytest.mark.parametrize(("overrides", "path", "fragment"), RULES, ids=[" ".join(r[0]) for r in RULES])
def test_each_rule_names_the_key_path_of_the_bad_value(overrides, path, fragment):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert caught.value.path == path, caught.value
    assert fragment in caught.value.message, caught.value
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["server.optimizer={name: adam, lr: 0.01, betas: [0.0, 0.0], eps: 1e-8}"],
        ["server.fraction_evaluate=0.01", "server.min_fit_fraction=0", "server.max_update_norm=1e-9"],
        ["faults.attack=noise", "faults.adversarial_fraction=1"],
        ["faults.worker_kill_attempts=5", "checkpoint.every=0", "checkpoint.restarts=0"],
        ["study.arms=[fed_mtl, {name: pc, set: {server.aggregator: pcgrad}}]", "study.significance=0.999"],
        ["server.aggregator={name: krum, f: 1}", "clients.count=5"],
    ],
)
def test_the_edges_of_each_range_are_accepted(overrides):
    load_config(None, overrides)  # raises on a rule that is stricter than documented
    assert load_config(None, overrides) == load_config(None, overrides)
