"""Character language model on The Time Machine, d2l chapters 8-9.

d2l's preprocessing, vocabulary and the two minibatch iterators, its training recipe (one-hot input,
hidden 256, batch 32, 35 steps, SGD lr 1, gradient clipping at 1, 500 epochs) and greedy
generation; plus a validation perplexity on a held-out tail of the book.

Public API for other helpers: load_time_machine, batches, Vocab, CharLM, train, predict.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import math
import random as _random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bench import data as bdata
from bench import records

from ..figures import save_figure
from .common import (
    INITS,
    OPTIMIZER_RULE,
    Timer,
    add_common_arguments,
    apply_threads,
    at_least,
    check_kinds_backends,
    check_options,
    clip_gradients,
    done_keys,
    init_weights,
    list_of,
    make_cell,
    make_optimizer,
    positive,
    progress,
    provenance,
    run_key,
    safe_name,
    seed_all,
    task_record,
)

PREFIXES = (
    "time traveller",
    "traveller",
    "the time traveller says that",
    "when the time traveller returns to the garden",
    "the time traveller begins learning the language",
    "the time traveller determines that",
    "the time traveller knows he will have to stop",
    "when he wakes up",
    "the time traveller finds himself",
    "the time traveller tells the narrator to wait for him",
)


class Vocab:
    """d2l's Vocab: tokens sorted by frequency (ties in first-seen order), '<unk>' at index 0."""

    def __init__(
        self, tokens: Sequence = (), min_freq: int = 0, reserved_tokens: Sequence[str] = ()
    ) -> None:
        if tokens and isinstance(tokens[0], (list, tuple)):
            tokens = [t for line in tokens for t in line]
        counter = collections.Counter(tokens)
        self.token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token = ["<unk>"] + list(reserved_tokens)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
        for token, freq in self.token_freqs:
            if freq < min_freq:
                break
            if token not in self.token_to_idx:
                self.idx_to_token.append(token)
                self.token_to_idx[token] = len(self.idx_to_token) - 1

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.__getitem__(t) for t in tokens]

    def to_tokens(self, indices):
        if hasattr(indices, "__len__") and not isinstance(indices, str):
            return [self.idx_to_token[int(i)] for i in indices]
        return self.idx_to_token[int(indices)]

    @property
    def unk(self) -> int:
        return 0


def preprocess(text: str) -> list[str]:
    """d2l's read_time_machine: letters only, lower case, one string per line."""
    return [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in text.splitlines()]


def _full_corpus(data: str | None) -> tuple[list[int], Vocab]:
    lines = preprocess(bdata.read_text("timemachine.txt", data))
    tokens = [list(line) for line in lines]  # d2l's tokenize(lines, 'char')
    vocab = Vocab(tokens)
    corpus = [vocab[t] for line in tokens for t in line]
    return corpus, vocab


def load_time_machine(max_tokens: int = 10000, data: str | None = None) -> tuple[list[int], Vocab]:
    """d2l's load_corpus_time_machine: (corpus of token indices, vocab); the first max_tokens
    characters when max_tokens > 0 (d2l's default 10,000), else all 170,580."""
    corpus, vocab = _full_corpus(data)
    if max_tokens and max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


def load_split(
    max_tokens: int = 10000, val_fraction: float = 0.1, data: str | None = None
) -> tuple[list[int], list[int], Vocab]:
    """Training corpus (d2l's first max_tokens characters) and a held-out validation tail (the
    last val_fraction of the book), never overlapping."""
    corpus, vocab = _full_corpus(data)
    n_val = int(len(corpus) * val_fraction) if val_fraction > 0 else 0
    limit = len(corpus) - n_val
    n_train = min(max_tokens, limit) if max_tokens and max_tokens > 0 else limit
    return corpus[:n_train], corpus[limit:], vocab


