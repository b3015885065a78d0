"""a^n b^n (written 0^n 1^n) next-symbol prediction, after Gers & Schmidhuber (2001).

Strings `3 0^n 1^n 2` (3 = start, 2 = end), n drawn from 1..10 with weights 10,6,4,3,1,1,1,1,1,1.
Embedding + a cell of hidden size 2 + linear, Adam lr 1e-3, cross-entropy on every next symbol.
Evaluation: for every n in 1..100, greedy next-symbol predictions along the string; the symbol
after the last 0 (the first 1) cannot be predicted, every other error counts. "Memory capacity" =
the largest N such that every n <= N is solved with no avoidable error. Tiny nets are
seed-sensitive: run several seeds and report the spread.
"""
from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bench import records
from ..figures import save_figure
from .common import (add_common_arguments, apply_threads, check_kinds_backends, done_keys,
                     init_weights, make_cell, make_optimizer, progress, run_key,
                     seed_all, task_record)

START, ZERO, ONE, END = 3, 0, 1, 2
N_VALUES = tuple(range(1, 11))
N_WEIGHTS = (10, 6, 4, 3, 1, 1, 1, 1, 1, 1)
PAD = -100  # ignore_index of the loss


def sequence(n: int) -> list[int]:
    return [START] + [ZERO] * n + [ONE] * n + [END]


