import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.leakage.metrics import ProbeStatistics
from tests.ddp_launch import run_two_ranks

SCHEMA = AttributeSchema(
    [
        Attribute("glasses", "binary"),
        Attribute("hair", "categorical", classes=("a", "b", "c")),
        Attribute("yaw", "continuous"),
    ]
)


def make_data(n=301, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g)
    folds = torch.randint(0, 4, (n,), generator=g)
    yaw = torch.randn(n, generator=g)
    yaw[torch.rand(n, generator=g) < 0.2] = math.nan
    labels = {"glasses": torch.randint(0, 2, (n,), generator=g), "hair": torch.randint(0, 3, (n,), generator=g), "yaw": yaw}
    return z, folds, labels


def _reference(z, folds, labels):
    """Direct sums over the rows of each fold, in numpy-free plain loops over folds."""
    y = torch.cat(
        [
            labels["glasses"].double()[:, None],
            torch.nn.functional.one_hot(labels["hair"], 3).double(),
            torch.nan_to_num(labels["yaw"].double())[:, None],
        ],
        1,
    )
    x = z.double()
    out = {}
    for f in range(4):
        r = folds == f
        out[f] = {"gram": x[r].T @ x[r], "cross": x[r].T @ y[r], "count": float(r.sum())}
        keep = r & ~torch.isnan(labels["yaw"])
        out[f]["yaw_gram"] = x[keep].T @ x[keep]
        out[f]["yaw_count"] = float(keep.sum())
        out[f]["yaw_cross"] = x[keep].T @ y[keep][:, 4:5]
    return out


def test_statistics_equal_direct_sums_whatever_the_batching():
    z, folds, labels = make_data()
    ref = _reference(z, folds, labels)
    for batch in (301, 7):
        metric = ProbeStatistics(SCHEMA, 6, 4, masked_attributes=["yaw"])
        for start in range(0, 301, batch):
            sl = slice(start, start + batch)
            metric.update(z[sl], folds[sl], {k: v[sl] for k, v in labels.items()})
        shared, masked = metric.compute()
        for f in range(4):
            torch.testing.assert_close(shared.gram[f], ref[f]["gram"])
            torch.testing.assert_close(shared.cross[f], ref[f]["cross"])
            assert shared.count[f] == ref[f]["count"]
            torch.testing.assert_close(masked["yaw"].gram[f], ref[f]["yaw_gram"])
            assert masked["yaw"].count[f] == ref[f]["yaw_count"]
            torch.testing.assert_close(masked["yaw"].cross[f], ref[f]["yaw_cross"])
        assert shared.gram.dtype == torch.float64


def test_bad_arguments_are_named():
    import pytest

    with pytest.raises(KeyError, match=r"masked attribute\(s\) \['smile'\]"):
        ProbeStatistics(SCHEMA, 6, 4, masked_attributes=["smile"])
    metric = ProbeStatistics(SCHEMA, 6, 4)
    z, folds, labels = make_data()
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 6\)"):
        metric.update(z[:, :5], folds, labels)


def test_two_process_reduction_equals_one_process(tmp_path):
    script = Path(__file__).parents[1] / "ddp_metric_script.py"
    out = tmp_path / "reduced.safetensors"
    run_two_ranks(script, str(out))
    reduced = load_file(str(out))
    z, folds, labels = make_data()
    single = ProbeStatistics(SCHEMA, 6, 4, masked_attributes=["yaw"])
    single.update(z, folds, labels)
    shared, masked = single.compute()
    torch.testing.assert_close(reduced["gram"], shared.gram, rtol=0, atol=1e-9)
    torch.testing.assert_close(reduced["cross"], shared.cross, rtol=0, atol=1e-9)
    assert torch.equal(reduced["count"], shared.count)  # every sample counted once
    assert float(reduced["count"].sum()) == 301
    torch.testing.assert_close(reduced["yaw_gram"], masked["yaw"].gram, rtol=0, atol=1e-9)
    assert torch.equal(reduced["yaw_count"], masked["yaw"].count)
