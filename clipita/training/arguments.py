"""The command line of train.py: every knob of a training run, with defaults that train the small
from-scratch model on the embedded demo catalogue."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence

from clipita.training.collate import parse_broad_dropout
from clipita.tree import LEVELS
from configuration_clipita import (
    ATTRIBUTE_POOLINGS,
    DEFAULT_LEARNABLE_TEMPERATURE,
    DEFAULT_TEMPERATURE,
    LOSSES,
    VARIANTS,
)

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
TRACKERS = ("tensorboard", "trackio", "none")
DEFAULT_MAX_STEPS = 1600  # docs/ablation_tree.md: leaves gain over 800 steps on both catalogues
# chosen by scripts/ablation_tree.sh at the default budget (issue 13, docs/ablation_tree_leaf.md): broad pairs
# lose their title half of the time and half of the pairs are leaf pairs, which keep every modality
DEFAULT_BROAD_DROPOUT = "title:0.5"
DEFAULT_LEAF_PROBABILITY = 0.5  # with broad dropout; without it (the paper's recipe) the draw is uniform
# --paper_recipe: the paper's training, where the defaults above (issue 13's ablation) depart from it
PAPER_RECIPE = {
    "broad_dropout": "none",
    "leaf_probability": "uniform",
    "attribute_pooling": "mean",
    "loss": "infonce",
}


def _broad_dropout(value: str) -> dict[str, float] | None:
    if value.strip().lower() == "none":  # the paper's recipe
        return None
    try:
        return parse_broad_dropout(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _leaf_probability(value: str) -> float | str | None:
    """A probability, "uniform" (None: every node of the path equally likely) or "auto" (resolved by
    check_args, which knows --broad_dropout)."""
    if value.strip().lower() == "uniform":
        return None
    if value.strip().lower() == "auto":
        return "auto"
    return _probability(value)


def _probability(value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a probability in [0, 1]")
    return p


def _sizes(value: str) -> list[int]:
    """ "32,16" -> [32, 16]: the nested Matryoshka sizes."""
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 32,16, got {value!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 32,16, got {value!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    from clipita.cli import OneDefaultHelpFormatter, add_loader_arguments

    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train CLIP-ITA (category-to-image retrieval) with Accelerate: "
        "`python train.py` or `accelerate launch train.py`.",
        formatter_class=OneDefaultHelpFormatter,
    )
    add_loader_arguments(parser)
    data = parser.add_argument_group("training data")
    data.add_argument(
        "--max_train_samples",
        type=int,
        default=None,
        help="use at most this many training products (default: all)",
    )
    data.add_argument(
        "--max_eval_samples", type=int, default=1000, help="validation products ranked at each evaluation"
    )
    data.add_argument(
        "--max_eval_queries",
        type=int,
        default=None,
        help="sample this many category queries per evaluation (default: all)",
    )
    data.add_argument(
        "--pixel_cache_gib",
        type=float,
        default=1.0,
        help="keep training images' processed pixels between epochs, up to this many GiB (0: off)",
    )
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="data loader worker processes (0: the main process)",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--variant", choices=sorted(VARIANTS), default="clip-ita", help="product modalities")
    model.add_argument(
        "--base_model",
        default=None,
        help="a Hugging Face CLIP (Hub id or folder, e.g. openai/clip-vit-base-patch32) to start from; "
        "default: a small CLIP trained from scratch with a tokenizer trained on the catalogue",
    )
    model.add_argument(
        "--image_size", type=int, default=None, help="from-scratch model's input size in pixels (default: 64)"
    )
    model.add_argument("--hidden_size", type=int, default=64, help="from-scratch model: tower width")
    model.add_argument(
        "--num_hidden_layers", type=int, default=2, help="from-scratch model: layers per tower"
    )
    model.add_argument(
        "--vocab_size", type=int, default=4096, help="from-scratch model: tokenizer vocabulary"
    )
    model.add_argument(
        "--attribute_pooling",
        choices=ATTRIBUTE_POOLINGS,
        default="attention",
        help="how the encoded attributes of a product are pooled into one vector: mean (the paper's) or "
        "attention, a learned query (the paper's future work; the default, docs/ablation_tree_leaf.md)",
    )
    model.add_argument(
        "--loss",
        choices=LOSSES,
        default="infonce",
        help="multi_positive: same-category pairs are not negatives",
    )
    model.add_argument(
        "--matryoshka_dims",
        type=_sizes,
        default=None,
        help="nested embedding sizes trained alongside the full one (Matryoshka), e.g. 32,16: embeddings "
        "can then be cut to them (encode_*(dim=...), search.py build --dim, eval.py reports each; default: none)",
    )
    model.add_argument(
        "--temperature",
        type=float,
        default=DEFAULT_TEMPERATURE,
        help="initial softmax temperature (the paper: 1.0, fixed)",
    )
    model.add_argument(
        "--learnable_temperature",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_LEARNABLE_TEMPERATURE,
        help="learn the temperature (CLIP's logit scale)",
    )
    model.add_argument(
        "--category_format",
        choices=("leaf", "path"),
        default="leaf",
        help='category text: "Mugs" or "Home > Kitchen > Mugs"',
    )

    training = parser.add_argument_group("training")
    training.add_argument(
        "--output_dir", default=None, help="the final model folder (default: outputs/<variant>)"
    )
    training.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="delete checkpoints of an earlier run in output_dir instead of refusing to start",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the model's initialisation, the data order and the sampling",
    )
    training.add_argument(
        "--category_level",
        choices=tuple(LEVELS),
        default="all",
        help="which node of a product's path it is trained against: a random one (all), the root (general) "
        "or the leaf (specific)",
    )
    training.add_argument(
        "--leaf_probability",
        type=_leaf_probability,
        default="auto",
        help='"all" level: pair a product with its leaf with this probability, else with one of its broader '
        'nodes uniformly; "uniform": every node of the path equally likely, the paper\'s draw (default: auto, '
        f"{DEFAULT_LEAF_PROBABILITY} with --broad_dropout, uniform with --broad_dropout none)",
    )
    training.add_argument(
        "--broad_dropout",
        type=_broad_dropout,
        default=DEFAULT_BROAD_DROPOUT,
        help='modality dropout for pairs whose node is broader than the leaf, e.g. "title:0.5,image:0.5": '
        "the title is dropped / the image greyed with that probability, decided by (seed, epoch, product), "
        'so a broad category is learnt from what its products share; "none": none, as in --paper_recipe '
        f"(default: {DEFAULT_BROAD_DROPOUT}; docs/ablation_tree_leaf.md)",
    )
    training.add_argument(
        "--paper_recipe",
        action="store_true",
        help="the paper's training as the defaults: "
        + " ".join(f"--{name} {value}" for name, value in PAPER_RECIPE.items())
        + " (a flag given beside it still wins)",
    )
    training.add_argument("--freeze_towers", action="store_true", help="freeze CLIP's vision and text towers")
    training.add_argument("--freeze_vision", action="store_true", help="freeze CLIP's vision tower")
    training.add_argument("--freeze_text", action="store_true", help="freeze CLIP's text tower")
    training.add_argument(
        "--cache_tower_features",
        action="store_true",
        help="compute the frozen towers' outputs once and store them in OUTPUT_DIR/tower_features (keyed by "
        "input content and weights; reused by a resumed or repeated run); needs a --freeze_* flag",
    )
    training.add_argument("--learning_rate", type=float, default=1e-3, help="heads and attribute tower")
    training.add_argument(
        "--tower_learning_rate",
        type=float,
        default=None,
        help="CLIP towers (default: --learning_rate from scratch, 1e-5 from a --base_model)",
    )
    training.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay")
    training.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    training.add_argument(
        "--lr_scheduler",
        choices=SCHEDULERS,
        default="cosine",
        help="learning-rate schedule after the warm-up",
    )
    training.add_argument(
        "--warmup_steps", type=int, default=50, help="steps of linear learning-rate warm-up"
    )
    training.add_argument(
        "--per_device_train_batch_size",
        type=int,
        default=128,
        help="products per micro-batch and process (negatives span every process's batch)",
    )
    training.add_argument(
        "--gradient_accumulation_steps",
        type=int,
        default=1,
        help="micro-batches per step, combined by feature-cache accumulation so that negatives span them all",
    )
    training.add_argument(
        "--num_train_epochs",
        type=float,
        default=None,
        help=f"default: {DEFAULT_MAX_STEPS} steps, whatever the size",
    )
    training.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help=f"overrides --num_train_epochs (default: {DEFAULT_MAX_STEPS} when neither is given)",
    )
    training.add_argument(
        "--mixed_precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="default: the accelerate config's",
    )
    training.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute the towers' activations in the backward pass: less memory, more compute",
    )

    tracking = parser.add_argument_group("evaluation, logging, checkpoints")
    tracking.add_argument("--eval_steps", type=int, default=100, help="validate every N steps (0: never)")
    tracking.add_argument(
        "--per_device_eval_batch_size", type=int, default=256, help="products per batch when validating"
    )
    tracking.add_argument(
        "--keep_best",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the final model is the one with the best validation mAP@10 (else the last)",
    )
    tracking.add_argument("--logging_steps", type=int, default=10, help="log the loss every N steps")
    tracking.add_argument(
        "--report_to",
        choices=TRACKERS,
        default="tensorboard",
        help="experiment tracker for the logged metrics",
    )
    tracking.add_argument(
        "--save_steps", type=int, default=500, help="checkpoint every N steps (and at the end)"
    )
    tracking.add_argument(
        "--checkpoints_total_limit", type=int, default=2, help="keep only the newest N checkpoints"
    )
    tracking.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='a checkpoint folder, or "latest" under output_dir (default: start afresh)',
    )

    hub = parser.add_argument_group("hub")
    hub.add_argument(
        "--push_to_hub", action="store_true", help="upload output_dir (token: HF_TOKEN or `hf auth login`)"
    )
    hub.add_argument("--hub_model_id", default=None, help="repo id (default: the output folder's name)")
    hub.add_argument("--hub_private", action="store_true", help="create the Hub repository as private")
    return parser


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill derived defaults and reject combinations that cannot work, naming the flag."""
    if args.output_dir is None:
        args.output_dir = f"outputs/{args.variant}"
    if args.freeze_towers:
        args.freeze_vision = args.freeze_text = True
    if args.cache_tower_features and not (args.freeze_vision or args.freeze_text):
        raise ValueError(
            "--cache_tower_features needs a frozen tower (--freeze_towers, --freeze_vision or --freeze_text): "
            "a trained tower's outputs change every step"
        )
    if args.tower_learning_rate is None:
        args.tower_learning_rate = 1e-5 if args.base_model else args.learning_rate
    positive = {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "per_device_eval_batch_size": args.per_device_eval_batch_size,
        "learning_rate": args.learning_rate,
        "temperature": args.temperature,
    }
    for name, value in positive.items():
        if value is None or value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}")
    for name in (
        "eval_steps", "save_steps", "logging_steps", "warmup_steps", "dataloader_num_workers", "pixel_cache_gib"
    ):  # fmt: skip
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps <= 0:
        raise ValueError(f"--max_steps must be positive, got {args.max_steps}")
    if args.num_train_epochs is not None and args.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs must be positive, got {args.num_train_epochs}")
    if args.max_steps is None and args.num_train_epochs is None:
        args.max_steps = DEFAULT_MAX_STEPS
    if args.leaf_probability == "auto":  # the leaf pairs keep what broad dropout takes from the broad ones
        args.leaf_probability = DEFAULT_LEAF_PROBABILITY if args.broad_dropout else None
    if args.tower_learning_rate < 0:
        raise ValueError(f"--tower_learning_rate must be >= 0, got {args.tower_learning_rate}")
    if args.report_to != "none" and importlib.util.find_spec(args.report_to) is None:
        # Accelerate would silently drop a tracker whose package is missing.
        raise ValueError(
            f"--report_to {args.report_to}: the {args.report_to} package is not installed "
            f"(pip install {args.report_to}, or --report_to none)"
        )
    if args.per_device_train_batch_size * args.gradient_accumulation_steps < 2:
        raise ValueError("a contrastive batch needs at least 2 pairs: raise --per_device_train_batch_size")
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    if parser.parse_known_args(argv)[0].paper_recipe:
        parser.set_defaults(**PAPER_RECIPE)  # strings, parsed by each flag's type like a default
    args = parser.parse_args(argv)
    try:
        return check_args(args)
    except ValueError as error:
        parser.error(str(error))
