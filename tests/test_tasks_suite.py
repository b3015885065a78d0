"""`python -m bench train` / `tasks`: option ranges (exit 2, one line), a failed task recorded
while the suite goes on (exit 1), the report's provenance lines and failed-task table."""

from __future__ import annotations

import pytest
from tasks_cli import argv, records, train

from bench.cli import main as bench_main
from bench.tasks import report_section, suite

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "charlm": dict(epochs=1, hidden=8, max_tokens=400, num_steps=5, num_preds=1),
    "names": dict(epochs=1, hidden=8, max_train=64),
    "anbn": dict(steps=2, n_eval=3),
    "poems": dict(
        epochs=1,
        max_poems=20,
        hidden=8,
        embed=8,
        lab_loop_poems=0,
        max_gen=2,
        begin="日",
        corpus="sample",
    ),
}


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
    tiny_poems = argv(**TINY["poems"], no_plots=True)
    monkeypatch.setitem(
        suite.SHORT, "anbn", [("--steps 5 --n-eval 5 --seeds 0 --hidden -3", 0.1)]
    )  # fails inside the task
    monkeypatch.setitem(suite.SHORT, "poems", [(" ".join(tiny_poems), 0.1)])
    out = tmp_path / "runs"
    rc = bench_main(
        ["tasks", "--short", "--tasks", "anbn,poems", "--backends", "native", "--out", str(out)]
    )
    assert rc == 1
    captured = capsys.readouterr()
    assert "error: anbn: ValueError: --hidden must be an integer >= 1, got -3" in captured.err
    assert "1/2 ok" in captured.out and "failed: anbn" in captured.out
    recs = records(out)
    failed = [r for r in recs if r.get("status") == "failed"]
    ok = [r for r in recs if r.get("status") == "ok"]
    assert [r["task"] for r in failed] == ["anbn"] and "--hidden" in failed[0]["reason"]
    assert [r["task"] for r in ok] == ["poems"]
    assert ok[0]["suite"] == "short" and ok[0]["data_source"] == "embedded"
    md = report_section.render([out], tmp_path / "report")
    assert "## Failed textbook tasks" in md and "--hidden must be an integer >= 1" in md
    assert "## Tang poetry" in md and "Data: embedded copy" in md and "**short settings**" in md


def test_jobs_run_in_parallel_processes_into_one_record_file(tmp_path, monkeypatch, capsys):
    """--jobs 2: two worker processes append to one records.jsonl (under a lock): every run's
    record is there, whole."""
    tiny = "--steps 3 --n-eval 3 --no-plots --seeds {}"
    monkeypatch.setitem(suite.SHORT, "anbn", [(tiny.format(0), 0.1), (tiny.format(1), 0.2)])
    out = tmp_path / "j"
    argv = ["tasks", "--short", "--tasks", "anbn", "--jobs", "2", "--backends", "native,fused"]
    assert bench_main([*argv, "--out", str(out)]) == 0
    recs = records(out)
    assert sorted((r["seed"], r["backend"]) for r in recs) == [
        (0, "fused"),
        (0, "native"),
        (1, "fused"),
        (1, "native"),
    ]
    assert "2 runs, about 0 CPU minutes, 2 at a time" in capsys.readouterr().out
    assert bench_main([*argv[:-2], "--jobs", "0", "--out", str(out)]) == 2


def _short(task: str, out) -> list[dict]:
    (argv,) = suite.task_argvs(task, "short", str(out), "lstm", "native")
    assert bench_main(["train", task, *argv, "--no-plots"]) == 0
    return records(out)


@pytest.mark.slow
def test_short_anbn_settings_give_a_real_capacity(tmp_path):
    """The short suite's aⁿbⁿ settings must leave every seed with capacity >= 5 under both
    readings (lr 1e-3 for as many steps leaves 0: a suite that shows nothing)."""
    recs = _short("anbn", tmp_path / "a")
    assert len(recs) == 2
    for r in recs:
        assert r["metrics"]["capacity"] >= 5 and r["metrics"]["capacity_lab"] >= 5, r["metrics"]


