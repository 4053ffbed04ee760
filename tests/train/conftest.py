"""Fixtures of the training tests."""

from pathlib import Path

import pytest
import torch

from tests.train.test_training import write_tiny_dataset


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """Training runs here use one thread (for exact resume); leave other tests the default."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 12-class tone-burst set of ``write_tiny_dataset``, once per module."""
    return write_tiny_dataset(tmp_path_factory.mktemp("kws"))
