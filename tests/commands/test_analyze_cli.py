"""``frx analyze`` in-process: the printed table's columns, and the heads a model's pass uses."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.commands.cli import main
from frx_plugin.embedding_set import write_embedding_set

LONG = "wearing_heavy_makeup_and_a_hat"  # 30 characters


def test_the_table_lines_up_for_long_attribute_names(tmp_path, capsys):
    assert len(LONG) == 30
    schema = AttributeSchema([
        Attribute(LONG, "binary", group="nuisance"),
        Attribute("age", "continuous"),  # no group
        Attribute("hair", "categorical", classes=("dark", "fair", "red"), group="identity"),
        Attribute("constant", "binary", group="identity"),  # one class: a row with a reason
    ])
    g = torch.Generator().manual_seed(0)
    identity = torch.arange(300) // 3
    labels = {LONG: torch.randint(0, 2, (300,), generator=g), "age": torch.randn(300, generator=g),
              "hair": torch.randint(0, 3, (100,), generator=g)[identity], "constant": torch.zeros(300, dtype=torch.int64)}
    z = torch.randn(300, 8, generator=g)
    z[:, 0] += 2.0 * labels[LONG]
    path = write_embedding_set(tmp_path / "long.safetensors", torch.nn.functional.normalize(z, dim=1), identity, labels, schema)
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "out"), "--bootstrap", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    heading, rule, rows = lines[0], lines[1], lines[2:2 + len(schema)]
    assert set(rule) == {"-"} and len(rule) >= len(heading)
    starts = {column: heading.index(column) for column in ("group", "kind", "metric", "value (95% CI)")}
    end = heading.index("leakage ℓ") + len("leakage ℓ")  # the leakage column is right-aligned to the heading's end
    assert starts["group"] == len(LONG) + 1
    for attribute, row in zip(schema, rows):
        assert row[:starts["group"]].rstrip() == attribute.name, row
        assert row[starts["group"]:starts["kind"]].rstrip() == (attribute.group or ""), row
        assert row[starts["kind"]:starts["metric"]].rstrip() == attribute.kind, row
        assert row[starts["metric"]:starts["value (95% CI)"]].rstrip() == ("r2" if attribute.kind == "continuous" else "auroc"), row
        assert row[starts["value (95% CI)"] - 1] == " " and row[end - 9:end].strip() and (len(row) == end or row[end:end + 3] == "  ("), row
    assert "(only one class" in rows[-1]
    # short names keep the former widths
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "short"), "--bootstrap", "0", "--attributes", "age,hair"]) == 0
    short = capsys.readouterr().out.splitlines()
    assert short[0].index("group") == 17 and short[1] == "-" * 80


# --------------------------------------------------------------------------- the heads of a model's pass

PROBE = "synthetic,n_identities=60,images_per_identity=4,seed=3,size=32"


def test_a_backbone_pass_uses_the_logistic_heads_asked_for(tmp_path, capsys):
    """``frx analyze --backbone SPEC --head logistic --C 0.1`` gives the leakage of ``--embeddings FILE --head logistic
    --C 0.1`` on a file of the same model's embeddings of the same probe set, not that of the ridge heads."""
    from frx_plugin.model import embed_probe_set
    from frx_plugin.specs import open_probe
    from tests.lightning_helpers import TinyFaceModule

    model = TinyFaceModule().eval()
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    probe = open_probe(PROBE)
    with torch.no_grad():
        z = embed_probe_set(model, probe)
    file = write_embedding_set(tmp_path / "tiny-embeddings.safetensors", z, probe.identity, probe.labels, probe.schema)

    def values(name, *args):
        code = main(["analyze", *args, "--bootstrap", "10", "--min-class-samples", "0", "--out", str(tmp_path / name)])
        assert code == 0, capsys.readouterr().err
        document = json.loads((tmp_path / name / "analysis.json").read_text())
        return document, {a["name"]: a["value"] for a in document["attributes"]}

    backbone_doc, backbone = values("backbone", "--backbone", f"torch:tests.lightning_helpers:TinyFaceModule@{weights}",
                                    "--probe", PROBE, "--head", "logistic", "--C", "0.1")
    _, from_file = values("file", "--embeddings", str(file), "--head", "logistic", "--C", "0.1")
    _, ridge = values("ridge", "--embeddings", str(file))
    assert set(backbone) == set(from_file) == set(probe.schema.names)
    discrete = [a.name for a in probe.schema if a.discrete and from_file[a.name] is not None]
    assert len(discrete) >= 3
    assert backbone_doc["head"] == "logistic" and backbone_doc["options"]["C"] == 0.1
    for name in probe.schema.names:
        if from_file[name] is None:
            assert backbone[name] is None, name
        else:
            assert backbone[name] == pytest.approx(from_file[name], abs=1e-6), name
    assert max(abs(from_file[n] - ridge[n]) for n in discrete) > 1e-3  # the logistic heads are not the ridge ones
    assert max(abs(backbone[n] - ridge[n]) for n in discrete) > 1e-3
    assert not any(math.isnan(v) for v in backbone.values() if v is not None)


# --------------------------------------------------------------------------- demographic differentials


def test_analyze_prints_and_saves_the_differentials_of_a_direct_call(tmp_path, capsys):
    from frx_plugin.differentials import demographic_differentials
    from frx_plugin.verification import verification

    schema = AttributeSchema([Attribute("glasses", "binary", group="nuisance"), Attribute("age", "continuous")])
    g = torch.Generator().manual_seed(1)
    identity = torch.arange(1200) // 4
    glasses = torch.randint(0, 2, (300,), generator=g)[identity]  # a person wears them in every image or none
    noise = torch.where(glasses.bool(), 1.4, 0.9)[:, None]  # noisier faces with glasses: more false non-matches
    z = torch.nn.functional.normalize(torch.randn(300, 32, generator=g)[identity] + noise * torch.randn(1200, 32, generator=g), dim=1)
    labels = {"glasses": glasses, "age": torch.rand(300, generator=g)[identity] * 60 + 18}
    path = write_embedding_set(tmp_path / "set.safetensors", z, identity, labels, schema)
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "out"), "--bootstrap", "20", "--fmr", "0.01"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())["differentials"]
    direct = demographic_differentials(z, identity, labels, schema, verification(z, identity, fmr=0.01), n_bootstrap=20)
    curves = saved.pop("curves")
    assert saved == json.loads(json.dumps(direct.to_record()))
    assert curves["attribute"] == direct.most_unequal() and curves["groups"] == [g.label for g in direct[curves["attribute"]].groups]
    table = out.split("demographic differentials at τ", 1)[1].splitlines()
    glasses_row = next(line for line in table if line.startswith("glasses "))
    ratio = saved["attributes"][0]["fnmr_ratio"]
    assert ratio["value"] > 1.5 and f"{ratio['value']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}]" in glasses_row
    assert main(["analyze", "--embeddings", str(path), "--out", str(tmp_path / "off"), "--bootstrap", "0", "--no-differentials"]) == 0
    assert "demographic differentials" not in capsys.readouterr().out
    assert json.loads((tmp_path / "off" / "analysis.json").read_text())["differentials"] is None
