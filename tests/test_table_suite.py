"""The table suite: a user's CSV/Parquet file as tasks, partitions, standardisation and errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.data.partition import client_plan
from fedmtl.data.suites import TableSuite, TargetColumn
from fedmtl.local.client import LocalClient
from fedmtl.model.networks import initial_shared_state

NUM_ROWS = 48
LABELS = ("eel", "cat", "dog")  # codes follow sorted order: cat 0, dog 1, eel 2
TARGETS = "[{column: y1, kind: regression}, {column: y2, kind: regression}, {column: label, kind: classification}]"


def table_rows(seed: int = 0) -> dict[str, list]:
    """Row id, two features, a site (4 natural clients), two regression targets (y2 missing in
    every third row) and a string class target (missing in row 5)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=NUM_ROWS), rng.normal(10.0, 5.0, size=NUM_ROWS)
    return {
        "rid": list(range(NUM_ROWS)),
        "a": [round(float(v), 4) for v in a],
        "b": [round(float(v), 4) for v in b],
        "site": [f"s{i % 4}" for i in range(NUM_ROWS)],
        "y1": [round(float(v), 4) for v in a + 0.1 * b],
        "y2": [None if i % 3 == 0 else round(float(v), 4) for i, v in enumerate(a - b)],
        "label": [None if i == 5 else LABELS[i % 3] for i in range(NUM_ROWS)],
    }


def write_csv(path: Path, columns: dict[str, list]) -> Path:
    names = list(columns)
    lines = [",".join(names)]
    for i in range(len(columns[names[0]])):
        lines.append(",".join("" if columns[n][i] is None else str(columns[n][i]) for n in names))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "table.csv", table_rows())


def table_config(path: Path, *overrides: str):
    return load_config(
        None,
        [
            "data.name=table",
            f"data.path={path}",
            f"data.targets={TARGETS}",
            "clients.count=4",
            "clients.tasks_per_client=3",
            *overrides,
        ],
    )


def all_client_data(cfg):
    return [
        cfg.data.client_data(cfg.seed, client_plan(cfg.clients, cfg.data, cfg.seed, c))
        for c in range(cfg.clients.count)
    ]


def raw_ids(data) -> list[int]:
    """Row ids of a split (standardize: none keeps the rid feature as written)."""
    return sorted(int(v) for v in data.x[:, 0].tolist())


def test_tasks_shapes_and_label_mapping(csv_file):
    cfg = table_config(csv_file, "data.features=[rid, a, b]", "data.standardize=none")
    assert [(s.name, s.kind, s.num_classes) for s in cfg.data.task_specs()] == [
        ("y1", "regression", 1), ("y2", "regression", 1), ("label", "classification", 3)
    ]  # fmt: skip
    assert cfg.data.feature_dim() == 3 and cfg.data.image_shape() is None
    assert cfg.data.class_names("label") == ("cat", "dog", "eel")
    columns = table_rows()
    for data in all_client_data(cfg):
        labelled = data.train["label"]
        assert labelled.x.dtype == torch.float32 and labelled.y.dtype == torch.int64 and labelled.x.shape[1] == 3
        assert data.train["y1"].y.dtype == torch.float32
        for row, code in zip(labelled.x[:, 0].long().tolist(), labelled.y.tolist()):
            assert cfg.data.class_names("label")[code] == columns["label"][row]
        for row, value in zip(data.eval["y1"].x[:, 0].long().tolist(), data.eval["y1"].y.tolist()):
            assert value == pytest.approx(columns["y1"][row])


