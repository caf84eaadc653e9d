"""Hypothesis strategies for jacverify cases, importable as ``jacverify.strategies``."""
