"""`bench compare`: the ratio-based speed gate.

No test asserts an absolute time. The slowed backend sleeps 50 ms per forward call at a shape
where torch.nn takes about a millisecond (10 ms on a loaded machine: still a slowdown of several
times, against a 50% threshold); the unchanged rerun is compared with the same generous
threshold, and needs a *significant* change (bootstrap CI and Mann-Whitney) above it to fail.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import compare as C  # noqa: E402
from bench.cli import main as cli  # noqa: E402

COPY = "tests.candidates.slowcopy"
SHAPE = "8,16,4,10"
RECORD = [
    "--import",
    COPY,
    "--kinds",
    "lstm",
    "--backends",
    "copy",
    "--modes",
    "train,infer",
    "--shape",
    SHAPE,
    "--rounds",
    "7",
    "--block-time",
    "0.02",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """baseline, unchanged rerun and slowed rerun, each recorded in this process."""
    mp = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("compare")
    try:
        mp.setenv("CELLBENCH_TEST_SLEEP_S", "0")
        assert cli(["compare", "--record", str(out / "base.json"), *RECORD]) == 0
        assert cli(["compare", "--record", str(out / "same.json"), *RECORD]) == 0
        mp.setenv("CELLBENCH_TEST_SLEEP_S", "0.05")
        assert cli(["compare", "--record", str(out / "slow.json"), *RECORD]) == 0
    finally:
        mp.undo()
    yield out
    import cells

    for kind in cells.KINDS:  # leave the registry as other test modules expect it
        cells.unregister(kind, "copy")


def test_record_format(files):
    data = json.loads((files / "base.json").read_text())
    assert data["format"] == C.FORMAT and data["torch"] and data["machine"] and data["key"]
    assert [(r["kind"], r["backend"], r["mode"]) for r in data["results"]] == [
        ("lstm", "copy", "train"),
        ("lstm", "copy", "infer"),
    ]
    for r in data["results"]:
        assert len(r["ratios"]) == len(r["native_s"]) == len(r["backend_s"]) == 7
        assert r["ratios"] == pytest.approx([b / a for a, b in zip(r["native_s"], r["backend_s"])])


def test_unchanged_rerun_passes(files, capsys):
    assert (
        cli(["compare", str(files / "base.json"), str(files / "same.json"), "--threshold", "50%"])
        == 0
    )
    out = capsys.readouterr().out
    assert "| lstm | copy | train |" in out and "compare: PASS" in out and "regressed" not in out


def test_slowed_backend_is_flagged(files, capsys):
    assert (
        cli(["compare", str(files / "base.json"), str(files / "slow.json"), "--threshold", "50%"])
        == 1
    )
    out = capsys.readouterr().out
    assert "**regressed**" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("compare: FAIL: lstm/copy/") and "slower relative to native" in last
    rows = C.compare_records(C.load(files / "base.json"), C.load(files / "slow.json"), 0.5)
    assert {r["status"] for r in rows} == {"regressed"}
    assert all(r["low"] > 1.5 and r["p"] < 0.05 for r in rows)


def test_speedup_is_an_improvement_not_a_failure(files):
    assert (
        cli(["compare", str(files / "slow.json"), str(files / "base.json"), "--threshold", "50%"])
        == 0
    )
    rows = C.compare_records(C.load(files / "slow.json"), C.load(files / "base.json"), 0.5)
    assert {r["status"] for r in rows} == {"improved"}


def test_statistic_on_synthetic_rounds():
    same = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98]
    point, low, high = C.bootstrap_change(same, same)
    assert point == pytest.approx(1.0) and low <= 1 <= high
    point, low, high = C.bootstrap_change(same, [3 * x for x in same])
    assert point == pytest.approx(3.0) and low > 2
    assert C.mann_whitney_p(same, [3 * x for x in same]) < 0.01


def test_missing_and_malformed_baselines_are_errors(files, tmp_path, capsys):
    new = str(files / "same.json")
    assert cli(["compare", str(tmp_path / "nope.json"), new]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli(["compare", str(bad), new]) == 2
    assert "not readable JSON" in capsys.readouterr().err
    data = json.loads((files / "base.json").read_text())
    for mutate, message in (
        (lambda d: d.pop("format"), "format"),
        (lambda d: d.update(results=[]), "no results"),
        (lambda d: d["results"][0].update(ratios=[1.0, 1.0]), "rounds"),
        (lambda d: d["results"][0].update(ratios=[1.0, -1, 1, 1]), "invalid ratios"),
        (lambda d: d["results"][0].update(ratios=[True, 1, 1, 1]), "invalid ratios"),
        (lambda d: d["results"][0].update(shape="8,16,4,10"), "expected an object"),
        (lambda d: d["results"][0]["shape"].pop("batch"), "expected an object"),
    ):
        broken = json.loads(json.dumps(data))
        mutate(broken)
        bad.write_text(json.dumps(broken))
        assert cli(["compare", str(bad), new]) == 2
        assert message in capsys.readouterr().err
    assert cli(["compare", str(files / "base.json")]) == 2  # one file only


def test_other_machine_or_torch_is_an_error_unless_allowed(files, tmp_path, capsys):
    data = json.loads((files / "base.json").read_text())
    data["machine"], data["torch"] = "some-other-box", "1.0.0"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    assert cli(["compare", str(other), str(files / "same.json"), "--threshold", "50%"]) == 2
    err = capsys.readouterr().err
    assert "machine differs" in err and "torch differs" in err
    assert (
        cli(
            [
                "compare",
                str(other),
                str(files / "same.json"),
                "--threshold",
                "50%",
                "--allow-mismatch",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "warning: machine differs" in captured.err and "> warning:" in captured.out


def test_missing_entry_in_new_file_fails(files, tmp_path, capsys):
    data = json.loads((files / "same.json").read_text())
    data["results"] = data["results"][:1]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(data))
    assert cli(["compare", str(files / "base.json"), str(partial), "--threshold", "50%"]) == 1
    assert "not measured in the new file" in capsys.readouterr().out


def test_baseline_directory_is_keyed_by_machine_and_torch(files, tmp_path, capsys):
    key = json.loads((files / "base.json").read_text())["key"]
    assert cli(["compare", str(tmp_path), str(files / "same.json")]) == 2
    assert key in capsys.readouterr().err
    (tmp_path / f"{key}.json").write_text((files / "base.json").read_text())
    assert cli(["compare", str(tmp_path), str(files / "same.json"), "--threshold", "50%"]) == 0


def test_record_refuses_too_few_rounds_and_unknown_backends(tmp_path, capsys):
    assert (
        cli(["compare", "--record", str(tmp_path / "x.json"), "--kinds", "lstm", "--rounds", "2"])
        == 2
    )
    assert "--rounds: expected an integer >= 4, got '2'" in capsys.readouterr().err
    assert (
        cli(
            [
                "compare",
                "--record",
                str(tmp_path / "x.json"),
                "--kinds",
                "lstm",
                "--backends",
                "warp-drive",
                "--rounds",
                "5",
            ]
        )
        == 2
    )
    assert "not available" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--modes", "fly"], "unknown mode 'fly'; valid: train, infer, generate"),
        (["--kinds", "lstmx"], "unknown kind 'lstmx'; valid: rnn, gru, lstm"),
        (["--confidence", "1.5"], "--confidence: expected a number > 0 and <= 1, got '1.5'"),
        (["--shape", "8,16,4"], "--shape: expected four positive integers"),
        (["--block-time", "0"], "--block-time: expected a number > 0"),
        (["--threads", "0"], "--threads: expected an integer >= 1"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, fragment):
    assert cli(["compare", "--record", str(tmp_path / "x.json"), "--kinds", "lstm", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_an_incorrect_backend_is_not_recorded(tmp_path, capsys, monkeypatch):
    plugin = tmp_path / "gate_order_plugin.py"
    plugin.write_text(
        "import cells\nfrom tests.candidates.bugs import GateOrderLSTM\n"
        "cells.register('lstm', 'gate_order_bug', GateOrderLSTM, replace=True)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert (
            cli(
                [
                    "compare",
                    "--record",
                    str(tmp_path / "x.json"),
                    "--import",
                    "gate_order_plugin",
                    "--kinds",
                    "lstm",
                    "--backends",
                    "gate_order_bug",
                    "--modes",
                    "infer",
                    "--shape",
                    SHAPE,
                    "--rounds",
                    "4",
                    "--block-time",
                    "0.01",
                ]
            )
            == 2
        )
    finally:
        import cells

        cells.unregister("lstm", "gate_order_bug")
    assert "lstm/gate_order_bug/infer is incorrect: infer check failed" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
