"""The timing engine: interleaved rounds per comparison group, adaptive until the ratios are known.

A comparison group is the cases that differ only in the backend (same kind, mode, shape, device,
dtype and threads). All of its cases live in one worker process. Each is built, checked by the
correctness gate (bench.gate), called once (`first_call_s`: compilation), warmed up and timed for
one round; then rounds are added, every case of the group timed back to back in alternating
order (A B C, C B A, ...), so a slow spell of a shared machine hits every backend of a round.
A round's time is the median per-call time of its torch.utils.benchmark blocks.

Rounds stop, for the whole group, at the first of (the record's `stop_reason`):
  ci          from `min_rounds` on, every backend's ratio to native has a 95% bootstrap interval
              whose half-width is at most `ci_target` of the ratio (asv and torch.utils.benchmark's
              adaptive_autorange likewise stop once the estimate is tight enough);
  time_cap    the group's rounds have taken `group_time_cap` seconds;
  max_rounds  `max_rounds` rounds;
  budget      the run's --budget is spent;
  no_reference  the group has no ok native case, so there is no ratio to narrow: `min_rounds`;
  group_fault another case crashed the shared worker (its kept workloads died with it);
  interrupted the run was interrupted: the rounds already timed are kept.
A case that raises, hangs or kills the worker in a round is `failed`, naming the round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import stats
from .measure import Case, Options, derived
from .records import CaseRecord

REFERENCE = "native"


@dataclass
class _Entry:
    case: Case
    record: CaseRecord
    times: list = field(default_factory=list)  # per-round median seconds per call
    blocks: int = 0
    active: bool = False


def _round_time(block_times: list) -> float:
    return stats.quartiles(block_times)[1]


def _died(worker) -> bool:
    alive = getattr(worker, "alive", None)
    return alive is not None and not alive()


class GroupTimer:
    """Measure one comparison group in `worker` (bench.worker.Worker or InProcess)."""

    def __init__(
        self,
        group: list[Case],
        worker,
        options: Options,
        peaks: dict,
        base: Callable[[Case], CaseRecord],
        out_of_budget: Callable[[], bool] = lambda: False,
        describe: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.worker, self.options, self.peaks = worker, options, peaks
        self.out_of_budget, self.describe = out_of_budget, describe
        self.entries = [_Entry(c, base(c)) for c in group]

    # --- phases -------------------------------------------------------------------------
    def _build(self, entry: _Entry) -> None:
        """Build, check, first-call, warm up and time round 1 of one case in the worker."""
        t0 = time.monotonic()
        peak = (self.peaks.get((entry.case.device, entry.case.threads)) or {}).get("peak_gflops")
        reply = self.worker.call(
            ("case", entry.case, self.options, peak, True), self.options.time_limit
        )
        entry.record.wall_s = (entry.record.wall_s or 0.0) + time.monotonic() - t0
        if reply[0] != "ok":
            entry.record.status, entry.record.error = "failed", reply[1]
            return
        result = reply[1]
        for name in (
            "first_call_s",
            "check_s",
            "check_error",
            "peak_mem_bytes",
            "mem_method",
            "param_count",
        ):
            setattr(entry.record, name, result.get(name))
        if result.get("status") in ("incorrect", "unsupported"):
            entry.record.status, entry.record.error = result["status"], result["error"]
            return
        entry.times = [_round_time(result["times"])]
        entry.blocks = len(result["times"])
        entry.active = True

    def _active(self) -> list[_Entry]:
        return [e for e in self.entries if e.active]

    def _ratios(self) -> dict[int, tuple[float, float, float, int]]:
        """index -> (median ratio, low, high, paired rounds) for every active non-reference case."""
        ref = next(
            (
                e
                for e in self.entries
                if e.case.backend == REFERENCE and e.times and e.record.status == "ok"
            ),
            None,
        )
        out: dict[int, tuple[float, float, float, int]] = {}
        if ref is None:
            return out
        for i, e in enumerate(self.entries):
            if e.case.backend == REFERENCE or not e.times or e.record.status != "ok":
                continue
            ratios = stats.round_ratios(ref.times, e.times)
            if ratios:
                out[i] = (*stats.median_ci(ratios), len(ratios))
        return out

    def _stop_reason(self, started: float) -> str | None:
        active = self._active()
        if not active:
            return None
        done = min(len(e.times) for e in active)
        o = self.options
        if self.out_of_budget():
            return "budget"
        if done >= o.max_rounds:
            return "max_rounds"
        if done >= o.min_rounds:
            ratios = self._ratios()
            if not ratios:
                return "no_reference"
            if all(
                stats.relative_half_width(p, lo, hi) <= o.ci_target
                for p, lo, hi, _ in ratios.values()
            ):
                return "ci"
        if time.monotonic() - started >= o.group_time_cap:
            return "time_cap"
        return None

    def _round(self, number: int) -> bool:
        """Time round `number` (1-based) of every active case; False if the worker died."""
        active = self._active()
        for e in active if number % 2 else active[::-1]:
            self.describe(f"{e.case.label()} round {number}")
            t0 = time.monotonic()
            reply = self.worker.call(("retime", e.case, self.options), self.options.time_limit)
            e.record.wall_s = (e.record.wall_s or 0.0) + time.monotonic() - t0
            if reply[0] == "ok":
                e.times.append(_round_time(reply[1]))
                e.blocks += len(reply[1])
                continue
            e.active = False
            e.record.status, e.record.failed_round = "failed", number
            e.record.error = f"round {number}: {reply[1]}"
            if _died(self.worker):
                for other in self._active():
                    other.active = False
                    other.record.stop_reason = "group_fault"
                    other.record.error = (
                        f"rounds stopped in round {number}: {e.case.backend} "
                        "ended the shared worker"
                    )
                return False
        return True

    def run(self) -> list[CaseRecord]:
        """Measure the group; returns its records (also when interrupted, then re-raises)."""
        try:
            for e in self.entries:
                self.describe(f"{e.case.label()} (build, check, first call)")
                self._build(e)
                if e.record.status != "ok" and _died(self.worker):
                    for other in self._active():  # their workloads died with the worker: rebuild
                        other.active = False
                        self._build(other)
            started, number = time.monotonic(), 2
            while self._active():
                reason = self._stop_reason(started)
                if reason:
                    for e in self._active():
                        e.record.stop_reason, e.active = reason, False
                    break
                if not self._round(number):
                    break
                number += 1
        except BaseException:
            for e in self._active():
                e.record.stop_reason, e.active = "interrupted", False
            self._finish()
            raise
        return self._finish()

    def _finish(self) -> list[CaseRecord]:
        ratios = self._ratios()
        for i, e in enumerate(self.entries):
            r = e.record
            r.round_times, r.rounds, r.repeats = list(e.times), len(e.times), e.blocks
            if r.status != "ok" or not e.times:
                continue
            q25, median, q75 = stats.quartiles(e.times)
            r.median_s, r.iqr_s = median, q75 - q25
            r.iqr_rel = (q75 - q25) / median if median > 0 else None
            r.noisy = bool(r.iqr_rel is not None and r.iqr_rel > self.options.noise_threshold)
            figures = derived(e.case, median, r.peak_gflops)
            for name, value in figures.items():
                setattr(r, name, value)
            if e.case.backend == REFERENCE and ratios:
                r.ratio_to_native, r.ratio_ci95, r.ratio_rounds = 1.0, [1.0, 1.0], len(e.times)
            elif i in ratios:
                point, low, high, paired = ratios[i]
                r.ratio_to_native, r.ratio_ci95, r.ratio_rounds = point, [low, high], paired
        return [e.record for e in self.entries]
