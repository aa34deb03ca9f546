"""``one_torch_thread``: a module-scoped autouse fixture for test files of tiny convolutions (diffusers UNets);
import it into a test module to use it. One intra-op thread: two on a loaded 2-core machine spin for seconds per
call."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
