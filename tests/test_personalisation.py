"""Per-client encoders (``server.personalisation``): the rule against a hand computation, its two
limits (alpha = 1: local training; alpha = 0: the plain federation), the messages the strategy
builds, checkpoint/resume, and the direction the learned weights move."""

from __future__ import annotations

import re

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedmtl.config.loading import load_config
from fedmtl.config.sections import ServerOptimizerConfig
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.federation.server_update import ServerUpdater
from fedmtl.local.client import LocalClient
from fedmtl.methods.aggregation import FedAvg, PCGrad
from fedmtl.methods.personalisation import Learned, Mixed, PersonalEncoders, hypergradient, personalised_encoder
from fedmtl.model.networks import initial_shared_state
from server.engines.grid import GridEngine
from server.engines.inprocess import InProcessGrid
from tests.helpers import IN_PROCESS, TINY_OVERRIDES, set_args, simulate, tiny_overrides

W0 = torch.tensor([1.0, 2.0, 3.0])


def _updater(personalisation, lr: float = 1.0, aggregator=None) -> ServerUpdater:
    return ServerUpdater(
        {"w": W0.clone()}, aggregator or FedAvg(weighted=False), ServerOptimizerConfig(lr=lr), seed=0,
        device="cpu", personalisation=personalisation,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the pure rule


def test_rule_matches_a_hand_computation():
    alpha, lr = 0.25, 0.5
    updater = _updater(Mixed(alpha), lr=lr)
    local = [torch.tensor([0.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 5.0])]
    updater.step([3, 7], [{"w": w} for w in local], [1.0, 1.0])
    u = [W0 - w for w in local]  # rows: start (= global, nobody has an offset yet) - local
    d = (u[0] + u[1]) / 2  # fedavg, unweighted
    assert torch.allclose(updater.param.detach(), W0 - lr * d)
    for client, own in zip([3, 7], u):
        expected = W0 - alpha * own - (1 - alpha) * lr * d  # the rule, by hand
        assert torch.allclose(updater.client_state(client)["w"], expected)
        assert torch.allclose(personalised_encoder(W0, own, lr * d, alpha), expected)
    assert updater.client_offset(5) is None and torch.equal(updater.client_state(5)["w"], updater.param.detach())

    # round 2: client 3 trains from its own encoder, so its row is taken against that encoder
    start = updater.client_state(3)["w"].clone()
    global_prev = updater.param.detach().clone()
    local3 = start - torch.tensor([0.2, -0.4, 0.0])
    diagnostics = updater.step([3], [{"w": local3}], [1.0])
    step = global_prev - updater.param.detach()
    assert torch.allclose(step, lr * torch.tensor([0.2, -0.4, 0.0]))  # one client: d is its own row
    assert torch.allclose(updater.client_state(3)["w"], personalised_encoder(start, start - local3, step, alpha))
    assert diagnostics.personal_alphas == (alpha,)


def test_alpha_one_is_local_training_and_alpha_zero_the_global_encoder():
    local = [torch.tensor([0.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 5.0])]
    own, none = _updater(Mixed(1.0), aggregator=PCGrad()), _updater(Mixed(0.0), aggregator=PCGrad())
    for updater in (own, none):
        updater.step([0, 1], [{"w": w} for w in local], [1.0, 1.0])
    for client, w in enumerate(local):
        assert torch.allclose(own.client_state(client)["w"], w)
        assert own.client_offset(client) is not None
        assert none.client_offset(client) is None  # nothing stored: everybody gets the global encoder
        assert torch.equal(none.client_state(client)["w"], none.param.detach())


def test_learned_weights_move_the_way_the_feedback_says():
    step = torch.tensor([1.0, 0.0])
    own = torch.tensor([[0.0, 1.0]])  # the client's update, orthogonal to the server's step
    towards_own, towards_global = PersonalEncoders(0.5, lr=0.1), PersonalEncoders(0.5, lr=0.1)
    for personal in (towards_own, towards_global):
        assert personal.observe([4], own, step) == (0.5,)  # no feedback yet: the initial weight
    # Next round the client keeps pulling along its own update: more weight on it.
    assert towards_own.observe([4], own, step)[0] > 0.5
    # The client's next update points along the server's step instead: less weight on its own.
    assert towards_global.observe([4], step[None], step)[0] < 0.5
    # By hand: the mixing direction step - u = (1, -1), the next update (0, 1): <u_next, step - u> = -1,
    # so alpha = 0.5 - 0.1 * (-1) = 0.6
    assert towards_own.alpha(4) == pytest.approx(0.6)
    assert towards_global.alpha(4) == pytest.approx(0.4)  # <(1, 0), (1, -1)> = 1: 0.5 - 0.1
    clipped = PersonalEncoders(0.95, lr=10.0)
    clipped.observe([1], own, step)
    assert clipped.observe([1], own, step) == (1.0,)


def test_normalised_feedback_steps_by_the_cosine():
    """``normalize: true``: the step is lr times the cosine of the next update with the mixing direction.
    By hand, cos((0, 3), (1, -1)) = -3 / (3 sqrt 2) = -1/sqrt 2, so alpha = 0.5 + 0.1 / sqrt 2; the
    unnormalised rule would move by 0.1 * 3 = 0.3 (and clip at 0.8)."""
    step, own = torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 1.0]])
    normalised, raw = PersonalEncoders(0.5, lr=0.1, normalize=True), PersonalEncoders(0.5, lr=0.1)
    for personal in (normalised, raw):
        personal.observe([2], own, step)
        personal.observe([2], torch.tensor([[0.0, 3.0]]), step)
    assert normalised.alpha(2) == pytest.approx(0.5 + 0.1 / 2**0.5)
    assert raw.alpha(2) == pytest.approx(0.8)
    assert hypergradient(torch.zeros(2), torch.ones(2), True) == 0.0  # a zero update carries no signal


