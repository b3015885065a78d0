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
import importlib
import json
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .environment import cpu_model

FORMAT = "cellbench-compare/1"
MIN_ROUNDS = 4  # below this the Mann-Whitney test can never reach p < 0.05
DEFAULT_SHAPE = (28, 256, 32, 35)  # d2l's size: input, hidden, batch, seq_len
RESAMPLES = 2000


class CompareError(Exception):
    """A usage or file problem: exit status 2 with this message."""


# --- machine identity --------------------------------------------------------------------
def machine_info() -> dict:
    import torch
    info = dict(cpu=cpu_model() or platform.machine(), cores=os.cpu_count(), arch=platform.machine(),
                system=platform.system(), node=platform.node(), python=platform.python_version())
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
def _timer(fn, threads: int, number: int) -> float:
    from torch.utils.benchmark import Timer
    return Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).timeit(number).mean


def measure_pair(kind: str, backend: str, mode: str, shape: Sequence[int], rounds: int = 10,
                 block_s: float = 0.05, threads: int = 1, device: str = "cpu",
                 reference: str = "native") -> dict:
    """Interleaved rounds of `backend` vs `reference`: per-round seconds per call and ratios."""
    import torch
    from bench.measure import Case, build_workload
    input_size, hidden_size, batch, seq_len = shape
    fns = {}
    for name in (reference, backend):
        torch.manual_seed(0)
        case = Case(kind=kind, backend=name, mode=mode, input_size=input_size,
                    hidden_size=hidden_size, batch=batch, seq_len=seq_len, device=device,
                    threads=threads)
        fns[name], _ = build_workload(case)
    once = {}
    for name, fn in fns.items():  # warm up (first-call compilation), then size the blocks
        for _ in range(2):
            fn()
        once[name] = min(_timer(fn, threads, 1) for _ in range(3))
    # Both sides run the same number of calls per block (sized by the slower one), so that
    # per-block effects (allocator, caches) do not differ between the two.
    number = max(1, int(block_s / max(max(once.values()), 1e-7)))
    numbers = {reference: number, backend: number}
    times = {reference: [], backend: []}
    for r in range(-1, rounds):  # round -1: an untimed warm-up of the interleaving itself
        order = (reference, backend) if r % 2 == 0 else (backend, reference)
        for name in order:
            t = _timer(fns[name], threads, number)
            if r >= 0:
                times[name].append(t)
    ratios = [b / a for a, b in zip(times[reference], times[backend])]
    return dict(kind=kind, backend=backend, reference=reference, mode=mode,
                shape=dict(input_size=input_size, hidden_size=hidden_size, batch=batch,
                           seq_len=seq_len),
                ratios=ratios, backend_s=times[backend], native_s=times[reference],
                calls_per_block={reference: numbers[reference], backend: numbers[backend]})


def record(kinds: Sequence[str], backends: Optional[Sequence[str]], modes: Sequence[str],
           shape: Sequence[int], rounds: int = 10, block_s: float = 0.05, threads: int = 1,
           device: str = "cpu", machine: Optional[str] = None, progress=print) -> dict:
    import torch
    import cells
    if rounds < MIN_ROUNDS:
        raise CompareError(f"--rounds must be at least {MIN_ROUNDS} (fewer rounds can never show a "
                           f"significant change), got {rounds}")
    info = machine_info()
    data = dict(format=FORMAT, machine=machine or machine_name(info), machine_info=info,
                torch=torch.__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(),
                settings=dict(rounds=rounds, block_s=block_s, threads=threads, device=device,
                              shape=list(shape), modes=list(modes)),
                results=[])
    data["key"] = machine_key(data["machine"], data["torch"])
    for kind in kinds:
        available = cells.backends(kind)
        wanted = [b for b in available if b != "native"] if not backends else list(backends)
        for name in wanted:
            if name not in available:
                raise CompareError(f"backend {name!r} is not available for {kind!r}; available: "
                                   f"{', '.join(available)}")
            for mode in modes:
                entry = measure_pair(kind, name, mode, shape, rounds, block_s, threads, device)
                data["results"].append(entry)
                progress(f"  {kind}/{name}/{mode}: median ratio to native "
                         f"{float(np.median(entry['ratios'])):.3f} over {rounds} rounds")
    if not data["results"]:
        raise CompareError("nothing was measured: no backend other than native for "
                           f"{', '.join(kinds)} (pass --import and --backends)")
    return data


