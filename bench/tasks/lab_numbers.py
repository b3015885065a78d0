"""The five textbook labs' reported figures and settings, as data with their source.

A report holds a run against these: `for_task("charlm")` lists every figure of that task,
`curve(lab, variant)` gives a variant's (epoch, value) points, `settings(lab, variant)` the lab's
recipe for it. Every figure names the lab report it comes from (the files in shared/labs, by name)
and where in it; `note` says what the lab leaves unsaid. What each lab's protocol measures, and
its flaws, is in docs/labs.md.

Units: "" for perplexity and counts, "nats" for a mean negative log-likelihood per symbol,
"fraction" for accuracy (0.87, not 87), "tokens/s", "s", "n" for a string length.

Public API: LabFigure, LabSettings, FIGURES, SETTINGS, TASKS, REPORTS, TRAIN_PPL, for_task,
curve, settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench.tasks import TASKS  # the one task list

REPORTS = {  # lab id -> (lab report file in shared/labs, task)
    "000": ("000_aeff4532109385e8.txt", "charlm"),
    "001": ("001_c1c465d720ad8b91.txt", "charlm"),
    "002": ("002_cecec1a6b246dc26.txt", "names"),
    "003": ("003_26ad250c59ba03e2.txt", "anbn"),
    "004": ("004_c4904383635b42f1.txt", "poems"),
}
TRAIN_PPL = "train perplexity"  # d2l's: exp of the mean loss over the epoch's training batches


@dataclass(frozen=True)
class LabFigure:
    """One reported number. `value` is None where the lab makes a claim without a number;
    `high` is set where it reports a range (value..high); `approx` where it says "about"."""

    lab: str  # "000" .. "004"
    task: str  # one of TASKS
    variant: str  # e.g. "concise LSTM", "2-layer GRU lr 2", "Elman"
    metric: str  # e.g. "train perplexity", "capacity (lab reading)"
    value: float | None
    unit: str
    source: str  # lab report file name, then the section or the printed line
    epoch: int | None = None  # the epoch as the lab prints it (curve points)
    n: int | None = None  # the string length n (aⁿbⁿ per-n figures)
    high: float | None = None
    approx: bool = False
    note: str = ""
    printed: str = ""  # the value as the report prints it ("1.10", "6.0-6.3"), digits kept

    @property
    def label(self) -> str:
        """The metric with its epoch or n, e.g. "train perplexity at epoch 500"."""
        at = f" at epoch {self.epoch}" if self.epoch is not None else ""
        return self.metric + at + (f" at n={self.n}" if self.n is not None else "")

    @property
    def text(self) -> str:
        """The value as the lab states it: "1.10", "6.0-6.3", "about 0.60", ">=19", "not given"."""
        if self.value is None:
            return "not given"
        return ("about " if self.approx else "") + (self.printed or f"{self.value:g}")


@dataclass(frozen=True)
class LabSettings:
    """A lab's recipe for one variant; None where the lab does not say. `init` and `optimizer`
    use bench.tasks.common's names (INITS, OPTIMIZERS) where one fits, else a description."""

    lab: str
    task: str
    variant: str
    model: str
    hidden: int | None
    layers: int | None
    optimizer: str | None
    lr: float | None
    epochs: int | None
    batch: int | None
    init: str | None
    clip: float | None
    num_steps: int | None  # truncated-BPTT length (charlm)
    note: str


# Shared notes, referenced from the tables as @key.
_NOTES = {
    "tm10k": "the first 10,000 characters (d2l's max_tokens=10000), no held-out split, one run",
    "gpu": "on the lab's GPU (model not named)",
    "log": "the training log as printed",
    "insample": "over the tutorial's sampler (a language uniformly, then one of its names): "
    "class-balanced draws from the training names themselves; the report shows the curve, not "
    "its code",
    "diff": "the lab's Diff: wrong greedy symbols over every position of 3 0^n 1^n 2; for n >= 2 "
    "it includes the second-symbol error and the 0->1 switch",
    "errrate": "printed as 错误率 (error rate): the format string has two placeholders for three "
    "values, so the validation loss fills it",
    "batch59": "the loss of that one batch of 100 poems; no held-out metric",
    "notgiven": "optimizer, learning rate and number of steps not given",
}

