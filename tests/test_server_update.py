"""The server's step on the encoder against references written independently of the implementation:
FedAvgM and FedAdam (Reddi et al., ICLR 2021, "Adaptive Federated Optimization"; Hsu et al. 2019) in
plain NumPy, the round diagnostics against hand-computed cosines and norms, and the optimizer state
surviving a checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmtl.config.sections import ServerOptimizerConfig
from fedmtl.core.errors import ConfigError
from fedmtl.federation.server_update import FlatLayout, ServerUpdater, diagnose, resolve_device
from fedmtl.methods.aggregation import MGDA, AggregationInput, FedAvg, FedFV, PCGrad
from fedmtl.methods.aggregation.gramian import gramian

INITIAL = {"a.weight": torch.tensor([[1.0, -2.0], [0.5, 3.0]]), "b.bias": torch.tensor([0.25, -1.0, 2.0])}
# three rounds of two clients' encoders (flattened in sorted key order: a.weight then b.bias), with counts
ROUNDS = [
    ([[0.9, -1.0, 0.5, 2.0, 0.0, -1.5, 2.5], [1.2, -2.5, 0.0, 3.5, 0.5, 0.0, 1.0]], [30.0, 10.0]),
    ([[0.1, 0.2, -0.3, 0.4, 1.0, 1.0, 1.0], [2.0, -1.0, 0.5, 0.5, -0.5, 0.0, 3.0]], [5.0, 15.0]),
    ([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [-1.0, 0.0, 2.0, 0.0, -3.0, 0.5, 0.5]], [1.0, 1.0]),
]


def flat_initial() -> np.ndarray:
    return np.concatenate([INITIAL["a.weight"].numpy().reshape(-1), INITIAL["b.bias"].numpy()]).astype(np.float64)


def as_state(flat: list[float]) -> dict[str, torch.Tensor]:
    return {"a.weight": torch.tensor(flat[:4]).reshape(2, 2), "b.bias": torch.tensor(flat[4:])}


def run_updater(optimizer: ServerOptimizerConfig, rounds=ROUNDS) -> np.ndarray:
    updater = ServerUpdater(INITIAL, FedAvg(), optimizer, seed=0)
    for states, counts in rounds:
        updater.step([0, 1], [as_state(s) for s in states], counts)
    return updater.param.detach().double().numpy()


def fedavg_directions(rounds=ROUNDS):
    """Yields a function of the current global vector -> the weighted mean pseudo-gradient."""
    for states, counts in rounds:
        locals_, weights = np.array(states, dtype=np.float64), np.array(counts) / sum(counts)
        yield lambda x, locals_=locals_, weights=weights: weights @ (x[None, :] - locals_)


def reference_fedavgm(lr: float, momentum: float) -> np.ndarray:
    """FedAvgM: v <- momentum v + d, x <- x - lr v (Hsu et al. 2019; PyTorch's SGD without dampening)."""
    x, v = flat_initial(), np.zeros(7)
    for direction in fedavg_directions():
        v = momentum * v + direction(x)
        x = x - lr * v
    return x


def reference_fedadam(lr: float, beta1: float, beta2: float, eps: float) -> np.ndarray:
    """Adam on the pseudo-gradient with Kingma & Ba's bias correction (torch.optim.Adam's variant of
    FedAdam; Reddi et al.'s Algorithm 2 omits the correction), eps = FedAdam's tau."""
    x, m, v = flat_initial(), np.zeros(7), np.zeros(7)
    for t, direction in enumerate(fedavg_directions(), start=1):
        g = direction(x)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        x = x - lr * m_hat / (np.sqrt(v_hat) + eps)
    return x


def test_sgd_with_lr_one_is_fedavg_the_weighted_mean_of_the_clients():
    states, counts = ROUNDS[0]
    updater = ServerUpdater(INITIAL, FedAvg(), ServerOptimizerConfig(), seed=0)
    updater.step([0, 1], [as_state(s) for s in states], counts)
    expected = (30 * np.array(states[0]) + 10 * np.array(states[1])) / 40
    np.testing.assert_allclose(updater.param.detach().numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("lr", "momentum"), [(1.0, 0.0), (0.5, 0.0), (1.0, 0.9), (0.3, 0.5)])
def test_sgd_and_momentum_follow_fedavgm(lr, momentum):
    got = run_updater(ServerOptimizerConfig(name="sgd", lr=lr, momentum=momentum))
    np.testing.assert_allclose(got, reference_fedavgm(lr, momentum), rtol=0, atol=1e-5)


def test_momentum_changes_the_result():
    """The reference is sensitive to the lever: without the momentum buffer the result differs."""
    assert not np.allclose(reference_fedavgm(1.0, 0.9), reference_fedavgm(1.0, 0.0), atol=1e-3)


@pytest.mark.parametrize(
    ("lr", "betas", "eps"), [(0.1, (0.9, 0.99), 1e-3), (0.01, (0.5, 0.9), 1e-8), (1.0, (0.0, 0.999), 0.5)]
)
def test_adam_follows_fedadam_with_bias_correction(lr, betas, eps):
    got = run_updater(ServerOptimizerConfig(name="adam", lr=lr, betas=betas, eps=eps))
    np.testing.assert_allclose(got, reference_fedadam(lr, *betas, eps), rtol=0, atol=1e-5)
    assert not np.allclose(got, reference_fedavgm(lr, 0.0), atol=1e-4)  # the optimizer is not ignored


@pytest.mark.parametrize(
    "optimizer",
    [ServerOptimizerConfig(name="sgd", lr=0.7, momentum=0.9), ServerOptimizerConfig(name="adam", lr=0.05)],
    ids=["fedavgm", "fedadam"],
)
def test_optimizer_state_survives_a_checkpoint(optimizer):
    """Restoring from ``state_dict`` after two rounds then stepping the third gives the uninterrupted
    result; restoring the encoder alone (without the optimizer's moments) would not."""
    uninterrupted = run_updater(optimizer)
    first = ServerUpdater(INITIAL, FedAvg(), optimizer, seed=0)
    for states, counts in ROUNDS[:2]:
        first.step([0, 1], [as_state(s) for s in states], counts)
    checkpoint = first.state_dict()
    states, counts = ROUNDS[2]

    restored = ServerUpdater(INITIAL, FedAvg(), optimizer, seed=0)
    restored.load_state_dict(checkpoint)
    restored.step([0, 1], [as_state(s) for s in states], counts)
    np.testing.assert_array_equal(restored.param.detach().double().numpy(), uninterrupted)

    encoder_only = ServerUpdater(INITIAL, FedAvg(), optimizer, seed=0)
    with torch.no_grad():
        encoder_only.param.copy_(checkpoint["param"])
    encoder_only.step([0, 1], [as_state(s) for s in states], counts)
    assert not np.allclose(encoder_only.param.detach().double().numpy(), uninterrupted, atol=1e-4)


def test_the_aggregators_generator_survives_a_checkpoint():
    """PCGrad draws its projection order from the server's generator: a restored run draws the same."""
    rows = [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [-0.8, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [-0.5, -0.9, 1.0, 0, 0, 0, 0]]
    x0 = flat_initial()
    states = [list(x0 - np.array(r)) for r in rows]

    def fresh() -> ServerUpdater:
        return ServerUpdater(INITIAL, PCGrad(), ServerOptimizerConfig(), seed=3)

    uninterrupted = fresh()
    results = []
    for _ in range(4):
        uninterrupted.step([0, 1, 2], [as_state(s) for s in states], [1.0] * 3)
        results.append(uninterrupted.param.detach().clone())
    restored = fresh()
    restored.step([0, 1, 2], [as_state(s) for s in states], [1.0] * 3)
    checkpoint = restored.state_dict()
    again = fresh()
    again.load_state_dict(checkpoint)
    for expected in results[1:]:
        again.step([0, 1, 2], [as_state(s) for s in states], [1.0] * 3)
        assert torch.equal(again.param.detach(), expected)


# ----------------------------------------------------------------------------- diagnostics


def test_diagnostics_on_hand_computed_rows():
    # rows: e1, e2, -e1 (+ 0 in a third coordinate); pairs (0,1) cos 0, (0,2) cos -1, (1,2) cos 0
    matrix = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-3.0, 0.0, 0.0]], dtype=torch.float64)
    direction = torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)  # any direction: its norm is reported
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    result = diagnose([7, 3, 5], matrix, direction, weights, gramian(matrix, "float64"))
    assert result.clients == (7, 3, 5)
    assert result.weights == pytest.approx((0.2, 0.3, 0.5))
    assert result.cosines_upper == pytest.approx((0.0, -1.0, 0.0), abs=1e-12)
    assert result.conflict_fraction == pytest.approx(1 / 3)
    assert result.aggregate_norm == pytest.approx(5.0)
    assert result.mean_norm == pytest.approx(math.hypot(-2 / 3, 2 / 3))