def make_batch(ns: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (T, B) and targets (T, B), time-major; padding positions have target PAD."""
    seqs = [sequence(n) for n in ns]
    T = max(len(s) for s in seqs) - 1
    x = torch.full((T, len(ns)), END, dtype=torch.long)
    y = torch.full((T, len(ns)), PAD, dtype=torch.long)
    for b, s in enumerate(seqs):
        x[: len(s) - 1, b] = torch.tensor(s[:-1])
        y[: len(s) - 1, b] = torch.tensor(s[1:])
    return x, y


class AnBnNet(nn.Module):
    def __init__(self, kind: str, backend: str, hidden_size: int = 2, embed: int = 4,
                 seed: int = 0, init: str = "default") -> None:
        super().__init__()
        self.embedding = nn.Embedding(4, embed)
        self.rnn = make_cell(kind, backend, embed, hidden_size)
        self.head = nn.Linear(hidden_size, 4)
        init_weights(self, init, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embedding(x))
        return self.head(y)  # (T, B, 4)


def avoidable_errors(model: AnBnNet, n_max: int = 100) -> list[int]:
    """errors[n-1] = wrong greedy next-symbol predictions on `3 0^n 1^n 2`, not counting the
    unpredictable first 1 (the target at position n)."""
    ns = list(range(1, n_max + 1))
    model.eval()
    with torch.no_grad():
        x, y = make_batch(ns)
        pred = model(x).argmax(-1)
    model.train()
    wrong = (pred != y) & (y != PAD)
    idx = torch.arange(len(ns))
    wrong[torch.tensor(ns), idx] = False  # position n: after the last 0, the first 1
    return wrong.sum(0).tolist()


def capacity(errors: list[int]) -> int:
    """The largest N with no avoidable error for every n in 1..N (0 if n=1 fails)."""
    cap = 0
    for n, e in enumerate(errors, 1):
        if e:
            break
        cap = n
    return cap


def run_one(kind: str, backend: str, seed: int, s: dict, show_progress=None) -> dict:
    seed_all(seed)
    model = AnBnNet(kind, backend, s["hidden_size"], s["embed"], seed=seed)
    opt = make_optimizer(s["optimizer"], model.parameters(), s["lr"])
    rng = random.Random(seed)
    curve_steps, curve_loss, curve_cap = [], [], []
    running, count = 0.0, 0
    eval_every = max(1, s["steps"] // 20)
    start = time.perf_counter()
    symbols = 0
    for step in progress(range(1, s["steps"] + 1), total=s["steps"], desc=f"anbn {kind}/{backend}",
                         enabled=show_progress):
        ns = rng.choices(N_VALUES, weights=N_WEIGHTS, k=s["batch_size"])
        x, y = make_batch(ns)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 4), y.reshape(-1), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        count += 1
        symbols += int((y != PAD).sum())
        if step % eval_every == 0 or step == s["steps"]:
            curve_steps.append(step)
            curve_loss.append(running / count)
            curve_cap.append(capacity(avoidable_errors(model, s["n_eval"])))
            running, count = 0.0, 0
    train_seconds = time.perf_counter() - start
    errors = avoidable_errors(model, s["n_eval"])
    cap = capacity(errors)
    solved = [n for n, e in enumerate(errors, 1) if e == 0]
    metrics = {"capacity": cap, "max_solved": max(solved) if solved else 0,
               "solved_count": len(solved), "solved_train_range": all(e == 0 for e in errors[:10]),
               "final_loss": curve_loss[-1] if curve_loss else None,
               "train_time_s": train_seconds,
               "tokens_per_s": symbols / train_seconds if train_seconds else None}
    curves = {"step": curve_steps, "loss": curve_loss, "capacity": curve_cap}
    return task_record("anbn", kind, backend, seed, s, metrics, curves,
                       {"train_time_s": train_seconds, "symbols": symbols}, errors=errors)


def summarize(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (kind, backend): capacity over seeds (min, median, max, mean, all)."""
    by: dict[tuple[str, str], list[int]] = {}
    for r in runs:
        by.setdefault((r["kind"], r["backend"]), []).append(r["metrics"]["capacity"])
    return {key: {"seeds": len(c), "min": min(c), "median": statistics.median(c), "max": max(c),
                  "mean": statistics.fmean(c), "all": c} for key, c in by.items()}


def plot_capacity(runs: list[dict], out_dir: str | Path, stem: str = "anbn") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    summary = summarize(runs)
    labels = [f"{k}/{b}" for k, b in summary]
    a1.boxplot([v["all"] for v in summary.values()])
    a1.set_xticks(range(1, len(labels) + 1), labels)
    for i, v in enumerate(summary.values(), 1):
        a1.scatter([i] * len(v["all"]), v["all"], s=10, alpha=0.6)
    top = max([max(v["all"]) for v in summary.values()] + [1])
    a1.set_ylim(-0.5, top * 1.1 + 1)
    a1.set_ylabel("memory capacity (largest n, all n' <= n solved)")
    a1.set_title("capacity over seeds")
    for r in runs:
        a2.plot(r["curves"]["step"], r["curves"]["capacity"], lw=1,
                label=f"{r['kind']}/{r['backend']} s{r['seed']}")
    a2.set_ylim(-0.5, top * 1.1 + 1)
    a2.set_xlabel("training step")
    a2.set_ylabel("capacity")
    a2.legend(fontsize=6)
    path = save_figure(fig, Path(out_dir) / f"{stem}_capacity.png")
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, kinds="lstm", backends="native", seeds="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=10000, help="training steps (minibatches)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", "--hidden-size", dest="hidden", type=int, default=2)
    parser.add_argument("--embed", type=int, default=4, help="embedding size")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-eval", type=int, default=100, help="evaluate n = 1..N")
    parser.set_defaults(func=main)


def main(args) -> int:
    apply_threads(args)
    check_kinds_backends(args.kinds, args.backends)
    if args.steps < 1 or args.n_eval < 1:
        raise ValueError("--steps and --n-eval must be >= 1")
    s = {"steps": args.steps, "batch_size": args.batch_size, "hidden_size": args.hidden,
         "embed": args.embed, "optimizer": args.optimizer, "lr": args.lr, "n_eval": args.n_eval}
    done = done_keys(args.out) if args.resume else set()
    runs = []
    for kind, backend, seed in itertools.product(args.kinds, args.backends, args.seeds):
        if run_key("anbn", kind, backend, seed, s) in done:
            print(f"anbn {kind}/{backend} seed {seed}: already recorded, skipped")
            continue
        record = run_one(kind, backend, seed, s, args.progress)
        records.append(args.out, record)
        runs.append(record)
        m = record["metrics"]
        print(f"anbn {kind}/{backend} seed {seed}: capacity {m['capacity']}, largest solved "
              f"{m['max_solved']}, loss {m['final_loss']:.3f}, {m['train_time_s']:.1f} s")
    for (kind, backend), v in summarize(runs).items():
        print(f"anbn {kind}/{backend}: capacity over {v['seeds']} seeds min {v['min']} median "
              f"{v['median']} max {v['max']} ({v['all']})")
    if runs and not args.no_plots:
        plot_capacity(runs, args.out)
    return 0
