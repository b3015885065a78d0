"""`ort`: ONNX Runtime's LSTM / GRU / RNN operators on the module's own parameters (inference).

The module's stack is written as an ONNX graph by hand (`onnx_model`): one recurrent node per
layer, both directions in it, with the weights reordered into ONNX's gate orders (LSTM i,o,f,c
from torch's i,f,g,o; GRU z,r,h from torch's r,z,n, with `linear_before_reset=1`, which is
torch's GRU). Time and batch are symbolic, so one session serves every shape. The `openvino`
peer compiles the same graph.

Threads follow torch's thread count (`torch.set_num_threads`, which the bench sets per case):
`intra_op_num_threads` = that, one inter-op thread, sequential execution, spin-waiting off
(set CELLBENCH_ORT_SPIN=1 to allow it on a dedicated machine). Inputs and outputs are bound
with IO binding to the torch tensors' own memory, so no copy enters or leaves the session;
making a non-contiguous input contiguous (batch_first) is paid, as a torch user pays it.

Training is refused at backward with cells.errors.Unsupported (see peer_base).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch import Tensor

from ..base import State
from .peer_base import PeerBase, contiguous, empty_outputs

OPSET = 17
# rows of torch's weight blocks, in the order ONNX expects them
GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}
ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _reorder(w: Tensor | None, kind: str) -> np.ndarray:
    if w is None:  # layer_weights gives None only for absent biases, which are never reordered
        raise ValueError(f"a {kind} weight to reorder into ONNX's gate order is None")
    blocks = w.detach().cpu().numpy().reshape(len(GATE_ORDER[kind]), -1, *w.shape[1:])
    return np.concatenate([blocks[i] for i in GATE_ORDER[kind]], axis=0)


def onnx_model(module: PeerBase, masked: bool = False):
    """The module's stack as an onnx.ModelProto. Inputs: X (T, B, I), h0 (L*D, B, H)
    [, c0][, mask_0 .. mask_{L-2} (T, B, D*H)]; outputs: output (T, B, D*H), h_n [, c_n]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kind, L, D, H = module.kind, module.num_layers, module.num_directions, module.hidden_size
    lstm = kind == "lstm"
    state_names = ["h0", "c0"] if lstm else ["h0"]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", module.input_size])]
    inputs += [
        helper.make_tensor_value_info(s, TensorProto.FLOAT, [L * D, "B", H]) for s in state_names
    ]
    inputs += (
        [
            helper.make_tensor_value_info(f"mask_{i}", TensorProto.FLOAT, ["T", "B", D * H])
            for i in range(L - 1)
        ]
        if masked
        else []
    )
    nodes, inits = [], []

    def const(name: str, values: list[int]) -> str:
        inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    attrs: dict[str, Any] = {
        "hidden_size": H,
        "direction": "bidirectional" if D == 2 else "forward",
    }
    if kind == "gru":
        attrs["linear_before_reset"] = 1
    if kind == "rnn":
        attrs["activations"] = [str(module.nonlinearity).capitalize()] * D
    layer_in = "X"
    finals: dict[str, list[str]] = {s: [] for s in state_names}
    for layer in range(L):
        weights = [module.layer_weights(layer, d) for d in range(D)]
        W = np.stack([_reorder(w[0], kind) for w in weights])
        R = np.stack([_reorder(w[1], kind) for w in weights])
        inits += [
            numpy_helper.from_array(W, f"W_{layer}"),
            numpy_helper.from_array(R, f"R_{layer}"),
        ]
        bias = ""
        if module.bias:
            inits.append(
                numpy_helper.from_array(
                    np.stack(
                        [
                            np.concatenate([_reorder(w[2], kind), _reorder(w[3], kind)])
                            for w in weights
                        ]
                    ),
                    f"B_{layer}",
                )
            )
            bias = f"B_{layer}"
        layer_states = []
        for s in state_names:
            if L == 1:
                layer_states.append(s)
                continue
            nodes.append(
                helper.make_node(
                    "Slice",
                    [
                        s,
                        const(f"{s}_start_{layer}", [layer * D]),
                        const(f"{s}_end_{layer}", [(layer + 1) * D]),
                        const(f"{s}_axis_{layer}", [0]),
                    ],
                    [f"{s}_{layer}"],
                )
            )
            layer_states.append(f"{s}_{layer}")
        outs = [f"Y_{layer}", f"h_n_{layer}"] + ([f"c_n_{layer}"] if lstm else [])
        if L == 1:
            outs = ["Y_0", "h_n"] + (["c_n"] if lstm else [])
        nodes.append(
            helper.make_node(
                ONNX_OP[kind],
                [layer_in, f"W_{layer}", f"R_{layer}", bias, ""] + layer_states,
                outs,
                name=f"{kind}_{layer}",
                **attrs,
            )
        )
        for s, out in zip(state_names, outs[1:]):
            finals[s].append(out)
        # Y: (T, D, B, H) -> (T, B, D*H), directions side by side as torch.nn concatenates them
        last = layer == L - 1
        out_name = "output" if last else f"out_{layer}"
        y_name = out_name if last or not masked else f"pre_{layer}"
        if D == 2:
            nodes.append(
                helper.make_node("Transpose", [f"Y_{layer}"], [f"Yt_{layer}"], perm=[0, 2, 1, 3])
            )
            nodes.append(
                helper.make_node(
                    "Reshape", [f"Yt_{layer}", const(f"shape_{layer}", [0, 0, -1])], [y_name]
                )
            )
        else:
            nodes.append(
                helper.make_node("Squeeze", [f"Y_{layer}", const(f"axis_{layer}", [1])], [y_name])
            )
        if masked and not last:
            nodes.append(helper.make_node("Mul", [f"pre_{layer}", f"mask_{layer}"], [out_name]))
        layer_in = out_name
    if L > 1:
        for s, outs in finals.items():
            nodes.append(helper.make_node("Concat", outs, [s.replace("0", "_n")], axis=0))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["T", "B", D * H])]
    outputs += [
        helper.make_tensor_value_info(s.replace("0", "_n"), TensorProto.FLOAT, [L * D, "B", H])
        for s in state_names
    ]
    graph = helper.make_graph(nodes, f"cellbench_{kind}", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cellbench"
    )
    onnx.checker.check_model(model)
    return model


