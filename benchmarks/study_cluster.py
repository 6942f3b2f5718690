"""A study's wall time over a Ray cluster: one run at a time against as many as the cluster has CPUs for.

A two-node Ray cluster on 127.0.0.1 (a head and a worker node, one CPU each: ``ray.cluster_utils``), the
same study three ways, alternating, ``--repeats`` times:

* ``one by one``: ``study.max_concurrent_runs: 1`` through the pool: the runs are Ray tasks on the cluster,
  one at a time;
* ``concurrent``: ``study.max_concurrent_runs: 0``: as many at once as the cluster has CPUs (two);
* ``local``: the same study without a cluster, as ``simulate.py`` runs it on this machine by default
  (one run after another on the in-process engine, in this process).

    python benchmarks/study_cluster.py [--repeats 2] [--no-write]

The study: a small model, 4 clients, 8 rounds of 20 local steps, arms local_stl, fed_stl and fed_mtl, seeds 0-3 (12 runs).
Prints the medians and the ratio concurrent / one by one measured in the same run, and writes them to
BENCHMARKS.md. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.runtime.offline import set_offline_env  # noqa: E402

set_offline_env()

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.config.loading import load_config  # noqa: E402
from fedmtl.experiments import runner  # noqa: E402
from server.simulation import federate_in_process  # noqa: E402
from server.study_pool import study_pool  # noqa: E402

STUDY = (
    "clients.count=4",
    "clients.samples_per_task=128",
    "clients.eval_samples_per_task=64",
    "client.local_steps=20",
    "client.batch_size=16",
    "model.encoder_hidden=[16]",
    "model.representation_dim=8",
    "model.head_hidden=[]",
    "rounds=8",
    "study.arms=[local_stl, fed_stl, fed_mtl]",
    "study.seeds=[0, 1, 2, 3]",
)


def timed_study(overrides: list[str], pooled: bool) -> float:
    cfg = load_config(None, [*STUDY, *overrides])
    study_dir = Path(tempfile.mkdtemp(prefix="fedmtl-study-"))
    try:
        started = time.perf_counter()
        if pooled:
            with study_pool(cfg) as pool:
                runner.run_study(cfg, study_dir, federate_in_process, echo=lambda line: None, pool=pool)
        else:
            runner.run_study(cfg, study_dir, federate_in_process, echo=lambda line: None)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(study_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    address = f"resources.ray_address={cluster.address}"
    ways = {
        "one by one (cluster, 1 at a time)": ([address, "study.max_concurrent_runs=1"], True),
        "concurrent (cluster, 2 at a time)": ([address, "study.max_concurrent_runs=0"], True),
        "local (no cluster, one after another)": ([], False),
    }
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    try:
        for repeat in range(args.repeats):
            for way, (overrides, pooled) in ways.items():
                seconds[way].append(timed_study(overrides, pooled))
                print(f"repeat {repeat + 1}: {way}: {seconds[way][-1]:.1f} s", flush=True)
    finally:
        cluster.shutdown()
    medians = {way: statistics.median(values) for way, values in seconds.items()}
    one, both = medians["one by one (cluster, 1 at a time)"], medians["concurrent (cluster, 2 at a time)"]
    rows = [f"| {way} | {m:.1f} s | {', '.join(f'{v:.1f}' for v in seconds[way])} |" for way, m in medians.items()]
    text = (
        f"Machine: {machine_info()}. Ray 2.55, a head and a worker node on 127.0.0.1 (one CPU each) started by "
        f"`ray.cluster_utils.Cluster`; the study: 12 runs (3 arms x 4 seeds) of a small model, 4 clients, 8 rounds of 20 local steps; "
        f"each run a Ray task with its clients on the in-process engine. Median of {args.repeats} studies per way, "
        "the ways alternating.\n\n"
        "| way | study wall time (median) | each |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Concurrent / one by one: **{both / one:.2f}x** (measured in the same run). Both nodes share this "
        "machine's two cores, so two runs at once can at best halve the time; each task also starts a worker "
        "process that imports torch, which one run at a time pays too."
    )
    print(text)
    if not args.no_write:
        write_section("study_cluster", "## A study over a Ray cluster (`benchmarks/study_cluster.py`)\n\n" + text)


if __name__ == "__main__":
    main()
