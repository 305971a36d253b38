"""How frx calls the user's model: the model contract.

A :class:`ModelAdapter` holds the module (unwrapped from ``DistributedDataParallel``) and says

- **which output is the embedding** (``embed=``): a callable ``(module, images) -> z``, an attribute
  path such as ``"backbone"`` (that submodule is called on the images), or an index or key of a
  tuple or dict output. Without it a plugin's ``frx_embed`` hook may answer; else frx calls the
  module and, where it must guess (the first element of a tuple, a forward wider than its
  ``backbone``), warns once, naming the option that removes the guess. A forward that gives class
  scores (it ends in a classifier layer, ``fc``/``classifier``/``head`` …) is never embedded as it is:
  frx embeds the features before the classifier (timm's ``forward_head(…, pre_logits=True)``, a
  ``backbone``, or :func:`input_of` the layer; see :mod:`frx_plugin.conventions`) and warns once;
  ``embed='forward'`` embeds the forward's output as it is;
- **the input transform** (``transform=``) from the probe set's RGB in [0, 1] to what the model was
  trained on: a callable, or a preset — ``"unit"`` (as given), ``"arcface"`` (``(x − 0.5) / 0.5``,
  arcface_torch's), ``"imagenet"``, or ``{"mean": …, "std": …, "scale": 255, "channels": "bgr"}``.
  Without it a module that declares its own (a ``frx_transform`` attribute, as frx's built-in
  architectures do) gets that; else frx feeds [0, 1] and warns once;
- **dtype and device**: the images go to the model's device in its floating dtype (``bf16-true``,
  fp16 …), the forward runs in :attr:`ModelAdapter.forward_context` (a loop's autocast); the
  embeddings come back as float32 for the analysis.

Inference (:meth:`ModelAdapter.embed`) runs without gradients in eval mode and puts the module's
mode back; calling the adapter is the differentiable forward (the two-stage path's identity loss).

**Whose buffers.** Under ``DistributedDataParallel(broadcast_buffers=False)`` (arcface_torch's) each
process's BatchNorm statistics drift apart (with ``True``, Lightning's default, they still differ by
the last step's update), while each process embeds its own shard of the probe set: a pass would
measure a blend of models that no process saves. :func:`saved_rank_buffers`
gives every process rank 0's floating buffers for the pass (the rank whose weights the loops
save) and puts each process's own back afterwards.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from frx_plugin.collectives import Collectives
from frx_plugin.conventions import examine_forward, input_of  # noqa: F401 - input_of: an embed= option, frx_plugin.model.input_of
from frx_plugin.errors import ModelInputError
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.probe import ProbeSet

#: ``progress(done, total, stage)``, called after each batch when given.
Progress = Callable[[int, int, str], None]

#: Input presets: (scale, mean, std, channel order) applied to RGB in [0, 1].
TRANSFORMS: dict[str, dict[str, Any]] = {
    "unit": {},
    "arcface": {"mean": 0.5, "std": 0.5},
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
}
_TRANSFORM_KEYS = {"mean", "std", "scale", "channels"}


def unwrap(model: Any) -> Any:
    """The module inside ``DistributedDataParallel`` / ``DataParallel``, the adapter's module, else the model."""
    if isinstance(model, ModelAdapter):
        return model.module
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, parallel) else model


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without torch parameters)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def model_dtype(model: Any) -> torch.dtype:
    """The floating dtype of the model's first floating parameter (float32 without one)."""
    try:
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    except AttributeError:
        pass
    return torch.float32


def _channel_values(value: Any, option: str) -> torch.Tensor:
    values = torch.as_tensor(value, dtype=torch.float32).flatten()
    if values.numel() not in (1, 3) or not bool(torch.isfinite(values).all()):
        raise ValueError(f"transform {option}= must be one number or three (one per channel), got {value!r}")
    return values.view(-1, 1, 1)


