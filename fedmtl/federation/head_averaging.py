"""FedAvg of task heads among the clients that hold each task: the naive "federate everything"
design (the study's ``fed_full`` arm), against which keeping heads private is measured.

Each head parameter is the mean of the copies received this round, weighted by the sending
client's training examples of that task (McMahan et al., AISTATS 2017, applied per task);
a head nobody sent keeps its value. Pure tensor code: the strategy only routes arrays here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedmtl.model.networks import HEADS_PREFIX


def is_head(key: str) -> bool:
    return key.startswith(HEADS_PREFIX)


def task_of(key: str) -> str:
    """``heads.<task>.…`` -> task."""
    return key.split(".")[1]


def split_heads(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(everything else, the head parameters)."""
    return {k: v for k, v in state.items() if not is_head(k)}, {k: v for k, v in state.items() if is_head(k)}


class HeadAverager:
    def __init__(self, initial_heads: Mapping[str, torch.Tensor]) -> None:
        self.heads = {k: v.detach().clone().float() for k, v in initial_heads.items()}

    @property
    def expected_shapes(self) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in self.heads.items()}

    def step(
        self, client_heads: Sequence[Mapping[str, torch.Tensor]], task_examples: Sequence[Mapping[str, float]]
    ) -> None:
        """``client_heads[i]``: the heads client i sent; ``task_examples[i][task]``: its training examples of ``task``."""
        for key in self.heads:
            senders = [
                (heads[key], examples.get(task_of(key), 0.0))
                for heads, examples in zip(client_heads, task_examples, strict=True)
                if key in heads
            ]
            total = sum(weight for _, weight in senders)
            if total > 0:
                start = torch.zeros_like(self.heads[key])
                self.heads[key] = sum((weight * tensor.float() for tensor, weight in senders), start) / total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.heads.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.heads = {k: v.clone() for k, v in state.items()}
