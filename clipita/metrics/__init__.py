"""The retrieval metrics: the local `evaluate` module in ``clipita_retrieval/``, imported by path.

``evaluate.load(str(METRIC_PATH))`` gives the same metric as an `evaluate.EvaluationModule` (offline);
`metric_module` gives its numpy functions without `evaluate`'s Arrow round trip.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

METRIC_PATH = Path(__file__).resolve().parent / "clipita_retrieval"


@functools.cache
def metric_module() -> ModuleType:
    """The metric file imported by path: its numpy functions (`per_query_scores`, `relevance_from_ids`)."""
    spec = importlib.util.spec_from_file_location(
        "clipita_retrieval_metric", METRIC_PATH / "clipita_retrieval.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