@pytest.mark.parametrize(("normalize", "expected"), [(True, 0.5 + 0.1 * 0.5 / 1.25**0.5), (False, 0.65)])
def test_learned_normalize_reaches_the_updater_from_the_config(normalize, expected):
    """By hand: round 1, updates u0 = (0, 1) and u1 = (2, 0), FedAvg step s = (1, 0.5), client 0's mixing
    direction s - u0 = (1, -0.5); round 2, client 0's next update (0, 3): inner product -1.5, cosine
    -0.5 / sqrt(1.25)."""
    overrides = [f"server.personalisation={{name: learned, alpha: 0.5, lr: 0.1, normalize: {str(normalize).lower()}}}"]
    cfg = load_config(None, overrides)
    updater = ServerUpdater(
        {"w": torch.zeros(2)}, FedAvg(weighted=False), cfg.server.optimizer, seed=0,
        personalisation=cfg.server.personalisation,
    )  # fmt: skip
    updater.step([0, 1], [{"w": torch.tensor([0.0, -1.0])}, {"w": torch.tensor([-2.0, 0.0])}], [1.0, 1.0])
    updater.step([0], [{"w": updater.client_state(0)["w"] - torch.tensor([0.0, 3.0])}], [1.0])
    assert updater.personal is not None and updater.personal.alpha(0) == pytest.approx(expected)


def test_clients_not_sampled_keep_their_offset_and_follow_the_global_encoder():
    updater = _updater(Mixed(0.5))
    updater.step([0, 1], [{"w": torch.tensor([1.0, 0.0, 0.0])}, {"w": torch.tensor([0.0, 1.0, 0.0])}], [1.0, 1.0])
    offset_of_1 = updater.client_offset(1).clone()
    updater.step([0], [{"w": updater.client_state(0)["w"] + torch.tensor([0.0, 0.0, 2.0])}], [1.0])
    assert torch.equal(updater.client_offset(1), offset_of_1)
    assert torch.allclose(updater.client_state(1)["w"], updater.param.detach() + offset_of_1)


def test_config_component_and_its_errors():
    cfg = load_config(None, ["server.personalisation={name: learned, alpha: 0.2, normalize: true}"])
    assert cfg.server.personalisation == Learned(alpha=0.2, lr=0.01, normalize=True)
    assert load_config(None, []).server.personalisation.start() is None
    with pytest.raises(ConfigError, match="server.personalisation"):
        load_config(None, ["server.personalisation={name: mixed, alpha: 1.5}"])
    with pytest.raises(ConfigError, match="valid: learned, mixed, none"):
        load_config(None, ["server.personalisation=fedhca"])


# ----------------------------------------------------------------------------- the server algorithm and the wire


def _personal_algorithm(
    clients: int, personalisation: str = "{name: mixed, alpha: 0.5}", *more: str
) -> ServerAlgorithm:
    """``clients`` participants; all but the last have trained once (their encoders differ)."""
    cfg = load_config(None, [*tiny_overrides(clients), f"server.personalisation={personalisation}", *more])
    algorithm = ServerAlgorithm(cfg)
    cohort = algorithm.cohorts[0]
    start = cohort.global_state()
    trained = list(range(clients - 1))
    cohort.updater.step(trained, [{k: v + c + 1 for k, v in start.items()} for c in trained], [1.0] * len(trained))
    return algorithm


