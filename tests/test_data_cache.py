"""A process keeps clients' data up to a byte budget, least recently used dropped first."""

from __future__ import annotations

import pytest

from fedmtl.config.loading import load_config
from fedmtl.local import data


@pytest.fixture
def empty_cache(monkeypatch):
    monkeypatch.setattr(data, "_data_cache", type(data._data_cache)())
    monkeypatch.setattr(data, "_cached_bytes", 0)
    return data._data_cache


def test_clients_are_kept_up_to_the_byte_budget_least_recently_used_dropped_first(monkeypatch, empty_cache):
    cfg = load_config(None, ["clients.count=5"])
    size = {client: data.data_bytes(data.client_data(cfg, client)) for client in range(4)}
    empty_cache.clear()
    monkeypatch.setattr(data, "_cached_bytes", 0)
    monkeypatch.setattr(data, "DATA_CACHE_BYTES", size[2] + size[0] + size[3])
    for client in (1, 2, 0, 3):  # 1 is the oldest when 3 comes; 2, 0 and 3 fit exactly
        data.client_data(cfg, client)
    assert [key[1] for key in empty_cache] == [2, 0, 3] and data._cached_bytes == size[2] + size[0] + size[3]
    first = empty_cache[(data.data_key(cfg), 0)][0]
    assert data.client_data(cfg, 0).train["anchor"] is first.train["anchor"]  # kept: the same tensors


def test_the_newest_client_is_kept_even_past_the_budget(monkeypatch, empty_cache):
    cfg = load_config(None, ["clients.count=3"])
    monkeypatch.setattr(data, "DATA_CACHE_BYTES", 1)
    data.client_data(cfg, 0)
    data.client_data(cfg, 1)
    assert [key[1] for key in empty_cache] == [1] and data._cached_bytes == data.data_bytes(
        empty_cache[(data.data_key(cfg), 1)][0]
    )