def seq_data_iter_random(corpus, batch_size, num_steps, rng: _random.Random):
    corpus = corpus[rng.randint(0, num_steps - 1) :]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    rng.shuffle(initial_indices)
    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        starts = initial_indices[i : i + batch_size]
        X = [corpus[j : j + num_steps] for j in starts]
        Y = [corpus[j + 1 : j + 1 + num_steps] for j in starts]
        yield torch.tensor(X), torch.tensor(Y)


def seq_data_iter_sequential(
    corpus, batch_size, num_steps, rng: _random.Random | None, offset: int | None = None
):
    if offset is None:
        offset = rng.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.tensor(corpus[offset : offset + num_tokens])
    Ys = torch.tensor(corpus[offset + 1 : offset + 1 + num_tokens])
    Xs, Ys = Xs.reshape(batch_size, -1), Ys.reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i : i + num_steps], Ys[:, i : i + num_steps]


def batches(
    corpus: Sequence[int],
    batch_size: int,
    num_steps: int,
    random: bool = False,
    seed: int = 0,
    offset: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(X, Y) LongTensor pairs of shape (batch_size, num_steps), Y = X shifted by one.

    random=False: d2l's seq_data_iter_sequential (consecutive batches continue each other);
    random=True: d2l's seq_data_iter_random. The random offset (and shuffle) come from `seed`,
    so two runs with the same seed see the same batches. `offset` fixes the sequential offset.
    """
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be >= 1, got {batch_size}, {num_steps}")
    rng = _random.Random(seed)
    if random:
        return seq_data_iter_random(list(corpus), batch_size, num_steps, rng)
    return seq_data_iter_sequential(list(corpus), batch_size, num_steps, rng, offset)


class CharLM(nn.Module):
    """d2l's RNNModel: one-hot input -> recurrent cell (any kind / backend) -> linear head.

    forward(X (batch, steps) LongTensor, state) -> (logits (steps*batch, vocab), state), with the
    logits in d2l's time-major order (match them against Y.T.reshape(-1)).
    `seed` fixes the initial weights independently of the backend (None: drawn from torch's
    global generator, so torch.manual_seed(s) before construction also gives identical weights).
    """

    def __init__(
        self,
        kind: str,
        backend: str,
        vocab_size: int,
        hidden_size: int,
        num_layers: int = 1,
        init: str = "default",
        seed: int | None = None,
        dropout: float = 0.0,
        **cell_kwargs,
    ) -> None:
        super().__init__()
        self.kind, self.backend, self.vocab_size = kind, backend, vocab_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        factory = {k: cell_kwargs[k] for k in ("device", "dtype") if k in cell_kwargs}
        self.rnn = make_cell(
            kind, backend, vocab_size, hidden_size, num_layers, dropout=dropout, **cell_kwargs
        )
        self.linear = nn.Linear(hidden_size, vocab_size, **factory)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
        init_weights(self, init, seed)

    def begin_state(self, batch_size: int = 1, device=None):
        w = self.linear.weight
        h = torch.zeros(
            self.num_layers, batch_size, self.hidden_size, device=device or w.device, dtype=w.dtype
        )
        return (h, h.clone()) if self.kind == "lstm" else h

    def forward(self, X: torch.Tensor, state=None):
        x = F.one_hot(X.T.long(), self.vocab_size).to(self.linear.weight.dtype)
        Y, state = self.rnn(x, state)
        return self.linear(Y.reshape(-1, Y.shape[-1])), state


def _perplexity(mean_loss: float) -> float:
    """exp of a mean cross-entropy; inf for a diverged run instead of an OverflowError."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return float("inf")


def _detach(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def evaluate(model: CharLM, corpus: Sequence[int], batch_size: int, num_steps: int) -> float:
    """Perplexity over a corpus, sequential batches, state carried, offset 0."""
    if len(corpus) < batch_size * num_steps + 1:
        batch_size = max(1, (len(corpus) - 1) // num_steps)
    total, count, state = 0.0, 0, None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for X, Y in batches(corpus, batch_size, num_steps, offset=0):
            logits, state = model(X, state)
            y = Y.T.reshape(-1)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            count += y.numel()
    model.train(was_training)
    return _perplexity(total / count) if count else float("nan")


def train(
    model: CharLM,
    train_corpus: Sequence[int],
    epochs: int = 500,
    batch_size: int = 32,
    num_steps: int = 35,
    lr: float = 1.0,
    optimizer: str = "sgd",
    clip: float = 1.0,
    random_iter: bool = False,
    seed: int = 0,
    val_corpus: Sequence[int] | None = None,
    val_every: int = 10,
    show_progress: bool | None = None,
    max_steps: int | None = None,
) -> dict:
    """d2l's train_ch8. Epoch e uses batches(seed=seed*100003 + e). Returns curves (per epoch,
    and the loss of every step in `step_losses`) and timings; `max_steps` ends training early
    (bench validate's training parity compares the first steps of several models)."""
    opt = make_optimizer(optimizer, model.parameters(), lr)
    curve, val_curve, val_epochs, step_losses = [], [], [], []
    tokens, train_seconds = 0, 0.0
    model.train()
    for epoch in progress(
        range(epochs), total=epochs, desc=f"{model.kind}/{model.backend}", enabled=show_progress
    ):
        state, total, count = None, 0.0, 0
        start = time.perf_counter()
        for X, Y in batches(
            train_corpus, batch_size, num_steps, random=random_iter, seed=seed * 100003 + epoch
        ):
            state = None if random_iter else _detach(state)
            logits, state = model(X, state)
            y = Y.T.reshape(-1)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), clip)
            opt.step()
            step_losses.append(float(loss.detach()))
            total += step_losses[-1] * y.numel()
            count += y.numel()
            if max_steps is not None and len(step_losses) >= max_steps:
                break
        if count == 0:
            raise ValueError(
                f"a training corpus of {len(train_corpus)} tokens holds no batch of "
                f"{batch_size} x {num_steps} tokens: lower --batch-size / --num-steps "
                f"or raise --max-tokens"
            )
        train_seconds += time.perf_counter() - start
        tokens += count
        curve.append(_perplexity(total / count))
        if val_corpus and val_every and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
            val_curve.append(evaluate(model, val_corpus, batch_size, num_steps))
            val_epochs.append(epoch + 1)
        if max_steps is not None and len(step_losses) >= max_steps:
            break
    return {
        "perplexity": curve,
        "val_perplexity": val_curve,
        "val_epochs": val_epochs,
        "step_losses": step_losses,
        "train_time_s": train_seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / train_seconds if train_seconds else float("nan"),
    }


def predict(prefix: str, num_preds: int, model: CharLM, vocab: Vocab) -> str:
    """d2l's predict_ch8: warm up on the prefix, then greedy argmax for num_preds characters."""
    model.eval()
    with torch.no_grad():
        state = None
        outputs = [vocab[prefix[0]]]
        for ch in prefix[1:]:
            _, state = model(torch.tensor([[outputs[-1]]]), state)
            outputs.append(vocab[ch])
        for _ in range(num_preds):
            y, state = model(torch.tensor([[outputs[-1]]]), state)
            outputs.append(int(y.argmax(dim=1)))
    return "".join(vocab.idx_to_token[i] for i in outputs)


# ---------------------------------------------------------------------------------------------
# CLI: python -m bench train charlm ...


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, kinds="lstm", backends="native")
    parser.add_argument("--epochs", type=int, default=500, help="epochs (d2l: 500)")
    parser.add_argument("--batch-size", type=list_of(int, "--batch-size"), default=[32])
    parser.add_argument("--num-steps", type=list_of(int, "--num-steps"), default=[35])
    parser.add_argument(
        "--lr",
        type=list_of(float, "--lr"),
        default=None,
        help="learning rates (default 1 for SGD, 0.01 for Adam)",
    )
    parser.add_argument(
        "--hidden", "--hidden-size", dest="hidden", type=list_of(int, "--hidden"), default=[256]
    )
    parser.add_argument(
        "--optimizer",
        type=list_of(str, "--optimizer"),
        default=["sgd"],
        help="sgd, adam (comma list)",
    )
    parser.add_argument(
        "--init",
        type=list_of(str, "--init"),
        default=["default"],
        help=f"weight init, comma list of {', '.join(INITS)}",
    )
    parser.add_argument(
        "--layers", "--num-layers", dest="layers", type=list_of(int, "--layers"), default=[1]
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=10000,
        help="training characters from the start of the book (d2l: 10000; 0: all)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="held-out tail of the book for validation perplexity",
    )
    parser.add_argument("--val-every", type=int, default=10, help="validation every N epochs")
    parser.add_argument("--random-iter", action="store_true", help="d2l's random sampling")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (d2l: 1)")
    parser.add_argument("--num-preds", type=int, default=100, help="generated characters")
    parser.set_defaults(func=main)