def test_each_message_carries_its_clients_encoder_and_bytes_count_every_message(flower_identity):
    algorithm = _personal_algorithm(4)
    cohort = algorithm.cohorts[0]
    echo = ClientApp()

    @echo.train()
    @echo.evaluate()
    def reply(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)

    engine = GridEngine(InProcessGrid(echo, 4))
    engine.connect(4, algorithm.interchangeable)
    encoder_bytes = payload_bytes_of(ArrayRecord(cohort.global_state()))
    for sends in (algorithm.train_sends(2, {}), algorithm.evaluate_sends(2, {})):
        assert [s.participant for s in sends] == [0, 1, 2, 3]
        for send in sends:
            assert all(torch.equal(send.arrays[k], v) for k, v in cohort.state_for(send.participant).items())
        first = next(iter(cohort.global_state()))
        encoders = [tuple(s.arrays[first].reshape(-1).tolist()) for s in sends]
        assert len(set(encoders[:3])) == 3  # three trained clients, three encoders
        assert sends[3].arrays is cohort.global_state()  # not trained yet: the global encoder
        assert engine.exchange(sends, 10).payload_bytes == 4 * encoder_bytes  # a full encoder per message


def test_norm_screen_measures_the_update_from_the_clients_own_encoder():
    algorithm = _personal_algorithm(3, "{name: mixed, alpha: 0.5}", "server.max_update_norm=0.01")
    own = algorithm.cohorts[0].state_for(0)
    assert algorithm._update_norm(0, own) == pytest.approx(0.0, abs=1e-6)
    assert algorithm._update_norm(2, own) > 0.01  # far from the global encoder participant 2 received


def test_per_client_encoders_survive_a_checkpoint():
    learned = "{name: learned, alpha: 0.5, lr: 0.5}"
    algorithm = _personal_algorithm(2, learned)
    cohort = algorithm.cohorts[0]
    start = cohort.global_state()
    for server_round in (1, 2):
        cohort.updater.step(
            [0, 1], [{k: v * server_round for k, v in start.items()}, {k: -v for k, v in start.items()}], [1.0, 1.0]
        )
    restored = _personal_algorithm(2, learned)
    restored.load_state_dict(algorithm.state_dict())
    for client in (0, 1):
        assert all(torch.equal(restored.state_for(client)[k], v) for k, v in algorithm.state_for(client).items())
        assert restored.cohorts[0].updater.personal.alpha(client) == cohort.updater.personal.alpha(client)
    assert cohort.updater.personal.alpha(0) != 0.5  # the weights did learn something worth restoring
    same = [{k: v * 3 for k, v in start.items()}, dict(start)]
    assert cohort.updater.step([0, 1], same, [1.0, 1.0]) == restored.cohorts[0].updater.step([0, 1], same, [1.0, 1.0])
    message = "the checkpoint and server.personalisation disagree on per-client encoders: resume with the run's config"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        restored.load_state_dict(ServerAlgorithm(load_config(None, list(tiny_overrides(2)))).state_dict())


# ----------------------------------------------------------------------------- slow: real runs

TINY = (*TINY_OVERRIDES, "rounds=3", "eval_every=1", IN_PROCESS)  # no Ray but where a test names an engine


@pytest.fixture(scope="module")
def runs(tmp_path_factory, module_env):
    """name -> run directory; each variant run once per module."""
    root, done = tmp_path_factory.mktemp("runs"), {}

    def run(name: str, *overrides: str):
        if name not in done:
            result = simulate(*set_args((*TINY, *overrides, f"output.run_dir={root / name}")), env=module_env)
            assert result.returncode == 0, result.stderr[-2000:]
            done[name] = root / name
        return done[name]

    return run


def payload_bytes_of(arrays: ArrayRecord) -> int:
    return sum(len(array.data) for array in arrays.values())


def _eval_rows(run_dir) -> dict[tuple, dict]:
    return {
        (r["round"], r["client"], r["task"]): r for r in read_rows(run_dir / "metrics.jsonl") if r["split"] == "eval"
    }


def _without_timing(run_dir) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("started_at", "seconds", "personal_alphas")}
        for r in read_rows(run_dir / "server.jsonl")
    ]


@pytest.mark.slow
def test_alpha_zero_equals_the_plain_federation(runs):
    plain = runs("none", "server.aggregator=pcgrad")
    mixed = runs("mixed0", "server.aggregator=pcgrad", "server.personalisation={name: mixed, alpha: 0.0}")
    assert _eval_rows(mixed) == _eval_rows(plain)
    assert _without_timing(mixed) == _without_timing(plain)
    assert {tuple(r["personal_alphas"]) for r in read_rows(mixed / "server.jsonl")} == {(0.0, 0.0, 0.0)}


