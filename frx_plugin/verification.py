"""Verification accuracy on all pairs of a probe set: TAR at a target false-match rate.

Scores are cosine similarities of all genuine pairs (i < j, same identity) and all
impostor pairs (i < j, different identities), computed block by block over the upper
triangle in the embeddings' precision (float32 unless they are float64, as InsightFace's
evaluation does), so that a probe set never holds its N×N score matrix.

Threshold convention. With n impostor scores sorted in descending order
s₍₁₎ ≥ s₍₂₎ ≥ … ≥ s₍ₙ₎ and k = ⌊fmr·n⌋, the threshold is τ = s₍ₖ₊₁₎: the lowest impostor
score that leaves at most k (a fraction ≤ fmr) impostor scores strictly above it. A pair
is accepted when its score is strictly greater than τ, so the achieved false-match rate is
at most fmr (less when impostor scores tie at τ), and TAR is the fraction of genuine
scores > τ.

Finding τ in one pass: a bound L below τ is estimated from the impostor scores of a
fixed, evenly spaced sample of rows (a sample quantile with a generous margin); the pass
keeps only the impostor scores ≥ L and counts them. If at least k + 1 were kept, τ is
exactly the (k + 1)-th highest of them; otherwise (the estimate was too high) a second pass
keeps every score's top k + 1 the slow way. The answer is exact either way.

Everything is computed on the device of the embeddings (the identities are moved there); only
the numbers of the :class:`~frx_plugin.report.Verification` come back to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from frx_plugin.errors import AnalysisError
from frx_plugin.report import Verification

__all__ = ["verification", "scored_verification", "ScoredPairs", "listed_pair_verification", "pair_scores", "equal_error_rate",
           "decision_errors", "DecisionErrors", "prepare_embeddings", "genuine_pairs", "score_blocks"]

#: Score-matrix entries per block.
_BLOCK_ENTRIES = 4_000_000


def prepare_embeddings(embeddings: torch.Tensor, identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised embeddings (float32 unless float64) and the identities, both on the embeddings' device.

    Raises :class:`AnalysisError` for input of the wrong shape or type, or rows holding NaN or infinity.
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or not embeddings.dtype.is_floating_point:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise AnalysisError(f"embeddings must be a 2-D floating-point tensor (N, D), got {shape}")
    n = embeddings.shape[0]
    if not isinstance(identity, torch.Tensor) or identity.ndim != 1 or identity.dtype.is_floating_point or identity.dtype == torch.bool:
        raise AnalysisError("identity must be a 1-D integer tensor, one entry per embedding")
    if identity.shape[0] != n:
        raise AnalysisError(f"identity has {identity.shape[0]} entries but embeddings have {n} rows")
    bad = int((~torch.isfinite(embeddings).all(1)).sum())
    if bad:
        raise AnalysisError(f"embeddings contain NaN or infinity in {bad} of {n} rows — did the training diverge?")
    dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    z = torch.nn.functional.normalize(embeddings.detach().to(dtype), dim=1)
    return z, identity.detach().to(z.device)


def genuine_pairs(identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every genuine pair (a, b), a < b, sorted by a: same identity. On the device of ``identity``."""
    order = torch.argsort(identity, stable=True)
    sorted_identity = identity[order]
    _, counts = torch.unique_consecutive(sorted_identity, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    firsts, seconds = [], []
    for size in torch.unique(counts).tolist():  # groups of equal size at once
        if size < 2:
            continue
        group_starts = starts[counts == size]
        i, j = torch.triu_indices(size, size, 1, device=identity.device)
        firsts.append((group_starts[:, None] + i[None, :]).reshape(-1))
        seconds.append((group_starts[:, None] + j[None, :]).reshape(-1))
    if not firsts:
        empty = torch.empty(0, dtype=torch.long, device=identity.device)
        return empty, empty
    x, y = order[torch.cat(firsts)], order[torch.cat(seconds)]
    a, b = torch.minimum(x, y), torch.maximum(x, y)
    by_row = torch.argsort(a * identity.numel() + b)
    return a[by_row], b[by_row]


def score_blocks(z: torch.Tensor, identity: torch.Tensor, bound: float = -math.inf):
    """Per block of rows i: (genuine scores, impostor scores ≥ ``bound``) of the pairs i < j.

    The block's scores are rows start..stop−1 against columns start..N−1 (the upper
    triangle and the diagonal block). Genuine scores are read at the genuine pairs' places;
    impostor scores are those ≥ ``bound`` above the diagonal whose identities differ. All on the
    device of ``z``.
    """
    n, device = z.shape[0], z.device
    rows = max(1, _BLOCK_ENTRIES // max(n, 1))
    identity = identity.to(device)
    first, second = genuine_pairs(identity)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        scores = z[start:stop] @ z[start:].T
        lo, hi = torch.searchsorted(first, torch.tensor([start, stop], device=device)).tolist()
        genuine = scores[first[lo:hi] - start, second[lo:hi] - start]
        if bound == -math.inf:
            upper = torch.arange(start, n, device=device)[None, :] > torch.arange(start, stop, device=device)[:, None]
            impostor = scores[upper & (identity[start:stop, None] != identity[None, start:])]
            pairs = None
        else:
            i, j = (scores >= bound).nonzero(as_tuple=True)
            i, j = i + start, j + start
            keep = (j > i) & (identity[i] != identity[j])
            i, j = i[keep], j[keep]
            impostor = scores[i - start, j - start]
            pairs = (i, j)
        yield genuine, impostor, pairs


def pair_scores(embeddings: torch.Tensor, identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All genuine and all impostor cosine scores, i < j. Holds every score: small N only."""
    z, identity = prepare_embeddings(embeddings, identity)
    genuine, impostor = [], []
    for g, i, _ in score_blocks(z, identity):
        genuine.append(g)
        impostor.append(i)
    cat = lambda parts: torch.cat(parts) if parts else torch.empty(0, dtype=z.dtype, device=z.device)  # noqa: E731
    return cat(genuine), cat(impostor)


#: Rows of the sample from which the bound L below τ is estimated.
_SAMPLE_ROWS = 256


def _lower_bound(z: torch.Tensor, identity: torch.Tensor, keep: int, n_impostor: int) -> float:
    """A score L that, with a wide margin, at least ``keep`` impostor scores reach (−inf if unsure).

    From the impostor scores of evenly spaced sample rows against all others (each pair
    once): the sample holds m of them, of which m·p are expected at or above τ
    (p = keep / n_impostor); L is the sample score of rank 2·m·p + 10·√(m·p) + 10 from the top.
    """
    n = z.shape[0]
    # the sample rows on the CPU (the same rows whatever the device), then moved over
    picked = torch.unique(torch.linspace(0, n - 1, min(n, _SAMPLE_ROWS), device="cpu").round().long()).to(z.device)
    scores = z[picked] @ z.T
    later = torch.arange(n, device=z.device)[None, :] > picked[:, None]  # each pair once, as i < j
    impostor = scores[later & (identity[picked, None] != identity[None, :])]
    m = impostor.numel()
    expected = m * keep / n_impostor
    rank = int(math.ceil(2.0 * expected + 10.0 * math.sqrt(expected) + 10.0))
    if rank >= m:
        return -math.inf
    return float(torch.topk(impostor, rank).values[-1])


#: Impostor pairs a verification pass keeps, with their places, for measures at its threshold (16 bytes each).
_KEPT_PAIRS_MAX = 16_000_000


@dataclass
class ScoredPairs:
    """The scores one verification pass saw, for measures at its threshold without a pass of their own.

    ``genuine``: the scores of every genuine pair, in the order of :func:`genuine_pairs`;
    ``impostor_first`` / ``impostor_second`` / ``impostor``: every impostor pair (a < b) whose score
    is ≥ ``bound``, with that score. ``bound`` ≤ the pass's τ, so every impostor pair accepted at τ
    (or at any higher threshold) is among them. All on the embeddings' device; ``n``: the samples.
    """

    n: int
    genuine: torch.Tensor
    impostor_first: torch.Tensor
    impostor_second: torch.Tensor
    impostor: torch.Tensor
    bound: float

    def above(self, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The impostor pairs (a, b) with score > ``tau`` (``tau`` ≥ ``bound``): (a, b, score)."""
        if tau < self.bound:
            raise AnalysisError(f"the kept impostor scores start at {self.bound:.6g}, above the threshold {tau:.6g}")
        accepted = self.impostor.double() > tau
        return self.impostor_first[accepted], self.impostor_second[accepted], self.impostor[accepted]


@torch.no_grad()
def verification(embeddings: torch.Tensor, identity: torch.Tensor, fmr: float = 1e-3) -> Verification:
    """TAR at false-match rate ``fmr`` over all pairs of ``embeddings`` (N, D), scored by cosine.

    See the module docstring for the threshold convention (τ = the (⌊fmr·n⌋+1)-th highest
    impostor score; accept when score > τ). Raises :class:`AnalysisError` when there are
    no genuine pairs (every identity has one image) or no impostor pairs (one identity).
    """
    return scored_verification(embeddings, identity, fmr, keep_pairs=False)[0]


@torch.no_grad()
def scored_verification(embeddings: torch.Tensor, identity: torch.Tensor, fmr: float = 1e-3, keep_pairs: bool = True
                        ) -> tuple[Verification, ScoredPairs | None]:
    """:func:`verification` and, with ``keep_pairs``, the :class:`ScoredPairs` its pass saw.

    The scores are ``None`` where the pass kept no bound below τ (few pairs, a large ``fmr``, the
    slow second pass) or more than 16 million impostor pairs above it; a measure then makes its own pass.
    """
    if not (isinstance(fmr, (int, float)) and 0.0 < float(fmr) < 1.0):
        raise AnalysisError(f"fmr must be a number in (0, 1), got {fmr!r}")
    z, identity = prepare_embeddings(embeddings, identity)
    n = z.shape[0]
    _, counts = torch.unique(identity, return_counts=True)
    n_genuine = int((counts * (counts - 1) // 2).sum())
    n_impostor = n * (n - 1) // 2 - n_genuine
    if n_genuine == 0:
        raise AnalysisError(
            f"identity: no genuine pairs — each of the {counts.numel()} identities has a single image; "
            "verification needs at least one identity with two images"
        )
    if n_impostor == 0:
        raise AnalysisError(f"identity: no impostor pairs — all {n} images belong to one identity")
    k = int(math.floor(float(fmr) * n_impostor))
    keep = k + 1  # the k + 1 highest impostor scores decide τ
    bound = _lower_bound(z, identity, keep, n_impostor)
    genuine_parts, kept, places = [], [], []
    held = 0
    for genuine, impostor, pairs in score_blocks(z, identity, bound):
        genuine_parts.append(genuine)
        kept.append(impostor)
        held += impostor.numel()
        if keep_pairs and pairs is not None and held <= _KEPT_PAIRS_MAX:
            places.append(pairs)
    candidates, genuine = torch.cat(kept), torch.cat(genuine_parts)
    scored = None
    if candidates.numel() < keep:  # the bound was too high: keep a running top k + 1 instead
        top = torch.empty(0, dtype=z.dtype, device=z.device)
        for _, impostor, _ in score_blocks(z, identity):
            merged = torch.cat([top, impostor])
            top = torch.topk(merged, keep).values if merged.numel() > keep else merged
        candidates = top
    elif keep_pairs and bound != -math.inf and held <= _KEPT_PAIRS_MAX:
        first = torch.cat([p[0] for p in places]) if places else torch.empty(0, dtype=torch.long, device=z.device)
        second = torch.cat([p[1] for p in places]) if places else torch.empty(0, dtype=torch.long, device=z.device)
        scored = ScoredPairs(n, genuine, first, second, candidates, bound)
    threshold = float(torch.topk(candidates, keep).values[k])
    tar = float((genuine > threshold).double().mean())
    result = Verification(tar=tar, fmr=float(fmr), threshold=threshold, genuine_pairs=n_genuine, impostor_pairs=n_impostor)
    return result, scored


@torch.no_grad()
def listed_pair_verification(embeddings: torch.Tensor, identity: torch.Tensor, pairs: torch.Tensor, fmr: float = 1e-3) -> Verification:
    """TAR at ``fmr`` over the listed ``pairs`` (M, 2) only, as a verification file (lfw.bin) defines them.

    Same threshold convention as :func:`verification`, over the impostor pairs of the list (a pair is
    genuine when its two samples share an identity). Raises :class:`AnalysisError` without genuine or
    impostor pairs in the list.
    """
    if not (isinstance(fmr, (int, float)) and 0.0 < float(fmr) < 1.0):
        raise AnalysisError(f"fmr must be a number in (0, 1), got {fmr!r}")
    z, identity = prepare_embeddings(embeddings, identity)
    pairs = torch.as_tensor(pairs, dtype=torch.int64, device=z.device)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or bool(((pairs < 0) | (pairs >= z.shape[0])).any()):
        raise AnalysisError(f"pairs must be (M, 2) indices of the {z.shape[0]} samples, got shape {tuple(pairs.shape)}")
    scores = (z[pairs[:, 0]] * z[pairs[:, 1]]).sum(1)
    same = identity[pairs[:, 0]] == identity[pairs[:, 1]]
    genuine, impostor = scores[same], scores[~same]
    if genuine.numel() == 0 or impostor.numel() == 0:
        raise AnalysisError(f"the {pairs.shape[0]} listed pairs hold {genuine.numel()} genuine and {impostor.numel()} impostor pairs; "
                            "verification needs both")
    k = int(math.floor(float(fmr) * impostor.numel()))
    threshold = float(torch.sort(impostor, descending=True).values[k])
    tar = float((genuine > threshold).double().mean())
    return Verification(tar=tar, fmr=float(fmr), threshold=threshold, genuine_pairs=int(genuine.numel()), impostor_pairs=int(impostor.numel()))


@dataclass
class DecisionErrors:
    """The errors of a verification decision at threshold ``tau`` (accept when score > τ).

    ``false_non_match`` and ``false_match``: (M, 2) int64 pairs (a, b), a < b, with their
    ``…_score`` (M,), in descending order of how far the score sits on the wrong side of τ; all
    on the device of the embeddings.
    """

    verification: Verification
    false_non_match: torch.Tensor
    false_non_match_score: torch.Tensor
    false_match: torch.Tensor
    false_match_score: torch.Tensor

    @property
    def tau(self) -> float:
        return self.verification.threshold


@torch.no_grad()
def decision_errors(
    embeddings: torch.Tensor, identity: torch.Tensor, fmr: float = 1e-3, known: Verification | None = None,
    scored: ScoredPairs | None = None,
) -> DecisionErrors:
    """Every false non-match (genuine, score ≤ τ) and false match (impostor, score > τ) at ``fmr``.

    τ as in :func:`verification`; at most ⌊fmr·n⌋ false matches by construction. Raises
    :class:`AnalysisError` with the minimum when there are too few impostor pairs to set τ
    at ``fmr`` (fewer than 1/fmr: then τ would be the highest impostor score and the rate
    unmeasurable). ``known``: the :func:`verification` of these embeddings at ``fmr``, if already
    computed (its τ is reused); ``scored``: the scores of its pass (:func:`scored_verification`), so
    that no pass of its own is needed.
    """
    result = known if known is not None and known.fmr == float(fmr) else verification(embeddings, identity, fmr)
    if result.impostor_pairs * float(fmr) < 1.0:
        minimum = int(math.ceil(1.0 / float(fmr)))
        raise AnalysisError(
            f"{result.impostor_pairs} impostor pairs are too few to set a threshold at FMR {fmr:g}: "
            f"at least {minimum:,} are needed (more identities or images, or a larger fmr)"
        )
    z, identity = prepare_embeddings(embeddings, identity)
    tau = result.threshold
    first, second = genuine_pairs(identity)
    if scored is not None and scored.n == z.shape[0] and known is result:
        genuine = scored.genuine
        a, b, fm_score = scored.above(tau)
        fm = torch.stack([a, b], 1)
    else:
        genuine_scores, match_pairs, match_scores = [], [], []
        for genuine, impostor, pairs in score_blocks(z, identity, math.nextafter(tau, math.inf)):
            genuine_scores.append(genuine)
            match_pairs.append(torch.stack(pairs, 1))
            match_scores.append(impostor)
        genuine = torch.cat(genuine_scores)
        fm, fm_score = torch.cat(match_pairs), torch.cat(match_scores)
    missed = genuine <= tau
    fnm = torch.stack([first[missed], second[missed]], 1)
    fnm_score = genuine[missed]
    fm_keep = fm_score > tau
    fm, fm_score = fm[fm_keep], fm_score[fm_keep]
    order = torch.argsort(fnm_score, stable=True)  # lowest genuine score first
    order_fm = torch.argsort(fm_score, descending=True, stable=True)  # highest impostor score first
    return DecisionErrors(result, fnm[order], fnm_score[order], fm[order_fm], fm_score[order_fm])


def equal_error_rate(genuine: torch.Tensor, impostor: torch.Tensor) -> tuple[float, float]:
    """(EER, threshold) from genuine and impostor scores (e.g. from :func:`pair_scores`).

    At each candidate threshold t (every observed score), FNMR(t) = P(genuine ≤ t) and
    FMR(t) = P(impostor > t); the EER is ½(FMR + FNMR) at the t where |FMR − FNMR| is least.
    Computed on the device of ``genuine``.
    """
    device = genuine.device if isinstance(genuine, torch.Tensor) else torch.device("cpu")
    genuine = torch.as_tensor(genuine, dtype=torch.float64, device=device).flatten()
    impostor = torch.as_tensor(impostor, dtype=torch.float64, device=device).flatten()
    if genuine.numel() == 0 or impostor.numel() == 0:
        raise AnalysisError("equal_error_rate needs at least one genuine and one impostor score")
    candidates = torch.unique(torch.cat([genuine, impostor]))
    g = torch.sort(genuine).values
    i = torch.sort(impostor).values
    fnmr = torch.searchsorted(g, candidates, right=True).double() / g.numel()
    fmr = 1.0 - torch.searchsorted(i, candidates, right=True).double() / i.numel()
    best = int(torch.argmin((fmr - fnmr).abs()))
    return float(0.5 * (fmr[best] + fnmr[best])), float(candidates[best])
