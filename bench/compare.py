"""`python -m bench compare`: a speed-regression gate that survives noisy shared machines.

Absolute times drift by +-30% between runs on shared CI machines, so the gate never compares
absolute times across runs. It compares *ratios measured in one process*: the shared timing
engine (bench.timing.GroupTimer, a fixed number of rounds) times torch.nn (native) and every
backend of a (kind, mode) back to back in each round, in alternating order (A B C, C B A, ...),
and the file keeps t_backend / t_native per round. Drift in machine speed hits every backend of
a round alike. The record file (format, machine key, loading) is bench.compare_files; measuring
is bench.compare_record.

Record (measure) a file:
    python -m bench compare --record new.json [--import MOD] [--kinds lstm] [--backends mine]
Compare a baseline with a new record (exit 1 when a backend got significantly slower):
    python -m bench compare baseline.json new.json [--threshold 10%]

Statistic, per (kind, backend, mode, shape): change = median(new ratios) / median(baseline
ratios). A regression needs all of
  * change > 1 + threshold (default 10%),
  * the 95% bootstrap confidence interval of `change` (percentile method, rounds resampled with
    replacement within each file, 2000 resamples, fixed seed) lies entirely above 1, and
  * the two-sided Mann-Whitney U test of the per-round ratios gives p < 0.05,
as asv's `continuous --factor` flags only changes that are both large and significant. An
improvement is the mirror image. A baseline entry missing from the new file fails the gate.

Baselines are keyed by machine and torch version (`machine_key`). Comparing files from different
machines or torch versions is an error (exit 2) unless --allow-mismatch is given, which turns it
into a printed warning. A missing, unreadable or malformed file is an error (exit 2), never a
pass. `--record DIR` (an existing directory) writes DIR/<machine key>.json; `compare DIR NEW`
picks the file of NEW's key from DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .cli import UsageError, add_import_option, csv, import_modules, number
from .compare_files import (
    FORMAT,
    MIN_ROUNDS,
    SHAPE_KEYS,
    CompareError,
    load,
    machine_info,
    machine_key,
    machine_name,
    mismatches,
    resolve_baseline,
)
from .compare_record import record
from .stats import mann_whitney_p, ratio_change_ci

__all__ = [
    "FORMAT",
    "MIN_ROUNDS",
    "CompareError",
    "compare_records",
    "configure",
    "gate",
    "load",
    "machine_info",
    "machine_key",
    "machine_name",
    "main",
    "record",
    "render",
]

DEFAULT_SHAPE = (28, 256, 32, 35)  # d2l's size: input, hidden, batch, seq_len


# --- statistics (bench.stats) ------------------------------------------------------------
bootstrap_change = ratio_change_ci


def _key(r: dict) -> tuple:
    return r["kind"], r["backend"], r["mode"], tuple(r["shape"][k] for k in SHAPE_KEYS)


def compare_records(
    base: dict, new: dict, threshold: float = 0.10, confidence: float = 0.95
) -> list[dict]:
    rows = []
    base_by, new_by = {_key(r): r for r in base["results"]}, {_key(r): r for r in new["results"]}
    alpha = 1 - confidence
    for key in list(base_by) + [k for k in new_by if k not in base_by]:
        kind, backend, mode, shape = key
        row = dict(kind=kind, backend=backend, mode=mode, shape=shape)
        if key not in new_by:
            rows.append(dict(row, status="missing"))
            continue
        if key not in base_by:
            rows.append(dict(row, status="new", new=float(np.median(new_by[key]["ratios"]))))
            continue
        b, n = base_by[key]["ratios"], new_by[key]["ratios"]
        change, low, high = bootstrap_change(b, n, confidence)
        p = mann_whitney_p(b, n)
        significant_up, significant_down = low > 1 and p < alpha, high < 1 and p < alpha
        if change > 1 + threshold and significant_up:
            status = "regressed"
        elif change < 1 / (1 + threshold) and significant_down:
            status = "improved"
        elif change > 1 + threshold or change < 1 / (1 + threshold):
            status = "not significant"
        else:
            status = "unchanged"
        rows.append(
            dict(
                row,
                status=status,
                base=float(np.median(b)),
                new=float(np.median(n)),
                change=change,
                low=low,
                high=high,
                p=p,
                rounds=(len(b), len(n)),
            )
        )
    return rows


def _marked(status: str, alarming: str) -> str:
    """The status, in bold when it is the one that fails the gate in this row's form."""
    return f"**{status}**" if status == alarming else status


