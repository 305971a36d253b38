"""``frx decode``: face embeddings back into faces with a decoder, the paper's StyleGAN2 decoder above all.

::

    frx decode --decoder stylegan2:550000.pt,encoder=id_delta_gc_rm_r50.pth,mean_latent=mean_wplus.pth \\
               --embeddings lfw_r50.safetensors --out decoded
    frx decode --decoder stylegan2:550000.pt --backbone frx:frx-demo --probe synthetic --out decoded

Writes into ``--out``:

- ``decoded.safetensors``: tensor ``images`` (N×3×H×W float32 in [0, 1]; row i decodes embedding i) and
  ``embeddings`` (N×D, L2-normalised); header metadata ``frx.decoder`` (the spec) and ``frx.source``;
- ``faces.png``: the first faces beside their decodings (the decodings alone for an embedding file);
- ``directions.png``: the decodings of the embeddings' top principal directions e_k and of mean + e_k, and
  ``random.png``: of random unit vectors (the figures of the seed's ``lfw_recon.py``);
- ``decoding.json`` (``frx.decoding/1``: what was decoded, how, the fits, the identity similarity
  cos(f(x̂), z) where the model is at hand, versions, files) and ``report.html`` with its section.

With a decoder that needs no training (``stylegan2`` with the seed's ``encoder=``) every embedding is
decoded as it is. Otherwise the decoder is trained for the model (``--backbone``, on the ``--probe``
faces), fold by fold on identity-disjoint folds: each face is decoded by the decoder trained on the
other folds' faces, so no face is decoded by a decoder that saw it. The figures of directions and
random vectors use fold 0's decoder. Decoding is deterministic (the checkpoint's noise buffers).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DECODED_FILE", "DECODING_FILE", "DECODING_FORMAT", "FIGURES", "add_decode_parser", "decode"]

DECODED_FILE = "decoded.safetensors"
DECODING_FILE = "decoding.json"
DECODING_FORMAT = "frx.decoding/1"
FIGURES = {"faces": "faces.png", "directions": "directions.png", "random": "random.png"}
RESULTS = (DECODED_FILE, DECODING_FILE, *FIGURES.values(), "report.html")


def _positive(option: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{option} must be an integer ≥ {minimum}, got {value!r}")


def decode(decoder_spec: str, out_dir: str | Path, *, embeddings_file: str | Path | None = None, model: Any = None,
           probe: Any = None, steps: int = 200, folds: int = 2, seed: int = 0, limit: int | None = None, faces: int = 8,
           directions: int = 8, random_vectors: int = 8, model_name: str | None = None, command: str | None = None,
           say: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> dict[str, Any]:
    """Decode an embedding file (``embeddings_file``) or a model's embeddings of a probe set (``model``, ``probe``).

    ``decoder_spec``: a decoder spec (:func:`frx_plugin.specs.open_decoder`). ``steps``, ``folds``: the
    training of a decoder that needs it (a spec's own ``steps=`` wins). ``limit``: decode only the first
    ``limit`` embeddings (all are used for training and for the principal directions). ``faces``,
    ``directions``, ``random_vectors``: how many of each the figures show. Writes the files of the module
    docstring into ``out_dir`` and returns the ``decoding.json`` document.
    """
    import torch

    from frx_plugin.specs import parse_spec

    for option, value, low in (("steps", steps, 1), ("folds", folds, 2), ("faces", faces, 0), ("directions", directions, 0),
                               ("random_vectors", random_vectors, 0)):
        _positive(option, value, low)
    if limit is not None:
        _positive("limit", limit)
    if (embeddings_file is None) == (model is None) or (model is None) != (probe is None):
        raise ValueError("decode an embedding file, or a model with its probe set (one of them)")
    z, identity, source = _embeddings(embeddings_file, model, probe, model_name)
    keep = torch.arange(min(z.shape[0], limit or z.shape[0]))
    shape = None if parse_spec(decoder_spec, "decoder").kind == "stylegan2" else (
        tuple(int(v) for v in probe.images(torch.arange(1)).shape[1:]) if probe is not None else None)
    first, record = _decoder(decoder_spec, z, shape, seed)
    if getattr(first, "needs_training", True):
        if model is None:
            raise ValueError(f"decoder {decoder_spec!r} is trained for the model it decodes, and an embedding file has no model: pass "
                             "--backbone and --probe, or the seed's encoder (encoder=ENC.pth,mean_latent=MEAN.pth) for its face model")
        say(f"frx decode: training the decoder for {source} on {folds} identity-disjoint folds, {steps} steps each")
        images, first, record = _trained(decoder_spec, model, probe, z, keep, shape, steps, folds, seed)
    else:
        say(f"frx decode: decoding {keep.numel()} embeddings")
        images = first.decode(z[keep])[:, 0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [_write_decoded(out / DECODED_FILE, images, z[keep], decoder_spec, source)]
    similarity = _identity_similarity(model, probe, images, z[keep]) if model is not None else None
    files += _figures(out, first, z, images, probe, keep, faces, directions, random_vectors, seed)
    document = {
        "format": DECODING_FORMAT, "source": source, "decoder": decoder_spec, **record, "n": int(keep.numel()),
        "n_embeddings": int(z.shape[0]), "identities": int(torch.unique(identity).numel()), "image_shape": list(images.shape[1:]),
        "identity_similarity": similarity, "seed": seed, "command": command, "versions": _versions(), "files": files,
    }
    from frx_plugin.history import atomic_write_text
    from frx_plugin.report import json_safe

    atomic_write_text(out / DECODING_FILE, json.dumps(json_safe(document), indent=1, allow_nan=False))
    from frx_plugin.commands.report import write_report

    document["files"] = files + [str(out / DECODING_FILE), str(write_report(out, command=command))]
    return document


def _embeddings(embeddings_file, model, probe, model_name) -> tuple[Any, Any, str]:
    """(z, identity, source): L2-normalised float32 embeddings on the CPU, their identities, what they are."""
    import torch

    if embeddings_file is not None:
        from frx_plugin.embedding_set import read_embedding_set

        z, identity, _, _ = read_embedding_set(embeddings_file)
        source = str(embeddings_file)
    else:
        from frx_plugin.model import embed_probe_set

        z, identity = embed_probe_set(model, probe).cpu(), probe.identity
        source = f"{getattr(probe, 'source', type(probe).__name__)} embedded by {model_name or type(model).__name__}"
    if z.shape[0] < 1:
        raise ValueError(f"{source}: no embeddings to decode")
    return torch.nn.functional.normalize(z.to(torch.float32), dim=1), identity, source


def _decoder(spec: str, z, shape, seed: int) -> tuple[Any, dict[str, Any]]:
    from frx_plugin.randomness import seeded
    from frx_plugin.specs import open_decoder

    with seeded(seed * 1_000_003):  # a fold's decoder starts from (seed, fold) alone, as the two-stage path's do
        decoder = open_decoder(spec, z.shape[1], shape)
    return decoder, {"mode": "trained" if getattr(decoder, "needs_training", True) else "as saved", "folds": None, "steps": None,
                     "fits": {}}


def _trained(spec: str, model, probe, z, keep, shape, steps: int, n_folds: int, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """Each fold's faces decoded by a decoder trained on the other folds' faces (identity loss through ``model``)."""
    import torch
    import torch.nn.functional as F

    from frx_plugin.interfaces import DecoderTask
    from frx_plugin.leakage import identity_folds
    from frx_plugin.model import ModelAdapter, eval_mode, model_device
    from frx_plugin.randomness import seeded
    from frx_plugin.specs import open_decoder

    adapter = ModelAdapter.wrap(model)
    device = model_device(model)
    folds = identity_folds(probe.identity, n_folds, seed)
    wanted = torch.zeros(z.shape[0], dtype=torch.bool)
    wanted[keep] = True
    images, fits, first = None, {}, None
    for fold in range(n_folds):
        with seeded(seed * 1_000_003 + fold):
            decoder = open_decoder(spec, z.shape[1], shape)
        if hasattr(decoder, "to") and device is not None:
            decoder.to(device)
        train = (folds != fold).nonzero().squeeze(1)
        faces = torch.cat([x for _, x in probe.batches(train, 64)])
        task = DecoderTask(z[train], faces, lambda x: F.normalize(adapter(x), dim=1), steps=steps,
                           seed=seed + 104_729 * fold)
        with eval_mode(adapter.module):
            fits[str(fold)] = decoder.fit(task).to_record()
        rows = ((folds == fold) & wanted).nonzero().squeeze(1)
        decoded = decoder.decode(z[rows])[:, 0]
        if images is None:
            images = torch.empty(keep.numel(), *decoded.shape[1:])
        images[rows] = decoded  # keep is 0..n-1: a row's position is its index
        first = first or decoder
    record = {"mode": "trained", "folds": n_folds, "steps": getattr(first, "steps", None) or steps, "fits": fits}
    return images, first, record


def _write_decoded(path: Path, images, z, spec: str, source: str) -> str:
    from safetensors.torch import save_file

    from frx_plugin.history import atomic_write

    tensors = {"images": images.float().contiguous(), "embeddings": z.float().contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"frx.decoder": spec, "frx.source": source}))
    return str(path)


def _identity_similarity(model, probe, images, z) -> dict[str, float]:
    """cos(f(x̂), z) of the decodings, seen by the model at its probe set's image size."""
    import torch
    import torch.nn.functional as F

    from frx_plugin.model import hook_embedder

    embed = hook_embedder(model)
    size = tuple(probe.images(torch.arange(1)).shape[-2:])
    cos = []
    for start in range(0, images.shape[0], 64):
        part = images[start : start + 64]
        if tuple(part.shape[-2:]) != size:
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False, antialias=True)
        cos.append((embed(part).float().cpu() * z[start : start + 64]).sum(1))
    values = torch.cat(cos)
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def principal_directions(z, count: int) -> tuple[Any, Any, Any]:
    """(mean, top ``count`` unit eigenvectors of the scatter matrix as rows, their shares of the variance).

    As the seed's ``lfw_recon.py``: eigenvectors of ``(z − mean)ᵀ(z − mean)``; each sign is fixed so that
    its largest component is positive (an eigenvector's sign is arbitrary).
    """
    import torch

    z = z.to(torch.float64)
    mean = z.mean(0)
    centred = z - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred)
    order = values.argsort(descending=True)[: min(count, z.shape[1])]
    top = vectors[:, order].T
    signs = torch.sign(top.gather(1, top.abs().argmax(1, keepdim=True)))
    share = values[order] / values.clamp_min(0).sum().clamp_min(1e-12)
    return mean.float(), (top * signs).float(), share.float()