def settings_grid(args) -> list[dict]:
    lrs = args.lr
    grid = []
    for bs, steps, hidden, opt, init, layers in itertools.product(
        args.batch_size, args.num_steps, args.hidden, args.optimizer, args.init, args.layers
    ):
        for lr in lrs or [1.0 if opt.lower() == "sgd" else 0.01]:
            grid.append(
                {
                    "epochs": args.epochs,
                    "batch_size": bs,
                    "num_steps": steps,
                    "lr": lr,
                    "hidden_size": hidden,
                    "optimizer": opt.lower(),
                    "init": init,
                    "num_layers": layers,
                    "max_tokens": args.max_tokens,
                    "val_fraction": args.val_fraction,
                    "random_iter": bool(args.random_iter),
                    "clip": args.clip,
                    "num_preds": args.num_preds,
                }
            )
    for s in grid:
        if s["init"] not in INITS:
            raise ValueError(f"unknown --init {s['init']!r}; expected one of {', '.join(INITS)}")
        make_optimizer(s["optimizer"], [torch.zeros(1, requires_grad=True)], 1.0)
    return grid


def run_one(
    kind: str,
    backend: str,
    seed: int,
    s: dict,
    train_corpus,
    val_corpus,
    vocab,
    val_every: int = 10,
    show_progress=None,
) -> dict:
    seed_all(seed)
    model = CharLM(
        kind, backend, len(vocab), s["hidden_size"], s["num_layers"], init=s["init"], seed=seed
    )
    result = train(
        model,
        train_corpus,
        s["epochs"],
        s["batch_size"],
        s["num_steps"],
        s["lr"],
        s["optimizer"],
        s["clip"],
        s["random_iter"],
        seed,
        val_corpus,
        val_every,
        show_progress,
    )
    samples = {}
    with Timer() as t_gen:
        for prefix in PREFIXES:
            start = time.perf_counter()
            text = predict(prefix, s["num_preds"], model, vocab)
            samples[prefix] = {"text": text, "seconds": time.perf_counter() - start}
    n_chars = len(PREFIXES) * s["num_preds"]
    final_val = evaluate(model, val_corpus, s["batch_size"], s["num_steps"]) if val_corpus else None
    metrics = {
        "perplexity": result["perplexity"][-1] if result["perplexity"] else None,
        "val_perplexity": final_val,
        "train_time_s": result["train_time_s"],
        "tokens_per_s": result["tokens_per_s"],
        "predict_time_s": t_gen.seconds,
        "predict_ms_per_char": 1000 * t_gen.seconds / n_chars,
        "epochs": s["epochs"],
    }
    curves = {
        "epoch": list(range(1, len(result["perplexity"]) + 1)),
        "perplexity": result["perplexity"],
        "val_epoch": result["val_epochs"],
        "val_perplexity": result["val_perplexity"],
    }
    timings = {
        "train_time_s": result["train_time_s"],
        "tokens": result["tokens"],
        "tokens_per_s": result["tokens_per_s"],
        "predict_time_s": t_gen.seconds,
    }
    return task_record(
        "charlm",
        kind,
        backend,
        seed,
        s,
        metrics,
        curves,
        timings,
        samples=samples,
        vocab_size=len(vocab),
        corpus={"train_tokens": len(train_corpus), "val_tokens": len(val_corpus)},
    )


