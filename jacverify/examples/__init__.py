"""Bundled examples: the README's network, correct networks, and deliberately broken twins."""
