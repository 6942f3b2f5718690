"""Sample-level differential privacy inside a client (``privacy.sample_level``): DP-SGD (Abadi, Chu,
Goodfellow, McMahan, Mironov, Talwar & Zhang, "Deep Learning with Differential Privacy", CCS 2016).

Each local step draws a batch per task as :func:`fedmtl.local.training.train_local` does, computes every
example's gradient of its task's weighted loss over all trained parameters (encoder and heads; with
``torch.func``: ``vmap`` over ``grad`` of a functional call, the per-sample-gradient recipe of PyTorch
itself, instead of Opacus' module hooks), clips each to L2 norm ``C``, sums them over the step's tasks,
adds ``N(0, (sigma C)^2)`` per coordinate and divides by the batch size, which gives the gradient the
client's optimizer steps with. The unit of privacy is one (input, label) pair of one task: tasks that
label the same inputs (two labels of one image) protect the input to the composition over its tasks.

Each client accounts its own epsilon (:func:`fedmtl.methods.accounting.sample_epsilon`): the sampled
Gaussian mechanism at rate batch size / the smallest task's examples, composed once per local step it
has ever taken (counted in its private state), reported with its training metrics. Task weights must be
fixed (``client.balancing: static``); nothing else reads gradients here (no surgery, no task-gradient
diagnostics: their numbers would be another release).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedmtl.config.sections import ClientConfig, SampleLevelConfig
from fedmtl.core import protocol
from fedmtl.data.suites import TaskData
from fedmtl.data.task_kinds import TaskSpec
from fedmtl.local.training import TrainStats, make_optimizer, task_batches, trained_parameters
from fedmtl.methods.accounting import sample_epsilon
from fedmtl.methods.balancing import BalancerRound
from fedmtl.model.networks import MultiTaskModel

STEPS_KEY = "sample_dp.steps"  # private state: the local steps this client has taken under DP-SGD


def per_example_gradients(
    model: MultiTaskModel,
    params: Mapping[str, torch.Tensor],
    task: str,
    spec: TaskSpec,
    weight: float,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(``name -> [B, *shape]``: each example's gradient of ``weight * loss`` on ``task``, ``[B]``: each
    example's unweighted loss, from the same pass)."""
    buffers = dict(model.named_buffers())

    def loss_of_one(
        p: Mapping[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss = spec.kind_impl.loss(functional_call(model, (dict(p), buffers), (xi.unsqueeze(0), task)), yi.unsqueeze(0))
        return weight * loss, loss.detach()

    per_example = vmap(grad(loss_of_one, has_aux=True), in_dims=(None, 0, 0), randomness="different")
    gradients, losses = per_example(dict(params), x, y)
    return gradients, losses


def clip_and_sum(gradients: Mapping[str, torch.Tensor], clip_norm: float) -> dict[str, torch.Tensor]:
    """Each example's gradient (its norm over every parameter) scaled to at most ``clip_norm``, summed."""
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in gradients.values()]).sum(0).sqrt()  # [B]
    scale = (clip_norm / (norms + 1e-12)).clamp(max=1.0)
    return {name: torch.einsum("b,b...->...", scale, g) for name, g in gradients.items()}


def train_local_dp(
    model: MultiTaskModel,
    data: Mapping[str, TaskData],
    specs: Mapping[str, TaskSpec],
    cfg: ClientConfig,
    generator: torch.Generator,
    balancer: BalancerRound,
    settings: SampleLevelConfig,
) -> TrainStats:
    """``cfg.local_steps`` DP-SGD steps; the same batches, optimizer and statistics as ``train_local``."""
    assert settings.clip_norm is not None
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("privacy.sample_level: the model has batch-statistics normalisation, which mixes examples")
    data, batches, sizes = task_batches(data, cfg, generator)
    trained = trained_parameters(model, cfg)
    optimizer = make_optimizer(cfg, list(trained.values()))
    weights = balancer.weights()
    totals, counts = dict.fromkeys(data, 0.0), dict.fromkeys(data, 0)
    noise_std = settings.noise_multiplier * settings.clip_norm
    model.train()
    for _ in range(cfg.local_steps):
        tasks = cfg.task_sampling.choose(sizes, generator)
        params = {name: p.detach() for name, p in trained.items()}
        summed = {name: torch.zeros_like(p) for name, p in params.items()}
        for task in tasks:
            index = next(batches[task])
            x, y = data[task].x[index], data[task].y[index]
            gradients, losses = per_example_gradients(model, params, task, specs[task], weights.get(task, 1.0), x, y)
            for name, g in clip_and_sum(gradients, settings.clip_norm).items():
                summed[name] += g
            totals[task] += losses.mean().item()
            counts[task] += 1
        optimizer.zero_grad(set_to_none=True)
        for name, p in trained.items():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * noise_std
            p.grad = (summed[name] + noise) / cfg.batch_size
        optimizer.step()
    mean_losses = {t: totals[t] / counts[t] for t in data if counts[t]}
    balancer.end_round(mean_losses)
    return TrainStats(task_loss=mean_losses, num_examples=sum(sizes.values()), task_weights=balancer.weights())


def account(
    private: Mapping[str, torch.Tensor] | None,
    data: Mapping[str, TaskData],
    cfg: ClientConfig,
    settings: SampleLevelConfig,
    delta: float,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """After a DP-SGD round: the private state's step count, and the epsilon this client has spent (none
    reported without noise)."""
    steps = int((private or {}).get(STEPS_KEY, torch.tensor(0)).item()) + cfg.local_steps
    state = {STEPS_KEY: torch.tensor(steps)}
    if settings.noise_multiplier == 0:
        return state, {}
    smallest = min(len(d) for d in data.values() if len(d) > 0)
    epsilon = sample_epsilon(settings.noise_multiplier, cfg.batch_size / smallest, steps, delta)
    return state, {protocol.SAMPLE_EPSILON: epsilon}
