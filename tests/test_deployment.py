"""The same ServerApp and ClientApp outside simulate.py: ``flwr run .`` on Flower's simulation
engine, and a real deployment on loopback (a SuperLink and SuperNodes as separate processes),
insecure and with TLS + SuperNode authentication. Fast tests cover how the apps read their run
config, what the FAB contains and ``deploy/make_certs.sh``.

The three runs are slow (a deployment round takes tens of seconds: SuperNodes poll every 3 s and
every message starts a fresh ClientApp process) but mostly idle, so one module fixture launches
them side by side and each test waits for its own.

Cleanup: every process a test starts carries ``FEDMTL_TEST_TAG=<id>`` in its environment, and so
does everything it spawns (SuperExec, ServerApp, ClientApp, Ray, the local SuperLink that
``flwr run`` leaves behind detached): Flower and Ray pass their environment on. At the end,
whatever carries the tag gets SIGTERM, and SIGKILL after a grace period, also when a test fails.
"""

from __future__ import annotations

import io
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from fedmtl.config.loading import load_config
from fedmtl.config.run_config import config_from_run_config, resolve_config_file
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.local.client import MODEL, LocalClient, strip_prefix
from fedmtl.local.state_store import ClientStateStore
from tests.deployment import (
    START_TIMEOUT_S,
    TINY_2,
    Federation,
    Launch,
    Processes,
    assert_complete_run,
    assert_stopped_cleanly,
    eval_losses,
    flwr_json,
    free_port,
    online_nodes,
    run_config_args,
    write_flower_config,
)
from tests.helpers import ROOT

MAKE_CERTS = ROOT / "deploy" / "make_certs.sh"
SECURE_AGGREGATION = (
    "privacy.secure_aggregation.enabled=true",
    "server.aggregator={name: fedavg, weighted: false}",
    "rounds=1",
    "eval_every=1",
)
# ----------------------------------------------------------------------------- fast tests


def test_relative_config_file_is_looked_up_in_the_app_first(tmp_path, monkeypatch):
    app = tmp_path / "app"
    (app / "configs").mkdir(parents=True)
    (app / "configs" / "exp.yaml").write_text("rounds: 3\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config_file("", app) is None
    assert resolve_config_file("configs/exp.yaml", app) == str(app / "configs" / "exp.yaml")
    assert resolve_config_file(str(tmp_path / "x.yaml"), app) == str(tmp_path / "x.yaml")
    assert resolve_config_file("elsewhere.yaml", app) == "elsewhere.yaml"  # cwd-relative fallback
    cfg = config_from_run_config({"config-file": "configs/exp.yaml", "config-overrides": " seed=4 ; name=x;"}, app)
    assert (cfg.rounds, cfg.seed, cfg.name) == (3, 4, "x")


def test_config_overrides_from_run_config_match_simulate_overrides():
    joined = ";".join(TINY_2)
    assert config_from_run_config({"config-file": "", "config-overrides": joined}) == load_config(None, list(TINY_2))
    assert config_from_run_config({}) == load_config(None, [])


def test_typed_run_config_keys_sit_between_the_config_file_and_the_overrides(tmp_path):
    app = tmp_path / "app"
    (app / "configs").mkdir(parents=True)
    (app / "configs" / "exp.yaml").write_text(
        "rounds: 3\nseed: 7\nclient: {lr: 0.2}\nserver: {aggregator: {name: cagrad, c: 0.4}}\n"
    )
    run_config = {
        "config-file": "configs/exp.yaml",
        "rounds": 5,
        "aggregator": "pcgrad",
        "output-dir": "/tmp/x y",
        "lr": 0.0,
    }
    cfg = config_from_run_config({**run_config, "config-overrides": "rounds=6"}, app)
    assert (cfg.rounds, cfg.seed, cfg.client.lr, cfg.output.dir) == (6, 7, 0.2, "/tmp/x y")  # lr 0.0 = not set here
    assert cfg.server.aggregator.name == "pcgrad"  # the whole component: cagrad's c does not leak into pcgrad
    assert config_from_run_config(run_config, app).rounds == 5
    assert config_from_run_config({"lr": 5e-5}).client.lr == 5e-5  # a float TOML writes with an exponent


def test_the_default_app_root_is_the_project_so_bundled_configs_are_found(tmp_path, monkeypatch):
    from fedmtl.config.run_config import APP_ROOT

    assert (APP_ROOT / "pyproject.toml").is_file()
    monkeypatch.chdir(tmp_path)  # a SuperNode's working directory is not the app
    cfg = config_from_run_config({"config-file": "configs/study_digits.yaml", "config-overrides": "study.arms=[]"})
    assert cfg.name == "study_digits"


def test_pyproject_declares_every_typed_run_config_key_unset():
    import tomllib

    from fedmtl.config.run_config import CONFIG_FILE_KEY, OVERRIDES_KEY, PULL_INTERVAL_KEY, RESUME_DIR_KEY, TYPED_KEYS

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == {CONFIG_FILE_KEY, OVERRIDES_KEY, RESUME_DIR_KEY, PULL_INTERVAL_KEY, *TYPED_KEYS}
    assert all(declared[key] == unset for key, (_, unset) in TYPED_KEYS.items())
    assert config_from_run_config(declared) == load_config(None, [])  # the declared defaults change nothing


@pytest.mark.parametrize(
    ("overrides", "section"),
    [
        ("study.arms=[fed_mtl, local_stl]", "study.arms"),
        ("study.arms=[fed_mtl, local_stl];sweep.grid={rounds: [1, 2]}", "sweep.grid"),
    ],
)
def test_a_study_or_sweep_under_flwr_run_is_refused_with_one_line(overrides, section):
    with pytest.raises(ConfigError) as caught:  # the default config, made a study or sweep by the run config alone
        config_from_run_config({"config-overrides": overrides})
    assert caught.value.path == section and "simulate.py" in str(caught.value) and "\n" not in str(caught.value)


def test_fab_contains_the_code_but_not_venv_runs_or_tests():
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(ROOT)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert len(fab) < 2_000_000, f"FAB is {len(fab)} bytes"
    assert {"pyproject.toml", "server/server_app.py", "clients/client_app.py", "fedmtl/config/run_config.py"} <= set(
        names
    )
    left_out = (".venv/", "runs/", ".git/", "tests/", "benchmarks/", "mutants/", ".import_linter_cache/")
    leaked = [n for n in names if n.startswith(left_out) or "/test_" in n or n.startswith("test_")]
    assert not leaked, leaked


def make_certs(directory: Path, *count: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(MAKE_CERTS), str(directory), *count], capture_output=True, text=True, timeout=60)


