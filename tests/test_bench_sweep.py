"""`python -m bench run`: planning, bad input, failure isolation, resume, worker timeouts and crashes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_bench_fakes  # noqa: E402

import cells  # noqa: E402
from bench import cli, presets, sweep  # noqa: E402
from bench.measure import Case, Options  # noqa: E402
from bench.records import RECORDS_FILE  # noqa: E402

# the fake backends of test_bench_fakes compute nothing real: the correctness gate is off for them
FAST = (
    "--min-run-time 0.001 --min-repeats 3 --warmup 0 --no-peak --no-memory --no-check "
    "--min-rounds 2 --max-rounds 2"
).split()
TINY = ["--input-size", "3", "--hidden-size", "4", "--batch", "2", "--seq-len", "3"]


@pytest.fixture
def fakes():
    test_bench_fakes.register_all()
    yield test_bench_fakes
    test_bench_fakes.unregister_all()


def records(out: Path, type_: str = "case") -> list[dict]:
    lines = (out / RECORDS_FILE).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == type_]


def plan(*argv: str):
    parser = cli.build_parser(["run"])
    return sweep.plan(parser.parse_args(["run", *argv]))


# --- planning ------------------------------------------------------------------------------------
def test_comma_lists_form_a_cartesian_grid():
    cases, settings, _ = plan(
        *(
            "--kinds lstm,gru --backends native --modes train,infer --batch 1,8 --hidden-size "
            "16,32,64 --input-size 5 --seq-len 4 --threads 1"
        ).split(),
    )
    assert len(cases) == 2 * 2 * 2 * 3
    assert {(c.kind, c.batch, c.hidden_size) for c in cases} >= {("gru", 8, 64), ("lstm", 1, 16)}
    assert settings == Options()


def test_generate_always_uses_batch_one():
    cases, _, _ = plan(
        *"--kinds rnn --backends native --modes generate,infer --batch 4,16 --threads 1".split(),
    )
    gen = [c for c in cases if c.mode == "generate"]
    assert len(gen) == 1 and gen[0].batch == 1
    assert len([c for c in cases if c.mode == "infer"]) == 2


def test_default_backends_are_all_available_ones():
    cases, _, _ = plan("--kinds", "gru", "--modes", "infer", "--threads", "1")
    assert [c.backend for c in cases] == cells.backends("gru")


def test_presets_and_overrides():
    cases, settings, preset = plan(
        "--preset", "fastrnns", "--kinds", "lstm", "--backends", "native"
    )
    assert preset.name == "fastrnns" and settings == Options()
    assert {(c.input_size, c.hidden_size, c.seq_len) for c in cases} == {(512, 512, 100)}
    assert {c.batch for c in cases} == {64, 1}  # generate runs at batch 1
    quick, settings, _ = plan("--preset", "quick")
    assert settings.budget and settings.time_limit <= 120 and settings.group_time_cap <= 5
    assert "compiled" not in {
        c.backend for c in quick
    }  # its cold first call does not fit the budget
    d2l = [
        c
        for c in quick
        if (c.input_size, c.hidden_size, c.seq_len) == (28, 256, 35) and c.batch in (1, 32)
    ]
    assert {c.kind for c in d2l} == {"rnn", "gru", "lstm"}
    assert {c.mode for c in d2l} == {"train", "infer", "generate"}
    off_d2l = [c for c in quick if c not in d2l]
    assert off_d2l and not {c.backend for c in off_d2l} & {"compiled", "naive", "scripted"}
    deepbench = presets.get("deepbench")
    assert deepbench.device == "cuda"
    assert {b.hidden_size for b in deepbench.blocks} == {(512, 1024, 2048)}


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--kinds", "lstm,tree"], "unknown kind 'tree'; valid: rnn, gru, lstm"),
        (["--kinds", "lstm", "--backends", "native,nope"], "unknown backend 'nope'; valid:"),
        (["--modes", "sing"], "unknown mode 'sing'; valid: train, infer, generate"),
        (
            ["--preset", "huge"],
            "unknown preset 'huge'; expected one of quick, scaling, d2l, fastrnns, deepbench",
        ),
        (["--dtype", "float8"], "unknown dtype 'float8'; valid: float32"),
        (["--device", "tpu"], "unknown device 'tpu'; valid: cpu, cuda"),
        (["--import", "no_such_module_xyz"], "--import no_such_module_xyz: ModuleNotFoundError"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_measuring(tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    assert cli.main(["run", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not (out / RECORDS_FILE).exists()


def test_bad_numbers_are_rejected_by_argparse(capsys):
    assert cli.main(["run", "--batch", "8,zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected an integer >= 1, got 'zero'" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "options, fragment",
    [
        ("--time-limit 0", "--time-limit: expected a number > 0, got '0'"),
        ("--time-limit -5", "--time-limit: expected a number > 0, got '-5'"),
        ("--min-run-time -1", "--min-run-time: expected a number > 0"),
        ("--warmup -1", "--warmup: expected an integer >= 0"),
        ("--min-repeats 0", "--min-repeats: expected an integer >= 1"),
        ("--budget -1", "--budget: expected a number > 0"),
        ("--min-rounds 1", "--min-rounds: expected an integer >= 2"),
        ("--ci-target 1.5", "--ci-target: expected a number > 0 and <= 1"),
        ("--threads 0", "--threads: expected an integer >= 1"),
    ],
)
def test_out_of_range_options_exit_2_with_one_line(capsys, options, fragment):
    argv = options.split()
    assert cli.main(["run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_min_rounds_above_max_rounds_is_a_usage_error(tmp_path, capsys):
    assert (
        cli.main(["run", "--min-rounds", "9", "--max-rounds", "3", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "max_rounds (3) must be >= min_rounds (9)" in capsys.readouterr().err


def test_more_threads_than_cores_warns(capsys):
    import os

    plan("--kinds", "rnn", "--backends", "native", "--threads", str((os.cpu_count() or 1) + 1))
    assert "exceeds this machine's" in capsys.readouterr().err


# --- running: failure isolation, skipped backends, resume ---------------------------------------
def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, fakes, monkeypatch):
    from cells import registry

    monkeypatch.setitem(
        registry._table["lstm"], "ghost", registry._Entry(reason="needs a GPU that is not here")
    )
    out = tmp_path / "run"
    argv = [
        *"run --kinds lstm --backends broken,fake,ghost,native --modes train,infer".split(),
        *TINY,
        *"--threads 1 --in-process --out".split(),
        str(out),
        *FAST,
    ]
    assert cli.main(argv) == 1  # something failed: exit 1, after the records are written
    cases = records(out)
    by = {(r["backend"], r["mode"]): r for r in cases}
    assert len(cases) == 8
    for mode in ("train", "infer"):
        assert by[("broken", mode)]["status"] == "failed"
        assert by[("broken", mode)]["error"] == "RuntimeError: fake kernel exploded on purpose"
        assert by[("ghost", mode)]["status"] == "skipped"
        assert "needs a GPU that is not here" in by[("ghost", mode)]["error"]
        for ok in ("fake", "native"):
            r = by[(ok, mode)]
            assert r["status"] == "ok" and r["error"] is None
            assert r["tokens_per_s"] == pytest.approx(2 * 3 / r["median_s"])
    required = {
        *(
            "kind backend mode device dtype input_size hidden_size num_layers batch seq_len "
            "threads median_s iqr_s tokens_per_s gflops pct_of_peak first_call_s peak_mem_bytes "
            "status error"
        ).split(),
    }
    assert all(required <= set(r) for r in cases)
    (run,) = records(out, "run")
    assert {
        *"torch numba numpy cpu_model gpu_name cudnn git_commit time torch_threads".split(),
    } <= set(run["environment"])
    assert "peak_gflops" in run and run["flop_convention"]


def test_resume_after_an_interrupted_sweep(tmp_path, fakes):
    out = tmp_path / "run"
    argv = [
        *"run --kinds lstm --backends fake,native --modes train,infer".split(),
        *TINY,
        *"--threads 1 --in-process --out".split(),
        str(out),
        *FAST,
    ]
    assert cli.main(argv) == 0
    path = out / RECORDS_FILE
    lines = path.read_text().splitlines()
    assert len(lines) == 5  # one run record, four cases
    # interruption: the last case was lost and the one before it was torn mid-line
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    assert cli.main(argv + ["--resume"]) == 0
    cases = [r for r in records_tolerant(path) if r["type"] == "case"]
    keys = [(r["backend"], r["mode"]) for r in cases]
    assert sorted(set(keys)) == sorted(
        {("fake", "train"), ("fake", "infer"), ("native", "train"), ("native", "infer")}
    )
    assert len(keys) == 4  # the two recorded cases were not measured again
    assert cli.main(argv + ["--resume"]) == 0  # nothing left to do: only a run record is added
    assert len([r for r in records_tolerant(path) if r["type"] == "case"]) == 4
    assert len([r for r in records_tolerant(path) if r["type"] == "run"]) == 3


def records_tolerant(path: Path) -> list[dict]:
    from bench.records import iter_records

    return list(iter_records([path]))


def test_resume_retries_failed_cases_only_when_asked(tmp_path, fakes):
    out = tmp_path / "run"
    argv = [
        *"run --kinds lstm --backends broken --modes infer".split(),
        *TINY,
        *"--threads 1 --in-process --out".split(),
        str(out),
        *FAST,
    ]
    assert cli.main(argv) == 1
    assert cli.main(argv + ["--resume"]) == 0  # nothing left to measure
    assert len(records(out)) == 1
    assert cli.main(argv + ["--resume", "--retry-failed"]) == 1
    assert len(records(out)) == 2


def test_list_prints_cases_without_measuring(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                *"run --kinds rnn --backends native --modes infer --list --out".split(),
                str(out),
            ]
        )
        == 0
    )
    assert "rnn/native/infer I28 H256" in capsys.readouterr().out
    assert not (out / RECORDS_FILE).exists()


# --- the worker subprocess: time limit, crash, restart ------------------------------------------
def test_worker_survives_timeouts_and_crashes(tmp_path, monkeypatch):
    plugin = tmp_path / "fake_plugin_for_worker.py"
    plugin.write_text("import test_bench_fakes\ntest_bench_fakes.register_all()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from bench.worker import Worker

    worker = Worker(
        threads=1, imports=["fake_plugin_for_worker"], log_path=str(tmp_path / "worker.log")
    )
    options = Options(min_run_time=0.001, min_repeats=3, warmup=0, memory=False, check=False)
    fake = Case("lstm", "fake", "infer", 3, 4, 1, 2, 3, threads=1)
    try:
        assert worker.call(("case", fake, options, None), 60)[0] == "ok"
        ok = worker.call(("case", fake, options, None), 60)
        assert ok[0] == "ok" and len(ok[1]["times"]) >= 3 and min(ok[1]["times"]) > 0
        assert worker.starts == 1 and worker.info["torch_threads"] == 1  # reused between cases
        hang = worker.call(
            ("case", Case("lstm", "hangs", "infer", 3, 4, 1, 2, 3, threads=1), options, None), 2.0
        )
        assert hang[0] == "failed" and "exceeded the time limit of 2 s" in hang[1]
        assert not worker.alive()
        crash = worker.call(
            ("case", Case("lstm", "crashes", "infer", 3, 4, 1, 2, 3, threads=1), options, None), 60
        )
        assert crash[0] == "failed" and "worker process died (SIGKILL" in crash[1]
        assert worker.starts == 2  # restarted after the timeout; the crash is reported, not raised
    finally:
        worker.stop()
    assert not worker.alive()


def test_budget_stops_starting_cases_and_resume_finishes(tmp_path, fakes, capsys):
    out = tmp_path / "run"
    argv = [
        *"run --kinds lstm --backends fake --modes train,infer".split(),
        *TINY,
        *"--threads 1 --in-process --out".split(),
        str(out),
        *FAST,
    ]
    assert cli.main(argv + ["--budget", "1e-9"]) == 1  # not everything was measured
    unmeasured = records(out)
    assert [r["status"] for r in unmeasured] == ["unmeasured"] * 2
    assert "budget" in unmeasured[0]["error"] and "--resume" in capsys.readouterr().err
    assert cli.main(argv + ["--resume"]) == 0  # unmeasured cases are measured on resume
    assert [r["status"] for r in records(out)[2:]] == ["ok", "ok"]


# --- interleaved rounds ------------------------------------------------------------------------
def test_comparison_groups_hold_the_backends_of_one_shape():
    cases, _, _ = plan(
        *(
            "--kinds lstm --backends naive,native --modes train --batch 2,4 --input-size 3 "
            "--hidden-size 4 --seq-len 3"
        ).split(),
    )
    groups = sweep.comparison_groups(cases)
    assert [[(c.backend, c.batch) for c in g] for g in groups] == [
        [("naive", 2), ("native", 2)],
        [("naive", 4), ("native", 4)],
    ]


class _Named(test_bench_fakes.FakeRecurrent):
    """Logs which backend ran; raises once backend `FAIL_AFTER` has run (a later round)."""

    NAME = "a"
    FAIL_AFTER = None

    def forward(self, x, hx=None):
        if any(c.get("name") == self.FAIL_AFTER for c in test_bench_fakes.CALLS):
            raise RuntimeError("fails in a later round")
        out = super().forward(x, hx)
        test_bench_fakes.CALLS[-1]["name"] = self.NAME
        return out


def _named(name: str, fail_after: str | None = None) -> type:
    return type(f"Named_{name}", (_Named,), {"NAME": name, "FAIL_AFTER": fail_after})


@pytest.fixture
def named(fakes):
    """Registers _Named backends: named({"fake_a": ("a", None), ...}); unregisters them after."""
    added = []

    def register(backends: dict) -> None:
        for backend, (name, fail_after) in backends.items():
            cells.register("lstm", backend, _named(name, fail_after), replace=True)
            added.append(backend)
        test_bench_fakes.CALLS.clear()

    yield register
    for backend in added:
        cells.unregister("lstm", backend)


def _rounds_argv(backends: str, out: Path, rounds: int) -> list[str]:
    return [
        *"run --kinds lstm --backends".split(),
        backends,
        "--modes",
        "infer",
        *TINY,
        *"--threads 1 --in-process --out".split(),
        str(out),
        *FAST[:-4],
        "--min-rounds",
        str(rounds),
        "--max-rounds",
        str(rounds),
    ]


def test_rounds_interleave_the_backends(tmp_path, named):
    named({"fake_a": ("a", None), "fake_b": ("b", None)})
    out = tmp_path / "run"
    assert cli.main(_rounds_argv("fake_a,fake_b", out, 3)) == 0
    names = [c["name"] for c in test_bench_fakes.CALLS if "name" in c]
    runs = [names[0]]
    for n in names[1:]:
        if n != runs[-1]:
            runs.append(n)
    # round 1 (with the build) a, b; round 2: b, a; round 3: a, b
    assert runs == ["a", "b", "a", "b"]
    three = records(out)
    assert [r["rounds"] for r in three] == [3, 3] and [r["stop_reason"] for r in three] == [
        "max_rounds"
    ] * 2
    for r in three:
        assert r["status"] == "ok" and r["repeats"] >= 3 * 3 and len(r["round_times"]) == 3
        assert r["tokens_per_s"] == pytest.approx(2 * 3 / r["median_s"])


def test_a_round_that_fails_is_recorded_with_its_round(tmp_path, named):
    named({"later": ("later", "b"), "fake_b": ("b", None)})  # later raises once b has run
    out = tmp_path / "run"
    assert cli.main(_rounds_argv("later,fake_b", out, 3)) == 1
    by = {r["backend"]: r for r in records(out)}
    assert by["later"]["status"] == "failed" and by["later"]["failed_round"] == 2
    assert by["later"]["error"] == "round 2: RuntimeError: fails in a later round"
    assert by["later"]["rounds"] == 1  # the round it completed is kept
    assert by["fake_b"]["status"] == "ok" and by["fake_b"]["rounds"] == 3


def test_shards_split_the_plan_by_comparison_group():
    everything, _, _ = plan("--preset", "quick")
    shards = [plan("--preset", "quick", "--shard", f"{k}/3")[0] for k in (1, 2, 3)]
    keys = [c.key() for shard in shards for c in shard]
    assert sorted(keys) == sorted(c.key() for c in everything) and len(keys) == len(set(keys))
    owner = {sweep.group_key(c): k for k, shard in enumerate(shards) for c in shard}
    assert all(owner[sweep.group_key(c)] == k for k, shard in enumerate(shards) for c in shard)
    assert all(shards)  # every shard has work at this size
    assert sweep.shard_of(everything[0], 3) == sweep.shard_of(everything[0], 3)  # stable


@pytest.mark.parametrize("value", ["0/3", "4/3", "a/b", "3"])
def test_bad_shard_is_a_usage_error(capsys, value):
    assert cli.main(["run", "--shard", value, "--list"]) == 2
    assert "expected K/N with integers 1 <= K <= N" in capsys.readouterr().err


def test_convention_is_a_grid_axis_and_every_record_names_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--kinds", "lstm", "--backends", "native,fused", "--modes", "train", *TINY]
    argv += ["--threads", "1", "--in-process", "--out", str(out), *FAST]
    assert cli.main([*argv, "--convention", "full,recurrent", "--optimizer-step"]) == 0
    got = {(r["backend"], r["convention"]): r for r in records(out)}
    assert set(got) == {(b, c) for b in ("native", "fused") for c in ("full", "recurrent")}
    for (_, convention), r in got.items():
        assert r["status"] == "ok" and r["ratio_to_native"] is not None  # grouped per convention
        assert (
            r["flop_convention"]
            == {"full": "matmul-all", "recurrent": "matmul-recurrent"}[convention]
        )
        # I3 H4 B2 T3: recurrent train counts 2 x 2*4*B*H*H*T; full 3 x 2*4*B*H*(I+H)*T
        h_in = 4 if convention == "recurrent" else 3 + 4
        assert r["flops"] == (2 if convention == "recurrent" else 3) * 2 * 4 * 2 * 4 * h_in * 3
        # frozen weights leave an optimizer nothing to step
        assert r["optimizer_step"] is (convention == "full")
    (run,) = records(out, "run")
    assert sorted(run["flop_convention"]) == ["matmul-all", "matmul-recurrent"]
    assert cli.main([*argv, "--convention", "deepbench"]) == 2
    assert "unknown convention 'deepbench'" in capsys.readouterr().err