def make_transform(transform: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The callable of a ``transform=`` option (``None`` stays ``None``: the guess that [0, 1] is right)."""
    if transform is None or callable(transform):
        return transform
    if isinstance(transform, str):
        if transform not in TRANSFORMS:
            raise ValueError(f"transform={transform!r} is not a preset; the presets are {sorted(TRANSFORMS)}, "
                             "or pass a callable or {'mean': ..., 'std': ..., 'scale': ..., 'channels': 'rgb'|'bgr'}")
        transform = TRANSFORMS[transform]
    if not isinstance(transform, Mapping):
        raise TypeError(f"transform must be a callable, a preset name or a mapping, got {type(transform).__name__}")
    unknown = set(transform) - _TRANSFORM_KEYS
    if unknown:
        raise ValueError(f"transform: unknown option(s) {sorted(unknown)}; it takes {sorted(_TRANSFORM_KEYS)}")
    channels = transform.get("channels", "rgb")
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"transform channels= must be 'rgb' or 'bgr', got {channels!r}")
    scale = float(transform.get("scale", 1.0))
    mean = _channel_values(transform.get("mean", 0.0), "mean")
    std = _channel_values(transform.get("std", 1.0), "std")
    if bool((std == 0).any()):
        raise ValueError("transform std= must not be 0")

    def apply(images: torch.Tensor) -> torch.Tensor:
        x = images * scale
        if channels == "bgr":
            x = x.flip(-3)
        return (x - mean.to(x.device, x.dtype)) / std.to(x.device, x.dtype)

    return apply


def _attribute(module: Any, path: str) -> Any:
    target = module
    for part in path.split("."):
        if not hasattr(target, part):
            return None
        target = getattr(target, part)
    return target


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {len(out)}-{type(out).__name__} of " + ", ".join(_describe(o) for o in out)
    if isinstance(out, Mapping):
        return f"a dict with keys {list(out)}"
    return f"a {type(out).__name__}"


#: what torch says when a forward gets inputs of a shape its layers were not built for
_SHAPE_ERROR = re.compile(r"shapes cannot be multiplied|size mismatch|must match the size of tensor|is invalid for input of size|"
                          r"expected input\[|to have \d+ channels|Kernel size can't be greater|Output size is too small")


def _check_embedding(z: Any, where: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor) or z.ndim != 2:
        raise TypeError(f"{where} gave {_describe(z)}; expected embeddings (B, D): pass embed= (a callable "
                        "(module, images) -> z, an attribute such as 'backbone', or an output index or key)")
    return z


def check_model_options(embed: Any, transform: Any) -> None:
    """A ``TypeError`` or ``ValueError`` naming the option unless ``embed`` and ``transform`` are ones frx takes."""
    if embed is not None and not (callable(embed) or isinstance(embed, (str, int))) or isinstance(embed, bool):
        raise TypeError(f"embed must be a callable (module, images) -> z, an attribute path, or an output index or key; "
                        f"got {type(embed).__name__}")
    make_transform(transform)


@dataclass(frozen=True)
class ModelOptions:
    """How frx calls the user's model, checked on construction: ``embed`` (which output is the embedding: a
    callable ``(module, images) -> z``, an attribute path such as ``"backbone"``, an output index or key) and
    ``transform`` (its input from the probe's RGB in [0, 1]: a callable, a preset ``"unit"``, ``"arcface"``,
    ``"imagenet"``, or ``{"mean", "std", "scale", "channels"}``). ``None`` leaves it to the model (a
    ``frx_transform`` attribute, a plugin's ``frx_embed``), else frx guesses and warns once, naming the option."""

    embed: Any = None
    transform: Any = None

    def __post_init__(self) -> None:
        check_model_options(self.embed, self.transform)

    def as_kwargs(self) -> dict[str, Any]:
        return {"embed": self.embed, "transform": self.transform}


class ModelAdapter:
    """How frx calls one model (see the module). ``warn(message)`` reports a guess, once per kind and adapter."""

    def __init__(self, model: Any, embed: Any = None, transform: Any = None,
                 warn: Callable[[str], Any] | None = None) -> None:
        if isinstance(model, ModelAdapter):
            raise TypeError("model is already a ModelAdapter; wrap the module itself")
        check_model_options(embed, None)
        self.module = unwrap(model)
        if isinstance(embed, str) and _attribute(self.module, embed) is not None and not callable(_attribute(self.module, embed)):
            raise TypeError(f"embed={embed!r}: the model's attribute {embed!r} is not callable")
        if transform is None:
            transform = getattr(self.module, "frx_transform", None)  # a model that says what it was trained on
        self.embed_option = embed
        self.transform_option = transform
        self.transform = make_transform(transform)
        self._warn = warn or (lambda message: warnings.warn(message, UserWarning, stacklevel=3))
        self._warned: set[str] = set()
        self._fitting_shapes: set[tuple[int, ...]] = set()  # image shapes (C, H, W) the forward has taken
        #: without embed=, what frx embeds instead of a forward's class scores (conventions.examine_forward):
        #: None before the first forward, False where the forward gives no classifier's scores
        self._guess: Any = None
        #: the context the module's forward runs in (a training loop's autocast: Lightning's
        #: ``precision_plugin.forward_context``), so frx embeds in the precision the model trains in;
        #: only the forward: the analysis after it stays in float32/float64
        self.forward_context: Callable[[], Any] = contextlib.nullcontext

    @classmethod
    def wrap(cls, model: Any, **options: Any) -> ModelAdapter:
        """``model`` as an adapter (an adapter is returned as it is)."""
        return model if isinstance(model, ModelAdapter) else cls(model, **options)

    # the parts of a module frx asks of a model
    def parameters(self):
        return self.module.parameters()

    @property
    def device(self) -> torch.device:
        return model_device(self.module)

    @property
    def dtype(self) -> torch.dtype:
        return model_dtype(self.module)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(f"frx: {message}")

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.transform is None:
            self.warn_once("transform", "the probe images go to the model as RGB in [0, 1]; if it was trained on another "
                           "range pass transform= (e.g. transform='arcface' for (x - 0.5) / 0.5, as arcface_torch trains; "
                           "transform='unit' to say [0, 1] is right)")
        else:
            x = self.transform(x)
        return x.to(self.dtype)

    def _select(self, out: Any) -> torch.Tensor:
        option = self.embed_option
        if isinstance(option, (int, str)):
            try:
                return _check_embedding(out[option], f"output [{option!r}]")
            except (KeyError, IndexError, TypeError):
                raise TypeError(f"embed={option!r}: the model gave {_describe(out)}, which has no {option!r}") from None
        if isinstance(out, (tuple, list)) and out:
            self.warn_once("tuple", f"the model gave {_describe(out)}; frx took element 0 as the embedding: pass embed=INDEX "
                           "(or a callable) to choose")
            return _check_embedding(out[0], "element 0 of the model's output")
        return _check_embedding(out, "calling the model")

    def _check_backbone(self, x: torch.Tensor, z: torch.Tensor) -> None:
        """Warn once where forward is wider or narrower than a ``backbone`` attribute (a classifier on top?)."""
        backbone = getattr(self.module, "backbone", None)
        if self.embed_option is not None or "backbone" in self._warned or not callable(backbone):
            return
        self._warned.add("backbone")
        try:
            inner = backbone(x[:1])
        except Exception:  # noqa: BLE001 - only a hint
            return
        if isinstance(inner, torch.Tensor) and inner.ndim == 2 and inner.shape[1] != z.shape[1]:
            self._warn(f"frx: the model's forward gives D = {z.shape[1]}, its 'backbone' D = {inner.shape[1]}; frx embeds the "
                       "forward's output: pass embed='backbone' if the backbone's output is the embedding")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding ``(B, D)`` float32, not normalised, differentiable (the module's mode as it is)."""
        with self.forward_context():
            z = self._forward(images)
        return z.float()

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        option = self.embed_option
        if option is None:
            answer = get_plugin_manager().hook.frx_embed(model=self.module, images=images.to(self.device))
            if answer is not None:
                return answer.float()
        x = self._inputs(images)
        if callable(option):
            return _check_embedding(option(self.module, x), "embed(module, images)").float()
        if isinstance(option, str) and _attribute(self.module, option) is not None:
            return _check_embedding(_attribute(self.module, option)(x), f"model.{option}(images)").float()
        if self._guess is False:  # examined: the forward's output is no classifier's scores
            z = self._select(self.module(x))
        elif self._guess is not None:
            return _check_embedding(self._guess(self.module, x), "the features before the classifier").float()
        else:
            out, guess = examine_forward(self.module, x)
            self._guess = False if guess is None else guess.embed
            if guess is not None:
                self.warn_once("classifier", guess.message)
                return _check_embedding(guess.features, "the features before the classifier").float()
            z = self._select(out)
        self._check_backbone(x, z)
        return z.float()

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``(B, D)`` float32 on the model's device, without gradients, in eval mode (then put back).

        Images of a shape the model has not yet embedded that its forward refuses for their shape
        (a ``Linear`` built for another size: "mat1 and mat2 shapes cannot be multiplied") are a
        :class:`~frx_plugin.errors.ModelInputError` naming the image shape and the model; any other
        error is raised as it is.
        """
        shape = tuple(images.shape[1:])
        with eval_mode(self.module):
            try:
                z = self(images)
            except RuntimeError as exc:
                if shape in self._fitting_shapes or not _SHAPE_ERROR.search(str(exc)):
                    raise
                raise ModelInputError(
                    f"the model ({type(self.module).__name__}) cannot take images of {'×'.join(map(str, shape))} "
                    f"(its forward fails: {str(exc).splitlines()[0]}); it expects another image size or channel count: give "
                    "the probe set the size the model takes (its size= option, e.g. image-folder:DIR,size=112)"
                ) from exc
            self._fitting_shapes.add(shape)
            return F.normalize(z.detach().float(), dim=1)


@contextlib.contextmanager
def eval_mode(module: Any):
    """The block with every submodule of ``module`` in eval mode; then each gets back the mode it had.

    Each, not the whole: ``module.train()`` afterwards would also wake the submodules the user keeps
    in eval mode (a frozen BatchNorm, a frozen backbone under a training head).
    """
    modes = [(m, m.training) for m in module.modules()] if isinstance(module, torch.nn.Module) else []
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def hook_embedder(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """images → L2-normalised embeddings float32 on the model's device, without gradients (:meth:`ModelAdapter.embed`)."""
    return ModelAdapter.wrap(model).embed


def embed_probe_set(model: Any, probe: ProbeSet, indices: torch.Tensor | None = None, batch_size: int = 256,
                    progress: Progress | None = None, check: bool = False) -> torch.Tensor:
    """Embeddings ``(len(indices), D)`` float32 on the model's device (:meth:`ModelAdapter.embed`), where the
    analysis then runs; the probe images travel there batch by batch.

    ``progress(done, total, "embedding")`` after each batch when given. ``check``: stop at the first
    batch with NaN or infinity (a diverged model) and return the rows so far.
    """
    if indices is None:
        indices = torch.arange(len(probe))
    embed = hook_embedder(model)
    chunks, done = [], 0
    for chunk, images in probe.batches(indices, batch_size):
        try:
            chunks.append(embed(images))
        except ModelInputError as exc:  # name the probe set whose images these are
            raise ModelInputError(f"{probe.source}: {exc}") from exc.__cause__
        done += chunk.numel()
        if progress is not None:
            progress(done, indices.numel(), "embedding")
        if check and not bool(torch.isfinite(chunks[-1]).all()):
            break
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


# --------------------------------------------------------------------------- whose buffers a pass embeds with


def _fingerprint(buffer: torch.Tensor) -> torch.Tensor:
    """``(4,)`` float64: the sum, the sum of squares and a position-weighted sum of ``buffer``, and its size.

    Equal buffers give equal fingerprints; buffers that drifted apart (other running statistics)
    give other sums. Only the buffers whose fingerprints differ are then sent whole.
    """
    x = buffer.detach().flatten().to(torch.float64)
    weights = torch.arange(x.numel(), device=x.device, dtype=torch.float64).remainder_(1009).add_(1.0)
    return torch.stack([x.sum(), (x * x).sum(), (x * weights).sum(), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])


def _gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a − b|`` elementwise, 0 where both are equal or both NaN, infinity where only one is NaN."""
    equal = (a == b) | (torch.isnan(a) & torch.isnan(b))
    gap = (a - b).abs().nan_to_num(nan=math.inf)
    return torch.where(equal, torch.zeros_like(gap), gap)


def _take_rank_buffers(module: Any, collectives: Collectives, source: int) -> tuple[list, str | None]:
    """Copy rank ``source``'s floating buffers into this process's ``module`` where they differ.

    Returns ``[(buffer, its own values)]`` to put back, and what to tell the user (the same on every
    rank: every decision is taken from gathered values all ranks hold). Every rank calls the same
    collectives: one all-gather of the buffers' fingerprints, and one of the differing buffers whole.
    """
    named = [(name, b) for name, b in module.named_buffers() if b.is_floating_point() and b.numel()]
    device = collectives.device
    prints = torch.stack([_fingerprint(b) for _, b in named]).to(device) if named else torch.zeros(0, 4, dtype=torch.float64, device=device)
    count = collectives.all_gather(torch.tensor([float(len(named))], dtype=torch.float64, device=device))
    if not bool((count == count[0]).all()):
        return [], (f"the ranks' models hold different numbers of floating buffers ({count.flatten().int().tolist()}); "
                    "each rank embeds its share of the probe set with its own")
    if not named:
        return [], None
    gathered = collectives.all_gather(prints)  # (W, n, 4)
    if not bool((gathered[..., 3] == gathered[source, :, 3]).all()):
        return [], "the ranks' models hold buffers of different sizes; each rank embeds its share of the probe set with its own"
    differing = [i for i in range(len(named)) if bool((_gap(gathered[:, i], gathered[source, i]) > 0).any())]
    if not differing:
        return [], None
    everyone = collectives.all_gather(torch.cat([named[i][1].detach().flatten().to(device, torch.float64) for i in differing]))
    saved: list = []
    worst, n_differ, offset = (0.0, "", 0), 0, 0
    for i in differing:
        name, buffer = named[i]
        rows = everyone[:, offset: offset + buffer.numel()]
        offset += buffer.numel()
        gaps = torch.stack([_gap(row, rows[source]).max() for row in rows])  # each rank's largest gap from the source
        n_differ += int(bool((gaps > 0).any()))
        if float(gaps.max()) > worst[0]:
            worst = (float(gaps.max()), name, int(gaps.argmax()))
        if float(gaps[collectives.rank]) > 0:
            saved.append((buffer, buffer.detach().clone()))
            with torch.no_grad():
                buffer.copy_(rows[source].view(buffer.shape).to(buffer.device, buffer.dtype))
    if not n_differ:  # the fingerprints differed by rounding only
        return saved, None
    return saved, (f"the ranks' buffers differ ({n_differ} of {len(named)} floating buffers; the largest difference, {worst[0]:.3g}, "
                   f"in {worst[1]!r} between rank {worst[2]} and rank {source}): each rank's BatchNorm statistics follow its own "
                   "batches (DistributedDataParallel(broadcast_buffers=False) keeps them apart; with True the last step's update "
                   f"still differs); frx embeds with rank {source}'s buffers on every rank (the rank whose weights a loop saves) "
                   "and puts each rank's own back after the pass")


@contextlib.contextmanager
def saved_rank_buffers(module: Any, collectives: Collectives, warn: Callable[[str], Any] | None = None, source: int = 0):
    """The block with rank ``source``'s floating buffers in ``module`` on every rank; then each rank's own, bitwise.

    Every rank must enter it alike (it runs collectives on :attr:`Collectives.device`). The buffers are
    compared first by a fingerprint each and only those that differ are gathered and copied, so a
    model whose ranks agree (``broadcast_buffers=True``, no BatchNorm) costs two small all-gathers.
    Integer buffers (``num_batches_tracked``) are left as they are: an eval-mode forward does not read
    them. ``warn(message)`` is called on rank ``source`` when the ranks' buffers differed (naming the
    largest difference and its buffer), or could not be compared. One process: nothing happens.
    """
    saved: list = []
    if collectives.world_size > 1 and isinstance(module, torch.nn.Module):
        saved, message = _take_rank_buffers(module, collectives, source)
        if message is not None and collectives.rank == source and warn is not None:
            warn(message)
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, own in saved:
                buffer.copy_(own)
