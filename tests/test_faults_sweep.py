"""Fault injection through `python -m bench run`: what the records say about each faulty backend.

Each faulty backend (tests/candidates/faulty.py) runs beside `native` in one comparison group, in
worker subprocesses as in a real sweep. The sweep must go on past every fault, `native` must
keep its record, and each faulty case gets the record its fault deserves: `incorrect` for wrong
results (wrong shape, NaN, the wrong function), `failed` naming the cause for the rest; a
crash in a later timing round names that round.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
for path in (str(TESTS), str(TESTS.parent)):
    if path not in sys.path:
        sys.path.insert(0, path)

import cells  # noqa: E402
from bench import cli  # noqa: E402
from bench.records import RECORDS_FILE  # noqa: E402

TINY = ["--input-size", "4", "--hidden-size", "8", "--batch", "2", "--seq-len", "3"]
FAST = (
    "--threads 1 --modes infer --no-peak --no-memory --min-run-time 0.001 --min-repeats 2 "
    "--warmup 0 --min-rounds 2 --max-rounds 2"
).split()

# Caps the worker's address space (not the sweep's: this module is imported by both), so that
# the `hog` backend's allocation fails at once on any machine instead of filling its memory.
MEMORY_CAP = """
import multiprocessing
import resource
if multiprocessing.parent_process() is not None:
    with open("/proc/self/status") as f:
        mapped = int(next(line for line in f if line.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
"""


@pytest.fixture
def faulty():
    """The faulty backends registered in this process for one test (the sweep plans with them)."""
    from candidates import faulty as module

    module.register()
    yield module
    for kind in ("rnn", "gru", "lstm"):
        for name in module.FAULTY:
            cells.unregister(kind, name)


def sweep(tmp_path: Path, backends: str, *extra: str) -> dict[str, dict]:
    """Run the sweep; its case records by backend."""
    out = tmp_path / "run"
    argv = [
        *"run --import candidates.faulty".split(),
        *extra,
        *"--kinds lstm --backends".split(),
        backends,
        *TINY,
        *FAST,
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 1  # some case is not ok: the records are written, the status says so
    records = [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]
    by_backend = {r["backend"]: r for r in records if r["type"] == "case"}
    assert len(by_backend) == len(backends.split(",")), by_backend
    native = by_backend["native"]
    assert native["status"] == "ok" and native["median_s"] > 0 and native["rounds"] >= 1, native
    return by_backend


def test_wrong_results_are_incorrect_records(tmp_path, faulty):
    got = sweep(tmp_path, "native,wrongshape,nan,linear", "--time-limit", "120")
    for name in ("wrongshape", "nan", "linear"):
        assert got[name]["status"] == "incorrect" and got[name]["error"], got[name]
    assert "shape" in got["wrongshape"]["error"].lower(), got["wrongshape"]
    assert any(w in got["nan"]["error"].lower() for w in ("nan", "finite")), got["nan"]


def test_a_crash_in_a_later_round_is_a_failed_record_naming_the_round(
    tmp_path, faulty, monkeypatch
):
    monkeypatch.delenv("CELLBENCH_FAULTY_SEGFAULT_AT", raising=False)  # the default: in round 2
    got = sweep(tmp_path, "native,segfault", "--time-limit", "120")
    record = got["segfault"]
    assert record["status"] == "failed", record
    assert "SIGSEGV" in record["error"] and "round 2" in record["error"], record
    assert "Fatal Python error: Segmentation fault" in record["error"], record  # the log's tail


def test_exceptions_memory_errors_and_hangs_are_failed_records_and_the_sweep_goes_on(
    tmp_path, faulty, monkeypatch
):
    (tmp_path / "memory_cap_for_sweep.py").write_text(textwrap.dedent(MEMORY_CAP))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CELLBENCH_FAULTY_HANG_AT", "1")  # hangs on its first call
    got = sweep(
        tmp_path,
        *"native,raises,hog,hangs --import memory_cap_for_sweep --time-limit 10".split(),
    )
    assert got["raises"]["status"] == "failed"
    assert (
        got["raises"]["error"] == "RuntimeError: faulty backend 'raises': forward failed on purpose"
    )
    assert got["hog"]["status"] == "failed" and "memory" in got["hog"]["error"].lower(), got["hog"]
    assert got["hangs"]["status"] == "failed", got["hangs"]
    assert got["hangs"]["error"].startswith("exceeded the time limit of 10 s"), got["hangs"]
