"""Hypothesis profiles: ``ci`` (small, derandomized: the default under CI=true), ``dev`` (larger,
the default elsewhere), ``fuzz`` (long campaigns). Select with ``--jacverify-profile``, the
``JACVERIFY_PROFILE`` environment variable, or Hypothesis's own ``--hypothesis-profile``.

The fuzz campaigns' ``database="profile"`` (:func:`jacverify.campaign.resolve_database`) is the
loaded profile's example database: ``.hypothesis/`` under ``dev`` and ``fuzz``, none under ``ci``."""

from __future__ import annotations

import os

__all__ = ["PROFILES", "register_profiles", "load_profile", "default_profile"]

PROFILES = ("ci", "dev", "fuzz")


def register_profiles() -> None:
    from hypothesis import HealthCheck, settings

    slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=15, derandomize=True, deadline=None,
                              database=None, print_blob=True, suppress_health_check=slow)
    settings.register_profile("dev", max_examples=60, deadline=None, print_blob=True,
                              suppress_health_check=slow)
    settings.register_profile("fuzz", max_examples=5000, deadline=None, print_blob=True,
                              suppress_health_check=slow)


def default_profile() -> str:
    """``JACVERIFY_PROFILE`` if set, else ``ci`` under CI, else ``dev``."""
    return os.environ.get("JACVERIFY_PROFILE") or ("ci" if os.environ.get("CI") else "dev")


def load_profile(name: str | None = None) -> str:
    """Register the profiles and load ``name`` (default: :func:`default_profile`)."""
    from hypothesis import settings

    name = name or default_profile()
    if name not in PROFILES:
        raise ValueError(f"jacverify profile {name!r} is not one of {', '.join(PROFILES)}")
    register_profiles()
    settings.load_profile(name)
    return name