# --- loading and checking files ------------------------------------------------------------
def load(path: str | os.PathLike, role: str = "file") -> dict:
    path = Path(path)
    if not path.exists():
        hint = " Record one with `python -m bench compare --record PATH`." if role == "baseline" else ""
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
        ratios = r["ratios"]
        if not isinstance(ratios, list) or not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0
                                                   for x in ratios):
            return f"result {i} ({r.get('kind')}/{r.get('backend')}/{r.get('mode')}) has invalid ratios"
        if len(ratios) < MIN_ROUNDS:
            return (f"result {i} ({r['kind']}/{r['backend']}/{r['mode']}) has {len(ratios)} rounds; "
                    f"at least {MIN_ROUNDS} are needed for a significance test")
    return ""


def resolve_baseline(path: str | os.PathLike, new: dict) -> Path:
    """A file as it is; a directory: its file for NEW's machine key."""
    path = Path(path)
    if not path.is_dir():
        return path
    key = new.get("key") or machine_key(new["machine"], new["torch"])
    candidate = path / f"{key}.json"
    if not candidate.exists():
        found = sorted(p.name for p in path.glob("*.json"))
        raise CompareError(f"no baseline for this machine and torch version ({key}) in {path}; "
                           f"found: {', '.join(found) or 'none'}. Record one with "
                           f"`python -m bench compare --record {path}` on this machine.")
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