def render(
    rows: list[dict],
    base: dict,
    new: dict,
    threshold: float,
    confidence: float,
    warnings: Sequence[str] = (),
) -> str:
    lines = [
        f"## Speed comparison (threshold {threshold:.0%}, {confidence:.0%} confidence)",
        "",
        f"Baseline: {base['machine']}, torch {base['torch']}, {base.get('created', '?')}; "
        f"new: {new['machine']}, torch {new['torch']}, {new.get('created', '?')}.",
        "Ratio = time of the backend / time of torch.nn (native) in the same round (> 1: "
        "slower than native); change = median new ratio / median baseline ratio (> 1: the "
        "backend got slower).",
        "",
    ]
    lines += [f"> warning: {w}" for w in warnings] + ([""] if warnings else [])
    lines += [
        "| kind | backend | mode | shape (I,H,B,T) | baseline ratio | new ratio | change | "
        f"{confidence:.0%} CI | Mann-Whitney p | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = ",".join(str(x) for x in r["shape"])
        if "change" in r:
            lines.append(
                f"| {r['kind']} | {r['backend']} | {r['mode']} | {shape} | {r['base']:.3f} | "
                f"{r['new']:.3f} | {r['change']:.3f}x | {r['low']:.3f}–{r['high']:.3f} | "
                f"{r['p']:.3g} | {_marked(r['status'], 'regressed')} |"
            )
        else:
            new_ratio = f"{r['new']:.3f}" if "new" in r else "—"
            lines.append(
                f"| {r['kind']} | {r['backend']} | {r['mode']} | {shape} | — | {new_ratio} | — | "
                f"— | — | {_marked(r['status'], 'missing')} |"
            )
    return "\n".join(lines) + "\n"


def gate(rows: list[dict]) -> str:
    """'' if the gate passes, else a one-line reason."""
    bad = [r for r in rows if r["status"] in ("regressed", "missing")]
    if not bad:
        return ""
    r = bad[0]
    what = f"{r['kind']}/{r['backend']}/{r['mode']} at {','.join(str(x) for x in r['shape'])}"
    if r["status"] == "missing":
        reason = f"{what} is in the baseline but was not measured in the new file"
    else:
        reason = (
            f"{what} is {r['change']:.2f}x slower relative to native (95% CI "
            f"{r['low']:.2f}–{r['high']:.2f}x, Mann-Whitney p={r['p']:.2g})"
        )
    return reason + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")


# --- the command -------------------------------------------------------------------------
def _percent(text: str) -> float:
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a percentage like 10% or a fraction like 0.1, got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a threshold > 0, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    values = csv(int)(text)
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected four positive integers I,H,B,T, got {text!r}")
    return tuple(values)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="*",
        metavar="BASELINE NEW",
        help="compare two record files (BASELINE may be a directory of keyed baselines)",
    )
    parser.add_argument(
        "--record", metavar="OUT", help="measure and write a record file (or DIR/<key>.json)"
    )
    add_import_option(parser)
    parser.add_argument("--kinds", type=csv(str), default=["lstm", "gru", "rnn"])
    parser.add_argument(
        "--backends",
        type=csv(str),
        default=None,
        help="backends to measure against native (default: every available one)",
    )
    parser.add_argument("--modes", type=csv(str), default=["train", "infer", "generate"])
    parser.add_argument(
        "--shape",
        type=_shape,
        default=DEFAULT_SHAPE,
        metavar="I,H,B,T",
        help="input, hidden, batch, seq_len (default: d2l's 28,256,32,35)",
    )
    parser.add_argument(
        "--rounds",
        type=number(int, MIN_ROUNDS),
        default=10,
        help=f"interleaved rounds (>= {MIN_ROUNDS})",
    )
    parser.add_argument(
        "--block-time",
        type=number(float, 0, low_open=True),
        default=0.05,
        help="seconds of timed calls per backend and round",
    )
    parser.add_argument("--threads", type=number(int, 1), default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--machine", default=None, help="machine name for the key (default: from the hardware)"
    )
    parser.add_argument(
        "--threshold", type=_percent, default=0.10, help="slowdown that fails (default 10%%)"
    )
    parser.add_argument(
        "--confidence",
        type=number(float, 0, 1, low_open=True),
        default=0.95,
        help="confidence of the interval and the test, in (0, 1) (default 0.95)",
    )
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="compare files from another machine or torch version (a warning, not an error)",
    )
    parser.add_argument("--output", default=None, help="also write the markdown table here")
    parser.set_defaults(func=main)


def _record(args) -> int:
    try:
        import_modules(args.imports)
    except UsageError as exc:
        raise CompareError(str(exc)) from None
    data = record(
        args.kinds,
        args.backends,
        args.modes,
        args.shape,
        args.rounds,
        args.block_time,
        args.threads,
        args.device,
        args.machine,
    )
    out = Path(args.record)
    if out.is_dir():
        out = out / f"{data['key']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    print(f"recorded {len(data['results'])} comparisons to {out} (key {data['key']})")
    return 0


def main(args) -> int:
    try:
        if args.record:
            if args.files:
                raise CompareError("give either --record OUT or BASELINE NEW, not both")
            return _record(args)
        if len(args.files) != 2:
            raise CompareError("expected BASELINE NEW (two record files), or --record OUT")
        new = load(args.files[1], "new record")
        base = load(resolve_baseline(args.files[0], new), "baseline")
        problems = mismatches(base, new)
        if problems and not args.allow_mismatch:
            raise CompareError(
                "the files are not comparable: "
                + "; ".join(problems)
                + " (record a baseline on this machine, or pass --allow-mismatch)"
            )
        for p in problems:
            print(f"compare: warning: {p}", file=sys.stderr)
        rows = compare_records(base, new, args.threshold, args.confidence)
        text = render(rows, base, new, args.threshold, args.confidence, problems)
        print(text)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
    except (CompareError, UsageError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    reason = gate(rows)
    if reason:
        print(f"compare: FAIL: {reason}")
        return 1
    print(
        f"compare: PASS ({sum(r['status'] == 'unchanged' for r in rows)} unchanged, "
        f"{sum(r['status'] == 'improved' for r in rows)} improved, "
        f"{sum(r['status'] == 'not significant' for r in rows)} not significant)"
    )
    return 0
