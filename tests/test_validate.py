"""`bench validate`: accepts correct independent kernels, rejects every planted bug.

The candidates (tests/candidates) are standalone nn.Modules using only torch, so the validator
is shown to work on kernels it has never seen. The quick matrix is used throughout; each planted
bug must still be caught by it, and the tests check *where* it is caught (which configurations
pass and which fail), so a bug caught only by accident would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cells  # noqa: E402
from bench import validate as V  # noqa: E402
from bench.cli import main as cli  # noqa: E402

STEP = "tests.candidates.stepwise"
BUGS = "tests.candidates.bugs"


def run(target, kind, tmp_path, **kw):
    kw.setdefault("quick", True)
    kw.setdefault("train", False)
    kw.setdefault("run_speed", False)
    try:
        return V.validate(target, kind, out=tmp_path, progress=lambda s: None, **kw)
    finally:
        cells.unregister(kind, kw.get("name", "candidate"))


def statuses(verdict, predicate):
    return [c.status for c in verdict["checks"] if c.dtype == "float64" and predicate(c.config)]


def tensor_passed(verdict, label_pred, name):
    """Did tensor `name` pass in every float64 check matching label_pred?"""
    out = []
    for c in verdict["checks"]:
        if c.result is not None and c.dtype == "float64" and label_pred(c.config):
            out += [e.passed for e in c.result.errors if e.name == name]
    return out


# --- correct independent implementations --------------------------------------------------
@pytest.mark.parametrize(
    "target, kind",
    [(f"{STEP}:StepLSTM", "lstm"), (f"{STEP}:make_gru", "gru"), (f"{STEP}:StepRNN", "rnn")],
)
def test_correct_implementations_pass_with_training_parity(target, kind, tmp_path):
    verdict = run(target, kind, tmp_path, train=True, train_steps=6, train_hidden=32)
    assert verdict["passed"], verdict["reason"]
    assert all(c.status in ("pass", "skipped") for c in verdict["checks"])
    assert verdict["train"]["passed"] and len(verdict["train"]["candidate"]) == 6
    report = (tmp_path / "validate.md").read_text()
    assert "**Verdict: PASS**" in report and "Worst error per tensor" in report
    assert "Training parity" in report and "finite and dev(candidate) <= max(10 x" in report


def test_matrix_covers_the_required_options():
    for quick in (False, True):
        configs = V.matrix("lstm", quick)
        assert {c.num_layers for c in configs} == {1, 2, 3}
        assert any(c.bidirectional for c in configs) and any(c.batch_first for c in configs)
        assert any(not c.bias for c in configs) and any(c.batch == 1 for c in configs)
        assert {c.with_hx for c in configs} == {True, False}
        assert min(c.seq_len for c in configs) == 1 and max(c.seq_len for c in configs) >= 200
    assert any(c.nonlinearity == "relu" for c in V.matrix("rnn", True))


# --- planted bugs ---------------------------------------------------------------------------
def test_wrong_gate_order_lstm(tmp_path):
    v = run(f"{BUGS}:GateOrderLSTM", "lstm", tmp_path)
    assert not v["passed"] and statuses(v, lambda c: True).count("pass") == 0


def test_wrong_gate_order_gru(tmp_path):
    v = run(f"{BUGS}:GateOrderGRU", "gru", tmp_path)
    assert not v["passed"] and not any(tensor_passed(v, lambda c: True, "output"))


def test_missing_bias_is_reported_by_name(tmp_path):
    v = run(f"{BUGS}:MissingBiasLSTM", "lstm", tmp_path)
    assert not v["passed"]
    assert "no gradient for bias_hh_l0;" in v["reason"]
    worst = {w["tensor"]: w for w in v["worst"]}
    assert worst["grad_bias_hh_l0"]["where"] == "received no gradient"
    # bias=False configurations have no bias to forget
    assert set(statuses(v, lambda c: not c.bias)) == {"pass"}


def test_missing_bias_in_upper_layers_needs_multilayer_configs(tmp_path):
    v = run(f"{BUGS}:UpperLayerBiasLSTM", "lstm", tmp_path)
    assert not v["passed"]
    assert set(statuses(v, lambda c: c.num_layers == 1)) == {"pass"}
    assert "fail" in statuses(v, lambda c: c.num_layers > 1 and c.bias)
    assert (
        "no gradient for bias_ih_l1, bias_hh_l1, bias_ih_l1_reverse, bias_hh_l1_reverse"
        in v["reason"]
    )


def test_wrong_final_cell_state(tmp_path):
    v = run(f"{BUGS}:WrongFinalCellLSTM", "lstm", tmp_path)
    assert not v["passed"] and "c_n" in v["reason"]
    assert all(tensor_passed(v, lambda c: True, "output"))  # the output is right
    assert not any(tensor_passed(v, lambda c: True, "c_n"))


def test_off_by_one_time_shift(tmp_path):
    v = run(f"{BUGS}:TimeShiftLSTM", "lstm", tmp_path)
    assert not v["passed"] and "output" in v["reason"]
    # one layer: the final states are right (above, the next layer sees shifted inputs)
    assert all(tensor_passed(v, lambda c: c.num_layers == 1, "h_n"))
    assert not any(tensor_passed(v, lambda c: True, "output"))


def test_wrong_backward_under_exact_forward(tmp_path):
    v = run(f"{BUGS}:WrongBackwardLSTM", "lstm", tmp_path)
    assert not v["passed"] and "grad_" in v["reason"]
    for name in ("output", "h_n", "c_n"):
        assert all(tensor_passed(v, lambda c: True, name)), name
    assert not any(tensor_passed(v, lambda c: True, "grad_input"))


def test_wrong_backward_also_breaks_training_parity():
    factory = V.load_target(f"{BUGS}:WrongBackwardLSTM")
    result = V.train_parity(factory, "lstm", steps=4, hidden=16)
    assert not result["passed"] and result["dev_candidate"] > result["bound"]


def test_tiny_drift_only_shows_on_long_sequences(tmp_path):
    v = run(f"{BUGS}:DriftLSTM", "lstm", tmp_path)
    assert not v["passed"] and "T200" in v["reason"]
    assert set(statuses(v, lambda c: c.seq_len < 200)) == {"pass"}
    assert set(statuses(v, lambda c: c.seq_len >= 200)) == {"fail"}


def test_other_published_gru_form(tmp_path):
    v = run(f"{BUGS}:ResetBeforeMatmulGRU", "gru", tmp_path)
    assert not v["passed"] and "fail" in statuses(v, lambda c: c.seq_len > 1)


def test_state_not_carried_between_steps(tmp_path):
    v = run(f"{BUGS}:StatelessRNN", "rnn", tmp_path)
    assert not v["passed"]
    assert set(statuses(v, lambda c: c.seq_len == 1 and c.num_layers == 1)) == {"pass"}
    assert set(statuses(v, lambda c: c.seq_len > 1)) == {"fail"}


# --- unsupported options ------------------------------------------------------------------
def test_unsupported_option_is_not_a_failure_unless_required(tmp_path):
    v = run(f"{STEP}:NoBidirLSTM", "lstm", tmp_path)
    assert v["passed"], v["reason"]
    unsupported = [c for c in v["checks"] if c.status == "unsupported"]
    assert unsupported and all(c.config.bidirectional for c in unsupported)
    assert all(c.reason.startswith("bidirectional:") for c in unsupported)
    assert "Unsupported" in (tmp_path / "validate.md").read_text()

    v = run(f"{STEP}:NoBidirLSTM", "lstm", tmp_path, required={"bidirectional"})
    assert not v["passed"] and "required option bidirectional is unsupported" in v["reason"]


def test_required_half_precision_without_gpu_fails(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: float16 is really checked")
    v = run(f"{STEP}:StepRNN", "rnn", tmp_path, required={"float16"})
    assert not v["passed"] and "float16" in v["reason"]


# --- the command line -----------------------------------------------------------------------
def test_cli_exit_status_and_one_line_reason(tmp_path, capsys):
    common = ["--quick", "--no-speed", "--no-train", "--out"]
    try:
        assert (
            cli(["validate", f"{STEP}:StepLSTM", "--kind", "lstm", *common, str(tmp_path / "ok")])
            == 0
        )
        assert capsys.readouterr().out.strip().splitlines()[-1].startswith("validate: PASS")
        assert (
            cli(
                [
                    "validate",
                    f"{BUGS}:TimeShiftLSTM",
                    "--kind",
                    "lstm",
                    *common,
                    str(tmp_path / "bad"),
                ]
            )
            == 1
        )
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith("validate: FAIL: equivalence: lstm") and "output" in last
        report = (tmp_path / "bad" / "validate.md").read_text()
        assert "First failing configuration" in report and "**Verdict: FAIL**" in report
        from bench.records import frame

        df = frame([tmp_path / "bad"], "validate")
        assert len(df) == 1 and not df["passed"].iloc[0]
        assert (
            cli(["validate", "no_such_module:X", "--kind", "lstm", *common, str(tmp_path / "x")])
            == 2
        )
        assert (
            cli(
                [
                    "validate",
                    f"{STEP}:StepLSTM",
                    "--kind",
                    "lstm",
                    "--require",
                    "wings",
                    *common,
                    str(tmp_path / "x"),
                ]
            )
            == 2
        )
        # speed is on here: the unknown backend is refused before anything is measured
        argv = ["validate", f"{STEP}:StepLSTM", "--kind", "lstm", "--quick", "--no-train"]
        assert cli([*argv, "--speed-backends", "native,nosuch", "--out", str(tmp_path / "y")]) == 2
        assert "--speed-backends nosuch" in capsys.readouterr().err
    finally:
        cells.unregister("lstm", "candidate")


def time_tiny(target: str, kind: str, tmp_path: Path) -> dict:
    """measure_speed at a tiny shape in infer mode, with few short rounds."""
    from bench.measure import Options

    options = Options(min_run_time=0.02, min_repeats=3, min_rounds=2, max_rounds=3, memory=False)
    tiny = {"tiny": dict(input_size=4, hidden_size=8, batch=2, seq_len=3)}
    return V.measure_speed(target, kind, "candidate", tmp_path, tiny, [], ("infer",), options)


@pytest.mark.slow
def test_speed_times_the_candidate_with_the_shared_engine(tmp_path):
    """The candidate is registered in the timing worker by a generated module (tiny shape, one
    mode); the rows are the engine's CaseRecords, with the ratio and CI the engine computed."""
    result = time_tiny(f"{STEP}:StepGRU", "gru", tmp_path)
    assert result["status"] == "ok", result["reason"]
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == {"native", "candidate"}
    assert rows["candidate"]["status"] == "ok", rows["candidate"]["error"]
    assert {r["shape"] for r in result["rows"]} == {"tiny"} and not result["candidate_errors"]
    assert rows["native"]["ratio_to_native"] == pytest.approx(1.0)
    assert rows["candidate"]["tokens_per_s"] > 0 and len(rows["candidate"]["ratio_ci95"]) == 2
    assert 2 <= rows["candidate"]["rounds"] <= 3 and rows["candidate"]["stop_reason"]
    verdict = dict(target="t:T", kind="gru", name="candidate", required=set(), checks=[])
    verdict.update(worst=[], passed=True, reason="", train=None, speed=result)
    report = V.render(verdict)
    assert "bench.timing.GroupTimer" in report and "at least 0.02 s of calls" in report
    assert "**candidate**" in report


