"""Tensors to and from Flower's :class:`ArrayRecord`, in exactly the bytes Flower writes.

Flower serialises each array with ``np.save`` and reads it back with ``np.load`` (``Array.from_numpy_ndarray``,
``Array.numpy``): a file header built and parsed (``ast.literal_eval``) per array, 30-55 us each on the
2-core machine, about 1 ms of a training message of the default model (encoder in, private heads in and
out, encoder out: 24 arrays); this module's are 3-12 us. The
header depends only on the dtype, shape and memory order, so it is built once for each and reused: an
array's bytes are that header and the raw data, as ``np.save`` writes them (``tests/test_arrays.py`` checks them
byte for byte against Flower's). Anything else (another serialisation type, a header this module did not
write) is read by Flower's own ``Array.numpy``.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

NUMPY = "numpy.ndarray"  # flwr's SType.NUMPY


@functools.lru_cache(maxsize=4096)
def npy_header(dtype: np.dtype, shape: tuple[int, ...], fortran_order: bool = False) -> bytes:
    """What ``np.save`` writes before an array's data (format 1.0, padded to 64 bytes)."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def to_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``ArrayRecord(state)``, the same bytes, without ``np.save`` per tensor."""
    record = ArrayRecord()
    for key, tensor in state.items():
        array = tensor.detach().cpu().numpy()
        fortran = array.flags.f_contiguous and not array.flags.c_contiguous  # as np.save decides
        shape = tuple(array.shape)
        # the raw data in the header's order, read in place where it lies so: join copies it once
        raw = (array.T if fortran else array).data if array.flags.forc else array.tobytes()
        data = b"".join((npy_header(array.dtype, shape, fortran), raw))
        record[key] = Array(dtype=str(array.dtype), shape=shape, stype=NUMPY, data=data)
    return record


def to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``dict(record.to_torch_state_dict())``: a header this module writes is skipped, not parsed."""
    return {key: torch.from_numpy(_numpy(array)) for key, array in record.items()}


def _numpy(array: Array) -> np.ndarray:
    if array.stype == NUMPY:
        dtype, shape = np.dtype(array.dtype), tuple(array.shape)
        for order in ("C", "F"):
            header = npy_header(dtype, shape, order == "F")
            if array.data.startswith(header) and len(array.data) == len(header) + dtype.itemsize * math.prod(shape):
                flat = np.frombuffer(array.data, dtype=dtype, offset=len(header))
                return flat.reshape(shape, order=order).copy(order="K")  # writable, in its own memory
    return array.numpy()