def _figures(out: Path, decoder, z, images, probe, keep, faces: int, directions: int, random_vectors: int, seed: int) -> list[str]:
    """faces.png, directions.png, random.png (each where its count is positive)."""
    import torch

    from frx_plugin.figures import plot_image_rows

    files = []
    shown = keep[:faces]
    if shown.numel():
        rows = [("decoded", list(images[: shown.numel()]), [f"#{int(i)}" for i in shown])]
        if probe is not None:
            rows.insert(0, ("face", list(probe.images(shown)), [f"#{int(i)}" for i in shown]))
        title = "frx decode: faces (top) and their decodings G(z) (bottom)" if probe is not None else "frx decode: decodings G(z)"
        files.append(str(plot_image_rows(rows, out / FIGURES["faces"], title)))
    if directions and z.shape[0] > 1:
        mean, top, share = principal_directions(z, directions)
        along = decoder.decode(top)[:, 0]
        shifted = decoder.decode(top + mean)[:, 0]
        captions = [f"PC{k + 1} ({100 * float(s):.1f}%)" for k, s in enumerate(share)]
        rows = [("e_k", list(along), captions), ("mean + e_k", list(shifted), captions)]
        files.append(str(plot_image_rows(rows, out / FIGURES["directions"], "frx decode: decodings of the embeddings' top "
                                         "principal directions e_k (share of variance) and of mean + e_k")))
    if random_vectors:
        random = torch.randn(random_vectors, z.shape[1], generator=torch.Generator().manual_seed(seed))
        decoded = decoder.decode(torch.nn.functional.normalize(random, dim=1))[:, 0]
        rows = [("random z", list(decoded), [f"z{k + 1}" for k in range(random_vectors)])]
        files.append(str(plot_image_rows(rows, out / FIGURES["random"], "frx decode: decodings of random unit vectors")))
    return files


