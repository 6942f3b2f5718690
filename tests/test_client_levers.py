"""Task sampling, in-client gradient surgery, proximal term, and task-gradient diagnostics."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config.sections import ClientConfig
from fedmtl.data.suites import TaskData
from fedmtl.local.data import client_data
from fedmtl.local.task_gradients import TaskGradientTracker, principal_angles
from fedmtl.local.training import Proximal, train_local
from fedmtl.methods.aggregation import FedAvg, PCGrad
from fedmtl.methods.balancing import Static
from fedmtl.methods.task_sampling import AllTasks, Proportional, Temperature, Uniform
from fedmtl.model.networks import MultiTaskModel

SIZES = {"a": 100, "b": 25}


def test_sampling_probabilities():
    assert Proportional().probabilities(SIZES) == pytest.approx({"a": 0.8, "b": 0.2})
    assert Uniform().probabilities(SIZES) == pytest.approx({"a": 0.5, "b": 0.5})
    assert Temperature(temperature=2.0).probabilities(SIZES) == pytest.approx({"a": 10 / 15, "b": 5 / 15})
    assert AllTasks().choose(SIZES, torch.Generator()) == ["a", "b"]


def test_sampled_frequencies_follow_the_probabilities():
    generator = torch.Generator().manual_seed(0)
    draws = [Proportional().choose(SIZES, generator)[0] for _ in range(4000)]
    assert draws.count("a") / 4000 == pytest.approx(0.8, abs=0.03)


def _setup(tiny_config, client_id=0):
    cfg = tiny_config
    data = client_data(cfg, client_id).train
    specs = {s.name: s for s in cfg.data.task_specs() if s.name in data}
    torch.manual_seed(0)
    model = MultiTaskModel(cfg.model, cfg.data.feature_dim(), specs.values())
    return cfg, data, specs, model


def _train(model, data, specs, cfg: ClientConfig, proximal=None):
    generator = torch.Generator().manual_seed(1)
    stats = train_local(model, data, specs, cfg, generator, Static().start(list(data), {}), proximal)
    return stats, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _fresh(tiny_config):
    return _setup(tiny_config)


def test_surgery_with_the_plain_mean_equals_no_surgery(tiny_config):
    cfg, data, specs, model = _fresh(tiny_config)
    _, plain = _train(model, data, specs, cfg.client)
    cfg, data, specs, model = _fresh(tiny_config)
    _, mean_surgery = _train(
        model, data, specs, ClientConfig(**{**cfg.client.__dict__, "surgery": FedAvg(weighted=False)})
    )
    assert torch.allclose(plain, mean_surgery, atol=1e-5)


def _conflicting_two_task_setup(tiny_config):
    """Client 0's ``anchor`` data, and a second task on the same inputs with the targets negated and the
    same head: the two encoder gradients then point almost opposite ways (a guaranteed conflict)."""
    cfg, data, specs, model = _fresh(tiny_config)
    first, second = sorted(data)
    data = {first: data[first], second: TaskData(data[first].x, -data[first].y)}
    model.heads[second].load_state_dict(model.heads[first].state_dict())
    return cfg, data, specs, model


def _task_gradients(model, data, specs) -> torch.Tensor:
    """``[2, P]``: each task's gradient of its full-batch loss on the encoder, by plain autograd."""
    params = model.encoder_parameters()
    rows = []
    for task, task_data in sorted(data.items()):
        loss = specs[task].kind_impl.loss(model(task_data.x, task), task_data.y)
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def _pcgrad_two_rows(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Yu et al. (NeurIPS 2020), Algorithm 1 for two tasks, summed: each gradient loses its component
    along the other's when they conflict."""
    dot = g1 @ g2
    p1 = g1 - dot / (g2 @ g2) * g2 if dot < 0 else g1
    p2 = g2 - dot / (g1 @ g1) * g1 if dot < 0 else g2
    return p1 + p2


def test_in_client_pcgrad_moves_the_encoder_along_the_projected_gradients(tiny_config):
    """One SGD step with full batches: the encoder moves by exactly ``-lr`` times the sum of the two
    projected task gradients (and not by the plain sum, which the same step takes without surgery)."""
    cfg, data, specs, model = _conflicting_two_task_setup(tiny_config)
    one_step = {"local_steps": 1, "batch_size": 10_000, "momentum": 0.0, "lr": 0.1, "gradient_diagnostics_every": 0}
    grads = _task_gradients(model, data, specs).double()
    assert float(grads[0] @ grads[1]) < 0, "the set-up must make the task gradients conflict"
    start = torch.cat([p.detach().reshape(-1) for p in model.encoder_parameters()]).double()

    _train(model, data, specs, ClientConfig(**{**cfg.client.__dict__, **one_step, "surgery": PCGrad()}))
    moved = torch.cat([p.detach().reshape(-1) for p in model.encoder_parameters()]).double() - start
    expected = -0.1 * _pcgrad_two_rows(grads[0], grads[1])
    torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-6)

    cfg, data, specs, model = _conflicting_two_task_setup(tiny_config)
    _train(model, data, specs, ClientConfig(**{**cfg.client.__dict__, **one_step}))
    plain = torch.cat([p.detach().reshape(-1) for p in model.encoder_parameters()]).double() - start
    torch.testing.assert_close(plain, -0.1 * grads.sum(0), rtol=1e-4, atol=1e-6)
    assert (plain - expected).norm() > 0.1 * expected.norm(), "surgery must change the step measurably"