# lab | variant | metric | at | value | unit | source (section or printed line) | note
# at: "", "epoch N", "n N", or "epochs A-B" / "epochs A-B/STEP" with one value per epoch.
# value: "" (not given), "~x" (about x), ">=x" (a lower bound), "x-y" (a range), or numbers.
_FIGURES = """
000|concise LSTM|train perplexity|epoch 500|1.1||六、1 教材代码结果展示 (LSTM_easy.py): 困惑度|@tm10k
000|concise LSTM|tokens/s||298764.3|tokens/s|六、1 教材代码结果展示: 速度 (tokens/s)|@gpu
000|concise LSTM|train time||18.24286|s|六、1 教材代码结果展示: 训练时间 (s)|@gpu
000|concise LSTM|predict time||0.36789|s|六、1 教材代码结果展示: 预测时间 (s)|10 prefixes x 100 greedy characters
000|scratch LSTM|train perplexity|epoch 500|1.1||六、2 完整代码结果展示 (LSTM.py): 困惑度|@tm10k
000|scratch LSTM|tokens/s||28158.1|tokens/s|六、2 完整代码结果展示: 速度 (tokens/s)|@gpu
000|scratch LSTM|train time||165.26667|s|六、2 完整代码结果展示: 训练时间 (s)|@gpu
000|scratch LSTM|predict time||0.59110|s|六、2 完整代码结果展示: 预测时间 (s)|10 prefixes x 100 greedy characters
000|concise LSTM batch 64|train perplexity|epoch 500|2.3||六、3 1) 批量大小增加 (64)|@tm10k
000|concise LSTM batch 64|tokens/s||560241.0|tokens/s|六、3 1) 批量大小增加 (64)|@gpu
000|concise LSTM batch 64|train time||11.34689|s|六、3 1) 批量大小增加 (64): 训练时间 (s)|@gpu
000|concise LSTM batch 16|train perplexity|epoch 500|1.0||六、3 1) 批量大小减少 (16)|@tm10k
000|concise LSTM batch 16|tokens/s||194261.0|tokens/s|六、3 1) 批量大小减少 (16)|@gpu
000|concise LSTM batch 16|train time||28.09903|s|六、3 1) 批量大小减少 (16): 训练时间 (s)|@gpu
000|concise LSTM num_steps 60|train perplexity|epoch 500|1.1||六、3 2) 序列长度增加 (60)|@tm10k
000|concise LSTM num_steps 60|tokens/s||383954.6|tokens/s|六、3 2) 序列长度增加 (60)|@gpu
000|concise LSTM num_steps 60|train time||16.03161|s|六、3 2) 序列长度增加 (60): 训练时间 (s)|@gpu
000|concise LSTM lr 5|train perplexity|epoch 500|1.0||六、3 3) 学习率增加 (5)|@tm10k
000|concise LSTM lr 5|tokens/s||298662.2|tokens/s|六、3 3) 学习率增加 (5)|@gpu
000|concise LSTM lr 5|train time||18.47233|s|六、3 3) 学习率增加 (5): 训练时间 (s)|@gpu
000|concise LSTM lr 0.1|train perplexity|epoch 500|9.9||六、3 3) 学习率减少 (0.1)|@tm10k
000|concise LSTM lr 0.1|tokens/s||389662.1|tokens/s|六、3 3) 学习率减少 (0.1)|@gpu
000|concise LSTM lr 0.1|train time||15.42866|s|六、3 3) 学习率减少 (0.1): 训练时间 (s)|@gpu
000|concise LSTM larger hidden|train perplexity|epoch 500|1.0||六、3 4) 隐藏层大小增加|the larger hidden size is not given
000|concise LSTM larger hidden|tokens/s||296892.6|tokens/s|六、3 4) 隐藏层大小增加|@gpu
000|concise LSTM larger hidden|train time||19.18445|s|六、3 4) 隐藏层大小增加: 训练时间 (s)|@gpu
000|scratch LSTM Adam lr 0.001|train perplexity|epoch 500|1.3||六、3 5) Adam (lr=0.001)|@tm10k
000|scratch LSTM Adam lr 0.001|tokens/s||24480.2|tokens/s|六、3 5) Adam (lr=0.001)|@gpu
000|scratch LSTM Adam lr 0.001|train time||176.22707|s|六、3 5) Adam (lr=0.001): 训练时间 (s)|@gpu
000|scratch LSTM Xavier init|train perplexity|epoch 500|1.3||六、3 6) Xavier 初始化|@tm10k
000|scratch LSTM Xavier init|tokens/s||32820.3|tokens/s|六、3 6) Xavier 初始化|@gpu
000|scratch LSTM Xavier init|train time||165.21400|s|六、3 6) Xavier 初始化: 训练时间 (s)|@gpu
000|scratch LSTM Kaiming init|train perplexity|epoch 500|1.0||六、3 6) Kaiming 初始化|@tm10k
000|scratch LSTM Kaiming init|tokens/s||33964.1|tokens/s|六、3 6) Kaiming 初始化|@gpu
000|scratch LSTM Kaiming init|train time||170.30910|s|六、3 6) Kaiming 初始化: 训练时间 (s)|@gpu
001|preprocessing|lines||3221||8.2 文本总行数: 3221|
001|preprocessing|corpus characters||170580||8.2 Corpus length: 170580|the whole book; training uses the first 10,000
001|preprocessing|vocabulary size||28||8.2 Vocabulary size: 28|26 letters, space, <unk>
001|preprocessing|count of ' '||29927||8.2 First 10 token frequencies|the report prints the space as ','
001|preprocessing|count of 'e'||17838||8.2 First 10 token frequencies|
001|preprocessing|count of 't'||13515||8.2 First 10 token frequencies|
001|preprocessing|count of 'a'||11704||8.2 First 10 token frequencies|
001|preprocessing|count of 'i'||10138||8.2 First 10 token frequencies|
001|preprocessing|count of 'n'||9917||8.2 First 10 token frequencies|
001|preprocessing|count of 'o'||9758||8.2 First 10 token frequencies|
001|preprocessing|count of 's'||8486||8.2 First 10 token frequencies|
001|preprocessing|count of 'h'||8257||8.2 First 10 token frequencies|
001|preprocessing|count of 'r'||7674||8.2 First 10 token frequencies|
001|scratch RNN hidden 512|train perplexity|epoch 500|1.2||8.5 实验结果: perplexity 1.2|@tm10k
001|scratch RNN hidden 512|train perplexity (other run)|epoch 500|1.0||8.5 rnn_scratch_results: Perplexity: 1.0|an earlier run in the same results file
001|concise RNN|train perplexity|epochs 1-25|22.0 18.5 16.8 15.7 14.4 13.5 12.7 12.2 11.6 11.2 10.8 10.8 10.5 10.0 10.3 9.9 9.6 9.5 9.4 9.2 9.2 8.8 8.9 8.9 8.8||8.6 实验结果 log|@log
001|concise RNN|train perplexity|epoch 500|1.3||8.6 Model: RNN with PyTorch API, Perplexity: 1.3|@tm10k
001|concise RNN|train perplexity (other run)|epoch 500|1.4||8.6 Model: RNN with PyTorch API, Perplexity: 1.4|a second run in the same results file
001|concise RNN 2-layer|train perplexity|epochs 1-31|22.0 18.5 17.1 16.0 14.5 13.0 12.6 11.9 11.3 11.1 10.6 10.3 10.1 9.9 10.0 9.6 9.6 9.2 9.5 9.3 8.8 8.8 9.0 8.7 8.5 8.7 8.3 8.1 8.3 8.1 8.0||8.6 练习题 2 实验结果 log|@log
001|concise RNN 2-layer|train perplexity|epoch 500|1.0||8.6 练习题 2 Model: 2-layer RNN, Perplexity: 1.0|@tm10k
001|scratch LSTM|train perplexity|epochs 50-500/50|14.5 10.5 8.8 7.2 5.9 4.4 2.9 1.8 1.3 1.2||9.2 实验结果 log|@tm10k
001|scratch LSTM|train perplexity, evaluation pass|epoch 500|1.1||9.2 lstm_scratch_results: Perplexity: 1.1|one more pass over the training batches after training, no update
001|2-layer LSTM lr 2|train perplexity|epochs 50-500/50|14.35 9.18 5.63 1.83 1.10 1.04 1.03 1.03 1.03 1.02||9.3 练习题 2 实验结果 log|@tm10k
001|2-layer LSTM lr 2|train time||31.85|s|9.3 练习题 2: LSTM Training Time: 31.85 seconds|500 epochs; @gpu
001|2-layer GRU lr 2|train perplexity|epochs 50-500/50|8.40 3.77 1.13 1.04 1.03 1.03 1.03 1.03 1.02 1.02||9.3 练习题 2 实验结果 log|@tm10k
001|2-layer GRU lr 2|train time||29.83|s|9.3 练习题 2: GRU Training Time: 29.83 seconds|500 epochs; @gpu
002|Elman|train loss (settled)||~1.2|nats|原始版本RNN loss图: 稳定在1.2左右|the tutorial's plotted loss: mean NLL of the last 1,000 names
002|Elman|in-sample balanced accuracy||~0.60|fraction|原始版本RNN 准确度图: 稳定在60%左右|@insample
002|nn.LSTM 2-layer|in-sample balanced accuracy||~0.87|fraction|Lstm 库 准确度: 稳定在87%左右|@insample
002|own LSTM|in-sample balanced accuracy|||fraction|自己实现的Lstm 准确度|"better than nn.LSTM", no number; slower, no time given
003|RNN hidden 2|capacity (lab reading)||~14|n|5. 观察 RNN 模型的学习结果: 在n=15时开始出现其他错误…记忆容量约为14|errors besides the 0->1 switch start at n=15; the second-symbol error, present at every printed n, is not counted
003|LSTM hidden 2|capacity (lab reading)||>=19|n|6. 实现 LSTM 模型: 即使n达到了19依然能够保持较好的错误率|a lower bound: 19 is the largest n evaluated (0..19)
003|RNN hidden 2|train loss|epoch 49|0.25|nats|4. 训练 RNN 模型: 第49轮, 训练Loss:0.25|epochs counted from 0: the 50th and last
003|RNN hidden 2|validation loss|epoch 49|0.24|nats|4. 训练 RNN 模型: 第49轮, 错误率:0.24|@errrate
003|LSTM hidden 2|train loss|epoch 19|0.24|nats|6. 实现 LSTM 模型: 第19轮, 训练Loss: 0.24|epochs counted from 0: the 20th and last
003|LSTM hidden 2|validation loss|epoch 19|0.23|nats|6. 实现 LSTM 模型: 第19轮, 错误率: 0.23|@errrate
003|RNN hidden 2|wrong symbols (Diff)|n 11|2||5. 观察 RNN 模型的学习结果: Diff:2|@diff
003|RNN hidden 2|wrong symbols (Diff)|n 12|2||5. 观察 RNN 模型的学习结果: Diff:2|@diff
003|RNN hidden 2|wrong symbols (Diff)|n 13|2||5. 观察 RNN 模型的学习结果: Diff:2|@diff
003|RNN hidden 2|wrong symbols (Diff)|n 14|2||5. 观察 RNN 模型的学习结果: Diff:2|@diff
003|RNN hidden 2|wrong symbols (Diff)|n 15|3||5. 观察 RNN 模型的学习结果: Diff:3|@diff
003|RNN hidden 2|wrong symbols (Diff)|n 16|2||5. 观察 RNN 模型的学习结果: Diff:2|@diff
003|RNN hidden 2|wrong symbols (Diff)|n 17|3||5. 观察 RNN 模型的学习结果: Diff:3|@diff
003|RNN hidden 2|wrong symbols (Diff)|n 18|3||5. 观察 RNN 模型的学习结果: Diff:3|@diff
003|RNN hidden 2|wrong symbols (Diff)|n 19|3||5. 观察 RNN 模型的学习结果: Diff:3|@diff
003|LSTM hidden 2|wrong symbols (Diff)|n 0|1||6. 实现 LSTM 模型: Diff:1|@diff
003|LSTM hidden 2|wrong symbols (Diff)|n 1|0||6. 实现 LSTM 模型: Diff:0|@diff
003|LSTM hidden 2|wrong symbols (Diff)|n 2|2||6. 实现 LSTM 模型: Diff:2|@diff
003|LSTM hidden 2|wrong symbols (Diff)|n 3|2||6. 实现 LSTM 模型: Diff:2|@diff
003|LSTM hidden 2|wrong symbols (Diff)|n 4|2||6. 实现 LSTM 模型: Diff:2|@diff
003|LSTM hidden 2|wrong symbols (Diff)|n 5|2||6. 实现 LSTM 模型: Diff:2|@diff
003|LSTM hidden 2|wrong symbols (Diff)|n 19|2||6. 实现 LSTM 模型: Diff:2|@diff
004|2-layer LSTM hidden 128|train loss|epoch 59|6.0-6.3|nats|四. 实验总结: 第59轮时的损失值稳定在6.0至6.3之间|the report's summary of the epoch-59 batches; no held-out metric
004|2-layer LSTM hidden 128|train loss of batch 344|epoch 59|6.075435161590576|nats|三. 训练截图: epoch 59 batch number 344 loss is|@batch59
004|2-layer LSTM hidden 128|train loss of batch 345|epoch 59|6.254327297210693|nats|三. 训练截图: epoch 59 batch number 345 loss is|@batch59
004|2-layer LSTM hidden 128|train loss of batch 347|epoch 59|6.161931037902832|nats|三. 训练截图: epoch 59 batch number 347 loss is|@batch59
"""

