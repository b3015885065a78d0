"""`bench compare --record`: measure every backend against native with the shared timing engine
(bench.timing.GroupTimer) and keep the per-round times and ratios of a fixed number of rounds."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence

import numpy as np

from .cli import check_names
from .compare_files import FORMAT, MIN_ROUNDS, CompareError, machine_info, machine_key, machine_name
from .measure import MODES


def record(
    kinds: Sequence[str],
    backends: Sequence[str] | None,
    modes: Sequence[str],
    shape: Sequence[int],
    rounds: int = 10,
    block_s: float = 0.05,
    threads: int = 1,
    device: str = "cpu",
    machine: str | None = None,
    progress: Callable[[str], None] = print,
) -> dict:
    """Measure every backend against native through the timing engine (bench.timing): each
    module passes the correctness gate, then `rounds` interleaved rounds (a fixed number, so
    that two files have samples of the same size); ratio = backend time / native time."""
    from dataclasses import asdict

    import torch

    import cells

    from .measure import Case, Options
    from .records import CaseRecord
    from .timing import GroupTimer
    from .worker import InProcess

    if rounds < MIN_ROUNDS:
        raise CompareError(
            f"--rounds must be at least {MIN_ROUNDS} (fewer rounds can never show a "
            f"significant change), got {rounds}"
        )
    check_names(kinds, cells.KINDS, "kind")
    check_names(modes, MODES, "mode")
    info = machine_info()
    results: list[dict] = []
    data: dict = dict(
        format=FORMAT,
        machine=machine or machine_name(info),
        machine_info=info,
        torch=torch.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(),
        settings=dict(
            rounds=rounds,
            block_s=block_s,
            threads=threads,
            device=device,
            shape=list(shape),
            modes=list(modes),
        ),
        results=results,
    )
    data["key"] = machine_key(data["machine"], data["torch"])
    options = Options(
        min_run_time=block_s,
        min_repeats=1,
        min_rounds=rounds,
        max_rounds=rounds,
        group_time_cap=1e9,
        memory=False,
    )
    worker = InProcess(threads, [])
    input_size, hidden_size, batch, seq_len = shape
    for kind in kinds:
        available = cells.backends(kind)
        wanted = [b for b in available if b != "native"] if not backends else list(backends)
        for name in wanted:
            if name not in available:
                raise CompareError(
                    f"backend {name!r} is not available for {kind!r}; available: "
                    f"{', '.join(available)}"
                )
        for mode in modes:
            group = [
                Case(
                    kind,
                    b,
                    mode,
                    input_size,
                    hidden_size,
                    1,
                    1 if mode == "generate" else batch,
                    seq_len,
                    device,
                    "float32",
                    threads,
                )
                for b in ["native", *wanted]
            ]
            records = GroupTimer(
                group, worker, options, {}, lambda c: CaseRecord(**asdict(c))
            ).run()
            worker.call(("forget",), None)
            native, others = records[0], records[1:]
            for r in records:
                if r.status != "ok":
                    raise CompareError(f"{kind}/{r.backend}/{mode} is {r.status}: {r.error}")
            for r in others:
                # t_backend / t_native per round: the file's statistic (> 1: slower than native)
                ratios = [b / a for a, b in zip(native.round_times, r.round_times)]
                entry = dict(
                    kind=kind,
                    backend=r.backend,
                    reference="native",
                    mode=mode,
                    shape=dict(
                        input_size=input_size, hidden_size=hidden_size, batch=batch, seq_len=seq_len
                    ),
                    ratios=ratios,
                    backend_s=r.round_times,
                    native_s=native.round_times,
                )
                results.append(entry)
                progress(
                    f"  {kind}/{r.backend}/{mode}: median ratio to native "
                    f"{float(np.median(ratios)):.3f} over {len(ratios)} rounds"
                )
    if not results:
        raise CompareError(
            "nothing was measured: no backend other than native for "
            f"{', '.join(kinds)} (pass --import and --backends)"
        )
    return data