def test_proximal_with_mu_zero_equals_plain_local_training(tiny_config):
    cfg, data, specs, model = _fresh(tiny_config)
    _, plain = _train(model, data, specs, cfg.client)
    cfg, data, specs, model = _fresh(tiny_config)
    reference = [torch.randn_like(p) for p in model.encoder_parameters()]
    _, prox_zero = _train(model, data, specs, cfg.client, Proximal(reference, 0.0))
    assert torch.equal(plain, prox_zero)
    cfg, data, specs, model = _fresh(tiny_config)
    _, prox = _train(model, data, specs, cfg.client, Proximal(reference, 1.0))
    assert not torch.allclose(plain, prox)


def test_diagnostics_record_every_pair_of_held_tasks(tiny_config):
    cfg, data, specs, model = _fresh(tiny_config)
    stats, _ = _train(
        model, data, specs, ClientConfig(**{**cfg.client.__dict__, "local_steps": 6, "gradient_diagnostics_every": 2})
    )
    pair = tuple(sorted(data))
    assert set(stats.task_cosines) == {pair} and -1 <= stats.task_cosines[pair] <= 1
    assert len(stats.subspace_angles[pair]) >= 1 and all(0 <= a <= 90 for a in stats.subspace_angles[pair])


def test_principal_angles_oracles():
    basis = torch.eye(6)
    assert principal_angles(basis[:2], basis[:2] * 3).tolist() == pytest.approx([0.0, 0.0], abs=1e-5)
    assert principal_angles(basis[:2], basis[2:4]).tolist() == pytest.approx([90.0, 90.0])
    tilted = torch.stack([basis[0], torch.cos(torch.tensor(0.5)) * basis[1] + torch.sin(torch.tensor(0.5)) * basis[2]])
    assert principal_angles(basis[:2], tilted).tolist() == pytest.approx(
        [0.0, float(torch.rad2deg(torch.tensor(0.5)))], abs=1e-4
    )