def test_diagnostics_cosines_are_in_row_major_upper_triangle_order():
    angles = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=torch.float64)
    matrix = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * torch.tensor([[1.0], [2.0], [0.5], [4.0]])
    result = diagnose(range(4), matrix, matrix.mean(0), None, gramian(matrix, "float64"))
    expected = [math.cos(float(angles[j] - angles[i])) for i in range(4) for j in range(i + 1, 4)]
    assert result.cosines_upper == pytest.approx(expected, abs=1e-12)
    assert result.conflict_fraction == pytest.approx(sum(c < 0 for c in expected) / 6)
    assert result.weights is None


def test_one_row_has_no_pairs_and_no_conflict():
    matrix = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    result = diagnose([0], matrix, matrix[0], torch.ones(1), gramian(matrix, "float64"))
    assert result.cosines_upper == () and result.conflict_fraction == 0.0
    assert result.aggregate_norm == pytest.approx(5.0) and result.mean_norm == pytest.approx(5.0)


def test_two_opposed_rows_are_one_pair_in_conflict():
    matrix = torch.tensor([[1.0, 2.0], [-2.0, -4.0]], dtype=torch.float64)
    result = diagnose([0, 1], matrix, matrix.mean(0), None, gramian(matrix, "float64"))
    assert result.cosines_upper == pytest.approx((-1.0,)) and result.conflict_fraction == 1.0


