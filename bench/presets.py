"""Named sweeps. A preset is a union of blocks; each block is a cartesian grid.

A command-line value (--kinds, --batch, ...) replaces that field in every block of the preset,
so `--preset fastrnns --kinds lstm` is fastrnns' shape for LSTM only. A block's `backends` of
None means every available backend of each kind (cells.backends(kind)); `exclude` drops some
from that default (quick drops torch.compile, whose first call on a cold machine takes about
30 s per case, and the optional peers; naming backends on the command line clears `exclude`).
An `input_size` of None means "equal to hidden_size" (DeepBench's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from cells.kinds import KINDS

ALL_MODES = ("train", "infer", "generate")


@dataclass(frozen=True)
class Block:
    kinds: tuple[str, ...] = KINDS
    backends: tuple[str, ...] | None = None  # None: all available for the kind
    exclude: tuple[str, ...] = ()
    modes: tuple[str, ...] = ALL_MODES
    input_size: tuple[int | None, ...] = (28,)
    hidden_size: tuple[int, ...] = (256,)
    num_layers: tuple[int, ...] = (1,)
    batch: tuple[int, ...] = (32,)
    seq_len: tuple[int, ...] = (35,)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    blocks: tuple[Block, ...]
    device: str = "cpu"
    # measurement settings this preset prefers (a command-line value wins)
    settings: dict = field(default_factory=dict)


D2L = Block()
QUICK_EXCLUDE = ("compiled", "triton", "ort", "openvino", "jax")

# the scaling preset: one axis at a time around the d2l size
SCALING_AXES: tuple[dict[str, Any], ...] = (
    {"hidden_size": (64, 128, 256, 512, 1024)},
    {"batch": (1, 4, 16, 64, 256)},
    {"seq_len": (10, 35, 100, 300, 1000)},
)

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "quick",
        "all kinds x available backends (but compiled and the peers) x all modes at the d2l size "
        "(I28 H256 B32 T35), plus a small LSTM train batch / hidden grid for the fast backends; the sweep "
        "of `nox -s bench`, sized to finish in two to five minutes on a cold 2-core machine",
        (
            Block(exclude=QUICK_EXCLUDE),
            Block(
                kinds=("lstm",),
                backends=("native", "fused", "numba"),
                modes=("train",),
                batch=(8, 128),
            ),
            Block(
                kinds=("lstm",),
                backends=("native", "fused", "numba"),
                modes=("train",),
                hidden_size=(128, 512),
            ),
        ),
        settings={
            "min_run_time": 0.02,
            "min_repeats": 2,
            "warmup": 1,
            "min_rounds": 3,
            "max_rounds": 20,
            "group_time_cap": 3.0,
            "time_limit": 120.0,
            # a safety net: on a cold 2-core AVX2 machine (AMD Zen 3), numba's first compile
            # included, 240 s left two groups unmeasured
            "budget": 480.0,
        },
    ),
    "scaling": Preset(
        "scaling",
        "LSTM and GRU, train and infer, native / fused / numba, one axis at a time around the d2l size: "
        "hidden 64-1024 (B32 T35), batch 1-256 (H256 T35), sequence length 10-1000 (H256 B32); "
        "the report plots tokens/s and % of peak against each axis with CI bars",
        tuple(
            Block(
                kinds=("lstm", "gru"),
                backends=("native", "fused", "numba"),
                modes=("train", "infer"),
                **axis,
            )
            for axis in SCALING_AXES
        ),
        settings={
            "min_run_time": 0.03,
            "min_repeats": 2,
            "warmup": 1,
            "min_rounds": 4,
            "max_rounds": 20,
            "group_time_cap": 6.0,
            "time_limit": 300.0,
        },
    ),
    "d2l": Preset(
        "d2l",
        "d2l's language-model size: input 28 (one-hot), hidden 256, batch 32, 35 steps",
        (D2L,),
    ),
    "fastrnns": Preset(
        "fastrnns",
        "PyTorch's benchmarks/fastrnns defaults: input 512, hidden 512, batch 64, 100 steps",
        (Block(input_size=(512,), hidden_size=(512,), batch=(64,), seq_len=(100,)),),
    ),
    "deepbench": Preset(
        "deepbench",
        "DeepBench-like GPU grid: hidden 512-2048 (input = hidden), batch 16-128, 25 and 50 steps; "
        "train and infer, plus generate at each hidden size",
        (
            Block(
                modes=("train", "infer"),
                input_size=(None,),
                hidden_size=(512, 1024, 2048),
                batch=(16, 32, 64, 128),
                seq_len=(25, 50),
            ),
            Block(
                modes=("generate",),
                input_size=(None,),
                hidden_size=(512, 1024, 2048),
                batch=(1,),
                seq_len=(50,),
            ),
        ),
        device="cuda",
    ),
}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None


def override(block: Block, **values) -> Block:
    """The block with every non-None value replaced (command-line lists win over the preset)."""
    given = {k: tuple(v) for k, v in values.items() if v is not None}
    if "backends" in given:
        given["exclude"] = ()
    return replace(block, **given)
