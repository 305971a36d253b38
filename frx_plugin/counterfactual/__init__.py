"""Counterfactuals: identity significance S_k and pair explanations δ_k.

Change one attribute of a face, hold the rest, and see how far the representation and the
identity score move. Two paths give the changed embedding z^(k):

- **exact**: a generator with attribute controls (hook ``frx_register_generators``; the synthetic
  world is one) re-renders the sample with attribute k changed and the model embeds it;
- **latent**: where no generator can render the probe set, z moves along the direction that
  changes the probe head of attribute k by the amount the edit would, while the heads of every
  other attribute stay fixed: W_k v = Δ and W_j v = 0 (j ≠ k), e holding Δ on attribute k's head
  columns. Of all such moves frx takes the expected one under a Gaussian model of the probe
  embeddings (covariance Σ): v = ΣWᵀ(WΣWᵀ)⁻¹e ("conditional", the default), rather than the
  least Euclidean move v = W⁺e ("least_norm"). Head combinations so nearly dependent that
  holding them all fixed would need an unbounded move (singular values below ``LATENT_RTOL`` of
  the largest) are dropped from the constraints. z^(k) = (z + v)/‖z + v‖.
  Δ is calibrated on the probe set: for discrete attributes the difference of the heads' mean
  scores between the classes (all columns of a categorical attribute), for continuous ones the
  slope of the head's score on the label times the change of the label — shrunk by how much of
  the in-sample separation survives on held-out identities (see :func:`latent_model`), so a
  head that fits noise does not move z. On the synthetic world (``benchmarks/groundtruth.py``)
  the latent S_k rank the 19 attributes as the exact ones do with Spearman 0.92 (least-norm
  moves: 0.66; without the held-out calibration: 0.87).

Edits (the same on both paths): a binary attribute flips, a categorical one moves to the next
class, a continuous one moves by one standard deviation of its labelled values in the probe set.

**Identity significance** S_k = mean_i(1 − cos(z_i, z_i^(k))) / mean over impostor pairs
(1 − cos(z_i, z_j)); intervals from the Poisson bootstrap over identities that the leakage
uses (numerator and denominator re-weighted together).

**Pair explanations**, at the threshold τ that the false-match rate sets on the probe set's
impostor pairs (accept when s > τ): for a false non-match (i, j) (genuine, s ≤ τ), δ_k =
cos(z_i, z_j^(k←i)) − s, j taking i's value of attribute k ("align"); the attributes whose
alignment lifts s above τ decide it. For a false match (impostor, s > τ), j's attribute k
moves *away* from i's value (the edit above where they share it; a continuous value one
standard deviation further from i's), and the attributes whose change drops s to τ or below
decide it. Attributes that cannot change the pair (equal values for an "align", different
classes for an "away") have δ_k = 0; missing labels give NaN.
"""

from frx_plugin.counterfactual.edits import away_values, edit_scale, edit_values
from frx_plugin.counterfactual.explanations import PairExplanation, error_attribution, explain_errors, pair_errors, pair_values, spread
from frx_plugin.counterfactual.latent import LATENT_RTOL, LatentModel, counterfactual_heads, latent_embedder, latent_model
from frx_plugin.counterfactual.measures import (
    choose_counterfactual_path,
    counterfactual_embedder,
    counterfactual_measures,
    counterfactual_rows,
    generator_attributes,
    probe_decision_errors,
)
from frx_plugin.counterfactual.significance import exact_embedder, identity_significance, impostor_mean_cosine
from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import AttributeGenerator, Embedder

__all__ = [
    "AttributeGenerator", "CounterfactualError", "Embedder", "LATENT_RTOL", "LatentModel", "PairExplanation", "away_values",
    "choose_counterfactual_path", "counterfactual_embedder", "counterfactual_heads", "counterfactual_measures", "counterfactual_rows", "edit_scale",
    "edit_values", "error_attribution", "exact_embedder", "explain_errors", "generator_attributes",
    "identity_significance", "impostor_mean_cosine", "latent_embedder", "latent_model", "pair_errors", "pair_values",
    "probe_decision_errors", "spread",
]
