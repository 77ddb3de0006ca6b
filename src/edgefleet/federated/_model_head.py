"""The trainable part of an ONNX model: its final ``Softmax(linear)`` layer, on frozen penultimate features.

The base release's model gives the job its starting head (``W``, ``b`` read from the initializers the
retrain helper's ``find_head`` locates) and its feature extractor (the same model with the head's input
exposed as an output), which the ClientApp runs with onnxruntime on the device's raw inputs. After the job,
the final head is written back into a copy of the model: every other weight, the graph, inputs and outputs
stay as they were.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgefleet.errors import ModelLoadError
from edgefleet.federated._head import SoftmaxHead

FEATURES_OUTPUT = "edgefleet_fl_features"


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the base model {path}: {e}", hint="is it an ONNX file?") from None


def head_of_model(path: Path) -> tuple[SoftmaxHead, bytes]:
    """The model's head as a ``SoftmaxHead`` (features x classes) and its feature-extractor model bytes."""
    import onnx
    from onnx import numpy_helper

    from edgefleet.retrain._head import find_head

    model = _load(path)
    info = find_head(model)
    inits = {i.name: i for i in model.graph.initializer}
    W = numpy_helper.to_array(inits[info.weight]).astype(np.float32)
    b = numpy_helper.to_array(inits[info.bias]).astype(np.float32).reshape(-1)
    head = SoftmaxHead.from_arrays([W.T if info.transposed else W, b])
    extractor = onnx.ModelProto()
    extractor.CopyFrom(model)
    identity = onnx.helper.make_node("Identity", [info.features], [FEATURES_OUTPUT])
    extractor.graph.node.append(identity)
    extractor.graph.output.append(onnx.helper.make_empty_tensor_value_info(FEATURES_OUTPUT))
    return head, extractor.SerializeToString()


class FeatureExtractor:
    """Runs a feature-extractor model (from ``head_of_model``) with onnxruntime: raw inputs -> features."""

    def __init__(self, model_bytes: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"the job's feature model does not load: {e}") from None
        self._input = self._session.get_inputs()[0].name
        self.digest = hashlib.sha256(model_bytes).hexdigest()

    def __call__(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        out = [
            self._session.run([FEATURES_OUTPUT], {self._input: x[i : i + batch].astype(np.float32)})[0]
            for i in range(0, len(x), batch)
        ]
        f = np.concatenate(out).astype(np.float32)
        return f.reshape(len(f), -1)


def write_head(base_model: Path, head: SoftmaxHead, out: Path) -> Path:
    """A copy of ``base_model`` with ``head``'s weights in its final layer, written to ``out``."""
    import onnx
    from onnx import numpy_helper

    from edgefleet.retrain._head import find_head

    model = _load(base_model)
    info = find_head(model)
    inits = {i.name: i for i in model.graph.initializer}
    old_W = numpy_helper.to_array(inits[info.weight])
    old_b = numpy_helper.to_array(inits[info.bias])
    W = head.W.T if info.transposed else head.W
    if W.shape != old_W.shape or head.b.size != old_b.size:
        raise ModelLoadError(
            f"the job's head {head.W.shape} does not fit the model's layer {old_W.shape}",
            hint="export with the base model the job started from",
        )
    inits[info.weight].CopyFrom(numpy_helper.from_array(W.astype(old_W.dtype), info.weight))
    inits[info.bias].CopyFrom(
        numpy_helper.from_array(head.b.astype(old_b.dtype).reshape(old_b.shape), info.bias)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out
