"""A regression case a property test found: UPGrad's NNLS projection on a singular Gramian (zero rows and
antiparallel rows) returned huge, non-optimal weights, so its direction depended on the order of the rows."""

from __future__ import annotations

import numpy as np
import torch

from fedmtl.methods.aggregation import AggregationInput
from tests.aggregation._specs import build


def test_upgrad_by_nnls_on_zero_and_antiparallel_rows_gives_the_hand_derived_direction():
    rows = np.zeros((5, 6))
    rows[0, 5], rows[3, 5] = 1.0, -1.0  # antiparallel: each cancels the other
    rows[4, 4] = rows[4, 5] = 1.0  # its e5 part cancels against row 3; e4 cannot be cancelled
    # by hand: every row's projection reaches 0 except row 4's, which reaches e4: the mean is e4 / 5
    expected = np.zeros(6)
    expected[4] = 0.2
    aggregator = build({"name": "upgrad", "solver": "nnls", "reg_eps": 0.0})
    for scale in (1e-9, 1.0, 1e6):
        for order in ([0, 1, 2, 3, 4], [0, 1, 2, 4, 3], [4, 3, 2, 1, 0]):
            matrix = torch.tensor(rows[order] * scale)
            inputs = AggregationInput(matrix, torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
            direction = aggregator(inputs).direction.numpy()
            np.testing.assert_allclose(direction, expected * scale, rtol=0, atol=1e-9 * scale)