def test_a_steps_diagnostics_describe_the_rows_it_aggregated():
    """Through ``ServerUpdater.step``: rows are ``global - local``, the aggregate norm is FedAvg's mean row."""
    updater = ServerUpdater({"w": torch.zeros(2)}, FedAvg(weighted=False), ServerOptimizerConfig(), seed=0)
    # locals (-1, 0), (0, -1), (1, 0) -> rows (1, 0), (0, 1), (-1, 0)
    states = [{"w": torch.tensor([-1.0, 0.0])}, {"w": torch.tensor([0.0, -1.0])}, {"w": torch.tensor([1.0, 0.0])}]
    result = updater.step([2, 0, 1], states, [1.0, 1.0, 1.0])
    assert result.clients == (2, 0, 1)
    assert result.cosines_upper == pytest.approx((0.0, -1.0, 0.0), abs=1e-7)
    assert result.conflict_fraction == pytest.approx(1 / 3)
    assert result.mean_norm == pytest.approx(1 / 3) and result.aggregate_norm == pytest.approx(1 / 3)
    assert result.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert torch.allclose(updater.param.detach(), torch.tensor([0.0, -1 / 3]))


# ----------------------------------------------------------------------------- what the aggregator is given

# three rows in mutual conflict (every pair has a negative cosine), so that projection orders and
# precisions show in the result
CONFLICTING = [
    [0.3, -1.1, 0.7, 2.2, -0.4, 0.9, 1.3],
    [-0.8, 0.6, 1.9, -0.2, 0.5, -1.4, 0.1],
    [1.7, 0.2, -0.9, 0.4, 1.1, 0.3, -2.0],
]


