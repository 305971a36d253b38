"""Readers of real face-recognition data formats, on small files the tests write in those formats."""

from __future__ import annotations

import hashlib
import io
import os
import pickle

import pytest
import torch
from PIL import Image

from frx_insightface.readers import (
    CelebAProbeSet,
    DataFormatError,
    ImageFolderProbeSet,
    VerificationProbeSet,
    read_celeba_labels,
    read_verification_bin,
)
from frx_plugin.attributes import Attribute, AttributeSchema


def _encoded(pixels: torch.Tensor, format: str = "PNG") -> bytes:
    """(3, H, W) uint8 → encoded image bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format=format)
    return buffer.getvalue()


def _faces(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("protocol", [2, 4])  # protocol 2 is what Python 2-era InsightFace files use for bytes
def test_verification_bin_round_trip(tmp_path, protocol):
    faces = _faces(6)
    issame = [True, False, True]
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([_encoded(f) for f in faces], issame), protocol=protocol))
    pairs = read_verification_bin(path)
    assert torch.equal(pairs.images, faces)  # PNG is lossless: the exact pixels
    assert pairs.issame.tolist() == issame
    assert pairs.pairs.tolist() == [[0, 1], [2, 3], [4, 5]]
    probe = VerificationProbeSet(path)
    assert len(probe) == 6 and len(probe.schema) == 0
    identity = probe.identity.view(-1, 2)
    assert ((identity[:, 0] == identity[:, 1]) == torch.tensor(issame)).all()  # same-person pairs share an identity
    assert probe.identity.unique().numel() == 4  # and no two pairs share one
    assert torch.allclose(probe.images(torch.tensor([3])), faces[3:4].float() / 255)


class _Payload:
    """What an attacker pickles: unpickling it would call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_bin_is_refused_without_running_its_payload(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_encoded(_faces(1)[0]), _Payload(marker)], [True])))
    # the same bytes through the ordinary unpickler would run it (shown on a copy, so the check is real)
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataFormatError, match=r"evil\.bin: refused to load: the pickle names the Python object (posix|nt|os)\.system"):
        read_verification_bin(path)
    assert not marker.exists()


def test_verification_bin_errors_name_the_file_and_entry(tmp_path):
    faces = [_encoded(f) for f in _faces(4)]
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps((faces[:3], [True, False])))
    with pytest.raises(DataFormatError, match=r"odd\.bin: 3 images for 2 same-person flags"):
        read_verification_bin(path)
    path = tmp_path / "broken.bin"
    path.write_bytes(pickle.dumps((faces[:3] + [b"not an image"], [True, False])))
    with pytest.raises(DataFormatError, match=r"broken\.bin: image entry 3: the image cannot be decoded"):
        read_verification_bin(path)
    path = tmp_path / "sizes.bin"
    path.write_bytes(pickle.dumps((faces[:3] + [_encoded(_faces(1, size=8)[0])], [True, False])))
    with pytest.raises(DataFormatError, match=r"sizes\.bin: image entry 3 is \(8, 8\) pixels, entry 0 is \(16, 16\)"):
        read_verification_bin(path)
    path = tmp_path / "flags.bin"
    path.write_bytes(pickle.dumps((faces[:2], ["yes"])))
    with pytest.raises(DataFormatError, match=r"flags\.bin: flag 0 is 'yes'"):
        read_verification_bin(path)
    path = tmp_path / "cut.bin"
    path.write_bytes(pickle.dumps((faces[:2], [True]))[:50])
    with pytest.raises(DataFormatError, match=r"cut\.bin: not a readable pickle"):
        read_verification_bin(path)


# --------------------------------------------------------------------------- CelebA


NAMES = ["5_o_Clock_Shadow", "Eyeglasses", "Male"]


