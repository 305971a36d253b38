"""An image folder's CSV columns keep the kind a schema gives them, or the one inferred and printed; a value that
does not fit is refused. Real PNG files and CSVs written here; the probe set as frx opens it."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from frx_insightface.readers import (
    DataFormatError,
    ImageFolderProbeSet,
    read_celeba_labels,
    read_verification_bin,
)
from frx_plugin.specs import open_probe, parse_spec


def _folder(tmp_path, lines, n_images=None):
    """A folder of ``n_images`` 20×20 PNGs 0.png, 1.png, … and ``labels.csv`` of ``lines``."""
    folder = tmp_path / "faces"
    folder.mkdir(exist_ok=True)
    count = n_images if n_images is not None else len(lines) - 1
    for k in range(count):
        pixels = np.random.default_rng(k).integers(0, 256, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _ages(n=41, bad_at=None, bad="abc"):
    rows = ["path,identity,age"]
    for k in range(n):
        rows.append(f"{k}.png,p{k % 7},{bad if k == bad_at else 20 + k}")
    return rows


def _open(folder, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = ImageFolderProbeSet(folder, align="none", **options)
    return probe, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_a_word_in_a_number_column_is_refused_with_file_line_column_and_value(tmp_path):
    """Today's bug: 'abc' among 40 ages made age a 41-class categorical attribute, silently."""
    folder = _folder(tmp_path, _ages(bad_at=12))
    with pytest.raises(DataFormatError) as caught:
        _open(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{folder / 'labels.csv'}: line 14, column 'age': 'abc' is not a number" in message
    assert "40 of its 41 values are numbers, so it is continuous" in message
    assert "kinds=age:categorical" in message  # the option that says otherwise
    # declared categorical, the same column is read as it is: 41 classes, no error
    probe, _ = _open(folder, kinds="age:categorical")
    assert probe.schema["age"].kind == "categorical" and probe.schema["age"].num_classes == 41


def test_a_yes_in_a_01_column_is_refused(tmp_path):
    rows = ["path,identity,glasses"] + [f"{k}.png,p{k},{k % 2}" for k in range(9)] + ["9.png,p9,yes"]
    folder = _folder(tmp_path, rows)
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 11, column 'glasses': 'yes' is not 0/1 or true/false; .*"
                                              r"9 of its 10 values are 0/1 or true/false, so it is binary"):
        _open(folder)
    rows[3] = "2.png,p2,maybe"
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataFormatError, match=r"line 4, column 'glasses': 'maybe' is not 0/1 or true/false \(and 1 more value"):
        _open(folder)


def test_the_inferred_schema_is_printed_once_and_its_option_fixes_it(tmp_path):
    folder = _folder(tmp_path, [
        "path,identity,glasses,hair,age",
        "0.png,alice,1,brown,31.5",
        "1.png,alice,0,black,",
        "2.png,bob,,brown,40",
        "3.png,carol,true,red,22",
    ])
    probe, printed = _open(folder)
    schema_warnings = [m for m in printed if "inferred" in m]
    assert len(schema_warnings) == 1, printed
    message = schema_warnings[0]
    assert "\n" not in message
    assert "glasses binary; hair categorical (3 classes: black, brown, red); age continuous" in message
    assert "kinds=glasses:binary;hair:categorical;age:continuous" in message
    assert probe.labels["glasses"].tolist() == [1, 0, -1, 1]  # an empty cell stays a missing label
    assert probe.labels["hair"].tolist() == [1, 0, 1, 2]
    assert torch.isnan(probe.labels["age"][1]) and probe.labels["age"][3] == 22
    # the option the warning names gives the same schema, and no warning
    fixed, printed = _open(folder, kinds="glasses:binary;hair:categorical;age:continuous")
    assert fixed.schema == probe.schema and not [m for m in printed if "inferred" in m]
    for name in probe.schema.names:
        assert torch.equal(fixed.labels[name].nan_to_num(-9), probe.labels[name].nan_to_num(-9))