# lab | variant | model | hidden | layers | optimizer | lr | epochs | batch | init | clip |
# num_steps | note
_SETTINGS = """
000|concise LSTM|nn.LSTM(28, 256) in d2l's RNNModel, one-hot input|256|1|sgd|1|500|32|default|1|35|sequential iterator, state detached between batches; @tm10k
000|scratch LSTM|d2l's from-scratch LSTM: W_x*, W_h*, b_* per gate, output W_hq, b_q|256|1|sgd|1|500|32|normal|1|35|@tm10k
000|concise LSTM batch 64|nn.LSTM(28, 256) in d2l's RNNModel|256|1|sgd|1|500|64|default|1|35|@tm10k
000|concise LSTM batch 16|nn.LSTM(28, 256) in d2l's RNNModel|256|1|sgd|1|500|16|default|1|35|@tm10k
000|concise LSTM num_steps 60|nn.LSTM(28, 256) in d2l's RNNModel|256|1|sgd|1|500|32|default|1|60|@tm10k
000|concise LSTM lr 5|nn.LSTM(28, 256) in d2l's RNNModel|256|1|sgd|5|500|32|default|1|35|@tm10k
000|concise LSTM lr 0.1|nn.LSTM(28, 256) in d2l's RNNModel|256|1|sgd|0.1|500|32|default|1|35|@tm10k
000|concise LSTM larger hidden|nn.LSTM(28, H) in d2l's RNNModel||1|sgd|1|500|32|default|1|35|the larger hidden size is not given
000|scratch LSTM Adam lr 0.001|d2l's from-scratch LSTM|256|1|adam|0.001|500|32|normal|1|35|@tm10k
000|scratch LSTM Xavier init|d2l's from-scratch LSTM|256|1|sgd|1|500|32|xavier|1|35|the report names the scheme; its code is not shown
000|scratch LSTM Kaiming init|d2l's from-scratch LSTM|256|1|sgd|1|500|32|kaiming|1|35|the report names the scheme; its code is not shown
001|scratch RNN hidden 512|d2l's from-scratch tanh RNN: W_xh, W_hh, b_h, W_hq, b_q|512|1|sgd|1|500|32|normal|1|35|@tm10k
001|concise RNN|nn.RNN(28, 256) in d2l's RNNModel|256|1|sgd|1|500|32|default|1|35|@tm10k
001|concise RNN 2-layer|nn.RNN(28, 256, num_layers=2) in d2l's RNNModel|256|2|sgd|1|500|32|default|1|35|@tm10k
001|scratch LSTM|d2l's from-scratch LSTM: W_x*, W_h*, b_* per gate, output W_hq, b_q|256|1|sgd|1|500|32|normal|1|35|@tm10k
001|2-layer LSTM lr 2|nn.LSTM(28, 256, num_layers=2) in d2l's RNNModel|256|2|sgd|2|500|32|default|1|35|@tm10k
001|2-layer GRU lr 2|nn.GRU(28, 256, num_layers=2) in d2l's RNNModel|256|2|sgd|2|500|32|default|1|35|@tm10k
002|Elman|i2h, i2o = Linear(57 + 128, .) on [input, hidden] -> LogSoftmax|128|1|sgd|0.005||1|default||| the tutorial's loop: 100,000 names drawn class-balanced with replacement, one step each, NLLLoss, no clipping; the report shows the model only
002|nn.LSTM 2-layer|nn.LSTM(57, 128, num_layers=2) -> Linear(128, 18) -> LogSoftmax, the whole name in|128|2|||||default|||@notgiven
002|own LSTM|two LSTM cells stepped per character; the second is fed the input again, not the first's output (not a 2-layer LSTM)|128|2|||||U(-1/sqrt(128), 1/sqrt(128))|||@notgiven
003|RNN hidden 2|Embedding(4, 2) -> nn.RNN(2, 2) -> Linear(2, 3) -> LogSoftmax|2|1|adam|0.001|50|1|default|||2,000 strings, one per update (100,000 updates), loss summed over positions / length; the code shows num_epoch = 20, the text says 50 and the log ends at epoch 49
003|LSTM hidden 2|Embedding(4, 2) -> nn.LSTM(2, 2) -> Linear(2, 3) -> LogSoftmax|2|1|adam|0.001|20|1|default|||2,000 strings, one per update (40,000 updates), loss summed over positions / length
004|2-layer LSTM hidden 128|Embedding(vocab, 100) -> nn.LSTM(100, 128, num_layers=2) -> Linear(128, vocab) -> ReLU -> LogSoftmax|128|2|rmsprop|0.01||100|embedding U(-1, 1); Linear xavier-uniform, zero bias; LSTM default|1||each poem of a batch run alone, losses summed / 100, one step per batch; batch 100 and seed 5 are the template's (not in the report); the template runs 30 epochs, the log reaches epoch 59 (counted from 0)
"""


