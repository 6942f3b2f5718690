"""The wire format between server and clients, defined once.

Record keys, metric names, and the privacy rule: a message carries *only* shared
(encoder) parameters. :func:`outgoing_shared` is the single exit for client arrays and
refuses anything else; :func:`check_update` is the server's gate before aggregation.
Pure Python/torch: the Flower adapters wrap these dicts in ``ArrayRecord``/``MetricRecord``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

ARRAYS = "arrays"  # RecordDict key of the shared encoder (both directions)
CONFIG = "config"  # RecordDict key of the server's per-round settings
METRICS = "metrics"  # RecordDict key of a reply's metrics
PRIVATE_STATE = "fedmtl.private"  # context.state key of the client's private parameters (never sent)

SERVER_ROUND = "server-round"
STATE_DIR = "state-dir"  # where a client persists its private state (simulation: inside the run directory)
RUN_KEY = "run-key"  # which run a client's saved private state belongs to (the run directory's name)
DURABLE_ROUND = "durable-round"  # the server's last checkpoint round (older client states can be pruned)
ATTEMPT = "attempt"  # 0 for the first start, +1 for every automatic restart
CLIENTS_COUNT = "clients-count"  # the run's clients.count, for clients whose run config leaves it to the federation
NUM_EXAMPLES = "num-examples"
CLIENT_ID = "client-id"  # the client a report speaks for (-1: a pooled participant's training)
PARTICIPANT = "participant"  # the participant (node partition) that sent a reply
TRAIN_LOSS = "train-loss"  # mean of the client's task losses (FedFV orders clients by it)
ATTACKED = "attacked"  # 1.0 in a training reply whose encoder update an injected attack forged (faults.attack)
ON_GPU = "on-gpu"  # 1.0 when the client trained on a CUDA device
SAMPLE_EPSILON = "sample-epsilon"  # privacy.sample_level: the epsilon this client's DP-SGD has spent so far
ASSIGNED_GPU = "assigned-gpu"  # first id in CUDA_VISIBLE_DEVICES as Ray set it, -1 when none

TRAIN, EVAL, PERSONAL = "train", "eval", "personal"  # splits; PERSONAL = a client's personalised copy
ROLLBACK = "rollback"  # client.rollback: per task, the choice and each option's validation and evaluation loss
TASK_COSINE = "task-cosine"  # pairwise cosine of task gradients on the encoder, mean over a round
TASK_ANGLE_MIN = "task-angle-min"  # smallest principal angle (degrees) between task-gradient subspaces
TASK_ANGLE_MEAN = "task-angle-mean"  # mean principal angle (degrees)
GATE = "gate"  # model.sharing mmoe: per task, the gate's expert usage and entropy on the training data
TASK_AFFINITY = "task-affinity"  # lookahead affinity Z(i -> j) on the encoder, mean over a round (TAG)
# server.client_affinity_every: Z(i -> j) of client i's last round update on client j's loss, reported by j
CLIENT_AFFINITY = "client-affinity"
# server.client_affinity_every: arrays of a training message that are probes, not the encoder to train:
# ``probe/base/<key>`` the encoder the cohort was sent last round, ``probe/<client id>/<key>`` what each
# of its clients trained from it. Never trained on, never sent back.
PROBE_PREFIX = "probe/"
PROBE_BASE = "base"
# privacy.secure_aggregation: the keys and shapes of the arrays in the order of the SecAgg+ parameter list (JSON),
# the weight bound the round quantizes against (1: every client weighs 1), the clipping range, and in the
# reply the number of update values cut to the clipping range
SECURE_KEYS = "secure-keys"
SECURE_MAX_WEIGHT = "secure-max-weight"
SECURE_CLIPPING_RANGE = "secure-clipping-range"
SECURE_CLIPPED = "secure-clipped"
# federated heads under secure aggregation: the largest example count (heads are weighted by each task's
# examples over it), and the prefix of the per-head weight that travels beside each head's update
SECURE_HEAD_SCALE = "secure-head-scale"
SECURE_WEIGHT_PREFIX = "secure-weight/"


class PrivacyViolation(RuntimeError):
    """A client tried to send a parameter that is not shared."""


def outgoing_shared(state: Mapping[str, torch.Tensor], shared_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The arrays a client may send: exactly the shared keys, nothing private."""
    shared = list(shared_keys)
    leaked = sorted(set(state) - set(shared))
    if leaked:
        raise PrivacyViolation(f"refusing to send non-shared parameters: {', '.join(leaked[:5])}")
    missing = sorted(set(shared) - set(state))
    if missing:
        raise KeyError(f"shared parameters missing from the update: {', '.join(missing[:5])}")
    return {key: state[key].detach().cpu() for key in shared}


