"""The clients' shortcut check (``fedmtl/local/data_checks.py``) and the report's data checks: an injected
label leakage is flagged on the client and task where it sits, and clean data is quiet, over seeds and
suites; the report opens with the section."""

from __future__ import annotations

import json

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.data.suites import TaskData
from fedmtl.data.task_kinds import TaskSpec
from fedmtl.local.data import client_data
from fedmtl.local.data_checks import explained, shortcut_check
from fedmtl.report.data_checks import is_shortcut
from fedmtl.report.report import write_report
from tests.helpers import tiny_overrides
from tests.study._study import write_jsonl, write_study

SUITES = {
    "digits": ("data.name=digits", "clients.count=4"),
    "synthetic": (*tiny_overrides(4), "clients.samples_per_task=200"),  # a check on 8 examples cannot tell
}


def flagged(check: dict[str, float]) -> bool:
    return is_shortcut(check["shortcut_train"], check["shortcut_eval"], check["shortcut_chance"])


def test_explained_share_is_eta_squared_and_r_squared():
    x = torch.tensor([[v, 1.0] for v in (0, 2, 0, 2, 1)] + [[v, 5.0] for v in (4, 6, 4, 6, 5)])
    y = torch.tensor([0] * 5 + [1] * 5)
    # feature 0: class means 1 and 5 around 3: between 5 * 4 + 5 * 4 = 40 of total 24 + 24; feature 1: all of it
    assert explained(x, y, classification=True).tolist() == pytest.approx([40 / 48, 1.0])
    target = torch.arange(10, dtype=torch.float32)
    assert explained(2 * target[:, None] + 1, target, classification=False)[0] == pytest.approx(1.0)


def test_a_rare_class_lighting_a_lone_feature_is_no_shortcut():
    """One example of a third class with a feature nobody else has: eta^2 would be 1 with it."""
    x = torch.zeros(11, 3)
    x[:, 0] = torch.tensor([0.0, 1.0] * 5 + [0.0])
    x[10, 2] = 9.0  # the lone example's own pixel
    y = torch.tensor([0, 1] * 5 + [2])
    shares = explained(x, y, classification=True)
    assert shares[2] < 0.5 and shares[0] == pytest.approx(1.0)  # the rare class is left out; feature 0 is real


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_data_is_quiet_and_a_leak_is_flagged_where_it_sits(suite, seed):
    base = [*SUITES[suite], f"seed={seed}"]
    clean = load_config(None, base)
    task = clean.data.task_names()[1]
    leaky = load_config(None, [*base, f"data_issues=[{{name: leakage, task: {task}, clients: [1]}}]"])
    specs = {s.name: s for s in clean.data.task_specs()}
    for cfg, leaked in ((clean, set()), (leaky, {(1, task)})):
        found = set()
        for client in range(4):
            data = client_data(cfg, client)
            for name in data.train:
                if flagged(shortcut_check(data.train, data.eval, specs, name)):
                    found.add((client, name))
        assert found == leaked


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_label_leaked_between_tasks_is_flagged_where_it_sits_and_named(seed):
    """The digit written into geq5's inputs on client 1: geq5's own label is explained only in part (the
    code is a function of the digit), so only the check against the other tasks' labels finds it. Clients
    hold all four tasks, so every task's inputs are checked against every label: clean ones stay quiet."""
    base = ["data.name=digits", "clients.count=4", "clients.tasks_per_client=4", f"seed={seed}"]
    leaky = load_config(None, [*base, "data_issues=[{name: leakage, task: geq5, source: digit, clients: [1]}]"])
    specs = {s.name: s for s in leaky.data.task_specs()}
    order = leaky.data.task_names()
    for cfg, leaked in ((load_config(None, base), {}), (leaky, {(1, "geq5"): "digit"})):
        found, own_only = {}, set()
        for client in range(4):
            data = client_data(cfg, client)
            for name in data.train:
                check = shortcut_check(data.train, data.eval, specs, name, order, shared_examples=True)
                if flagged(check):
                    found[(client, name)] = order[int(check["shortcut_source"])]
                if flagged(shortcut_check(data.train, data.eval, specs, name)):
                    own_only.add((client, name))
        assert found == leaked and not own_only


