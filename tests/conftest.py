"""Shared fixtures: a tiny from-scratch CLIP-ITA (no Hub) and a clean-process runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_TEXTS = [
    "Home > Kitchen > Ceramic Mugs",
    "Fashion > Tops > Kids T-Shirts",
    "red ceramic mug 12 oz premium gift",
    "organic cotton kids t-shirt blue XL",
    "colour: red",
    "material: ceramic",
    "audience: kids",
    "pattern: stripes",
] * 20


def tiny_model(variant: str = "clip-ita", **overrides):
    from clipita.bootstrap import build_default_model

    return build_default_model(
        TINY_TEXTS, variant=variant, hidden_size=32, layers=1, image_size=32, **overrides
    )


@pytest.fixture
def tiny():
    return tiny_model()


def run_clean_python(code: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter outside the repo, offline, as a Hub user would."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
