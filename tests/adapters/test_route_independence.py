"""One record whatever the route: the same faces, labels and options give the same record, intervals
included, through an image folder, CelebA's files, an embedding-set file, ``frx analyze --backbone`` and
both training callbacks.

The faces are written once as CelebA's layout (``img_align_celeba/*.jpg``, ``list_attr_celeba.txt``,
``identity_CelebA.txt``); the image folder's CSV lists the same JPEG files with CelebA's identity
numbers as its identity column, so every route decodes the same bytes. The bootstrap draws and the
folds follow each identity's key (its number), never the position at which a reader met it.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from safetensors.torch import save_file

from frx_insightface.arcface_torch import ArcFaceTorchCallback
from frx_insightface.readers import CelebAProbeSet, DataFormatError, ImageFolderProbeSet
from frx_lightning import AttributeRecoveryCallback
from frx_plugin.commands.cli import main
from frx_plugin.config import AnalysisConfig
from frx_plugin.embedding_set import write_embedding_set
from frx_plugin.model import embed_probe_set
from tests.lightning_helpers import TinyFaceModule, make_faces, make_train_loader
from tests.records import assert_same_measures

N_IDENTITIES, PER_IDENTITY, SIZE, BOOTSTRAP = 24, 5, 16, 20
#: CelebA-style identity numbers: neither 0..K-1 nor in the order the files list them
NUMBERS = [10_177 - 97 * k for k in range(N_IDENTITIES)]
ATTRIBUTES = ("Bright", "Left_Pattern", "Dark_Tone")


def _write_celeba(root, images, numbers, labels):
    """CelebA's layout: JPEG files in img_align_celeba/, the attribute file (-1/1), the identity file."""
    (root / "img_align_celeba").mkdir(parents=True)
    files = [f"{i + 1:06d}.jpg" for i in range(len(numbers))]
    for name, image in zip(files, images):
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(root / "img_align_celeba" / name, quality=95)
    rows = [f"{name} " + " ".join(f"{2 * int(v) - 1:>2}" for v in values) for name, values in zip(files, labels)]
    (root / "list_attr_celeba.txt").write_text("\n".join([str(len(files)), " ".join(ATTRIBUTES), *rows]) + "\n")
    (root / "identity_CelebA.txt").write_text("".join(f"{name} {number}\n" for name, number in zip(files, numbers)))
    return files


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    root = tmp_path_factory.mktemp("routes")
    images, identity, raw = make_faces(N_IDENTITIES, PER_IDENTITY, seed=5, size=SIZE)
    labels = torch.stack([raw["bright"], (raw["pattern"] == 1).long(), (raw["tone"] < 0).long()], 1)
    numbers = [NUMBERS[int(k)] for k in identity]
    celeba = root / "celeba"
    files = _write_celeba(celeba, images, numbers, labels.tolist())
    lines = ["path,identity," + ",".join(a.lower() for a in ATTRIBUTES)]
    lines += [f"img_align_celeba/{name},{number}," + ",".join(str(int(v)) for v in values)
              for name, number, values in zip(files, numbers, labels.tolist())]
    (celeba / "labels.csv").write_text("\n".join(lines) + "\n")
    kinds = ";".join(f"{a.lower()}:binary" for a in ATTRIBUTES)
    model = TinyFaceModule().eval()  # seeded in its constructor: the untrained weights are the same every time
    weights = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {"root": root, "celeba": celeba, "kinds": kinds, "weights": weights, "numbers": numbers}


def _analyze(args, out, capsys):
    code = main(["analyze", *args, "--bootstrap", str(BOOTSTRAP), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "analysis.json").read_text())


def _backbone(routes):
    return f"torch:tests.lightning_helpers:TinyFaceModule@{routes['weights']}"


def _folder_spec(routes):
    return f"image-folder:{routes['celeba']},csv_path={routes['celeba'] / 'labels.csv'},size={SIZE},kinds={routes['kinds']}"


def test_the_readers_key_identities_by_their_numbers_and_decode_the_same_pixels(routes):
    celeba = CelebAProbeSet(routes["celeba"], size=SIZE)
    folder = ImageFolderProbeSet(routes["celeba"], routes["celeba"] / "labels.csv", size=SIZE, kinds=routes["kinds"])
    assert celeba.identity.tolist() == routes["numbers"] == folder.identity.tolist()
    assert folder.schema.names == celeba.schema.names
    for name in celeba.schema.names:
        assert torch.equal(folder.labels[name], celeba.labels[name]), name
    every = torch.arange(len(celeba))
    assert torch.equal(folder.images(every), celeba.images(every))


