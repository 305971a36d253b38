"""Counter-based random numbers: every draw is a pure function of its keys.

splitmix64 on int64 tensors hashes a tuple of integer keys (seed, stream, counters…) to 64
random bits, so a draw never depends on the order, batch, chunk, process or DDP rank in which
it is made. The synthetic world (:mod:`frx_plugin.synthetic`) draws its faces this way
(:func:`hash_keys`, :func:`uniform_from_bits`, :func:`box_muller`), and the identity bootstrap of
:mod:`frx_plugin.leakage` its weights.

``poisson_bootstrap_weights``: the streaming form of the bootstrap over identities. Instead of
drawing K identities with replacement (a multinomial, which needs all identities at once), every
identity gets an independent Poisson(1) multiplicity per replicate, drawn from
hash(seed, stream, replicate, identity) by inverse CDF; every image of the identity carries it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import math

import torch

__all__ = ["box_muller", "hash_keys", "poisson_bootstrap_weights", "uniform_from_bits"]


def _signed(value: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX_1 = _signed(0xBF58476D1CE4E5B9)
_MIX_2 = _signed(0x94D049BB133111EB)


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX_1
    z = (z ^ _shift_right(z, 27)) * _MIX_2
    return z ^ _shift_right(z, 31)


def hash_keys(*keys: torch.Tensor | int) -> torch.Tensor:
    """Hash a sequence of int64 keys (broadcast together) to 64 random bits each, on the device of the first tensor key (else the CPU)."""
    device = next((key.device for key in keys if isinstance(key, torch.Tensor)), torch.device("cpu"))
    z = torch.zeros((), dtype=torch.int64, device=device)
    for key in keys:
        z = _splitmix64(z + key)
    return z


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """53 random bits to float64 uniforms strictly inside (0, 1)."""
    return (_shift_right(bits, 11).double() + 0.5) * (2.0**-53)


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Standard normals (float64) from two uniforms in (0, 1)."""
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


#: Stream key of the bootstrap weights (the synthetic world uses streams 1-3 with its own seed).
_BOOTSTRAP_STREAM = 101
#: Poisson(1) CDF at k = 0..24; P(X > 24) < 2⁻⁵³, below the resolution of the uniforms.
_POISSON_1_CDF = torch.tensor(
    [sum(math.exp(-1.0) / math.factorial(j) for j in range(k + 1)) for k in range(25)], dtype=torch.float64, device="cpu"
)


def poisson_bootstrap_weights(
    identity: torch.Tensor, seed: int, n_replicates: int, first_replicate: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """(n_replicates, N) float64 Poisson(1) bootstrap weights, one per identity and replicate.

    Row i is replicate ``first_replicate + i``; the weight of sample j is its identity's
    multiplicity, X = min{k : u ≤ F(k)} for u = uniform(hash(seed, stream, replicate,
    identity[j])) and F the Poisson(1) CDF. It depends only on (seed, replicate, identity
    label), never on the other samples, their order, or the chunk or rank a sample comes in.
    The weights are drawn on the CPU and returned on ``device`` (default the CPU).
    """
    if not isinstance(identity, torch.Tensor):
        identity = torch.as_tensor(identity, device="cpu")
    if identity.ndim != 1 or identity.dtype.is_floating_point or identity.dtype == torch.bool:
        raise ValueError(f"identity must be a 1-D integer tensor, got {identity.dtype} of shape {tuple(identity.shape)}")
    if n_replicates < 0 or first_replicate < 0:
        raise ValueError(f"n_replicates and first_replicate must be non-negative, got {n_replicates}, {first_replicate}")
    # drawn on the CPU, whatever the device asked for: the same numbers everywhere
    identity = identity.to("cpu", torch.int64)
    unique, inverse = torch.unique(identity, return_inverse=True)  # hash each identity once
    counts = _identity_counts(unique, int(seed), int(n_replicates), int(first_replicate))
    weights = counts[:, inverse] if unique.numel() else torch.zeros(n_replicates, 0, dtype=torch.float64, device="cpu")
    return weights if device is None else weights.to(device)


#: The last identity sets' Poisson draws (a training's passes draw the same ones every pass), at most
#: this many weights in all (64 MiB).
_DRAWS: collections.OrderedDict = collections.OrderedDict()
_DRAWS_KEPT = 8_000_000


def _identity_counts(unique: torch.Tensor, seed: int, n_replicates: int, first_replicate: int) -> torch.Tensor:
    """(R, K) float64 Poisson(1) multiplicities of the sorted identity labels ``unique``; remembered for reuse (read-only)."""
    key = (seed, n_replicates, first_replicate, unique.numel(), hashlib.blake2b(unique.numpy().tobytes(), digest_size=16).digest())
    counts = _DRAWS.get(key)
    if counts is None:
        replicate = torch.arange(first_replicate, first_replicate + n_replicates, dtype=torch.int64, device="cpu")[:, None]
        u = uniform_from_bits(hash_keys(seed, _BOOTSTRAP_STREAM, replicate, unique[None, :]))  # (R, K)
        counts = torch.searchsorted(_POISSON_1_CDF, u.contiguous()).to(torch.float64)
        if counts.numel() <= _DRAWS_KEPT:
            _DRAWS[key] = counts
        while sum(kept.numel() for kept in _DRAWS.values()) > _DRAWS_KEPT:
            _DRAWS.popitem(last=False)
    else:
        _DRAWS.move_to_end(key)
    return counts


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block with torch's global generators seeded by ``seed``, and put every one of them back after.

    The CPU generator and, where CUDA is initialised, every CUDA device's: ``torch.manual_seed``
    seeds them all, so forking the CPU's alone would leave the training's CUDA stream changed.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
