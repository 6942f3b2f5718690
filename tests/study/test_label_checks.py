"""Label checks (noisy and disagreeing labels) from each client's losses against the other holders of the
task: hand cases on fake studies, then real runs with an injected issue (flagged) and clean data (quiet)."""

from __future__ import annotations

import pytest

from fedmtl.report.collect import collect_study
from fedmtl.report.data_checks import data_check_blocks
from fedmtl.report.label_checks import against_peers, final_losses, label_checks
from fedmtl.report.render import Table
from tests.study._study import write_jsonl, write_study


def loss_row(round_, split, client, task, loss):
    return {"round": round_, "split": split, "client": client, "task": task, "num_examples": 10, "loss": loss}


def test_final_losses_take_each_clients_last_round():
    rows = [loss_row(1, "train", 0, "a", 5.0), loss_row(3, "train", 0, "a", 1.0), loss_row(2, "train", 0, "a", 9.0)]
    rows += [loss_row(3, "eval", 0, "a", 7.0), loss_row(2, "train", 1, "a", 2.0)]
    assert final_losses(rows, "train") == {"a": {0: 1.0, 1: 2.0}}
    assert final_losses(rows, "eval") == {"a": {0: 7.0}}


def test_each_client_is_compared_with_the_others_median():
    # two affected clients among four: each is compared with {the other affected, two clean} -> clean median
    found = against_peers({0: 4.0, 1: 5.0, 2: 1.0, 3: 1.2})
    assert found == {0: (4.0, 1.2), 1: (5.0, 1.2), 2: (1.0, 4.0), 3: (1.2, 4.0)}
    assert against_peers({0: 1.0, 1: 9.0}) == {}  # one peer is no reference


def fake_study(tmp_path, train_loss, eval_loss, seeds=(0, 1, 2)):
    """Four clients hold task cls; ``*_loss(seed, client)`` gives their final losses."""
    root = write_study(tmp_path / "study", arms=("fed_mtl", "local_stl"), seeds=seeds)
    for arm in ("fed_mtl", "local_stl"):
        for seed in seeds:
            rows = []
            for client in range(4):
                rows.append(loss_row(1, "train", client, "cls", 99.0))  # an earlier round is never read
                rows.append(loss_row(2, "train", client, "cls", train_loss(seed, client)))
                rows.append(loss_row(2, "eval", client, "cls", eval_loss(seed, client)))
            write_jsonl(root / "arms" / arm / f"seed-{seed}" / "metrics.jsonl", rows)
    return collect_study(root)


def test_a_noisy_client_is_flagged_on_half_the_seeds_and_named(tmp_path):
    # client 1's training loss is 3x its peers' on seeds 0 and 1, 1.4x on seed 2: flagged on 2 of 3
    def train(seed, client):
        return (3.0 if seed < 2 else 1.4) if client == 1 else 1.0

    checks = label_checks(fake_study(tmp_path, train, lambda s, c: 1.0))
    noisy = [c for c in checks if c.name == "noisy labels" and c.arm == "fed_mtl" and c.client == 1]
    assert len(noisy) == 1 and noisy[0].flagged_seeds == 2 and noisy[0].seeds == 3 and noisy[0].flagged
    assert noisy[0].value == pytest.approx(7.4 / 3) and noisy[0].peers == pytest.approx(1.0)
    assert [c for c in checks if c.flagged] == [c for c in checks if c.flagged and c.client == 1 and c.task == "cls"]
    assert not any(c.flagged for c in checks if c.name == "disagreeing labels")


def test_disagreeing_labels_show_in_held_out_losses_and_the_report_names_them(tmp_path):
    data = fake_study(tmp_path, lambda s, c: 1.0, lambda s, c: 2.5 if c == 3 else 1.0)
    blocks = data_check_blocks(data)
    [table] = [b for b in blocks if isinstance(b, Table) and "check" in b.header]
    assert [row[:4] for row in table.rows] == [
        ["disagreeing labels", "fed_mtl", "cls", "3"],
        ["disagreeing labels", "local_stl", "cls", "3"],
    ]
    assert table.rows[0][6] == "2.50" and table.rows[0][7] == "3 / 3"
    assert "cls on client 3" in blocks[1].text


def test_clean_clients_flag_nothing(tmp_path):
    data = fake_study(tmp_path, lambda s, c: 1.0 + 0.3 * c, lambda s, c: 1.2 + 0.2 * ((s + c) % 3))
    assert not any(c.flagged for c in label_checks(data))
    [table] = [b for b in data_check_blocks(data) if isinstance(b, Table) and "check" in b.header]
    assert len(table.rows) == 2  # nothing flagged: the largest ratio of each check


def test_a_client_whose_held_out_loss_turns_up_is_flagged_as_drifting(tmp_path):
    root = write_study(tmp_path / "study", arms=("fed_mtl", "local_stl"), seeds=(0, 1))
    curve = {0: 2.0, 5: 0.8, 10: 0.7, 15: 0.6}  # round -> held-out loss of a steady client
    drifting = {0: 2.0, 5: 0.8, 10: 1.2, 15: 1.6}  # best 0.8 at round 5, then worse: 1.6 / 0.8 = 2
    for arm in ("fed_mtl", "local_stl"):
        for seed in (0, 1):
            rows = [loss_row(r, "eval", c, "cls", (drifting if c == 2 else curve)[r]) for r in curve for c in range(4)]
            write_jsonl(root / "arms" / arm / f"seed-{seed}" / "metrics.jsonl", rows)
    checks = [c for c in label_checks(collect_study(root)) if c.name == "drifting labels" and c.arm == "fed_mtl"]
    by_client = {c.client: c for c in checks}
    assert by_client[2].value == pytest.approx(2.0) and by_client[2].peers == pytest.approx(0.6 / 0.7)
    assert [c.client for c in checks if c.flagged] == [2]
    # round 0 is never the best: a loss that only fell since round 0 is not a drift
    assert by_client[0].value == pytest.approx(0.6 / 0.7)
