"""Ray clusters: a study's runs several at a time (``study.max_concurrent_runs``, ``server/study_pool.py``)
give the results of runs one after another, each recorded once with where and when it ran. On a two-node
Ray cluster on loopback (a head and a worker, one CPU each): one federation's clients run on both nodes
(the direct engine's workers), a study's runs go to both nodes and overlap in time, and a worker node
lost in the middle of a study has its run retried: every run present exactly once."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fedmtl.config.loading import load_config
from fedmtl.core.files import read_rows
from fedmtl.experiments import runner
from fedmtl.runtime.offline import OFFLINE_ENV
from server.study_pool import concurrent_slots, study_pool
from tests.helpers import federate_in_process, tiny_overrides

STUDY = (
    *tiny_overrides(2),
    "rounds=2",
    "study.arms=[local_stl, fed_mtl, {name: transfer, base: fed_stl, pretrain: {tasks: [aligned], rounds: 1}}]",
    "study.seeds=[0, 1]",
)
ON_A_CLUSTER = (*STUDY, "study.arms=[local_stl, fed_mtl]")  # four runs: two per node


def runs_of(study_dir: Path) -> dict[tuple[str, int], dict]:
    return {(e["arm"], e["seed"]): e for e in json.loads((study_dir / "study.json").read_text())["runs"]}


def metrics_of(study_dir: Path) -> dict[tuple[str, int], list[dict]]:
    return {key: read_rows(study_dir / e["dir"] / "metrics.jsonl") for key, e in runs_of(study_dir).items()}


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory) -> Path:
    study_dir = tmp_path_factory.mktemp("one-by-one")
    runner.run_study(load_config(None, list(STUDY)), study_dir, federate_in_process, echo=lambda line: None)
    return study_dir


def test_without_a_cluster_a_study_runs_one_after_another_unless_told():
    assert concurrent_slots(load_config(None, list(STUDY))) == 1
    assert concurrent_slots(load_config(None, [*STUDY, "study.max_concurrent_runs=3"])) == 3
    assert concurrent_slots(load_config(None, [*STUDY, "resources.ray_address=127.0.0.1:1"])) == 0  # the cluster's


@pytest.mark.slow
def test_concurrent_runs_give_the_results_of_runs_one_after_another(tmp_path, one_by_one):
    cfg = load_config(None, [*STUDY, "study.max_concurrent_runs=2", "resources.num_cpus=2"])
    with study_pool(cfg) as pool:
        assert pool.slots == 2
        runner.run_study(cfg, tmp_path, federate_in_process, echo=lambda line: None, pool=pool)
    assert metrics_of(tmp_path) == metrics_of(one_by_one)  # pretraining phases included
    for entry in runs_of(tmp_path).values():
        assert entry["status"] == "done" and entry["started_at"] < entry["finished_at"] and entry["node"]
        assert entry["attempts"] == 1


@pytest.fixture
def cluster():
    """A Ray head and a worker node on 127.0.0.1, one CPU each."""
    from ray.cluster_utils import Cluster

    os.environ.update(OFFLINE_ENV)
    # the head notices a lost node within about a second (health checks every 200 ms, 5 missed), not 30 s
    checks = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200, "health_check_failure_threshold": 5}
    head = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "_system_config": checks}
    made = Cluster(initialize_head=True, head_node_args=head)
    worker = made.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    made.wait_for_nodes()
    assert made.address.startswith("127.0.0.1:")  # loopback only
    try:
        yield made, worker
    finally:
        made.shutdown()


def same_runs(reference: dict, study_dir: Path) -> dict:
    """The reference's runs of the (arm, seed)s the study at ``study_dir`` has."""
    return {key: reference[key] for key in runs_of(study_dir)}


@pytest.mark.slow
def test_one_federation_over_a_two_node_cluster_runs_its_clients_on_both_nodes(tmp_path, cluster):
    import ray

    from fedmtl.runfiles.rundir import RunDirectory
    from server.engines import workers
    from server.simulation import engine_session, federate

    made, worker = cluster
    overrides = [*tiny_overrides(4), "rounds=2", f"resources.ray_address={made.address}", f"output.run_dir={tmp_path}"]
    cfg = load_config(None, overrides)
    with engine_session(cfg) as resources:  # the direct engine's workers, kept to be asked where they ran
        federate(replace(cfg, resources=resources), RunDirectory.create(cfg), echo=lambda line: None)
        pool = workers.warm_pool()
        assert pool is not None
        placements = ray.get([actor.placement.remote() for actor in pool.actors])
    used = {node for node, handled in placements if handled > 0}
    assert used == {made.head_node.node_id, worker.node_id}, placements
    assert len(read_rows(tmp_path / "server.jsonl")) == 2


def overlapping(entries: list[dict]) -> bool:
    return any(
        a is not b and a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
        for a in entries
        for b in entries
    )


@pytest.mark.slow
def test_a_study_over_a_two_node_cluster_uses_both_nodes_at_once(tmp_path, cluster, one_by_one):
    made, _ = cluster
    cfg = load_config(None, [*ON_A_CLUSTER, f"resources.ray_address={made.address}"])
    with study_pool(cfg) as pool:
        assert pool.slots == 2  # the cluster's CPUs: one run per CPU
        runner.run_study(cfg, tmp_path, federate_in_process, echo=lambda line: None, pool=pool)
    entries = list(runs_of(tmp_path).values())
    assert len({e["node"] for e in entries}) == 2 and overlapping(entries)
    assert metrics_of(tmp_path) == same_runs(metrics_of(one_by_one), tmp_path)


@pytest.mark.slow
def test_a_worker_node_lost_mid_study_has_its_run_retried_and_every_run_once(tmp_path, cluster, one_by_one):
    made, worker = cluster
    # every training call waits 0.5 s first, so that a run is still going when its node is lost (the
    # delay changes no result)
    cfg = load_config(None, [*ON_A_CLUSTER, f"resources.ray_address={made.address}", "faults.client_delay_s=0.5"])
    started = tmp_path / "arms"

    def two_in_flight() -> bool:  # each node has a run: both have started writing their run directories
        return len(list(started.glob("*/seed-*/config.yaml"))) >= 2

    import threading

    lost = threading.Event()

    def lose_the_worker() -> None:
        deadline = time.monotonic() + 120
        while not two_in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        made.remove_node(worker)  # its raylet and the run on it die
        lost.set()

    threading.Thread(target=lose_the_worker, daemon=True).start()
    with study_pool(cfg) as pool:
        runner.run_study(cfg, tmp_path, federate_in_process, echo=lambda line: None, pool=pool)
    assert lost.is_set()
    entries = runs_of(tmp_path)
    assert len(entries) == 4 and all(e["status"] == "done" for e in entries.values())
    retried = [e for e in entries.values() if e["attempts"] > 1]
    assert retried and all(e["node"] != worker.node_id for e in retried), entries  # run again on the head
    assert not list(tmp_path.glob("arms/*/.*.attempts"))
    assert metrics_of(tmp_path) == same_runs(metrics_of(one_by_one), tmp_path)  # every run whole, none twice