# --- statistics --------------------------------------------------------------------------
def bootstrap_change(base: Sequence[float], new: Sequence[float], confidence: float = 0.95,
                     resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """median(new) / median(base) and its percentile bootstrap confidence interval."""
    rng = np.random.default_rng(seed)
    b, n = np.log(np.asarray(base, float)), np.log(np.asarray(new, float))
    point = float(np.exp(np.median(n) - np.median(b)))
    bi = rng.integers(0, len(b), size=(resamples, len(b)))
    ni = rng.integers(0, len(n), size=(resamples, len(n)))
    diffs = np.median(n[ni], axis=1) - np.median(b[bi], axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return point, float(np.exp(low)), float(np.exp(high))


def mann_whitney_p(base: Sequence[float], new: Sequence[float]) -> float:
    from scipy.stats import mannwhitneyu
    return float(mannwhitneyu(new, base, alternative="two-sided").pvalue)


def _key(r: dict) -> tuple:
    s = r["shape"]
    shape = tuple(s[k] for k in ("input_size", "hidden_size", "batch", "seq_len")) if isinstance(s, dict) else tuple(s)
    return r["kind"], r["backend"], r["mode"], shape


def compare_records(base: dict, new: dict, threshold: float = 0.10, confidence: float = 0.95) -> list[dict]:
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
        rows.append(dict(row, status=status, base=float(np.median(b)), new=float(np.median(n)),
                         change=change, low=low, high=high, p=p, rounds=(len(b), len(n))))
    return rows


def render(rows: list[dict], base: dict, new: dict, threshold: float, confidence: float,
           warnings: Sequence[str] = ()) -> str:
    lines = [f"## Speed comparison (threshold {threshold:.0%}, {confidence:.0%} confidence)", "",
             f"Baseline: {base['machine']}, torch {base['torch']}, {base.get('created', '?')}; "
             f"new: {new['machine']}, torch {new['torch']}, {new.get('created', '?')}.",
             "Ratio = time of the backend / time of torch.nn (native) in the same round (> 1: "
             "slower than native); change = median new ratio / median baseline ratio (> 1: the "
             "backend got slower).", ""]
    lines += [f"> warning: {w}" for w in warnings] + ([""] if warnings else [])
    lines += ["| kind | backend | mode | shape (I,H,B,T) | baseline ratio | new ratio | change | "
              f"{confidence:.0%} CI | Mann-Whitney p | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = ",".join(str(x) for x in r["shape"])
        if "change" in r:
            lines.append(f"| {r['kind']} | {r['backend']} | {r['mode']} | {shape} | {r['base']:.3f} | "
                         f"{r['new']:.3f} | {r['change']:.3f}x | {r['low']:.3f}–{r['high']:.3f} | "
                         f"{r['p']:.3g} | {'**' + r['status'] + '**' if r['status'] == 'regressed' else r['status']} |")
        else:
            new_ratio = f"{r['new']:.3f}" if "new" in r else "—"
            lines.append(f"| {r['kind']} | {r['backend']} | {r['mode']} | {shape} | — | {new_ratio} | — | — | — | "
                         f"{'**missing**' if r['status'] == 'missing' else r['status']} |")
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
        reason = (f"{what} is {r['change']:.2f}x slower relative to native (95% CI "
                  f"{r['low']:.2f}–{r['high']:.2f}x, Mann-Whitney p={r['p']:.2g})")
    return reason + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")


# --- the command -------------------------------------------------------------------------
def _percent(text: str) -> float:
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 10% or a fraction like 0.1, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the threshold must be positive, got {text!r}")
    return value


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="BASELINE NEW",
                        help="compare two record files (BASELINE may be a directory of keyed baselines)")
    parser.add_argument("--record", metavar="OUT", help="measure and write a record file (or DIR/<key>.json)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers third-party backends); repeatable")
    parser.add_argument("--kinds", type=_csv, default=["lstm", "gru", "rnn"])
    parser.add_argument("--backends", type=_csv, default=None,
                        help="backends to measure against native (default: every available one)")
    parser.add_argument("--modes", type=_csv, default=["train", "infer", "generate"])
    parser.add_argument("--shape", default=",".join(map(str, DEFAULT_SHAPE)), metavar="I,H,B,T",
                        help="input, hidden, batch, seq_len (default: d2l's 28,256,32,35)")
    parser.add_argument("--rounds", type=int, default=10, help=f"interleaved rounds (>= {MIN_ROUNDS})")
    parser.add_argument("--block-time", type=float, default=0.05, help="seconds per timed block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--machine", default=None, help="machine name for the key (default: from the hardware)")
    parser.add_argument("--threshold", type=_percent, default=0.10, help="slowdown that fails (default 10%%)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare files from another machine or torch version (a warning, not an error)")
    parser.add_argument("--output", default=None, help="also write the markdown table here")
    parser.set_defaults(func=main)


def _record(args) -> int:
    for module in args.imports:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise CompareError(f"cannot import {module!r}: {type(exc).__name__}: {exc}") from None
    try:
        shape = tuple(int(x) for x in args.shape.split(","))
        assert len(shape) == 4 and min(shape) > 0
    except (ValueError, AssertionError):
        raise CompareError(f"--shape must be four positive integers I,H,B,T, got {args.shape!r}") from None
    data = record(args.kinds, args.backends, args.modes, shape, args.rounds, args.block_time,
                  args.threads, args.device, args.machine)
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
            raise CompareError("the files are not comparable: " + "; ".join(problems)
                               + " (record a baseline on this machine, or pass --allow-mismatch)")
        for p in problems:
            print(f"compare: warning: {p}", file=sys.stderr)
        rows = compare_records(base, new, args.threshold, args.confidence)
        text = render(rows, base, new, args.threshold, args.confidence, problems)
        print(text)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
    except CompareError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    reason = gate(rows)
    if reason:
        print(f"compare: FAIL: {reason}")
        return 1
    print(f"compare: PASS ({sum(r['status'] == 'unchanged' for r in rows)} unchanged, "
          f"{sum(r['status'] == 'improved' for r in rows)} improved, "
          f"{sum(r['status'] == 'not significant' for r in rows)} not significant)")
    return 0
