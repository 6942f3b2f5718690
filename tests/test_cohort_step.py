"""One cohort's aggregation step: the accepted replies' encoders become rows in order, their example
counts weight them, their training losses reach the aggregator (FedFV orders clients by loss) only when
every reply has one, and the round's diagnostics name the rows' client ids (not their participants)."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config.sections import ServerOptimizerConfig
from fedmtl.core import protocol
from fedmtl.data.participants import Participant
from fedmtl.federation.cohort import Cohort
from fedmtl.federation.sampling import Sampler
from fedmtl.federation.screening import Accepted
from fedmtl.federation.server_update import ServerUpdater
from fedmtl.methods.aggregation import AggregationInput, FedFV

INITIAL = {"w": torch.zeros(2)}
ENCODERS = [torch.tensor([-1.0, 0.0]), torch.tensor([0.5, 0.5])]  # updates (1, 0) and (-0.5, -0.5): in conflict


def cohort() -> Cohort:
    members = (Participant(0, (7,), ("t",)), Participant(1, (9,), ("t",)))
    updater = ServerUpdater(INITIAL, FedFV(alpha=0.5), ServerOptimizerConfig(), seed=0)
    return Cohort("all", members, Sampler(0, 1.0, 1.0), updater)


def accepted(losses: list[float | None]) -> list[Accepted]:
    out = []
    for participant, (client, encoder, loss) in enumerate(zip((7, 9), ENCODERS, losses)):
        report = {protocol.NUM_EXAMPLES: 4.0} | ({} if loss is None else {protocol.TRAIN_LOSS: loss})
        out.append(Accepted(participant, client, {"w": encoder}, {}, report))
    return out


def test_the_losses_reach_the_aggregator_and_the_diagnostics_name_client_ids() -> None:
    subject = cohort()
    diagnostics = subject.step(accepted([2.0, 1.0]))
    rows = torch.stack([-e for e in ENCODERS])  # global (zeros) minus each client's encoder
    expected = FedFV(alpha=0.5)(
        AggregationInput(
            rows, torch.full((2,), 4.0, dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64)
        )
    )
    torch.testing.assert_close(subject.updater.param.detach(), -expected.direction)  # SGD, lr 1
    assert diagnostics is not None and diagnostics.clients == (7, 9)


def test_without_every_loss_no_losses_are_given() -> None:
    with pytest.raises(ValueError, match="fedfv needs client losses"):
        cohort().step(accepted([2.0, None]))


def test_one_cohort_of_everyone_answers_for_each_participant_without_a_table() -> None:
    from fedmtl.federation.cohort import OnlyCohort

    only = cohort()
    index = OnlyCohort(only, 2)
    assert index[0] is only and index[1] is only and list(index) == [0, 1] and len(index) == 2
    for stranger in (-1, 2):  # a reply claiming a participant the federation does not have
        with pytest.raises(KeyError) as raised:
            index[stranger]
        assert raised.value.args == (stranger,)  # the key named, as a dict would
