"""frx's built-in parts, registered through the same hooks as any third-party plugin.

The modules of the factories import no registry (neither :mod:`frx_plugin.plugins` nor
:mod:`frx_plugin.specs`), so loading the built-ins never imports the plugin manager again.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from frx_plugin.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from frx_plugin.interfaces import BackboneFactory, DecoderFactory, EstimatorFactory, GeneratorFactory, ProbeSetFactory, Register


def _architecture(cls: type) -> BackboneFactory:
    """A factory of untrained ``cls`` models that takes options only (``resnet-small,embedding_dim=64``)."""

    def build(**options: Any) -> torch.nn.Module:
        return cls(**options)

    build.__doc__ = f"An untrained {cls.__name__}(**options)."
    build.__signature__ = inspect.signature(cls)  # type: ignore[attr-defined]  # so a spec's options are checked by name
    build.spec_argument = None  # type: ignore[attr-defined]  # options only: no parameter takes a spec's argument
    return build


@hookimpl
def frx_register_backbones(register: Register[BackboneFactory]) -> None:
    from frx_plugin import models
    from frx_plugin.openers import load_torch_backbone, open_frx_backbone
    from frx_plugin.seed_models import open_seed_irse50, open_seed_mobilefacenet
    from frx_plugin.synthetic.backbones import BUILTIN_BACKBONES, open_synthetic_backbone

    register("frx", open_frx_backbone, "frx:PATH, a backbone.safetensors that frx demo saved (or its folder)")
    register("synthetic", open_synthetic_backbone,
             f"synthetic:NAME, trained on the synthetic world on first use and cached: {', '.join(BUILTIN_BACKBONES)}")
    register("torch", load_torch_backbone, "torch:package.module:factory@weights.safetensors[,KEY=VALUE...] (options go to the factory)")
    register("resnet-small", _architecture(models.ResidualFaceNet),
             "untrained narrow residual CNN, 64x64 or larger input (the demo backbone; options go to ResidualFaceNet)")
    register("mobilefacenet-like", _architecture(models.MobileFaceNetLike),
             "untrained small MobileFaceNet-style CNN (inverted residuals, global depthwise conv), input a multiple of 16")
    register("seed-mobilefacenet", open_seed_mobilefacenet,
             "seed-mobilefacenet:PATH, Ren et al.'s MobileFaceNet weights (arcface_mb.pth), 112x112 arcface input")
    register("seed-irse50", open_seed_irse50,
             "seed-irse50:PATH, Ren et al.'s IR-SE-50 weights (arcface_r50.pth), 112x112 arcface input")


@hookimpl
def frx_register_probe_sets(register: Register[ProbeSetFactory]) -> None:
    from frx_plugin.synthetic.world import SyntheticProbeSet

    register("synthetic", SyntheticProbeSet, "the built-in synthetic face world (rendered on demand)")


@hookimpl
def frx_register_generators(register: Register[GeneratorFactory]) -> None:
    from frx_plugin.synthetic.world import synthetic_generator

    register("synthetic", synthetic_generator, "re-renders samples of the synthetic world with one attribute changed")


@hookimpl
def frx_register_decoders(register: Register[DecoderFactory]) -> None:
    from frx_plugin.two_stage.decoders import ConvFaceDecoder
    from frx_plugin.two_stage.stylegan.decoder import StyleGANFaceDecoder

    # DecoderFactory's **options: a factory takes the options it knows (an unknown one is its TypeError),
    # which a Protocol cannot say; so do the estimator factories below.
    register("conv", ConvFaceDecoder, "convolutional decoder G(z, noise), 64x64 or 112x112 (any multiple of 16), pixel + identity loss")  # type: ignore[arg-type]
    register("stylegan2", StyleGANFaceDecoder,  # type: ignore[arg-type]
             "stylegan2:GENERATOR.pt[,encoder=ENC.pth,mean_latent=MEAN.pth][,steps=N,lr=...]: a StyleGAN2 checkpoint (rosinality "
             "layout) behind Ren et al.'s latent transformer, the seed's encoder or one trained for the model")


@hookimpl
def frx_register_estimators(register: Register[EstimatorFactory]) -> None:
    from frx_plugin.synthetic.estimator import synthetic_estimator
    from frx_plugin.two_stage.probe_estimator import trained_estimator

    register("synthetic", synthetic_estimator, "small CNN trained on renders of the synthetic world, cached on disk")  # type: ignore[arg-type]
    register("trained", trained_estimator,  # type: ignore[arg-type]  # it takes only the options it knows
             "trained[,n_folds=N,seed=S]: ridge heads on image features, trained on the probe set's own labelled faces fold by "
             "fold (identity-disjoint); the two-stage path's estimator for what no other estimator reads, cached on disk")
