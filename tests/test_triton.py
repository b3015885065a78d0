"""Backend `triton` run by Triton's interpreter on the CPU (TRITON_INTERPRET=1), against float64
torch.nn via cells.equivalence.compare: outputs, final states and every gradient.

TRITON_INTERPRET must be set before triton is first imported, and this test process may have
imported triton already (the registry imports every built-in backend), so the checks run in a
subprocess with the variable set. Without triton installed everything here is skipped; on a
machine with CUDA the interpreter run still applies, and `test_on_cuda` runs the real kernel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cells.equivalence import Config
from cells.matrix import matrix

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (pip install triton; Linux x86_64 only)",
)

# (kind, Config keyword arguments): the one matrix's quick subset at short lengths (the
# interpreter runs tile by tile in numpy), plus shapes that reach the kernel's own paths
_FIELDS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional")
CASES = [
    (c.kind, {f: getattr(c, f) for f in (*_FIELDS, "nonlinearity", "batch", "with_hx")})
    for kind in ("lstm", "gru", "rnn")
    for c in matrix(kind, quick=True)
    if c.seq_len <= 40
] + [
    ("lstm", {"batch": None}),
    # hidden 70 > one 64-wide block: the streamed-weights path, with partial tiles in H and K
    ("lstm", {"hidden_size": 70, "batch": 20, "seq_len": 3}),
    ("gru", {"hidden_size": 70, "seq_len": 3}),
    ("lstm", {"seq_len": 40}),
]

SCRIPT = r"""
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
import cells
from cells.equivalence import Config, compare
out = {"unavailable": cells.unavailable().get("triton"), "results": []}
if out["unavailable"] is None:
    for kind, kwargs in json.loads(sys.argv[1]):
        config = Config(kind, **kwargs)
        torch.manual_seed(0)
        module = cells.create(kind, "triton", config.input_size, config.hidden_size, **config.nn_kwargs())
        result = compare(module, config)
        worst = result.worst()
        out["results"].append({"label": config.label(), "passed": result.passed, "summary": result.summary(),
                               "worst": worst.rel_error if worst else None})
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def interpreted_results():
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["unavailable"] is None, (
        f"triton unavailable under TRITON_INTERPRET=1: {out['unavailable']}"
    )
    return {r["label"]: r for r in out["results"]}


@pytest.mark.parametrize("case", CASES, ids=lambda c: Config(c[0], **c[1]).label())
def test_interpreted_matches_torch_nn(interpreted_results, case):
    from cells.equivalence import Config

    label = Config(case[0], **case[1]).label()
    result = interpreted_results[label]
    assert result["passed"], result["summary"]


def test_unavailable_reason_without_gpu_or_interpreter():
    from cells.kernels import triton_gpu

    if torch.cuda.is_available() or triton_gpu.interpreted():
        pytest.skip("CUDA or the interpreter is available here, so the backend is registered")
    assert (
        "CUDA" in triton_gpu.unavailable_reason()
        and "TRITON_INTERPRET" in triton_gpu.unavailable_reason()
    )
    import cells

    assert "triton" in cells.unavailable("lstm") and "triton" not in cells.backends("lstm")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_on_cuda(kind):
    import cells
    from cells.equivalence import Config, compare

    config = Config(kind, input_size=28, hidden_size=256, batch=32, seq_len=35, num_layers=2)
    torch.manual_seed(0)
    module = cells.create(kind, "triton", 28, 256, num_layers=2).cuda()
    result = compare(module, config)
    assert result.passed, result.summary()
