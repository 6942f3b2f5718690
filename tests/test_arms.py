"""Every arm is a configuration of one federation: its settings go through the same code as ``--set``,
every arm is built before anything runs, and every arm writes the same run files (``summary.json``
included), in either metrics format, so reports and ``fedmtl compare`` read any of them."""

from __future__ import annotations

import json

import pytest

from fedmtl.config.arms import ARMS
from fedmtl.config.expansion import arm_config
from fedmtl.config.loading import load_config
from fedmtl.config.study import ArmSpec
from fedmtl.core.errors import ConfigError
from fedmtl.core.layout import SUMMARY_JSON
from fedmtl.experiments.runner import run_study
from fedmtl.report.report import write_report
from tests.helpers import TINY_OVERRIDES, federate_in_process

SETTINGS = [
    ("server.aggregator.name", "pcgrad"),
    ("server.aggregator", {"name": "cagrad", "c": 0.5}),
    ("server.optimizer.name", "adam"),
    ("client.lr", 0.01),
    ("client.balancing.name", "gradnorm"),
    ("model.sharing", {"name": "partial", "shared_blocks": 1}),
]


@pytest.mark.parametrize(("key", "value"), SETTINGS, ids=[k for k, _ in SETTINGS])
def test_an_arms_set_and_set_give_the_same_config(key, value):
    """The bug this guards: ``server.aggregator.name: pcgrad`` in an arm kept FedAvg's ``weighted`` key."""
    study = load_config(None, [*TINY_OVERRIDES, "study.arms=[fed_mtl, local_stl]"])
    from_arm = arm_config(study, ArmSpec(name="x", set={key: value}))
    from_set = load_config(None, [*TINY_OVERRIDES, f"{key}={json.dumps(value)}"])
    assert from_arm == from_set


def test_setting_a_components_name_starts_it_from_its_defaults():
    cfg = load_config(
        None, [*TINY_OVERRIDES, "server.aggregator={name: cagrad, c: 0.9}", "server.aggregator.name=pcgrad"]
    )
    assert repr(cfg.server.aggregator) == "PCGrad()"
    same = load_config(
        None, [*TINY_OVERRIDES, "server.aggregator={name: cagrad, c: 0.9}", "server.aggregator.name=cagrad"]
    )
    assert same.server.aggregator.c == 0.9  # the same component keeps its parameters


def test_an_arm_invalid_only_with_its_bases_settings_stops_the_study_before_any_run():
    """fed_stl's one cohort per task has at most three clients: Krum with f = 1 needs five."""
    arms = "[fed_mtl, local_stl, {name: robust, base: fed_stl, set: {server.aggregator: {name: krum, f: 1}}}]"
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*TINY_OVERRIDES, "clients.count=6", f"study.arms={arms}"])
    assert caught.value.path == "study.arms[2].set" and "needs at least 5 client updates" in caught.value.message


def test_every_built_in_arm_is_a_valid_config_of_the_tiny_study():
    study = load_config(None, [*TINY_OVERRIDES, f"study.arms=[{', '.join(ARMS)}]"])
    for name, arm in ARMS.items():
        cfg = arm_config(study, ArmSpec(name=name, base=name))
        for key, value in arm.settings.items():  # each setting reached the config
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
            if value == {}:  # a whole section back to its defaults
                assert node == type(node)(), (name, key)
            elif isinstance(value, dict):  # a component with its parameters
                assert all(getattr(node, k) == v for k, v in value.items()), (name, key)
            else:
                assert getattr(node, "name", node) == value, (name, key)


@pytest.mark.parametrize("metrics_format", ["csv", "jsonl"])
def test_every_arm_writes_the_same_run_files_and_a_study_reports_them(tmp_path, metrics_format):
    import simulate

    arms = f"[{', '.join(ARMS)}]"
    overrides = [*TINY_OVERRIDES, "rounds=2", f"study.arms={arms}", f"output.metrics_format={metrics_format}"]
    cfg = load_config(None, overrides)
    run_study(cfg, tmp_path, federate_in_process, lambda line: None)
    summary = write_report(tmp_path)
    assert [c["baseline"] for c in summary["comparisons"]] == [
        "local_stl",
        "fed_stl",
        "fed_full",
        "adaptive",
        "central_mtl",
    ]
    for arm in ARMS:
        run_dir = tmp_path / "arms" / arm / "seed-0"
        for name in ("config.yaml", f"metrics.{metrics_format}", "server.jsonl", "clients.jsonl", "encoder.pt"):
            assert (run_dir / name).is_file(), (arm, name)
        tasks = json.loads((run_dir / SUMMARY_JSON).read_text())["tasks"]
        assert tasks and all(t["round_final"] == 2 for t in tasks), arm
        reference = tmp_path / "arms" / "fed_mtl" / "seed-0"
        assert simulate.compare_command([str(run_dir), str(reference), "--out", str(tmp_path / f"cmp-{arm}")]) == 0, arm
