"""Shared test helpers (not test modules): data, trained models, a service factory. Fixtures live in conftest.py."""