@pytest.mark.slow
def test_alpha_one_equals_each_client_training_alone(runs):
    """alpha = 1: every client's encoder is the one it trained, round after round; the run's
    evaluations match clients that never talk to a server (same seeds, same data)."""
    run_dir = runs("mixed1", "server.aggregator=pcgrad", "server.personalisation={name: mixed, alpha: 1.0}")
    cfg = load_config(None, list(TINY))
    logged = _eval_rows(run_dir)
    initial = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    for client_id in range(cfg.clients.count):
        client = LocalClient.for_client(cfg, client_id)
        shared, private = dict(initial), None
        for server_round in range(1, cfg.rounds + 1):
            outcome = client.train(shared, private, server_round)
            shared, private = outcome.shared, outcome.private
            [report] = client.evaluate(shared, private)
            metrics = protocol.unflatten_task_metrics(report, protocol.EVAL)
            for task, values in metrics.items():
                assert logged[(server_round, client_id, task)]["loss"] == pytest.approx(values["loss"], rel=1e-4)
    plain = runs("none", "server.aggregator=pcgrad")
    traffic = [(r["bytes_up"], r["bytes_down"]) for r in read_rows(plain / "server.jsonl")]
    assert [(r["bytes_up"], r["bytes_down"]) for r in read_rows(run_dir / "server.jsonl")] == traffic
    encoder_bytes = payload_bytes_of(ArrayRecord(initial))
    assert traffic[0] == (3 * encoder_bytes, (3 + 3) * encoder_bytes)  # every train and eval message: a full encoder


@pytest.mark.slow
def test_learned_run_restarted_from_its_checkpoint_changes_nothing(runs):
    """A worker killed in round 2 restarts the federation from the round-1 checkpoint (learned
    weights, offsets and pending directions restored); under Flower's own engine, too."""
    learned = ("server.aggregator=cagrad", "server.personalisation={name: learned, alpha: 0.5, lr: 50.0}")
    uninterrupted = runs("learned", *learned)
    killed = runs(
        "learned-killed",
        *learned,
        "simulation.engine=flower",
        "faults.worker_kill_round=2",
        "faults.worker_kill_client=1",
    )
    assert _eval_rows(killed) == _eval_rows(uninterrupted)
    alphas = [r["personal_alphas"] for r in read_rows(uninterrupted / "server.jsonl")]
    assert [r["personal_alphas"] for r in read_rows(killed / "server.jsonl")] == alphas
    assert alphas[0] == [0.5, 0.5, 0.5] and alphas[-1] != alphas[0]  # the weights learned


def test_learned_weights_keep_moving_from_the_clients_current_weight():
    """Client 7, alpha 0.5, lr 0.1, one coordinate. Round 1: own 1, step 2: no feedback yet, direction
    step - own = 1. Round 2: own 1 -> feedback 1 * 1 = 1, alpha 0.5 - 0.1 = 0.4; direction 3 - 1 = 2.
    Round 3: own 0.5 -> feedback 0.5 * 2 = 1, alpha 0.4 - 0.1 = 0.3 (from the client's 0.4, not 0.5)."""
    encoders = PersonalEncoders(0.5, 0.1, False)
    used = [
        encoders.observe([7], torch.tensor([[own]], dtype=torch.float64), torch.tensor([step], dtype=torch.float64))
        for own, step in [(1.0, 2.0), (1.0, 3.0), (0.5, 0.0)]
    ]
    assert [u[0] for u in used] == pytest.approx([0.5, 0.4, 0.3])
    offset = encoders.offset(7)
    assert offset.dtype == torch.float32  # offsets live beside the float32 flat encoder
    # offsets add alpha * (step - own): 0.5 * 1 + 0.4 * 2 + 0.3 * (-0.5)
    assert float(offset[0]) == pytest.approx(0.5 + 0.8 - 0.15)


def test_observe_refuses_rows_that_do_not_match_the_clients_or_the_step():
    encoders = PersonalEncoders(0.5)
    for rows, clients, step in [(torch.zeros(2, 3), [1, 2], torch.zeros(4)), (torch.zeros(2, 3), [1], torch.zeros(3))]:
        with pytest.raises(ValueError) as raised:
            encoders.observe(clients, rows, step)
        assert str(raised.value) == f"rows (2, 3) do not match {len(clients)} clients and step ({step.shape[0]},)"


def test_personalisation_settings_messages():
    with pytest.raises(ValueError) as raised:
        Mixed(alpha=1.5)
    assert str(raised.value) == "alpha must be in [0, 1], got 1.5"
    with pytest.raises(ValueError) as raised:
        Learned(lr=0.0)
    assert str(raised.value) == "lr must be > 0, got 0.0"


def test_normalised_hypergradient_is_the_cosine_also_for_short_vectors():
    # norms product 0.25 * 0.5 < 1: still divided by it
    assert hypergradient(torch.tensor([0.25, 0.0]), torch.tensor([0.3, 0.4]), normalize=True) == pytest.approx(0.6)
    assert hypergradient(torch.zeros(2), torch.tensor([0.3, 0.4]), normalize=True) == 0.0
