"""Tang poetry generation (the classic poetry-generation lab), batched.

`title:content` lines, the lab's filters (drop lines that do not split into exactly title and
content; drop contents containing `_ ( （ 《 [` or the marker letters G / E; keep 5..80
characters), wrapped in start `G` and end `E` markers. Character vocabulary by frequency (pad ' '
at index 0, '<unk>' at 1). Embedding 100 + a 2-layer cell of 128 + linear, RMSprop lr 0.01,
batches of similar-length poems padded (the loss ignores the padding). Also measured: the lab's
one-poem-at-a-time loop, for tokens/s. Generation from a begin character, stopping at `E` or 50
characters. Perplexity on held-out poems. `--corpus` picks the full corpus or the 3,000-poem
sample shipped with cellbench (find_corpus).
"""

from __future__ import annotations

import argparse
import collections
import copy
import itertools
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bench import data as bdata
from bench import records

from ..figures import save_figure
from .common import (
    OPTIMIZER_RULE,
    add_common_arguments,
    apply_threads,
    at_least,
    check_kinds_backends,
    check_options,
    clip_gradients,
    done_keys,
    init_weights,
    make_cell,
    make_optimizer,
    open_unit,
    positive,
    progress,
    provenance,
    run_key,
    seed_all,
    task_record,
)

START, END, PAD, UNK = "G", "E", " ", "<unk>"
BAD = ("_", "(", "（", "《", "[", START, END)
BEGIN_CHARS = "日紅山夜湖海月"


def parse_poems(text: str, min_len: int = 5, max_len: int = 80) -> list[str]:
    """The lab's process_poems filters; returns 'G' + content + 'E' strings, in file order."""
    poems = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 2:  # the lab's `title, content = line.split(':')` raising ValueError
            continue
        content = parts[1].replace(" ", "")
        if any(b in content for b in BAD):
            continue
        if len(content) < min_len or len(content) > max_len:
            continue
        poems.append(START + content + END)
    return poems


class CharVocab:
    def __init__(self, poems: Sequence[str]) -> None:
        counter = collections.Counter(ch for p in poems for ch in p)
        words = sorted(counter, key=lambda w: (-counter[w], w))
        self.idx_to_token = [PAD, UNK] + [w for w in words if w != PAD]
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def encode(self, s: str) -> list[int]:
        return [self.token_to_idx.get(ch, 1) for ch in s]

    def decode(self, ids) -> str:
        return "".join(self.idx_to_token[int(i)] for i in ids)


CORPORA = ("auto", "full", "sample")


def find_corpus(corpus: str = "auto", data: str | None = None) -> bdata.Found:
    """The poems file to use. full: poems_tang.txt from --data, $CELLBENCH_DATA, the cache or a
    download; sample: the 3,000-poem sample shipped with cellbench; auto: a local full copy if
    there is one, else the sample (never downloads)."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown --corpus {corpus!r}; expected one of {', '.join(CORPORA)}")
    if corpus == "sample":
        return bdata.find("poems_sample")
    if corpus == "full":
        return bdata.find("poems_tang.txt", data)
    try:
        return bdata.find("poems_tang.txt", data, download=False)
    except bdata.DataNotFound:
        return bdata.find("poems_sample")


def split_poems(
    text: str, max_poems: int = 0, test_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str], CharVocab, int]:
    """(train poems, held-out poems, vocabulary over both, number passing the filters)."""
    poems = parse_poems(text)
    total = len(poems)
    rng = random.Random(seed)
    order = list(range(total))
    rng.shuffle(order)
    if max_poems and max_poems > 0:
        order = order[:max_poems]
    chosen = [poems[i] for i in order]
    n_test = max(1, int(round(len(chosen) * test_fraction)))
    test, train = chosen[:n_test], chosen[n_test:]
    return train, test, CharVocab(train + test), total


def load_poems(
    data: str | None = None,
    max_poems: int = 0,
    test_fraction: float = 0.05,
    seed: int = 0,
    corpus: str = "full",
) -> tuple[list[str], list[str], CharVocab, int]:
    """split_poems of the corpus that find_corpus(corpus, data) picks."""
    return split_poems(
        bdata.text_of(find_corpus(corpus, data).path), max_poems, test_fraction, seed
    )


class PoemLM(nn.Module):
    def __init__(
        self,
        kind: str,
        backend: str,
        vocab_size: int,
        embed: int = 100,
        hidden_size: int = 128,
        num_layers: int = 2,
        seed: int = 0,
        init: str = "default",
    ) -> None:
        super().__init__()
        self.kind = kind
        self.embedding = nn.Embedding(vocab_size, embed)
        self.rnn = make_cell(kind, backend, embed, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, vocab_size)
        init_weights(self, init, seed)

    def forward(self, x: torch.Tensor, state=None):
        y, state = self.rnn(self.embedding(x), state)  # time-major (T, B)
        return self.head(y), state


def _batch(encoded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in encoded) - 1
    x = torch.zeros(T, len(encoded), dtype=torch.long)
    y = torch.full((T, len(encoded)), -100, dtype=torch.long)
    for b, p in enumerate(encoded):
        t = torch.tensor(p)
        x[: len(p) - 1, b] = t[:-1]
        y[: len(p) - 1, b] = t[1:]
    return x, y


def length_buckets(
    encoded: list[list[int]], batch_size: int, rng: random.Random
) -> list[list[list[int]]]:
    """Batches of similar length (the lab sorts poems by length), in shuffled order."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), rng.random()))
    chunks = [
        [encoded[i] for i in order[j : j + batch_size]] for j in range(0, len(order), batch_size)
    ]
    rng.shuffle(chunks)
    return chunks


