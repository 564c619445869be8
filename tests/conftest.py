"""Shared fixtures: the real 10,000-digit mirror, tiny synthetic MNIST folders, deterministic torch."""

from pathlib import Path

import pytest
import torch

from tests.helpers import data


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``../shared/data`` (or ``$SECURE_ML_DATA_DIR``); in CI its absence is a failure, never a skip."""
    return data.real_data_dir()


@pytest.fixture
def tiny_mnist(tmp_path) -> Path:
    return data.make_mnist_dir(tmp_path / "data")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _split_key_in_tmp(tmp_path_factory, monkeypatch):
    """Runs that `fit` create the split-check key; keep it in a per-session temp folder, never in the user's home."""
    monkeypatch.setenv("SECURE_ML_KEY_DIR", str(tmp_path_factory.getbasetemp() / "secure-ml-keys"))
