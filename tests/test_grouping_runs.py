"""Grouped federation end to end in this process (``tests/loopback.py``: the real ServerApp and
ClientApp): the groups each keep an encoder, membership per round in ``server.jsonl``, a split after
warm-up, and a resumed run that forms the same groups and ends bit for bit as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.files import read_rows
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.runfiles.checkpoint import load_server_checkpoint
from fedmtl.runfiles.rundir import RunDirectory
from tests.helpers import tiny_overrides
from tests.loopback import run_in_process

FOUR = tiny_overrides(4)
# a split that the rule cannot refuse (any mean update is below 0.99 x the largest, any cosine below 1),
# once: two groups at most
FORCED_SPLIT = (
    "server.grouping={name: cfl, warmup_rounds: 1, max_mean_ratio: 0.99, max_cross_cosine: 1.0, max_groups: 2}"
)


def test_given_groups_keep_their_own_encoders(tmp_path):
    run_dir = run_in_process(
        tmp_path, "run", *FOUR, "rounds=2", "server.grouping={name: given, groups: [[0, 2], [1, 3]]}", nodes=4
    )
    rows = read_rows(run_dir / "server.jsonl")
    assert [r["groups"] for r in rows] == [{"group-0": [0, 2], "group-1": [1, 3]}] * 2
    assert all(r["splits"] == [] for r in rows)
    assert [sorted(c["clients"]) for c in rows[0]["cohorts"]] == [[0, 2], [1, 3]]  # each aggregated its own
    encoders = torch.load(run_dir / "encoder.pt")
    assert sorted(encoders) == ["group-0", "group-1"]
    assert any(not torch.equal(encoders["group-0"][k], encoders["group-1"][k]) for k in encoders["group-0"])


def test_the_lower_blocks_stay_federated_across_groups(tmp_path):
    """server.shared_across_groups: 1: block 0 is one encoder for both groups, block 1 each group's own."""
    run_dir = run_in_process(
        tmp_path, "run", *FOUR, "rounds=2", "server.grouping={name: given, groups: [[0, 2], [1, 3]]}",
        "server.shared_across_groups=1", nodes=4,
    )  # fmt: skip
    encoders = torch.load(run_dir / "encoder.pt")
    first, second = encoders["group-0"], encoders["group-1"]
    lower = [k for k in first if k.startswith("encoder.0.")]
    upper = [k for k in first if k.startswith("encoder.1.")]
    assert lower and upper
    assert all(torch.equal(first[k], second[k]) for k in lower)
    assert all(not torch.equal(first[k], second[k]) for k in upper)


def test_sharing_across_groups_averages_their_steps_by_examples():
    """The shared coordinates become the example-weighted mean of the groups' values; a group that
    aggregated nothing takes the mean; the other coordinates stay each group's own."""
    cfg = load_config(None, [*FOUR, "server.grouping={name: given, groups: [[0, 1], [2], [3]]}"])
    algorithm = ServerAlgorithm(cfg)
    from fedmtl.federation import groups

    cohorts = algorithm.cohorts
    layout = cohorts[0].updater.layout
    mask = groups.lower_blocks_mask(layout, 1)
    sizes = dict(zip(layout.keys, (s.numel() for s in layout.shapes)))
    assert int(mask.sum()) == sum(n for k, n in sizes.items() if k.startswith("encoder.0."))
    with torch.no_grad():
        for value, cohort in zip((1.0, 4.0, 100.0), cohorts):
            cohort.updater.param.fill_(value)
    groups.share_across(cohorts, mask, [1.0, 3.0, 0.0])
    expected = (1.0 * 1 + 4.0 * 3) / 4
    for value, cohort in zip((1.0, 4.0, 100.0), cohorts):
        param = cohort.updater.param.detach()
        assert torch.allclose(param[mask], torch.full_like(param[mask], expected))
        assert torch.equal(param[~mask], torch.full_like(param[~mask], value))


