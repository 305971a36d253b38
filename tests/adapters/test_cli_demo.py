"""``frx demo``, the command the Lightning adapter registers (hook ``frx_register_commands``)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from frx_plugin.commands.cli import main
from frx_plugin.synthetic import SYNTHETIC_SCHEMA
from tests.ddp_launch import HANG_LIMIT_S


@pytest.fixture
def frx(capsys, monkeypatch):
    """``frx ARGS...`` in this process, with ``sys.argv`` as the console script has it (the page records the command)."""

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["frx", *args])
        code = main(list(args))
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


#: A small demo that still learns: 32x32 faces (the network costs the same per step, the renders less), the
#: full 375 steps (300 identities × 20 images, 4 epochs: the verification needs them), a probe set of 400.
#: Held-out TAR@FMR=0.001 before → after, --seed 0, 1, 2: 0.015 → 0.337, 0.015 → 0.375, 0.013 → 0.523.
SMALL_DEMO = ("--identities", "300", "--images-per-identity", "20", "--epochs", "4", "--size", "32",
              "--probe-identities", "100", "--probe-images-per-identity", "4", "--n-bootstrap", "20")


@pytest.mark.slow
def test_demo_trains_a_backbone_that_learns_and_writes_its_history(tmp_path, frx):
    out = tmp_path / "demo"
    proc = frx("demo", "--out", str(out), *SMALL_DEMO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((out / "history.json").read_text())["records"]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert (out / "history.safetensors").stat().st_size > 0
    assert (out / "leakage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()  # the demo's page, with the command that made it
    assert "Leakage across epochs" in page and "frx demo --out" in page and "https://" not in page
    # the backbone really learns: held-out verification far above the untrained network's
    before, after = records[0]["verification"]["tar"], records[-1]["verification"]["tar"]
    assert after > 0.25 and after > 5 * before, (before, after)  # measured: 0.015 -> 0.337 (SMALL_DEMO)
    # one progress line per pass and a closing table row per attribute, with the final numbers
    assert proc.stdout.count("[frx] epoch") == 5
    table = proc.stdout.split("leakage ℓ (95% CI)", 1)[1]
    for item in records[-1]["attributes"]:
        row = next(line for line in table.splitlines() if line.startswith(item["name"] + " "))
        if item["leakage"] is not None:
            assert f"{item['leakage']:6.3f}".strip() in row
    assert f"TAR {after:.3f} at FMR 0.001" in proc.stdout
    assert {a["name"] for a in records[-1]["attributes"]} == set(SYNTHETIC_SCHEMA.names)


@pytest.mark.slow
def test_demo_two_stage_writes_decoded_faces_and_recovery(tmp_path, frx, monkeypatch):
    from frx_plugin.synthetic.estimator import SYNTHETIC_ESTIMATOR_DEFAULTS

    out = tmp_path / "demo"
    monkeypatch.setenv("FRX_CACHE_DIR", str(tmp_path / "cache"))  # the estimator is trained here, then cached
    # a small estimator (seconds, not the default's minute): what the demo does with it is the same, and how well
    # the default one reads the faces is tests/core/synthetic/test_estimator.py's
    for key, value in {"n_identities": 100, "images_per_identity": 4, "epochs": 2}.items():
        monkeypatch.setitem(SYNTHETIC_ESTIMATOR_DEFAULTS, key, value)
    proc = frx(
        "demo", "--out", str(out), "--identities", "100", "--images-per-identity", "8", "--epochs", "2", "--size", "32",
        "--probe-identities", "40", "--probe-images-per-identity", "4", "--n-bootstrap", "20",
        "--two-stage", "--decode-every-n-epochs", "2", "--decoder-steps", "20",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training the synthetic attribute estimator once" in proc.stdout
    assert list((tmp_path / "cache" / "estimators").glob("synthetic-*.safetensors"))
    records = json.loads((out / "history.json").read_text())["records"]
    assert [r["epoch"] for r in records if r.get("recovery")] == [0, 2]
    recovery = records[-1]["recovery"]
    assert set(recovery["attributes"]) == set(SYNTHETIC_SCHEMA.names) and recovery["estimator"] == "synthetic"
    for name in ("decoded.png", "recovery.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = proc.stdout.split("two-stage recovery at epoch 2", 1)[1]
    for name, entry in recovery["attributes"].items():
        row = next(line for line in table.splitlines() if line.startswith(name + " "))
        assert f"{entry['direct']['value']:6.3f}".strip() in row


def test_demo_without_a_training_adapter_says_what_to_install(tmp_path, frx, fresh_plugins, monkeypatch):
    monkeypatch.setenv("FRX_DISABLE_PLUGIN_AUTOLOAD", "1")
    proc = frx("demo", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "pip install 'frx-plugin[lightning]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, no usage text
    assert not (tmp_path / "history.json").exists()


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--epochs", "0", "--epochs must be at least 1"),
        ("--identities", "1", "--identities must be at least 2"),
        ("--identities", "3", "fewer than one batch of 64 per device"),
        ("--decode-every-n-epochs", "0", "--decode-every-n-epochs must be at least 1"),
    ],
)
def test_demo_rejects_bad_options_with_their_name(tmp_path, flag, value, message, frx):
    proc = frx("demo", "--out", str(tmp_path), flag, value)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_plugins_lists_the_builtin_parts_and_the_lightning_adapter():
    """A fresh ``python -m frx_plugin`` process: it loads the entry points itself (the point of a subprocess here)."""
    proc = subprocess.run([sys.executable, "-m", "frx_plugin", "plugins"], capture_output=True, text=True, timeout=HANG_LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    assert "frx.builtin" in proc.stdout and "lightning" in proc.stdout
    assert "resnet-small" in proc.stdout and "synthetic" in proc.stdout
