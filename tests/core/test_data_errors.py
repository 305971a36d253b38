"""Data a run cannot use as given, named where it is: a label out of range by its row, all-zero embeddings by their
count, probe images of a size the model cannot take by their shape. Real safetensors files and real torch modules."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.commands.analyze import analyze
from frx_plugin.commands.cli import main
from frx_plugin.embedding_set import (
    EmbeddingSet,
    EmbeddingSetError,
    write_embedding_set,
)
from frx_plugin.errors import ModelInputError, SchemaError
from frx_plugin.model import embed_probe_set
from frx_plugin.passes import AnalysisConfig
from frx_plugin.probe import TensorProbeSet

SCHEMA = AttributeSchema([Attribute("glasses", "binary"), Attribute("yaw", "continuous")])


def _labelled(n_identities=20, per_identity=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_identities * per_identity
    identity = torch.arange(n) // per_identity
    labels = {"glasses": torch.randint(0, 2, (n,), generator=g), "yaw": torch.randn(n, generator=g)}
    z = torch.randn(n_identities, dim, generator=g)[identity] + 0.3 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(z, dim=1), identity, labels


def test_a_label_out_of_range_names_its_attribute_row_value_and_range(tmp_path, capsys):
    """Today's message named only the chunk: "rows 0..399"."""
    z, identity, labels = _labelled()
    labels["glasses"][37] = 2
    labels["glasses"][50] = 5
    path = tmp_path / "set.safetensors"
    tensors = {"embeddings": z, "identity": identity, "attr.glasses": labels["glasses"], "attr.yaw": labels["yaw"]}
    save_file(tensors, str(path), metadata={"frx.attributes": '[{"name": "glasses", "kind": "binary"}, {"name": "yaw", "kind": "continuous"}]'})
    with pytest.raises(EmbeddingSetError) as caught:
        list(EmbeddingSet(path).chunks(32))
    assert str(caught.value) == (f"{path}: attribute 'glasses': label 2 out of range at row 37 (and 1 more row); "
                                 "binary labels are 0..1 or -1 for missing")
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "out"), "--bootstrap", "0"]) == 2
    assert "attribute 'glasses': label 2 out of range at row 37" in capsys.readouterr().err
    # labels in memory name their row too
    with pytest.raises(SchemaError, match=r"probe: attribute 'yaw': continuous labels contain infinity at row 3;"):
        SCHEMA.validate({"glasses": labels["glasses"].clamp(0, 1), "yaw": torch.zeros(80).index_fill(0, torch.tensor([3]), float("inf"))},
                        80, "probe")


def test_all_zero_embeddings_in_a_file_are_a_warning_that_counts_them(tmp_path):
    z, identity, labels = _labelled()
    z[[4, 9, 33]] = 0.0
    path = write_embedding_set(tmp_path / "zeros.safetensors", z, identity, labels, SCHEMA)
    notice = (f"{path}: 3 of 80 embeddings are all zero (first: row 4); a zero vector has no direction, so its cosine "
              "scores are undefined. frx keeps these rows as they are: verification scores each of their pairs 0 and the "
              "leakage heads see the zero vector (a broken export, or a model that outputs nothing for these faces?)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = analyze(path, config=AnalysisConfig(n_bootstrap=0, n_folds=2), chunk_size=16, out_dir=tmp_path / "out")
    # frx analyze records it where its warnings go (the report, analysis.json, the terminal), not as a Python warning too
    assert [w for w in report.warnings if "all zero" in w] == [notice]
    assert notice in json.loads((tmp_path / "out" / "analysis.json").read_text())["warnings"]
    assert not [w for w in caught if "all zero" in str(w.message)]
    assert report.n_samples == 80 and report.verification is not None  # kept, as the warning says
    with warnings.catch_warnings(record=True) as caught:  # read from Python, the file itself warns, once
        warnings.simplefilter("always")
        dataset = EmbeddingSet(path)
        for _ in range(2):
            list(dataset.chunks(16))
    assert [str(w.message) for w in caught if "all zero" in str(w.message)] == [notice] and dataset.zero_rows == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file without zero rows: no warning
        analyze(write_embedding_set(tmp_path / "fine.safetensors", *_labelled(), SCHEMA),
                config=AnalysisConfig(n_bootstrap=0, n_folds=2), with_verification=False)


class DeadOnDark(torch.nn.Module):
    """Embeds an 8×8 image linearly, and outputs zero for an image whose first pixel is black."""

    frx_transform = "unit"

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 16)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1)) * (images[:, 0, 0, 0] > 0).float()[:, None]


