"""Alternatives to multi-task training as study arms (issue #22): an arm with a federated pretraining
phase (``study.arms[i].pretrain``) runs that phase on its source tasks among their holders, then starts
the arm's encoder from the phase's encoder: sequential transfer (per-task federations fine-tune it) and
heads on a pretrained, frozen encoder."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.experiments.runner import run_study
from tests.helpers import TINY_CLIENT_TASKS, TINY_OVERRIDES, federate_in_process

ARMS = (
    "[fed_stl, {name: sequential, base: fed_stl, pretrain: {tasks: [anchor], rounds: 2}},"
    " {name: frozen, base: fed_mtl, pretrain: {tasks: [anchor], rounds: 2}, set: {client.train_encoder: false}}]"
)


@pytest.mark.parametrize(
    ("arm", "path", "words"),
    [
        ("{name: s, pretrain: {rounds: 0}}", "study.arms[1].pretrain.rounds", "must be >= 1"),
        ("{name: s, pretrain: {tasks: [nope]}}", "study.arms[1].pretrain", "unknown task 'nope'"),
        ("{name: s, pretrain: {}, set: {model.init_from: x.pt}}", "study.arms[1].set.model.init_from", "one or"),
    ],
)
def test_bad_pretraining_names_its_entry(arm, path, words):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [f"study.arms=[fed_mtl, {arm}]"])
    assert raised.value.path == path and words in raised.value.message


def test_pretraining_runs_first_and_the_arm_starts_from_its_encoder(tmp_path):
    cfg = load_config(None, [*TINY_OVERRIDES, "rounds=2", f"study.arms={ARMS}", "study.reference_arm=fed_stl"])
    run_study(cfg, tmp_path, federate_in_process, lambda line: None)
    manifest = json.loads((tmp_path / "study.json").read_text())
    assert manifest["arm_specs"]["sequential"]["pretrain"] == {"tasks": ["anchor"], "rounds": 2}
    assert "pretrain" not in manifest["arm_specs"]["fed_stl"]
    holders = sorted(c for c, t in TINY_CLIENT_TASKS if t == "anchor")
    for arm in ("sequential", "frozen"):
        phase = tmp_path / "pretrain" / "arms" / arm / "seed-0"
        rows = read_rows(phase / "metrics.jsonl")
        assert {r["task"] for r in rows} == {"anchor"}  # the source task only, on its holders
        assert sorted({r["client"] for r in rows}) == holders
        assert {r["round"] for r in rows if r["split"] == "train"} == {1, 2}
        arm_config = yaml.safe_load((tmp_path / "arms" / arm / "seed-0" / "config.yaml").read_text())
        assert arm_config["model"]["init_from"] == str(phase / "encoder.pt")
        assert arm_config["clients"]["only_tasks"] == []  # the arm itself trains every task
    # frozen heads: the arm's encoder is the pretrained one, bit for bit
    pretrained = torch.load(tmp_path / "pretrain/arms/frozen/seed-0/encoder.pt")
    final = torch.load(tmp_path / "arms/frozen/seed-0/encoder.pt")
    assert pretrained.keys() == final.keys() and all(torch.equal(pretrained[k], final[k]) for k in final)

    # sequential: each task's federation starts from the pretrained encoder, not the random one
    def round_zero(arm: str) -> dict:
        rows = read_rows(tmp_path / "arms" / arm / "seed-0" / "metrics.jsonl")
        return {(r["client"], r["task"]): r["loss"] for r in rows if r["split"] == "eval" and r["round"] == 0}

    sequential, plain = round_zero("sequential"), round_zero("fed_stl")
    assert sequential.keys() == plain.keys() and all(sequential[k] != plain[k] for k in plain)
