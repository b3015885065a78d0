"""`python -m bench.gpu_check`, its CPU-side logic: arguments, the refusal without CUDA, the plan
(checked against the sweep's own planner), the time allowances, stopping a step at its deadline,
and the report rendered from GPU-shaped records. No GPU needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bench import cli, gpu_check, sweep
from bench.measure import Case, derived
from bench.records import CaseRecord, append

ROOT = Path(__file__).resolve().parents[1]
PEAK = {"peak_gflops": 700_000.0, "peak_source": "torch"}


def plan_commands(capsys, *argv) -> dict[str, list[str]]:
    assert gpu_check.main(["--dry-run", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[1] for line in lines if line.startswith("# ")]
    commands = [line.split() for line in lines if not line.startswith("# ")]
    assert len(names) == len(commands) == len(gpu_check.steps())
    return dict(zip(names, commands))


def test_refuses_without_cuda_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run")
    report = tmp_path / "gpu.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--report",
            str(report),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "expected a CUDA GPU" in proc.stderr and "is_available() is False" in proc.stderr
    assert not report.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--budget-s", "5"], ["--budget-s", ">= 60", "'5'"]),
        (["--budget-s", "lots"], ["--budget-s", "'lots'"]),
        (["--frobnicate"], ["unrecognized arguments", "--frobnicate"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, words):
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_dry_run_plan_covers_the_issue_and_fits_the_budget(capsys, tmp_path):
    commands = plan_commands(capsys, "--out", str(tmp_path / "o"), "--budget-s", "420")
    tests = commands.pop("cuda-tests")
    assert tests[:6] == ["python", "-m", "pytest", "-m", "cuda", "-q"]
    assert any(a.startswith("--junitxml=") for a in tests)
    shapes, backends = set(), set()
    allowances = 0.0
    for name, argv in commands.items():
        assert argv[:4] == ["python", "-m", "bench", "run"]
        args = cli.build_parser(argv[3:]).parse_args(argv[3:])  # the sweep's own parser accepts it
        assert args.device == "cuda" and args.out == str(tmp_path / "o" / name)
        assert args.budget <= args.time_limit + 1e-9 and args.budget < 420
        allowances += args.budget / 0.8
        shapes |= {
            (args.input_size[0], args.hidden_size[0], b, args.seq_len[0], args.dtype[0])
            for b in args.batch
        }
        backends |= set(args.backends)
        assert {"native", "triton"} <= set(args.backends) or "compiled" in args.backends
    assert allowances <= 420 * 0.75 + 1  # the tests get the rest
    assert {
        (28, 256, 32, 35, "float32"),
        (512, 512, 64, 100, "float32"),
        (768, 768, 16, 1024, "bfloat16"),
    } <= shapes
    assert {(64, 64, b, 100, "float32") for b in (1, 2, 4, 8, 16)} <= shapes
    assert {"native", "triton", "compiled", "fused"} <= backends


def test_each_sweep_plans_its_cases_as_cuda(capsys, tmp_path, monkeypatch):
    """The planned commands go through bench run's planner (CUDA faked as present): every case is a
    CUDA case of the intended shape, and the modes train and infer are both there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    commands = plan_commands(capsys, "--out", str(tmp_path / "o"))
    del commands["cuda-tests"]
    modes = set()
    for name, argv in commands.items():
        cases, options, _ = sweep.plan(cli.build_parser(argv[3:]).parse_args(argv[3:]))
        assert cases and {c.device for c in cases} == {"cuda"}, name
        assert options.check, "the correctness gate stays on"
        modes |= {c.mode for c in cases}
    assert {"train", "infer", "generate"} <= modes


def test_pytest_marker_selects_the_cuda_equivalence_tests_in_three_dtypes():
    """`pytest -m cuda` runs the CUDA equivalence matrix (deselected at collection on a machine
    without CUDA, so read from the module): marked `cuda`, cases in all three dtypes, each id
    grouped under its dtype by the report."""
    import test_equivalence as eq

    assert "cuda" in {m.name for m in eq.test_cuda_matches_float64_torch_nn.pytestmark}
    ids = [
        f"tests.test_equivalence::test_cuda_matches_float64_torch_nn[{p.id}]" for p in eq.CUDA_CASES
    ]
    dtypes = [gpu_check._dtype_of(i) for i in ids]
    assert set(dtypes) == set(gpu_check.DTYPES), set(dtypes)
    for i, dtype in zip(ids, dtypes):
        assert i[:-1].endswith(dtype)


