"""Keep Flower and Ray offline and quiet wherever fedmtl starts them."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
    # Ray binds its local services to loopback only (by default they listen on every interface)
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def set_offline_env() -> None:
    """Set (without overriding the user's explicit choices) the offline variables."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
