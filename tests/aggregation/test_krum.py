"""Krum and multi-Krum (Blanchard et al., NeurIPS 2017) against the published rule, recomputed in
parameter space, and the composition with an inner aggregator (``then``)."""

from __future__ import annotations

import pytest
import torch

from fedmtl.core.errors import ConfigError
from fedmtl.core.typed import parse
from fedmtl.methods.aggregation import AggregationInput, Aggregator, FedAvg, Krum, PCGrad, UPGrad

PATH = "server.aggregator"


def inputs(
    rows: torch.Tensor, num_examples: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> AggregationInput:
    counts = torch.ones(rows.shape[0], dtype=torch.float64) if num_examples is None else num_examples
    return AggregationInput(rows, counts, losses=torch.arange(1.0, rows.shape[0] + 1), generator=generator)


def published_selection(rows: torch.Tensor, f: int, m: int) -> list[int]:
    """Score each row by the squared distances to its K - f - 2 nearest others; keep the m best (ties: lower index)."""
    k = rows.shape[0]
    scores = []
    for i in range(k):
        distances = sorted(float(((rows[i] - rows[j]) ** 2).sum()) for j in range(k) if j != i)
        scores.append(sum(distances[: k - f - 2]))
    return sorted(sorted(range(k), key=lambda i: (scores[i], i))[:m])


def test_hand_computed_example() -> None:
    # squared distances: a-b 1, a-c 4, a-d 2, b-c 5, b-d 1, c-d 2, e far away. f = 1: the 2 nearest count.
    # scores: a 1+2=3, b 1+1=2, c 4+2=6, d 2+1=3, e 162+164=326
    rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [10.0, 10.0]], dtype=torch.float64)
    krum = Krum(f=1)(inputs(rows))
    assert krum.direction.tolist() == [1.0, 0.0]
    assert krum.weights.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    multi = Krum(f=1, m=3)(inputs(rows))  # b, then a and d tie at 3: both kept
    torch.testing.assert_close(multi.direction, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(multi.weights, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3, 0.0], dtype=torch.float64))
    assert multi.gramian.shape == (5, 5)  # the full Gramian, for the server's diagnostics


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("k", "f", "m"), [(3, 0, 1), (5, 1, 1), (5, 1, 3), (8, 2, 4), (10, 3, 1), (10, 1, 10)])
def test_matches_the_published_rule_on_random_rows(k: int, f: int, m: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(100 * k + 10 * f + m)
    rows = torch.randn(k, 30, generator=generator, dtype=torch.float64)
    rows = (rows * torch.exp(torch.randn(k, 1, generator=generator, dtype=torch.float64))).to(dtype)
    selected = published_selection(rows.double(), f, m)
    result = Krum(f=f, m=m)(inputs(rows))
    assert result.weights.nonzero().flatten().tolist() == selected
    torch.testing.assert_close(result.direction, rows[selected].mean(dim=0))


def test_krum_returns_one_of_the_rows_exactly() -> None:
    rows = torch.randn(7, 13, generator=torch.Generator().manual_seed(3))
    direction = Krum(f=2)(inputs(rows)).direction
    assert any(torch.equal(direction, row) for row in rows)


@pytest.mark.parametrize("m", [1, 4])
def test_one_huge_outlier_row_is_never_selected(m: int) -> None:
    generator = torch.Generator().manual_seed(4)
    honest = 1.0 + 0.1 * torch.randn(6, 20, generator=generator, dtype=torch.float64)
    rows = torch.cat([honest[:2], torch.full((1, 20), 1e6, dtype=torch.float64), honest[2:]])
    result = Krum(f=1, m=m)(inputs(rows))
    assert float(result.weights[2]) == 0.0
    assert float(result.direction.abs().max()) < 2.0


def test_a_far_row_among_nearly_identical_float32_rows_is_found() -> None:
    """Honest updates that differ by 1e-6 of their norm: a float32 Gramian alone could not resolve
    their distances; ``gramian`` recomputes it centred, so the selection matches float64."""
    generator = torch.Generator().manual_seed(5)
    common = 1e3 * torch.randn(1, 1000, generator=generator, dtype=torch.float64)
    rows = common + 1e-3 * torch.randn(8, 1000, generator=generator, dtype=torch.float64)
    rows[5] += 0.05 * torch.randn(1000, generator=generator, dtype=torch.float64)  # still within 1e-4 of the norm
    expected = published_selection(rows, f=2, m=5)
    assert 5 not in expected
    result = Krum(f=2, m=5)(inputs(rows.float()))
    assert result.weights.nonzero().flatten().tolist() == expected


def test_identical_rows_give_that_row() -> None:
    rows = torch.randn(1, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64).expand(5, 6).clone()
    for aggregator in (Krum(f=1), Krum(f=1, m=3), Krum(f=1, m=3, then=UPGrad(solver="nnls"))):
        torch.testing.assert_close(aggregator(inputs(rows)).direction, rows[0])


@pytest.mark.parametrize(("k", "f"), [(1, 0), (2, 0), (4, 1), (6, 2)])
def test_too_few_rows_for_f_raise_naming_the_requirement(k: int, f: int) -> None:
    rows = torch.randn(k, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"f={f} needs more than 2f \+ 2 = {2 * f + 2} rows .*got {k}"):
        Krum(f=f)(inputs(rows))


def test_more_selected_rows_than_rows_raise() -> None:
    with pytest.raises(ValueError, match="m=6"):
        Krum(f=1, m=6)(inputs(torch.randn(5, 3, dtype=torch.float64)))


def test_then_applies_the_inner_aggregator_to_the_selected_rows_only() -> None:
    generator = torch.Generator().manual_seed(7)
    rows = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    rows[3] *= 100.0  # far from the rest: never selected
    counts = torch.arange(1.0, 9.0, dtype=torch.float64)
    selected = published_selection(rows, f=2, m=4)
    assert 3 not in selected
    index = torch.tensor(selected)
    for inner in (PCGrad(), FedAvg(), UPGrad(solver="nnls")):
        composed = Krum(f=2, m=4, then=inner)(inputs(rows, counts, torch.Generator().manual_seed(1)))
        alone = inner(inputs(rows[index], counts[index], torch.Generator().manual_seed(1)))
        torch.testing.assert_close(composed.direction, alone.direction)
        expected_weights = torch.zeros(8, dtype=torch.float64)
        expected_weights[index] = alone.weights
        torch.testing.assert_close(composed.weights, expected_weights)
    # example counts weight the selected rows only when the inner aggregator uses them
    weighted = Krum(f=2, m=4, then=FedAvg())(inputs(rows, counts)).direction
    torch.testing.assert_close(weighted, counts[index] @ rows[index] / counts[index].sum())
    torch.testing.assert_close(Krum(f=2, m=4)(inputs(rows, counts)).direction, rows[index].mean(dim=0))


def test_then_is_parsed_as_a_component_and_round_trips() -> None:
    aggregator = parse(Aggregator, {"name": "krum", "f": 2, "m": 5, "then": {"name": "upgrad", "solver": "nnls"}}, PATH)
    assert aggregator == Krum(f=2, m=5, then=UPGrad(solver="nnls"))
    assert "then=UPGrad(reg_eps=0.0001, solver='nnls')" in repr(aggregator)
    assert repr(Krum()) == "Krum(f=1, m=1, then=FedAvg(weighted=False))"  # the paper's rule


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"f": -1}, PATH),
        ({"m": 0}, PATH),
        ({"then": {"name": "pcgrad"}}, PATH),  # m = 1: nothing to combine
        ({"m": 3, "then": {"name": "gradnorm"}}, f"{PATH}.then.name"),
        ({"m": 3, "then": {"name": "trimmed_mean", "beta": 0.6}}, f"{PATH}.then"),
        ({"m": 3, "then": {"weighted": 1}}, f"{PATH}.then.weighted"),  # keeps the default's name, fedavg
    ],
)
def test_bad_settings_are_config_errors_naming_the_key_path(config: dict, path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(Aggregator, {"name": "krum", **config}, PATH)
    assert raised.value.path == path


def test_a_config_that_can_never_give_krum_enough_updates_is_refused_before_training():
    from fedmtl.config.loading import load_config

    with pytest.raises(ConfigError, match="needs at least 9 client updates per round; the server samples 8") as caught:
        load_config(None, ["server.aggregator={name: krum, f: 3}"])  # 8 clients, K > 2f + 2 = 8 impossible
    assert caught.value.path == "server.aggregator"
    with pytest.raises(ConfigError, match="samples 4"):
        load_config(None, ["server.aggregator={name: krum, f: 2}", "server.fraction_fit=0.5"])
    with pytest.raises(ConfigError, match="tasks per client") as caught:
        load_config(None, ["client.surgery={name: krum, f: 1}"])  # default clients hold 2 tasks; Krum needs 5
    assert caught.value.path == "client.surgery"
    assert load_config(None, ["server.aggregator={name: krum, f: 2, m: 4}"]).server.aggregator.min_rows() == 7


def test_the_messages_name_the_rule_and_the_way_out() -> None:
    with pytest.raises(ValueError) as raised:
        Krum(f=1)(inputs(torch.randn(4, 3, dtype=torch.float64)))
    assert str(raised.value) == (
        "krum with f=1 needs more than 2f + 2 = 4 rows (client updates), got 4: "
        "lower f or aggregate more clients per round"
    )
    for settings, message in [
        ({"f": -1}, "f must be >= 0, got -1"),
        ({"m": 0}, "m must be >= 1, got 0"),
        ({"then": PCGrad()}, "then=PCGrad() would combine a single selected row: set m >= 2"),
    ]:
        with pytest.raises(ValueError) as raised:
            Krum(**settings)
        assert str(raised.value) == message


def test_ties_go_to_the_lower_row_index() -> None:
    # f = 1, K = 6: the 3 nearest others count. Rows 1, 3 and 4 coincide: scores 0 + 0 + 1 = 1 each;
    # row 2 (distance 1 from each of them) scores 3; rows 0 and 5 are far.
    rows = torch.tensor([[50.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 60.0]])
    rows = rows.double()
    assert Krum(f=1)(inputs(rows)).weights.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert Krum(f=1, m=2)(inputs(rows)).weights.tolist() == [0.0, 0.5, 0.0, 0.5, 0.0, 0.0]
    many = torch.zeros(40, 2, dtype=torch.float64)  # 40 identical rows: every score 0, the first m win
    assert Krum(f=3, m=5)(inputs(many)).weights.nonzero().flatten().tolist() == [0, 1, 2, 3, 4]


def conflicting_rows_and_an_outlier() -> torch.Tensor:
    """Six small rows in three dimensions that conflict pairwise in varied orders, and one far row."""
    generator = torch.Generator().manual_seed(5)
    small = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    return torch.cat([small, torch.full((1, 3), 1e3, dtype=torch.float64)])


def test_the_inner_aggregator_draws_from_the_callers_generator() -> None:
    rows = conflicting_rows_and_an_outlier()
    index = torch.tensor(published_selection(rows, f=1, m=4))
    counts = torch.ones(7, dtype=torch.float64)
    composed = Krum(f=1, m=4, then=PCGrad())(inputs(rows, counts, torch.Generator().manual_seed(5))).direction
    seeded = PCGrad()(inputs(rows[index], counts[index], torch.Generator().manual_seed(5))).direction
    fixed_order = PCGrad()(inputs(rows[index], counts[index])).direction
    assert not torch.allclose(seeded, fixed_order)  # the visiting order matters for these rows
    torch.testing.assert_close(composed, seeded, rtol=0, atol=1e-15)


def test_the_inner_aggregator_receives_the_selected_rows_losses() -> None:
    from fedmtl.methods.aggregation import MGDA

    rows = conflicting_rows_and_an_outlier() + 2.0  # the origin outside the hull: a non-zero min-norm point
    index = torch.tensor(published_selection(rows, f=1, m=4))
    losses = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25, 3.0, 1.5], dtype=torch.float64)
    counts = torch.ones(7, dtype=torch.float64)
    composed = Krum(f=1, m=4, then=MGDA(normalization="loss"))(AggregationInput(rows, counts, losses=losses))
    # MGDA with loss normalisation on the selected rows: min-norm point of the rows g_i / loss_i
    alone = MGDA(normalization="loss")(AggregationInput(rows[index], counts[index], losses=losses[index]))
    unit = MGDA(normalization="loss")(AggregationInput(rows[index], counts[index], losses=torch.ones(4)))
    assert not torch.allclose(alone.direction, unit.direction)
    torch.testing.assert_close(composed.direction, alone.direction, rtol=0, atol=1e-12)
    # without losses the selection and the default mean need none
    plain = Krum(f=1, m=4)(AggregationInput(rows, counts))
    torch.testing.assert_close(plain.direction, rows[index].mean(dim=0))


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_the_gramian_precision_reaches_the_scores_and_the_inner_aggregator(precision: str) -> None:
    generator = torch.Generator().manual_seed(12)
    rows = torch.randn(7, 50, generator=generator).float()
    counts = torch.ones(7, dtype=torch.float64)
    index = torch.tensor(published_selection(rows.double(), f=1, m=4))

    def given(matrix: torch.Tensor, n: torch.Tensor) -> AggregationInput:
        return AggregationInput(matrix, n, gramian_precision=precision)

    result = Krum(f=1, m=4, then=UPGrad(solver="nnls"))(given(rows, counts))
    exact = rows.double() @ rows.double().T  # float64 products of the float32 rows
    single = (rows @ rows.T).double()  # one float32 product (well conditioned rows: kept as is)
    assert not torch.equal(exact, single)
    torch.testing.assert_close(result.gramian, exact if precision == "float64" else single, rtol=1e-15, atol=0)
    alone = UPGrad(solver="nnls")(given(rows[index], counts[index]))
    torch.testing.assert_close(result.direction, alone.direction, rtol=0, atol=0)
    other = "float32" if precision == "float64" else "float64"
    different = UPGrad(solver="nnls")(AggregationInput(rows[index], counts[index], gramian_precision=other))
    assert not torch.equal(alone.direction, different.direction)


def test_scores_are_float64_sums_of_squared_distances_from_a_float32_gramian() -> None:
    from fedmtl.methods.aggregation.krum import krum_scores

    # entries exact in float32, but their sums need more than 24 bits: 2^24 + 1 rounds to 2^24 in float32
    gram = torch.tensor([[2.0**24, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 4.0]], dtype=torch.float32)
    scores = krum_scores(gram, f=0)  # K - f - 2 = 1 nearest other row
    assert scores.dtype == torch.float64
    # squared distances: 0-1 2^24 + 1, 0-2 2^24 + 4, 1-2 5
    assert scores.tolist() == [2.0**24 + 1, 5.0, 5.0]