def test_a_step_past_its_deadline_is_stopped_and_keeps_its_output(tmp_path):
    code = "import time; print('started', flush=True); time.sleep(60)"
    rc, timed_out, tail = gpu_check.run_step([sys.executable, "-c", code], 1.0, tmp_path / "s.log")
    assert timed_out and rc != 0 and "started" in tail
    rc, timed_out, tail = gpu_check.run_step(
        [sys.executable, "-c", "raise SystemExit(3)"], 30, tmp_path / "t.log"
    )
    assert (rc, timed_out) == (3, False)


def test_allowances_share_the_time_left_and_a_failure_stops_nothing(tmp_path):
    plan = [
        gpu_check.Step("a", "A", ["x"], 0.5, sweep=False),
        gpu_check.Step("b", "B", ["y"], 0.25),
        gpu_check.Step("c", "C", ["z"], 0.25),
    ]
    seen = []

    def runner(argv, allowance, log):
        seen.append(allowance)
        if argv[2] == "x":
            raise OSError("no such program")
        return (1, False, ["boom"]) if argv[2] == "y" else (None, True, [])

    outcomes = gpu_check.run_all(plan, tmp_path, 100.0, runner)
    assert [o.step.name for o in outcomes] == ["a", "b", "c"] and not any(o.ok for o in outcomes)
    # shares 1/2, 1/4, 1/4 of the time left; the steps here take no time, so what a step leaves
    # unused goes to the later ones: 50, then half of the 100 left, then all of it
    assert seen == pytest.approx([50, 50, 100], abs=1)
    assert "exit -1" in outcomes[0].verdict() and "no such program" in outcomes[0].tail[0]
    assert (
        "some cases not ok" in outcomes[1].verdict() and "time allowance" in outcomes[2].verdict()
    )


# --- the report from GPU-shaped records ----------------------------------------------------------
def gpu_case(
    out: Path,
    backend: str,
    mode: str,
    shape: tuple,
    dtype: str,
    median_s: float,
    ratio=None,
    status: str = "ok",
    error=None,
) -> None:
    case = Case("lstm", backend, mode, *shape, "cuda", dtype, 1)
    record = CaseRecord(
        **asdict(case), run_id="g1", status=status, error=error, machine="GPU box", **PEAK
    )
    if status == "ok":
        for name, value in {
            "median_s": median_s,
            "iqr_s": median_s * 0.01,
            "repeats": 6,
            "rounds": 3,
            "stop_reason": "ci",
            "first_call_s": 1.5,
            "peak_mem_bytes": 5 * 2**20,
            "mem_method": "torch.cuda.max_memory_allocated",
            "check_error": 0.2,
            "ratio_to_native": ratio[0] if ratio else None,
            "ratio_ci95": list(ratio[1:]) if ratio else None,
            **derived(case, median_s, PEAK["peak_gflops"]),
        }.items():
            setattr(record, name, value)
    append(out, record)


def gpu_run(out: Path) -> None:
    append(
        out,
        {
            "type": "run",
            "run_id": "g1",
            "cases": 4,
            "pending": 4,
            "peaks": [
                {
                    "device": "cuda",
                    "threads": 1,
                    "peak_gflops": 700_000.0,
                    "peak_source": "torch",
                    "peak_by_library": {"torch": 700_000.0},
                }
            ],
            "environment": {
                "time": "2026-01-01T00:00:00+00:00",
                "cpu_model": "Test CPU",
                "cpu_cores": 16,
                "gpu_name": "NVIDIA H200",
                "cudnn": 91000,
                "torch": "2.13.0",
                "torch_threads": 1,
                "git_commit": "abc123",
            },
        },
    )


