"""Identity keys: the int64 that stands for an identity, a property of the identity itself.

Every random choice of the analysis that concerns identities (the bootstrap's Poisson weights,
the order in which identities are dealt to folds) is keyed by these integers, so the key must
not depend on where or in what order an identity first appears: a probe set read from an image
folder, from CelebA's files or from an embedding-set file gives the same identity the same key,
and therefore the same folds, intervals and record.

``identity_key(name)``: a name that is an integer (``"2880"``, ``"-3"``, ``"007"``) is that
integer (it must fit in int64); any other name is a 63-bit hash of its UTF-8 bytes
(BLAKE2b, 8-byte digest, top bit cleared), the same on every machine and Python version.
``identity_keys(names)``: the key of every row, refusing two different names with one key
(``"7"`` and ``"007"``, or a hash collision, which at 63 bits is practically impossible).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import torch

__all__ = ["IdentityKeyError", "identity_key", "identity_keys"]

_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class IdentityKeyError(ValueError):
    """Two different identity names have the same key."""


def identity_key(name: str | int) -> int:
    """The int64 key of the identity called ``name`` (an integer name is itself; see the module docstring)."""
    if isinstance(name, bool):
        raise TypeError(f"an identity name is text or an integer, got {name!r}")
    if isinstance(name, int):
        value = name
    else:
        text = str(name).strip()
        if not _INTEGER.fullmatch(text):
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
            return int.from_bytes(digest, "big") >> 1
        value = int(text)
    if not _INT64[0] <= value <= _INT64[1]:
        raise IdentityKeyError(f"identity {name!r} is an integer outside int64; name it with text instead")
    return value


def identity_keys(names: Iterable[str | int], where: str = "identity") -> tuple[torch.Tensor, dict[int, str]]:
    """(N,) int64 keys of the identity names of N rows, and each key's name (first spelling seen).

    Raises :class:`IdentityKeyError` naming ``where`` and both names when two different names share a key.
    """
    keys: list[int] = []
    named: dict[int, str] = {}
    seen: dict[str, int] = {}
    for name in names:
        text = str(name).strip()
        key = seen.get(text)
        if key is None:
            key = seen[text] = identity_key(name if isinstance(name, int) else text)
            other = named.setdefault(key, text)
            if other != text:
                raise IdentityKeyError(f"{where}: identities {other!r} and {text!r} have the same key {key}; "
                                       "rename one (integers are read as their value: '7' and '007' are one key)")
        keys.append(key)
    return torch.tensor(keys, dtype=torch.int64), named