@pytest.mark.slow
def test_short_names_settings_reach_a_real_held_out_accuracy(tmp_path):
    """The short suite's names run must classify held-out names (>= 0.70; it reaches 0.78)."""
    (r,) = _short("names", tmp_path / "n")
    assert r["metrics"]["test_accuracy"] >= 0.70, r["metrics"]


def _anbn_record(protocol, backend, seed, capacity, lab, steps, tokens_per_s):
    settings = {"protocol": protocol, "steps": steps, "hidden_size": 2, "lr": 1e-3}
    if protocol == "lab":
        settings["variant"] = "LSTM hidden 2"
    return {
        "type": "task",
        "task": "anbn",
        "protocol": protocol,
        "kind": "lstm",
        "backend": backend,
        "seed": seed,
        "run_key": f"{protocol}{backend}{seed}{steps}",
        "settings": settings,
        "metrics": {
            "capacity": capacity,
            "capacity_lab": lab,
            "steps": steps,
            "train_time_s": 1.0,
            "tokens_per_s": tokens_per_s,
        },
        "curves": {"step": [steps], "loss": [0.3], "capacity": [capacity], "capacity_lab": [lab]},
    }


def test_lab_vs_cellbench_table(tmp_path):
    """The lab's number (lab_numbers), cellbench under the lab's protocol (median, range over
    seeds), cellbench's held-out figure, native/naive speed, and the lab protocol's flaw."""
    from bench.tasks import runner

    out = tmp_path / "runs"
    for seed, (cap, lab) in enumerate([(7, 12), (30, 40), (9, 25)]):
        runner.append(out, _anbn_record("lab", "native", seed, cap, lab, 40000, 300.0))
    for seed, cap in enumerate([11, 13]):
        runner.append(out, _anbn_record("cellbench", "native", seed, cap, cap, 10000, 900.0))
    for backend, tps in (("naive", 100.0), ("native", 400.0)):
        runner.append(out, _anbn_record("lab", backend, 0, 1, 1, 2000, tps))
    md = report_section.render([out], tmp_path / "report")
    table = md[md.index("### Lab vs cellbench") :]
    row = next(line for line in table.splitlines() if " 40000 |" in line)
    assert "LSTM hidden 2" in row and "| >=19 " in row  # the lab: still right at n = 19
    assert "25 [12-40] (3 seeds)" in row  # the lab's reading over the lab-protocol seeds
    assert "12 [11-13] (2 seeds)" in row  # cellbench's strict capacity
    assert "4.00x" in row  # native 400 / naive 100 tokens/s, the 2000-step pair
    assert "| agrees " in row and "2 of 3 seeds reach 19" in row  # 19 inside [12-40]
    rows = [line for line in table.splitlines() if line.startswith("| LSTM hidden 2")]
    assert rows == [row]  # the 2000-step speed pair feeds only the speed column, never a row
    assert "naive" not in row and "| 1 (1 seed)" not in table
    assert "forgives the error its nets make at the second symbol" in table


@pytest.mark.parametrize("task", sorted(TINY))
def test_device_reaches_every_tasks_model(tmp_path, monkeypatch, task):
    """--device cuda on a CPU machine, with torch told it has a GPU and Module.to watched (and
    left on the CPU): every task moves its model to the device it was given, and records it."""
    import torch

    moved = []
    to = torch.nn.Module.to

    def watch(self, *args, **kwargs):
        moved.append((type(self).__name__, str(args[0]) if args else kwargs.get("device")))
        return to(self, "cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", watch)
    out = tmp_path / task
    assert train(task, out, device="cuda", no_plots=True, **TINY[task]) == 0
    (record, *_) = records(out)
    assert record["device"] == record["settings"]["device"] == "cuda"  # its own --resume key
    assert moved and all(device == "cuda" for _, device in moved), moved
