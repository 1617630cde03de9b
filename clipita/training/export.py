"""What a finished run leaves in output_dir: the model folder (weights, config with auto_map, code files,
processor, model card) and, next to the model files, training_args.json, metrics.json and
training_curve.png."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from clipita.bootstrap import add_sentence_transformers_files, register_auto_classes
from clipita.fileio import write_json
from clipita.training.checkpoints import TrainerState
from clipita.training.plots import plot_training_curve
from clipita.training.validation import PRIMARY_METRIC

logger = logging.getLogger(__name__)

ARGS_FILE = "training_args.json"
METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"


def loss_summary(losses: list[list[float]]) -> dict:
    values = [loss for _, loss in losses]
    if not values:
        return {}
    tail = values[-min(50, len(values)) :]
    return {
        "first": values[0],
        "last": values[-1],
        "min": min(values),
        "mean_first_50": sum(values[:50]) / len(values[:50]),
        "mean_last_50": sum(tail) / len(tail),
    }


def build_metrics(state: TrainerState, args: argparse.Namespace, wall_seconds: float) -> dict:
    """metrics.json: validation before training, at the best and last evaluation, and training figures."""
    evaluations = state.evaluations
    initial = next((e for e in evaluations if e["step"] == 0), None)
    best_eval = next((e for e in evaluations if state.best and e["step"] == state.best_step), None)
    train_seconds = state.train_seconds
    return {
        "category_level": args.category_level,
        "primary_metric": PRIMARY_METRIC,
        "validation": {
            "step_0": initial,
            "best": best_eval,
            "last": evaluations[-1] if evaluations else None,
            "final_model": "best" if best_eval else "last",
        },
        "train": {
            "steps": state.global_step,
            "epochs": state.global_step / state.steps_per_epoch,
            "global_batch_size": state.global_batch_size,
            "samples": state.samples,
            "train_seconds": round(train_seconds, 2),
            "samples_per_second": round(state.samples / train_seconds, 2) if train_seconds else None,
            "wall_seconds": round(wall_seconds, 2),
            "skipped_rows": state.skipped_rows,
            "catalogue_load": state.load_report,
            "loss": loss_summary(state.losses),
        },
        "history": {
            "loss": thin(state.losses, 500),
            "evaluations": [
                {"step": e["step"], **{k: e["overall"].get(k) for k in ("P@10", "mAP@10")}}
                for e in evaluations
            ],
        },
    }


def thin(points: list, limit: int) -> list:
    """At most ~`limit` evenly spaced points (always keeping the last)."""
    if len(points) <= limit:
        return list(points)
    stride = math.ceil(len(points) / limit)
    kept = points[::stride]
    return kept if kept[-1] is points[-1] else [*kept, points[-1]]


def write_outputs(
    output_dir: Path, model, processor, args: argparse.Namespace, state: TrainerState, metrics: dict
) -> None:
    """Save the model folder and the training record (main process only)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    register_auto_classes()  # config.json gets its auto_map, and the code files are copied next to it
    model.save_pretrained(output_dir, safe_serialization=True)
    processor.save_pretrained(output_dir)
    add_sentence_transformers_files(output_dir)
    write_json(output_dir / ARGS_FILE, vars(args))
    write_json(output_dir / METRICS_FILE, metrics)
    curve = [{"step": e["step"], **e["overall"]} for e in state.evaluations]
    plot_training_curve(
        state.losses, curve, output_dir / CURVE_FILE, title=f"{args.variant}, {args.category_level}"
    )
    from clipita.card import render_model_card

    render_model_card(
        output_dir,
        model_config=model.config,
        training_args=vars(args),
        metrics=metrics,
        repo_id=args.hub_model_id,
    )


def push_to_hub(output_dir: Path, args: argparse.Namespace) -> str:
    """Check and upload the model folder with `clipita.hub.push_folder` (checkpoints and logs stay local);
    the token comes from HF_TOKEN or `hf auth login`, never from the command line."""
    from huggingface_hub import HfApi

    from clipita.hub import push_folder

    name = args.hub_model_id or output_dir.resolve().name
    repo_id = HfApi().create_repo(name, private=args.hub_private, exist_ok=True).repo_id  # adds the namespace
    urls = push_folder(
        output_dir,
        repo_id,
        private=args.hub_private,
        commit_message=f"Train {args.variant} ({args.category_level} categories)",
    )
    return urls["model"]