def one_step(updater: ServerUpdater, rows, counts, losses=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps ``updater`` (SGD, lr 1) on clients whose updates ``global - local`` are ``rows``; returns
    the matrix of rows it aggregated (as it builds them) and the direction it stepped along."""
    before = updater.param.detach().clone()
    states = [as_state(list(before.double().numpy() - np.array(r))) for r in rows]
    matrix = updater.update_matrix(states)
    updater.step(list(range(len(rows))), states, counts, losses)
    return matrix, before - updater.param.detach()


def direct(aggregator, matrix, counts, **kwargs) -> torch.Tensor:
    """The direction of the aggregator called on ``matrix`` directly (float64 counts and losses, as reported)."""
    kwargs = {k: torch.tensor(v, dtype=torch.float64) if k == "losses" else v for k, v in kwargs.items()}
    return aggregator(AggregationInput(matrix, torch.tensor(counts, dtype=torch.float64), **kwargs)).direction


def assert_stepped_along(step: tuple[torch.Tensor, torch.Tensor], aggregator, counts, **kwargs) -> None:
    matrix, stepped = step
    torch.testing.assert_close(stepped, direct(aggregator, matrix, counts, **kwargs), rtol=0, atol=1e-6)


def test_the_aggregator_draws_its_randomness_from_the_servers_seeded_generator():
    """PCGrad's projection orders come from a generator seeded with the run's seed: round after round
    the updater steps exactly as PCGrad fed with ``torch.Generator().manual_seed(seed)``, and unlike
    PCGrad's fixed order without a generator."""
    updater = ServerUpdater(INITIAL, PCGrad(), ServerOptimizerConfig(), seed=11)
    generator = torch.Generator().manual_seed(11)
    differs_from_fixed_order = False
    for _ in range(4):
        matrix, stepped = one_step(updater, CONFLICTING, [1.0] * 3)
        assert_stepped_along((matrix, stepped), PCGrad(), [1.0] * 3, generator=generator)
        differs_from_fixed_order |= not torch.allclose(stepped, direct(PCGrad(), matrix, [1.0] * 3), atol=1e-4)
    assert differs_from_fixed_order


def test_losses_reach_the_aggregator_in_full_precision():
    """FedFV keeps the update of the client with the larger loss unprojected. Losses that differ below
    float32's resolution still order the clients (client 0's is larger): the updater steps as FedFV
    on the float64 losses, not as on rounded (tied) ones, and refuses to step without losses."""
    rows, losses, fedfv = CONFLICTING[:2], [1.0 + 1e-9, 1.0], FedFV(alpha=0.5)
    updater = ServerUpdater(INITIAL, fedfv, ServerOptimizerConfig(), seed=0)
    matrix, stepped = one_step(updater, rows, [1.0, 1.0], losses)
    assert_stepped_along((matrix, stepped), fedfv, [1.0, 1.0], losses=losses)
    assert not torch.allclose(stepped, direct(fedfv, matrix, [1.0, 1.0], losses=[1.0, 1.0]), atol=1e-3)
    with pytest.raises(ValueError, match="fedfv needs client losses"):
        one_step(updater, rows, [1.0, 1.0])


def test_example_counts_beyond_float32_integers_are_weighted_exactly():
    """FedAvg's weights ``n_k / sum n`` from counts in float64: a count of 2^24 + 1 (not a float32)
    gives client 1 the weight 3 / (2^24 + 4), to float32 rounding; the counts come as Python floats
    (``step``'s type), which a float32 tensor would round to 2^24."""
    updater = ServerUpdater(INITIAL, FedAvg(), ServerOptimizerConfig(), seed=0)
    states, _ = ROUNDS[0]
    result = updater.step([0, 1], [as_state(s) for s in states], [float(2**24 + 1), 3.0])
    assert result.weights == (float(np.float32((2**24 + 1) / (2**24 + 4))), float(np.float32(3 / (2**24 + 4))))


GRAMIANS = ("float32", "float64")


@pytest.mark.parametrize("precision", [*GRAMIANS, None], ids=[*GRAMIANS, "default"])
def test_the_gramian_precision_reaches_the_aggregator_and_the_diagnostics(precision):
    """``server.gramian_precision`` (float32 by default) is the one MGDA's solver and the round's
    cosines are computed with; the two precisions give different weights and cosines on these rows."""
    kwargs = {} if precision is None else {"gramian_precision": precision}
    used = precision or "float32"
    states = [as_state(list(flat_initial() - np.array(r))) for r in CONFLICTING]
    for aggregator in (MGDA(), FedAvg()):
        updater = ServerUpdater(INITIAL, aggregator, ServerOptimizerConfig(), seed=0, **kwargs)
        matrix = updater.update_matrix(states)  # the rows the step aggregates
        expected = {}
        for p in GRAMIANS:
            result = aggregator(AggregationInput(matrix, torch.ones(3, dtype=torch.float64), gramian_precision=p))
            expected[p] = diagnose([0, 1, 2], matrix, result.direction, result.weights, gramian(matrix, p))
        assert expected["float32"].cosines_upper != expected["float64"].cosines_upper
        got = updater.step([0, 1, 2], states, [1.0] * 3)
        assert got.cosines_upper == expected[used].cosines_upper
        assert got.weights == expected[used].weights
    assert expected_mgda_weights_differ(states)


def expected_mgda_weights_differ(states) -> bool:
    """The lever matters: MGDA's weights on these rows depend on the precision."""
    matrix = ServerUpdater(INITIAL, MGDA(), ServerOptimizerConfig(), seed=0).update_matrix(states)
    weights = [
        MGDA()(AggregationInput(matrix, torch.ones(3, dtype=torch.float64), gramian_precision=p)).weights
        for p in GRAMIANS
    ]
    return not torch.equal(*weights)


# ----------------------------------------------------------------------------- layout and device


def test_a_state_dict_round_trips_through_the_flat_vector_in_float32():
    """Keys in sorted order, each its shape, every dtype stored as float32 (the server's encoder)."""
    state = {
        "c.weight": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "a.bias": torch.tensor([-1.0, -2.0], dtype=torch.float16),
        "b.scale": torch.tensor([[7.0]]),
    }
    layout = FlatLayout.of(state)
    flat = layout.flatten(state)
    assert flat.dtype == torch.float32
    assert flat.tolist() == [-1.0, -2.0, 7.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    back = layout.unflatten(flat)
    assert list(back) == ["a.bias", "b.scale", "c.weight"]
    for key, value in state.items():
        assert back[key].dtype == torch.float32 and torch.equal(back[key], value.float())
    assert ServerUpdater(state, FedAvg(), ServerOptimizerConfig(), seed=0).param.dtype == torch.float32


@pytest.mark.parametrize("cuda", [True, False], ids=["gpu", "no-gpu"])
def test_auto_device_is_cuda_exactly_when_a_gpu_is_seen(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == torch.device("cuda" if cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_config_error_naming_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda")
    assert (caught.value.path, caught.value.message) == ("server.device", "is cuda but the server process sees no GPU")
    with pytest.raises(ConfigError, match="^server.device: is cuda but the server process sees no GPU$"):
        ServerUpdater(INITIAL, FedAvg(), ServerOptimizerConfig(), seed=0, device="cuda")


def test_cuda_with_a_gpu_is_accepted(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda") == torch.device("cuda")


def test_a_restored_updater_continues_with_the_adaptive_clip_bound_it_had_moved_to():
    from fedmtl.config.sections import PrivacyConfig

    privacy = PrivacyConfig(clip_norm=1.0, noise_multiplier=0.5, target_quantile=0.5, count_noise=1.0)
    initial = {"w": torch.zeros(3)}
    updater = ServerUpdater(initial, FedAvg(weighted=False), ServerOptimizerConfig(), seed=0, central_privacy=privacy)
    updater.step([0, 1], [{"w": torch.full((3,), -2.0)}, {"w": torch.full((3,), 3.0)}], [1.0, 1.0])
    moved = updater.privacy.clip_norm
    assert moved != 1.0  # both rows are longer than 1: the bound moved
    restored = ServerUpdater(initial, FedAvg(weighted=False), ServerOptimizerConfig(), seed=0, central_privacy=privacy)
    restored.load_state_dict(updater.state_dict())
    assert restored.privacy.clip_norm == moved


def test_central_noise_comes_from_the_servers_seeded_generator_not_the_global_one():
    """The server's Gaussian noise (central DP) is drawn from its own generator, seeded by the run: the
    same seed gives the same noised step whatever torch's global generator did in between, and
    another seed another step."""
    from fedmtl.config.sections import PrivacyConfig

    privacy = PrivacyConfig(clip_norm=10.0, noise_multiplier=1.0)
    rows = [{"w": torch.full((4,), -1.0)}, {"w": torch.full((4,), 2.0)}]

    def stepped(seed: int, global_seed: int) -> torch.Tensor:
        updater = ServerUpdater({"w": torch.zeros(4)}, FedAvg(), ServerOptimizerConfig(), seed, central_privacy=privacy)
        torch.manual_seed(global_seed)
        updater.step([0, 1], rows, [1.0, 1.0])
        return updater.param.detach().clone()

    assert torch.equal(stepped(0, global_seed=1), stepped(0, global_seed=2))
    assert not torch.equal(stepped(0, global_seed=1), stepped(1, global_seed=1))


class Recording:
    """An aggregator that notes the products it was handed."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.products = inner, []

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def __call__(self, inputs: AggregationInput):  # type: ignore[no-untyped-def]
        self.products.append(inputs.products)
        return self.inner(inputs)


@pytest.mark.parametrize("aggregator", [MGDA(), FedAvg()], ids=["gramian-method", "fedavg"])
def test_a_streamed_step_hands_the_streams_products_to_the_aggregator_and_the_diagnostics(aggregator, monkeypatch):
    """Rows written into a stream as the replies came have their products made already: the aggregator
    is given them, and the diagnostics of a method that builds no Gramian (FedAvg) use them too."""
    import fedmtl.federation.server_update as server_update

    made = []

    def recording_gramian(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(kwargs.get("products"))
        return gramian(*args, **kwargs)

    monkeypatch.setattr(server_update, "gramian", recording_gramian)
    updater = ServerUpdater(INITIAL, aggregator, ServerOptimizerConfig(), seed=0)
    updater.aggregator = recording = Recording(updater.aggregator)
    states, counts = ROUNDS[0]
    stream, current = updater.stream(2), updater.param.detach().reshape(-1)
    for slot, flat in enumerate(states):
        updater.write_row(stream.row(slot), as_state(flat), current)
        stream.settle(slot, source=("reply", slot))
    updater.step([0, 1], [as_state(s) for s in states], counts, streamed=(stream, [0, 1]))
    (given,) = recording.products
    assert given is not None and torch.equal(given, stream.gramian([0, 1]))
    if aggregator.name == "fedavg":
        (diagnosed,) = made
        assert diagnosed is not None and torch.equal(diagnosed, stream.gramian([0, 1]))
