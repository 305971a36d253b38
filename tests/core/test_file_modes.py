"""Every file frx writes gets the mode of an ordinary new file (0666 less the umask): safetensors files too.

safetensors' ``save_file`` writes a private temporary file of its own and renames it over the path it
is given, so a file made 0644 before it ran came back 0600; :func:`frx_plugin.history.atomic_write`
now sets the mode after the writer ran.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.embedding_set import write_embedding_set
from frx_plugin.history import HistoryRecorder, atomic_write_text
from frx_plugin.models import ResidualFaceNet, save_backbone
from frx_plugin.synthetic import SYNTHETIC_SCHEMA
from frx_plugin.synthetic.estimator import AttributeCNN, SyntheticEstimator, save_synthetic_estimator

SCHEMA = AttributeSchema([Attribute("glasses", "binary"), Attribute("age", "continuous")])


def _history(folder: Path) -> list[Path]:
    recorder = HistoryRecorder(folder, SCHEMA)
    recorder.add({"epoch": 0, "global_step": 0, "attributes": []}, {"probe_directions": torch.zeros(2, 4)})
    recorder.write()
    return [folder / "history.safetensors", folder / "history.json"]


def _backbone(folder: Path) -> list[Path]:
    path = folder / "backbone.safetensors"
    save_backbone(ResidualFaceNet(embedding_dim=8, widths=(4, 4, 8, 8), input_size=32), path)
    return [path]


def _embedding_set(folder: Path) -> list[Path]:
    path = folder / "embeddings.safetensors"
    labels = {"glasses": torch.tensor([0, 1, 0, 1]), "age": torch.tensor([20.0, 30.0, 40.0, 50.0])}
    write_embedding_set(path, torch.randn(4, 8), torch.tensor([0, 0, 1, 1]), labels, SCHEMA)
    return [path]


def _estimator(folder: Path) -> list[Path]:
    path = folder / "estimator.safetensors"
    config = dict(size=16, n_identities=10, images_per_identity=2, epochs=1, batch_size=8)
    save_synthetic_estimator(SyntheticEstimator(AttributeCNN(SYNTHETIC_SCHEMA, 16), config, accuracy={}), path)
    return [path]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)], ids=["umask-022", "umask-077"])
@pytest.mark.parametrize("writer", [_history, _backbone, _embedding_set, _estimator])
def test_a_safetensors_file_gets_the_mode_of_any_new_file_as_the_json_files_do(tmp_path, writer, umask, mode):
    old = os.umask(umask)
    try:
        written = writer(tmp_path / "out")
        atomic_write_text(tmp_path / "out" / "analysis.json", "{}")  # a json file frx writes
        plain = tmp_path / "plain.txt"
        plain.write_text("an ordinary new file")
    finally:
        os.umask(old)
    assert any(p.suffix == ".safetensors" for p in written)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*written, tmp_path / "out" / "analysis.json", plain]}
    assert set(modes.values()) == {mode}, {k: oct(v) for k, v in modes.items()}
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]  # no temporary file left