def _probe(size=8, n_identities=20, per_identity=4, dark=()):
    """Faces of ``size``², the ones in ``dark`` with a black first pixel."""
    g = torch.Generator().manual_seed(1)
    n = n_identities * per_identity
    identity = torch.arange(n) // per_identity
    faces = torch.rand(n_identities, 3, size, size, generator=g)[identity] + 0.05 * torch.rand(n, 3, size, size, generator=g)
    faces = faces.clamp(0.01, 1)
    faces[list(dark), 0, 0, 0] = 0.0
    labels = {"glasses": torch.randint(0, 2, (n,), generator=g), "yaw": torch.randn(n, generator=g)}
    return TensorProbeSet(faces, SCHEMA, identity, labels, source="the test faces")


def test_all_zero_embeddings_of_a_model_are_a_warning_of_the_pass():
    torch.manual_seed(0)
    report = analyze(DeadOnDark(), _probe(dark=(2, 11)), config=AnalysisConfig(n_bootstrap=0, n_folds=2))
    notices = [w for w in report.warnings if "all zero" in w]
    assert len(notices) == 1 and notices[0].startswith("the model's embeddings of the test faces: 2 of 80 embeddings are all zero "
                                                       "(first: row 2)")
    assert not [w for w in analyze(DeadOnDark(), _probe(), config=AnalysisConfig(n_bootstrap=0, n_folds=2)).warnings if "all zero" in w]


class FixedSize(torch.nn.Module):
    """A head built for 32×32 images: any other size fails in its Linear."""

    frx_transform = "unit"

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 32 * 32, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))


def test_probe_images_of_a_size_the_model_cannot_take_are_named_by_their_shape():
    """Today: "mat1 and mat2 shapes cannot be multiplied (80x6912 and 3072x8)" and nothing about the probe set."""
    with pytest.raises(ModelInputError) as caught:
        embed_probe_set(FixedSize(), _probe(size=48))
    message = str(caught.value)
    assert message.startswith("the test faces: the model (FixedSize) cannot take images of 3×48×48 (its forward fails: mat1 and mat2")
    assert "size=" in message and "\n" not in message
    with pytest.raises(ModelInputError, match=r"cannot take images of 3×48×48"):  # the pass of frx analyze says the same
        analyze(FixedSize(), _probe(size=48), config=AnalysisConfig(n_bootstrap=0, n_folds=2))
    assert embed_probe_set(FixedSize(), _probe(size=32)).shape == (80, 8)


class Broken(torch.nn.Module):
    frx_transform = "unit"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_another_runtime_error_of_the_model_is_raised_as_it_is():
    with pytest.raises(RuntimeError, match="^CUDA error: an illegal memory access was encountered$") as caught:
        embed_probe_set(Broken(), _probe())
    assert not isinstance(caught.value, ModelInputError)


def test_the_command_line_names_the_image_size(tmp_path, monkeypatch, capsys):
    """``frx analyze --backbone torch:...`` on a probe set of another size: one line naming the shape and the size option."""
    (tmp_path / "fixednet.py").write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n    frx_transform = 'unit'\n\n    def __init__(self):\n"
        "        super().__init__()\n        self.linear = torch.nn.Linear(3 * 32 * 32, 8)\n\n"
        "    def forward(self, x):\n        return self.linear(x.flatten(1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fixednet

    weights = tmp_path / "net.safetensors"
    save_file(fixednet.Net().state_dict(), str(weights))
    code = main(["analyze", "--backbone", f"torch:fixednet:Net@{weights}", "--probe", "synthetic,n_identities=4,images_per_identity=2,size=48",
                 "--out", str(tmp_path / "out"), "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the model (Net) cannot take images of 3×48×48" in err and "size=" in err and err.count("\n") == 1, err


def test_an_embedding_file_of_rows_without_columns_is_one_line_naming_file_and_tensor(tmp_path, capsys):
    from frx_plugin.commands.cli import main

    path = write_embedding_set(tmp_path / "n0.safetensors", torch.zeros(20, 0), torch.arange(20) // 2,
                               {"glasses": torch.zeros(20, dtype=torch.long), "yaw": torch.rand(20)}, SCHEMA)
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"frx analyze: error: {path}: tensor 'embeddings' has shape [20, 0]: its 20 rows have no columns "
                   "(an embedding needs at least one dimension)\n")
