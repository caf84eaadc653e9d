"""Root conftest: Hypothesis profiles for the test suite (CI's is small and derandomized)."""
