import json
import math

import pytest
import torch

from frx_plugin.attributes import Attribute, AttributeSchema, SchemaError
from frx_plugin.history import HistoryRecorder, read_history, write_history

SCHEMA = AttributeSchema(
    [
        Attribute("smile", "binary", group="nuisance"),
        Attribute("hair", "categorical", classes=("black", "blond", "red"), group="identity"),
        Attribute("yaw", "continuous", group="nuisance"),
    ]
)


def test_schema_rejects_bad_definitions_with_the_name():
    with pytest.raises(SchemaError, match="'hair'.*at least 2 classes"):
        Attribute("hair", "categorical", classes=("black",))
    with pytest.raises(SchemaError, match="'x'.*kind must be one of"):
        Attribute("x", "ordinal")
    with pytest.raises(SchemaError, match="duplicate attribute names: \\['a'\\]"):
        AttributeSchema([Attribute("a", "binary"), Attribute("a", "continuous")])
    with pytest.raises(SchemaError, match="'yaw'.*no classes"):
        Attribute("yaw", "continuous", classes=("a", "b"))


def test_label_validation_names_attribute_and_problem():
    good = {"smile": torch.tensor([0, 1, -1]), "hair": torch.tensor([0, 2, 1]), "yaw": torch.tensor([0.1, math.nan, 2.0])}
    SCHEMA.validate(good, 3, "probe.safetensors")
    with pytest.raises(SchemaError, match="probe.safetensors: attribute 'hair': label 3 out of range"):
        SCHEMA.validate(dict(good, hair=torch.tensor([0, 3, 1])), 3, "probe.safetensors")
    with pytest.raises(SchemaError, match="attribute 'smile'.*must be integers"):
        SCHEMA.validate(dict(good, smile=torch.tensor([0.0, 1.0, 0.0])), 3)
    with pytest.raises(SchemaError, match="no labels for attribute 'yaw'"):
        SCHEMA.validate({"smile": good["smile"], "hair": good["hair"]}, 3)
    with pytest.raises(SchemaError, match="'smile' has 3 labels for 4 samples"):
        SCHEMA.validate(good, 4)


def test_schema_json_round_trip():
    assert AttributeSchema.from_json(json.loads(json.dumps(SCHEMA.to_json()))) == SCHEMA


def _record(epoch, value):
    return {"epoch": epoch, "global_step": epoch * 10, "attributes": [{"name": "smile", "leakage": value}]}


def test_recorder_appends_and_writes_atomically(tmp_path):
    rec = HistoryRecorder(tmp_path, SCHEMA)
    rec.add(_record(0, 0.1), {"probe_directions": torch.ones(2, 3)})
    rec.write()
    first_text = (tmp_path / "history.json").read_text()
    rec.add(_record(1, 0.2), {"probe_directions": torch.full((2, 3), 2.0)})
    rec.write()
    schema, records, tensors = read_history(tmp_path)
    assert schema == SCHEMA
    assert [r["epoch"] for r in records] == [0, 1]
    # the first pass is kept exactly as it was written
    assert json.loads(first_text)["records"][0] == records[0]
    assert torch.equal(tensors["pass1.probe_directions"], torch.full((2, 3), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "history.safetensors"]


def test_a_failed_write_leaves_the_previous_history(tmp_path):
    write_history(tmp_path, SCHEMA, [_record(0, 0.1)], {"pass0.x": torch.zeros(1)})
    before = (tmp_path / "history.json").read_bytes()
    with pytest.raises(ValueError):  # NaN is not JSON; the writer refuses before touching the file
        write_history(tmp_path, SCHEMA, [_record(1, math.nan)], {})
    assert (tmp_path / "history.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_recorder_state_round_trip_and_resume_replaces_later_passes(tmp_path):
    rec = HistoryRecorder(tmp_path, SCHEMA)
    for epoch in range(4):
        rec.add(_record(epoch, epoch / 10), {"d": torch.full((1,), float(epoch))})
    state = rec.state_dict()
    # the state must survive a weights_only checkpoint load
    path = tmp_path / "state.pt"
    torch.save(state, path)
    restored = HistoryRecorder(tmp_path, SCHEMA)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.records == rec.records
    # a run resumed from epoch 2's checkpoint re-runs epoch 3: it replaces, never duplicates
    restored.add(_record(3, 0.99), {"d": torch.full((1,), 33.0)})
    assert restored.epochs == [0, 1, 2, 3]
    assert restored.records[-1]["attributes"][0]["leakage"] == 0.99
    assert torch.equal(restored.tensors["pass3.d"], torch.tensor([33.0]))
    restored.add(_record(2, 0.5), {"d": torch.zeros(1)})
    assert restored.epochs == [0, 1, 2]
    assert set(restored.tensors) == {"pass0.d", "pass1.d", "pass2.d"}


def test_read_history_names_the_file_and_field(tmp_path):
    (tmp_path / "history.json").write_text('{"format": "something-else", "records": []}')
    with pytest.raises(SchemaError, match="history.json: field 'format'"):
        read_history(tmp_path)
    (tmp_path / "history.json").write_text("{not json")
    with pytest.raises(SchemaError, match="history.json: not valid JSON"):
        read_history(tmp_path)


def test_atomic_writes_get_the_mode_of_an_ordinary_new_file(tmp_path):
    import os
    import stat

    from frx_plugin.history import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
    finally:
        os.umask(old)
    # figures and histories are shared with other users and tools like any file the user writes (not 0600)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
