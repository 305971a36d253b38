"""What the paper's StyleGAN2 decoder costs on the CPU: decoding, and training the latent transformer, per image.

    OMP_NUM_THREADS=1 python benchmarks/decode_cost.py [--size 256 --batch 4 --repeats 2 --threads 1]

Full-size models with random weights (the cost does not depend on the weights): rosinality's
``Generator(256, 512, 8, channel_multiplier=2)`` saved as ``{"g_ema": ...}``, the seed's latent
transformer ``IDDEncoder(14, 8)`` and a mean W+, through frx's ``stylegan2`` decoder
(:class:`~frx_plugin.two_stage.stylegan.StyleGANFaceDecoder`):

- **decode**: ``decode(z)`` with the seed's encoder, at the generator's size (256×256), per image;
- **train step**: one step of training a latent transformer for a model (forward through T and G, the
  identity loss through the seed's MobileFaceNet at 112×112 and the pixel loss, backward into T, Adam),
  per image of the batch. A two-stage pass trains ``n_folds`` transformers for ``steps`` steps of
  ``batch_size`` images each: its training costs about ``n_folds × steps × batch_size`` times this.

Each figure is the best of ``--repeats`` timed calls after one untimed warm-up call.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from frx_plugin.interfaces import DecoderTask
from frx_plugin.seed_models import SeedMobileFaceNet
from frx_plugin.two_stage.stylegan import LatentTransformer, StyleGAN2Generator, StyleGANFaceDecoder


def _best(call, repeats: int) -> float:
    call()  # warm-up: allocator, first-call costs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def files(folder: Path, size: int) -> dict[str, str]:
    torch.manual_seed(0)
    generator = StyleGAN2Generator(size, 512, 8, channel_multiplier=2)
    torch.save({"g_ema": generator.state_dict()}, folder / "generator.pt")
    torch.save(LatentTransformer(generator.n_latent, 8, 512).state_dict(), folder / "encoder.pth")
    torch.save(torch.randn(1, generator.n_latent, 512) * 0.1, folder / "mean_wplus.pth")
    return {name: str(folder / f"{name}.pt" if name == "generator" else folder / f"{name}.pth")
            for name in ("generator", "encoder", "mean_wplus")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="generator resolution (default 256, the seed's)")
    parser.add_argument("--batch", type=int, default=4, help="images per call (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="frx-decode-cost-") as scratch:
        paths = files(Path(scratch), args.size)
        z = F.normalize(torch.randn(args.batch, 512, generator=torch.Generator().manual_seed(1)), dim=1)
        seed = StyleGANFaceDecoder(512, None, paths["generator"], encoder=paths["encoder"], mean_latent=paths["mean_wplus"],
                                   batch_size=args.batch)
        decode_s = _best(lambda: seed.decode(z), args.repeats) / args.batch
        face_model = SeedMobileFaceNet().eval()
        trained = StyleGANFaceDecoder(512, (3, 112, 112), paths["generator"], mean_latent=paths["mean_wplus"], steps=1,
                                      batch_size=args.batch)
        faces = torch.rand(args.batch, 3, 112, 112, generator=torch.Generator().manual_seed(2))
        task = DecoderTask(z, faces, lambda x: F.normalize(face_model((x - 0.5) / 0.5), dim=1), steps=1)
        train_s = _best(lambda: trained.fit(task), args.repeats) / args.batch
    pass_s = 2 * 200 * 8 * train_s
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
    heads = seed.generator.n_latent
    print(f"generator {args.size}x{args.size} (512, 8, channel_multiplier 2), latent transformer ({heads} heads, 8 layers), "
          f"batch {args.batch}")
    print("| what | seconds per image |")
    print("|---|---|")
    print(f"| decode (seed's encoder, {args.size}x{args.size}) | {decode_s:.3f} |")
    print(f"| one latent-transformer training step (identity loss through MobileFaceNet at 112x112 + pixel loss) | {train_s:.3f} |")
    print(f"training of one two-stage pass at the defaults (2 folds x 200 steps x batch 8): about {pass_s / 60:.0f} minutes")


if __name__ == "__main__":
    main()