def _rows(table: str, columns: int) -> list[list[str]]:
    rows = [line.split("|") for line in table.strip().splitlines()]
    for row in rows:
        if len(row) != columns or row[0] not in REPORTS:
            raise ValueError(f"malformed lab table row (expected {columns} fields): {row}")
    return rows


def _note(text: str) -> str:
    """Expand @key references to the shared notes."""
    return re.sub(r"@(\w+)", lambda m: _NOTES[m.group(1)], text.strip())


def _num(text: str) -> float | None:
    return float(text) if text else None


def _int(text: str) -> int | None:
    return int(text) if text else None


def _figures(row: list[str]) -> list[LabFigure]:
    lab, variant, metric, at, value, unit, where, note = row
    task, source = REPORTS[lab][1], f"{REPORTS[lab][0]}, {where}"

    def figure(v: str, **at_: int | None) -> LabFigure:
        low, _, high = v.lstrip("~>=").partition("-")
        return LabFigure(lab, task, variant, metric, _num(low), unit, source, **at_,
                         high=_num(high), approx=v.startswith("~"), note=_note(note),
                         printed=v.lstrip("~"))  # fmt: skip

    if at.startswith("epochs "):  # a curve: one value per epoch of A-B[/STEP]
        span = re.fullmatch(r"epochs (\d+)-(\d+)(?:/(\d+))?", at)
        epochs = range(int(span[1]), int(span[2]) + 1, int(span[3] or 1)) if span else range(0)
        values = value.split()
        if not values or len(values) != len(epochs):
            raise ValueError(f"{len(values)} values for {len(epochs)} epochs in row {row}")
        return [figure(v, epoch=e) for e, v in zip(epochs, values)]
    kind, _, number = at.partition(" ")
    if kind not in ("", "epoch", "n"):
        raise ValueError(f"expected 'epoch N', 'n N' or 'epochs A-B[/S]', got {at!r} in {row}")
    return [figure(value, **{kind: int(number)} if kind else {})]


