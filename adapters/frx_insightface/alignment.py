"""Faces aligned by five landmarks to the 112×112 ArcFace template, with insightface's own ``norm_crop``.

Recognition models are trained on faces warped so that the eyes, the nose tip and the mouth
corners sit at fixed points (``insightface.utils.face_align.arcface_dst``); a face merely resized
embeds differently. The five points come in the order left eye, right eye, nose, left mouth corner,
right mouth corner ("left" is the image's left, as CelebA and InsightFace's detectors give them),
as ten values named as CelebA names them (:data:`LANDMARK_COLUMNS`).

Colour order: ``norm_crop`` is ``cv2.warpAffine``, which moves every channel the same way, so the
channel order passes through unchanged. frx hands it the RGB pixels Pillow decodes and gets RGB
back: the same pixels InsightFace gets by warping OpenCV's BGR and swapping to RGB in its
recognition model (``blobFromImages(swapRB=True)``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from frx_insightface.columns import read_utf8
from frx_insightface.errors import DataFormatError

#: the five points, in the order of ``arcface_dst`` and of InsightFace's ``face.kps``
LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
#: their ten coordinates as CelebA's landmark files and frx's CSV columns name them
LANDMARK_COLUMNS = tuple(f"{point}_{axis}" for point in LANDMARK_NAMES for axis in "xy")
#: ``align=``: by the landmarks (an error without them), never, or by the landmarks when there are any
ALIGN_MODES = ("landmarks", "none", "auto")
#: the side of the ArcFace template, in pixels
TEMPLATE_SIZE = 112


def choose_alignment(align: str, available: bool, source: str, missing: Exception, stacklevel: int = 3) -> bool:
    """Whether a probe set aligns its faces: ``align`` checked against :data:`ALIGN_MODES` and whether landmarks are ``available``.

    ``"landmarks"`` without landmarks raises ``missing``; ``"auto"`` without them warns once, at
    the probe set's construction (``stacklevel`` points the warning at its caller), and returns False.
    """
    if align not in ALIGN_MODES:
        raise ValueError(f"{source}: align must be one of {list(ALIGN_MODES)}, got {align!r}")
    if align == "landmarks" and not available:
        raise missing
    if align == "auto" and not available:
        warnings.warn(f"{missing}; the faces of {source} are centre-cropped and resized, not aligned to the ArcFace "
                      "template (align='none' does so without this warning)", UserWarning, stacklevel=stacklevel)
    return align != "none" and available


def parse_landmarks(values: Sequence[str], where: str, noun: str = "field") -> np.ndarray:
    """Ten coordinates (in :data:`LANDMARK_COLUMNS` order) as a ``(5, 2)`` float32 array; a value that is not a
    finite number names ``where`` and its ``noun``."""
    out = np.empty(10, dtype=np.float32)
    for k, (name, text) in enumerate(zip(LANDMARK_COLUMNS, values)):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataFormatError(f"{where}, {noun} {name!r}: {text!r} is not a number (a landmark coordinate in pixels)")
        out[k] = value
    return out.reshape(5, 2)


def read_celeba_landmarks(path: str | Path) -> dict[str, tuple[int, np.ndarray]]:
    """A CelebA landmark file (``list_landmarks_celeba.txt`` or ``list_landmarks_align_celeba.txt``): ``{image: (line, (5, 2) landmarks)}``.

    Line 1 is the image count, line 2 the ten column names, then ``<image> <ten values>`` per line.
    Errors name the file and the line: a count that does not match, a header other than CelebA's,
    a row of the wrong width, a value that is not a number, an image listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no landmark file at {path}")
    lines = read_utf8(path).splitlines()
    try:
        declared = int(lines[0].strip())
    except (IndexError, ValueError):
        raise DataFormatError(f"{path}: line 1 should be the image count, got {(lines or [''])[0].strip()!r}") from None
    header = lines[1].split() if len(lines) > 1 else []
    if tuple(h.lower() for h in header) != LANDMARK_COLUMNS:
        raise DataFormatError(f"{path}: line 2 should name the columns {' '.join(LANDMARK_COLUMNS)}, got {' '.join(header)!r}")
    out: dict[str, tuple[int, np.ndarray]] = {}
    for number, line in enumerate(lines[2:], 3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 11:
            raise DataFormatError(f"{path}: line {number} has {len(fields)} fields, expected 11 (an image name and ten coordinates)")
        if fields[0] in out:
            raise DataFormatError(f"{path}: line {number}: {fields[0]!r} is listed again (first on line {out[fields[0]][0]})")
        out[fields[0]] = (number, parse_landmarks(fields[1:], f"{path}: line {number}"))
    if len(out) != declared:
        raise DataFormatError(f"{path}: line 1 declares {declared} images, the file lists {len(out)}")
    return out


def celeba_landmarks(path: Path, attributes_path: Path, files: list[str]) -> list[tuple[int, np.ndarray]]:
    """(line, (5, 2) landmarks) of each of ``files`` from a CelebA landmark file that lists the attribute file's images."""
    landmarks = read_celeba_landmarks(path)
    with open(attributes_path, encoding="utf-8") as fh:
        declared = int(fh.readline().strip())  # read_celeba_labels has checked it
    if len(landmarks) != declared:
        raise DataFormatError(f"{path}: lists {len(landmarks)} images, {attributes_path.name} {declared}; the two files should list the same images")
    missing = [f for f in files if f not in landmarks]
    if missing:
        raise DataFormatError(f"{path}: no landmarks for {len(missing)} image(s) of {attributes_path.name}, first {missing[0]!r}")
    return [landmarks[f] for f in files]


def csv_landmarks(csv_path: Path, header: list[str], rows: list, columns: dict[str, list[str]], align: str, source: str) -> list | None:
    """The ``(5, 2)`` landmarks of each CSV row when the probe set aligns (``align`` and the landmark columns say), else None.

    Some but not all ten landmark columns, or a cell that is not a number, is a one-line
    :class:`DataFormatError` naming the file, the line and the column.
    """
    present = [c for c in LANDMARK_COLUMNS if c in header]
    if present and len(present) != len(LANDMARK_COLUMNS):
        absent = [c for c in LANDMARK_COLUMNS if c not in header]
        raise DataFormatError(f"{csv_path}: line 1, column(s) {absent}: the header has landmark column(s) {present} "
                              "but not these; landmarks need all ten columns or none")
    missing = DataFormatError(f"{csv_path}: no landmark columns ({', '.join(LANDMARK_COLUMNS)})")
    if not choose_alignment(align, bool(present), source, missing, stacklevel=4):
        return None
    return [parse_landmarks([columns[c][i] for c in LANDMARK_COLUMNS], f"{csv_path}: line {number}", noun="column")
            for i, (number, _) in enumerate(rows)]


def align_face(image: torch.Tensor, landmarks: np.ndarray, size: int, where: str) -> torch.Tensor:
    """A ``(3, H, W)`` uint8 image warped by ``norm_crop`` so its five ``landmarks`` land on the ArcFace template: ``(3, size, size)`` uint8.

    A ``size`` that is a multiple of 112 is ``norm_crop``'s own (the template scaled); any other
    size is the 112 crop resized (bilinear, antialiased). A landmark outside the image, or five
    points that coincide, is a :class:`DataFormatError` naming ``where`` and the landmark.
    """
    from insightface.utils.face_align import norm_crop

    _, height, width = image.shape
    for name, (x, y) in zip(LANDMARK_NAMES, landmarks.tolist()):
        if not (0 <= x < width and 0 <= y < height):
            raise DataFormatError(f"{where}: landmark {name} ({name}_x, {name}_y) = ({x:g}, {y:g}) lies outside the {width}×{height} image")
    if float(np.ptp(landmarks, axis=0).max()) == 0:
        raise DataFormatError(f"{where}: the five landmarks are one point; they cannot place a face")
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # H×W×3 uint8 RGB, as norm_crop takes
    crop_size = size if size % TEMPLATE_SIZE == 0 else TEMPLATE_SIZE
    with warnings.catch_warnings():
        # insightface calls scikit-image's deprecated SimilarityTransform.estimate; the result is the same
        warnings.filterwarnings("ignore", message="`estimate` is deprecated", category=FutureWarning)
        warped = norm_crop(pixels, np.asarray(landmarks, dtype=np.float32), image_size=crop_size)
    out = torch.from_numpy(np.ascontiguousarray(warped)).permute(2, 0, 1).contiguous()
    if crop_size != size:
        resized = torch.nn.functional.interpolate(out[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out = resized[0].round().clamp(0, 255).to(torch.uint8)
    return out


__all__: Sequence[str] = [
    "ALIGN_MODES",
    "LANDMARK_COLUMNS",
    "LANDMARK_NAMES",
    "TEMPLATE_SIZE",
    "align_face",
    "celeba_landmarks",
    "choose_alignment",
    "csv_landmarks",
    "parse_landmarks",
    "read_celeba_landmarks",
]
