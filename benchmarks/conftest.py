"""pytest-benchmark speed suite: every backend at a few fixed shapes (`nox -s regress`).

    pytest benchmarks --benchmark-enable --benchmark-autosave          # store a run (.benchmarks/)
    pytest benchmarks --benchmark-enable --benchmark-compare --benchmark-compare-fail=median:10%
                                                                      # stable machines only

The project's pytest addopts contain --benchmark-disable, so without --benchmark-enable each case
runs once as a smoke test and nothing is timed. Options added here:
  --cellbench-import MODULE   import MODULE first (it registers third-party backends); repeatable
  --cellbench-kinds K,K       cell kinds (default rnn,gru,lstm)
  --cellbench-backends B,B    backends (default: the available built-ins plus imported ones)
  --cellbench-threads N       torch threads during timing (default 1)
On shared, noisy machines use `python -m bench compare` (interleaved ratios) as the gate instead;
see docs/validate.md.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name -> (input_size, hidden_size, batch, seq_len); generate mode uses batch 1
SHAPES = {"d2l": (28, 256, 32, 35), "small": (28, 64, 8, 35)}
MODES = ("train", "infer", "generate")


def pytest_addoption(parser):
    group = parser.getgroup("cellbench")
    group.addoption("--cellbench-import", action="append", default=[], metavar="MODULE")
    group.addoption("--cellbench-kinds", default="rnn,gru,lstm")
    group.addoption("--cellbench-backends", default="")
    group.addoption("--cellbench-threads", type=int, default=1)


def _cases(config):
    import cells

    for module in config.getoption("--cellbench-import"):
        importlib.import_module(module)
    wanted = [b for b in config.getoption("--cellbench-backends").split(",") if b]
    imported = bool(config.getoption("--cellbench-import"))
    for kind in [k for k in config.getoption("--cellbench-kinds").split(",") if k]:
        available = cells.backends(kind)
        if wanted:
            names = [b for b in wanted if b in available]
        else:
            names = [b for b in available if b in cells.registry.BUILTIN or imported]
        for backend in names:
            for shape in SHAPES:
                for mode in MODES:
                    if mode == "generate" and shape != "d2l":
                        continue  # batch 1, one step at a time: the shape matters little
                    yield kind, backend, mode, shape


def pytest_generate_tests(metafunc):
    if {"kind", "backend", "mode", "shape"} <= set(metafunc.fixturenames):
        cases = list(_cases(metafunc.config))
        metafunc.parametrize(
            "kind, backend, mode, shape", cases, ids=[f"{k}-{b}-{m}-{s}" for k, b, m, s in cases]
        )


@pytest.fixture
def dims(shape):
    """(input_size, hidden_size, batch, seq_len) of the shape named `shape`."""
    return SHAPES[shape]


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    from bench.compare import machine_info as info
    from bench.compare import machine_name

    machine_info["torch"] = torch.__version__
    machine_info["cellbench_machine"] = machine_name(info())
    machine_info["cellbench_threads"] = config.getoption("--cellbench-threads")
    machine_info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