def plot_runs(runs: list[dict], out_dir: str | Path, stem: str = "charlm") -> list[Path]:
    """One perplexity-per-epoch plot per backend (a line per run); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_backend: dict[str, list[dict]] = collections.defaultdict(list)
    for r in runs:
        by_backend[r["backend"]].append(r)
    paths = []
    for backend, rs in sorted(by_backend.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rs:
            s, c = r["settings"], r["curves"]
            label = (
                f"{r['kind']} s{r['seed']} b{s['batch_size']} T{s['num_steps']} lr{s['lr']} "
                f"H{s['hidden_size']} L{s['num_layers']} {s['optimizer']} {s['init']}"
            )
            (line,) = ax.plot(c["epoch"], c["perplexity"], label=label + " train", lw=1)
            if c.get("val_perplexity"):
                ax.plot(
                    c["val_epoch"],
                    c["val_perplexity"],
                    ls="--",
                    color=line.get_color(),
                    lw=1,
                    label=label + " val",
                )
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("perplexity")
        ax.set_title(f"charlm, backend {backend}")
        ax.legend(fontsize=6)
        path = save_figure(fig, Path(out_dir) / f"{safe_name(stem, 'ppl', backend)}.png")
        paths.append(path)
    return paths


RULES = (
    ("epochs", "--epochs", "an integer >= 1", at_least(1)),
    ("batch_size", "--batch-size", "an integer >= 1", at_least(1)),
    ("num_steps", "--num-steps", "an integer >= 1", at_least(1)),
    ("lr", "--lr", "a number > 0", lambda v: v is None or positive(v)),
    ("hidden", "--hidden", "an integer >= 1", at_least(1)),
    ("optimizer", "--optimizer", "one of sgd, adam, rmsprop", OPTIMIZER_RULE[3]),
    ("init", "--init", f"one of {', '.join(INITS)}", lambda v: v in INITS),
    ("layers", "--layers", "an integer >= 1", at_least(1)),
    ("max_tokens", "--max-tokens", "an integer >= 0 (0: the whole book)", at_least(0)),
    ("val_fraction", "--val-fraction", "in [0, 1)", lambda v: 0 <= v < 1),
    ("val_every", "--val-every", "an integer >= 0 (0: only at the end)", at_least(0)),
    ("clip", "--clip", "a number >= 0 (0: no clipping)", at_least(0)),
    ("num_preds", "--num-preds", "an integer >= 0", at_least(0)),
)


def main(args) -> int:
    check_options(args, RULES)
    apply_threads(args)
    check_kinds_backends(args.kinds, args.backends)
    grid = settings_grid(args)
    found = bdata.find("timemachine.txt", args.data)
    train_corpus, val_corpus, vocab = load_split(args.max_tokens, args.val_fraction, found.path)
    done = done_keys(args.out) if args.resume else set()
    runs = []
    for kind, backend, seed, s in itertools.product(args.kinds, args.backends, args.seeds, grid):
        if run_key("charlm", kind, backend, seed, s) in done:
            print(f"charlm {kind}/{backend} seed {seed}: already recorded, skipped")
            continue
        record = run_one(
            kind, backend, seed, s, train_corpus, val_corpus, vocab, args.val_every, args.progress
        )
        provenance(record, args, found.source)
        records.append(args.out, record)
        runs.append(record)
        m = record["metrics"]
        print(
            f"charlm {kind}/{backend} seed {seed} {s['optimizer']} lr {s['lr']} "
            f"H {s['hidden_size']} L {s['num_layers']} b {s['batch_size']} T {s['num_steps']} "
            f"init {s['init']}: perplexity {m['perplexity']:.2f}, val {m['val_perplexity']:.2f}, "
            f"{m['tokens_per_s']:.0f} tokens/s, {m['train_time_s']:.1f} s"
        )
        print(f"  {PREFIXES[0]!r} -> {record['samples'][PREFIXES[0]]['text']!r}")
    if runs and not args.no_plots:
        plot_runs(runs, args.out)
    return 0