def _versions() -> dict[str, str]:
    import torch

    from frx_plugin import __version__

    return {"frx": __version__, "python": platform.python_version(), "torch": torch.__version__}


def _run(args: Any) -> int:
    from frx_plugin.commands.common import (
        check_output_folder,
        command_line,
        open_model_and_probe,
        progress_bar,
    )

    if (args.embeddings is None) == (args.backbone is None):
        raise ValueError("pass --embeddings FILE or --backbone SPEC (one of them)")
    if args.embeddings is not None and args.probe is not None:
        raise ValueError("--probe goes with --backbone; an embedding file is decoded as it is")
    for option, value, low in (("--steps", args.steps, 1), ("--folds", args.folds, 2), ("--faces", args.faces, 0),
                               ("--directions", args.directions, 0), ("--random", args.random, 0)):
        _positive(option, value, low)
    if args.limit is not None:
        _positive("--limit", args.limit)
    check_output_folder(args.out, "--out", RESULTS, overwrite=args.overwrite)
    model = probe = None
    if args.backbone is not None:
        model, probe = open_model_and_probe(args.backbone, args.probe, progress=progress_bar())
    document = decode(args.decoder, args.out, embeddings_file=args.embeddings, model=model, probe=probe, steps=args.steps,
                      folds=args.folds, seed=args.seed, limit=args.limit, faces=args.faces, directions=args.directions,
                      random_vectors=args.random, model_name=args.backbone, command=command_line())
    similarity = document["identity_similarity"]
    print(f"decoded {document['n']} embeddings into {'×'.join(map(str, document['image_shape']))} images ({document['mode']})"
          + (f"; cos(f(x̂), z) mean {similarity['mean']:.3f}" if similarity else ""))
    print("wrote " + ", ".join(document["files"]))
    return 0