def test_a_constant_or_tiny_task_gives_no_check():
    spec = {"t": TaskSpec("t", "classification", 2)}
    tiny = {"t": TaskData(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))}
    assert shortcut_check(tiny, {"t": TaskData(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))}, spec, "t") == {}
    constant = shortcut_check(
        {"t": TaskData(torch.ones(6, 3), torch.tensor([0, 1] * 3))},
        {"t": TaskData(torch.ones(4, 3), torch.tensor([0, 1] * 2))},
        spec,
        "t",
    )
    assert constant == {"shortcut_train": 0.0, "shortcut_eval": 0.0, "shortcut_chance": 0.0, "shortcut_source": 0.0}


def with_shortcuts(root, shares, arms="*", source=None):
    """Give every eval row of each run of ``arms`` the shortcut shares ``shares[(task, client)]`` (train,
    eval), of the label of the study's task at position ``source`` (None: no source column)."""
    for path in root.glob(f"arms/{arms}/seed-*/metrics.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            if row["split"] == "eval":
                train, held_out = shares.get((row["task"], row["client"]), (0.3, 0.2))
                row["shortcut_train"], row["shortcut_eval"], row["shortcut_chance"] = train, held_out, 0.1
                if source is not None:
                    row["shortcut_source"] = source
        write_jsonl(path, rows)


def test_the_report_opens_with_the_data_checks(tmp_path):
    root = write_study(tmp_path / "leaky")
    with_shortcuts(root, {("cls", 1): (0.97, 0.05)})
    write_report(root)
    text = (root / "report.md").read_text()
    assert text.index("## Data checks") < text.index("## Paired comparisons")
    assert "**Possible label leakage** on 1 (task, client) pair(s)" in text
    assert "| cls | cls | 1 | 0.97 | 0.05 | 0.10 | 3 / 3 |" in text
    clean = write_study(tmp_path / "clean")
    with_shortcuts(clean, {})
    write_report(clean)
    assert "No shortcut found" in (clean / "report.md").read_text()
    across = write_study(tmp_path / "across")  # the second arm alone finds a leak: its check counts
    with_shortcuts(across, {})
    with_shortcuts(across, {("cls", 1): (0.97, 0.05)}, arms="local_stl", source=1)
    write_report(across)
    names = [t["name"] for t in json.loads((across / "study.json").read_text())["tasks"]]
    assert f"| cls | {names[1]} | 1 | 0.97 | 0.05 | 0.10 | 3 / 3 |" in (across / "report.md").read_text()
    plain = write_study(tmp_path / "none")  # runs written before the check existed: no section
    write_report(plain)
    assert "## Data checks" not in (plain / "report.md").read_text()


def test_the_check_is_computed_once_per_client_and_task_and_reused(monkeypatch):
    import fedmtl.local.client as client_module
    from fedmtl.config.loading import load_config
    from fedmtl.local.client import LocalClient
    from fedmtl.model.networks import initial_shared_state
    from tests.helpers import TINY_OVERRIDES

    calls = []
    real = client_module.shortcut_check
    monkeypatch.setattr(client_module, "shortcut_check", lambda *a: calls.append(a[3]) or real(*a))
    monkeypatch.setattr(client_module, "_shortcut_checks", {})
    cfg = load_config(None, [*TINY_OVERRIDES, "seed=12345"])
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    client = LocalClient.for_client(cfg, 0)
    first = client.evaluate(shared, None)
    again = client.evaluate(shared, None)
    assert sorted(calls) == sorted(cfg.clients.tasks_of(0, cfg.data.task_names()))  # once per task
    assert [{k: v for k, v in r.items() if "shortcut" in k} for r in first] == [
        {k: v for k, v in r.items() if "shortcut" in k} for r in again
    ]
