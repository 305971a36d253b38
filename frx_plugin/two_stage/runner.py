"""The two-stage path's state and one fold of it: train a decoder, decode the held-out fold, read the faces."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F

from frx_plugin.attributes import Attribute
from frx_plugin.errors import DecoderDiverged, DecoderError, EstimatorError
from frx_plugin.interfaces import AttributeEstimator, DecoderTask, FaceDecoder
from frx_plugin.leakage import bootstrap_estimate, identity_folds
from frx_plugin.model import ModelAdapter, eval_mode, hook_embedder, model_device
from frx_plugin.plugins import TRAINED_ESTIMATOR, require_estimator
from frx_plugin.probe import ProbeSet
from frx_plugin.randomness import seeded
from frx_plugin.two_stage.measures import (
    READABLE_MIN,
    direct_readings,
    genuine_mean_cosine,
    recovery_significance,
    sample_spread,
    spearman,
    within_fold_pairs,
)


@dataclass(frozen=True)
class TwoStageConfig:
    """Options of the two-stage path (validated on construction).

    ``decoder``: a name registered through ``frx_register_decoders`` (built in: ``"conv"``, and
    ``"stylegan2"``, the paper's StyleGAN2 decoder, with ``decoder_options={"generator": PATH, ...}``);
    ``decoder_options``: keyword arguments for its factory. ``estimator``: an estimator spec (a name
    registered through ``frx_register_estimators``, ``insightface:FILE.onnx``) or a tuple of them, read
    side by side; ``"trained"`` among them reads what the others do not, with heads trained on the
    probe set's own faces on these folds. ``None``: the first registered estimator that can read the
    probe set, and ``trained`` for the labelled attributes it does not read (see :func:`choose_estimator`).
    ``n_folds``: identity-disjoint folds (one decoder each). ``samples``: decoder samples per z.
    ``steps``: optimisation steps of each decoder per pass. ``identity_loss``: train with the
    recognition model's identity loss (needs a torch module). ``figure_faces``: held-out faces
    kept for ``decoded.png``.
    """

    decoder: str = "conv"
    estimator: str | tuple[str, ...] | None = None
    n_folds: int = 2
    samples: int = 4
    steps: int = 200
    n_bootstrap: int = 200
    seed: int = 0
    batch_size: int = 128
    identity_loss: bool = True
    figure_faces: int = 6
    decoder_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("n_folds", "samples", "steps", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"two-stage {key} must be a positive integer, got {value!r}")
        if isinstance(self.estimator, list):
            object.__setattr__(self, "estimator", tuple(self.estimator))
        specs = (self.estimator,) if isinstance(self.estimator, str) else self.estimator or ()
        if not all(isinstance(spec, str) and spec for spec in specs) or (self.estimator is not None and not specs):
            raise ValueError(f"two-stage estimator must be an estimator spec, a tuple of them or None, got {self.estimator!r}")
        if self.n_folds < 2:
            raise ValueError(f"two-stage n_folds must be at least 2 (identity-disjoint decoders), got {self.n_folds}")
        for key in ("n_bootstrap", "figure_faces"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"two-stage {key} must be a non-negative integer, got {value!r}")


# --------------------------------------------------------------------------- the estimator


def choose_estimator(probe: ProbeSet, spec: str | Sequence[str] | None, folds: torch.Tensor, seed: int = 0) -> tuple[str, AttributeEstimator]:
    """Stage 2's estimator for ``probe`` (the name it is reported by, and the estimator).

    ``spec``: estimator specs read side by side, each taking the attributes it reads first (a plugin's
    estimator takes precedence); ``trained`` among them reads the labelled attributes the others do
    not, with heads trained on the probe set's own faces on ``folds`` (the decoders'). ``None``: the
    first registered estimator that reads the probe set, then ``trained`` for the rest where the
    probe set can train it. No estimator is an :class:`EstimatorError` naming the installed ones.
    """
    from frx_plugin.estimators import CombinedEstimator
    from frx_plugin.plugins import find_estimator
    from frx_plugin.specs import open_estimator, parse_spec
    from frx_plugin.two_stage.probe_estimator import load_or_train_probe_estimator

    specs = [spec] if isinstance(spec, str) else list(spec or ())
    for text in specs:
        parsed = parse_spec(text, "estimator")
        if parsed.kind == TRAINED_ESTIMATOR and (parsed.options or parsed.argument is not None):
            raise EstimatorError(f"estimator {text!r}: on the two-stage path 'trained' takes no argument or options; it is trained "
                                 "on the decoders' folds (their number and seed are the two-stage options, --decoder-folds and --seed)")
    chosen: list[tuple[str, Any]] = []
    if specs:
        for text in specs:
            if parse_spec(text, "estimator").kind != TRAINED_ESTIMATOR:
                chosen.append((text, open_estimator(text, probe)))
        with_trained = any(parse_spec(text, "estimator").kind == TRAINED_ESTIMATOR for text in specs)
    else:
        found = find_estimator(probe)
        chosen = [found] if found is not None else []
        with_trained = True
    read = {name for _, estimator in chosen for name in estimator.attributes}
    rest = [a.name for a in probe.schema if a.name not in read]
    if with_trained and rest:
        if int(torch.unique(probe.identity[folds >= 0]).numel()) < 2 or not hasattr(probe, "images"):
            if specs:
                raise EstimatorError(f"estimator 'trained' needs a probe set with images of at least two identities; {probe.source} has not")
        else:
            trained = load_or_train_probe_estimator(probe, folds, seed, say=None).only(rest)
            chosen.append((TRAINED_ESTIMATOR, trained))
    if not chosen:
        return require_estimator(probe, None)  # raises, naming the installed estimators
    if len(chosen) == 1:
        return chosen[0]
    combined = CombinedEstimator([estimator for _, estimator in chosen])
    return "+".join(name for name, _ in chosen), cast(AttributeEstimator, combined)  # it reads as its members do


# --------------------------------------------------------------------------- pairs, errors, R_k


@dataclass
class FoldResult:
    """What one fold's decoder gave: readings ``{attribute: (n_f, S)}`` of its held-out faces ``rows``,
    ``similarity`` ``(n_f, S)`` = cos(f(x̂), z), the fit record (or ``error``), and figure faces."""

    fold: int
    rows: torch.Tensor
    readings: dict[str, torch.Tensor]
    similarity: torch.Tensor
    fit: dict[str, Any] | None = None
    error: str | None = None
    originals: torch.Tensor | None = None
    decoded: torch.Tensor | None = None


class TwoStage:
    """The two-stage path's state across passes: the estimator, one decoder per fold (warm start).

    ``probe``: the probe set; ``estimator``: an :class:`~frx_plugin.estimators.AttributeEstimator`
    (default: the one registered for the probe set, by ``config.estimator``). Bad combinations are
    errors at construction: an estimator that cannot take the probe's image shape (the decoder
    makes faces of that shape) names both. Attributes the estimator does not output are skipped
    with a warning that names them (``self.warnings``).
    """

    def __init__(self, probe: ProbeSet, config: TwoStageConfig = TwoStageConfig(), estimator: AttributeEstimator | None = None,
                 estimator_name: str | None = None) -> None:
        from frx_plugin.plugins import require_decoder

        self.probe, self.config = probe, config
        require_decoder(config.decoder)
        self.folds = identity_folds(probe.identity, config.n_folds, config.seed)
        if estimator is None:
            estimator_name, estimator = choose_estimator(probe, config.estimator, self.folds, config.seed)
        self.estimator, self.estimator_name = estimator, estimator_name or type(estimator).__name__
        self.output_shape = tuple(int(v) for v in probe.images(torch.arange(1)).shape[1:])
        self._check_estimator_shape(self.output_shape, f"the probe set's faces ({probe.source})")
        self.pairs = within_fold_pairs(probe.identity, self.folds, config.seed)
        offered = set(estimator.attributes)
        self.attributes = [a.name for a in probe.schema if a.name in offered]
        missing = [a.name for a in probe.schema if a.name not in offered]
        self.warnings: list[str] = []
        if missing:
            self.warnings.append(f"two-stage: estimator {self.estimator_name!r} has no output for {missing}; they are skipped")
        if not self.attributes:
            raise EstimatorError(f"estimator {self.estimator_name!r} outputs none of the probe set's attributes {list(probe.schema.names)}")
        self.decoders: dict[int, FaceDecoder] = {}
        #: the folds whose decoders the latest pass trained in this process and that did not fail
        self.fresh_folds: set[int] = set()
        self._states: dict[int, dict[str, torch.Tensor]] = {}
        self._real: dict[str, torch.Tensor] | None = None

    def _check_estimator_shape(self, shape: tuple[int, ...], what: str) -> None:
        wanted = tuple(int(v) for v in self.estimator.input_shape)
        if tuple(shape) != wanted:
            raise EstimatorError(
                f"decoder {self.config.decoder!r} makes images of shape {tuple(shape)} ({what}) but estimator "
                f"{self.estimator_name!r} takes {wanted}: use an estimator for {tuple(shape)} or a probe set of {wanted} faces"
            )

    # -- warm start ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The decoders' weights, ``fold<k>.<parameter>`` (tensors only)."""
        for fold, decoder in self.decoders.items():
            self._states[fold] = decoder.state_dict()
        return {f"fold{fold}.{key}": value for fold, state in self._states.items() for key, value in state.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        states: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if not head.startswith("fold") or not rest:
                raise DecoderError(f"two-stage state: unexpected entry {key!r} (expected 'fold<k>.<parameter>')")
            states.setdefault(int(head[4:]), {})[rest] = value
        self._states = states
        for fold, decoder in self.decoders.items():
            if fold in states:
                decoder.load_state_dict(states[fold])

    def decoder(self, fold: int, embedding_dim: int, device: torch.device | None = None) -> FaceDecoder:
        """The decoder of ``fold`` (made on first use; loaded from a saved state if there is one)."""
        if fold not in self.decoders:
            from frx_plugin.plugins import create_decoder

            # initial weights from (seed, fold) alone, not from the process's random state: a fold's decoder is the
            # same whichever process makes it, and whatever ran before
            with seeded(self.config.seed * 1_000_003 + fold):
                decoder = create_decoder(self.config.decoder, embedding_dim, self.output_shape, **dict(self.config.decoder_options))
            shape = tuple(int(v) for v in decoder.output_shape)
            self._check_estimator_shape(shape, f"its output_shape for {embedding_dim}-d embeddings")
            if fold in self._states:
                decoder.load_state_dict(self._states[fold])
            if device is not None and hasattr(decoder, "to"):
                decoder.to(device)
            self.decoders[fold] = decoder
        return self.decoders[fold]

    # -- reading faces ---------------------------------------------------------------------------
    def read(self, images: torch.Tensor, fold: int | None = None) -> dict[str, torch.Tensor]:
        """E's readings (float64, one per image) of every attribute the pass measures; faces of ``fold`` are read by
        an estimator trained fold by fold (``estimate_fold``) with the heads that never saw that fold's identities."""
        out: dict[str, list[torch.Tensor]] = {name: [] for name in self.attributes}
        estimate_fold: Callable[..., Any] | None = getattr(self.estimator, "estimate_fold", None)  # one trained fold by fold
        by_fold = fold is not None and estimate_fold is not None
        for start in range(0, images.shape[0], self.config.batch_size):
            chunk = images[start : start + self.config.batch_size]
            readings = estimate_fold(chunk, fold) if by_fold and estimate_fold is not None else self.estimator.estimate(chunk)
            for name in self.attributes:
                value = readings.get(name) if isinstance(readings, Mapping) else None
                if value is None:
                    raise EstimatorError(f"estimator {self.estimator_name!r} gave no reading of {name!r}, which it lists in its attributes")
                value = torch.as_tensor(value).detach().cpu().reshape(-1)
                if value.numel() != chunk.shape[0]:
                    raise EstimatorError(f"estimator {self.estimator_name!r}: {value.numel()} readings of {name!r} for {chunk.shape[0]} images")
                out[name].append(value.to(torch.float64))
        return {name: torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64) for name, parts in out.items()}

    def real_readings(self) -> dict[str, torch.Tensor]:
        """E's readings of the probe set's real faces (made once: they depend on neither model nor decoder)."""
        if self._real is None:
            real = {name: torch.full((len(self.probe),), math.nan, dtype=torch.float64) for name in self.attributes}
            for fold in range(self.config.n_folds):  # each fold's faces read as its decoded faces are (held-out heads)
                rows = (self.folds == fold).nonzero().squeeze(1)
                for indices, images in self.probe.batches(rows, self.config.batch_size):
                    for name, value in self.read(images, fold).items():
                        real[name][indices] = value
            self._real = real
        return self._real

    # -- one fold --------------------------------------------------------------------------------
    def run_fold(self, fold: int, embeddings: torch.Tensor, model: Any, embed: Callable[[torch.Tensor], torch.Tensor]) -> FoldResult:
        """Train fold ``fold``'s decoder on the other folds' faces, decode and read its own faces.

        ``embeddings`` (N, D) of the whole probe set; ``model`` the recognition model (its
        identity loss, when it is a torch module and ``identity_loss`` is on); ``embed`` maps
        images to L2-normalised embeddings without gradients (the ``frx_embed`` hook). A
        diverging decoder gives a result with ``error`` and NaN readings.
        """
        config = self.config
        rows = (self.folds == fold).nonzero().squeeze(1)
        train = (self.folds != fold).nonzero().squeeze(1)
        device = model_device(model)
        decoder = self.decoder(fold, embeddings.shape[1], device)
        nan = {name: torch.full((rows.numel(), config.samples), math.nan, dtype=torch.float64) for name in self.attributes}
        empty = torch.full((rows.numel(), config.samples), math.nan, dtype=torch.float64)
        images = torch.cat([x for _, x in self.probe.batches(train, config.batch_size)])
        identity_embedder: Callable[[torch.Tensor], torch.Tensor] | None = None
        adapter = ModelAdapter.wrap(model)
        module = adapter.module
        if config.identity_loss and isinstance(module, torch.nn.Module):
            identity_embedder = lambda x: F.normalize(adapter(x), dim=1)  # noqa: E731 - differentiable, through the model contract
        try:
            with eval_mode(module):
                fit = decoder.fit(DecoderTask(embeddings[train], images, identity_embedder, steps=config.steps, seed=config.seed + 104_729 * fold))
        except DecoderDiverged as exc:
            return FoldResult(fold, rows, nan, empty, error=f"decoder of fold {fold} diverged: {exc}")
        self._states[fold] = decoder.state_dict()
        decoded = decoder.decode(embeddings[rows], config.samples, seed=config.seed + fold)  # (n_f, S, C, H, W)
        flat = decoded.reshape(-1, *decoded.shape[2:])
        if not bool(torch.isfinite(flat).all()):
            return FoldResult(fold, rows, nan, empty, fit=fit.to_record(), error=f"decoder of fold {fold} made non-finite images")
        readings = {name: value.view(rows.numel(), config.samples) for name, value in self.read(flat, fold).items()}
        z_decoded = torch.cat([embed(flat[i : i + config.batch_size]) for i in range(0, flat.shape[0], config.batch_size)])
        similarity = (z_decoded.to(torch.float64).cpu() * embeddings[rows].to(torch.float64).repeat_interleave(config.samples, 0)).sum(1)
        result = FoldResult(fold, rows, readings, similarity.view(rows.numel(), config.samples), fit=fit.to_record())
        if config.figure_faces:
            keep = rows[: config.figure_faces]
            result.originals = self.probe.images(keep)
            result.decoded = decoded[: config.figure_faces]
        return result

    # -- assembling ----------------------------------------------------------------------------
    def assemble(self, results: Sequence[FoldResult]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Readings ``{attribute: (N, S)}`` and similarity ``(N, S)`` of all faces from the folds' results."""
        n, s = len(self.probe), self.config.samples
        readings = {name: torch.full((n, s), math.nan, dtype=torch.float64) for name in self.attributes}
        similarity = torch.full((n, s), math.nan, dtype=torch.float64)
        for result in results:
            for name in self.attributes:
                readings[name][result.rows] = result.readings[name]
            similarity[result.rows] = result.similarity
        return readings, similarity

    def pack(self, result: FoldResult) -> torch.Tensor:
        """``(N, (A + 1)·S)`` float64, NaN outside the fold's rows: one result as a tensor for a gather."""
        readings, similarity = self.assemble([result])
        return torch.cat([readings[name] for name in self.attributes] + [similarity], 1)

    def unpack(self, packed: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        s = self.config.samples
        readings = {name: packed[:, i * s : (i + 1) * s] for i, name in enumerate(self.attributes)}
        return readings, packed[:, len(self.attributes) * s :]

    def measures(
        self,
        embeddings: torch.Tensor,
        readings: Mapping[str, torch.Tensor],
        similarity: torch.Tensor,
        fits: Mapping[int, dict[str, Any] | None] | None = None,
        errors: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The report's ``recovery`` entry from the assembled readings (see the module for each number)."""
        from frx_plugin.counterfactual import impostor_mean_cosine
        from frx_plugin.randomness import poisson_bootstrap_weights

        config, probe = self.config, self.probe
        identity = probe.identity
        pairs = self.pairs
        has_pair = pairs >= 0
        partner = pairs.clamp_min(0)
        weights = poisson_bootstrap_weights(identity, config.seed, config.n_bootstrap) if config.n_bootstrap else None
        direct = direct_readings(embeddings, probe.labels, probe.schema, self.folds)
        real = self.real_readings()

        def significance(attribute: Attribute, values: torch.Tensor) -> dict[str, float]:
            target = probe.labels[attribute.name].clone()
            target = torch.where(has_pair, target, torch.full_like(target, -1 if attribute.discrete else math.nan))
            baseline = values[partner]
            point = recovery_significance(attribute, target, values, baseline)
            replicates = recovery_significance(attribute, target, values, baseline, weights) if weights is not None else None
            estimate = bootstrap_estimate(point, replicates)
            return {"value": estimate.value, "low": estimate.low, "high": estimate.high}

        attributes: dict[str, dict[str, Any]] = {}
        for attribute in probe.schema:
            name = attribute.name
            entry: dict[str, Any] = {"kind": attribute.kind, "group": attribute.group, "direct": significance(attribute, direct[name])}
            if name in readings:
                entry["two_stage"] = significance(attribute, readings[name])
                entry["real_images"] = significance(attribute, real[name])["value"]
                labels = probe.labels[name]
                scale = float(labels[~torch.isnan(labels)].std()) if not attribute.discrete else 1.0
                entry["spread"] = sample_spread(attribute, readings[name], scale)
                entry["estimator_accuracy"] = dict(self.estimator.accuracy.get(name, {}))
                entry["readable"] = bool(entry["real_images"] > READABLE_MIN)
                if not entry["readable"]:
                    entry["reason"] = (
                        f"estimator {self.estimator_name!r} cannot read {name!r} from real faces "
                        f"(R on real images {entry['real_images']:.2f} ≤ {READABLE_MIN}); its two-stage value says nothing about the representation"
                    )
            else:
                entry["reason"] = f"estimator {self.estimator_name!r} has no output for {name!r}"
            attributes[name] = entry
        measured = [a for a in attributes.values() if "two_stage" in a and a.get("readable")]
        weights_one = torch.ones(1, torch.unique(identity).numel(), dtype=torch.float64)
        z = F.normalize(embeddings.to(torch.float64), dim=1)
        genuine = genuine_mean_cosine(z, identity)
        finite = similarity[torch.isfinite(similarity)]
        return {
            "decoder": self.config.decoder,
            "estimator": self.estimator_name,
            "samples": config.samples,
            "folds": config.n_folds,
            "steps": config.steps,
            "identity_similarity": {
                "decoded": float(finite.mean()) if finite.numel() else math.nan,
                "genuine": genuine,
                "impostor": float(impostor_mean_cosine(z, identity, weights_one)[0]),
            },
            "decoder_fits": {str(k): v for k, v in (fits or {}).items()},
            "errors": list(errors),
            "spearman_two_stage_vs_direct": spearman(
                [a["two_stage"]["value"] for a in measured], [a["direct"]["value"] for a in measured]
            ),
            "attributes": attributes,
        }


def run_two_stage(
    two_stage: TwoStage,
    embeddings: torch.Tensor,
    model: Any,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    folds: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[FoldResult]]:
    """One whole two-stage pass in this process: every fold (or ``folds``), then the measures.

    ``embed``: images → L2-normalised embeddings without gradients (default: the ``frx_embed``
    hook with ``model``). Returns the ``recovery`` entry and the fold results (for the figure).
    """
    if embed is None:
        embed = hook_embedder(model)
    results = [two_stage.run_fold(f, embeddings, model, embed) for f in (folds if folds is not None else range(two_stage.config.n_folds))]
    readings, similarity = two_stage.assemble(results)
    measures = two_stage.measures(
        embeddings, readings, similarity, {r.fold: r.fit for r in results}, [r.error for r in results if r.error]
    )
    return measures, results
