"""The InsightFace adapter as an frx plugin (entry point ``insightface`` in the ``frx`` group)."""

from __future__ import annotations

from frx_plugin.hookspecs import hookimpl


@hookimpl
def frx_register_probe_sets(register) -> None:
    from frx_insightface.readers import CelebAProbeSet, ImageFolderProbeSet, VerificationProbeSet

    register("insightface-bin", VerificationProbeSet, "an InsightFace verification .bin (lfw, cfp_fp, agedb_30): path=FILE")
    register("image-folder", ImageFolderProbeSet, "a folder of images with a CSV of path, identity, attribute and optional landmark columns: "
             "folder=, csv_path=, size=, align=auto|landmarks|none, kinds=NAME:KIND;... (binary, categorical, continuous)")
    register("celeba", CelebAProbeSet, "CelebA images with 40 binary attributes: root=FOLDER, partition=, size=, limit=, "
             "align=auto|landmarks|none, images=img_align_celeba|img_celeba")


@hookimpl
def frx_embed(model, images):
    """InsightFace backbones embed the InsightFace way (see :class:`frx_insightface.backbone.InsightFaceBackbone`)."""
    from frx_insightface.backbone import InsightFaceBackbone

    return model.embed(images) if isinstance(model, InsightFaceBackbone) else None


@hookimpl
def frx_register_backbones(register) -> None:
    from frx_insightface.specs import open_backbone_spec

    register("insightface", open_backbone_spec,
             "insightface:FILE.onnx, or a model pack (a name under ~/.insightface/models, or its folder)[,flip=true][,root=DIR]"
             "[,mean=M or M1/M2/M3][,std=S or S1/S2/S3][,channels=rgb|bgr]")


def open_estimator(probe, path: str, **options):
    """``insightface:PATH[,KEY=VALUE...]`` as an estimator factory (the probe first; the path is the spec's argument)."""
    from frx_insightface.specs import open_estimator_spec

    return open_estimator_spec(path, probe, **options)


@hookimpl
def frx_register_estimators(register) -> None:
    register("insightface", open_estimator,
             "insightface:FILE.onnx (genderage: sex, age; 3D 68 landmarks: pitch, yaw, roll), or a model pack (both)"
             "[,sex=NAME,age=NAME,...][,root=DIR]")
