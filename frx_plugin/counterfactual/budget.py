"""How many counterfactuals a pass makes: a budget scaled to the probe set, so their cost is bounded.

On the exact path every changed face is rendered and embedded by the model, as a probe image is
(measured: the same seconds per face as per probe image, within noise, on a MobileFaceNet-sized model
at 112×112). A pass that makes at most :data:`FACES_PER_PROBE_IMAGE` changed faces per probe image
spends on them at most that share of an embedding of the probe set, so with its counterfactuals it
costs at most about 1.75× a pass without them, whatever the probe set's size and the model — with a
margin under 2× for the scoring and for timing noise (``benchmarks/pass_cost.py`` measures it on the
demo's model and on the MobileFaceNet-sized one). Each attribute gets an equal share of those faces:
one per significance row, and one per explained error (an error pair changes one face).

The decoded path renders and embeds as the exact path does, and also the unedited rendering of each face
it changes: its budget counts that as one more attribute. The latent path renders nothing (it moves z
along the probe heads): it gets the full default study.
"""

from __future__ import annotations

from dataclasses import dataclass

from frx_plugin.config import MAX_ERROR_PAIRS, SIGNIFICANCE_SAMPLES

#: changed faces a default pass makes per probe image (rendered and embedded: about the cost of embedding one)
FACES_PER_PROBE_IMAGE = 0.75
#: the least a scaled study makes of each attribute: significance rows, and errors of each kind explained
MIN_ROWS = 2
MIN_ERROR_PAIRS = 1


@dataclass(frozen=True)
class CounterfactualBudget:
    """``rows`` probe rows for identity significance, ``error_pairs`` errors of each kind explained,
    ``scaled``: whether they were scaled to the probe set (else given, or the latent path's defaults)."""

    rows: int
    error_pairs: int
    scaled: bool

    def to_record(self) -> dict[str, int | bool]:
        return {"rows": self.rows, "error_pairs": self.error_pairs, "scaled": self.scaled}


def counterfactual_budget(n_probe: int, n_attributes: int, path: str | None, significance_samples: int | None = None,
                          max_error_pairs: int | None = None) -> CounterfactualBudget:
    """The counterfactual study of a pass over ``n_probe`` images changing ``n_attributes`` attributes.

    Given values stand; a ``None`` is scaled on the exact path (changed faces ≤ 0.75 × ``n_probe``: per
    attribute ``f = 0.75 n_probe // n_attributes`` faces, ``f // 10`` of them for errors of each kind, the
    rest for significance rows; at most the defaults, 64 rows and 8 pairs; at least 2 rows and 1 pair) and
    is the default on the latent path (on the decoded path, as on the exact one with one more attribute: the
    unedited renderings). The same numbers on every process (nothing measured goes in).
    """
    scale = path in ("exact", "decoded") and (significance_samples is None or max_error_pairs is None)
    if not scale:
        return CounterfactualBudget(significance_samples or SIGNIFICANCE_SAMPLES, max_error_pairs or MAX_ERROR_PAIRS, False)
    renders = n_attributes + (1 if path == "decoded" else 0)  # the decoded path also renders each face unedited
    faces = max(1, int(FACES_PER_PROBE_IMAGE * n_probe) // max(1, renders))
    pairs = max_error_pairs if max_error_pairs is not None else min(MAX_ERROR_PAIRS, max(MIN_ERROR_PAIRS, faces // 10))
    rows = significance_samples if significance_samples is not None else min(SIGNIFICANCE_SAMPLES, max(MIN_ROWS, faces - 2 * pairs))
    return CounterfactualBudget(rows, pairs, True)
