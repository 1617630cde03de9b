"""Release a trained CLIP-ITA folder: card with the test results, offline checks, summary, optional upload.

    python release.py --model outputs/clip-ita --eval_results outputs/results.json \\
        [--ablation_plot docs/ablation.png] [--onnx] [--push --repo_id org/clip-ita] \\
        [--index outputs/index --index_repo_id org/clip-ita-index]

Nothing is uploaded without --push. The upload authenticates with HF_TOKEN or `hf auth login`; there is
deliberately no token option, so a token never lands in shell history or logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import ModelCard

from clipita.bootstrap import add_sentence_transformers_files
from clipita.card import render_index_card, render_model_card
from clipita.hub import (
    ReleaseError,
    check_index_folder,
    check_release_folder,
    load_check,
    push_folder,
    release_files,
)
from clipita.results import ResultsError, select_result

TRAINING_ARGS_FILES = ("training_args.json",)
METRICS_FILE = "metrics.json"


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"error: {what} {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {what} {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {what} {path} must hold a JSON object")
    return data


def training_record(model_dir: Path, path: str | None, names: Sequence[str], what: str) -> dict | None:
    """The file given, else the first of `names` in the model folder or its parent (train.py's output)."""
    if path:
        return read_json(Path(path), what)
    for folder in (model_dir, model_dir.parent):
        for name in names:
            if (folder / name).is_file():
                return read_json(folder / name, what)
    return None


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def summary(folder: Path, title: str) -> str:
    files = release_files(folder)
    sizes = [(name, (folder / name).stat().st_size) for name in files]
    lines = [f"{title}: {folder} ({len(files)} files, {human_size(sum(s for _, s in sizes))})"]
    lines += [f"  {name:<40} {human_size(size):>10}" for name, size in sizes]
    return "\n".join(lines)


def card_summary(readme: Path) -> str:
    data = ModelCard.load(readme).data
    results = data.eval_results or []
    lines = ["card metadata:"]
    for key in ("license", "library_name", "pipeline_tag", "base_model", "datasets", "tags"):
        value = data.get(key)
        if value:
            lines.append(f"  {key}: {', '.join(value) if isinstance(value, list) else value}")
    lines.append(f"  model-index: {data.model_name or '-'}, {len(results)} results")
    headline = [r for r in results if r.metric_type == "precision_at_10"]
    for r in headline:
        lines.append(f"    {r.dataset_name}: P@10 = {r.metric_value:.2f} %")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the trained model folder (save_pretrained output)")
    parser.add_argument("--eval_results", required=True, help="eval.py's results.json")
    parser.add_argument("--eval_model", default=None, help="which model of a multi-model results.json")
    parser.add_argument("--training_args", default=None, help="training configuration JSON (default: found)")
    parser.add_argument("--metrics", default=None, help="training's metrics.json (default: found)")
    parser.add_argument("--ablation_plot", default=None, help="image copied into the folder and shown")
    parser.add_argument("--repo_id", default=None, help="the Hub model repo, e.g. org/clip-ita")
    parser.add_argument("--push", action="store_true", help="upload (otherwise only render and check)")
    parser.add_argument("--private", action="store_true", help="create the repos as private")
    parser.add_argument(
        "--skip_load_check", action="store_true", help="skip loading the folder in a clean offline process"
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="export onnx/ into the folder first (float32 and int8 encoders; python -m clipita.onnx_export)",
    )
    parser.add_argument("--index", default=None, help="a saved catalogue index folder to publish as well")
    parser.add_argument("--index_repo_id", default=None, help="the Hub dataset repo for the index")
    args = parser.parse_args(argv)
    if args.push and not args.repo_id:
        parser.error("--push needs --repo_id")
    if args.push and args.index and not args.index_repo_id:
        parser.error("--index with --push needs --index_repo_id")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = Path(args.model)
    config = read_json(model_dir / "config.json", "model config")
    results = read_json(Path(args.eval_results), "eval results")
    try:  # this folder's run (by --eval_model, else by the evaluated path); the other runs as "baselines"
        result = select_result(results, model_dir=model_dir, wanted=args.eval_model)
    except ResultsError as error:
        raise SystemExit(f"error: {error} (--eval_model NAME)") from None
    render_model_card(
        model_dir,
        model_config=config,
        training_args=training_record(model_dir, args.training_args, TRAINING_ARGS_FILES, "training args"),
        metrics=training_record(model_dir, args.metrics, (METRICS_FILE,), "training metrics"),
        eval_results=result,
        ablation_plot=args.ablation_plot,
        repo_id=args.repo_id,
    )
    # folders trained before custom_st.py existed load with sentence-transformers too
    add_sentence_transformers_files(model_dir)
    if args.onnx:
        from clipita.onnx_export import export_onnx

        export_onnx(model_dir)
    problems = check_release_folder(model_dir)
    if not args.skip_load_check and not problems:
        problems += load_check(model_dir)
    print(summary(model_dir, "model folder"))
    print(card_summary(model_dir / "README.md"))
    if args.index:
        render_index_card(args.index, repo_id=args.index_repo_id, model_repo_id=args.repo_id)
        problems += [f"index: {p}" for p in check_index_folder(args.index)]
        print(summary(Path(args.index), "index folder"))
    if problems:
        print("NOT READY:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 1
    print("ready for the Hub")
    if not args.push:
        print("(not uploaded: add --push --repo_id ORG/NAME to upload)")
        return 0
    try:
        urls = push_folder(
            model_dir,
            args.repo_id,
            private=args.private,
            commit_message="Release CLIP-ITA with test results",
            index_dir=args.index,
            index_repo_id=args.index_repo_id if args.index else None,
        )
    except ReleaseError as error:
        print(error, file=sys.stderr)
        return 1
    for kind, url in urls.items():
        print(f"uploaded {kind}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
