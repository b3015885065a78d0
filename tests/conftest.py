"""Shared test set-up: the data directory, and the backends under test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "CELLBENCH_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["CELLBENCH_DATA"] = str(SHARED_DATA)

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
