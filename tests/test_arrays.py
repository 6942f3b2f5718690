"""Tensors to and from Flower's ArrayRecord without np.save/np.load per array: the same bytes Flower writes,
and Flower's records read back exactly, whatever wrote them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from clients.arrays import to_record, to_state

TENSORS = {
    "matrix": torch.randn(64, 32),
    "vector": torch.arange(7, dtype=torch.float64),
    "scalar": torch.tensor(3, dtype=torch.int64),  # e.g. a batch norm's num_batches_tracked
    "empty": torch.zeros(0, 5),
    "half": torch.randn(3, 2).half(),
    "mask": torch.tensor([True, False, True]),
    "bytes": torch.arange(5, dtype=torch.uint8),
    "transposed": torch.randn(4, 6).t(),  # Fortran order: np.save writes it so
    "strided": torch.randn(4, 6)[:, ::2],  # neither order: np.save writes it in C order
    "four_d": torch.randn(2, 3, 1, 4),
}


def test_a_record_has_the_bytes_flower_writes_for_every_dtype_and_shape() -> None:
    ours, flowers = to_record(TENSORS), ArrayRecord(TENSORS)
    assert list(ours) == list(flowers)
    for key in TENSORS:
        assert (ours[key].dtype, ours[key].shape, ours[key].stype) == (
            flowers[key].dtype,
            flowers[key].shape,
            flowers[key].stype,
        ), key
        assert ours[key].data == flowers[key].data, key


def test_flowers_records_read_back_exactly_and_as_fresh_tensors() -> None:
    record = ArrayRecord(TENSORS)
    back = to_state(record)
    assert list(back) == list(TENSORS)
    for key, tensor in TENSORS.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    back["matrix"] += 1  # writable and its own memory: the record is left as it was
    assert torch.equal(to_state(record)["matrix"], TENSORS["matrix"])


def test_an_array_this_module_did_not_write_is_read_by_flower() -> None:
    array = Array(np.arange(12.0).reshape(3, 4))
    array.data = array.data.replace(b"'fortran_order': False, ", b"'fortran_order':False,  ")  # same length
    record = ArrayRecord()
    record["x"] = array
    assert np.array_equal(to_state(record)["x"].numpy(), array.numpy())


def test_a_truncated_array_is_refused_as_flower_refuses_it() -> None:
    whole = to_record({"x": torch.randn(8)})["x"]
    record = ArrayRecord()
    record["x"] = Array(dtype=whole.dtype, shape=whole.shape, stype=whole.stype, data=whole.data[:-4])
    with pytest.raises(ValueError):
        to_state(record)


def test_bytes_after_the_array_are_left_to_flower_which_ignores_them() -> None:
    whole = to_record({"x": torch.randn(8)})["x"]
    record = ArrayRecord()
    record["x"] = Array(dtype=whole.dtype, shape=whole.shape, stype=whole.stype, data=whole.data + b"\0" * 4)
    assert torch.equal(to_state(record)["x"], torch.from_numpy(record["x"].numpy()))