def test_tracker_mean_cosine():
    tracker = TaskGradientTracker(subspace_steps=2)
    tracker.add(["a", "b"], torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    tracker.add(["a", "b"], torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert tracker.mean_cosines()[("a", "b")] == pytest.approx((2**-0.5 - 1) / 2)


def test_fitting_heads_before_evaluation_moves_only_the_heads_and_fits_the_received_encoder(tiny_config):
    from dataclasses import replace

    from fedmtl.local.client import LocalClient
    from fedmtl.local.training import evaluate, fit_heads

    client = LocalClient.for_client(tiny_config, 0)
    initial = {k: v for k, v in client.build_model({}, {}).state_dict().items() if client.is_shared(k)}
    outcome = client.train(initial, None, 1)
    shared = {k: v + 0.3 * torch.randn_like(v) for k, v in outcome.shared.items()}  # an encoder the heads never saw

    private = {k[len("model.") :]: v for k, v in outcome.private.items() if k.startswith("model.")}
    model = client.build_model(dict(shared), private)
    train = client_data(tiny_config, 0).train
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_loss = evaluate(model, train, client.specs)
    fit_heads(model, train, client.specs, tiny_config.client, 30, torch.Generator().manual_seed(0))
    after_state, after_loss = model.state_dict(), evaluate(model, train, client.specs)
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state if not k.startswith("heads."))
    assert any(not torch.equal(before_state[k], after_state[k]) for k in before_state if k.startswith("heads."))
    for task in client.specs:  # the heads now fit the encoder they are evaluated with, on the data they saw
        assert after_loss[task]["loss"] < before_loss[task]["loss"]

    fitted = replace(tiny_config, client=replace(tiny_config.client, eval_head_steps=30))
    as_left = LocalClient.for_client(tiny_config, 0).evaluate(dict(shared), outcome.private)
    refitted = LocalClient.for_client(fitted, 0).evaluate(dict(shared), outcome.private)
    assert refitted != as_left and refitted == LocalClient.for_client(fitted, 0).evaluate(dict(shared), outcome.private)
    assert as_left == LocalClient.for_client(tiny_config, 0).evaluate(dict(shared), outcome.private)


def test_head_init_task_gives_every_holder_of_a_task_the_same_first_head(tiny_config):
    from dataclasses import replace

    from fedmtl.local.client import LocalClient
    from fedmtl.model.head_init import PerTask
    from fedmtl.model.networks import initial_head_state

    def first_heads(cfg, client_id: int) -> dict[str, torch.Tensor]:
        state = LocalClient.for_client(cfg, client_id).build_model({}, {}).state_dict()
        return {k: v for k, v in state.items() if k.startswith("heads.")}

    shared_task = "aligned"  # tiny config: client 0 holds anchor + aligned, client 1 aligned + orthogonal
    by_client = [first_heads(tiny_config, c) for c in (0, 1)]
    keys = [k for k in by_client[0] if k.startswith(f"heads.{shared_task}.")]
    assert keys and all(not torch.equal(by_client[0][k], by_client[1][k]) for k in keys)

    per_task = replace(tiny_config, model=replace(tiny_config.model, head_init=PerTask()))
    by_task = [first_heads(per_task, c) for c in (0, 1)]
    reference = initial_head_state(per_task.model, per_task.data.feature_dim(), per_task.data.task_specs(), 0)
    assert all(torch.equal(by_task[0][k], by_task[1][k]) and torch.equal(by_task[0][k], reference[k]) for k in keys)


@pytest.mark.parametrize("seed", range(5))
def test_samplers_draw_distinct_tasks_from_the_seeded_generator(seed):
    sizes = {"a": 10, "b": 40, "c": 50, "d": 100}
    for sampler, probabilities in [
        (Proportional(tasks_per_step=2), [0.05, 0.2, 0.25, 0.5]),
        (Temperature(temperature=0.5, tasks_per_step=2), [n**2 / 13600 for n in (10, 40, 50, 100)]),
    ]:
        expected = torch.multinomial(
            torch.tensor(probabilities, dtype=torch.float64), 2, generator=torch.Generator().manual_seed(seed)
        )
        picked = sampler.choose(sizes, torch.Generator().manual_seed(seed))
        assert picked == [list(sizes)[i] for i in sorted(expected.tolist())]
    assert Uniform(tasks_per_step=4).choose(sizes, torch.Generator().manual_seed(seed)) == ["a", "b", "c", "d"]


def test_sampler_settings_messages():
    Temperature(temperature=0.5)  # below 1 sharpens towards large tasks: allowed
    with pytest.raises(ValueError) as raised:
        Temperature(temperature=0.0)
    assert str(raised.value) == "temperature must be > 0, got 0.0"
    with pytest.raises(ValueError) as raised:
        Proportional(tasks_per_step=0)
    assert str(raised.value) == "tasks_per_step must be >= 1, got 0"


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimizer_weight_decay_pulls_parameters_with_a_zero_gradient(name):
    from fedmtl.methods.optimizers import OPTIMIZERS, OptimizerSettings

    param = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    optimizer = OPTIMIZERS[name]().make([param], OptimizerSettings(lr=0.01, weight_decay=0.1))
    param.grad = torch.zeros(1, dtype=torch.float64)
    optimizer.step()
    # L2 decay: the gradient becomes 0.1 * 2 = 0.2. SGD: 2 - 0.01 * 0.2. Adam's first step, bias
    # corrected: m = 0.2, v = 0.04, so 2 - 0.01 * 0.2 / (0.2 + eps).
    eps = OptimizerSettings(lr=0.01).eps
    expected = 2 - 0.01 * 0.2 if name == "sgd" else 2 - 0.01 * 0.2 / (0.2 + eps)
    assert float(param.detach()) == pytest.approx(expected, rel=1e-12)