def test_a_kinds_row_after_the_header(tmp_path):
    folder = _folder(tmp_path, [
        "path,identity,age,hair,glasses",
        "#kinds,,categorical,categorical:red|brown|black|blond,",
        "0.png,a,30,brown,1",
        "1.png,b,40,red,0",
        "2.png,c,,black,1",
    ], n_images=3)
    probe, printed = _open(folder)
    assert len(probe) == 3  # the kinds row is no image
    assert probe.schema["age"].kind == "categorical" and probe.schema["age"].classes == ("30", "40")
    assert probe.schema["hair"].classes == ("red", "brown", "black", "blond")  # the row's order, a class no row uses
    assert probe.labels["hair"].tolist() == [1, 0, 2] and probe.labels["age"].tolist() == [0, 1, -1]
    assert probe.lines == [3, 4, 5]
    # the empty cell leaves glasses to the inference, and the warning says so for glasses alone
    assert [m.split(": ", 1)[1].split(".")[0] for m in printed if "inferred" in m] == \
        ["no schema names the kinds of 1 column(s), so frx inferred them from their values: glasses binary"]
    lines = (folder / "labels.csv").read_text().splitlines()
    (folder / "labels.csv").write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 3: a #kinds row must come right after the header"):
        _open(folder)
    (folder / "labels.csv").write_text("\n".join([lines[0], "#kinds,,number,,", *lines[2:]]) + "\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 2 \(the #kinds row\): column 'age': kind 'number' is not one of "
                                              r"binary, categorical, continuous"):
        _open(folder)


def test_a_json_sidecar_gives_kinds_classes_and_groups(tmp_path):
    folder = _folder(tmp_path, ["path,identity,age,sex,hair", "0.png,a,30,f,brown", "1.png,b,41,m,red", "2.png,c,52,f,"])
    sidecar = folder / "labels.csv.schema.json"
    sidecar.write_text(json.dumps({"age": "categorical", "sex": {"kind": "binary", "classes": ["f", "m"], "group": "identity"},
                                   "hair": {"kind": "categorical", "classes": ["red", "brown"]}}))
    probe, printed = _open(folder)
    assert not [m for m in printed if "inferred" in m]
    assert probe.schema["age"].kind == "categorical"
    assert probe.schema["sex"].group == "identity" and probe.labels["sex"].tolist() == [0, 1, 0]
    assert probe.labels["hair"].tolist() == [1, 0, -1]
    # the kinds option goes before the sidecar
    assert _open(folder, kinds="age:continuous")[0].schema["age"].kind == "continuous"
    # the folder's frx-schema.json is read the same way; both at once is refused
    (folder / "frx-schema.json").write_text(json.dumps({"age": "continuous"}))
    with pytest.raises(DataFormatError, match=r"both labels\.csv\.schema\.json and frx-schema\.json give the kinds"):
        _open(folder)
    sidecar.unlink()
    assert _open(folder)[0].schema["age"].kind == "continuous"
    # errors name the file and the column
    (folder / "frx-schema.json").write_text('{"age": "continuous",}')
    with pytest.raises(DataFormatError, match=r"frx-schema\.json: not valid JSON \(line 1, column"):
        _open(folder)
    (folder / "frx-schema.json").write_text(json.dumps({"weight": "continuous"}))
    with pytest.raises(DataFormatError, match=r"frx-schema\.json: column 'weight' is not a column of the CSV; the attribute columns "
                                              r"of .*labels\.csv are \['age', 'sex', 'hair'\]"):
        _open(folder)
    (folder / "frx-schema.json").write_text(json.dumps({"sex": {"kind": "binary", "classes": ["f", "m"], "group": "family"}}))
    with pytest.raises(DataFormatError, match=r"column 'sex': group must be one of identity, nuisance, got 'family'"):
        _open(folder)


def test_a_declared_kind_is_held_to(tmp_path):
    folder = _folder(tmp_path, ["path,identity,age,hair", "0.png,a,30,brown", "1.png,b,forty,red"])
    with pytest.raises(DataFormatError, match=r"labels\.csv: line 3, column 'age': 'forty' is not a number \(continuous attribute 'age'\)"):
        _open(folder, kinds="age:continuous;hair:categorical")
    with pytest.raises(DataFormatError, match=r"line 3, column 'hair': 'red' is not one of the classes \['brown', 'black'\]"):
        _open(folder, kinds="age:categorical;hair:categorical:brown|black")
    with pytest.raises(DataFormatError, match=r"kinds=ag:binary: column 'ag' is not a column of the CSV"):
        _open(folder, kinds="ag:binary")
    with pytest.raises(DataFormatError, match=r"kinds=identity:binary: column 'identity' is the identity column"):
        _open(folder, kinds="identity:binary")
    with pytest.raises(DataFormatError, match=r"kinds=age: 'age' is not NAME:KIND"):
        _open(folder, kinds="age")