def check_update(
    update: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    optional: Mapping[str, torch.Size] | None = None,
) -> str | None:
    """Why the server must reject this update, or ``None`` if it is well-formed.

    Every ``expected`` key must be present; ``optional`` keys (federated heads: a client sends
    those of its own tasks) may be.
    """
    optional = optional or {}
    extra = sorted(set(update) - set(expected) - set(optional))
    if extra:
        return f"unexpected keys {extra[:3]}"
    missing = sorted(set(expected) - set(update))
    if missing:
        return f"missing keys {missing[:3]}"
    for key, shape in {**expected, **{k: s for k, s in optional.items() if k in update}}.items():
        tensor = update[key]
        if tuple(tensor.shape) != tuple(shape):
            return f"{key} has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
        if not torch.isfinite(tensor).all():
            return f"{key} has non-finite values"
    return None


def metric_key(split: str, task: str, metric: str) -> str:
    return f"{split}/{task}/{metric}"


def flatten_task_metrics(split: str, per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {
        metric_key(split, task, name): value for task, metrics in per_task.items() for name, value in metrics.items()
    }


def unflatten_task_metrics(flat: Mapping[str, object], split: str) -> dict[str, dict[str, float]]:
    """Inverse of :func:`flatten_task_metrics` for one split; other keys are ignored."""
    per_task: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == split:
            per_task.setdefault(parts[1], {})[parts[2]] = float(value)  # type: ignore[arg-type]
    return per_task


def probe_arrays(
    base: Mapping[str, torch.Tensor], trained: Mapping[int, Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The probe arrays of a training message (:data:`PROBE_PREFIX`)."""
    arrays = {f"{PROBE_PREFIX}{PROBE_BASE}/{k}": v for k, v in base.items()}
    for client, state in sorted(trained.items()):
        arrays.update({f"{PROBE_PREFIX}{client}/{k}": v for k, v in state.items()})
    return arrays


def split_probes(
    arrays: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """``(the arrays to train, the probes' base encoder, client id -> its trained encoder)``."""
    shared: dict[str, torch.Tensor] = {}
    base: dict[str, torch.Tensor] = {}
    trained: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        if not key.startswith(PROBE_PREFIX):
            shared[key] = value
            continue
        owner, name = key[len(PROBE_PREFIX) :].split("/", 1)
        if owner == PROBE_BASE:
            base[name] = value
        else:
            trained.setdefault(int(owner), {})[name] = value
    return shared, base, trained


def pair_metrics(kind: str, values: Mapping[tuple[str, str], float]) -> dict[str, float]:
    return {f"{kind}/{a}/{b}": float(v) for (a, b), v in values.items()}


def unflatten_pair_metrics(flat: Mapping[str, object], kind: str) -> dict[tuple[str, str], float]:
    pairs = {}
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == kind:
            pairs[(parts[1], parts[2])] = float(value)  # type: ignore[arg-type]
    return pairs


def as_number(value: object) -> float:
    """A scalar metric or config value as a float (records type their values as unions with lists)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def encode_reports(reports: Iterable[Mapping[str, object]]) -> dict[str, object]:
    """Reports as one flat mapping (report ``i``'s ``key`` as ``i/key``): what a legacy Flower reply
    (SecAgg+'s) can carry in place of one metrics record per report."""
    return {f"{i}/{key}": value for i, report in enumerate(reports) for key, value in report.items()}


def decode_reports(flat: Mapping[str, object]) -> list[dict[str, object]]:
    """The inverse of :func:`encode_reports`."""
    reports: dict[int, dict[str, object]] = {}
    for name, value in flat.items():
        index, _, key = name.partition("/")
        reports.setdefault(int(index), {})[key] = value
    return [reports[i] for i in sorted(reports)]