def test_every_route_gives_the_same_record(routes, tmp_path, capsys):
    celeba_record = _analyze(["--backbone", _backbone(routes), "--probe", f"celeba:{routes['celeba']},size={SIZE}",
                              "--counterfactuals", "auto"], tmp_path / "celeba", capsys)
    folder_record = _analyze(["--backbone", _backbone(routes), "--probe", _folder_spec(routes), "--counterfactuals", "auto"],
                             tmp_path / "folder", capsys)
    assert celeba_record["attributes"] and celeba_record["differentials"] and celeba_record["significance"]
    compared = [k for k in celeba_record if k not in ("format", "source", "options", "epoch", "global_step", "versions", "command")]
    assert_same_measures({k: celeba_record[k] for k in compared}, {k: folder_record[k] for k in compared})

    # the two callbacks, on the image folder and on CelebA, with the same untrained weights
    folder = ImageFolderProbeSet(routes["celeba"], routes["celeba"] / "labels.csv", size=SIZE, kinds=routes["kinds"])
    callback = AttributeRecoveryCallback(folder, out_dir=tmp_path / "lightning", n_bootstrap=BOOTSTRAP)
    trainer = Trainer(max_epochs=1, limit_train_batches=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(TinyFaceModule(), make_train_loader())
    lightning_record = json.loads((tmp_path / "lightning" / "history.json").read_text())["records"][0]  # before training
    arcface = ArcFaceTorchCallback(CelebAProbeSet(routes["celeba"], size=SIZE), out_dir=tmp_path / "arcface",
                                   config=AnalysisConfig(n_bootstrap=BOOTSTRAP), transform="unit")
    arcface.run(0, TinyFaceModule().eval(), epoch=0)
    arcface_record = json.loads((tmp_path / "arcface" / "history.json").read_text())["records"][-1]
    for record in (lightning_record, arcface_record):
        measures = {k: record[k] for k in compared if k in record}
        assert set(measures) == set(compared)
        assert_same_measures({k: celeba_record[k] for k in measures}, measures)


def test_an_embedding_file_written_from_a_probe_set_keeps_its_keys_and_its_record(routes, tmp_path, capsys):
    """The same embeddings as a file (rows in another order too) and through the backbone: the same leakage,
    intervals, verification and differentials."""
    folder = ImageFolderProbeSet(routes["celeba"], routes["celeba"] / "labels.csv", size=SIZE, kinds=routes["kinds"])
    model = TinyFaceModule().eval()
    z = embed_probe_set(model, folder, batch_size=256)
    path = tmp_path / "embeddings.safetensors"
    write_embedding_set(path, z, folder.identity, folder.labels, folder.schema)
    backbone = _analyze(["--backbone", _backbone(routes), "--probe", _folder_spec(routes)], tmp_path / "backbone", capsys)
    from_file = _analyze(["--embeddings", str(path)], tmp_path / "file", capsys)
    shuffled_path = tmp_path / "shuffled.safetensors"
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(1))
    write_embedding_set(shuffled_path, z[order], folder.identity[order], {k: v[order] for k, v in folder.labels.items()},
                        folder.schema)
    shuffled = _analyze(["--embeddings", str(shuffled_path)], tmp_path / "shuffled", capsys)
    measured = ("attributes", "verification", "differentials", "n_samples", "n_identities", "n_folds", "head")
    assert backbone["attributes"] and backbone["differentials"]
    for record in (from_file, shuffled):
        assert_same_measures({k: backbone[k] for k in measured}, {k: record[k] for k in measured})


def test_an_image_folder_named_by_text_keys_each_name_by_its_hash_whatever_the_row_order(tmp_path):
    """Names that are not numbers: a 63-bit BLAKE2b hash of the name, the same in any row order."""
    images, identity, raw = make_faces(6, 2, seed=2, size=SIZE)
    names = [f"person {chr(ord('A') + int(k))}" for k in identity]
    rows = [(f"{i:03d}.png", name, int(raw["bright"][i])) for i, name in enumerate(names)]
    for i, image in enumerate(images):
        Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(tmp_path / f"{i:03d}.png")
    expected = {name: int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1 for name in set(names)}
    keys = []
    for order in (rows, rows[::-1]):
        csv = tmp_path / f"labels{len(keys)}.csv"
        csv.write_text("path,identity,bright\n" + "".join(f"{p},{n},{b}\n" for p, n, b in order))
        probe = ImageFolderProbeSet(tmp_path, csv, size=SIZE, kinds="bright:binary")
        assert probe.identity.tolist() == [expected[n] for _, n, _ in order]
        assert probe.identity_name == {expected[n]: n for n in names}
        keys.append(dict(zip((p for p, _, _ in order), probe.identity.tolist())))
    assert keys[0] == keys[1]


def test_two_names_of_one_key_in_an_image_folder_are_refused(tmp_path):
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,identity,bright\na.png,7,1\na.png,007,0\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: column 'identity': identities '7' and '007' have the same key 7"):
        ImageFolderProbeSet(tmp_path, size=SIZE, kinds="bright:binary")


@pytest.mark.parametrize("photo, size", [("t1.jpg", 112), ("Tom_Hanks_54745.png", 64)])
def test_a_real_photograph_gives_the_same_pixels_through_celeba_and_an_image_folder(tmp_path, photo, size):
    """Photographs that insightface ships (a 1280×886 JPEG group photo, a 112×112 aligned face), cropped to their
    central square and resized: the same file, the same pixels, by either reader."""
    import shutil
    from pathlib import Path

    import insightface

    source = Path(insightface.__file__).parent / "data" / "images" / photo
    (tmp_path / "img_align_celeba").mkdir()
    name = f"000001{source.suffix}"
    shutil.copyfile(source, tmp_path / "img_align_celeba" / name)
    (tmp_path / "list_attr_celeba.txt").write_text(f"1\nSmiling\n{name}  1\n")
    (tmp_path / "identity_CelebA.txt").write_text(f"{name} 2880\n")
    (tmp_path / "labels.csv").write_text(f"path,identity,smiling\nimg_align_celeba/{name},2880,1\n")
    celeba = CelebAProbeSet(tmp_path, size=size, align="none")
    folder = ImageFolderProbeSet(tmp_path, size=size, align="none", kinds="smiling:binary")
    assert celeba.identity.tolist() == folder.identity.tolist() == [2880]
    pixels = celeba.images(torch.tensor([0]))
    assert pixels.shape == (1, 3, size, size) and float(pixels.std()) > 0.05  # a photograph, not a flat image
    assert torch.equal(pixels, folder.images(torch.tensor([0])))
