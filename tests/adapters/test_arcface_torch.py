"""The arcface_torch callback in a real 2-process torch.distributed (gloo) loop, against a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frx_insightface.arcface_torch import ArcFaceTorchCallback
from tests.ddp_launch import HANG_LIMIT_S, run_two_ranks
from tests.lightning_helpers import make_probe
from tests.records import assert_same_measures
from tests.tensorboard_helpers import summary_tags

SCRIPT = Path(__file__).with_name("arcface_torch_script.py")


def _run_one_process(out: Path) -> None:
    env = dict(os.environ, WORLD_SIZE="1", RANK="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=HANG_LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("arcface-one")
    _run_one_process(out)
    return json.loads((out / "frx" / "history.json").read_text())["records"]


def test_two_ranks_equal_one_process_and_write_history_and_scalars(tmp_path, one_process):
    run_two_ranks(SCRIPT, str(tmp_path / "two"), timeout=HANG_LIMIT_S)
    one = one_process
    two = json.loads((tmp_path / "two" / "frx" / "history.json").read_text())["records"]
    # 240 training images: 15 steps in one process, 7 per rank in two; a pass every 5 steps
    assert [r["global_step"] for r in one] == [0, 5, 10, 15, 20, 25]
    assert [r["global_step"] for r in two] == [0, 5, 10]
    assert [r["pass_index"] for r in two] == [0, 1, 2]
    # the pass at step 0 sees the same (untrained) model everywhere: the two runs must agree on every measure
    first_one, first_two = one[0], two[0]
    assert first_one["n_samples"] == first_two["n_samples"] == 75  # every probe sample once, none twice
    # the arcface_torch pass is the whole pass: exact counterfactuals and the pass's cost are in the record
    assert first_two["counterfactuals"] == "exact" and first_two["significance"] and first_two["error_attribution"]
    assert set(first_two["timing"]) == {"embed_s", "after_embed_s", "counterfactual_s", "two_stage_s"}
    assert_same_measures(first_one, first_two)
    # the scalars reached the SummaryWriter under the Lightning adapter's names, at each pass's step
    tags = summary_tags(tmp_path / "two" / "tb", kind="scalar")
    assert tags["frx/leakage/skin_tone"] == [0, 5, 10]
    assert "frx/verification/tar_at_fmr_0.001" in tags
    assert tags["frx/time/embed_s"] == [0, 5, 10]
    assert any(t.startswith("frx/significance/") for t in tags)
    assert "TorchDistributed" in (tmp_path / "two" / "collectives.txt").read_text()


def test_a_default_group_that_refuses_cpu_tensors_as_nccl_does_gets_none_from_frx(tmp_path, one_process):
    """Under a backend registered for CUDA only, whose every CPU collective fails (as NCCL's), the 2-process
    pass still runs — frx sends its tensors through a gloo group of its own — and equals one process."""
    env = dict(os.environ, FRX_TEST_BACKEND="refusecpu")
    run_two_ranks(SCRIPT, str(tmp_path / "refuse"), timeout=HANG_LIMIT_S, env=env)
    two = json.loads((tmp_path / "refuse" / "frx" / "history.json").read_text())["records"]
    assert [r["global_step"] for r in two] == [0, 5, 10]
    assert "frx's own gloo group" in (tmp_path / "refuse" / "collectives.txt").read_text()
    assert "refusecpu" in (tmp_path / "refuse" / "collectives.txt").read_text()
    assert_same_measures(one_process[0], two[0])


def test_bad_arguments_are_rejected_at_once():
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer"):
        ArcFaceTorchCallback(make_probe(), every_n_steps=0)
    with pytest.raises(TypeError, match="writer must have add_scalar"):
        ArcFaceTorchCallback(make_probe(), writer=object())


def _train_v2(out: Path, last_step: int, resume: Path | None = None, save_at: int | None = None, every: int = 5):
    """A single-process loop written as arcface_torch's train_v2.py is: global_step += 1 first, the callbacks
    after the step, a checkpoint dict with one more key ("state_frx"), torch.load on resume."""
    import torch
    import torch.nn.functional as F

    from frx_plugin.models import ArcFaceHead, ResidualFaceNet
    from frx_plugin.passes import AnalysisConfig
    from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet

    torch.manual_seed(0)
    backbone = ResidualFaceNet(embedding_dim=16, widths=(8, 8, 16, 16), input_size=32)
    head = ArcFaceHead(16, 12)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(SyntheticFaceDataset(SyntheticFaceWorld(12, 4, seed=0, size=32)), batch_size=8)
    probe = SyntheticProbeSet(n_identities=12, images_per_identity=3, seed=0, size=32, first_identity=500_000)
    frx = ArcFaceTorchCallback(probe, out_dir=out / "frx", every_n_steps=every, config=AnalysisConfig(n_bootstrap=0),
                               counterfactuals="off")
    start_epoch, global_step = 0, 0
    if resume is not None:
        checkpoint = torch.load(resume, weights_only=True)
        start_epoch, global_step = checkpoint["epoch"], checkpoint["global_step"]
        backbone.load_state_dict(checkpoint["state_dict_backbone"])
        head.load_state_dict(checkpoint["state_dict_softmax_fc"])
        opt.load_state_dict(checkpoint["state_optimizer"])
        frx.load_state_dict(checkpoint["state_frx"])
    for epoch in range(start_epoch, 100):
        for images, labels in loader:
            global_step += 1
            loss = F.cross_entropy(head(backbone(images), labels), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            frx(global_step, backbone, epoch=epoch)
            if global_step == last_step:
                return frx
        if save_at is not None and global_step == save_at:  # train_v2 saves at the end of an epoch
            torch.save({"epoch": epoch + 1, "global_step": global_step, "state_dict_backbone": backbone.state_dict(),
                        "state_dict_softmax_fc": head.state_dict(), "state_optimizer": opt.state_dict(),
                        "state_frx": frx.state_dict()}, out / "checkpoint_gpu_0.pt")
    return frx


def test_a_resumed_arcface_torch_run_continues_the_history_and_replaces_only_the_passes_after_its_checkpoint(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="frx")
    # 48 images / 8 = 6 steps an epoch; a pass every 3 steps; a checkpoint at the end of epoch 2 (step 12)
    whole = _train_v2(tmp_path, last_step=24, save_at=12, every=3)
    path = tmp_path / "frx" / "history.json"
    uninterrupted = json.loads(path.read_text())["records"]
    assert [r["global_step"] for r in uninterrupted] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert [r["epoch"] for r in uninterrupted] == [0, 0, 1, 1, 2, 2, 3, 3]
    # one line per pass in arcface_torch's log: TAR, the most and least leaked attributes, seconds
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("frx: step ")]
    assert len(lines) == 8 and all("TAR@FMR=0.001" in line and "most leaked" in line and "least leaked" in line for line in lines)
    assert not whole.failures

    resumed = _train_v2(tmp_path, last_step=24, resume=tmp_path / "checkpoint_gpu_0.pt", every=3)
    records = json.loads(path.read_text())["records"]
    # the checkpoint's passes stand; the four after it are replaced by the resumed run's (the same model: the
    # same numbers), never lost nor duplicated
    assert [r["global_step"] for r in records] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert [r["pass_index"] for r in records] == list(range(8))
    for a, b in zip(uninterrupted, records):
        assert_same_measures(a, b)
    assert resumed.history.run == 0
    assert any("the 4 pass(es)" in r.getMessage() and "replaced" in r.getMessage() for r in caplog.records)


def test_a_second_callback_on_the_same_out_dir_continues_the_history(tmp_path):
    _train_v2(tmp_path, last_step=6, every=3)
    first = json.loads((tmp_path / "frx" / "history.json").read_text())["records"]
    _train_v2(tmp_path, last_step=6, every=3)  # a new run (no checkpoint) pointed at the same folder
    records = json.loads((tmp_path / "frx" / "history.json").read_text())["records"]
    assert records[:2] == first  # kept exactly as written
    assert [(r["run"], r["pass_index"], r["global_step"]) for r in records] == [(0, 0, 3), (0, 1, 6), (1, 2, 3), (1, 3, 6)]
    from safetensors.torch import load_file

    assert {k.split(".")[0] for k in load_file(str(tmp_path / "frx" / "history.safetensors"))} == {"pass0", "pass1", "pass2", "pass3"}


def test_another_probe_sets_history_in_out_dir_is_refused_by_name(tmp_path):
    _train_v2(tmp_path, last_step=3, every=3)
    with pytest.raises(ValueError, match="history.json holds the history of a probe set with other attributes.*pass another out_dir"):
        ArcFaceTorchCallback(make_probe(), out_dir=tmp_path / "frx")


def test_a_failed_pass_is_said_in_the_log_the_writer_the_wandb_run_and_the_history(tmp_path, caplog):
    import logging

    import torch

    class Run:  # the part of a wandb run frx uses: log(metrics, step=...)
        def __init__(self):
            self.logged = []

        def log(self, metrics, step=None):
            self.logged.append((step, dict(metrics)))

    from tensorboardX import SummaryWriter

    caplog.set_level(logging.INFO, logger="frx")
    run, writer = Run(), SummaryWriter(str(tmp_path / "tb"))
    frx = ArcFaceTorchCallback(make_probe(), out_dir=tmp_path / "frx", every_n_steps=1, writer=writer, wandb_run=run,
                               counterfactuals="off", transform="unit")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    frx(1, model)
    with torch.no_grad():
        model[0].bias.fill_(float("nan"))  # diverged
    frx(2, model)
    writer.close()
    assert [step for step, _ in run.logged] == [1, 2]
    assert "frx/leakage/tone" in run.logged[0][1] and run.logged[1][1] == {"frx/pass_failed": 1.0}
    assert summary_tags(tmp_path / "tb", kind="scalar")["frx/pass_failed"] == [2]
    assert any("step 2 failed" in r.getMessage() and "'0.bias' holds NaN" in r.getMessage() for r in caplog.records)
    failures = json.loads((tmp_path / "frx" / "history.json").read_text())["failures"]
    assert [f["global_step"] for f in failures] == [2]
    with pytest.raises(TypeError, match="wandb_run must have log"):
        ArcFaceTorchCallback(make_probe(), wandb_run=object())


def test_an_arcface_torch_loop_logs_the_differentials_it_asks_for(tmp_path):
    """config=AnalysisConfig(differentials=True) in a train_v2-style loop: the history holds them, the writer gets
    their summaries at each pass's step, equal to the history's numbers."""
    import torch
    import torch.nn.functional as F
    from tensorboardX import SummaryWriter

    from frx_plugin.models import ArcFaceHead, ResidualFaceNet
    from frx_plugin.passes import AnalysisConfig
    from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet

    torch.manual_seed(0)
    backbone = ResidualFaceNet(embedding_dim=16, widths=(8, 8, 16, 16), input_size=32)
    head = ArcFaceHead(16, 12)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(SyntheticFaceDataset(SyntheticFaceWorld(12, 4, seed=0, size=32)), batch_size=8)
    probe = SyntheticProbeSet(n_identities=40, images_per_identity=4, seed=0, size=32, first_identity=600_000)
    writer = SummaryWriter(str(tmp_path / "tb"))
    config = AnalysisConfig(n_bootstrap=10, fmr=1e-2, differentials=True, differential_min_pairs=5, differential_min_identities=3)
    frx = ArcFaceTorchCallback(probe, out_dir=tmp_path / "frx", every_n_steps=2, writer=writer, config=config, counterfactuals="off")
    for global_step, (images, labels) in enumerate(loader, start=1):
        loss = F.cross_entropy(head(backbone(images), labels), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        frx(global_step, backbone)
        if global_step == 4:
            break
    writer.close()
    records = json.loads((tmp_path / "frx" / "history.json").read_text())["records"]
    assert [r["global_step"] for r in records] == [2, 4] and all(r["differentials"]["attributes"] for r in records)
    tags = {k: v for k, v in summary_tags(tmp_path / "tb", kind="scalar").items() if k.startswith("frx/differential/")}
    assert tags and all(steps == [2, 4] for steps in tags.values())
    last = {f"frx/differential/{a['name']}/{s}": a[s]["value"] for a in records[-1]["differentials"]["attributes"]
            for s in ("fnmr_ratio", "fmr_ratio", "fdr", "garbe") if (a.get(s) or {}).get("value") is not None}
    assert set(tags) == set(last)