def test_a_group_splits_after_warmup_and_the_halves_train_apart(tmp_path):
    run_dir = run_in_process(tmp_path, "run", *FOUR, "rounds=3", FORCED_SPLIT, nodes=4)
    rows = read_rows(run_dir / "server.jsonl")
    assert rows[0]["groups"] == {"all": [0, 1, 2, 3]} and rows[0]["splits"] == []
    (split,) = rows[1]["splits"]  # round 2 is the first after the warm-up
    assert split["group"] == "all" and sorted(split["into"]) == ["all.0", "all.1"]
    halves = split["into"]
    assert sorted(c for g in halves.values() for c in g) == [0, 1, 2, 3]
    assert rows[1]["groups"] == rows[2]["groups"] == halves  # max_groups: 2
    assert rows[2]["splits"] == [] and [c["cohort"] for c in rows[2]["cohorts"]] == ["all.0", "all.1"]
    assert len(rows[0]["update_norms"]) == 4 and all(n > 0 for n in rows[0]["update_norms"])


def test_a_resumed_grouped_run_ends_as_an_uninterrupted_one(tmp_path):
    common = (*FOUR, "rounds=4", "checkpoint.every=1", FORCED_SPLIT, "server.shared_across_groups=1")
    reference = run_in_process(tmp_path, "reference", *common, nodes=4)
    with pytest.raises(ConnectionError):
        run_in_process(tmp_path, "run", *common, nodes=4, fail_at_train=3)
    run_dir = tmp_path / "run"
    checkpoint = load_server_checkpoint(RunDirectory.open(str(run_dir))[0])
    assert sorted(checkpoint.state["groups"]) == ["all.0", "all.1"]  # saved after the split
    run_in_process(tmp_path, "run", *common, nodes=4, **{"resume-dir": str(run_dir)})
    assert read_rows(run_dir / "metrics.jsonl") == read_rows(reference / "metrics.jsonl")
    drop = ("started_at", "seconds")
    server = [{k: v for k, v in r.items() if k not in drop} for r in read_rows(run_dir / "server.jsonl")]
    assert server == [{k: v for k, v in r.items() if k not in drop} for r in read_rows(reference / "server.jsonl")]
    expected = torch.load(reference / "encoder.pt")
    assert torch.load(run_dir / "encoder.pt").keys() == expected.keys()
    for key, state in torch.load(run_dir / "encoder.pt").items():
        assert all(torch.equal(state[k], expected[key][k]) for k in state)


def test_a_split_copies_the_parents_encoder_and_server_state():
    """Both halves start from the parent's encoder and server-optimizer state, and sample with their own seeds."""
    cfg = load_config(None, [*FOUR, FORCED_SPLIT, "server.optimizer={name: sgd, lr: 1.0, momentum: 0.5}"])
    algorithm = ServerAlgorithm(cfg)
    (root,) = algorithm.cohorts
    from fedmtl.federation import groups

    halves = groups.split(root, [(0, 1), (2, 3)], algorithm._sampler)
    assert [h.key for h in halves] == ["all.0", "all.1"]
    for half in halves:
        assert torch.equal(half.updater.param, root.updater.param) and half.updater.param is not root.updater.param
        assert half.updater.optimizer.param_groups[0]["params"][0] is half.updater.param
    assert halves[0].sampler.seed == f"{cfg.seed}/all.0" and root.sampler.seed == cfg.seed


def test_a_federation_that_may_split_is_never_sent_as_one():
    """Engines that cannot tell nodes apart may send one message to all only when nothing can differ."""
    assert ServerAlgorithm(load_config(None, list(FOUR))).interchangeable
    assert not ServerAlgorithm(load_config(None, [*FOUR, FORCED_SPLIT])).interchangeable
    given = "server.grouping={name: given, groups: [[0, 1], [2, 3]]}"
    assert not ServerAlgorithm(load_config(None, [*FOUR, given])).interchangeable  # two encoders from the start
