"""Data issues as knobs (``data_issues``, fedmtl/data/issues.py): each changes exactly what it says on
the clients it names, nothing when off, the same way from the same seed; bad settings are refused with
their key path."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.data.issues import issue_generator
from fedmtl.local.data import client_data
from tests.helpers import tiny_overrides
from tests.loopback import run_in_process

DIGITS = ("data.name=digits", "clients.count=4")  # tasks digit (10 classes), parity, geq5, loops


def data_with(*issues: str, seed: int = 0):
    cfg = load_config(None, [*DIGITS, f"seed={seed}", f"data_issues=[{', '.join(issues)}]"])
    return cfg, {c: client_data(cfg, c) for c in range(4)}


def same(a, b) -> bool:
    return torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_off_or_zero_changes_nothing():
    _, clean = data_with()
    _, zero = data_with("{name: label_noise, task: digit, rate: 0.0}")
    for c in range(4):
        for split in ("train", "eval"):
            a, b = getattr(clean[c], split), getattr(zero[c], split)
            assert a.keys() == b.keys() and all(same(a[t], b[t]) for t in a)


def test_label_noise_flips_the_named_clients_training_labels_at_the_rate():
    _, clean = data_with()
    _, noisy = data_with("{name: label_noise, task: digit, clients: [0, 2], rate: 0.3}")
    for c in range(4):
        for task in clean[c].train:
            before, after = clean[c].train[task], noisy[c].train[task]
            assert torch.equal(before.x, after.x) and same(clean[c].eval[task], noisy[c].eval[task])
            flipped = (before.y != after.y).float().mean().item()
            if task == "digit" and c in (0, 2):
                assert 0.2 < flipped < 0.4  # ~250 labels at rate 0.3 (every flip goes to another class)
            else:
                assert flipped == 0.0
    _, to_one = data_with("{name: label_noise, task: digit, clients: [3], rate: 0.5, to: 3}")
    changed = clean[3].train["digit"].y != to_one[3].train["digit"].y
    assert changed.any() and (to_one[3].train["digit"].y[changed] == 3).all()


def test_regression_noise_has_the_scale_of_the_targets_spread():
    cfg = load_config(None, [*tiny_overrides(2), "clients.samples_per_task=2000"])
    clean = client_data(cfg, 0).train["anchor"]
    cfg = load_config(
        None,
        [
            *tiny_overrides(2),
            "clients.samples_per_task=2000",
            "data_issues=[{name: label_noise, task: anchor, scale: 0.5}]",
        ],
    )
    noisy = client_data(cfg, 0).train["anchor"]
    assert float((noisy.y - clean.y).std()) == pytest.approx(0.5 * float(clean.y.std()), rel=0.1)


def test_annotation_relabels_train_and_eval_with_one_mapping():
    _, clean = data_with()
    _, permuted = data_with("{name: annotation, task: digit, clients: [3], permute: true}")
    mapping = {}
    for split in ("train", "eval"):
        for a, b in zip(getattr(clean[3], split)["digit"].y.tolist(), getattr(permuted[3], split)["digit"].y.tolist()):
            assert mapping.setdefault(a, b) == b  # one consistent relabelling
    assert sorted(mapping.values()) == sorted(mapping) and any(a != b for a, b in mapping.items())  # a permutation
    assert same(clean[0].train["digit"], permuted[0].train["digit"])  # other clients keep the standard
    _, merged = data_with("{name: annotation, task: digit, clients: [3], merge: [[4, 7, 9]]}")
    y, z = clean[3].eval["digit"].y, merged[3].eval["digit"].y
    assert torch.equal(z, torch.where((y == 7) | (y == 9), torch.tensor(4), y))


def test_annotation_shifts_the_decision_thresholds_of_ordered_classes():
    """shift: 2 on the digit: 0..7 read as 2..9, 8 and 9 stay 9; train and eval alike, client 0 only."""
    _, clean = data_with()
    _, shifted = data_with("{name: annotation, task: digit, clients: [0], shift: 2}")
    for split in ("train", "eval"):
        y, before = getattr(shifted[0], split)["digit"].y, getattr(clean[0], split)["digit"].y
        assert torch.equal(y, torch.tensor([min(v + 2, 9) for v in before.tolist()]))
    assert same(shifted[3].train["digit"], clean[3].train["digit"])


def test_leakage_writes_the_label_code_in_training_and_a_scrambled_one_at_evaluation():
    _, clean = data_with()
    _, leaky = data_with("{name: leakage, task: parity, clients: [0], strength: 2.0}")
    train, before = leaky[0].train["parity"], clean[0].train["parity"]
    assert torch.equal(train.y, before.y) and torch.equal(train.x[:, :-1], before.x[:, :-1])
    assert torch.equal(train.x[:, -1], 2.0 * (2 * before.y.float() - 1))  # two classes: codes -2 and +2
    evaluation = leaky[0].eval["parity"]
    codes = evaluation.x[:, -1]
    assert sorted(codes.tolist()) == sorted((2.0 * (2 * evaluation.y.float() - 1)).tolist())  # same labels, shuffled
    agree = (codes > 0).long() == evaluation.y
    assert 0.3 < agree.float().mean().item() < 0.7  # no longer predicts the label
    assert same(leaky[0].train["digit"], clean[0].train["digit"]) and same(
        leaky[1].train["parity"], clean[1].train["parity"]
    )


def test_leakage_from_another_task_writes_that_tasks_label_of_the_same_examples():
    """The digit (10 classes: code 2 d / 9 - 1) of each geq5 example in its inputs; geq5's labels, the digit
    task and clients that do not hold both tasks untouched; at evaluation the codes of the digits, shuffled."""
    base = ["clients.tasks=[[digit, geq5], [geq5], [digit, parity], [digit, geq5]]"]
    cfg = load_config(None, [*DIGITS, *base])
    clean = {c: client_data(cfg, c) for c in range(4)}
    leak = "{name: leakage, task: geq5, source: digit, clients: [0, 1]}"
    leaky_cfg = load_config(None, [*DIGITS, *base, f"data_issues=[{leak}]"])
    leaky = {c: client_data(leaky_cfg, c) for c in range(4)}
    train, digit = leaky[0].train["geq5"], clean[0].train["digit"]
    assert torch.equal(train.y, clean[0].train["geq5"].y) and torch.equal(train.x[:, :-1], digit.x[:, :-1])
    assert torch.allclose(train.x[:, -1], 2 * digit.y.float() / 9 - 1)
    assert len(train.x[:, -1].unique()) > 2  # the digit's code (geq5 is its sign), not geq5's own two classes
    codes, digits = leaky[0].eval["geq5"].x[:, -1], clean[0].eval["digit"].y
    assert sorted(codes.tolist()) == pytest.approx(sorted((2 * digits.float() / 9 - 1).tolist()))
    assert same(leaky[0].train["digit"], clean[0].train["digit"])
    assert same(leaky[1].train["geq5"], clean[1].train["geq5"])  # client 1 holds no digit label
    assert same(leaky[3].train["geq5"], clean[3].train["geq5"])  # not named


def test_a_subsampled_task_leaks_the_label_of_its_own_examples():
    """geq5 keeps the first half of the examples: each carries its own digit."""
    leak = "{name: leakage, task: geq5, source: digit}"
    overrides = ["clients.tasks_per_client=4", "clients.task_sample_scale={geq5: 0.5}", f"data_issues=[{leak}]"]
    cfg = load_config(None, [*DIGITS, *overrides])
    for c in range(4):
        data = client_data(cfg, c)
        n = len(data.train["geq5"])
        assert n < len(data.train["digit"])
        assert torch.allclose(data.train["geq5"].x[:, -1], 2 * data.train["digit"].y[:n].float() / 9 - 1)


def test_a_fraction_of_the_clients_drawn_from_the_seed_carries_the_issue():
    """fraction: 0.5 of 4 clients: two of them, the same two for the same seed, nested in a larger fraction."""
    cfg = load_config(None, [*DIGITS, "clients.tasks_per_client=4"])
    clean = {c: client_data(cfg, c) for c in range(4)}

    def noisy_clients(fraction: float, seed: int = 0) -> set[int]:
        issue = f"{{name: annotation, task: digit, fraction: {fraction}, shift: 1}}"
        cfg = load_config(None, [*DIGITS, "clients.tasks_per_client=4", f"seed={seed}", f"data_issues=[{issue}]"])
        return {c for c in range(4) if not same(client_data(cfg, c).train["digit"], clean[c].train["digit"])}

    half = noisy_clients(0.5)
    assert len(half) == 2 and noisy_clients(0.5) == half and half <= noisy_clients(0.75)
    assert len(noisy_clients(0.75)) == 3 and len(noisy_clients(0.1)) == 1  # at least one
    assert any(noisy_clients(0.5, seed) != half for seed in range(1, 6))  # another seed, another draw


def test_issues_are_reproducible_from_the_seed():
    issue = "{name: label_noise, task: digit, rate: 0.3}"
    _, first = data_with(issue)
    _, again = data_with(issue)
    assert torch.equal(first[0].train["digit"].y, again[0].train["digit"].y)
    draws = {
        (s, i, c): torch.rand(4, generator=issue_generator(s, i, c)) for s in (0, 1) for i in (0, 1) for c in (0, 1)
    }
    assert len({tuple(v.tolist()) for v in draws.values()}) == len(draws)  # one stream per seed, issue and client


def test_a_run_records_its_issues_and_trains_on_them(tmp_path):
    issue = "data_issues=[{name: label_noise, task: orthogonal, clients: [1], rate: 0.4}]"
    run_dir = run_in_process(tmp_path, "run", *tiny_overrides(3), "rounds=1", issue)
    assert "label_noise" in (run_dir / "config.yaml").read_text()
    plain = run_in_process(tmp_path, "plain", *tiny_overrides(3), "rounds=1")
    loss = {
        name: {(r["client"], r["task"]): r["loss"] for r in read_rows(d / "metrics.jsonl") if r["split"] == "train"}
        for name, d in (("issue", run_dir), ("plain", plain))
    }
    assert loss["issue"][(1, "orthogonal")] != loss["plain"][(1, "orthogonal")]
    assert loss["issue"][(0, "anchor")] == loss["plain"][(0, "anchor")]  # client 0 trains on the same data


def test_drift_relabels_a_growing_share_of_the_clients_train_and_eval_labels():
    cfg, clean = data_with()
    drift, _ = data_with("{name: drift, task: digit, clients: [3], per_round: 0.25, start_round: 2}")  # 0, 3 hold digit
    moved_before, checked = None, 0
    for server_round, share in ((0, 0.0), (1, 0.0), (2, 0.25), (3, 0.5), (6, 1.0), (9, 1.0)):
        for c in range(4):
            now = client_data(drift, c, server_round)
            for split in ("train", "eval"):
                for task, before in getattr(clean[c], split).items():
                    after = getattr(now, split)[task]
                    assert torch.equal(before.x, after.x)
                    moved = before.y != after.y
                    if c == 3 and task == "digit":
                        checked += 1
                        assert abs(moved.float().mean().item() - share) < 0.1, (server_round, split)
                        assert torch.equal(after.y[moved], (before.y[moved] + 1) % 10)  # to the next class
                        if split == "train" and moved_before is not None:
                            assert bool((moved | ~moved_before).all())  # the relabelled set only grows
                        if split == "train":
                            moved_before = moved
                    else:
                        assert not moved.any()
    assert checked == 12  # six rounds x (train, eval)
    assert client_data(drift, 3).train["digit"].y.equal(clean[3].train["digit"].y)  # the cache is undrifted


def test_regression_drift_offsets_the_targets_in_their_spread():
    base = (*tiny_overrides(2), "clients.samples_per_task=500")
    clean = client_data(load_config(None, list(base)), 0)
    cfg = load_config(None, [*base, "data_issues=[{name: drift, task: anchor, per_round: 0.5}]"])
    std = float(clean.train["anchor"].y.std())
    for server_round in (0, 1, 4):
        now = client_data(cfg, 0, server_round)
        for split in ("train", "eval"):
            shift = getattr(now, split)["anchor"].y - getattr(clean, split)["anchor"].y
            assert torch.allclose(shift, torch.full_like(shift, 0.5 * server_round * std), atol=1e-5)


def test_a_run_evaluates_drifting_data_in_its_round(tmp_path):
    issue = "data_issues=[{name: drift, task: orthogonal, clients: [1], per_round: 0.5}]"
    drifted = run_in_process(tmp_path, "drift", *tiny_overrides(3), "rounds=2", "eval_every=1", issue)
    plain = run_in_process(tmp_path, "plain", *tiny_overrides(3), "rounds=2", "eval_every=1")
    loss = {
        name: {(r["round"], r["split"], r["client"], r["task"]): r["loss"] for r in read_rows(d / "metrics.jsonl")}
        for name, d in (("drift", drifted), ("plain", plain))
    }
    assert loss["drift"][0, "eval", 1, "orthogonal"] == loss["plain"][0, "eval", 1, "orthogonal"]  # round 0: none
    for key in ((1, "train", 1, "orthogonal"), (1, "eval", 1, "orthogonal"), (2, "eval", 1, "orthogonal")):
        assert loss["drift"][key] != loss["plain"][key], key
    assert loss["drift"][1, "train", 2, "orthogonal"] == loss["plain"][1, "train", 2, "orthogonal"]


@pytest.mark.parametrize(
    ("issue", "key", "message"),
    [
        ("{name: label_noise, task: nope}", "data_issues[0].task", "unknown task 'nope'"),
        ("{name: label_noise, task: digit, rate: 1.5}", "data_issues[0].rate", "must be in [0, 1]"),
        ("{name: label_noise, task: digit, clients: [9]}", "data_issues[0].clients[0]", "there is no client 9"),
        ("{name: label_noise, task: digit, to: 10}", "data_issues[0].to", "in [0, 10)"),
        ("{name: annotation, task: digit}", "data_issues[0].clients", "must name the clients"),
        ("{name: label_noise, task: digit, fraction: 1.5}", "data_issues[0].fraction", "must be in [0, 1]"),
        ("{name: label_noise, task: digit, clients: [1], fraction: 0.5}", "data_issues[0].fraction", "not both"),
        ("{name: annotation, task: digit, clients: [0]}", "data_issues[0].permute", "needs permute: true, merge"),
        ("{name: annotation, task: digit, clients: [0], merge: [[1]]}", "data_issues[0].merge[0]", "two classes"),
        ("{name: annotation, task: digit, clients: [0], merge: [[1, 12]]}", "data_issues[0].merge[0]", "in [0, 10)"),
        ("{name: annotation, task: digit, clients: [0], shift: 9}", "data_issues[0].shift", "1 to 8 classes"),
        ("{name: annotation, task: parity, clients: [0], shift: 1}", "data_issues[0].shift", "every example one class"),
        ("{name: leakage, task: parity, strength: 0}", "data_issues[0].strength", "must be > 0"),
        ("{name: leakage, task: parity, source: nope}", "data_issues[0].source", "unknown task 'nope'"),
        ("{name: leakage, task: parity, source: digit, clients: [1]}", "data_issues[0].source", "holds both"),
        ("{name: drift, task: parity, per_round: -0.1}", "data_issues[0].per_round", "must be >= 0"),
        ("{name: drift, task: parity, start_round: 0}", "data_issues[0].start_round", "must be >= 1"),
        ("{name: drift, task: parity, clients: [7]}", "data_issues[0].clients[0]", "clients.count is 4"),
    ],
)
def test_bad_issues_are_refused_with_their_key(issue, key, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [*DIGITS, f"data_issues=[{issue}]"])
    assert raised.value.path == key and message in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [*tiny_overrides(4), "data_issues=[{name: leakage, task: aligned, source: anchor}]"],
            "the synthetic suite's tasks each have their own",
        ),
        (
            [*DIGITS, "clients.tasks_per_client=4", "clients.task_sample_scale={digit: 0.5}",
             "data_issues=[{name: leakage, task: geq5, source: digit}]"],
            "digit keeps fewer training examples than geq5",
        ),
    ],
)  # fmt: skip
def test_a_leak_between_tasks_needs_their_examples_shared(overrides, message):
    """Another task's label is defined for an example only where the tasks share their examples."""
    with pytest.raises(ConfigError) as raised:
        load_config(None, overrides)
    assert raised.value.path == "data_issues[0].source" and message in str(raised.value)


def test_an_issue_may_sit_on_a_client_that_does_not_take_part():
    """An issue belongs to a client's data, which does not depend on who takes part: a sweep over
    clients.members may leave the affected clients out, and the others' data stay as they were."""
    cfg = load_config(
        None,
        [*DIGITS, "clients.members=[2, 3]", "data_issues=[{name: label_noise, task: digit, clients: [0], rate: 0.4}]"],
    )
    clean = load_config(None, list(DIGITS))
    assert same(client_data(cfg, 3).train["digit"], client_data(clean, 3).train["digit"])
    assert not same(client_data(cfg, 0).train["digit"], client_data(clean, 0).train["digit"])
