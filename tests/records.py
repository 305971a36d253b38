"""Comparing analysis records: every measure of two history records, within a tolerance."""

from __future__ import annotations

import pytest

#: what differs between two runs of the same pass: the seconds it took and where it stands in its history
IGNORED = frozenset({"timing", "pass_index", "run"})


def assert_same_measures(a: dict, b: dict, tol: float = 1e-6, ignored: frozenset = IGNORED) -> None:
    """Every measure of two records agrees within ``tol`` (counts, names and texts exactly)."""
    assert set(a) - ignored == set(b) - ignored

    def same(x, y, where):
        if isinstance(x, dict):
            assert set(x) == set(y), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{where}[{i}]")
        elif isinstance(x, float) and isinstance(y, (int, float)):
            assert y == pytest.approx(x, abs=tol), where
        else:
            assert x == y, where

    for key in sorted(set(a) - ignored):
        same(a[key], b[key], key)