def perplexity(model: PoemLM, encoded: list[list[int]], batch_size: int = 128) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for j in range(0, len(encoded), batch_size):
            x, y = _batch(encoded[j : j + batch_size])
            logits, _ = model(x)
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    y.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                )
            )
            count += int((y != -100).sum())
    model.train()
    return math.exp(total / count) if count else float("nan")


def generate(
    model: PoemLM,
    vocab: CharVocab,
    begin: str,
    max_len: int = 50,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> str:
    """Start from 'G' + begin; sample (or argmax) until 'E' or max_len characters."""
    model.eval()
    out = list(begin)
    with torch.no_grad():
        logits, state = model(torch.tensor(vocab.encode(START + begin)).unsqueeze(1))
        while len(out) < max_len:
            probs = F.softmax(logits[-1, 0], dim=-1)
            probs[0] = 0  # never the padding
            nxt = (
                int(probs.argmax())
                if greedy
                else int(torch.multinomial(probs, 1, generator=generator))
            )
            ch = vocab.idx_to_token[nxt]
            if ch == END:
                break
            out.append(ch)
            logits, state = model(torch.tensor([[nxt]]), state)
    model.train()
    return "".join(out)


def lab_loop_tokens_per_s(model: PoemLM, encoded: list[list[int]], lr: float, n: int) -> float:
    """The lab's loop: one poem per step (batch 1), on a copy of the model."""
    m = copy.deepcopy(model)
    opt = torch.optim.RMSprop(m.parameters(), lr=lr)
    tokens = 0
    start = time.perf_counter()
    for p in encoded[:n]:
        x, y = _batch([p])
        logits, _ = m(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += y.numel()
    seconds = time.perf_counter() - start
    return tokens / seconds if seconds else float("nan")


def run_one(
    kind: str, backend: str, seed: int, s: dict, train_poems, test_poems, vocab, show_progress=None
) -> dict:
    seed_all(seed)
    model = PoemLM(
        kind, backend, len(vocab), s["embed"], s["hidden_size"], s["num_layers"], seed=seed
    )
    opt = make_optimizer(s["optimizer"], model.parameters(), s["lr"])
    enc_train = [vocab.encode(p) for p in train_poems]
    enc_test = [vocab.encode(p) for p in test_poems]
    rng = random.Random(seed)
    lab_tps = (
        lab_loop_tokens_per_s(model, enc_train, s["lr"], s["lab_loop_poems"])
        if s["lab_loop_poems"]
        else None
    )
    curves = {"epoch": [], "train_perplexity": [], "test_perplexity": []}
    tokens, seconds = 0, 0.0
    for epoch in progress(
        range(s["epochs"]), total=s["epochs"], desc=f"poems {kind}/{backend}", enabled=show_progress
    ):
        total, count = 0.0, 0
        start = time.perf_counter()
        for chunk in length_buckets(enc_train, s["batch_size"], rng):
            x, y = _batch(chunk)
            logits, _ = model(x)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), s["clip"])
            opt.step()
            n = int((y != -100).sum())
            total += float(loss.detach()) * n
            count += n
        seconds += time.perf_counter() - start
        tokens += count
        curves["epoch"].append(epoch + 1)
        curves["train_perplexity"].append(math.exp(total / count))
        curves["test_perplexity"].append(perplexity(model, enc_test))
    gen = torch.Generator().manual_seed(seed)
    samples = {}
    start = time.perf_counter()
    for ch in s["begin"]:
        samples[ch] = generate(model, vocab, ch, s["max_gen"], s["greedy"], gen)
    gen_seconds = time.perf_counter() - start
    metrics = {
        "test_perplexity": curves["test_perplexity"][-1],
        "train_perplexity": curves["train_perplexity"][-1],
        "tokens_per_s": tokens / seconds if seconds else None,
        "lab_loop_tokens_per_s": lab_tps,
        "train_time_s": seconds,
        "generate_time_s": gen_seconds,
        "epochs": s["epochs"],
    }
    timings = {"train_time_s": seconds, "tokens": tokens, "generate_time_s": gen_seconds}
    return task_record(
        "poems",
        kind,
        backend,
        seed,
        s,
        metrics,
        curves,
        timings,
        samples=samples,
        vocab_size=len(vocab),
        split={"train": len(train_poems), "test": len(test_poems)},
    )


