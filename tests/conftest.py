"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run single-threaded, as the datasets do (data._single_threaded): on a busy 2-core machine,
    intra-op threads on small tensors and tiny networks make each test many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
