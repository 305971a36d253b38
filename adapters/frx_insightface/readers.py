"""Readers for the data formats of face recognition, each giving a probe set frx can analyse.

- InsightFace verification ``.bin`` files (lfw, cfp_fp, agedb_30): a pickle of ``(bins, issame)``,
  ``bins`` the encoded images of the pairs one after the other, ``issame`` one flag per pair. Pickle
  runs code on load, so these files are read with :class:`RestrictedUnpickler`, which admits
  bytes, lists, tuples, booleans and integers and nothing that names a Python object.
- CelebA: ``list_attr_celeba.txt`` (40 binary attributes), ``identity_CelebA.txt`` and, optionally,
  ``list_eval_partition.txt``, with the images folder ``img_align_celeba`` (or ``img_celeba``) and
  its landmark file.
- A folder of images with a CSV of image path, identity, attribute and, optionally, landmark columns.

Probe sets with five landmarks per face warp each face to the 112×112 ArcFace template with
insightface's ``norm_crop`` (:mod:`frx_insightface.alignment`); without them they centre-crop and resize.

Images are decoded with Pillow (which matplotlib already brings). Every problem is a
:class:`DataFormatError` that names the file and the row or entry.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frx_insightface.alignment import LANDMARK_COLUMNS, align_face, celeba_landmarks, choose_alignment, csv_landmarks
from frx_insightface.columns import KINDS_MARKER, column_schema, kinds_row, parse_kinds, parse_label, read_schema_file, read_utf8, schema_file
from frx_insightface.errors import DataFormatError
from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.identity_keys import IdentityKeyError, identity_keys
from frx_plugin.probe import ProbeSet

# --------------------------------------------------------------------------- restricted pickle


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only: bytes, str, lists, tuples, dicts, booleans, integers, floats, None.

    Any pickle that names a Python object (a class, a function such as ``os.system``, a persistent
    id) is refused before that object is looked up, so a crafted file cannot run code. The one
    global admitted is ``_codecs.encode`` for the ``latin1`` text-to-bytes conversion that Python
    writes for ``bytes`` at pickle protocols 0–2, wrapped so it can do nothing else.
    """

    def __init__(self, file, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise DataFormatError(
            f"{self.source}: refused to load: the pickle names the Python object {module}.{name}; "
            "a verification .bin holds only bytes, lists and booleans (the file may be crafted to run code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataFormatError(f"{self.source}: refused to load: the pickle refers to a persistent object {pid!r}")


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", b"latin1"):
        raise DataFormatError("refused to load: _codecs.encode used for something other than bytes")
    return text.encode("latin1")


def restricted_load(path: str | Path) -> Any:
    """The data in a pickle file, read by :class:`RestrictedUnpickler` (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    with open(path, "rb") as fh:
        try:
            return RestrictedUnpickler(fh, str(path)).load()
        except DataFormatError:
            raise
        except Exception as exc:  # truncated or not a pickle at all
            raise DataFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- images


def decode_image(data: bytes | bytearray, source: str, size: int | None = None, centre_crop: bool = False) -> torch.Tensor:
    """One encoded image (JPEG, PNG, …) as ``(3, H, W)`` uint8 RGB; resized to ``size``² (Pillow, bilinear) if given.

    ``centre_crop``: a non-square image is first cropped to its central square (side the shorter
    side; an odd margin leaves the extra pixel on the right or bottom), so the resize keeps its aspect.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            image = image.convert("RGB")
            width, height = image.size
            if centre_crop and width != height:
                side = min(width, height)
                left, top = (width - side) // 2, (height - side) // 2
                image = image.crop((left, top, left + side, top + side))
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            raw = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            width, height = image.size
    except UnidentifiedImageError:
        raise DataFormatError(f"{source}: the image cannot be decoded: its {len(data):,} bytes are in no image format Pillow "
                              "reads (a damaged or truncated file, or not an image)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # Pillow raises SyntaxError for a broken PNG
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the image", str(exc))  # the buffer means nothing to the user
        raise DataFormatError(f"{source}: the image cannot be decoded ({reason})") from None
    return raw.view(height, width, 3).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- verification .bin


@dataclass
class VerificationPairs:
    """A verification file: ``images`` ``(2P, 3, H, W)`` uint8 and ``issame`` ``(P,)`` bool; pair p is images 2p and 2p + 1."""

    images: torch.Tensor
    issame: torch.Tensor
    source: str

    @property
    def pairs(self) -> torch.Tensor:
        """``(P, 2)`` image indices of each pair."""
        return torch.arange(self.images.shape[0]).view(-1, 2)


def read_verification_bin(path: str | Path) -> VerificationPairs:
    """An InsightFace verification ``.bin`` (lfw.bin, cfp_fp.bin, agedb_30.bin), read without running code.

    Errors name the file and the entry: a pickle naming any Python object, a structure other
    than ``(images, flags)``, an image count that is not twice the flag count, a flag that is not
    a boolean, an image that cannot be decoded or whose size differs from the first one's.
    """
    path = Path(path)
    data = restricted_load(path)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataFormatError(f"{path}: expected a pair (encoded images, same-person flags), got {type(data).__name__}")
    bins, issame = data
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise DataFormatError(f"{path}: expected two lists (encoded images, flags), got {type(bins).__name__} and {type(issame).__name__}")
    if len(bins) != 2 * len(issame):
        raise DataFormatError(
            f"{path}: {len(bins)} images for {len(issame)} same-person flags; a verification file holds two images per flag"
        )
    if not issame:
        raise DataFormatError(f"{path}: no pairs")
    flags = []
    for k, flag in enumerate(issame):
        if isinstance(flag, bool) or (isinstance(flag, int) and flag in (0, 1)):
            flags.append(bool(flag))
        else:
            raise DataFormatError(f"{path}: flag {k} is {flag!r}; same-person flags are booleans")
    first = None
    images = []
    for k, item in enumerate(bins):
        if not isinstance(item, (bytes, bytearray)):
            raise DataFormatError(f"{path}: image entry {k} is {type(item).__name__}, not encoded image bytes")
        image = decode_image(item, f"{path}: image entry {k}")
        if first is None:
            first = tuple(image.shape)
        elif tuple(image.shape) != first:
            raise DataFormatError(f"{path}: image entry {k} is {tuple(image.shape)[1:]} pixels, entry 0 is {first[1:]}")
        images.append(image)
    return VerificationPairs(torch.stack(images), torch.tensor(flags), str(path))


class VerificationProbeSet(ProbeSet):
    """A verification file as a probe set: its images with pair-wise identities and no attribute labels.

    The file says only whether the two faces of a pair are the same person, so each pair gets its
    own identities (one shared id for a same-person pair, two for a different-person one); the
    attributes come from estimators (``frx_register_estimators``). ``pairs`` and ``issame`` keep
    the file's pairs for ``frx explain``.
    """

    #: a bare path with this suffix names this probe set on the command line (``--pairs lfw.bin``)
    suffixes = (".bin",)

    def __init__(self, path: str | Path) -> None:
        pairs = read_verification_bin(path)
        count = pairs.issame.shape[0]
        first = torch.arange(count) * 2
        second = torch.where(pairs.issame, first, first + 1)
        identity = torch.stack([first, second], 1).reshape(-1)
        super().__init__(AttributeSchema([]), identity, {}, source=pairs.source)
        self._images = pairs.images
        self.pairs, self.issame = pairs.pairs, pairs.issame

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self._images[indices].float() / 255.0


# --------------------------------------------------------------------------- CelebA


CELEBA_ATTRIBUTES_FILE = "list_attr_celeba.txt"
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_IMAGES = "img_align_celeba"
#: each image folder's landmark file (five points per image, in that folder's pixels)
CELEBA_LANDMARKS = {"img_align_celeba": "list_landmarks_align_celeba.txt", "img_celeba": "list_landmarks_celeba.txt"}
CELEBA_PARTITIONS = {"train": 0, "valid": 1, "test": 2}


def _rows(path: Path, width: int, skip: int = 0) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty line after ``skip`` header lines; every row has ``width`` fields."""
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    out = []
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        if number <= skip or not line.strip():
            continue
        fields = line.split()
        if len(fields) != width:
            raise DataFormatError(f"{path}: line {number} has {len(fields)} fields, expected {width}")
        out.append((number, fields))
    return out


def read_celeba_labels(root: str | Path, partition: str | None = None) -> tuple[list[str], torch.Tensor, AttributeSchema, dict[str, torch.Tensor]]:
    """CelebA's file names, identities, schema (40 binary attributes) and labels, in the attribute file's order.

    ``partition``: ``"train"``, ``"valid"`` or ``"test"`` keeps those rows (needs
    ``list_eval_partition.txt``). Errors name the file and the line: a row of the wrong width, a
    value other than -1/1, a count in the first line that does not match, an image without an
    identity.
    """
    root = Path(root)
    attributes_path = root / CELEBA_ATTRIBUTES_FILE
    if not attributes_path.is_file():
        raise FileNotFoundError(f"no {CELEBA_ATTRIBUTES_FILE} in {root}")
    head = (read_utf8(attributes_path).splitlines() + ["", ""])[:2]
    try:
        declared = int(head[0].strip())
    except ValueError:
        raise DataFormatError(f"{attributes_path}: line 1 should be the image count, got {head[0].strip()!r}") from None
    names = head[1].split()
    if not names:
        raise DataFormatError(f"{attributes_path}: line 2 should name the attributes")
    rows = _rows(attributes_path, len(names) + 1, skip=2)
    if len(rows) != declared:
        raise DataFormatError(f"{attributes_path}: line 1 declares {declared} images, the file lists {len(rows)}")
    files = [fields[0] for _, fields in rows]
    values = torch.empty(len(rows), len(names), dtype=torch.int64)
    for i, (number, fields) in enumerate(rows):
        for j, text in enumerate(fields[1:]):
            if text not in ("1", "-1"):
                raise DataFormatError(f"{attributes_path}: line {number}, attribute {names[j]!r}: {text!r} is not -1 or 1")
            values[i, j] = 1 if text == "1" else 0
    identity_of = {}
    for number, (name, ident) in _rows(root / CELEBA_IDENTITY_FILE, 2):
        try:
            identity_of[name] = int(ident)
        except ValueError:
            raise DataFormatError(f"{root / CELEBA_IDENTITY_FILE}: line {number}: identity {ident!r} is not an integer") from None
    missing = [f for f in files if f not in identity_of]
    if missing:
        raise DataFormatError(f"{root / CELEBA_IDENTITY_FILE}: no identity for {len(missing)} image(s), first {missing[0]!r}")
    keep = torch.ones(len(files), dtype=torch.bool)
    if partition is not None:
        if partition not in CELEBA_PARTITIONS:
            raise ValueError(f"partition must be one of {sorted(CELEBA_PARTITIONS)} or None, got {partition!r}")
        split = {name: int(p) for _, (name, p) in _rows(root / CELEBA_PARTITION_FILE, 2)}
        keep = torch.tensor([split.get(f, -1) == CELEBA_PARTITIONS[partition] for f in files])
    index = keep.nonzero().squeeze(1).tolist()
    schema = AttributeSchema(Attribute(name.lower(), "binary") for name in names)
    labels = {a.name: values[index, j].clone() for j, a in enumerate(schema)}
    identity = torch.tensor([identity_of[files[i]] for i in index], dtype=torch.int64)
    return [files[i] for i in index], identity, schema, labels


class CelebAProbeSet(ProbeSet):
    """CelebA as a probe set: 40 binary attributes, identities, images loaded on demand.

    ``images``: the image folder, ``"img_align_celeba"`` (the aligned-and-cropped 178×218 images,
    the default) or ``"img_celeba"`` (the in-the-wild originals). ``align``: ``"landmarks"``
    warps each face with insightface's ``norm_crop`` so its five landmarks (from the folder's own
    landmark file, :data:`CELEBA_LANDMARKS`) land on the ArcFace template, as InsightFace aligns
    faces before embedding them; ``"none"`` crops each image to its central square and resizes
    it (with Pillow, as :class:`ImageFolderProbeSet` does: the same file gives the same pixels);
    ``"auto"`` (the default) aligns when the landmark file is there and otherwise resizes, with one
    warning. ``alignment`` says which was done (``"landmarks"`` or ``"none"``), and so
    does ``source`` when the faces are aligned. ``size``: the side of the images (112, the
    template's, by default). ``limit`` keeps the first ``limit`` rows of the chosen partition.
    """

    def __init__(self, root: str | Path, partition: str | None = None, size: int = 112, limit: int | None = None,
                 align: str = "auto", images: str = CELEBA_IMAGES) -> None:
        self.root = Path(root)
        if images not in CELEBA_LANDMARKS:
            raise ValueError(f"CelebA at {self.root}: images must be one of {sorted(CELEBA_LANDMARKS)}, got {images!r}")
        files, identity, schema, labels = read_celeba_labels(self.root, partition)
        if limit is not None:
            files, identity = files[:limit], identity[:limit]
            labels = {k: v[:limit] for k, v in labels.items()}
        source = f"CelebA at {self.root}"
        landmarks_path = self.root / CELEBA_LANDMARKS[images]
        missing = FileNotFoundError(f"no {landmarks_path.name} in {self.root} (the landmarks of {images}/)")
        self.landmarks = None
        if choose_alignment(align, landmarks_path.is_file(), source, missing):
            self.landmarks = celeba_landmarks(landmarks_path, self.root / CELEBA_ATTRIBUTES_FILE, files)
            source += f" ({images}), aligned to the ArcFace template by {landmarks_path.name}"
        elif images != CELEBA_IMAGES:
            source += f" ({images})"
        super().__init__(schema, identity, labels, source=source)
        self.files, self.size, self.image_folder = files, size, images
        self.alignment = "none" if self.landmarks is None else "landmarks"

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(indices), 3, self.size, self.size)
        for row, index in enumerate(torch.as_tensor(indices).tolist()):
            path = self.root / self.image_folder / self.files[index]
            if not path.is_file():
                raise FileNotFoundError(f"{self.source}: no image {path}")
            if self.landmarks is None:  # the image folder's crop and resize (Pillow's): the same pixels by either route
                image = decode_image(path.read_bytes(), str(path), self.size, centre_crop=True)
            else:
                number, points = self.landmarks[index]
                where = f"{self.root / CELEBA_LANDMARKS[self.image_folder]}: line {number} ({self.files[index]})"
                image = align_face(decode_image(path.read_bytes(), str(path)), points, self.size, where)
            out[row] = image.float() / 255.0
        return out


# --------------------------------------------------------------------------- a folder of images with a CSV


class ImageFolderProbeSet(ProbeSet):
    """A folder of face images and a CSV with an image-path column, an identity column and attribute columns.

    ``csv_path`` (default ``folder/labels.csv``, UTF-8): a header row, then one row per image. ``path``
    (relative to ``folder``) and ``identity`` (any text or integer) are required; every other column
    is an attribute, ``binary``, ``categorical`` or ``continuous``. Its kind comes from ``kinds``
    (``"age:continuous;glasses:binary"``, or a mapping of column to kind), a JSON sidecar
    (``labels.csv.schema.json`` or ``frx-schema.json``) or a ``#kinds`` row right after the header,
    in that order (:mod:`frx_insightface.columns`); a column none of them names gets the kind most of
    its values fit (0/1 or true/false binary, numbers continuous, anything else categorical, classes
    in sorted order), and the inferred kinds are printed in one warning. A value that does not fit
    its column's kind is an error: a typo never changes a kind. ``schema`` (an
    :class:`~frx_plugin.attributes.AttributeSchema`) instead names the attribute columns and their
    kinds outright. An empty cell is a missing label. Images are decoded with Pillow. Errors name
    the file, the line and the column.

    An identity's key (``identity``, int64) is its name read as an integer when it is one (CelebA's
    identity numbers give CelebA's keys), else a 63-bit hash of the name
    (:mod:`frx_plugin.identity_keys`), never its position in the file: folds and bootstrap draws
    follow the key, so they are those of an embedding-set file or another probe set with the same
    keys. ``identity_names`` lists the names in order of first appearance, ``identity_name`` maps
    each key to its name.

    Landmark columns (optional; all ten or none, never attributes): ``lefteye_x, lefteye_y,
    righteye_x, righteye_y, nose_x, nose_y, leftmouth_x, leftmouth_y, rightmouth_x, rightmouth_y``
    (CelebA's names), in pixels of the image as Pillow decodes it, "left" the image's left. ``align``:
    ``"landmarks"`` warps each face with insightface's ``norm_crop`` so its landmarks land on the
    112×112 ArcFace template (a multiple of 112 for ``size`` keeps the template, scaled; another
    size resizes the 112 crop); ``"none"`` crops a non-square image to its central square (the
    shorter side; nothing is squashed) and resizes it to ``size``² (bilinear); ``"auto"`` (the
    default) aligns when the CSV has landmark columns and otherwise resizes, with one warning.
    ``alignment`` says which was done (``"landmarks"`` or ``"none"``), and so does ``source`` when
    the faces are aligned.
    """

    def __init__(self, folder: str | Path, csv_path: str | Path | None = None, schema: AttributeSchema | None = None,
                 size: int = 112, path_column: str = "path", identity_column: str = "identity", align: str = "auto",
                 kinds: str | Mapping[str, str] | None = None) -> None:
        import csv

        self.folder = Path(folder)
        csv_path = Path(csv_path) if csv_path is not None else self.folder / "labels.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"no CSV of labels at {csv_path}")
        if schema is not None and kinds is not None:
            raise ValueError(f"{csv_path}: pass schema or kinds, not both")
        reader = csv.reader(io.StringIO(read_utf8(csv_path), newline=""))
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataFormatError(f"{csv_path}: the file is empty; it needs a header row") from None
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
        for column in (path_column, identity_column):
            if column not in header:
                raise DataFormatError(f"{csv_path}: no {column!r} column (the header has {header})")
        for number, row in rows:
            if len(row) != len(header):
                raise DataFormatError(f"{csv_path}: line {number} has {len(row)} fields, the header has {len(header)}")
        names = [h for h in header if h not in (path_column, identity_column) and h not in LANDMARK_COLUMNS]
        kinds_row_at = header.index(path_column)
        marked = [(k, number) for k, (number, row) in enumerate(rows) if row[kinds_row_at].strip() == KINDS_MARKER]
        declared = {}
        if marked and marked[0][0] == 0:
            declared = kinds_row(csv_path, rows[0][0], header, rows[0][1], names)
            rows, marked = rows[1:], marked[1:]
        if marked:
            raise DataFormatError(f"{csv_path}: line {marked[0][1]}: a {KINDS_MARKER} row must come right after the header")
        if not rows:
            raise DataFormatError(f"{csv_path}: no rows after the header")
        columns = {name: [row[i].strip() for _, row in rows] for i, name in enumerate(header)}
        lines = [number for number, _ in rows]
        if schema is None:
            sidecar = schema_file(csv_path)
            declared.update(read_schema_file(sidecar) if sidecar is not None else {})
            declared.update(parse_kinds(kinds) if kinds is not None else {})
            for name, declaration in declared.items():
                if name not in names:
                    role = ("the image-path column" if name == path_column else "the identity column" if name == identity_column
                            else "a landmark column" if name in LANDMARK_COLUMNS else "not a column of the CSV")
                    raise DataFormatError(f"{declaration.source}: column {name!r} is {role}; the attribute columns of {csv_path} "
                                          f"are {names}")
            schema, labels = column_schema(csv_path, names, columns, lines, declared)
        else:
            unknown = [a.name for a in schema if a.name not in columns]
            if unknown:
                raise DataFormatError(f"{csv_path}: no column for attribute(s) {unknown}")
            labels = {}
            for attribute in schema:
                values = [parse_label(attribute, text, f"{csv_path}: line {number}, column {attribute.name!r}")
                          for number, text in zip(lines, columns[attribute.name])]
                labels[attribute.name] = torch.tensor(values, dtype=torch.int64 if attribute.discrete else torch.float32)
        try:  # keyed by the identity's own name, never by where it first appears (identical across routes)
            identity, self.identity_name = identity_keys(columns[identity_column], f"{csv_path}: column {identity_column!r}")
        except IdentityKeyError as exc:
            raise DataFormatError(str(exc)) from None
        self.files = []
        for (number, _), relative in zip(rows, columns[path_column]):
            path = self.folder / relative
            if not path.is_file():
                raise DataFormatError(f"{csv_path}: line {number}: no image {path}")
            self.files.append(path)
        self.identity_names = list(self.identity_name.values())  # in order of first appearance
        self.size, self.csv_path, self.lines = size, csv_path, lines
        source = f"image folder {self.folder}"
        self.landmarks = csv_landmarks(csv_path, header, rows, columns, align, source)
        if self.landmarks is not None:
            source += f", aligned to the ArcFace template by the landmark columns of {csv_path.name}"
        self.alignment = "none" if self.landmarks is None else "landmarks"
        super().__init__(schema, identity, labels, source=source)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._image(i).float() / 255.0 for i in torch.as_tensor(indices).tolist()]) \
            if len(indices) else torch.empty(0, 3, self.size, self.size)

    def _image(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``(3, size, size)`` uint8: aligned by its landmarks, or centre-cropped and resized."""
        path = self.files[index]
        if self.landmarks is None:
            return decode_image(path.read_bytes(), str(path), self.size, centre_crop=True)
        where = f"{self.csv_path}: line {self.lines[index]} ({path.name})"
        return align_face(decode_image(path.read_bytes(), str(path)), self.landmarks[index], self.size, where)


__all__: Sequence[str] = [
    "CelebAProbeSet",
    "ImageFolderProbeSet",
    "DataFormatError",
    "RestrictedUnpickler",
    "VerificationPairs",
    "VerificationProbeSet",
    "decode_image",
    "read_celeba_labels",
    "read_verification_bin",
    "restricted_load",
]
