"""InsightFace recognition models as frx backbones, and an exporter that turns a torch backbone into one.

:func:`load_insightface_backbone` opens a recognition ONNX file through insightface's own
``model_zoo.get_model`` (which routes it to ``ArcFaceONNX``) and embeds images the way InsightFace
does: RGB, 0–255, the model's ``input_mean``/``input_std`` (0/1 when the graph normalises by itself,
as insightface detects from its first nodes, so normalisation is never applied twice), resized to
the model's input size, L2-normalised; with ``flip=True`` the embedding of the horizontally flipped
image is added first, as arcface_torch's evaluation does. An explicit ``mean``/``std`` (a number, or one
per channel in the model's channel order) overrides the one insightface detects in the graph, and
``channels="bgr"`` feeds the model BGR instead of RGB (for a model trained on OpenCV's order). frx never downloads a model: a missing
file is an error that says where to get one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from frx_insightface.readers import DataFormatError

WHERE_TO_GET = (
    "frx never downloads models: put the file there yourself (InsightFace's model packs, e.g. buffalo_l, hold "
    "w600k_r50.onnx; see github.com/deepinsight/insightface/tree/master/model_zoo), or export a torch backbone "
    "with frx_insightface.export_onnx"
)


#: a mean or std: a number, three (one per channel), or None (what insightface detected)
Normalisation = float | tuple[float, float, float] | None


def _values(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, tuple) else (value,)


def _normalisation(path: Path, name: str, value: Any, detected: float) -> float | tuple[float, float, float]:
    """``value`` (``None``: ``detected``) as a float or three floats; anything else is a ``ValueError`` naming ``name``."""
    if value is None:
        return detected
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    raise ValueError(f"{path}: {name} must be a number or three numbers (one per channel), got {value!r}")


class InsightFaceBackbone:
    """A recognition ONNX model loaded by insightface (``ArcFaceONNX``), used as an frx backbone.

    ``embed(images)``: images ``(B, 3, H, W)`` float RGB in [0, 1] → L2-normalised embeddings
    ``(B, D)`` float32. Calling the object does the same (so the default ``frx_embed`` works too).

    ``mean``/``std``: ``None`` (the values insightface detected: 0/1 when the graph normalises by
    itself, else 127.5/127.5), a number, or three numbers (one per channel, in the order the model
    is fed); the model gets ``(pixels − mean) / std`` with pixels in 0–255. ``channels``: ``"rgb"``
    (InsightFace's convention) or ``"bgr"`` (the channel order is flipped before the model).
    """

    def __init__(self, model: Any, path: Path, flip: bool = False, mean: Normalisation = None,
                 std: Normalisation = None, channels: str = "rgb") -> None:
        self.model, self.path, self.flip = model, Path(path), bool(flip)
        width, height = model.input_size
        self.input_size = (int(height), int(width))
        if channels not in ("rgb", "bgr"):
            raise ValueError(f"{self.path}: channels must be 'rgb' or 'bgr', got {channels!r}")
        self.channels = channels
        self.explicit = mean is not None or std is not None
        self.input_mean = _normalisation(self.path, "mean", mean, float(model.input_mean))
        self.input_std = _normalisation(self.path, "std", std, float(model.input_std))
        if any(not value > 0 for value in _values(self.input_std)):
            raise ValueError(f"{self.path}: std must be positive, got {self.input_std}")

    def __repr__(self) -> str:
        return (f"InsightFaceBackbone({str(self.path)!r}, input {self.input_size}, mean {self.input_mean}, std {self.input_std}, "
                f"channels={self.channels}, flip={self.flip})")

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.channels == "bgr":
            pixels = pixels.flip(1)
        if not self.explicit:  # ArcFaceONNX.forward applies (x − input_mean) / input_std itself, with the values it detected
            out = self.model.forward(pixels.numpy())
        else:
            mean = torch.tensor(_values(self.input_mean), dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(_values(self.input_std), dtype=torch.float32).view(-1, 1, 1)
            blob = ((pixels - mean) / std).contiguous().numpy()
            out = self.model.session.run(self.model.output_names, {self.model.input_name: blob})[0]
        return torch.from_numpy(out).to(torch.float32)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.path}: images must be (B, 3, H, W) RGB in [0, 1], got {tuple(images.shape)}")
        images = images.detach().to("cpu", torch.float32)
        if tuple(images.shape[2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        pixels = images.clamp(0, 1) * 255.0  # InsightFace's scale; RGB, as its blobFromImages(swapRB=True) gives
        features = self._features(pixels)
        if self.flip:
            features = features + self._features(pixels.flip(3))
        return F.normalize(features, dim=1)

    __call__ = embed


def load_insightface_backbone(path: str | Path, flip: bool = False, mean: Normalisation = None, std: Normalisation = None,
                              channels: str = "rgb") -> InsightFaceBackbone:
    """The recognition model in ``path`` (ONNX) through ``insightface.model_zoo.get_model``, on the CPU.

    ``mean``, ``std`` and ``channels`` as :class:`InsightFaceBackbone` takes them.

    A missing file is a ``FileNotFoundError`` naming the path and how to get one (nothing is
    downloaded); a file insightface routes to no model, or to one that is not a recognition model,
    is a :class:`~frx_insightface.readers.DataFormatError` naming the file and its input shape.
    """
    path = Path(path).expanduser()
    if path.suffix != ".onnx":
        raise DataFormatError(f"{path}: an InsightFace backbone is an .onnx file")
    model = open_model(path)
    if model is None:
        raise DataFormatError(f"{path}: insightface routes this ONNX file to no model class ({_input_shape(path)})")
    if getattr(model, "taskname", None) != "recognition":
        raise DataFormatError(
            f"{path}: insightface reads it as a {getattr(model, 'taskname', type(model).__name__)!r} model, not a recognition one "
            f"({_input_shape(path)})"
        )
    return InsightFaceBackbone(model, path, flip=flip, mean=mean, std=std, channels=channels)


def open_model(path: Path) -> Any:
    """The model insightface's ``model_zoo.get_model`` makes of ``path`` on the CPU (``None``: no class), never downloading.

    A missing file is a ``FileNotFoundError`` that says where to get one; a file onnx or onnxruntime
    cannot open is a :class:`~frx_insightface.readers.DataFormatError` naming it.
    """
    from insightface.model_zoo import model_zoo

    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}. {WHERE_TO_GET}")
    try:
        return model_zoo.get_model(str(path), providers=["CPUExecutionProvider"], download=False)
    except Exception as exc:  # onnx / onnxruntime reject damaged files with their own error types
        raise DataFormatError(f"{path}: insightface cannot open it ({type(exc).__name__}: {exc})") from None


def _input_shape(path: Path) -> str:
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return f"input {session.get_inputs()[0].shape}, {len(session.get_outputs())} output(s)"
    except Exception:  # noqa: BLE001 - only for the message
        return "input shape unreadable"


class _InsightFaceInput(torch.nn.Module):
    """Wraps a backbone that takes RGB in [0, 1] (at its own ``input_size``) so that it takes InsightFace's
    normalised input, (x − 127.5) / 127.5, at ``size``."""

    def __init__(self, backbone: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.backbone, self.size = backbone, size
        self.inner = int(getattr(backbone, "input_size", size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + 1.0) * 0.5
        if self.inner != self.size:
            x = F.interpolate(x, size=(self.inner, self.inner), mode="bilinear", align_corners=False)
        return self.backbone(x)


def _prepend_normalisation(path: Path) -> None:
    """Make the graph take 0–255 pixels: Sub 127.5 and Mul 1/127.5 as its first nodes, named as insightface looks for."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    original = graph.input[0].name
    raw = original + ".raw"
    graph.initializer.extend([
        numpy_helper.from_array(np.array(127.5, dtype=np.float32), "frx_input_mean"),
        numpy_helper.from_array(np.array(1.0 / 127.5, dtype=np.float32), "frx_input_scale"),
    ])
    nodes = [
        helper.make_node("Sub", [raw, "frx_input_mean"], [raw + ".centred"], name="Sub_input_mean"),
        helper.make_node("Mul", [raw + ".centred", "frx_input_scale"], [original], name="Mul_input_scale"),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    graph.input[0].name = raw
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(backbone: torch.nn.Module, path: str | Path, input_size: int = 112, normalisation_in_graph: bool = False,
                opset: int = 17) -> Path:
    """Write ``backbone`` (RGB in [0, 1] → embeddings) as an InsightFace recognition ONNX file.

    The graph takes ``(B, 3, input_size, input_size)`` RGB in InsightFace's convention and resizes
    it to the backbone's own ``input_size`` inside. By default the input is normalised,
    (x − 127.5) / 127.5, and insightface normalises before feeding it. With
    ``normalisation_in_graph=True`` the graph takes 0–255 pixels, and its first nodes are the Sub
    and Mul that insightface looks for, so that it feeds raw pixels and never normalises twice. The
    batch dimension is dynamic. The export uses torch's TorchScript-based exporter (no onnxscript).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _InsightFaceInput(backbone, input_size).eval()
    example = torch.zeros(2, 3, input_size, input_size)
    with torch.no_grad():
        torch.onnx.export(
            wrapped, (example,), str(path), input_names=["input.1"], output_names=["embedding"],
            dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=opset, dynamo=False,
        )
    if normalisation_in_graph:
        _prepend_normalisation(path)
    return path
