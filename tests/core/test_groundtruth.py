"""The ground-truth benchmark's own computations (benchmarks/groundtruth.py), on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.groundtruth import planted_pairs
from frx_plugin.synthetic import SyntheticFaceWorld
from frx_plugin.two_stage import spearman


def test_spearman_is_the_pearson_correlation_of_average_ranks():
    rng = np.random.default_rng(0)
    a = rng.normal(size=19)
    b = a + rng.normal(size=19)
    b[3] = b[4]  # a tie: average ranks

    def average_ranks(x):
        order = np.argsort(x, kind="stable")
        ranks = np.empty(len(x))
        ranks[order] = np.arange(len(x))
        for v in np.unique(x):
            ranks[x == v] = ranks[x == v].mean()
        return ranks

    expected = np.corrcoef(average_ranks(a), average_ranks(b))[0, 1]
    assert spearman(list(a), list(b)) == pytest.approx(expected, abs=1e-12)
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # pairs with a missing value on either side are left out; fewer than 3 pairs give NaN
    assert spearman([1, 2, float("nan"), 3], [1, 2, 5, 3]) == pytest.approx(1.0)
    assert np.isnan(spearman([1, 2], [2, 1]))


@pytest.mark.parametrize("cause", ["glasses", "hair_colour", "age", "yaw"])
def test_planted_pairs_differ_in_the_cause_and_otherwise_only_by_jitter(cause):
    world = SyntheticFaceWorld(10, 3, seed=2, size=32)
    rows = torch.arange(0, 30, 3)
    own = world.parameters(rows)
    planted = planted_pairs(world, rows, cause, seed=1)
    spec = world.schema[cause]
    if spec.kind == "binary":
        assert torch.equal(planted[cause], 1 - own[cause])
    elif spec.kind == "categorical":
        assert bool((planted[cause] != own[cause]).all())
    else:
        step = (planted[cause] - own[cause]).abs()
        torch.testing.assert_close(step, torch.full_like(step, 2.0 * world.std(cause)))
        middle = 0.5 * (world._spec(cause).low + world._spec(cause).high)
        assert bool(((planted[cause] - middle).abs() <= (own[cause] - middle).abs() + 2.0 * world.std(cause) + 1e-6).all())
    for attribute in world.schema:
        if attribute.name == cause:
            continue
        if attribute.kind == "continuous":
            jitter = (planted[attribute.name] - own[attribute.name]).abs()
            assert float(jitter.max()) < 0.25 * world.std(attribute.name)  # 5% of a standard deviation, 5 sigma
        else:
            assert torch.equal(planted[attribute.name], own[attribute.name])
    for name in own:  # internal parameters (shift, clothing, noise texture) are untouched
        if name not in world.schema:
            assert torch.equal(planted[name], own[name])
