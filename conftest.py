"""Root conftest: pytester for the plugin tests, and jacverify's Hypothesis profile (``ci`` under
CI=true, ``dev`` elsewhere; JACVERIFY_PROFILE or --jacverify-profile picks another)."""

from jacverify.profiles import load_profile

pytest_plugins = ["pytester"]

load_profile()
