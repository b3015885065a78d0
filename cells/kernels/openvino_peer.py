"""`openvino`: OpenVINO's CPU plugin running the module's stack (inference).

The graph is the one the `ort` peer builds (`cells.kernels.ort.onnx_model`: one ONNX
LSTM / GRU / RNN node per layer, weights reordered to ONNX's gate orders), read by OpenVINO's
ONNX front end and compiled for "CPU" with:
  INFERENCE_PRECISION_HINT f32  (on CPUs with AMX / AVX512-BF16 it would otherwise pick bf16)
  INFERENCE_NUM_THREADS = torch's thread count, NUM_STREAMS 1, PERFORMANCE_HINT LATENCY.
Inputs are wrapped without a copy (`ov.Tensor(..., shared_memory=True)`); outputs are written
into torch-allocated tensors set as the request's output tensors, with a copy only if the
plugin chose its own buffers (checked per call).

Training is refused at backward with cells.errors.Unsupported (see peer_base).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..base import State
from .ort import onnx_model
from .peer_base import PeerBase, contiguous, empty_outputs


def _core():
    import openvino as ov

    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


_CORE = None


class OpenVinoEngine:
    """One compiled model and one infer request."""

    def __init__(self, module: PeerBase, threads: int, masked: bool) -> None:
        self.config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        model = _core().read_model(onnx_model(module, masked).SerializeToString())
        self.compiled = _core().compile_model(model, "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [p.get_any_name() for p in self.compiled.inputs]
        self.dims = module.dims()

    def run(self, x: Tensor, states: State, masks: list[Tensor]) -> tuple[Tensor, State]:
        import openvino as ov

        feeds = [contiguous(t) for t in (x, *states, *masks)]
        for name, t in zip(self.inputs, feeds):
            self.request.set_tensor(name, ov.Tensor(t.numpy(), shared_memory=True))
        output, finals = empty_outputs(self.dims, x, len(states))
        outs = (output, *finals)
        for i, t in enumerate(outs):
            self.request.set_output_tensor(i, ov.Tensor(t.numpy(), shared_memory=True))
        self.request.infer()
        for i, t in enumerate(outs):
            got = self.request.get_output_tensor(i).data
            if got.ctypes.data != t.data_ptr():  # the plugin kept its own buffer
                t.copy_(torch.from_numpy(np.asarray(got)).reshape(t.shape))
        return output, finals


class OpenVinoLoop(PeerBase):
    """OpenVINO's CPU plugin, f32 pinned; inference only."""

    requires = ("onnx", "openvino")
    engine_class = OpenVinoEngine

    def compiled_model(self):
        """The current compiled model (built if needed), e.g. to read its properties."""
        return self.engine(False).compiled
