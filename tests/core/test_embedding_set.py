import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.commands.analyze import analyze as analyze_file
from frx_plugin.embedding_set import EmbeddingSet, EmbeddingSetError, read_embedding_set, write_embedding_set
from frx_plugin.passes import AnalysisConfig
from tests.core.test_recovery import bayes_binary, bayes_continuous, planted_world
from tests.ddp_launch import HANG_LIMIT_S

SCHEMA = AttributeSchema(
    [
        Attribute("glasses", "binary", group="nuisance"),
        Attribute("hair", "categorical", classes=("black", "blond", "red"), group="identity"),
        Attribute("yaw", "continuous", group="nuisance"),
    ]
)


def small_set(n_identities=30, per_identity=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_identities * per_identity
    identity = torch.arange(n) // per_identity
    labels = {
        "glasses": torch.randint(0, 2, (n,), generator=g),
        "hair": torch.randint(0, 3, (n_identities,), generator=g)[identity],
        "yaw": torch.randn(n, generator=g),
    }
    z = torch.randn(n, dim, generator=g)
    z[:, 0] += 2.0 * labels["glasses"]
    return z, identity, labels


def test_round_trip_and_chunked_reading_agree(tmp_path):
    z, identity, labels = small_set()
    labels["glasses"][3] = -1
    labels["yaw"][5] = math.nan
    path = write_embedding_set(tmp_path / "set.safetensors", z, identity, labels, SCHEMA)
    # the file is plain safetensors in the documented layout
    raw = load_file(str(path))
    assert set(raw) == {"embeddings", "identity", "attr.glasses", "attr.hair", "attr.yaw"}
    assert raw["attr.hair"].dtype == torch.int64 and raw["attr.yaw"].dtype == torch.float32
    z2, identity2, labels2, schema = read_embedding_set(path)
    assert schema == SCHEMA
    assert torch.equal(z2, z) and torch.equal(identity2, identity)
    assert torch.equal(labels2["glasses"], labels["glasses"])
    assert torch.equal(torch.isnan(labels2["yaw"]), torch.isnan(labels["yaw"]))
    chunks = list(EmbeddingSet(path).chunks(chunk_size=7))
    assert len(chunks) == math.ceil(len(z) / 7)
    assert torch.equal(torch.cat([c[0] for c in chunks]), z)


def _write_raw(path, tensors, schema_json):
    metadata = {} if schema_json is None else {"frx.attributes": schema_json}
    save_file(tensors, str(path), metadata=metadata)
    return path


def _valid_tensors():
    z, identity, labels = small_set()
    return {"embeddings": z, "identity": identity, "attr.glasses": labels["glasses"], "attr.hair": labels["hair"], "attr.yaw": labels["yaw"]}


SCHEMA_JSON = json.dumps(SCHEMA.to_json())


@pytest.mark.parametrize(
    "change,schema_json,message",
    [
        (lambda t: t, None, "header metadata has no 'frx.attributes'"),
        (lambda t: t, "[{\"name\": \"x\"}]", "header field 'frx.attributes' is invalid"),
        (lambda t: t.pop("attr.yaw"), SCHEMA_JSON, "attribute 'yaw' is declared but tensor 'attr.yaw' is missing"),
        (lambda t: t.update({"attr.hair": t["attr.hair"][:-1]}), SCHEMA_JSON, "tensor 'attr.hair' has shape \\[119\\], expected \\[120\\]"),
        (lambda t: t.update({"attr.glasses": t["attr.glasses"].float()}), SCHEMA_JSON,
         "tensor 'attr.glasses' is F32; a binary attribute needs an integer"),
        (lambda t: t.update({"attr.yaw": t["attr.hair"].clone()}), SCHEMA_JSON, "tensor 'attr.yaw' is I64; a continuous attribute needs a float"),
        (lambda t: t.pop("identity"), SCHEMA_JSON, "no tensor 'identity'"),
        (lambda t: t.update({"embeddings": t["embeddings"][:, 0].contiguous()}), SCHEMA_JSON, "tensor 'embeddings' must be a float N×D matrix"),
    ],
)
def test_bad_headers_are_named(tmp_path, change, schema_json, message):
    tensors = _valid_tensors()
    change(tensors)
    path = _write_raw(tmp_path / "bad.safetensors", tensors, schema_json)
    with pytest.raises(EmbeddingSetError, match=message) as info:
        EmbeddingSet(path)
    assert "bad.safetensors" in str(info.value)


def test_bad_rows_are_found_while_streaming(tmp_path):
    tensors = _valid_tensors()
    tensors["attr.hair"][100] = 7
    path = _write_raw(tmp_path / "labels.safetensors", tensors, SCHEMA_JSON)
    pattern = r"labels\.safetensors: attribute 'hair': label 7 out of range at row 100; categorical labels are 0\.\.2"
    with pytest.raises(EmbeddingSetError, match=pattern):
        list(EmbeddingSet(path).chunks(32))
    tensors = _valid_tensors()
    tensors["embeddings"][50, 2] = math.inf
    path = _write_raw(tmp_path / "nan.safetensors", tensors, SCHEMA_JSON)
    with pytest.raises(EmbeddingSetError, match="NaN or infinite values in 1 rows of 32..63 \\(first: row 50\\)"):
        EmbeddingSet(path).read(chunk_size=32)


def test_truncated_file_and_unknown_attribute(tmp_path):
    z, identity, labels = small_set()
    path = write_embedding_set(tmp_path / "set.safetensors", z, identity, labels, SCHEMA)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(EmbeddingSetError, match="cut.safetensors: not a readable safetensors file"):
        EmbeddingSet(cut)
    with pytest.raises(EmbeddingSetError, match=r"no attribute\(s\) \['smile'\]; the file has \['glasses', 'hair', 'yaw'\]"):
        EmbeddingSet(path, attributes=["smile"])


def _frx(*args):
    return subprocess.run([sys.executable, "-m", "frx_plugin", *args], capture_output=True, text=True, timeout=HANG_LIMIT_S)


def test_frx_analyze_reaches_the_analytic_values(tmp_path):
    """The planted-signal check of the recovery tests, through the file format and the command."""
    z, identity, labels, schema = planted_world(seed=5, dim=64)
    path = write_embedding_set(tmp_path / "planted.safetensors", z, identity, labels, schema)
    proc = _frx("analyze", "--embeddings", str(path), "--out", str(tmp_path / "out"), "--format", "json", "--bootstrap", "50")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    written = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert printed == written and written["format"] == "frx.analysis/1"
    values = {a["name"]: a for a in written["attributes"]}
    assert abs(values["smile"]["value"] - bayes_binary()) < 0.01
    assert abs(values["yaw"]["value"] - bayes_continuous()) < 0.01
    assert values["smile"]["metric"] == "auroc" and values["yaw"]["metric"] == "r2"
    # the importable function gives the same numbers
    report = analyze_file(path, config=AnalysisConfig(n_bootstrap=50))
    assert report["smile"].value == pytest.approx(values["smile"]["value"], abs=1e-12)


def test_frx_analyze_csv_table_options_and_skipped_attribute(tmp_path):
    z, identity, labels = small_set()
    labels["yaw"][:] = math.nan  # an all-missing attribute: skipped with a reason, the rest analysed
    path = write_embedding_set(tmp_path / "set.safetensors", z, identity, labels, SCHEMA)
    proc = _frx("analyze", "--embeddings", str(path), "--out", str(tmp_path / "o"), "--format", "csv", "--folds", "3", "--attributes", "glasses,yaw")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("name,kind,group,metric,value,low,high,leakage")
    assert [line.split(",")[0] for line in lines[1:]] == ["glasses", "yaw"]
    assert "warning: attribute 'yaw'" in proc.stderr
    written = json.loads((tmp_path / "o" / "analysis.json").read_text())
    assert written["n_folds"] == 3
    yaw = next(a for a in written["attributes"] if a["name"] == "yaw")
    assert yaw["value"] is None and yaw["reason"]
    glasses = next(a for a in written["attributes"] if a["name"] == "glasses")
    assert glasses["value"] > 0.8  # planted: z₀ += 2·glasses
    table = _frx("analyze", "--embeddings", str(path), "--out", str(tmp_path / "t"))
    assert table.returncode == 0 and "glasses" in table.stdout and "identity-disjoint folds" in table.stdout


def test_frx_analyze_errors_name_the_file(tmp_path):
    proc = _frx("analyze", "--embeddings", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "no embedding set at" in proc.stderr and "missing.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_analyze_file_streams_in_chunks_and_matches_the_in_memory_analysis(tmp_path):
    from frx_plugin.leakage import analyze_embeddings

    z, identity, labels = small_set(n_identities=60, per_identity=5, seed=3)
    labels["glasses"][::11] = -1  # some missing labels: masked statistics on the streaming path
    path = write_embedding_set(tmp_path / "set.safetensors", z, identity, labels, SCHEMA)
    seen = []
    # without verification (which holds every row) the file streams, chunk by chunk, in constant memory
    report = analyze_file(path, config=AnalysisConfig(n_bootstrap=40), chunk_size=17, progress=lambda d, t, s: seen.append((d, t, s)),
                          with_verification=False)
    assert {s for _, _, s in seen} == {"statistics", "held-out scores"}
    assert all(t == 300 for _, t, _ in seen) and [d for d, _, s in seen if s == "statistics"][-1] == 300
    reference = analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=40)
    # with it, the rows held in memory go through the pass every loop runs: the same leakage
    held = analyze_file(path, config=AnalysisConfig(n_bootstrap=40), chunk_size=17)
    for result in (report, held):
        assert result["yaw"].value == pytest.approx(reference["yaw"].value, abs=1e-9)
        assert result["glasses"].extra["balanced_accuracy"] == pytest.approx(reference["glasses"].extra["balanced_accuracy"], abs=1e-9)
        assert result["glasses"].value == pytest.approx(reference["glasses"].value, abs=2e-3)  # binned AUROC
    assert report.verification is None
    assert held.verification is not None and held.verification.genuine_pairs == 60 * 10


def test_frx_analyze_with_logistic_heads(tmp_path):
    from frx_plugin.leakage import analyze_embeddings

    z, identity, labels = small_set(n_identities=40, per_identity=5, seed=4)
    labels["glasses"][::7] = -1
    path = write_embedding_set(tmp_path / "set.safetensors", z, identity, labels, SCHEMA)
    proc = _frx("analyze", "--embeddings", str(path), "--out", str(tmp_path / "o"), "--head", "logistic", "--C", "0.5", "--bootstrap", "30")
    assert proc.returncode == 0, proc.stderr
    assert "logistic heads (continuous attributes: ridge)" in proc.stdout
    written = json.loads((tmp_path / "o" / "analysis.json").read_text())
    assert written["head"] == "logistic" and written["options"]["head"] == "logistic" and written["options"]["C"] == 0.5
    # the file's embeddings are stored as written (float32): the same numbers as the in-memory call
    stored = read_embedding_set(path)
    reference = analyze_embeddings(stored[0], stored[1], stored[2], SCHEMA, n_bootstrap=30, head="logistic", C=0.5)
    for entry in written["attributes"]:
        assert entry["value"] == pytest.approx(reference[entry["name"]].value, abs=1e-12), entry["name"]
        assert entry["low"] == pytest.approx(reference[entry["name"]].low, abs=1e-12), entry["name"]
    bad = _frx("analyze", "--embeddings", str(path), "--out", str(tmp_path / "b"), "--head", "logistic", "--C", "-1")
    assert bad.returncode == 2 and "C (the inverse logistic penalty) must be a positive number, got -1.0" in bad.stderr


def _with_classes(classes):
    header = SCHEMA.to_json()
    header[1]["classes"] = classes  # hair, categorical
    return json.dumps(header)


def test_a_class_count_names_the_classes(tmp_path, capsys):
    from frx_plugin.commands.cli import main

    path = _write_raw(tmp_path / "count.safetensors", _valid_tensors(), _with_classes(3))
    assert EmbeddingSet(path).schema["hair"].classes == ("0", "1", "2")
    binary = SCHEMA.to_json()
    binary[0]["classes"] = 2
    path2 = _write_raw(tmp_path / "binary.safetensors", _valid_tensors(), json.dumps(binary))
    assert EmbeddingSet(path2).schema["glasses"].classes == ("0", "1")
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "o"), "--bootstrap", "10", "--format", "json"]) == 0
    assert "hair" in capsys.readouterr().out


@pytest.mark.parametrize("classes, shown", [("ab", "'ab'"), (1, "a count of 1"), ([0, 1, 2], r"\[0, 1, 2\]"),
                                            ({"a": 1}, r"\{'a': 1\}"), (True, "True")])
def test_classes_that_are_no_list_of_names_are_refused(tmp_path, capsys, classes, shown):
    from frx_plugin.commands.cli import main

    path = _write_raw(tmp_path / "bad.safetensors", _valid_tensors(), _with_classes(classes))
    with pytest.raises(EmbeddingSetError, match=rf"bad\.safetensors: header field 'frx\.attributes' is invalid: attribute 'hair': "
                                                rf"field 'classes' .*{shown}"):
        EmbeddingSet(path)
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frx analyze: error: ") and "bad.safetensors" in err and "'hair'" in err and "'classes'" in err
    assert err.count("\n") == 1
    with pytest.raises(Exception, match="classes must be a sequence of class names"):
        Attribute("hair", "categorical", classes="abc")