def _celeba(root, rows, identities, partitions=None, count=None, names=NAMES):
    """Write CelebA's files as the dataset ships them (count line, names line, space-padded rows)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows) if count is None else count), " ".join(names)]
    lines += [f"{name} " + " ".join(f"{v:>2}" for v in values) for name, values in rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, i in identities))
    if partitions is not None:
        (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in partitions))


def test_celeba_labels_identities_partition_and_images(tmp_path):
    root = tmp_path / "celeba"
    rows = [("000001.jpg", [-1, 1, 1]), ("000002.jpg", [1, -1, 1]), ("000003.jpg", [-1, -1, -1])]
    _celeba(root, rows, [("000001.jpg", 7), ("000002.jpg", 7), ("000003.jpg", 9)], [("000001.jpg", 0), ("000002.jpg", 2), ("000003.jpg", 0)])
    (root / "img_align_celeba").mkdir()
    colours = {"000001.jpg": (200, 30, 30), "000002.jpg": (30, 200, 30), "000003.jpg": (30, 30, 200)}
    for name, colour in colours.items():
        Image.new("RGB", (178, 218), colour).save(root / "img_align_celeba" / name, quality=95)
    files, identity, schema, labels = read_celeba_labels(root)
    assert files == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert identity.tolist() == [7, 7, 9]
    assert schema.names == ("5_o_clock_shadow", "eyeglasses", "male") and all(a.kind == "binary" for a in schema)
    assert labels["eyeglasses"].tolist() == [1, 0, 0] and labels["male"].tolist() == [1, 1, 0]
    train = CelebAProbeSet(root, partition="train", size=32)
    assert train.files == ["000001.jpg", "000003.jpg"] and train.identity.tolist() == [7, 9]
    images = train.images(torch.tensor([1, 0]))
    assert images.shape == (2, 3, 32, 32)
    for image, name in zip(images, ["000003.jpg", "000001.jpg"]):  # a flat colour survives crop, resize and JPEG
        assert (image * 255 - torch.tensor(colours[name], dtype=torch.float32)[:, None, None]).abs().max() <= 4


def test_celeba_errors_name_the_file_and_line(tmp_path):
    identities = [("000001.jpg", 1), ("000002.jpg", 2)]
    _celeba(tmp_path / "a", [("000001.jpg", [1, 1, 1]), ("000002.jpg", [1, 1])], identities)
    with pytest.raises(DataFormatError, match=r"list_attr_celeba\.txt: line 4 has 3 fields, expected 4"):
        read_celeba_labels(tmp_path / "a")
    _celeba(tmp_path / "b", [("000001.jpg", [1, 0, 1])], identities[:1])
    with pytest.raises(DataFormatError, match=r"line 3, attribute 'Eyeglasses': '0' is not -1 or 1"):
        read_celeba_labels(tmp_path / "b")
    _celeba(tmp_path / "c", [("000001.jpg", [1, 1, 1])], identities[:1], count=5)
    with pytest.raises(DataFormatError, match=r"line 1 declares 5 images, the file lists 1"):
        read_celeba_labels(tmp_path / "c")
    _celeba(tmp_path / "d", [("000001.jpg", [1, 1, 1]), ("000003.jpg", [1, 1, 1])], identities)
    with pytest.raises(DataFormatError, match=r"identity_CelebA\.txt: no identity for 1 image\(s\), first '000003\.jpg'"):
        read_celeba_labels(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no list_attr_celeba.txt in"):
        read_celeba_labels(tmp_path / "nowhere")


# --------------------------------------------------------------------------- image folder + CSV


def _folder(tmp_path, lines, images=("a.png", "b.png", "c.png", "d.png")):
    folder = tmp_path / "faces"
    folder.mkdir()
    for k, name in enumerate(images):
        Image.fromarray(_faces(1, size=20, seed=k)[0].permute(1, 2, 0).numpy()).save(folder / name)
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_image_folder_with_a_csv(tmp_path):
    folder = _folder(tmp_path, [
        "path,identity,glasses,hair,age",
        "a.png,alice,1,brown,31.5",
        "b.png,alice,0,black,",
        "c.png,bob,,brown,40",
        "d.png,carol,1,red,22",
    ])
    probe = ImageFolderProbeSet(folder, size=16)
    assert [(a.name, a.kind) for a in probe.schema] == [("glasses", "binary"), ("hair", "categorical"), ("age", "continuous")]
    assert probe.schema["hair"].classes == ("black", "brown", "red")
    # each identity keyed by its name (a 63-bit BLAKE2b hash of a name that is no integer), not by its position
    key = {name: int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1 for name in ("alice", "bob", "carol")}
    assert probe.identity.tolist() == [key["alice"], key["alice"], key["bob"], key["carol"]]
    assert probe.identity_names == ["alice", "bob", "carol"]
    assert probe.labels["glasses"].tolist() == [1, 0, -1, 1]
    assert probe.labels["hair"].tolist() == [1, 0, 1, 2]
    age = probe.labels["age"]
    assert age[0] == 31.5 and torch.isnan(age[1]) and age[3] == 22
    images = probe.images(torch.tensor([2]))
    want = torch.nn.functional.interpolate(_faces(1, size=20, seed=2).float(), size=(16, 16), mode="bilinear", antialias=True)
    assert images.shape == (1, 3, 16, 16) and float((images * 255 - want).abs().mean()) < 3  # Pillow's resize, not torch's


@pytest.mark.parametrize("width, height", [(60, 40), (31, 48)])
def test_image_folder_crops_a_non_square_image_to_its_centre(tmp_path, width, height):
    """A non-square image keeps its aspect: its central square, then the resize (never squashed)."""
    import numpy as np

    folder = tmp_path / "faces"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "wide.png")
    (folder / "labels.csv").write_text("path,identity,glasses\nwide.png,alice,1\n")
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    crop = pixels[top:top + side, left:left + side]  # computed here, from the array written
    # at the short side's size the image is exactly its central square
    exact = ImageFolderProbeSet(folder, size=side).images(torch.tensor([0]))[0]
    assert exact.shape == (3, side, side)
    assert torch.equal((exact * 255).round().to(torch.uint8), torch.from_numpy(crop).permute(2, 0, 1))
    # smaller: the central square resized (Pillow's bilinear, as square images are)
    small = ImageFolderProbeSet(folder, size=16).images(torch.tensor([0]))[0]
    want = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((16, 16), Image.BILINEAR))
    assert torch.equal((small * 255).round().to(torch.uint8), torch.from_numpy(want.copy()).permute(2, 0, 1))
    squashed = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.BILINEAR))
    assert not np.array_equal(want, squashed)


def test_image_folder_errors_name_file_line_and_column(tmp_path):
    folder = _folder(tmp_path, ["path,identity,glasses", "a.png,1,1", "b.png,2,maybe"], images=("a.png", "b.png"))
    schema = AttributeSchema([Attribute("glasses", "binary")])
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 3, column 'glasses': 'maybe' is not 0/1"):
        ImageFolderProbeSet(folder, schema=schema)
    (folder / "labels.csv").write_text("path,identity,glasses\na.png,1,1\nb.png,2\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 3 has 2 fields, the header has 3"):
        ImageFolderProbeSet(folder)
    (folder / "labels.csv").write_text("file,identity\na.png,1\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: no 'path' column"):
        ImageFolderProbeSet(folder)
    (folder / "labels.csv").write_text("path,identity\na.png,1\nmissing.png,2\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 3: no image .*missing\.png"):
        ImageFolderProbeSet(folder)
