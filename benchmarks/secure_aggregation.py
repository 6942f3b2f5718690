"""What secure aggregation costs: a training round with SecAgg+ (``privacy.secure_aggregation``) against
the same round with plain FedAvg, in one run.

Both sides run the same config through ``simulate.run`` (training-only rounds: evaluation at the last
round only), alternating plain and secure for ``--repeats`` pairs, on an engine (``--engines``, default
``inprocess direct``): in-process isolates the protocol's own work (key agreement, secret sharing,
masking with a PRG over every parameter, unmasking) from Ray's messaging, the direct engine is what
``simulate.py`` runs by default. Workloads: the default config (a 2,640-parameter MLP encoder) and a
wide MLP encoder of about 3e5 parameters, with 8 and 16 clients.

    python benchmarks/secure_aggregation.py [--rounds 6] [--repeats 2] [--engines inprocess direct] [--no-write]

Reported: the median seconds of rounds 2.. (round 1 includes the one-off weight query and warm-up) for
each side, and secure / plain. Writes BENCHMARKS.md's ``secure-aggregation`` section. Nothing here is
asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmtl.runtime.offline import set_offline_env  # noqa: E402

set_offline_env()

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.config.experiment import ExperimentConfig  # noqa: E402
from fedmtl.config.loading import load_config  # noqa: E402
from fedmtl.core.files import read_rows  # noqa: E402
from fedmtl.core.layout import SERVER_FILE  # noqa: E402
from fedmtl.model.networks import initial_shared_state  # noqa: E402

WORKLOADS = {
    "default MLP": [],
    "wide MLP": ["model.encoder_hidden=[512,512]", "model.representation_dim=32"],
}
SECURE = "privacy.secure_aggregation.enabled=true"


def round_seconds(cfg: ExperimentConfig) -> list[float]:
    """Seconds of every round of one run (the server's own clock, ``server.jsonl``)."""
    import simulate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(cfg, output=replace(cfg.output, run_dir=f"{tmp}/run", progress=False))
        with contextlib.redirect_stdout(io.StringIO()):
            if simulate.run(cfg) != 0:
                raise SystemExit("simulation failed")
        return [row["seconds"] for row in read_rows(Path(tmp) / "run" / SERVER_FILE)]


def parameters(cfg: ExperimentConfig) -> int:
    state = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    return sum(v.numel() for v in state.values())


def measure(overrides: list[str], repeats: int) -> tuple[int, float, float]:
    """(encoder parameters, plain s/round, secure s/round): medians of rounds 2.. over the repeats."""
    plain_cfg, secure_cfg = load_config(None, overrides), load_config(None, [*overrides, SECURE])
    plain: list[float] = []
    secure: list[float] = []
    for _ in range(repeats):
        plain += round_seconds(plain_cfg)[1:]
        secure += round_seconds(secure_cfg)[1:]
    return parameters(plain_cfg), statistics.median(plain), statistics.median(secure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--engines", nargs="+", default=["inprocess", "direct"])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    lines = [
        "| engine | workload | encoder parameters | clients | plain FedAvg (s/round) | SecAgg+ FedAvg (s/round) | secure / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine in args.engines:
        for name, extra in WORKLOADS.items():
            for clients in args.clients:
                overrides = [
                    *extra,
                    "client.lr=0.02",  # at 0.05 one of 16 default clients diverges (NaN) by round 4 in both sides
                    f"clients.count={clients}",
                    f"rounds={args.rounds}",
                    f"eval_every={args.rounds}",
                    f"simulation.engine={engine}",
                    "checkpoint.every=0",
                ]
                size, plain, secure = measure(overrides, args.repeats)
                line = f"| `{engine}` | {name} | {size:,} | {clients} | {plain:.3f} | {secure:.3f} | {secure / plain:.2f}x |"
                print(line, flush=True)
                lines.append(line)
    body = (
        "## Secure aggregation: SecAgg+ FedAvg against plain FedAvg\n\n"
        f"Machine: {machine_info()}. Command: `python benchmarks/secure_aggregation.py --rounds {args.rounds} "
        f"--repeats {args.repeats}`. Median seconds of the training rounds 2..{args.rounds} (evaluation only at the "
        "last round), plain and secure runs alternating; SecAgg+ shares every client's secrets with all the clients "
        "sampled (num_shares 1.0), threshold half; client lr 0.02. SecAgg+ adds four message exchanges, key "
        "agreement and Shamir sharing between every pair of clients, and a pseudo-random mask per pair over every "
        "parameter: the added seconds grow with the square of the clients and with the parameters.\n\n"
        + "\n".join(lines)
    )
    if not args.no_write:
        write_section("secure-aggregation", body)


if __name__ == "__main__":
    main()
