"""The server's screening of one training reply (``fedmtl.federation.screening.screen``) rule by rule,
on hand-built replies: each malformed envelope is refused with its own reason, a well-formed one is
accepted with its participant, client, encoder and heads split apart, and the update-norm bound is
inclusive. The same rules seen through Flower messages: tests/test_wire.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedmtl.core import protocol
from fedmtl.core.messages import Reply
from fedmtl.federation.screening import Accepted, screen

EXPECTED = {"encoder.w": torch.Size([2])}
HEAD = "heads.t.w"


def report(participant: int = 3, client: int = 7, examples: Any = 5.0) -> dict[str, Any]:
    return {protocol.PARTICIPANT: participant, protocol.CLIENT_ID: client, protocol.NUM_EXAMPLES: examples}


def reply(*reports: dict[str, Any], arrays: dict[str, torch.Tensor] | None = None, participant: int | None = None):
    arrays = {"encoder.w": torch.ones(2)} if arrays is None else arrays
    return Reply(participant=participant, arrays=arrays, reports=list(reports))


def screened(r: Reply, **kwargs: Any) -> Accepted | str:
    return screen(r, seen=(), expected=EXPECTED, optional={HEAD: torch.Size([1])}, **kwargs)


def test_a_well_formed_reply_is_accepted_with_its_heads_apart() -> None:
    arrays = {"encoder.w": torch.ones(2), HEAD: torch.zeros(1)}
    accepted = screened(reply(report(), arrays=arrays, participant=3))
    assert isinstance(accepted, Accepted)
    assert (accepted.participant, accepted.client_id, set(accepted.encoder), set(accepted.heads)) == (
        3,
        7,
        {"encoder.w"},
        {HEAD},
    )


def test_a_reply_speaks_in_exactly_one_record() -> None:
    why = f"a training reply needs one metrics record with '{protocol.PARTICIPANT}'"
    assert screened(reply(report(), report())) == why  # a participant, but two records
    assert screened(reply()) == why
    assert screened(reply({protocol.CLIENT_ID: 7, protocol.NUM_EXAMPLES: 5.0})) == why


@pytest.mark.parametrize("missing", [protocol.NUM_EXAMPLES, protocol.CLIENT_ID])
def test_each_of_the_counts_and_the_client_must_be_there(missing: str) -> None:
    partial = {k: v for k, v in report().items() if k != missing}
    assert screened(reply(partial)) == f"metrics must carry '{protocol.NUM_EXAMPLES}' and '{protocol.CLIENT_ID}'"


@pytest.mark.parametrize("examples", [0, 0.0, -2.0])
def test_the_example_count_must_be_positive(examples: float) -> None:
    assert screened(reply(report(examples=examples))) == f"'{protocol.NUM_EXAMPLES}' must be positive"


def test_a_reply_without_parameters_says_so() -> None:
    empty = Reply(participant=None, arrays=None, reports=[report()])
    assert screened(empty) == "a training reply needs the updated parameters"


def test_the_update_norm_bound_admits_an_update_exactly_at_it() -> None:
    def norm_of(participant: int, encoder: dict[str, torch.Tensor]) -> float:
        assert participant == 3 and set(encoder) == {"encoder.w"}
        return 2.0

    assert isinstance(screened(reply(report()), norm_of=norm_of, max_norm=2.0), Accepted)
    assert screened(reply(report()), norm_of=norm_of, max_norm=1.5) == (
        "update norm 2 exceeds server.max_update_norm 1.5"
    )
