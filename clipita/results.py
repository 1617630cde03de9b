"""results.json: the schema eval.py writes, and the one reader that card, release and tables use.

    {"name": row name, "model": DIR or baseline id, "dataset": ..., "split": ..., "num_products": n,
     "num_skipped": n, "settings": {level: {"overall" | "seen" | "unseen": {metric: value in [0, 1] or null},
                                            "num_queries": {...}, "error_analysis": {...},
                                            "sibling_confusion": {...} (specific only)}},
     "per_depth": (optional; model runs) {"node_scoring": "marginal" | "tree" | "max_leaf" | "node",
         "retrieval": {depth: {"all" | "seen" | "unseen" | "known_leaves" | "new_leaves":
                               {"P@10", "mAP@10": value in [0, 1], "num_queries": n} or null}},
         "placement" | "path_placement": {depth: {"known" | "new": {"top1", "top3": value in [0, 1],
                                                                   "num_products": n} or null}}},
         (depth: "root", "depth2", ..., "leaf"; known / new: the product's leaf seen in training or not.
          eval.py's docstring says what each number measures.)
     "baselines": [every other run, same keys]}

A file may also hold {name: run} (several files merged by hand); `runs_of` reads both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

GROUPS = ("overall", "seen", "unseen")
PER_DEPTH_SECTIONS = ("retrieval", "placement", "path_placement")
COUNT_KEYS = ("num_queries", "num_products")  # counts inside per_depth entries, not values in [0, 1]
BASELINES = {"bm25": "BM25", "clip-zero-shot": "CLIP zero-shot"}  # baseline id -> row name


class ResultsError(ValueError):
    """results.json does not hold what the reader needs; the message says where."""


def runs_of(results: Mapping) -> list[dict]:
    """Every run in results.json: the top-level run and its "baselines", or each run of a {name: run} object."""
    if "settings" in results:
        top = {k: v for k, v in results.items() if k != "baselines"}
        return [top, *[dict(r) for r in results.get("baselines") or [] if isinstance(r, Mapping)]]
    return [
        {"name": name, **run}
        for name, run in results.items()
        if isinstance(run, Mapping) and "settings" in run
    ]


def runs_by_name(results: Mapping) -> dict[str, dict]:
    """{row name: run}, baselines first then models: the order of the paper's tables."""
    runs = runs_of(results)
    order = [r for r in runs if r.get("model") in BASELINES] + [
        r for r in runs if r.get("model") not in BASELINES
    ]
    return {str(r.get("name") or r.get("model")): r for r in order}


def select_result(results: Mapping, model_dir: str | Path | None = None, wanted: str | None = None) -> dict:
    """One run, with every other run under "baselines" (so a card can compare).

    `wanted` picks a run by name or model (or key, in a {name: run} file); else `model_dir` by the evaluated
    path; else the file must hold a single top-level run. Anything ambiguous is an error naming the runs,
    never a guess.
    """
    runs = runs_of(results)
    if not runs:
        raise ResultsError('results hold no run with "settings": is it eval.py\'s results.json?')
    if "settings" in results:
        labels = [r.get("name") or r.get("model") for r in runs]
    else:  # a {name: run} file: its keys name the runs, whatever "name" each run holds
        labels = [k for k, v in results.items() if isinstance(v, Mapping) and "settings" in v]
    if wanted is not None:
        matches = [r for r, label in zip(runs, labels) if wanted in (r.get("name"), r.get("model"), label)]
        how = f"{wanted!r} matches {len(matches)} runs"
    elif model_dir is not None:
        model_dir = Path(model_dir)
        matches = [
            r
            for r in runs
            if r.get("model")
            and (
                Path(str(r["model"])).resolve() == model_dir.resolve()
                or Path(str(r["model"])).name == model_dir.name
            )
        ]
        how = f"no single run of {model_dir}"
    elif "settings" in results:
        matches = runs[:1]
        how = ""
    else:
        matches = runs if len(runs) == 1 else []
        how = "several models"
    if len(matches) != 1:
        raise ResultsError(f"{how} in the results; its runs: {labels}; choose one by name")
    chosen = matches[0]
    return {**chosen, "baselines": [r for r in runs if r is not chosen]}


def check_result(result: Mapping, where: str = "eval_results") -> None:
    """Fail on the first value outside the schema (the run and its baselines), naming where."""
    settings = result.get("settings")
    if not isinstance(settings, Mapping) or not settings:
        raise ResultsError(f'{where}["settings"] must be a non-empty object of settings')
    for i, baseline in enumerate(result.get("baselines") or []):
        if not isinstance(baseline, Mapping):
            raise ResultsError(f"{where}.baselines[{i}] must be an object (a run of results.json)")
        check_result(baseline, f"{where}.baselines[{i}]")
    for setting, groups in settings.items():
        if not isinstance(groups, Mapping):
            raise ResultsError(f"{where}.settings.{setting} must be an object, got {type(groups).__name__}")
        for group in GROUPS:
            scores = groups.get(group)
            if scores is None:
                continue
            if not isinstance(scores, Mapping):
                raise ResultsError(f"{where}.settings.{setting}.{group} must be an object of metrics")
            for metric, value in scores.items():
                ok = value is None or (
                    isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
                )
                if not ok:
                    raise ResultsError(
                        f"{where}.settings.{setting}.{group}.{metric}: expected a number in [0, 1] "
                        f"or null, got {value!r}"
                    )
    per_depth = result.get("per_depth")
    if per_depth is not None:
        if not isinstance(per_depth, Mapping):
            raise ResultsError(f"{where}.per_depth must be an object")
        for section in PER_DEPTH_SECTIONS:
            for depth, groups in (per_depth.get(section) or {}).items():
                for group, scores in (groups or {}).items():
                    for metric, value in (scores or {}).items():
                        ok = metric in COUNT_KEYS or (
                            isinstance(value, (int, float))
                            and not isinstance(value, bool)
                            and 0 <= value <= 1
                        )
                        if not ok:
                            raise ResultsError(
                                f"{where}.per_depth.{section}.{depth}.{group}.{metric}: expected a number "
                                f"in [0, 1], got {value!r}"
                            )


def settings_of(result: Mapping) -> Mapping:
    """A run's "settings" object (a bare settings object is returned as it is)."""
    return result.get("settings", result)