def _settings(row: list[str]) -> LabSettings:
    lab, variant, model, hidden, layers, opt, lr, epochs, batch, init, clip, steps, note = row
    return LabSettings(
        lab, REPORTS[lab][1], variant, model, _int(hidden), _int(layers), opt or None, _num(lr),
        _int(epochs), _int(batch), init or None, _num(clip), _int(steps), _note(note),
    )  # fmt: skip


FIGURES: tuple[LabFigure, ...] = tuple(f for r in _rows(_FIGURES, 8) for f in _figures(r))
SETTINGS: tuple[LabSettings, ...] = tuple(_settings(r) for r in _rows(_SETTINGS, 13))


def for_task(task: str) -> list[LabFigure]:
    """Every reported figure of one task (charlm, names, anbn or poems), in report order."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return [f for f in FIGURES if f.task == task]


def curve(lab: str, variant: str, metric: str = TRAIN_PPL) -> list[tuple[int, float]]:
    """The (epoch, value) points a lab reports for one variant's metric, by epoch; [] if none."""
    points = {
        f.epoch: f.value
        for f in FIGURES
        if (f.lab, f.variant, f.metric) == (lab, variant, metric)
        and f.epoch is not None
        and f.value is not None
    }
    return sorted(points.items())


def settings(lab: str, variant: str) -> LabSettings:
    """The lab's recipe for one variant; ValueError naming that lab's variants otherwise."""
    for s in SETTINGS:
        if (s.lab, s.variant) == (lab, variant):
            return s
    known = ", ".join(repr(s.variant) for s in SETTINGS if s.lab == lab) or "none"
    raise ValueError(f"no settings for lab {lab!r} variant {variant!r}; lab {lab!r} has: {known}")
