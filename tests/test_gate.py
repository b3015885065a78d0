"""The correctness gate: a sweep never times what it has not checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cells
from bench import cli, gate
from bench.measure import Case, build_workload
from bench.records import RECORDS_FILE

TINY = ["--input-size", "4", "--hidden-size", "6", "--batch", "3", "--seq-len", "5"]


@pytest.fixture
def faulty(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import candidates.faulty as module

    module.register()
    yield module
    for kind in ("rnn", "gru", "lstm"):
        for name in module.FAULTY:
            cells.unregister(kind, name)


@pytest.mark.parametrize("mode", ["train", "infer", "generate"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_real_backends_pass_and_faulty_ones_fail_in_every_mode(faulty, kind, mode):
    # `linear` ignores the state: in train mode the missing hx and weight_hh gradients show first
    for backend, expected in (
        ("native", None),
        ("fused", None),
        ("wrongshape", ("has shape",)),
        ("nan", ("not finite",)),
        ("linear", ("differs from float64", "no gradient")),
    ):
        case = Case(kind, backend, mode, 4, 6, 1, 1 if mode == "generate" else 3, 5, threads=1)
        _, module = build_workload(case)
        verdict = gate.check(module, case)
        if expected is None:
            assert verdict.passed and verdict.worst < 1 and verdict.seconds > 0, (
                backend,
                verdict.reason,
            )
        else:
            assert not verdict.passed and verdict.reason.startswith(f"{mode} check failed: "), (
                verdict.reason
            )
            assert any(text in verdict.reason for text in expected), (backend, verdict.reason)


def test_a_module_that_raises_in_the_check_is_incorrect_with_the_reason(faulty):
    case = Case("lstm", "raises", "infer", 4, 6, 1, 3, 5, threads=1)
    _, module = build_workload(case)
    verdict = gate.check(module, case)
    assert not verdict.passed and verdict.reason.startswith(
        "infer check failed: RuntimeError: faulty backend 'raises'"
    )


def test_a_sweep_times_and_ranks_only_the_correct_backend(faulty, tmp_path):
    out = tmp_path / "run"
    argv = [
        *(
            "run --import candidates.faulty --kinds lstm --backends wrongshape,nan,linear,native "
            "--modes train"
        ).split(),
        *TINY,
        *(
            "--threads 1 --no-peak --no-memory --min-run-time 0.005 --min-rounds 2 --max-rounds 3 "
            "--out"
        ).split(),
        str(out),
    ]
    assert cli.main(argv) == 1  # three incorrect cases: exit 1
    records = [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]
    cases = {r["backend"]: r for r in records if r["type"] == "case"}
    for name in ("wrongshape", "nan", "linear"):
        r = cases[name]
        assert r["status"] == "incorrect" and r["error"].startswith("train check failed: "), r
        assert r["round_times"] == [] and r["tokens_per_s"] is None and r["ratio_to_native"] is None
    assert cases["native"]["status"] == "ok" and cases["native"]["rounds"] >= 2
    assert cases["native"]["check_error"] < 1
    assert cli.main(["report", str(out), "--output", str(tmp_path / "r.md"), "--no-plots"]) == 0
    text = (tmp_path / "r.md").read_text()
    fastest = text.split("## Fastest backend per shape")[1].split("##")[0]
    assert "native" in fastest and not any(n in fastest for n in ("wrongshape", "nan", "linear"))
    failures = text.split("## Failed, incorrect")[1].split("##")[0]
    assert (
        all(n in failures for n in ("wrongshape", "nan", "linear")) and "| incorrect |" in failures
    )
