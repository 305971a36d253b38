"""Faces aligned by five landmarks to the ArcFace template, checked against insightface's own norm_crop.

The files are written here in the real formats: CelebA's text files and landmark files, JPEG and
PNG images written with Pillow (the readers' image library), an image folder's CSV.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("insightface")
from insightface.utils.face_align import arcface_dst, norm_crop  # noqa: E402  (the independent reference)

from frx_insightface.alignment import LANDMARK_COLUMNS  # noqa: E402
from frx_insightface.readers import CelebAProbeSet, DataFormatError, ImageFolderProbeSet, decode_image  # noqa: E402
from tests.adapters.test_insightface_readers import NAMES, _celeba  # noqa: E402  (CelebA's files as the reader tests write them)

FILES = ["000001.jpg", "000002.jpg", "000003.jpg"]
#: CelebA's own landmarks of its first two aligned images, and a third face tilted the other way
ALIGNED_LANDMARKS = [[69, 109, 106, 113, 77, 142, 73, 152, 108, 154],
                     [69, 110, 107, 112, 81, 135, 70, 151, 108, 153],
                     [76, 112, 104, 106, 94, 134, 83, 153, 108, 146]]


def _reference(rgb: np.ndarray, landmarks, size: int = 112) -> torch.Tensor:
    """insightface's norm_crop of an H×W×3 RGB array, as frx's images are: (3, size, size) RGB floats in [0, 1]."""
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-image's notice about the call insightface makes
        warped = norm_crop(rgb, points, image_size=size)
    return torch.from_numpy(np.ascontiguousarray(warped)).permute(2, 0, 1).float() / 255.0


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth colour image (three different channels), so a swap of red and blue shows."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    channels = [127 + 120 * np.sin(x / rng.uniform(5, 15) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(5, 15)) for _ in range(3)]
    return np.stack(channels, -1).round().clip(0, 255).astype(np.uint8)


_LANDMARK_HEADER = " ".join(LANDMARK_COLUMNS)


def _landmark_file(path, names, rows, count=None, header=_LANDMARK_HEADER):
    """A CelebA landmark file as the dataset ships it: the count, the header, space-padded rows."""
    lines = [str(len(rows) if count is None else count), header]
    lines += [f"{name:<10} " + " ".join(f"{v:>5}" for v in values) for name, values in zip(names, rows)]
    path.write_text("\n".join(lines) + "\n")


def _celeba_folder(root, images="img_align_celeba", size=(178, 218), landmarks=ALIGNED_LANDMARKS, landmark_file=True):
    rows = [(name, [1, -1, 1]) for name in FILES]
    _celeba(root, rows, [(name, k) for k, name in enumerate(FILES)], [(name, 0) for name in FILES])
    (root / images).mkdir()
    for k, name in enumerate(FILES):
        Image.fromarray(_photo(*size, seed=k)).save(root / images / name, quality=90)
    if landmark_file:
        name = "list_landmarks_align_celeba.txt" if images == "img_align_celeba" else "list_landmarks_celeba.txt"
        _landmark_file(root / name, FILES, landmarks)
    return root


@pytest.mark.parametrize("images, size, shift", [("img_align_celeba", (178, 218), 0), ("img_celeba", (260, 300), 40)])
def test_celeba_faces_equal_norm_crop_on_the_same_pixels(tmp_path, images, size, shift):
    landmarks = [[v + shift for v in row] for row in ALIGNED_LANDMARKS]  # the wild images: the faces elsewhere
    root = _celeba_folder(tmp_path / "celeba", images, size, landmarks)
    probe = CelebAProbeSet(root, images=images)
    assert probe.alignment == "landmarks"
    assert probe.source.endswith(f"aligned to the ArcFace template by list_landmarks{'_align' if shift == 0 else ''}_celeba.txt")
    got = probe.images(torch.tensor([2, 0, 1]))
    assert got.shape == (3, 3, 112, 112) and got.dtype == torch.float32
    for image, k in zip(got, [2, 0, 1]):
        rgb = np.asarray(Image.open(root / images / FILES[k]).convert("RGB"))  # decoded here, independently
        want = _reference(rgb, landmarks[k])
        assert torch.equal(image, want)
        # norm_crop moves every channel alike: warping OpenCV's BGR and swapping back is the same crop ...
        assert torch.equal(_reference(np.ascontiguousarray(rgb[..., ::-1]), landmarks[k]).flip(0), want)
        # ... and frx hands it RGB: a BGR crop would differ from what the probe set gives
        assert not torch.equal(image, want.flip(0))
    # a multiple of 112 is norm_crop's own larger crop; another size is the 112 crop resized
    large = CelebAProbeSet(root, images=images, size=224).images(torch.tensor([0]))[0]
    rgb = np.asarray(Image.open(root / images / FILES[0]).convert("RGB"))
    assert torch.equal(large, _reference(rgb, landmarks[0], size=224))
    small = CelebAProbeSet(root, images=images, size=56).images(torch.tensor([0]))[0]
    want = torch.nn.functional.interpolate(_reference(rgb, landmarks[0])[None] * 255, size=(56, 56), mode="bilinear", antialias=True)[0]
    assert small.shape == (3, 56, 56) and float((small * 255 - want).abs().max()) <= 1


def _planted_face(width, height, scale, degrees, shift):
    """An image with five coloured blobs where a similarity transform puts the ArcFace template points, and those points."""
    theta = math.radians(degrees)
    rotation = scale * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    points = arcface_dst.astype(np.float64) @ rotation.T + np.asarray(shift)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [255, 0, 255]], dtype=np.float64)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.zeros((height, width, 3))
    for (px, py), colour in zip(points, colours):
        blob = np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * (1.2 * scale) ** 2))
        pixels += blob[..., None] * colour
    return pixels.round().clip(0, 255).astype(np.uint8), points, colours


def _marks(image: torch.Tensor, colours: np.ndarray) -> np.ndarray:
    """The intensity-weighted centre (x, y) of each blob in a (3, H, W) image, the blobs told apart by their colour."""
    from scipy import ndimage

    pixels = (image * 255).permute(1, 2, 0).numpy().astype(np.float64)
    weight = pixels.sum(-1)
    regions, count = ndimage.label(weight > 20)
    assert count == 5, f"expected five marks, found {count}"
    found = {}
    for region in range(1, count + 1):
        inside = regions == region
        mean = pixels[inside].sum(0) / weight[inside].sum()
        k = int(np.argmin([np.abs(mean - c / c.sum()).sum() for c in colours]))  # the mark of the nearest colour
        centre_y, centre_x = ndimage.center_of_mass(weight * inside)
        found[k] = (centre_x, centre_y)
    assert sorted(found) == [0, 1, 2, 3, 4], "two marks have the same colour"
    return np.array([found[k] for k in range(5)])


@pytest.mark.parametrize("scale, degrees, shift", [(1.7, 20.0, (95.5, 30.25)), (2.3, -35.0, (40.0, 150.0)), (1.0, 0.0, (3.0, 7.0))])
def test_a_planted_face_lands_on_the_arcface_template(tmp_path, scale, degrees, shift):
    pixels, points, colours = _planted_face(320, 360, scale, degrees, shift)
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "planted.png")
    cells = ",".join(f"{v:.4f}" for v in points.reshape(-1))
    (folder / "labels.csv").write_text(f"path,identity,glasses,{','.join(LANDMARK_COLUMNS)}\nplanted.png,alice,1,{cells}\n")
    probe = ImageFolderProbeSet(folder, kinds="glasses:binary")
    assert probe.alignment == "landmarks" and probe.schema.names == ("glasses",)  # landmark columns are no attributes
    marks = _marks(probe.images(torch.tensor([0]))[0], colours)
    assert np.abs(marks - arcface_dst).max() <= 1.5, (marks, arcface_dst)
    # resized instead of aligned, the marks are elsewhere (the check above has teeth)
    resized = ImageFolderProbeSet(folder, kinds="glasses:binary", align="none").images(torch.tensor([0]))[0]
    assert resized.shape == (3, 112, 112)
    assert not torch.allclose(resized, probe.images(torch.tensor([0]))[0], atol=0.1)


def _csv_folder(tmp_path, header, rows, size=(90, 100)):
    folder = tmp_path / "faces"
    folder.mkdir(exist_ok=True)
    for k in range(len(rows)):
        Image.fromarray(_photo(*size, seed=10 + k)).save(folder / f"{k}.png")
    (folder / "labels.csv").write_text("\n".join([header] + rows) + "\n")
    return folder


def test_image_folder_landmark_columns_equal_norm_crop(tmp_path):
    header = "path,identity,glasses," + ",".join(LANDMARK_COLUMNS)
    landmarks = [[30.5, 40, 60, 41.25, 45, 58, 33, 75, 58, 76], [25, 45, 55, 38, 42, 60, 32, 78, 60, 72]]
    folder = _csv_folder(tmp_path, header, [f"{k}.png,p{k},{k}," + ",".join(map(str, row)) for k, row in enumerate(landmarks)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # aligning warns about nothing
        probe = ImageFolderProbeSet(folder, kinds="glasses:binary")
        images = probe.images(torch.tensor([1, 0]))
    assert probe.alignment == "landmarks" and probe.schema.names == ("glasses",)
    assert probe.source == f"image folder {folder}, aligned to the ArcFace template by the landmark columns of labels.csv"
    for image, k in zip(images, [1, 0]):
        rgb = np.asarray(Image.open(folder / f"{k}.png").convert("RGB"))
        assert torch.equal(image, _reference(rgb, landmarks[k]))
    # align="none": today's centre crop and resize, the landmark columns still no attributes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = ImageFolderProbeSet(folder, kinds="glasses:binary", align="none", size=64)
    assert plain.alignment == "none" and plain.source == f"image folder {folder}" and plain.schema.names == ("glasses",)
    want = decode_image((folder / "0.png").read_bytes(), "0.png", 64, centre_crop=True).float() / 255
    assert torch.equal(plain.images(torch.tensor([0]))[0], want)


def test_image_folder_landmark_errors_are_one_line_and_name_file_line_column(tmp_path):
    partial = "path,identity,lefteye_x,lefteye_y,righteye_x,righteye_y"
    folder = _csv_folder(tmp_path, partial, ["0.png,a,30,40,60,40"])
    pattern = r"labels\.csv: line 1, column\(s\) \['nose_x', .*'rightmouth_y'\]: .*all ten columns or none"
    with pytest.raises(DataFormatError, match=pattern) as caught:
        ImageFolderProbeSet(folder)
    assert "\n" not in str(caught.value)
    with pytest.raises(DataFormatError, match="all ten columns or none"):  # whatever align says
        ImageFolderProbeSet(folder, align="none")
    header = "path,identity," + ",".join(LANDMARK_COLUMNS)
    (folder / "labels.csv").write_text(f"{header}\n0.png,a,30,40,60,40,45,58,33,75,58,76\n0.png,b,30,40,60,forty,45,58,33,75,58,76\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 3, column 'righteye_y': 'forty' is not a number") as caught:
        ImageFolderProbeSet(folder)
    assert "\n" not in str(caught.value)
    (folder / "labels.csv").write_text(f"{header}\n0.png,a,30,40,60,40,45,,33,75,58,76\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 2, column 'nose_y': '' is not a number"):
        ImageFolderProbeSet(folder)
    (folder / "labels.csv").write_text(f"{header}\n0.png,a,30,40,60,40,45,58,33,75,58,nan\n")
    with pytest.raises(DataFormatError, match=r"line 2, column 'rightmouth_y': 'nan' is not a number"):
        ImageFolderProbeSet(folder)
    # a landmark outside the image: named when the image is read (its size is known then)
    (folder / "labels.csv").write_text(f"{header}\n0.png,a,30,40,60,40,45,58,33,75,95,76\n")
    probe = ImageFolderProbeSet(folder)
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 2 \(0\.png\): landmark rightmouth \(rightmouth_x, rightmouth_y\) = \(95, 76\) "
                                              r"lies outside the 90×100 image"):
        probe.images(torch.tensor([0]))
    (folder / "labels.csv").write_text("path,identity\n0.png,a\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: no landmark columns \(lefteye_x, "):
        ImageFolderProbeSet(folder, align="landmarks")
    with pytest.raises(ValueError, match=r"align must be one of \['landmarks', 'none', 'auto'\], got 'yes'"):
        ImageFolderProbeSet(folder, align="yes")


def test_auto_without_landmarks_resizes_with_one_warning(tmp_path):
    root = _celeba_folder(tmp_path / "celeba", landmark_file=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning counted, not only the first from a place
        probe = CelebAProbeSet(root, size=32)
        images = probe.images(torch.tensor([0, 1]))
        probe.images(torch.tensor([2]))
    ours = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "no list_landmarks_align_celeba.txt in" in str(ours[0].message)
    assert "centre-cropped and resized, not aligned to the ArcFace template" in str(ours[0].message)
    assert probe.alignment == "none" and probe.source == f"CelebA at {root}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # align="none" says so, without a warning
        plain = CelebAProbeSet(root, size=32, align="none")
        assert torch.equal(images, plain.images(torch.tensor([0, 1])))
    with pytest.raises(FileNotFoundError, match=r"no list_landmarks_align_celeba\.txt in .*celeba"):
        CelebAProbeSet(root, align="landmarks")
    # an image folder without landmark columns: the same single warning
    folder = _csv_folder(tmp_path, "path,identity", ["0.png,a", "1.png,b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ImageFolderProbeSet(folder, size=16).images(torch.tensor([0, 1]))
    assert [str(w.message).split(";")[0] for w in caught] == [f"{folder / 'labels.csv'}: no landmark columns ({', '.join(LANDMARK_COLUMNS)})"]


def test_celeba_landmark_file_errors_name_file_and_line(tmp_path):
    root = _celeba_folder(tmp_path / "celeba")
    path = root / "list_landmarks_align_celeba.txt"
    assert len(NAMES) == 3  # the reader tests' attribute names: the folder is theirs
    cases = [
        (lambda: _landmark_file(path, FILES[:2], ALIGNED_LANDMARKS[:2]),
         r"list_landmarks_align_celeba\.txt: lists 2 images, list_attr_celeba\.txt 3; the two files should list the same images"),
        (lambda: _landmark_file(path, ["000001.jpg", "000002.jpg", "000009.jpg"], ALIGNED_LANDMARKS),
         r"list_landmarks_align_celeba\.txt: no landmarks for 1 image\(s\) of list_attr_celeba\.txt, first '000003\.jpg'"),
        (lambda: _landmark_file(path, FILES, [ALIGNED_LANDMARKS[0], ALIGNED_LANDMARKS[1][:9], ALIGNED_LANDMARKS[2]]),
         r"list_landmarks_align_celeba\.txt: line 4 has 10 fields, expected 11 \(an image name and ten coordinates\)"),
        (lambda: _landmark_file(path, FILES,
                                [ALIGNED_LANDMARKS[0], ALIGNED_LANDMARKS[1], ALIGNED_LANDMARKS[2][:4] + ["x"] + ALIGNED_LANDMARKS[2][5:]]),
         r"list_landmarks_align_celeba\.txt: line 5, field 'nose_x': 'x' is not a number"),
        (lambda: _landmark_file(path, FILES, ALIGNED_LANDMARKS, count=4),
         r"list_landmarks_align_celeba\.txt: line 1 declares 4 images, the file lists 3"),
        (lambda: _landmark_file(path, FILES, ALIGNED_LANDMARKS, header="lefteye_x lefteye_y righteye_x righteye_y"),
         r"list_landmarks_align_celeba\.txt: line 2 should name the columns lefteye_x lefteye_y .* rightmouth_y"),
        (lambda: _landmark_file(path, ["000001.jpg", "000002.jpg", "000001.jpg"], ALIGNED_LANDMARKS),
         r"list_landmarks_align_celeba\.txt: line 5: '000001\.jpg' is listed again \(first on line 3\)"),
    ]
    for write, message in cases:
        write()
        for align in ("auto", "landmarks"):  # a landmark file that is there but wrong is never passed over
            with pytest.raises(DataFormatError, match=message) as caught:
                CelebAProbeSet(root, align=align)
            assert "\n" not in str(caught.value)
    # outside the 178×218 image: named when the image is read
    _landmark_file(path, FILES, [ALIGNED_LANDMARKS[0], ALIGNED_LANDMARKS[1][:7] + [230] + ALIGNED_LANDMARKS[1][8:], ALIGNED_LANDMARKS[2]])
    probe = CelebAProbeSet(root)
    probe.images(torch.tensor([0, 2]))
    with pytest.raises(DataFormatError, match=r"list_landmarks_align_celeba\.txt: line 4 \(000002\.jpg\): landmark leftmouth "
                                              r"\(leftmouth_x, leftmouth_y\) = \(70, 230\) lies outside the 178×218 image"):
        probe.images(torch.tensor([1]))
    with pytest.raises(ValueError, match=r"images must be one of \['img_align_celeba', 'img_celeba'\], got 'img'"):
        CelebAProbeSet(root, images="img")