def add_decode_parser(sub: Any) -> None:
    """The ``frx decode`` subcommand."""
    parser = sub.add_parser("decode", help="decode face embeddings into faces (the paper's StyleGAN2 decoder: stylegan2:GENERATOR.pt,...)")
    parser.add_argument("--decoder", required=True, metavar="SPEC",
                        help="stylegan2:GENERATOR.pt[,encoder=ENC.pth,mean_latent=MEAN.pth][,steps=N,lr=X]: a rosinality StyleGAN2 "
                             "checkpoint; with the seed's encoder and mean W+ its face model's embeddings are decoded as they are, "
                             "without them a latent transformer is trained for --backbone")
    parser.add_argument("--embeddings", default=None, metavar="FILE", help="an embedding-set file (.safetensors) to decode")
    parser.add_argument("--backbone", default=None, metavar="SPEC",
                        help="a model whose embeddings of --probe are decoded (frx plugins lists the kinds)")
    parser.add_argument("--probe", default=None, metavar="SPEC",
                        help="with --backbone: the probe set (default: the one the backbone names, else synthetic)")
    parser.add_argument("--out", required=True, help="output folder for decoded.safetensors, the figures, decoding.json and report.html")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--steps", type=int, default=200, help="training steps per fold when the decoder is trained for the model (default 200)")
    parser.add_argument("--folds", type=int, default=2, help="identity-disjoint folds when the decoder is trained (default 2)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="decode only the first N embeddings (default all)")
    parser.add_argument("--faces", type=int, default=8, help="faces shown in faces.png (default 8)")
    parser.add_argument("--directions", type=int, default=8, help="principal directions shown in directions.png (default 8)")
    parser.add_argument("--random", type=int, default=8, help="random unit vectors shown in random.png (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds, the training and the random vectors (default 0)")
    parser.set_defaults(func=_run)
