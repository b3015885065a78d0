"""Every backend x mode at fixed shapes, timed by pytest-benchmark (see conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def threads(request):
    n = request.config.getoption("--cellbench-threads")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    yield n
    torch.set_num_threads(old)


def test_speed(benchmark, threads, kind, backend, mode, shape, dims):
    from bench.measure import Case, build_workload, tokens_per_call

    input_size, hidden_size, batch, seq_len = dims
    case = Case(
        kind=kind,
        backend=backend,
        mode=mode,
        input_size=input_size,
        hidden_size=hidden_size,
        batch=1 if mode == "generate" else batch,
        seq_len=seq_len,
        threads=threads,
    )
    torch.manual_seed(0)
    call, _ = build_workload(case)
    call()  # first call (TorchScript / numba compilation) stays out of the timing
    benchmark.group = f"{kind}-{mode}-{shape}"
    benchmark.extra_info.update(case.as_dict())
    benchmark.extra_info["tokens_per_call"] = tokens_per_call(mode, case.batch, seq_len)
    benchmark(call)
