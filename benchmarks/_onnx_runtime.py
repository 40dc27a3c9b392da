"""Run the folded encoder (``ConcealedEncoder``) with ONNX Runtime, for benchmarks/encoder_engines.py.

Measured against the package's torch runtime and not adopted (docs/PERFORMANCE.md):
kept here so the comparison can be rerun, e.g. on a CPU that is really AVX2-only.
Needs ``pip install onnx onnxruntime``.

The ONNX graph is written directly from the folded weights (no tracing, no
exporter): derived deterministically from a loaded model in milliseconds, no
cache file needed. It takes the decoded uint8 pixels in their NHWC memory
order and does the cast, transpose and scaling to [0, 1] itself.

ONNX Runtime picks its CPU kernels (AVX2, AVX512, AVX512-VNNI, ...) from the
CPU at run time; unlike oneDNN it has no switch to restrict them.

``int8``: static quantisation (QDQ, int8 weights per output channel, uint8
activations) of the convolutions, calibrated on real images.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

SLICE = 64  # images per run, as the torch runtime slices
OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.14


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_model(encoder, image_shape: tuple[int, int, int]):
    """The ONNX ``ModelProto`` of ``encoder`` for uint8 NHWC input of ``image_shape`` ``(height, width, channels)``."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []
    current = "pixels"

    def add(op: str, inputs: list[str], **attributes) -> str:
        nonlocal current
        output = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [output], **attributes))
        current = output
        return output

    def constant(name: str, tensor: torch.Tensor) -> str:
        initializers.append(numpy_helper.from_array(tensor.detach().float().cpu().numpy(), name))
        return name

    add("Cast", [current], to=TensorProto.FLOAT)
    add("Transpose", [current], perm=[0, 3, 1, 2])
    add("Div", [current, constant("pixel_scale", torch.tensor(255.0))])
    for i, (kind, module) in enumerate(encoder.layers()):
        if kind == "conv":
            add(
                "Conv", [current, constant(f"w{i}", module.weight), constant(f"b{i}", module.bias)],
                kernel_shape=list(module.kernel_size), strides=list(module.stride),
                pads=[*module.padding, *module.padding],
            )
        elif kind == "silu":
            source = current
            add("Sigmoid", [source])
            add("Mul", [source, current])
        elif kind == "flatten":
            add("Flatten", [current], axis=1)
        else:
            add("Gemm", [current, constant(f"w{i}", module.weight), constant(f"b{i}", module.bias)], transB=1)
    nodes[-1].output[0] = "latents"
    height, width, channels = image_shape
    graph = helper.make_graph(
        nodes, "concealed_encoder",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["n", height, width, channels])],
        [helper.make_tensor_value_info("latents", TensorProto.FLOAT, ["n", encoder.latent_dim])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bafo-pipeline")
    model.ir_version = IR_VERSION
    return model


def quantized_int8(model, calibration: np.ndarray):
    """``model``'s convolutions statically quantised to int8 (QDQ), activation ranges from ``calibration`` (uint8 NHWC).

    Only the convolutions: quantising the linear layers too (head, folded
    concealment) moved concealed latents by ~46% of their spread.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(np.array_split(calibration, max(1, len(calibration) // 128)))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {"pixels": np.ascontiguousarray(batch)}

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "float32.onnx"), Path(folder, "int8.onnx")
        onnx.save(model, source)
        quantize_static(
            source, target, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
        )
        return onnx.load(target)


class OnnxRuntimeEncoder:
    """Latents of uint8 images with an ONNX Runtime CPU session.

    Parameters
    ----------
    model : onnx.ModelProto
        From :func:`onnx_model` (or :func:`quantized_int8`).
    threads : int
        Intra-op threads. Idle threads do not spin, so they leave the cores to
        the decoders of an export.
    """

    def __init__(self, model, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Latents of uint8 images ``(n, C, H, W)``, of any strides (an NCHW view of NHWC pixels costs no copy)."""
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        pixels = images.transpose(0, 2, 3, 1)
        return np.concatenate([self._encode(pixels[i : i + SLICE]) for i in range(0, len(pixels), SLICE)])

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"pixels": np.ascontiguousarray(pixels)})[0]
