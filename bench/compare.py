"""`python -m bench compare`: a speed-regression gate that survives noisy shared machines.

Absolute times drift by +-30% between runs on shared CI machines, so the gate never compares
absolute times across runs. It compares *ratios measured in one process*: each round times the
backend and torch.nn (native) back to back, alternating which goes first (A B, B A, A B, ...),
and records t_backend / t_native. Drift in machine speed hits both sides of a round alike.

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
import datetime as _dt
import json
import math
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .cli import UsageError, add_import_option, check_names, csv, import_modules, number
from .environment import cpu_model
from .measure import MODES
from .stats import mann_whitney_p, ratio_change_ci

FORMAT = "cellbench-compare/1"
SHAPE_KEYS = ("input_size", "hidden_size", "batch", "seq_len")
MIN_ROUNDS = 4  # below this the Mann-Whitney test can never reach p < 0.05
DEFAULT_SHAPE = (28, 256, 32, 35)  # d2l's size: input, hidden, batch, seq_len


class CompareError(Exception):
    """A usage or file problem: exit status 2 with this message."""


# --- machine identity --------------------------------------------------------------------
def machine_info() -> dict:
    import torch

    info = dict(
        cpu=cpu_model() or platform.machine(),
        cores=os.cpu_count(),
        arch=platform.machine(),
        system=platform.system(),
        node=platform.node(),
        python=platform.python_version(),
    )
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_name(info: dict) -> str:
    """Hardware, not host name (CI runners change names): CPU model, cores, arch, GPU."""
    text = f"{info.get('cpu', '?')}-{info.get('cores', '?')}c-{info.get('arch', '?')}"
    if info.get("gpu"):
        text += f"-{info['gpu']}"
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def machine_key(machine: str, torch_version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{machine}__torch-{torch_version}")


# --- measuring ---------------------------------------------------------------------------
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
    progress=print,
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
    data = dict(
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
        results=[],
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
                entry = dict(
                    kind=kind,
                    backend=r.backend,
                    reference="native",
                    mode=mode,
                    shape=dict(
                        input_size=input_size, hidden_size=hidden_size, batch=batch, seq_len=seq_len
                    ),
                    ratios=[b / a for a, b in zip(native.round_times, r.round_times)],
                    backend_s=r.round_times,
                    native_s=native.round_times,
                )
                data["results"].append(entry)
                progress(
                    f"  {kind}/{r.backend}/{mode}: median ratio to native "
                    f"{float(np.median(entry['ratios'])):.3f} over {len(entry['ratios'])} rounds"
                )
    if not data["results"]:
        raise CompareError(
            "nothing was measured: no backend other than native for "
            f"{', '.join(kinds)} (pass --import and --backends)"
        )
    return data


# --- loading and checking files ------------------------------------------------------------
def load(path: str | os.PathLike, role: str = "file") -> dict:
    path = Path(path)
    if not path.exists():
        hint = (
            " Record one with `python -m bench compare --record PATH`."
            if role == "baseline"
            else ""
        )
        raise CompareError(f"{role} {path} does not exist.{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{role} {path} is not readable JSON: {exc}") from None
    problem = _malformed(data)
    if problem:
        raise CompareError(f"{role} {path} is malformed: {problem}")
    return data


def _malformed(data) -> str:
    if not isinstance(data, dict):
        return "expected a JSON object"
    if data.get("format") != FORMAT:
        return f"format is {data.get('format')!r}, expected {FORMAT!r}"
    for key in ("machine", "torch", "results"):
        if key not in data:
            return f"no {key!r} field"
    if not isinstance(data["results"], list) or not data["results"]:
        return "no results"
    for i, r in enumerate(data["results"]):
        if not isinstance(r, dict) or not {"kind", "backend", "mode", "shape", "ratios"} <= set(r):
            return f"result {i} lacks kind/backend/mode/shape/ratios"
        shape = r["shape"]
        if not (
            isinstance(shape, dict)
            and set(SHAPE_KEYS) <= set(shape)
            and all(_positive_int(shape[k]) for k in SHAPE_KEYS)
        ):
            return (
                f"result {i} has shape {shape!r}; expected an object with positive integers "
                f"{', '.join(SHAPE_KEYS)}"
            )
        ratios = r["ratios"]
        if not isinstance(ratios, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
            for x in ratios
        ):
            return f"result {i} ({r.get('kind')}/{r.get('backend')}/{r.get('mode')}) has invalid ratios"
        if len(ratios) < MIN_ROUNDS:
            return (
                f"result {i} ({r['kind']}/{r['backend']}/{r['mode']}) has {len(ratios)} rounds; "
                f"at least {MIN_ROUNDS} are needed for a significance test"
            )
    return ""


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def resolve_baseline(path: str | os.PathLike, new: dict) -> Path:
    """A file as it is; a directory: its file for NEW's machine key."""
    path = Path(path)
    if not path.is_dir():
        return path
    key = new.get("key") or machine_key(new["machine"], new["torch"])
    candidate = path / f"{key}.json"
    if not candidate.exists():
        found = sorted(p.name for p in path.glob("*.json"))
        raise CompareError(
            f"no baseline for this machine and torch version ({key}) in {path}; "
            f"found: {', '.join(found) or 'none'}. Record one with "
            f"`python -m bench compare --record {path}` on this machine."
        )
    return candidate


def mismatches(base: dict, new: dict) -> list[str]:
    out = []
    if base["machine"] != new["machine"]:
        out.append(f"machine differs: baseline {base['machine']!r}, new {new['machine']!r}")
    if base["torch"] != new["torch"]:
        out.append(f"torch differs: baseline {base['torch']}, new {new['torch']}")
    for key in ("threads", "device"):
        b, n = base.get("settings", {}).get(key), new.get("settings", {}).get(key)
        if b != n:
            out.append(f"{key} differs: baseline {b}, new {n}")
    return out


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
                f"{r['p']:.3g} | {'**' + r['status'] + '**' if r['status'] == 'regressed' else r['status']} |"
            )
        else:
            new_ratio = f"{r['new']:.3f}" if "new" in r else "—"
            lines.append(
                f"| {r['kind']} | {r['backend']} | {r['mode']} | {shape} | — | {new_ratio} | — | — | — | "
                f"{'**missing**' if r['status'] == 'missing' else r['status']} |"
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
