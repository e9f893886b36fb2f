"""Modules the tests share (fixtures live in tests/conftest.py): serving the demo, hostile inputs, a Hub
cache on disk, perturbed heads, a training entry that dumps each rank's heads."""
