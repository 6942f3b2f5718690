"""FedAvg of task heads among the clients that hold each task: the naive "federate everything"
design (the study's ``fed_full`` arm), against which keeping heads private is measured.

Each head parameter is the mean of the copies received this round, weighted by the sending
client's training examples of that task (McMahan et al., AISTATS 2017, applied per task);
a head nobody sent keeps its value. With ``across_tasks`` the copies of every task's head are
averaged together. Pure tensor code: the strategy only routes arrays here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedmtl.core.params import parameter_of, task_of


class HeadAverager:
    """``across_tasks``: every task's copy of a head parameter joins one average (whole-model FedAvg
    over clients that hold different tasks), and all tasks receive the result."""

    def __init__(self, initial_heads: Mapping[str, torch.Tensor], across_tasks: bool = False) -> None:
        self.heads = {k: v.detach().clone().float() for k, v in initial_heads.items()}
        self.groups: dict[str, list[str]] = {}
        for key in self.heads:
            self.groups.setdefault(parameter_of(key) if across_tasks else key, []).append(key)
        for keys in self.groups.values():
            if len({self.heads[k].shape for k in keys}) > 1:
                raise ValueError(f"heads averaged across tasks must have one shape: {keys}")
            for key in keys[1:]:  # one head from the start, as one model would have
                self.heads[key] = self.heads[keys[0]].clone()

    @property
    def expected_shapes(self) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in self.heads.items()}

    def step(
        self, client_heads: Sequence[Mapping[str, torch.Tensor]], task_examples: Sequence[Mapping[str, float]]
    ) -> None:
        """``client_heads[i]``: the heads client i sent; ``task_examples[i][task]``: its training examples of ``task``."""
        for keys in self.groups.values():
            senders = [
                (heads[key], examples.get(task_of(key), 0.0))
                for heads, examples in zip(client_heads, task_examples, strict=True)
                for key in keys
                if key in heads
            ]
            total = sum(weight for _, weight in senders)
            if total > 0:
                start = torch.zeros_like(self.heads[keys[0]])
                mean = sum((weight * tensor.float() for tensor, weight in senders), start) / total
                for key in keys:
                    self.heads[key] = mean.clone()

    def step_from_means(self, weighted_updates: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> None:
        """The same average from what secure aggregation gives: per head key, the mean over clients of
        ``w_ik * (sent head - trained head)`` and of ``w_ik`` (``w_ik``: client i's examples of the key's
        task, 0 when it does not hold it, all over one common scale). A group's average is the head sent
        minus their ratio; a head nobody held keeps its value."""
        for keys in self.groups.values():
            total = sum(weights.get(key, 0.0) for key in keys)
            if total > 0:
                start = torch.zeros_like(self.heads[keys[0]])
                moved = sum((weighted_updates[key].float() for key in keys), start) / total
                mean = self.heads[keys[0]] - moved
                for key in keys:
                    self.heads[key] = mean.clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.heads.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.heads = {k: v.clone() for k, v in state.items()}
