"""StyleGAN2 for the paper's first stage, in frx's own PyTorch code (CPU and CUDA, nothing compiled).

- :mod:`~frx_plugin.two_stage.stylegan.generator` — :class:`StyleGAN2Generator`, loading rosinality
  stylegan2-pytorch checkpoints (:func:`load_rosinality_generator`);
- :mod:`~frx_plugin.two_stage.stylegan.encoder` — Ren et al.'s latent transformer z → W+ offsets
  (:class:`LatentTransformer`, :func:`load_latent_transformer`) and their mean W+ (:func:`load_mean_wplus`);
- :mod:`~frx_plugin.two_stage.stylegan.decoder` — :class:`StyleGANFaceDecoder`, ``G(mean_wplus + T(z))`` as the
  two-stage decoder ``stylegan2`` (the seed's encoder, or a latent transformer trained for the model analysed);
- :mod:`~frx_plugin.two_stage.stylegan.ops` — the operations (FIR filtering, bias leaky ReLU, modulated convolution).
"""

from frx_plugin.two_stage.stylegan.decoder import StyleGANFaceDecoder
from frx_plugin.two_stage.stylegan.encoder import (
           LatentTransformer,
           load_latent_transformer,
           load_mean_wplus,
)
from frx_plugin.two_stage.stylegan.generator import (
           StyleGAN2Generator,
           generator_config,
           load_rosinality_generator,
)

__all__ = ["LatentTransformer", "StyleGAN2Generator", "StyleGANFaceDecoder", "generator_config", "load_latent_transformer", "load_mean_wplus",
           "load_rosinality_generator"]
