"""``frx analyze`` / ``frx explain`` on InsightFace models and files: ``--backbone insightface:…``, ``--estimator
insightface:…``, ``--pairs lfw.bin``; checked against the torch module the ONNX file was exported from."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from frx_insightface.backbone import export_onnx
from frx_insightface.packs import face_analysis, pack_folder
from frx_plugin.commands.cli import main
from frx_plugin.passes import AnalysisConfig, analyze_probe
from frx_plugin.synthetic import SyntheticProbeSet
from frx_plugin.verification import equal_error_rate
from tests.adapters.test_insightface_estimators import _ColourGenderAge

IDENTITIES = 80


class _PixelProjection(torch.nn.Module):
    """A fixed random projection of 8×8-pooled, centred pixels: embeddings that differ between faces (an
    untrained CNN maps every face to nearly the same direction)."""

    input_size = 112

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AvgPool2d(8)
        self.project = torch.nn.Linear(3 * 14 * 14, 32)

    def forward(self, x):
        return self.project(self.pool(x - 0.5).flatten(1))


def _quiet_export(module, path, shape, **names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (torch.zeros(1, *shape),), str(path), dynamo=False, **names)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A recognition model (exported from a torch backbone), a genderage model, and an lfw-style .bin of synthetic faces."""
    root = tmp_path_factory.mktemp("insightface")
    torch.manual_seed(0)
    net = _PixelProjection().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = export_onnx(net, root / "pack" / "rec.onnx")
    genderage = _quiet_export(_ColourGenderAge(), root / "pack" / "genderage.onnx", (3, 96, 96), input_names=["data"], output_names=["fc1"])
    probe = SyntheticProbeSet(IDENTITIES, 2, size=112)
    faces = (probe.images(torch.arange(2 * IDENTITIES)) * 255).round().to(torch.uint8)
    # pair p < 80: both images of identity p (same person); pair 80 + p: identity p and identity p + 1
    order = [i for p in range(IDENTITIES) for i in (2 * p, 2 * p + 1)]
    order += [i for p in range(IDENTITIES) for i in (2 * p, 2 * ((p + 1) % IDENTITIES) + 1)]
    issame = [True] * IDENTITIES + [False] * IDENTITIES
    encoded = []
    for i in order:
        buffer = io.BytesIO()
        Image.fromarray(faces[i].permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    lfw = root / "lfw.bin"
    lfw.write_bytes(pickle.dumps((encoded, issame), protocol=2))
    return {"net": net, "rec": rec, "genderage": genderage, "lfw": lfw, "images": faces[order].float() / 255.0,
            "issame": torch.tensor(issame), "pack": root / "pack"}


def _torch_embeddings(net, images):
    with torch.no_grad():
        return F.normalize(net(images), dim=1)


def test_explain_a_verification_file_by_the_attributes_insightface_reads(files, tmp_path, capsys):
    out = tmp_path / "explain"
    code = main(["explain", "--backbone", f"insightface:{files['rec']}", "--estimator", f"insightface:{files['genderage']}",
                 "--pairs", str(files["lfw"]), "--fmr", "0.05", "--max-pairs", "500", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    document = json.loads((out / "explanations.json").read_text())
    # the reference: the torch module on the same pixels, judged on the file's listed pairs only
    z = _torch_embeddings(files["net"], files["images"])
    score = (z[0::2] * z[1::2]).sum(1)
    same = files["issame"]
    impostor = torch.sort(score[~same], descending=True).values
    tau = float(impostor[int(0.05 * impostor.numel())])
    assert document["tau"] == pytest.approx(tau, abs=1e-5)
    assert document["verification"]["genuine_pairs"] == IDENTITIES and document["verification"]["impostor_pairs"] == IDENTITIES
    assert document["verification"]["tar"] == pytest.approx(float((score[same] > tau).float().mean()), abs=1.5 / IDENTITIES)
    fnm, fm = int((score[same] <= tau).sum()), int((score[~same] > tau).sum())
    assert abs(document["counts"]["false_non_match"] - fnm) <= 1 and abs(document["counts"]["false_match"] - fm) <= 1
    assert fnm > 0 and document["counts"]["explained"] == document["counts"]["false_non_match"] + document["counts"]["false_match"]
    # every explained error is one of the file's pairs, of the kind its flag says, and is on the wrong side of τ
    listed = {(2 * p, 2 * p + 1): bool(same[p]) for p in range(2 * IDENTITIES)}
    for pair in document["pairs"]:
        key = tuple(pair["pair"])
        assert key in listed
        assert pair["kind"] == ("false_non_match" if listed[key] else "false_match")
        p = key[0] // 2
        assert pair["score"] == pytest.approx(float(score[p]), abs=1e-5)
    # the attributes are the ones InsightFace's genderage model read off the images, explained on the latent path
    assert document["path"] == "latent" and set(document["attribution"]["all"]) == {"sex", "age"}
    assert document["estimated"] == {"sex": str(files["genderage"]), "age": str(files["genderage"])}
    assert any(v is not None for pair in document["pairs"] for v in pair["delta"].values())
    assert "latent (conditional) counterfactuals" in printed.out
    assert "no generator renders this probe set's" in printed.out and "so none written" in printed.out  # no figure, and why
    assert "--decoder conv renders decoded counterfactual faces" in printed.out  # and how to get one


def test_analyze_an_insightface_backbone_equals_the_torch_module(files, tmp_path, capsys):
    out = tmp_path / "analysis"
    code = main(["analyze", "--backbone", f"insightface:{files['rec']}", "--probe", "synthetic,n_identities=30,images_per_identity=4",
                 "--bootstrap", "0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    document = json.loads((out / "analysis.json").read_text())
    assert document["source"] == f"synthetic probe set embedded by insightface:{files['rec']}"
    probe = SyntheticProbeSet(30, 4)
    z = _torch_embeddings(files["net"], probe.images(torch.arange(len(probe))))
    reference = analyze_probe(z, probe, AnalysisConfig(n_bootstrap=0))
    got = {a["name"]: a["value"] for a in document["attributes"]}
    for item in reference.leakage:
        assert got[item.name] == pytest.approx(item.value, abs=1e-3), item.name
    assert document["verification"]["tar"] == pytest.approx(reference.verification.tar, abs=0.02)


def test_a_model_pack_folder_gives_the_backbone_and_the_estimators(files, tmp_path, capsys):
    out = tmp_path / "pack-analysis"
    code = main(["analyze", "--backbone", f"insightface:{files['pack']}", "--estimator", f"insightface:{files['pack']},sex=gender",
                 "--pairs", str(files["lfw"]), "--bootstrap", "0", "--format", "json", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    document = json.loads(printed.out)
    assert {a["name"] for a in document["attributes"]} == {"gender", "age"}
    assert document["verification"]["genuine_pairs"] == IDENTITIES  # the listed pairs, not all pairs of the images


@pytest.mark.parametrize("args, message", [
    (["--backbone", "nope:x"], r"unknown kind 'nope'; the installed plugins offer: frx \(.*insightface \(.*torch \("),
    (["--backbone", "insightface:{tmp}/missing.onnx"], r"no ONNX model at .*missing\.onnx\. frx never downloads"),
    (["--backbone", "insightface:buffalo_l,root={tmp}"], r"no InsightFace model pack 'buffalo_l' at .*/models/buffalo_l\. frx never downloads"),
    (["--backbone", "insightface:{rec}", "--pairs", "{lfw}"], r"labels no attributes; pass --estimator"),
    (["--backbone", "insightface:{rec}", "--pairs", "{lfw}", "--estimator", "insightface:{rec}"],
     r"rec\.onnx: insightface reads it as 'recognition'"),
    (["--backbone", "insightface:{rec}", "--pairs", "{lfw}", "--estimator", "insightface:{genderage},colour=x"], r"unknown option\(s\) \['colour'\]"),
    (["--backbone", "insightface:{rec}", "--probe", "synthetic,n_identities=3,colour=2"], r"probe set 'synthetic,n_identities=3,colour=2': .*colour"),
    (["--backbone", "insightface:{rec}", "--pairs", "synthetic"], r"--pairs synthetic: synthetic probe set lists no pairs"),
    (["--backbone", "insightface:{rec},gamma=2"],
     r"backbone 'insightface:.*rec\.onnx,gamma=2': unknown option 'gamma'; insightface backbones take the options flip, root, mean, std, channels$"),
    (["--backbone", "insightface:{rec},std=1/2"], r"option 'std' must be a number or three numbers joined by '/'"),
    (["--backbone", "insightface:{rec},channels=rbg"], r"option 'channels' must be rgb or bgr, got 'rbg'"),
])
def test_bad_specs_are_named(files, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, rec=files["rec"], lfw=files["lfw"], genderage=files["genderage"]) for a in args]
    assert main(["analyze", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err, __import__("re").M)
    assert err.count("\n") == 1 and "Traceback" not in err  # one line
    assert not (tmp_path / "out" / "analysis.json").exists()


def test_face_analysis_never_downloads_a_missing_pack(tmp_path, files):
    root = tmp_path / "insightface-home"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no InsightFace model pack 'buffalo_l' at .*models/buffalo_l"):
        face_analysis("buffalo_l", root=root)
    assert list(root.iterdir()) == []  # insightface's downloader would have made models/ and a .zip there
    (root / "models" / "empty").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"empty: this InsightFace model pack folder holds no \.onnx files"):
        pack_folder("empty", root=root)
    assert pack_folder(files["pack"]) == files["pack"]


def test_benchmark_takes_insightface_models_and_verification_files(files, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["benchmark", "--backbone", f"insightface:{files['rec']}", "--backbone", f"insightface:{files['rec']},flip=true",
                 "--pairs", str(files["lfw"]), "--estimator", f"insightface:{files['genderage']}", "--bootstrap", "10",
                 "--no-report", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    document = json.loads((out / "benchmark.json").read_text())
    plain, flipped = document["backbones"]
    assert document["estimated"] == {"sex": str(files["genderage"]), "age": str(files["genderage"])}
    # judged on the file's 160 listed pairs, with the torch module's TAR on them
    assert plain["verification"]["genuine_pairs"] == IDENTITIES and plain["verification"]["impostor_pairs"] == IDENTITIES
    z = _torch_embeddings(files["net"], files["images"])
    score = (z[0::2] * z[1::2]).sum(1)
    eer = equal_error_rate(score[files["issame"]], score[~files["issame"]])[0]
    assert plain["verification"]["eer"]["value"] == pytest.approx(eer, abs=1.5 / IDENTITIES)
    # 80 impostor pairs cannot set τ at FMR 1e-3: no number, and the reason
    assert plain["verification"]["tar"]["0.001"]["value"] is None
    assert "80 impostor pairs are too few for FMR 0.001" in plain["verification"]["notes"]["0.001"]
    assert {a["name"] for a in plain["analysis"]["attributes"]} == {"sex", "age"}
    assert plain["parameters"] is None and plain["embed_seconds_per_image"] > 0  # an ONNX model has no torch parameters
    assert flipped["embed_seconds_per_image"] > 0 and flipped["error"] is None


def test_analyze_an_image_folder_with_a_csv(files, tmp_path, capsys):
    from frx_plugin.attributes import Attribute, AttributeSchema
    from frx_plugin.probe import TensorProbeSet

    probe = SyntheticProbeSet(30, 4, size=112)
    faces = (probe.images(torch.arange(len(probe))) * 255).round().to(torch.uint8)
    folder = tmp_path / "faces"
    folder.mkdir()
    lines = ["path,identity,skin_tone,glasses,background"]
    for i in range(len(probe)):
        Image.fromarray(faces[i].permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
        lines.append(f"{i:03d}.png,person{int(probe.identity[i])},{float(probe.labels['skin_tone'][i]):.9g},"
                     f"{int(probe.labels['glasses'][i])},bg{int(probe.labels['background'][i]):02d}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "analysis"
    code = main(["analyze", "--backbone", f"insightface:{files['rec']}", "--probe", f"image-folder:{folder}",
                 "--bootstrap", "0", "--format", "json", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    document = json.loads(printed.out)
    # the reference: the torch module on the same pixels, the labels as the synthetic world gives them
    images = faces.float() / 255.0
    background = probe.labels["background"]
    present = sorted(set(background.tolist()))
    schema = AttributeSchema([Attribute("skin_tone", "continuous"), Attribute("glasses", "binary"),
                              Attribute("background", "categorical", tuple(f"bg{v:02d}" for v in present))])
    labels = {"skin_tone": probe.labels["skin_tone"], "glasses": probe.labels["glasses"],
              "background": torch.tensor([present.index(v) for v in background.tolist()])}
    # the folder keys each identity by its name "person<n>" (a 63-bit BLAKE2b hash), and its folds follow the keys
    keys = torch.tensor([int.from_bytes(hashlib.blake2b(f"person{int(k)}".encode(), digest_size=8).digest(), "big") >> 1
                         for k in probe.identity])
    reference_probe = TensorProbeSet(images, schema, keys, labels)
    reference = analyze_probe(_torch_embeddings(files["net"], images), reference_probe, AnalysisConfig(n_bootstrap=0))
    got = {a["name"]: a["value"] for a in document["attributes"]}
    assert set(got) == {"skin_tone", "glasses", "background"}
    for item in reference.leakage:
        assert got[item.name] == pytest.approx(item.value, abs=1e-3), item.name
