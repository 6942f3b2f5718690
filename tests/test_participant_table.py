"""The participants as columns (:class:`ParticipantTable`): the same participants the layouts formed one
object per participant, in a few megabytes for a million clients, and sorted without building them."""

from __future__ import annotations

import pickle
import random
import tracemalloc

import numpy as np
import pytest

from fedmtl.config.loading import load_config
from fedmtl.data.participants import (
    POOLED_CLIENT_ID,
    Participant,
    ParticipantTable,
    client_ids,
    participants_of_client,
    task_sets,
)
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.federation.sampling import client_order, in_client_order

MIB = 2**20


def one_per_object(cfg) -> tuple[Participant, ...]:  # type: ignore[no-untyped-def]
    """The layouts as first written: one Participant per (member) or per (member, task), or one pooled."""
    names = cfg.data.task_names()
    members = [(c, cfg.clients.tasks_of(c, names)) for c in cfg.clients.member_ids()]
    layout = cfg.clients.participants.name
    if layout == "clients":
        return tuple(Participant(i, (c,), tasks) for i, (c, tasks) in enumerate(members))
    if layout == "client_tasks":
        pairs = [(c, t) for c, tasks in members for t in tasks]
        return tuple(Participant(i, (c,), (t,)) for i, (c, t) in enumerate(pairs))
    held = {t for _, tasks in members for t in tasks}
    return (Participant(0, tuple(c for c, _ in members), tuple(t for t in names if t in held), pooled=True),)


LAYOUTS = [
    ["clients.count=7"],
    ["clients.count=7", "clients.tasks_per_client=3"],
    ["clients.count=9", "clients.members=[8, 2, 5, 0]"],
    ["clients.count=6", "clients.only_tasks=[anchor]", "clients.members=[0, 3]"],
    ["clients.count=3", "clients.tasks=[[anchor], [opposed, anchor], [anchor]]"],
    ["clients.count=7", "clients.participants=client_tasks"],
    ["clients.count=9", "clients.participants=client_tasks", "clients.members=[8, 2, 5]"],
    ["clients.count=3", "clients.participants=client_tasks", "clients.tasks=[[anchor], [opposed, anchor], [anchor]]"],
    ["clients.count=5", "clients.participants=pooled", "server.cohorts=participant"],
]


@pytest.mark.parametrize("settings", LAYOUTS, ids=lambda s: " ".join(s))
def test_every_layout_forms_the_participants_it_formed_one_object_each(settings: list[str]) -> None:
    cfg = load_config(None, ["server.aggregator.name=fedavg", *settings])
    participants, reference = cfg.participants(), one_per_object(cfg)
    assert tuple(participants) == reference
    assert [participants[i] for i in range(len(participants))] == list(reference)
    assert client_ids(participants).tolist() == [p.client_id for p in reference]
    assert task_sets(participants) == {p.tasks for p in reference}
    assert tuple(in_client_order(participants)) == tuple(sorted(reference, key=client_order))


def test_a_table_reads_like_a_tuple() -> None:
    table = ParticipantTable(np.array([4, 1, 4]), (("a",), ("a", "b")), np.array([1, 0, 0]))
    assert table[-1] == table[2] == Participant(2, (4,), ("a",))
    assert table[1:] == (Participant(1, (1,), ("a",)), Participant(2, (4,), ("a",)))
    assert len(table) == 3 and table.task_sets() == {("a",), ("a", "b")}
    assert table[-3] == table[0] == Participant(0, (4,), ("a", "b"))
    for outside in (3, -4):
        with pytest.raises(IndexError, match=f"participant {outside} of 3"):
            table[outside]
    with pytest.raises(ValueError):
        client_ids(table)[0] = 7  # the column is read-only
    assert table == pickle.loads(pickle.dumps(table)) and table != table.in_client_order()


def test_sorting_by_client_keeps_partitions_in_order_within_a_client_and_leaves_a_sorted_table_as_it_is() -> None:
    clients = random.Random(0).choices(range(20), k=60)
    table = ParticipantTable(np.array(clients), (("a",),), np.zeros(60, dtype=np.int64))
    ordered = table.in_client_order()
    assert tuple(ordered) == tuple(sorted(table, key=client_order))
    assert [ordered[i] for i in range(60)] == list(ordered)  # read one by one: partitions from the column
    assert ordered.in_client_order() is ordered


@pytest.mark.parametrize(
    ("clients", "partitions", "expected"),
    [
        ([0, 2, 1], [7, 8, 9], [(7, 0), (9, 1), (8, 2)]),  # the first is the smallest, the rest are not in order
        ([0, 1, 1], [9, 5, 2], [(9, 0), (2, 1), (5, 1)]),  # one client twice, its partitions the wrong way round
        ([1, 1, 0], [5, 2, 9], [(9, 0), (2, 1), (5, 1)]),
    ],
)
def test_a_table_with_its_own_partitions_sorts_by_client_then_partition(clients, partitions, expected) -> None:
    tasks = np.zeros(3, dtype=np.int64)
    table = ParticipantTable(np.array(clients), (("a",),), tasks, np.array(partitions))
    ordered = table.in_client_order()
    assert [(p.index, p.client_id) for p in ordered] == expected
    assert [(ordered[i].index, ordered[i].client_id) for i in range(3)] == expected


def test_a_pooled_participant_is_every_member_with_the_tasks_any_holds() -> None:
    cfg = load_config(None, ["clients.count=4", "clients.participants=pooled", "server.cohorts=participant"])
    (pooled,) = cfg.participants()
    assert pooled.clients == (0, 1, 2, 3) and pooled.client_id == POOLED_CLIENT_ID and pooled.pooled


def test_a_million_clients_take_megabytes_in_the_config_checks_and_the_server() -> None:
    """Loading the config (its checks build the participants) and the server's cohorts, traced together
    after a 50-client warm-up (imports, first tensors): 26 MiB at the peak; one object per client came
    to 296 MiB (participants, cohort assignment, sorted members)."""
    ServerAlgorithm(load_config(None, ["clients.count=50"]))
    tracemalloc.start()
    try:
        cfg = load_config(None, ["clients.count=1000000", "server.fraction_fit=0.00001"])
        algorithm = ServerAlgorithm(cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 * MIB, f"peak {peak / MIB:.0f} MiB"
    (cohort,) = algorithm.cohorts
    assert len(cohort.members) == 1_000_000 and cohort.members is cfg.participants()
    trained = cohort.sampler.train(cohort.members)
    assert len(trained) == 10 and [p.client_id for p in trained] == sorted(p.client_id for p in trained)


def test_the_participants_of_a_client_are_found_in_its_column_and_a_pooled_one_is_nobodys() -> None:
    split = load_config(None, ["clients.count=4", "clients.participants=client_tasks", "server.aggregator.name=fedavg"])
    found = participants_of_client(split.participants(), 2)
    assert [(p.client_id, p.tasks) for p in found] == [
        (2, (t,)) for t in split.clients.tasks_of(2, split.data.task_names())
    ]
    pooled = load_config(None, ["clients.count=4", "clients.participants=pooled", "server.cohorts=participant"])
    assert participants_of_client(pooled.participants(), POOLED_CLIENT_ID) == []
