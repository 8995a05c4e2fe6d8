import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tiny test models would spend more time compiling than sampling: tests run the UNets in PyNative, and
# the compiled path (the default) is checked against it in tests/test_pipeline.py.
os.environ.setdefault("PANGU_JIT", "0")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def ms():
    """MindSpore, set up once for the CPU in PyNative mode."""
    from pangu_cli import runtime

    runtime.setup("CPU")
    import mindspore

    return mindspore


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return torch
