"""d2l's character LM (RNNModel: one-hot -> recurrent cell -> linear), its trainer train_ch8 and
greedy predict_ch8, for any cell kind and backend."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .common import clip_gradients, init_weights, make_cell, make_optimizer, progress
from .timemachine import Vocab, batches


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

    @property
    def device(self) -> torch.device:
        return self.linear.weight.device

    def forward(self, X: torch.Tensor, state=None):
        X = X.to(self.device)  # batches are built on the CPU; the model may live on a GPU
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
            y = Y.T.reshape(-1).to(model.device)
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
            y = Y.T.reshape(-1).to(model.device)
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