@pytest.mark.slow
def test_speed_reports_a_candidate_the_gate_rejects(tmp_path):
    """A wrong kernel is never timed: the gate marks it incorrect, and validate would fail on it."""
    (bad,) = time_tiny(f"{BUGS}:TimeShiftLSTM", "lstm", tmp_path)["candidate_errors"]
    assert bad["status"] == "incorrect" and bad["rounds"] == 0 and bad["ratio_to_native"] is None


# --- third-party backends through entry points ------------------------------------------------
def test_entry_point_backend_is_registered(tmp_path):
    dist = tmp_path / "fake_kernels-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-kernels\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cellbench.backends]\nfake = fake_kernels:register\n")
    (tmp_path / "fake_kernels.py").write_text(
        textwrap.dedent("""
        import cells
        from tests.candidates.stepwise import StepLSTM
        def register():
            cells.register("lstm", "fake", StepLSTM)
    """)
    )
    code = textwrap.dedent("""
        import cells, torch
        from cells.equivalence import Config, compare
        print(cells.backends("lstm"))
        m = cells.create("lstm", "fake", 5, 7, dtype=torch.float64)
        print(compare(m, Config("lstm")).passed)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    backends, passed = proc.stdout.strip().splitlines()
    assert "'fake'" in backends and passed == "True"
