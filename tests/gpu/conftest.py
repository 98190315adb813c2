"""tests/gpu needs CUDA: without it every test here is still collected (imports are checked) and
reported as skipped, so `python -m pytest -q` passes on a CPU box."""
from pathlib import Path

import pytest
import torch

GPU_TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="tests/gpu needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if GPU_TESTS_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