def plot_curves(runs: list[dict], out_dir: str | Path, stem: str = "poems") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        c = r["curves"]
        label = (
            f"{r['kind']}/{r['backend']} s{r['seed']} {(r.get('split') or {}).get('train')} poems"
        )
        (line,) = ax.plot(c["epoch"], c["train_perplexity"], marker="o", label=label + " train")
        ax.plot(
            c["epoch"],
            c["test_perplexity"],
            marker="x",
            ls="--",
            color=line.get_color(),
            label=label + " held-out",
        )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_title("Tang poems")
    ax.legend(fontsize=6)
    path = save_figure(fig, Path(out_dir) / f"{stem}_ppl.png")
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, kinds="lstm", backends="native")
    parser.add_argument("--epochs", type=int, default=50, help="epochs over the training poems")
    parser.add_argument(
        "--max-poems",
        type=int,
        default=0,
        help="random subset of the filtered poems (0: all ~57k lines' survivors)",
    )
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embed", type=int, default=100)
    parser.add_argument("--hidden", "--hidden-size", dest="hidden", type=int, default=128)
    parser.add_argument("--layers", "--num-layers", dest="layers", type=int, default=2)
    parser.add_argument("--optimizer", default="rmsprop")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--begin", default=BEGIN_CHARS, help="begin characters for generation")
    parser.add_argument("--max-gen", type=int, default=50)
    parser.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    parser.add_argument(
        "--lab-loop-poems",
        type=int,
        default=64,
        help="poems for the one-at-a-time tokens/s measurement (0: skip)",
    )
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--corpus",
        default="auto",
        choices=CORPORA,
        help="full: poems_tang.txt (--data, $CELLBENCH_DATA, cache, download); "
        "sample: the 3,000 poems shipped with cellbench; auto (default): a "
        "local full copy, else the sample",
    )
    parser.set_defaults(func=main)


RULES = (
    ("epochs", "--epochs", "an integer >= 1", at_least(1)),
    ("max_poems", "--max-poems", "an integer >= 0 (0: all)", at_least(0)),
    ("test_fraction", "--test-fraction", "in (0, 1)", open_unit),
    ("batch_size", "--batch-size", "an integer >= 1", at_least(1)),
    ("embed", "--embed", "an integer >= 1", at_least(1)),
    ("hidden", "--hidden", "an integer >= 1", at_least(1)),
    ("layers", "--layers", "an integer >= 1", at_least(1)),
    OPTIMIZER_RULE,
    ("lr", "--lr", "a number > 0", positive),
    ("clip", "--clip", "a number >= 0 (0: no clipping)", at_least(0)),
    ("begin", "--begin", "one or more begin characters", lambda v: bool(v)),
    ("max_gen", "--max-gen", "an integer >= 1", at_least(1)),
    ("lab_loop_poems", "--lab-loop-poems", "an integer >= 0 (0: skip)", at_least(0)),
    ("split_seed", "--split-seed", "an integer >= 0", at_least(0)),
)


def main(args) -> int:
    check_options(args, RULES)
    apply_threads(args)
    check_kinds_backends(args.kinds, args.backends)
    found = find_corpus(args.corpus, args.data)
    train_poems, test_poems, vocab, total = split_poems(
        bdata.text_of(found.path), args.max_poems, args.test_fraction, args.split_seed
    )
    if len(train_poems) < 1:
        raise ValueError(
            f"--max-poems {args.max_poems} with --test-fraction {args.test_fraction} "
            "leaves no training poem; use a larger --max-poems"
        )
    s = {
        "epochs": args.epochs,
        "max_poems": args.max_poems,
        "test_fraction": args.test_fraction,
        "batch_size": args.batch_size,
        "embed": args.embed,
        "hidden_size": args.hidden,
        "num_layers": args.layers,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "clip": args.clip,
        "begin": args.begin,
        "max_gen": args.max_gen,
        "greedy": bool(args.greedy),
        "lab_loop_poems": args.lab_loop_poems,
        "split_seed": args.split_seed,
        "corpus": "sample" if found.source == "embedded" else "full",
    }
    print(
        f"poems ({s['corpus']} corpus, {found.source} copy): {total} pass the filters; training "
        f"on {len(train_poems)}, held out {len(test_poems)}, vocabulary {len(vocab)}"
    )
    done = done_keys(args.out) if args.resume else set()
    runs = []
    for kind, backend, seed in itertools.product(args.kinds, args.backends, args.seeds):
        if run_key("poems", kind, backend, seed, s) in done:
            print(f"poems {kind}/{backend} seed {seed}: already recorded, skipped")
            continue
        record = run_one(kind, backend, seed, s, train_poems, test_poems, vocab, args.progress)
        record["filtered_poems"] = total
        provenance(record, args, found.source)
        records.append(args.out, record)
        runs.append(record)
        m = record["metrics"]
        print(
            f"poems {kind}/{backend} seed {seed}: held-out perplexity {m['test_perplexity']:.1f}, "
            f"{m['tokens_per_s']:.0f} tokens/s batched vs {m['lab_loop_tokens_per_s'] or 0:.0f} "
            f"one poem at a time, {m['train_time_s']:.1f} s"
        )
        for ch, text in list(record["samples"].items())[:3]:
            print(f"  {ch}: {text}")
    if runs and not args.no_plots:
        plot_curves(runs, args.out)
    return 0
