"""The DP mechanisms' arithmetic, draw by draw: each noised value equals the formula evaluated on the
same draws of a generator seeded alike (so a dropped generator, a wrong sign or a wrong dtype shows),
and Andrew et al.'s split of the noise between the update and the count at its edges."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from fedmtl.methods.accounting import central_epsilon
from fedmtl.methods.privacy import CentralMechanism, gaussian, privatise_update, update_noise_multiplier


def generator(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_locally_noised_update_is_the_clipped_update_plus_the_generators_next_draws_times_z_c():
    update = torch.tensor([3.0, 4.0, 0.0])  # norm 5, clipped to 2
    noised = privatise_update(update, 2.0, 0.5, generator())
    draws = torch.randn(3, generator=generator())
    assert torch.equal(noised, torch.tensor([1.2, 1.6, 0.0]) + draws * (0.5 * 2.0))


@pytest.mark.parametrize(
    ("z", "sigma_b", "expected"),
    [
        (1.0, 1.0, (1 - 0.25) ** -0.5),
        (2.0, 2.0, (0.25 - 1 / 16) ** -0.5),  # 2.309..: z^-3 would give 4
        (1.0, 0.5, math.inf),  # (2 sigma_b)^-2 = z^-2: the count's noise costs the whole budget
        (1.0, 0.4, math.inf),  # more than the budget
        (1.0, 0.0, math.inf),  # a count released without noise
        (0.0, 1.0, math.inf),  # no noise on the update: nothing to split
    ],
)
def test_the_update_noise_multiplier_splits_the_budget_with_the_count(z, sigma_b, expected):
    assert update_noise_multiplier(z, sigma_b) == pytest.approx(expected, rel=1e-12)


def test_the_update_multiplier_is_split_only_under_adaptive_clipping_with_noise():
    assert CentralMechanism(1.0, 0.5, 0.5, 0.2, 1.0).update_multiplier == pytest.approx((4 - 0.25) ** -0.5)
    assert CentralMechanism(1.0, 0.5, None, 0.2, 1.0).update_multiplier == 0.5  # fixed bound: z itself
    assert CentralMechanism(1.0, 0.0, 0.5, 0.2, 1.0).update_multiplier == 0.0  # no noise, adaptive bound


def test_central_noise_is_the_generators_next_draws_times_z_c_over_k():
    mechanism = CentralMechanism(2.0, 0.5, None, 0.2, 0.0)
    direction = torch.tensor([1.0, -1.0])
    noised = mechanism.noise(direction, 4, generator())
    assert torch.equal(noised, direction + torch.randn(2, generator=generator()) * (0.5 * 2.0 / 4))
    assert mechanism.clip_norm == 2.0  # a fixed bound stays


def test_the_adaptive_bound_moves_by_the_noised_count_drawn_after_the_update_noise():
    mechanism = CentralMechanism(1.0, 0.5, 0.5, 0.2, 1.5)
    matrix = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.5, 0.0], [0.0, 2.0]])  # norms 1 (on the bound), 3, 0.5, 2
    assert mechanism.clip(matrix) == 1.0
    mechanism.noise(torch.zeros(2), 4, generator())
    reference = generator()
    torch.randn(2, generator=reference)  # the update's noise comes first
    count = 2 + float(torch.randn((), generator=reference, dtype=torch.float64)) * 1.5  # 2 rows within 1.0
    assert mechanism.clip_norm == math.exp(-0.2 * (count / 4 - 0.5))


def test_without_update_noise_the_count_takes_the_generators_first_draw():
    mechanism = CentralMechanism(1.0, 0.0, 0.5, 0.2, 1.5)
    mechanism.clip(torch.tensor([[2.0], [0.5]]))
    mechanism.noise(torch.zeros(1), 2, generator())
    count = 1 + float(torch.randn((), generator=generator(), dtype=torch.float64)) * 1.5
    assert mechanism.clip_norm == math.exp(-0.2 * (count / 2 - 0.5))


def test_before_any_clip_no_row_counts_as_within_the_bound():
    mechanism = CentralMechanism(1.0, 0.0, 0.5, 0.2, 0.0)
    mechanism.noise(torch.zeros(1), 2, generator())
    assert mechanism.clip_norm == math.exp(-0.2 * (0 / 2 - 0.5))


def test_noise_takes_the_dtype_and_device_of_what_it_is_added_to():
    noise = gaussian(torch.zeros(3, dtype=torch.float64), 2.0, generator())
    assert noise.dtype == torch.float64
    assert torch.equal(noise, torch.randn(3, generator=generator(), dtype=torch.float64) * 2.0)
    assert gaussian(torch.empty(3, device="meta"), 1.0, generator()).device.type == "meta"


def test_the_accountants_convergence_warnings_stay_out_of_the_log(caplog):
    with caplog.at_level(logging.WARNING):
        epsilon = central_epsilon(1.1, 0.25, 30, 1e-5)  # the library warns for some Renyi orders here
    assert math.isfinite(epsilon) and not [r for r in caplog.records if r.name == "absl"]