def test_missing_targets_drop_rows_for_that_task_only(csv_file):
    cfg = table_config(csv_file, "data.features=[rid, a, b]", "data.standardize=none")
    counts = {"y1": 0, "y2": 0, "label": 0}
    for data in all_client_data(cfg):
        for task in counts:
            counts[task] += len(data.train[task]) + len(data.eval[task])
        assert all(row % 3 for row in raw_ids(data.train["y2"]) + raw_ids(data.eval["y2"]))
    assert counts == {"y1": NUM_ROWS, "y2": NUM_ROWS - NUM_ROWS // 3, "label": NUM_ROWS - 1}


def test_natural_partitions_follow_the_client_column(csv_file):
    cfg = table_config(csv_file, "data.features=[rid, a, b]", "data.standardize=none", "data.client_column=site")
    assert cfg.data.feature_dim() == 3
    for client, data in enumerate(all_client_data(cfg)):
        rows = raw_ids(data.train["y1"]) + raw_ids(data.eval["y1"])
        assert sorted(rows) == [i for i in range(NUM_ROWS) if i % 4 == client]  # site s<client>
        assert not set(raw_ids(data.train["y1"])) & set(raw_ids(data.eval["y1"]))


def test_several_groups_per_client_and_too_few_groups(csv_file):
    two = table_config(
        csv_file, "data.features=[rid, a, b]", "data.standardize=none", "data.client_column=site", "clients.count=2"
    )
    assert two.data.check_clients(2) is None
    data = two.data.client_data(two.seed, client_plan(two.clients, two.data, two.seed, 0))
    assert {row % 4 for row in raw_ids(data.train["y1"]) + raw_ids(data.eval["y1"])} == {0, 2}  # sites s0 and s2
    with pytest.raises(ConfigError, match=r"4 distinct values but clients.count is 5") as caught:
        table_config(csv_file, "data.client_column=site", "clients.count=5")  # refused when the config is built
    assert caught.value.path == "clients.count"


@pytest.mark.parametrize("split", [[], ["data.dirichlet_alpha=0.3"]], ids=["iid", "dirichlet"])
def test_every_row_is_dealt_once_and_the_same_seed_gives_the_same_data(csv_file, split):
    cfg = table_config(csv_file, "data.features=[rid, a, b]", "data.standardize=none", *split)
    seen = [row for data in all_client_data(cfg) for row in raw_ids(data.train["y1"]) + raw_ids(data.eval["y1"])]
    assert sorted(seen) == list(range(NUM_ROWS))
    again = table_config(csv_file, "data.features=[rid, a, b]", "data.standardize=none", *split)
    for first, second in zip(all_client_data(cfg), all_client_data(again)):
        for task in first.train:
            assert torch.equal(first.train[task].x, second.train[task].x) and torch.equal(
                first.train[task].y, second.train[task].y
            )
    other = table_config(csv_file, "data.features=[rid, a, b]", "data.standardize=none", "seed=1", *split)
    assert [raw_ids(d.train["y1"]) for d in all_client_data(other)] != [
        raw_ids(d.train["y1"]) for d in all_client_data(cfg)
    ]


def test_standardisation_uses_training_rows_only(tmp_path, csv_file):
    cfg = table_config(csv_file, "data.features=[a, b]")
    clients = all_client_data(cfg)
    train_x = torch.cat([d.train["y1"].x for d in clients]).double()
    assert train_x.mean(0).abs().max() < 1e-5 and (train_x.std(0, unbiased=False) - 1).abs().max() < 1e-5
    # Changing eval rows' features leaves every training input unchanged: eval rows fit nothing.
    eval_rows = np.concatenate([ev for _, ev in cfg.data.rows().splits(4, cfg.seed, None, 0.3)])
    columns = table_rows()
    for row in eval_rows:
        columns["a"][row] *= 1000.0
    shifted = table_config(write_csv(tmp_path / "shifted.csv", columns), "data.features=[a, b]")
    for before, after in zip(clients, all_client_data(shifted)):
        assert torch.allclose(before.train["y1"].x, after.train["y1"].x)
        assert not torch.allclose(before.eval["y1"].x, after.eval["y1"].x)
    per_client = table_config(csv_file, "data.features=[a, b]", "data.standardize=client")
    for data in all_client_data(per_client):
        assert data.train["y1"].x.double().mean(0).abs().max() < 1e-5


def test_parquet_matches_csv(tmp_path, csv_file):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(table_rows()), tmp_path / "table.parquet")
    from_csv = all_client_data(table_config(csv_file, "data.client_column=site"))
    from_parquet = all_client_data(table_config(tmp_path / "table.parquet", "data.client_column=site"))
    for a, b in zip(from_csv, from_parquet):
        for task in a.train:
            assert torch.allclose(a.train[task].x, b.train[task].x) and torch.equal(a.train[task].y, b.train[task].y)


