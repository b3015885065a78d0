"""Helpers shared by the four textbook tasks: seeding, weight init, clipping, progress, records."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import cells

INITS = ("default", "normal", "xavier", "kaiming")
TASKS = ("charlm", "names", "anbn", "poems")
OPTIMIZERS = ("sgd", "adam", "rmsprop")


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass


def make_cell(
    kind: str, backend: str, input_size: int, hidden_size: int, num_layers: int = 1, **kwargs
) -> nn.Module:
    """cells.create with messages that name the valid kinds and backends."""
    if kind not in cells.KINDS:
        raise ValueError(f"unknown cell kind {kind!r}; expected one of {', '.join(cells.KINDS)}")
    return cells.create(kind, backend, input_size, hidden_size, num_layers=num_layers, **kwargs)


def init_weights(module: nn.Module, scheme: str, seed: int) -> None:
    """Initialise every parameter from a private generator, in name order, so that any two
    backends (whose parameters have torch.nn's names) start from the same weights.

    default: torch.nn's U(-1/sqrt(fan), 1/sqrt(fan)) (fan = hidden size for recurrent weights,
    in_features for Linear, N(0, 1) for Embedding); normal: N(0, 0.01) weights and zero biases
    (d2l's from-scratch code); xavier / kaiming: xavier_uniform_ / kaiming_uniform_ on matrices,
    zero biases.
    """
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; expected one of {', '.join(INITS)}")
    gen = torch.Generator().manual_seed(int(seed))
    owners = {}
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            owner = owners[name]
            leaf = name.rsplit(".", 1)[-1]
            is_bias = leaf.startswith("bias")
            if scheme == "default":
                if isinstance(owner, nn.Embedding):
                    p.copy_(torch.randn(p.shape, generator=gen))
                    continue
                if isinstance(owner, nn.Linear):
                    fan = owner.in_features
                else:
                    fan = getattr(owner, "hidden_size", None) or (
                        p.shape[-1] if p.dim() > 1 else p.shape[0]
                    )
                bound = 1.0 / math.sqrt(fan)
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
            elif is_bias or p.dim() < 2:
                p.zero_()
            elif scheme == "normal":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            elif scheme == "xavier":
                t = torch.empty(p.shape)
                nn.init.xavier_uniform_(t, generator=gen)
                p.copy_(t)
            else:
                t = torch.empty(p.shape)
                nn.init.kaiming_uniform_(t, nonlinearity="relu", generator=gen)
                p.copy_(t)


def clip_gradients(params: Iterable[torch.Tensor], theta: float) -> float:
    """d2l's grad_clipping: rescale all gradients together when their global norm exceeds theta."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.sqrt(sum(torch.sum(p.grad**2) for p in params))
    if theta and theta > 0 and norm > theta:
        for p in params:
            p.grad.mul_(theta / norm)
    return float(norm)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; expected sgd, adam or rmsprop")


def progress(iterable, total: int | None = None, desc: str = "", enabled: bool | None = None):
    """tqdm over epochs, silent when stderr is not a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def split_list(value: str | Sequence, cast: Callable = str, name: str = "value") -> list:
    """'a,b,c' -> [cast(a), cast(b), cast(c)], with an error naming the option."""
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{name}: expected a comma-separated list, got {value!r}")
    out = []
    for v in items:
        try:
            out.append(cast(v))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name}: {v!r} is not a valid {getattr(cast, '__name__', 'value')}"
            ) from None
    return out


def list_of(cast: Callable, name: str) -> Callable[[str], list]:
    def parse(value: str) -> list:
        return split_list(value, cast, name)

    parse.__name__ = f"list of {getattr(cast, '__name__', 'value')}"
    return parse


def run_key(task: str, kind: str, backend: str, seed: int, settings: dict) -> str:
    """A stable id of one run's configuration, for --resume."""
    blob = json.dumps(
        {"task": task, "kind": kind, "backend": backend, "seed": seed, "settings": settings},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def done_keys(out_dir: str | os.PathLike) -> set[str]:
    from bench.records import iter_records

    if not Path(out_dir).exists():
        return set()
    return {r.get("run_key") for r in iter_records([out_dir]) if r.get("type") == "task"}


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "host": platform.node(),
    }


def provenance(record: dict, args, data_source: str | None = None) -> dict:
    """Add where the data came from (bench.data.SOURCES) and the suite mode, if any."""
    if data_source is not None:
        record["data_source"] = data_source
    if getattr(args, "suite", None):
        record["suite"] = args.suite
    return record


def task_record(
    task: str,
    kind: str,
    backend: str,
    seed: int,
    settings: dict,
    metrics: dict,
    curves: dict,
    timings: dict,
    **extra,
) -> dict:
    record = {
        "type": "task",
        "status": "ok",
        "task": task,
        "kind": kind,
        "backend": backend,
        "seed": seed,
        "run_key": run_key(task, kind, backend, seed, settings),
        "settings": settings,
        "metrics": metrics,
        "curves": curves,
        "timings": timings,
        "env": environment(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    record.update(extra)
    return record


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    kinds: str = "lstm",
    backends: str = "native",
    seeds: str = "0",
) -> None:
    parser.add_argument(
        "--kind",
        "--kinds",
        dest="kinds",
        type=list_of(str, "--kind"),
        default=split_list(kinds),
        help=f"cell kinds, comma list (default {kinds})",
    )
    parser.add_argument(
        "--backend",
        "--backends",
        dest="backends",
        type=list_of(str, "--backend"),
        default=split_list(backends),
        help=f"backends, comma list (default {backends})",
    )
    parser.add_argument(
        "--seed",
        "--seeds",
        dest="seeds",
        type=list_of(int, "--seed"),
        default=split_list(seeds, int),
        help=f"seeds, comma list (default {seeds})",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="data file or directory (else $CELLBENCH_DATA, the cache, a download)",
    )
    parser.add_argument("--out", required=True, help="output directory for records.jsonl and plots")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip runs whose configuration already has a record in --out",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: these small models gain little from more, and "
        "oversubscribed cores slow multi-threaded kernels down badly; 0: torch's "
        "default)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="force the tqdm progress bar (default: only on a terminal)",
    )
    # set by `python -m bench tasks`, so that the report can say which settings a run used
    parser.add_argument("--suite", choices=("short", "full"), default=None, help=argparse.SUPPRESS)


# (dest, option, what is valid, test) rules for check_options
Rule = tuple[str, str, str, Callable[[Any], bool]]


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v is not None and math.isfinite(v) and v >= low


def positive(v: Any) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def open_unit(v: Any) -> bool:
    return v is not None and 0 < v < 1


def known_optimizer(v: Any) -> bool:
    return str(v).lower() in OPTIMIZERS


OPTIMIZER_RULE: Rule = (
    "optimizer",
    "--optimizer",
    f"one of {', '.join(OPTIMIZERS)}",
    known_optimizer,
)
COMMON_RULES: tuple[Rule, ...] = (
    ("threads", "--threads", "an integer >= 0 (0: torch's default)", at_least(0)),
    ("seeds", "--seed", "an integer >= 0", at_least(0)),
)


def check_options(args, rules: Sequence[Rule]) -> None:
    """Refuse out-of-range options before any work, one line naming the valid range (the CLI
    turns the ValueError into exit status 2). Comma-list options are checked item by item."""
    for dest, option, valid, ok in (*COMMON_RULES, *rules):
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not ok(v):
                raise ValueError(f"{option} must be {valid}, got {v!r}")


def apply_threads(args) -> None:
    threads = getattr(args, "threads", None)
    if threads and threads > 0:
        torch.set_num_threads(threads)


def check_kinds_backends(kinds: Sequence[str], backends: Sequence[str]) -> None:
    for kind in kinds:
        if kind not in cells.KINDS:
            raise ValueError(
                f"unknown cell kind {kind!r}; expected one of {', '.join(cells.KINDS)}"
            )
        for backend in backends:
            cells.get(kind, backend)  # raises with the valid names


def safe_name(*parts: Any) -> str:
    return "_".join(str(p).replace("/", "-").replace(" ", "") for p in parts)
