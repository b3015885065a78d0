"""`python -m bench train` / `tasks`: option ranges (exit 2, one line), a failed task recorded
while the suite goes on (exit 1), the report's provenance lines and failed-task table."""

from __future__ import annotations

import json

import pytest
from tasks_cli import argv

from bench.cli import main as bench_main
from bench.tasks import report_section, suite

pytestmark = pytest.mark.usefixtures("one_thread")

BAD_TRAIN = [
    ("charlm --epochs 0", "--epochs must be an integer >= 1, got 0"),
    ("charlm --lr -0.5", "--lr must be a number > 0, got -0.5"),
    ("charlm --lr 1,nan", "--lr must be a number > 0, got nan"),
    ("charlm --batch-size 32,0", "--batch-size must be an integer >= 1, got 0"),
    ("charlm --val-fraction 1", "--val-fraction must be in [0, 1), got 1.0"),
    ("charlm --clip -1", "--clip must be a number >= 0 (0: no clipping), got -1.0"),
    ("charlm --optimizer lbfgs", "--optimizer must be one of sgd, adam, rmsprop, got 'lbfgs'"),
    ("names --test-fraction 0", "--test-fraction must be in (0, 1), got 0.0"),
    ("names --layers 0", "--layers must be an integer >= 1, got 0"),
    ("names --model gpt", "--model must be one of cell, elman, got 'gpt'"),
    ("names --steps 0", "--steps must be an integer >= 1, got 0"),
    ("anbn --steps 0", "--steps must be an integer >= 1, got 0"),
    ("anbn --seeds 0,-1", "--seed must be an integer >= 0, got -1"),
    ("anbn --threads -2", "--threads must be an integer >= 0 (0: torch's default), got -2"),
    ("poems --max-gen 0", "--max-gen must be an integer >= 1, got 0"),
    ("poems --begin=", "--begin must be one or more begin characters, got ''"),
    ("anbn --kind tanh", "unknown cell kind 'tanh'; expected one of rnn, gru, lstm"),
]


@pytest.mark.parametrize("command, message", BAD_TRAIN, ids=[c for c, _ in BAD_TRAIN])
def test_train_refuses_out_of_range_options(tmp_path, capsys, command, message):
    out = tmp_path / "out"
    assert bench_main(["train", *command.split(), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not out.exists()  # refused before any work


def test_train_unknown_backend_names_the_valid_ones(tmp_path, capsys):
    assert bench_main(["train", "anbn", "--backend", "nope", "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: unknown backend 'nope'") and "native" in line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "-1"], "--threads must be an integer >= 0 (0: torch's default), got '-1'"),
        (["--threads", "two"], "--threads must be an integer >= 0 (0: torch's default), got 'two'"),
        (
            ["--tasks", "anbn,chess"],
            "--tasks: unknown task(s) chess; expected any of charlm, names, anbn, poems",
        ),
        (["--kinds", "tanh"], "unknown cell kind 'tanh'; expected one of rnn, gru, lstm"),
    ],
)
def test_tasks_refuses_bad_options(tmp_path, capsys, argv, message):
    assert bench_main(["tasks", "--short", *argv, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "o").exists()


def test_failed_task_is_recorded_and_the_suite_goes_on(tmp_path, monkeypatch, capsys):
    tiny_poems = argv(
        epochs=1,
        max_poems=20,
        hidden=8,
        embed=8,
        lab_loop_poems=0,
        begin="日",
        max_gen=5,
        corpus="sample",
        no_plots=True,
    )
    monkeypatch.setitem(
        suite.SHORT, "anbn", ["--steps", "5", "--n-eval", "5", "--seeds", "0", "--hidden", "-3"]
    )  # fails inside the task
    monkeypatch.setitem(suite.SHORT, "poems", tiny_poems)
    out = tmp_path / "runs"
    rc = bench_main(
        ["tasks", "--short", "--tasks", "anbn,poems", "--backends", "native", "--out", str(out)]
    )
    assert rc == 1
    captured = capsys.readouterr()
    assert "error: anbn: ValueError: --hidden must be an integer >= 1, got -3" in captured.err
    assert "1/2 ok" in captured.out and "failed: anbn" in captured.out
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    failed = [r for r in recs if r.get("status") == "failed"]
    ok = [r for r in recs if r.get("status") == "ok"]
    assert [r["task"] for r in failed] == ["anbn"] and "--hidden" in failed[0]["reason"]
    assert [r["task"] for r in ok] == ["poems"]
    assert ok[0]["suite"] == "short" and ok[0]["data_source"] == "embedded"
    md = report_section.render([out], tmp_path / "report")
    assert "## Failed textbook tasks" in md and "--hidden must be an integer >= 1" in md
    assert "## Tang poetry" in md and "Data: embedded copy" in md and "**short settings**" in md


@pytest.mark.slow
def test_short_anbn_settings_give_a_real_capacity(tmp_path):
    """The short suite's aⁿbⁿ settings must leave every seed with capacity >= 5 under both
    readings (lr 1e-3 for as many steps leaves 0: a suite that shows nothing)."""
    out = tmp_path / "a"
    argv = list(suite.SHORT["anbn"]) + [
        "--kind",
        "lstm",
        "--backend",
        "native",
        "--out",
        str(out),
        "--no-plots",
        "--n-eval",
        "12",
    ]
    assert bench_main(["train", "anbn", *argv]) == 0
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for r in recs:
        assert r["metrics"]["capacity"] >= 5 and r["metrics"]["capacity_lab"] >= 5, r["metrics"]