def test_python_construction_and_tsv(tmp_path):
    columns = table_rows()
    lines = ["\t".join(columns)] + [
        "\t".join("" if columns[n][i] is None else str(columns[n][i]) for n in columns) for i in range(NUM_ROWS)
    ]
    (tmp_path / "t.tsv").write_text("\n".join(lines))
    suite = TableSuite(
        path=str(tmp_path / "t.tsv"), targets=[TargetColumn("label", "classification")], features=["a", "b"]
    )
    assert suite.task_names() == ("label",) and suite.feature_dim() == 2


ERRORS = [
    (["data.path=missing.csv"], "data.path", "file not found: .*missing.csv"),
    (
        ["data.targets=[{column: y1, kind: regression}, {column: nope, kind: regression}]"],
        "data.targets[1].column",
        "unknown column 'nope'; columns: rid, a, b",
    ),
    (["data.features=[a, nope]"], "data.features[1]", "unknown column 'nope'"),
    (["data.features=[a, label]"], "data.features[1]", "column 'label' is the target of task 'label'"),
    (
        ["data.targets=[{column: label, kind: regression}]"],
        "data.targets[0]",
        "column 'label' is not numeric .* use kind: classification",
    ),
    (["data.client_column=nope"], "data.client_column", "unknown column 'nope'"),
    (["data.client_column=site", "data.dirichlet_alpha=0.5"], "data.dirichlet_alpha", "set one of the two"),
    (
        ["data.targets=[{column: y1, kind: regression}]", "data.dirichlet_alpha=0.5"],
        "data.dirichlet_column",
        "needs a column to skew by",
    ),
    (["data.eval_fraction=1.5"], "data.eval_fraction", r"must be in \(0, 1\)"),
    (["data.targets=[{column: y1, kind: ordinal}]"], "data.targets[0].kind", "must be one of"),
    (["data.targets=[]"], "data.targets", "at least one target"),
]


@pytest.mark.parametrize(("overrides", "key", "message"), ERRORS, ids=[e[1] + ":" + e[2][:20] for e in ERRORS])
def test_config_errors_name_the_key_and_the_problem(csv_file, monkeypatch, overrides, key, message):
    monkeypatch.chdir(csv_file.parent)
    with pytest.raises(ConfigError, match=message) as caught:
        table_config(csv_file, *overrides)
    assert caught.value.path == key


def test_file_content_errors(tmp_path):
    columns = table_rows()
    columns["notes"] = ["ok"] * NUM_ROWS
    with pytest.raises(
        ConfigError, match=r"feature column 'notes' is not numeric \('ok' in data row 1\).*list data.features"
    ) as caught:
        table_config(write_csv(tmp_path / "notes.csv", columns), "data.client_column=site")
    assert caught.value.path == "data.features"
    columns = table_rows()
    columns["a"][3] = None
    with pytest.raises(ConfigError, match=r"'a' has missing or infinite values \(first in data row 4\)"):
        table_config(write_csv(tmp_path / "gap.csv", columns), "data.client_column=site")
    (tmp_path / "ragged.csv").write_text("a,y1\n1,2\n3\n")
    with pytest.raises(ConfigError, match="line 3 has 1 fields, the header has 2"):
        load_config(
            None,
            [
                "data.name=table",
                f"data.path={tmp_path / 'ragged.csv'}",
                "data.targets=[{column: y1, kind: regression}]",
                "clients.tasks_per_client=1",
            ],
        )
    (tmp_path / "table.xlsx").write_text("")
    with pytest.raises(ConfigError, match="use a .csv, .tsv, .parquet or .pq file"):
        table_config(tmp_path / "table.xlsx")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match=r"needs pyarrow \(pip install pyarrow\)") as caught:
        table_config(tmp_path / "t.parquet")
    assert caught.value.path == "data.path"


def test_a_table_client_trains_and_evaluates(csv_file):
    cfg = table_config(
        csv_file,
        "data.client_column=site",
        "client.local_steps=3",
        "client.batch_size=4",
        "model.encoder_hidden=[8]",
        "model.representation_dim=4",
    )
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    client = LocalClient.for_client(cfg, 1)
    outcome = client.train(shared, None, 1)
    assert outcome.shared.keys() == shared.keys()
    assert all(np.isfinite(v) for v in outcome.metrics.values())
    metrics = protocol.unflatten_task_metrics(client.evaluate(outcome.shared, outcome.private)[0], protocol.EVAL)
    assert set(metrics) == set(client.participant.tasks) and all(
        np.isfinite(m["num_examples"]) for m in metrics.values()
    )
