"""The synthetic face world: determinism, labels, counterfactuals, the dataset and the probe set."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from frx_plugin.attributes import SchemaError
from frx_plugin.probe import ProbeSet
from frx_plugin.synthetic.parameters import SYNTHETIC_SCHEMA
from frx_plugin.synthetic.world import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet

SIZE = 64  # small renders keep the file fast; size 112 is covered by the benchmark


@pytest.fixture(scope="module")
def world() -> SyntheticFaceWorld:
    return SyntheticFaceWorld(40, 5, seed=3, size=SIZE, chunk_size=16)


def test_schema_has_identity_and_nuisance_attributes_of_every_kind():
    assert len(SYNTHETIC_SCHEMA) >= 18
    groups = {a.name: a.group for a in SYNTHETIC_SCHEMA}
    for name in ("face_shape", "jaw_width", "eye_spacing", "eye_size", "nose_length", "mouth_width",
                 "skin_tone", "iris_colour", "hair_colour", "age"):
        assert groups[name] == "identity"
    for name in ("yaw", "pitch", "roll", "smile", "eye_openness", "illumination", "glasses", "background", "noise"):
        assert groups[name] == "nuisance"
    kinds = {a.kind for a in SYNTHETIC_SCHEMA}
    assert kinds == {"binary", "categorical", "continuous"}
    assert SYNTHETIC_SCHEMA["iris_colour"].num_classes == 4
    assert SYNTHETIC_SCHEMA["hair_colour"].num_classes == 5
    assert SYNTHETIC_SCHEMA["background"].num_classes >= 3


def test_render_is_deterministic_whatever_the_batch_or_chunk(world):
    indices = torch.tensor([0, 7, 13, 57, 111, 199])
    reference = world.render(indices)
    assert reference.shape == (6, 3, SIZE, SIZE) and reference.dtype == torch.float32
    assert float(reference.min()) >= 0.0 and float(reference.max()) <= 1.0
    # alone, in another order, among other faces, and with other chunk sizes
    alone = torch.cat([world.render(indices[i : i + 1]) for i in range(len(indices))])
    assert torch.equal(alone, reference)
    shuffled = world.render(indices.flip(0))
    assert torch.equal(shuffled.flip(0), reference)
    crowd = torch.cat([torch.arange(20, 40), indices, torch.arange(150, 170)])
    for chunk in (1, 5, 64):
        other = SyntheticFaceWorld(40, 5, seed=3, size=SIZE, chunk_size=chunk)
        assert torch.equal(other.render(crowd)[20:26], reference)
    # a fresh world with the same seed agrees; another seed does not
    assert torch.equal(SyntheticFaceWorld(40, 5, seed=3, size=SIZE).render(indices), reference)
    assert not torch.equal(SyntheticFaceWorld(40, 5, seed=4, size=SIZE).render(indices), reference)


def test_banded_painting_equals_painting_the_whole_image(world):
    params = world.parameters(torch.arange(0, 200, 7))
    banded = world.render_parameters(params)
    whole = world.render_parameters(params, _use_bands=False)
    assert torch.equal(banded, whole)


def test_identity_attributes_are_constant_within_an_identity(world):
    indices = torch.arange(len(world))
    labels = world.labels(indices)
    identity = world.identity(indices)
    assert torch.equal(identity, indices // 5)
    for attribute in SYNTHETIC_SCHEMA:
        values = labels[attribute.name].view(40, 5)
        if attribute.group == "identity":
            if attribute.discrete:
                assert (values == values[:, :1]).all(), attribute.name
            else:
                spread = (values.max(1).values - values.min(1).values).max()
                assert spread <= 10 * world._spec(attribute.name).jitter, attribute.name
                assert spread > 0, attribute.name  # the per-image jitter is there
                between = values.mean(1).std()
                assert between > 3 * values.std(1).mean(), attribute.name
        else:  # nuisance attributes vary within an identity
            assert (values != values[:, :1]).any(), attribute.name


def test_identity_parameters_do_not_depend_on_the_world_layout():
    a = SyntheticFaceWorld(10, 3, seed=1, size=SIZE)
    b = SyntheticFaceWorld(5, 7, seed=1, size=SIZE, first_identity=4)
    # identity 6 is sample 18 of a (image 0) and sample 14 of b (image 0)
    assert int(a.identity([18])) == int(b.identity([14])) == 6
    pa, pb = a.parameters([18]), b.parameters([14])
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    assert torch.equal(a.render([18]), b.render([14]))


def test_labels_validate_and_cover_every_class():
    world = SyntheticFaceWorld(300, 4, seed=0, size=SIZE)
    labels = world.labels(torch.arange(len(world)))
    SYNTHETIC_SCHEMA.validate(labels, len(world))
    for attribute in SYNTHETIC_SCHEMA:
        values = labels[attribute.name]
        if attribute.discrete:
            assert values.dtype == torch.int64
            counts = torch.bincount(values, minlength=attribute.num_classes)
            assert len(counts) == attribute.num_classes
            assert (counts > 0.05 * len(values) / attribute.num_classes).all(), (attribute.name, counts)
        else:
            assert values.dtype == torch.float32 and torch.isfinite(values).all()
            # the documented population standard deviation matches the sample
            assert abs(float(values.std()) / world.std(attribute.name) - 1) < 0.15, attribute.name
    assert 18 - 8 < float(labels["age"].min()) and float(labels["age"].max()) < 80 + 8
    assert float(labels["yaw"].abs().max()) <= 30


def test_unknown_attribute_raises_key_error_listing_known_ones(world):
    params = world.parameters([0])
    with pytest.raises(KeyError, match="no_such_thing.*smile"):
        world.edit(params, "no_such_thing")
    with pytest.raises(KeyError, match="no_such_thing"):
        world.counterfactual([0], "no_such_thing")
    with pytest.raises(ValueError, match="continuous"):
        world.std("glasses")
    with pytest.raises(IndexError):
        world.render([len(world)])


def test_edit_changes_only_the_intended_parameter(world):
    indices = torch.arange(0, 200, 9)
    params = world.parameters(indices)
    for attribute in SYNTHETIC_SCHEMA:
        edited = world.edit(params, attribute.name)
        for name in params:
            if name != attribute.name:
                assert torch.equal(edited[name], params[name]), (attribute.name, name)
        old, new = params[attribute.name], edited[attribute.name]
        if attribute.kind == "binary":
            assert torch.equal(new, 1 - old)
        elif attribute.kind == "categorical":
            assert torch.equal(new, (old + 1) % attribute.num_classes)
        else:
            assert torch.allclose(new - old, torch.full_like(old, world.std(attribute.name)))
        assert torch.equal(world.counterfactual(indices, attribute.name), world.render_parameters(edited))
    # explicit values
    assert (world.edit(params, "hair_colour", 3)["hair_colour"] == 3).all()
    assert (world.edit(params, "age", 70.0)["age"] == 70.0).all()
    with pytest.raises(ValueError):
        world.edit(params, "background", 9)
    # the input dict is not modified
    assert torch.equal(params["age"], world.parameters(indices)["age"])


def test_every_attribute_visibly_changes_the_image(world):
    indices = torch.arange(0, 200, 13)
    original = world.render(indices)
    for attribute in SYNTHETIC_SCHEMA:
        changed = world.counterfactual(indices, attribute.name)
        difference = (changed - original).abs()
        assert float(difference.mean()) > 2e-4, attribute.name  # small features change few pixels
        assert float(difference.amax(dim=(1, 2, 3)).min()) > 0.02, attribute.name  # every face changes
        assert float(difference.amax()) > 0.05, attribute.name


@pytest.mark.parametrize("attribute", ["glasses", "smile", "iris_colour", "eye_openness", "nose_length"])
def test_face_edits_leave_the_background_corners_alone(world, attribute):
    indices = torch.arange(0, 200, 11)
    difference = (world.counterfactual(indices, attribute) - world.render(indices)).abs()
    corner = SIZE // 8
    for rows in (slice(0, corner), slice(-corner, None)):
        for cols in (slice(0, corner), slice(-corner, None)):
            assert float(difference[:, :, rows, cols].max()) == 0.0, attribute


def test_background_edit_changes_the_corners_but_not_the_eyes(world):
    indices = torch.arange(0, 200, 11)
    params = world.parameters(indices)
    params["roll"].zero_(), params["yaw"].zero_(), params["pitch"].zero_()
    params["translate_x"].zero_(), params["translate_y"].zero_()
    before = world.render_parameters(params)
    after = world.render_parameters(world.edit(params, "background"))
    difference = (after - before).abs()
    assert float(difference[:, :, :4, :4].mean()) > 0.05
    # the centre of the face (between the eyes and the mouth) keeps its pixels
    centre = slice(SIZE // 2 - 3, SIZE // 2 + 3)
    assert float(difference[:, :, centre, centre].max()) == 0.0


def test_counterfactual_keeps_the_noise_pattern(world):
    indices = torch.tensor([3, 4])
    params = world.parameters(indices)
    params["noise"].fill_(0.05)
    edited = world.edit(params, "glasses")
    difference = (world.render_parameters(edited) - world.render_parameters(params)).abs()
    assert float(difference[:, :, :6, :6].max()) == 0.0  # noisy corners, identical noise


def test_dataset_getitems_with_a_real_dataloader():
    world = SyntheticFaceWorld(30, 4, seed=0, size=SIZE)
    dataset = SyntheticFaceDataset(world)
    assert len(dataset) == 120
    image, label = dataset[9]
    assert image.shape == (3, SIZE, SIZE) and label == 2
    items = dataset.__getitems__([9, 0, 119])
    assert [lab for _, lab in items] == [2, 0, 29]
    assert torch.equal(items[0][0], image)

    calls = []
    original = dataset.__getitems__

    def counting(indices):
        calls.append(len(indices))
        return original(indices)

    dataset.__getitems__ = counting
    loader = DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert calls == [64, 56]
    images, labels = batches[0]
    assert images.shape == (64, 3, SIZE, SIZE) and labels.dtype == torch.int64
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(i // 4 for i in range(120))


def test_first_identity_gives_disjoint_identities_with_different_faces():
    train = SyntheticFaceWorld(20, 2, seed=0, size=SIZE)
    probe = SyntheticProbeSet(n_identities=20, images_per_identity=2, seed=0, size=SIZE, first_identity=1000)
    assert isinstance(probe, ProbeSet) and len(probe) == 40
    assert probe.world.first_identity == 1000
    train_ids = set(train.identity(torch.arange(40)).tolist())
    assert set(probe.identity.tolist()).isdisjoint(train_ids)
    assert probe.identity.tolist()[:3] == [1000, 1000, 1001]
    difference = (probe.images(torch.arange(40)) - train.render(torch.arange(40))).abs().mean(dim=(1, 2, 3))
    assert (difference > 0.01).all()
    # identity attributes differ too (not the same people under other names)
    assert not torch.equal(probe.labels["face_shape"], train.labels(torch.arange(40))["face_shape"])


def test_probe_set_labels_and_images():
    probe = SyntheticProbeSet(n_identities=6, images_per_identity=3, seed=2, size=SIZE)
    assert probe.schema == SYNTHETIC_SCHEMA
    SYNTHETIC_SCHEMA.validate(probe.labels, len(probe))
    indices, images = next(probe.batches(torch.arange(len(probe)), 8))
    assert images.shape == (8, 3, SIZE, SIZE)
    assert torch.equal(images, probe.world.render(indices))
    assert probe.counterfactual(indices, "smile").shape == images.shape


def test_any_size_renders():
    for size in (64, 112, 37):
        world = SyntheticFaceWorld(4, 2, seed=0, size=size)
        images = world.render(torch.arange(8))
        assert images.shape == (8, 3, size, size)
        assert float(images.std()) > 0.1  # not blank
    world = SyntheticFaceWorld(4, 2, seed=0, size=112)
    small = world.render(torch.arange(8), size=64)
    assert small.shape == (8, 3, 64, 64)
    # the same face at another size: similar after downsampling
    big = torch.nn.functional.interpolate(world.render(torch.arange(8)), size=64, mode="area")
    assert float((big - small).abs().mean()) < 0.06


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="n_identities"):
        SyntheticFaceWorld(0, 3)
    with pytest.raises(ValueError, match="images_per_identity"):
        SyntheticFaceWorld(3, 0)
    with pytest.raises(SchemaError):
        SYNTHETIC_SCHEMA.validate({"age": torch.zeros(2)}, 2)
