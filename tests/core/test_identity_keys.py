"""Identity keys: a property of the identity (its number, or a hash of its name), never of its position."""

from __future__ import annotations

import hashlib

import pytest
import torch

from frx_plugin.identity_keys import IdentityKeyError, identity_key, identity_keys
from frx_plugin.leakage import identity_folds
from frx_plugin.randomness import poisson_bootstrap_weights


def _blake2b63(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def test_integer_names_are_their_value_and_other_names_their_63_bit_hash():
    assert [identity_key(t) for t in ("2880", " 17 ", "-3", "+5", "007")] == [2880, 17, -3, 5, 7]
    assert identity_key(2880) == 2880 and identity_key(str(2**63 - 1)) == 2**63 - 1
    for name in ("alice", "Émile Zola", "12a", "1.5", ""):
        assert identity_key(name) == _blake2b63(name) and 0 <= identity_key(name) < 2**63
    with pytest.raises(IdentityKeyError, match="outside int64"):
        identity_key(str(2**63))


def test_keys_of_rows_and_two_names_with_one_key_refused():
    keys, named = identity_keys(["bob", "7", "alice", "bob", "7"])
    assert keys.dtype == torch.int64
    assert keys.tolist() == [_blake2b63("bob"), 7, _blake2b63("alice"), _blake2b63("bob"), 7]
    assert named == {_blake2b63("bob"): "bob", 7: "7", _blake2b63("alice"): "alice"}
    with pytest.raises(IdentityKeyError, match=r"labels\.csv: identities '7' and '007' have the same key 7"):
        identity_keys(["7", "007"], "labels.csv")


def test_folds_and_bootstrap_follow_the_key_not_the_row_order():
    """The same identities listed in any order get the same fold and the same bootstrap multiplicity."""
    g = torch.Generator().manual_seed(0)
    keys = torch.tensor([identity_key(f"person {k}") for k in range(40)])
    identity = keys.repeat_interleave(torch.randint(1, 6, (40,), generator=g))
    order = torch.randperm(identity.numel(), generator=g)
    folds, shuffled = identity_folds(identity, 5, seed=3), identity_folds(identity[order], 5, seed=3)
    assert torch.equal(folds[order], shuffled)
    weights = poisson_bootstrap_weights(identity, 3, 50)
    assert torch.equal(weights[:, order], poisson_bootstrap_weights(identity[order], 3, 50))
