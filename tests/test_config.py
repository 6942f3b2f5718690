"""Config validation: every bad input is a ConfigError naming its key path."""

from __future__ import annotations

import pytest

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.loading import build_config, load_config
from fedmtl.config.raw import apply_override
from fedmtl.core.errors import ConfigError
from fedmtl.methods.aggregation import FedAvg


def error_for(overrides: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return info.value


def test_defaults_are_valid_and_round_trip_through_plain_data():
    cfg = load_config()
    assert cfg == ExperimentConfig()  # no file, no overrides: the dataclass defaults
    assert cfg.clients.count >= 8 and len(cfg.data.task_names()) >= 3
    assert build_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        (["clients.cnt=3"], "clients.cnt", "unknown key"),
        (["rounds=three"], "rounds", "must be an integer"),
        (["rounds=0"], "rounds", "must be >= 1"),
        (["server.fraction_fit=1.5"], "server.fraction_fit", "(0, 1]"),
        (["client.lr=-1"], "client.lr", "must be > 0"),
        (["model.activation=swish"], "model.activation", "must be one of"),
        (["server.aggregator.name=nope"], "server.aggregator.name", "valid: "),
        (["server.aggregator.bogus=1"], "server.aggregator.bogus", "unknown key"),
        (["data.task_cosine=1.5"], "data", "[-1, 1]"),
        (["data.task_cosine=-0.9"], "data", "positive semi-definite"),
        (["data.latent_dim=2"], "data", "latent_dim"),
        (["clients.tasks=[[anchor]]"], "clients.tasks", "clients.count is 8"),
        (["clients.count=2", "clients.tasks=[[anchor], [nope]]"], "clients.tasks[1][0]", "unknown task 'nope'"),
        (["clients.count=1", "clients.tasks=[[anchor, anchor]]"], "clients.tasks[0]", "twice"),
        (["clients.tasks_per_client=9"], "clients.tasks_per_client", "4 tasks"),
        (["clients.task_sample_scale={nope: 2}"], "clients.task_sample_scale.nope", "unknown task"),
        (["client.balancing.weights={anchor: -1}"], "client.balancing", "weights must be >= 0"),
        (["client.balancing.weights={nope: 1}"], "client.balancing.weights.nope", "unknown task"),
        (["client.balancing.name=gradnorm", "client.balancing.alpha=-1"], "client.balancing", "alpha"),
        (["client.surgery={name: cagrad, c: -1}"], "client.surgery", "c"),
        (["client.task_sampling={name: temperature, temperature: 0}"], "client.task_sampling", "temperature"),
        (["model.sharing={name: partial, shared_blocks: 3}"], "model.sharing", "encoder has 2 blocks"),
        (["model.sharing.name=sideways"], "model.sharing.name", "valid: adapters, hard, mmoe, partial, soft"),
        (["resources.client_cpus=0"], "resources.client_cpus", "must be > 0"),
        (["output.metrics_format=xml"], "output.metrics_format", "jsonl"),
    ],
)
def test_bad_values_name_their_key_path(overrides, path, fragment):
    err = error_for(overrides)
    assert err.path == path
    assert fragment in err.message


def test_component_by_bare_name_and_partial_mapping_keep_defaults():
    cfg = load_config(None, ["server.aggregator=fedavg", "data.client_shift=1.0"])
    assert cfg.server.aggregator == FedAvg()
    assert cfg.data.client_shift == 1.0 and cfg.data.name == "synthetic"


def test_numbers_in_exponent_notation_are_numbers():
    """YAML 1.1 (PyYAML) reads ``1e-8`` without a dot as a string; a float field takes it as the number."""
    cfg = load_config(None, ["server.optimizer.eps=1e-8", "client.lr=5E-2"])
    assert (cfg.server.optimizer.eps, cfg.client.lr) == (1e-8, 0.05)
    with pytest.raises(ConfigError, match="must be a number, got 'fast'"):
        load_config(None, ["client.lr=fast"])
    with pytest.raises(ConfigError, match="must be an integer, got '1e3'"):
        load_config(None, ["rounds=1e3"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "rounds")
    with pytest.raises(ConfigError, match="is not a mapping"):
        apply_override({"rounds": 3}, "rounds.x=1")


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rounds: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listing)


def test_file_plus_overrides(tmp_path):
    file = tmp_path / "exp.yaml"
    file.write_text("name: exp\nrounds: 4\nclients: {count: 3}\n")
    cfg = load_config(file, ["rounds=5"])
    assert (cfg.name, cfg.rounds, cfg.clients.count) == ("exp", 5, 3)


def test_shipped_configs_are_valid():
    from tests.helpers import ROOT

    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:  # load_config raises on any invalid one; each names its experiment
        assert load_config(path).name, path


def test_default_yaml_equals_builtin_defaults():
    from tests.helpers import ROOT

    assert load_config(ROOT / "configs" / "default.yaml") == load_config()


def test_a_pickled_config_leaves_its_participants_to_be_built_again():
    """A worker gets the config pickled: without the participants it built (a million would be pickled
    object by object), and rebuilds the same ones when it needs them."""
    import pickle

    cfg = load_config(None, ["clients.count=5", "clients.tasks_per_client=2"])
    built = cfg.participants()
    back = pickle.loads(pickle.dumps(cfg))
    assert "_participants" in vars(cfg) and "_participants" not in vars(back)
    assert back == cfg and back.participants() == built


def test_a_negative_static_weight_is_refused_in_so_many_words():
    err = error_for(["client.balancing.weights={anchor: -1}"])
    assert (err.path, err.message) == ("client.balancing", "weights must be >= 0")