def test_make_certs_writes_a_ca_a_loopback_server_certificate_and_supernode_keys(tmp_path):
    made = make_certs(tmp_path / "c", "2")
    assert made.returncode == 0, made.stderr
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == [
        ".gitignore",
        "ca.crt",
        "ca.key",
        "server.key",
        "server.pem",
        "supernode-0",
        "supernode-0.pub",
        "supernode-1",
        "supernode-1.pub",
    ]
    assert (tmp_path / "c" / ".gitignore").read_text().strip() == "*"  # never committed, wherever it lands
    assert (tmp_path / "c" / "ca.key").stat().st_mode & 0o077 == 0 and (
        tmp_path / "c" / "supernode-0"
    ).stat().st_mode & 0o077 == 0
    cert = ["openssl", "x509", "-in", str(tmp_path / "c" / "server.pem"), "-noout", "-ext", "subjectAltName"]
    san = subprocess.run(cert, capture_output=True, text=True).stdout
    assert "DNS:localhost" in san and "IP Address:127.0.0.1" in san and "IP Address:0:0:0:0:0:0:0:1" in san
    assert (tmp_path / "c" / "supernode-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    again = make_certs(tmp_path / "c")
    assert again.returncode != 0 and "exists" in again.stderr  # never overwrites
    assert make_certs(tmp_path / "d", "two").returncode == 2


# ----------------------------------------------------------------------------- slow: the three runs


@dataclass
class Runs:
    simulation: Launch
    insecure: Federation
    insecure_run: Launch
    secure: Federation
    secure_run: Launch
    keys: list[Path]
    secure_nodes: list[str]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[Runs]:
    """The same 2-client, 2-round experiment three ways, launched side by side: ``flwr run`` on the
    simulation engine, an insecure deployment, and a TLS deployment with SuperNode authentication
    (3 key pairs, the first two registered)."""
    root = tmp_path_factory.mktemp("flower")
    sim_procs = Processes(root / "simulation" / "logs")
    insecure, secure = Federation(root / "insecure"), Federation(root / "secure", root / "secure" / "certs")
    try:
        # flwr run starts a local SuperLink (simulation mode), detached, and leaves it running; its
        # ports move off the defaults (39091/39093) so that one someone else left running is not used
        sim_home = root / "simulation" / "flwr-home"
        write_flower_config(sim_home, "local", {"address": ":local:"})
        sim_env = sim_procs.env(
            sim_home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(free_port())
        )
        sim_run_dir = root / "simulation" / "run"
        simulation = Launch(
            sim_procs,
            "local",
            sim_env,
            sim_run_dir,
            [*run_config_args(sim_run_dir), "--federation-config", "num-supernodes=2"],
        )

        made = make_certs(secure.certs, "3")
        assert made.returncode == 0, made.stderr
        keys = [secure.certs / f"supernode-{i}" for i in range(3)]
        insecure.start_superlink()
        secure.start_superlink()
        insecure.wait_superlink()
        insecure.start_supernodes(2, warm=False)  # Flower's process per message; the others run warm hosts
        secure.wait_superlink()
        for key in keys[:2]:
            secure.register(key.with_suffix(".pub"))
        secure.start_supernodes(2, keys[:2])
        insecure.wait_supernodes(2)
        insecure_run = insecure.launch(run_config_args(insecure.root / "run"))
        secure_nodes = secure.wait_supernodes(2)
        # the TLS run reads the experiment from a YAML file (absolute path), the run directory from an
        # override; it also aggregates with SecAgg+ (privacy.secure_aggregation): one round, a plain mean
        # (no example counts to ask for), since every SecAgg+ stage starts a ClientApp process per node
        config_file = secure.root / "tiny.yaml"
        secure_config = load_config(None, [*TINY_2, *SECURE_AGGREGATION])
        config_file.write_text(yaml.safe_dump(secure_config.to_dict(), sort_keys=False))
        secure_run = secure.launch(run_config_args(secure.root / "run", overrides=(), config_file=config_file))
        yield Runs(simulation, insecure, insecure_run, secure, secure_run, keys, secure_nodes)
    finally:
        survivors = []
        for procs in (sim_procs, insecure.procs, secure.procs):
            try:
                procs.stop()
            except AssertionError as err:  # stop the others all the same
                survivors.append(str(err))
        assert not survivors, survivors


@pytest.mark.slow
def test_flwr_run_on_the_simulation_engine(runs):
    outcome = runs.simulation.outcome()
    assert_stopped_cleanly(runs.simulation.procs)  # also the local SuperLink and Ray: frees the CPU for the others
    assert_complete_run(outcome, runs.simulation.run_dir)


@pytest.mark.slow
def test_insecure_deployment_on_loopback(runs):
    outcome = runs.insecure_run.outcome()
    assert_complete_run(outcome, runs.insecure_run.run_dir, reference=runs.simulation.run_dir)


@pytest.mark.slow
def test_supernode_private_heads_persist_across_rounds_and_never_leave(runs):
    """Each round is a fresh ClientApp process; the heads live in the SuperNode's context.state (and
    its state-dir). The final evaluation must have used the heads trained in round 2, which in turn
    differ from round 1's; the server never saw a head parameter."""
    fed, run_dir = runs.insecure, runs.insecure_run.run_dir
    assert_complete_run(runs.insecure_run.outcome(), run_dir)
    assert_stopped_cleanly(fed.procs)
    cfg = load_config(run_dir / "config.yaml")
    encoder = torch.load(run_dir / "encoder.pt", weights_only=True)
    final_eval = [
        row for row in read_rows(run_dir / "metrics.jsonl") if row["split"] == "eval" and row["round"] == cfg.rounds
    ]
    for client_id in range(cfg.clients.count):
        store = ClientStateStore(fed.state_dir, client_id)
        assert store.versions() == [1, 2], f"client {client_id}: state written after rounds {store.versions()}"
        first, last = store.load(1), store.load(2)
        heads = strip_prefix(MODEL, last)
        assert heads and first.keys() == last.keys()
        assert not set(heads) & set(encoder), "a private parameter reached the server"
        assert any(not torch.equal(first[k], last[k]) for k in first), "round 2 did not train the heads"
        client = LocalClient.for_client(cfg, client_id)
        recorded = {row["task"]: row["loss"] for row in final_eval if row["client"] == client_id}
        with_saved_heads, with_fresh_heads = (eval_losses(client, encoder, private) for private in (last, None))
        assert with_saved_heads == pytest.approx(recorded, rel=1e-5), (
            "final evaluation did not use the heads trained in round 2"
        )
        assert with_fresh_heads != pytest.approx(recorded, rel=1e-3), "freshly initialised heads give the same losses"


@pytest.mark.slow
def test_supernode_with_unregistered_key_is_refused(runs):
    fed = runs.secure
    fed.start_supernode("intruder", 0, 2, runs.keys[2])
    code = fed.procs.wait("intruder", START_TIMEOUT_S)
    log = fed.procs.log("intruder")
    assert code is not None, f"a SuperNode with an unregistered key kept running\n{log[-2000:]}"
    # Flower's exit code 305 (SUPERNODE_CONNECTION_ERROR) is logged; the process exits with status 1
    assert code == 1 and "Exit Code: 305" in log, f"exit status {code}\n{log[-2000:]}"
    assert online_nodes(fed.name, fed.env) == runs.secure_nodes


@pytest.mark.slow
def test_secure_deployment_with_tls_supernode_auth_and_secure_aggregation(runs, tmp_path):
    fed = runs.secure
    outcome = runs.secure_run.outcome()
    assert_complete_run(outcome, runs.secure_run.run_dir)  # the encoder's precision: test_secure_aggregation.py
    [row] = read_rows(runs.secure_run.run_dir / "server.jsonl")
    assert row["secure_aggregation"]["contributors"] == 2 and row["clients"] is None, row
    assert row["bytes_up"] > 0 and row["failures"] == 0
    # the SuperLink speaks TLS only: a client without TLS gets no answer
    write_flower_config(tmp_path / "plain-home", "plain", {"address": f"127.0.0.1:{fed.port}", "insecure": True})
    assert not flwr_json("ls", "plain", env=fed.procs.env(tmp_path / "plain-home"))
    assert flwr_json("ls", fed.name, env=fed.env), "the TLS connection itself does not answer"
    assert_stopped_cleanly(fed.procs)
