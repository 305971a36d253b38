"""Fixtures shared by the core tests: what the reference code computed (``tests/fixtures/stylegan``, made by its
``make_fixtures.py`` from rosinality's stylegan2-pytorch and the seed's models), read once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

STYLEGAN_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stylegan"


@pytest.fixture(scope="session")
def reference() -> dict[str, torch.Tensor]:
    """The reference code's inputs and outputs (generators, latent transformer, seed face models), by name."""
    return load_file(str(STYLEGAN_FIXTURES / "reference_outputs.safetensors"))


@pytest.fixture(scope="session")
def layouts() -> dict[str, dict[str, list[int]]]:
    """The reference modules' state-dict layouts: key -> shape, per module."""
    return json.loads((STYLEGAN_FIXTURES / "reference_layouts.json").read_text())
