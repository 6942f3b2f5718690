"""The privacy spent by client-level DP (``privacy``) and by sample-level DP inside a client
(``privacy.sample_level``), from Google's ``dp_accounting`` library (pinned).

Noise at the server: each round is the sampled Gaussian mechanism on the clients' clipped updates,
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` with ``q`` the fraction of clients sampled, composed
over the rounds and converted to ``(epsilon, delta)`` by the RDP accountant (Mironov, CSF 2017; the
DP-FedAvg accounting of McMahan et al., ICLR 2018). fedmtl samples a fixed number of clients without
replacement; Poisson sampling at the same rate is the usual stand-in (as in DP-FedAvg's and TensorFlow
Privacy's reporting), not an exact bound for fixed-size sampling.

Noise on each client: the server sees who took part, so no amplification by sampling is claimed; a
client that sent ``n`` updates has spent ``n`` compositions of ``GaussianDpEvent(z)``, and the run
reports the largest over the clients.
"""

from __future__ import annotations

from typing import Any

from fedmtl.core.logs import quieted


def _library() -> tuple[Any, Any]:
    """``(dp_accounting, dp_accounting.rdp)``, imported on first use: the library pulls in SciPy (about
    1.3 s), which every ClientApp process would pay at start-up, DP or not (a deployment starts one per
    message)."""
    import dp_accounting
    from dp_accounting import rdp

    return dp_accounting, rdp


def central_epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` rounds of the sampled Gaussian mechanism (noise at the server)."""
    if rounds == 0:
        return 0.0
    dp_accounting, rdp = _library()
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = rdp.RdpAccountant()
    with quieted("absl"):  # it warns for every Renyi order it cannot evaluate (left out), as events compose
        accountant.compose(event, rounds)
        return float(accountant.get_epsilon(delta))


def local_epsilon(noise_multiplier: float, updates_sent: int, delta: float) -> float:
    """One client's epsilon after sending ``updates_sent`` locally noised updates (noise on the client)."""
    if updates_sent == 0:
        return 0.0
    dp_accounting, rdp = _library()
    accountant = rdp.RdpAccountant()  # a plain Gaussian's RDP is closed-form: no warnings to quiet
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), updates_sent)
    return float(accountant.get_epsilon(delta))


def sample_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    """One client's epsilon after ``steps`` steps of DP-SGD (Abadi et al., CCS 2016) on its own data: the
    same sampled Gaussian mechanism, at ``sampling_rate`` (batch size over examples), composed ``steps``
    times. Batches are drawn by shuffling, for which Poisson sampling at the same rate is the usual
    stand-in (as in Opacus' and TensorFlow Privacy's reporting), not an exact bound."""
    return central_epsilon(noise_multiplier, min(sampling_rate, 1.0), steps, delta)
