"""Fixtures for the model tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and OpenMP workers spinning for a busy shared
    CPU made these tests several times slower; restore the setting for the tests after these."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