class OrtEngine:
    """One InferenceSession and how to call it with IO binding."""

    def __init__(self, module: PeerBase, threads: int, masked: bool) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if os.environ.get("CELLBENCH_ORT_SPIN") == "1" else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self.model = onnx_model(module, masked)
        self.session = ort.InferenceSession(
            self.model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.dims = module.dims()

    def run(self, x: Tensor, states: State, masks: list[Tensor]) -> tuple[Tensor, State]:
        binding = self.session.io_binding()
        keep = []  # the bound tensors must live until the run returns

        def bind(name: str, t: Tensor) -> None:
            t = contiguous(t)
            keep.append(t)
            binding.bind_input(name, "cpu", 0, np.float32, list(t.shape), t.data_ptr())

        bind("X", x)
        for name, s in zip(("h0", "c0"), states):
            bind(name, s)
        for i, m in enumerate(masks):
            bind(f"mask_{i}", m)
        output, finals = empty_outputs(self.dims, x, len(states))
        for name, t in zip(("output", "h_n", "c_n"), (output, *finals)):
            binding.bind_output(name, "cpu", 0, np.float32, list(t.shape), t.data_ptr())
        self.session.run_with_iobinding(binding)
        return output, finals


class OrtLoop(PeerBase):
    """ONNX Runtime's recurrent operators; inference only."""

    requires = ("onnx", "onnxruntime")
    engine_class = OrtEngine

    def onnx_model(self, masked: bool = False):
        """The graph this module runs (for inspection)."""
        return onnx_model(self, masked)

    def session(self):
        """The current InferenceSession (built if needed), e.g. to read its options."""
        return self.engine(False).session
