"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The test networks are tiny: extra intra-op threads only add synchronisation, which gets very
    # expensive on a small shared CPU (seen: 20-50x slower with 2 threads under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
