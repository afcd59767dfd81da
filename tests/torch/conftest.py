"""Shared fixtures for the PyTorch front-end tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread_torch():
    """Run a module's tests on one intra-op thread.

    The models here are small: one thread is as fast when the machine is idle and many
    times faster when other jobs share its cores (spinning worker threads then dominate).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
