"""The poems data and model: the lab's filters, a character vocabulary, the corpus lookup, batches
of similar-length poems, PoemLM (embedding -> 2-layer cell -> linear; the lab's head adds ReLU),
held-out perplexity and generation."""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bench import data as bdata

from .common import init_weights, make_cell

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
    text: str,
    max_poems: int = 0,
    test_fraction: float = 0.05,
    seed: int = 0,
    hold_out: bool = True,
) -> tuple[list[str], list[str], CharVocab, int]:
    """(train poems, held-out poems, vocabulary over both, number passing the filters);
    hold_out=False trains on every chosen poem (the lab's protocol has no held-out poems)."""
    poems = parse_poems(text)
    total = len(poems)
    rng = random.Random(seed)
    order = list(range(total))
    rng.shuffle(order)
    if max_poems and max_poems > 0:
        order = order[:max_poems]
    chosen = [poems[i] for i in order]
    n_test = max(1, int(round(len(chosen) * test_fraction))) if hold_out else 0
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
    """Embedding -> cell -> Linear. lab=True is the lab's model: embedding U(-1, 1), Xavier-uniform
    head with zero bias, and a ReLU on the head's output before the (log-)softmax, which leaves
    every negative score at 0: the model cannot make a character less likely than the others
    except by raising theirs."""

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
        lab: bool = False,
    ) -> None:
        super().__init__()
        self.kind, self.lab = kind, lab
        self.embedding = nn.Embedding(vocab_size, embed)
        self.rnn = make_cell(kind, backend, embed, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, vocab_size)
        init_weights(self, init, seed)
        if lab:
            gen = torch.Generator().manual_seed(int(seed) + 1)
            with torch.no_grad():
                self.embedding.weight.uniform_(-1.0, 1.0, generator=gen)
                nn.init.xavier_uniform_(self.head.weight, generator=gen)
                self.head.bias.zero_()

    def forward(self, x: torch.Tensor, state=None):
        """Scores (T, B, vocab) whose log_softmax is the prediction, and the state."""
        x = x.to(self.head.weight.device)  # batches are built on the CPU
        y, state = self.rnn(self.embedding(x), state)  # time-major (T, B)
        scores = self.head(y)
        return (F.relu(scores) if self.lab else scores), state


def _batch(
    encoded: list[list[int]], repeat_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-character targets (T, B), padding targets -100. repeat_last: the lab's
    targets, the whole poem as input and its last target repeated (an extra E -> E)."""
    if repeat_last:
        encoded = [p + p[-1:] for p in encoded]
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
                    y.reshape(-1).to(logits.device),
                    ignore_index=-100,
                    reduction="sum",
                )
            )
            count += int((y != -100).sum())
    model.train()
    return math.exp(total / count) if count else float("nan")


def generate(model: PoemLM, vocab: CharVocab, begin: str, max_len: int = 50, **how: Any) -> str:
    """begin and what follows, up to 'E' or max_len characters. how: `sample` (a
    torch.Generator to sample with; absent or None: greedy argmax) and `start` (the text fed
    before begin: 'G' by default, '' for the lab). The state is carried, which gives what the
    lab's loop, re-feeding the whole prefix from a fresh state, gives."""
    sample: torch.Generator | None = how.get("sample")
    start: str = how.get("start", START)
    model.eval()
    out = list(begin)
    with torch.no_grad():
        logits, state = model(torch.tensor(vocab.encode(start + begin)).unsqueeze(1))
        while len(out) < max_len:
            probs = F.softmax(logits[-1, 0].cpu(), dim=-1)
            probs[0] = 0  # never the padding
            if sample is None:
                nxt = int(probs.argmax())
            else:
                nxt = int(torch.multinomial(probs, 1, generator=sample))
            ch = vocab.idx_to_token[nxt]
            if ch == END:
                break
            out.append(ch)
            logits, state = model(torch.tensor([[nxt]]), state)
    model.train()
    return "".join(out)