def test_kinds_in_a_probe_spec(tmp_path):
    folder = _folder(tmp_path, _ages(n=6))
    probe = open_probe(f"image-folder:{folder},align=none,kinds=age:categorical")
    assert probe.schema["age"].kind == "categorical" and probe.schema["age"].num_classes == 6
    # a ':' inside an option's value is no kind separator
    spec = parse_spec("image-folder,align=none,kinds=age:categorical;hair:categorical:a|b")
    assert (spec.kind, spec.argument) == ("image-folder", None)
    assert spec.options == {"align": "none", "kinds": "age:categorical;hair:categorical:a|b"}


def test_a_latin1_csv_is_named_with_its_line(tmp_path):
    """Today's bug: "'utf-8' codec can't decode byte 0xe9 in position 37" without the file."""
    folder = _folder(tmp_path, ["path,identity,name", "0.png,a,x"])
    (folder / "labels.csv").write_bytes("path,identity,name\n0.png,a,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(DataFormatError) as caught:
        _open(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'labels.csv'}: line 2, column 12: byte 0xe9 (offset 30) is not UTF-8")
    assert "save the file as UTF-8" in message and "\n" not in message
    # a UTF-8 file with a byte-order mark (as spreadsheets write it) is read
    (folder / "labels.csv").write_bytes("path,identity,name\n0.png,a,Jos\xe9\n".encode("utf-8-sig"))
    assert _open(folder, kinds="name:categorical:José|Ana")[0].labels["name"].tolist() == [0]
    # CelebA's text files too
    root = tmp_path / "celeba"
    root.mkdir()
    (root / "list_attr_celeba.txt").write_bytes(b"1\nSmiling\n000001.jpg 1\n")
    (root / "identity_CelebA.txt").write_bytes("000001.jpg 1 \xe9\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"identity_CelebA\.txt: line 1, column 14: byte 0xe9 .* is not UTF-8"):
        read_celeba_labels(root)


def test_an_undecodable_image_is_named_without_a_buffer(tmp_path):
    """Today's bug: "cannot identify image file <_io.BytesIO object at 0x7f…>"."""
    folder = _folder(tmp_path, ["path,identity", "0.png,a", "broken.png,b"], n_images=1)
    (folder / "broken.png").write_bytes(b"GIF89a but not really")
    probe, _ = _open(folder, size=16)
    with pytest.raises(DataFormatError) as caught:
        probe.images(torch.tensor([1]))
    message = str(caught.value)
    assert message.startswith(f"{folder / 'broken.png'}: the image cannot be decoded")
    assert "BytesIO" not in message and "0x" not in message
    path = tmp_path / "broken.bin"
    good = (folder / "0.png").read_bytes()
    path.write_bytes(pickle.dumps(([good, good, good, b"\x89PNG\r\n\x1a\n truncated"], [True, False])))
    with pytest.raises(DataFormatError) as caught:
        read_verification_bin(path)
    assert str(caught.value).startswith(f"{path}: image entry 3: the image cannot be decoded") and "BytesIO" not in str(caught.value)


def test_kinds_on_the_command_line(tmp_path, capsys):
    """``frx analyze --probe image-folder:DIR --kinds ...``: the kinds reach the probe set and the analysis."""
    from frx_plugin.commands.cli import main

    rows = ["path,identity,age,glasses"] + [f"{k}.png,p{k % 8},{20 + k % 5},{k % 2}" for k in range(40)]
    folder = _folder(tmp_path, rows)
    out = tmp_path / "analysis"
    probe = f"image-folder:{folder},align=none,size=64"
    common = ["analyze", "--backbone", "resnet-small,embedding_dim=16", "--bootstrap", "0", "--folds", "2", "--format", "json"]
    code = main([*common, "--probe", probe, "--kinds", "age:categorical;glasses:binary", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    kinds = {a["name"]: a["kind"] for a in json.loads(printed.out)["attributes"]}
    assert kinds == {"age": "categorical", "glasses": "binary"}  # age would be continuous inferred
    assert "inferred" not in printed.err
    for case, (arguments, message) in enumerate([
        (["--kinds", "age:categorical"], "--kinds age:categorical: goes with --probe SPEC"),
        (["--probe", probe, "--kinds", "age:categorical,glasses:binary"], "join the columns with ';', not ','"),
        (["--probe", probe + ",kinds=age:continuous", "--kinds", "age:categorical"], "both give the kinds; give one"),
        (["--probe", probe, "--kinds", "age:size"], "column 'age': kind 'size' is not one of binary, categorical, continuous"),
    ]):
        assert main([*common, *arguments, "--out", str(tmp_path / f"refused-{case}")]) == 2  # a fresh folder: not the results check
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
