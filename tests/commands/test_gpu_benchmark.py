"""``benchmarks/gpu.py`` on the CPU: a real run at small sizes, its comparison of records, and its one-line refusals."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import compare_records

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
#: against a real hang only (a busy 2-core machine is slow, not stuck)
HANG_LIMIT_S = 1800


def _run(*args: str) -> subprocess.CompletedProcess:
    # one thread: on a busy 2-core machine two threads per process spin against the other processes (10× slower)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "adapters"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=HANG_LIMIT_S)


def test_cpu_run_trains_times_compares_and_runs_two_processes(tmp_path):
    out = tmp_path / "gpu.json"
    # --small: 200 probe faces at 32×32 for both backbones, 100 for the comparison, one epoch; smaller still here
    # (2 training steps, IResNet-50 at 16×16, few counterfactuals); --ddp cpu: the 2-process part with gloo (the GPU
    # run uses NCCL), so the worker the GPU run starts is exercised here too
    done = _run("--device", "cpu", "--small", "--train-identities", "8", "--train-images-per-identity", "4", "--batch-size", "16",
                "--iresnet-size", "16", "--significance-samples", "4", "--max-error-pairs", "1", "--ddp", "cpu", "--out", str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    runs = results["runs"]
    assert set(runs) == {"demo-fp32", "demo-bf16-mixed", "iresnet50-fp32"}
    for name, run in runs.items():
        assert len(run["passes"]) == run["epochs"] + 1 == 2, name
        for p in run["passes"]:
            timing = p["timing"]
            for key in ("embed_s", "after_embed_s", "counterfactual_s"):
                assert timing[key] > 0, (name, key, timing)
            assert timing["two_stage_s"] == 0.0
    assert runs["demo-bf16-mixed"]["precision"] == "bf16-mixed" and runs["demo-fp32"]["precision"] == "32-true"
    assert runs["iresnet50-fp32"]["embedding_dim"] == 512 and runs["demo-fp32"]["embedding_dim"] == 128
    # IResNet-50 costs ~6.3 GMACs a face at 112×112 (~0.13 G at 16×16), the demo's backbone a few MMACs: it embeds slower
    assert runs["iresnet50-fp32"]["probe_images"] == runs["demo-fp32"]["probe_images"]
    assert runs["iresnet50-fp32"]["median"]["embed_s"] > runs["demo-fp32"]["median"]["embed_s"]
    # the same weights on two CPU copies: the same measures (and the comparison did compare them)
    comparison = {c["backbone"]: c for c in results["comparison"]}
    assert set(comparison) == {"demo", "iresnet50"}
    for c in comparison.values():
        assert c["devices"] == ["cpu", "cpu"] and c["max_abs_diff"] <= 1e-5 and c["n_mismatched"] == 0 and c["ok"]
        assert c["values_compared"] > 50 and c["embedding_max_abs_diff"] <= 1e-5
        assert {"leakage", "metric", "verification TAR", "significance", "error attribution"} <= set(c["by_category"])
    assert results["memory"] is None and "GPU memory: n/a (cpu)" in done.stdout
    ddp = results["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and len(ddp["passes"]) == 2
    # the same initial weights: the epoch-0 pass of two processes is the single process's (the changed faces of the
    # counterfactuals are embedded in other batches, which may move identity significance in its last digits)
    same = ddp["epoch0_vs_single_process"]
    assert same["n_mismatched"] == 0 and same["max_abs_diff"] <= 1e-4 and same["by_category"]["leakage"] <= 1e-6
    assert all(results["checks"].values()), results["checks"]
    assert results["hardware"]["gpu"] is None and results["hardware"]["torch"] == torch.__version__
    for heading in ("## Pass split", "## The same weights on two devices", "## Two processes (DDP)", "| iresnet50-fp32 | 1 |"):
        assert heading in done.stdout
    # the callback's history and the CSV logs of each run beside --out
    assert (tmp_path / "gpu-runs" / "demo-bf16-mixed" / "frx" / "history.json").is_file()
    assert list((tmp_path / "gpu-runs" / "iresnet50-fp32" / "logs").rglob("metrics.csv"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is missing; this machine has CUDA")
def test_cuda_without_cuda_is_one_line_and_a_nonzero_exit():
    done = _run("--device", "cuda", "--small")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "--device cpu" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("args, words", [
    (("--probe-images", "201"), "--probe-images must be a multiple of --images-per-identity"),
    (("--iresnet-size", "40"), "--iresnet-size must be a multiple of 16"),
])
def test_sizes_that_do_not_fit_are_one_line(args, words):
    done = _run("--device", "cpu", "--small", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr


def test_compare_records_finds_every_kind_of_difference():
    record = {
        "epoch": 0, "timing": {"embed_s": 1.0}, "n_samples": 8,
        "attributes": [{"name": "age", "metric": "r2", "value": 0.5, "low": 0.4, "high": 0.6, "leakage": 0.3,
                        "leakage_low": 0.2, "leakage_high": None, "reason": None}],
        "verification": {"tar": 0.9, "fmr": 0.001, "threshold": 0.3, "genuine_pairs": 12, "impostor_pairs": 16},
        "significance": {"age": {"value": 0.1, "low": 0.0, "high": 0.2}},
        "error_attribution": {"all": {"age": 0.25}},
        "warnings": [],
    }
    other = copy.deepcopy(record)
    other["timing"] = {"embed_s": 9.0}  # seconds and epochs are no measures
    other["epoch"] = 3
    same = compare_records(record, other)
    assert same["max_abs_diff"] == 0.0 and same["n_mismatched"] == 0 and same["where"] is None and same["values_compared"] == 15
    other["attributes"][0]["leakage"] += 2e-5
    other["verification"]["tar"] -= 1e-3
    other["significance"]["age"]["high"] += 1e-7
    other["error_attribution"]["all"]["age"] = None
    other["verification"]["genuine_pairs"] = 11
    other["warnings"] = ["something"]
    found = compare_records(record, other)
    assert found["max_abs_diff"] == pytest.approx(1e-3) and found["where"] == "verification.tar"
    assert found["by_category"]["leakage"] == pytest.approx(2e-5) and found["by_category"]["significance"] == pytest.approx(1e-7)
    assert {m["path"] for m in found["mismatched"]} == {"error_attribution.all.age", "verification.genuine_pairs", "warnings[0]"}
