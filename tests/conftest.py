import os
import sys

import pytest

# Tests import the pack from the repository root (as ComfyUI does from custom_nodes/).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One thread per test process: the tiny models are bound by per-op overhead, not arithmetic, so a
    second thread buys nothing, and each pytest-xdist worker keeps a core of its own. A fixture rather
    than a top-level import, so that xdist's controller, which runs no test, never imports torch."""
    import torch

    torch.set_num_threads(1)
