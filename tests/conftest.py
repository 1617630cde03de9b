"""Shared fixtures: a tiny from-scratch CLIP-ITA (no Hub) and a clean-process runner; and the hook
scripts/test.sh asks which markers the selected tests carry (it installs Chromium only for `browser`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


def pytest_collection_finish(session):
    """With CLIPITA_SELECTED_MARKERS=<file> set, write the markers of the selected tests there, one a line."""
    path = os.environ.get("CLIPITA_SELECTED_MARKERS")
    if path:
        markers = sorted({marker.name for item in session.items for marker in item.iter_markers()})
        Path(path).write_text("".join(f"{name}\n" for name in markers))
