"""The timing engine (bench/timing.py) driven by a scripted worker: stop rules, ratios, faults."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import pytest

from bench import stats
from bench.measure import Case, Options
from bench.records import CaseRecord
from bench.timing import GroupTimer


class ScriptedWorker:
    """Answers the engine's requests with per-backend times from `script` (backend -> cycle of
    per-call seconds, one per round); `die_at` = (backend, round) makes that round kill it."""

    def __init__(self, script: dict, die_at=None, incorrect=(), raises=()) -> None:
        self.times = {b: itertools.cycle(ts) for b, ts in script.items()}
        self.die_at, self.incorrect, self.raises = die_at, set(incorrect), set(raises)
        self.rounds = {b: 0 for b in script}
        self.calls: list[tuple[str, str]] = []
        self.dead = False

    def alive(self) -> bool:
        return not self.dead

    def call(self, message, timeout):
        what, case = message[0], message[1]
        self.calls.append((what, case.backend))
        if what == "case":
            self.dead = False
            if case.backend in self.raises:
                return ("failed", "RuntimeError: planted")
            if case.backend in self.incorrect:
                return (
                    "ok",
                    {
                        "status": "incorrect",
                        "error": "train check failed: output is not finite",
                        "first_call_s": 0.1,
                        "check_s": 0.01,
                        "check_error": None,
                    },
                )
            self.rounds[case.backend] = 1
            return (
                "ok",
                {
                    "status": "ok",
                    "times": [next(self.times[case.backend])] * 3,
                    "first_call_s": 0.2,
                    "check_s": 0.01,
                    "check_error": 0.05,
                    "param_count": 10,
                },
            )
        self.rounds[case.backend] += 1
        if self.die_at == (case.backend, self.rounds[case.backend]):
            self.dead = True
            return ("failed", "worker process died (SIGSEGV)")
        return ("ok", [next(self.times[case.backend])] * 3)


def group(*backends: str) -> list[Case]:
    return [Case("lstm", b, "train", 28, 256, 1, 32, 35, threads=2) for b in backends]


def run(cases, worker, **options) -> dict[str, CaseRecord]:
    timer = GroupTimer(cases, worker, Options(**options), {}, lambda c: CaseRecord(**asdict(c)))
    return {r.backend: r for r in timer.run()}


def test_steady_ratios_stop_on_the_ci_after_min_rounds():
    worker = ScriptedWorker({"native": [0.010], "numba": [0.005], "naive": [0.040]})
    out = run(group("native", "numba", "naive"), worker, min_rounds=5)
    for r in out.values():
        assert r.status == "ok" and r.stop_reason == "ci" and r.rounds == 5
    assert out["numba"].ratio_to_native == pytest.approx(2.0) and out[
        "numba"
    ].ratio_ci95 == pytest.approx([2, 2])
    assert out["naive"].ratio_to_native == pytest.approx(0.25)
    assert out["native"].ratio_to_native == 1.0 and out["native"].ratio_rounds == 5
    assert out["numba"].median_s == pytest.approx(0.005)
    assert out["numba"].tokens_per_s == pytest.approx(32 * 35 / 0.005)
    assert out["numba"].repeats == 15 and out["numba"].round_times == pytest.approx([0.005] * 5)


def test_rounds_alternate_their_order():
    worker = ScriptedWorker({"native": [0.010], "numba": [0.005]})
    run(group("native", "numba"), worker, min_rounds=4, max_rounds=4)
    retimes = [b for what, b in worker.calls if what == "retime"]
    assert retimes == ["numba", "native", "native", "numba", "numba", "native"]  # rounds 2, 3, 4


def test_noisy_ratios_run_until_the_round_cap():
    worker = ScriptedWorker({"native": [0.010, 0.010, 0.010], "fused": [0.005, 0.010, 0.020]})
    out = run(group("native", "fused"), worker, min_rounds=3, max_rounds=9)
    assert out["fused"].stop_reason == "max_rounds" and out["fused"].rounds == 9
    point, low, high = stats.median_ci([2.0, 1.0, 0.5] * 3)
    assert out["fused"].ratio_to_native == pytest.approx(point)
    assert out["fused"].ratio_ci95 == pytest.approx([low, high]) and low < 1 < high


def test_the_time_cap_stops_a_group_and_says_so():
    worker = ScriptedWorker({"native": [0.010, 0.030], "fused": [0.020, 0.010]})
    out = run(group("native", "fused"), worker, min_rounds=3, group_time_cap=1e-9)
    assert {r.stop_reason for r in out.values()} == {"time_cap"}
    assert out["fused"].rounds == 1 and out["fused"].ratio_to_native == pytest.approx(0.5)


def test_an_incorrect_case_is_never_timed_and_not_ranked():
    worker = ScriptedWorker({"native": [0.010], "nan": [0.001]}, incorrect={"nan"})
    out = run(group("native", "nan"), worker, min_rounds=2)
    assert out["nan"].status == "incorrect" and "not finite" in out["nan"].error
    assert out["nan"].tokens_per_s is None and out["nan"].ratio_to_native is None
    assert ("retime", "nan") not in worker.calls
    assert out["native"].stop_reason == "no_reference" and out["native"].rounds == 2


def test_a_worker_death_in_round_2_fails_that_case_and_keeps_the_others_rounds():
    worker = ScriptedWorker(
        {"native": [0.010], "segfault": [0.005], "fused": [0.02]}, die_at=("segfault", 2)
    )
    out = run(group("native", "segfault", "fused"), worker, min_rounds=3)
    seg = out["segfault"]
    assert (
        seg.status == "failed"
        and seg.failed_round == 2
        and "round 2" in seg.error
        and "SIGSEGV" in seg.error
    )
    for name in ("native", "fused"):
        r = out[name]
        assert (
            r.status == "ok"
            and r.stop_reason == "group_fault"
            and "segfault ended the shared worker" in r.error
        )
    # round 2 runs in reverse order: fused finished it, native never started it
    assert out["fused"].rounds == 2 and out["native"].rounds == 1
    assert out["fused"].ratio_to_native == pytest.approx(0.5) and out["fused"].ratio_rounds == 1


def test_a_failed_build_leaves_the_rest_of_the_group_measured():
    worker = ScriptedWorker(
        {"native": [0.010], "raises": [1.0], "numba": [0.005]}, raises={"raises"}
    )
    out = run(group("native", "raises", "numba"), worker, min_rounds=2)
    assert out["raises"].status == "failed" and out["raises"].error == "RuntimeError: planted"
    assert out["numba"].stop_reason == "ci" and out["numba"].ratio_to_native == pytest.approx(2.0)


def test_an_interruption_keeps_the_rounds_measured():
    class Interrupting(ScriptedWorker):
        def call(self, message, timeout):
            if message[0] == "retime" and self.rounds.get(message[1].backend, 0) >= 2:
                raise KeyboardInterrupt
            return super().call(message, timeout)

    worker = Interrupting({"native": [0.010], "numba": [0.005]})
    timer = GroupTimer(
        group("native", "numba"),
        worker,
        Options(min_rounds=5),
        {},
        lambda c: CaseRecord(**asdict(c)),
    )
    with pytest.raises(KeyboardInterrupt):
        timer.run()
    records = {e.record.backend: e.record for e in timer.entries}
    assert all(r.stop_reason == "interrupted" and r.rounds >= 2 for r in records.values())
    assert records["numba"].ratio_to_native == pytest.approx(2.0)


def test_median_ci_is_deterministic_and_contains_the_median():
    values = [0.9, 1.1, 1.0, 1.2, 0.95, 1.05]
    point, low, high = stats.median_ci(values)
    assert (point, low, high) == stats.median_ci(values) and low <= point <= high
    assert stats.relative_half_width(2.0, 1.9, 2.1) == pytest.approx(0.05)
    assert stats.undecided(0.9, 1.1) and not stats.undecided(1.01, 1.2)
