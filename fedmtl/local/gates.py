"""What a mixture of experts' gates do on a client (``model.sharing: {name: mmoe}``): per task, the mean
weight its gate gives each expert on the client's training examples (the expert usage) and the mean
entropy of the gate's distribution per example (nats; ``log(experts)`` is the uniform mixture a gate
starts from, 0 one expert per example). Only these numbers leave the client; the gates stay private."""

from __future__ import annotations

import math

import torch

from fedmtl.data.suites import TaskData
from fedmtl.model.networks import MultiTaskModel

ENTROPY = "entropy"
CHUNK = 4096  # examples per forward pass of a gate


def usage_key(expert: int) -> str:
    return f"expert_{expert}"


def gate_diagnostics(model: MultiTaskModel, data: dict[str, TaskData]) -> dict[str, dict[str, float]]:
    """Task -> ``{entropy, expert_0, expert_1, ...}`` on ``data``; empty without gates."""
    out: dict[str, dict[str, float]] = {}
    device = next(model.parameters()).device
    with torch.no_grad():
        for task, task_data in data.items():
            if task not in model.gates or len(task_data) == 0:
                continue
            usage, entropy = None, 0.0
            for start in range(0, len(task_data), CHUNK):
                weights = model.gate_weights(task_data.x[start : start + CHUNK].to(device), task).double()
                total = weights.sum(dim=0)
                usage = total if usage is None else usage + total
                entropy += float(-(weights * weights.clamp_min(1e-300).log()).sum())
            assert usage is not None
            usage = usage / len(task_data)
            out[task] = {ENTROPY: entropy / len(task_data), **{usage_key(e): float(u) for e, u in enumerate(usage)}}
    return out


def unpack(metrics: dict[str, float]) -> dict[str, object]:
    """``{entropy, expert_0, ...}`` -> ``{usage: [...], entropy, uniform_entropy}`` for ``clients.jsonl``."""
    usage = [metrics[usage_key(e)] for e in range(len(metrics) - 1)]  # every key but the entropy
    return {"usage": usage, ENTROPY: metrics[ENTROPY], "uniform_entropy": math.log(len(usage)) if usage else None}