JUNIT = textwrap.dedent("""\
    <?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="5">
    <testcase classname="tests.test_equivalence" name="test_cuda_matches_float64_torch_nn[lstm-triton-cfg0-torch.float32]"/>
    <testcase classname="tests.test_equivalence" name="test_cuda_matches_float64_torch_nn[triton-lstm-I5-H7-L1-T6-B3-hx-float16]"/>
    <testcase classname="tests.test_equivalence" name="test_cuda_matches_float64_torch_nn[triton-gru-I5-H7-L1-T6-B3-hx-bfloat16]">
      <failure message="AssertionError: output rel. error 3.1e-02 &gt; tolerance 1.6e-02">trace</failure></testcase>
    <testcase classname="tests.test_equivalence" name="test_cuda_matches_float64_torch_nn[lstm-numba-cfg0-torch.bfloat16]">
      <skipped message="numba on cuda/torch.bfloat16: unavailable"/></testcase>
    <testcase classname="tests.test_triton" name="test_on_cuda[lstm]"/>
    </testsuite></testsuites>
    """)


def test_report_from_gpu_shaped_records_lists_results_and_failures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("runs/gpu")
    plan = {s.name: s for s in gpu_check.steps()}
    d2l, flash = out / "d2l", out / "flashrnn-bf16"
    gpu_run(d2l), gpu_run(flash)
    gpu_case(d2l, "native", "train", (28, 256, 1, 32, 35), "float32", 0.002, (1.0, 1.0, 1.0))
    gpu_case(d2l, "triton", "train", (28, 256, 1, 32, 35), "float32", 0.001, (2.0, 1.8, 2.2))
    gpu_case(flash, "native", "infer", (768, 768, 1, 16, 1024), "bfloat16", 0.030, (1.0, 1.0, 1.0))
    gpu_case(
        flash, "triton", "infer", (768, 768, 1, 16, 1024), "bfloat16", 0.050, (0.6, 0.55, 0.65)
    )
    gpu_case(
        flash,
        "triton",
        "train",
        (768, 768, 1, 16, 1024),
        "bfloat16",
        0,
        status="incorrect",
        error="train check failed: dW_hh differs by 4e-02 (tolerance 1.6e-02)",
    )
    (out / "cuda-tests.xml").write_text(JUNIT)
    outcomes = [
        gpu_check.Outcome(
            plan["cuda-tests"], 105, [], returncode=1, seconds=80, tail=["1 failed, 3 passed"]
        ),
        gpu_check.Outcome(plan["d2l"], 55, [], returncode=0, seconds=30),
        gpu_check.Outcome(plan["flashrnn-bf16"], 55, [], returncode=1, seconds=50),
        gpu_check.Outcome(
            plan["small-batch"],
            60,
            [],
            returncode=130,
            seconds=80,
            timed_out=True,
            tail=["interrupted: records written so far are kept"],
        ),
    ]
    report = Path("reports/gpu.md")
    text = gpu_check.render(outcomes, out, report, plots=False)
    for expected in [
        "# GPU check",
        "| cuda-tests |",
        "exit 1: some tests failed",
        "stopped at its time allowance",
        "interrupted: records written so far are kept",
        "| float32 | 1 | 0 | 0 | 0 |",
        "| bfloat16 | 0 | 1 | 0 | 1 |",
        "triton-gru-I5-H7-L1-T6-B3-hx-bfloat16",
        "3.1e-02",
        "numba on cuda/torch.bfloat16: unavailable",
        "other (Triton on the GPU, ...) | 1 |",
        "## " + plan["d2l"].title,
        "### lstm — train",
        "×2.00 (1.80–2.20)",
        "## " + plan["flashrnn-bf16"].title,
        "bfloat16",
        "×0.60 (0.55–0.65)",
        "incorrect",
        "dW_hh differs",
        "## " + plan["small-batch"].title,
        "_No records (stopped",
        "NVIDIA H200",
        "## Method",
        "torch.cuda.max_memory_allocated",
    ]:
        assert expected in text, expected
    assert "# cellbench report" not in text and str(tmp_path) not in text
    assert text.count("## Method") == 1


def test_main_writes_the_report_even_when_every_step_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_check, "cuda_refusal", lambda: None)
    monkeypatch.setattr(
        gpu_check, "run_step", lambda argv, allowance, log: (2, False, ["error: no"])
    )
    assert gpu_check.main(["--budget-s", "60", "--no-plots"]) == 1
    text = Path("reports/gpu.md").read_text()
    assert (
        "No test results (exit 2" in text
        and text.count("_No records (exit 2)._") == len(gpu_check.steps()) - 1
    )
    assert "report written to reports/gpu.md" in capsys.readouterr().err
