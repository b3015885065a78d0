"""Helpers shared by the textbook tasks: seeding, weight init, clipping, options, records."""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

import cells
from bench.cli import list_of, split_list  # noqa: F401  (the one list parser; re-exported)

INITS = ("default", "normal", "xavier", "kaiming")
PROTOCOLS = ("cellbench", "lab")
DEVICES = ("cpu", "cuda")
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
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.stack([torch.sum(g**2) for g in grads]).sum().sqrt()
    if theta and theta > 0 and norm > theta:
        for g in grads:
            g.mul_(theta / norm)
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


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    kinds: str = "lstm",
    backends: str = "native",
    seeds: str = "0",
) -> None:
    for option, what, cast, default in (
        ("kind", "cell kinds", str, kinds),
        ("backend", "backends", str, backends),
        ("seed", "seeds", int, seeds),
    ):
        parser.add_argument(
            f"--{option}",
            f"--{option}s",
            dest=f"{option}s",
            type=list_of(cast, f"--{option}"),
            default=split_list(default, cast),
            help=f"{what}, comma list (default {default})",
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
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="cellbench",
        help="cellbench (default: held-out metrics, batched) or lab (the lab's own protocol, "
        "as its report describes it; docs/tasks.md)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the model and its batches live (cuda: refused when CUDA is absent)",
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


def count(dest: str, low: int = 1, note: str = "") -> Rule:
    """The rule for an integer option `--dest` that must be >= low."""
    return (dest, "--" + dest.replace("_", "-"), f"an integer >= {low}{note}", at_least(low))


LR_RULE: Rule = ("lr", "--lr", "a number > 0", positive)
CLIP_RULE: Rule = ("clip", "--clip", "a number >= 0 (0: no clipping)", at_least(0))
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


def check_device(args) -> str:
    """The --device to run on; cuda is refused, before any work, where torch sees no GPU."""
    device = getattr(args, "device", None) or "cpu"
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: torch sees no CUDA device here (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu"
        )
    return device


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


def over_seeds(runs: Sequence[dict], metric: str) -> dict[tuple[str, str], dict]:
    """Per (kind, backend): `metric` over the runs' seeds (seeds, min, median, max, mean, all)."""
    by: dict[tuple[str, str], list] = {}
    for r in runs:
        value = r.get("metrics", {}).get(metric)
        if value is not None:
            by.setdefault((r["kind"], r["backend"]), []).append(value)
    return {
        key: {
            "seeds": len(c),
            "min": min(c),
            "median": statistics.median(c),
            "max": max(c),
            "mean": statistics.fmean(c),
            "all": c,
        }
        for key, c in by.items()
    }
