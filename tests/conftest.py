"""Shared test set-up: the data directory, and the backends under test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "CELLBENCH_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["CELLBENCH_DATA"] = str(SHARED_DATA)

DATA = Path(os.environ["CELLBENCH_DATA"]) if os.environ.get("CELLBENCH_DATA") else None


def needs_data(relative: str, what: str) -> pytest.MarkDecorator:
    """Skip, naming the file, when the real data set is not in $CELLBENCH_DATA."""
    return pytest.mark.skipif(
        DATA is None or not (DATA / relative).is_file(),
        reason=f"{what} not found in $CELLBENCH_DATA (set it to ../shared/data)",
    )


@pytest.fixture
def one_thread():
    """Small models on shared cores: one thread avoids oversubscription stalls (as the CLI does)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    """Without a GPU, tests marked `cuda` are deselected at collection, not skipped one by one:
    a CPU machine collects no CUDA item (`pytest --collect-only`), and on a GPU machine every
    declared CUDA capability runs and must pass."""
    if CUDA:
        return
    cuda = [item for item in items if item.get_closest_marker("cuda")]
    if cuda:
        config.hook.pytest_deselected(items=cuda)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
