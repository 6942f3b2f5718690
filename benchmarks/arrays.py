"""Tensors to and from Flower's ArrayRecord: Flower's own conversion against ``clients/arrays.py``.

Every simulated message converts arrays four times (the encoder into the message and out of it on the
client, the private heads out of and into the node's context) and the reply twice more. For the default
model's encoder and heads and the CNN workload's encoder, times both directions, Flower's
(``ArrayRecord(state)``, ``record.to_torch_state_dict()``) and fedmtl's (``to_record``, ``to_state``),
alternating, and prints the median of ``--repeats`` calls of each with their ratio:

    python benchmarks/arrays.py [--repeats 300] [--no-write]

Writes BENCHMARKS.md's ``arrays`` section. Nothing here is asserted in tests (``tests/test_arrays.py``
checks that the bytes are Flower's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import alternating_times, machine_info, write_section  # noqa: E402
from clients.arrays import to_record, to_state  # noqa: E402
from fedmtl.config.loading import load_config  # noqa: E402
from fedmtl.model.networks import initial_encoder_state, initial_head_state  # noqa: E402
from fedmtl.runtime.offline import set_offline_env  # noqa: E402

set_offline_env()

from flwr.app import ArrayRecord  # noqa: E402

CNN = ["data.name=digits", "model.encoder=cnn", "model.conv_channels=[192,512]", "model.representation_dim=64"]


def states() -> dict[str, dict]:
    default = load_config(None, [])
    dim = default.data.feature_dim()
    cnn = load_config(None, CNN)
    return {
        "default encoder": initial_encoder_state(default.model, dim, default.seed),
        "default heads (all tasks)": initial_head_state(
            default.model, dim, default.data.task_specs(), default.seed, None
        ),
        "cnn encoder": initial_encoder_state(cnn.model, cnn.data.feature_dim(), cnn.seed, cnn.data.image_shape()),
    }


def median_us(calls: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median microseconds of each call, the calls alternating so that the machine's noise hits all alike."""
    times = alternating_times({str(i): call for i, call in enumerate(calls)}, repeats, warm_up=False)
    return [statistics.median(t) * 1e6 for t in times.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    lines = [
        "| state | arrays | parameters | Flower: to record (us) | fedmtl (us) | ratio | Flower: to tensors (us) | fedmtl (us) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, state in states().items():
        record = ArrayRecord(state)
        flower_out, ours_out, flower_in, ours_in = median_us(
            [
                partial(ArrayRecord, state),
                partial(to_record, state),
                record.to_torch_state_dict,
                partial(to_state, record),
            ],
            args.repeats,
        )
        params = sum(t.numel() for t in state.values())
        lines.append(
            f"| {name} | {len(state)} | {params:,} | {flower_out:.0f} | {ours_out:.0f} | {flower_out / ours_out:.1f}x | "
            f"{flower_in:.0f} | {ours_in:.0f} | {flower_in / ours_in:.1f}x |"
        )
    text = "\n".join(
        [
            "## Arrays to and from Flower's records (`benchmarks/arrays.py`)",
            "",
            f"Command: `python benchmarks/arrays.py --repeats {args.repeats}`. Machine: {machine_info()}. Median "
            "microseconds per call, Flower's conversion and fedmtl's (`clients/arrays.py`: the same bytes, the "
            "`.npy` header made once per dtype, shape and order instead of `np.save`/`np.load` per array) "
            "alternating; ratio = Flower / fedmtl.",
            "",
            *lines,
        ]
    )
    print(text)
    if not args.no_write:
        write_section("arrays", text)


if __name__ == "__main__":
    main()
