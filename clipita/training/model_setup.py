"""The model, processor and optimizer a run starts from: a small CLIP trained from scratch (default) or a
pretrained Hugging Face CLIP (`--base_model`), the towers frozen as the flags say, with separate learning
rates for towers and heads."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator

import torch

import clipita.bootstrap as bootstrap
from clipita.progress import quiet_loading
from configuration_clipita import VARIANTS
from modeling_clipita import CLIPITAModel
from processing_clipita import CLIPITAProcessor, attribute_strings

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 64


def training_texts(rows) -> Iterator[str]:
    """Titles, "key: value" attributes and category names of the training split: the tokenizer's corpus."""
    for row in rows.select_columns(["title", "attributes", "category"]):
        if row["title"]:
            yield row["title"]
        yield from attribute_strings(row["attributes"])
        yield from row["category"]


def model_config_overrides(args: argparse.Namespace) -> dict:
    return dict(
        attribute_pooling=args.attribute_pooling,
        loss_type=args.loss,
        contrastive_temperature=args.temperature,
        learnable_temperature=args.learnable_temperature,
        matryoshka_dims=getattr(args, "matryoshka_dims", None),
    )


def freeze_towers(model: CLIPITAModel, vision: bool, text: bool) -> None:
    """Lock the CLIP towers (and their projections) named (paper: both, only the new heads learn).

    A training choice, not part of the saved model: `build_model` applies the flags, for a fresh run and
    for a resumed one alike (resuming loads weights into the model it builds). CLIP's own logit_scale is
    always locked: CLIP-ITA uses its own temperature, and an unused trainable parameter would break DDP.
    """
    clip = model.clip
    for module, frozen in (
        (clip.vision_model, vision),
        (clip.visual_projection, vision),
        (clip.text_model, text),
        (clip.text_projection, text),
    ):
        module.requires_grad_(not frozen)
    clip.logit_scale.requires_grad_(False)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute the towers' activations in the backward pass (non-reentrant), on any transformers 5.

    transformers renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable` after 5.4
    and made the old name a deprecated alias (a FutureWarning, removed in v6): the current name where it
    exists, the old one on the versions that only have it.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_tokenizer(args: argparse.Namespace, train_rows):
    """The tokenizer a from-scratch run trains on its training split (None with `--base_model`)."""
    if args.base_model:
        return None
    return bootstrap.train_clip_tokenizer(training_texts(train_rows), vocab_size=args.vocab_size)


def build_model(
    args: argparse.Namespace, train_rows, tokenizer=None
) -> tuple[CLIPITAModel, CLIPITAProcessor]:
    """`--base_model` through `CLIPITAModel.from_clip`, else `bootstrap.build_default_model` (with
    `tokenizer` when given, else one trained on `train_rows`); then the `--freeze_*` flags."""
    model, processor = _build_model(args, train_rows, tokenizer)
    freeze_towers(model, vision=args.freeze_vision, text=args.freeze_text)
    return model, processor


def _build_model(args: argparse.Namespace, train_rows, tokenizer) -> tuple[CLIPITAModel, CLIPITAProcessor]:
    if args.base_model:
        from transformers import AutoImageProcessor, AutoTokenizer

        with quiet_loading():
            model = CLIPITAModel.from_clip(
                args.base_model, product_modalities=VARIANTS[args.variant], **model_config_overrides(args)
            )
        image_processor = AutoImageProcessor.from_pretrained(args.base_model)
        if args.image_size:
            logger.warning("--image_size is ignored with --base_model: the base model's processor decides")
        tokenizer = AutoTokenizer.from_pretrained(args.base_model)
        tokenizer.model_max_length = model.config.clip_config.text_config.max_position_embeddings
        processor = CLIPITAProcessor(image_processor, tokenizer, category_format=args.category_format)
        return model, processor
    model, processor = bootstrap.build_default_model(
        training_texts(train_rows),
        variant=args.variant,
        seed=args.seed,
        image_size=args.image_size or DEFAULT_IMAGE_SIZE,
        hidden_size=args.hidden_size,
        layers=args.num_hidden_layers,
        vocab_size=args.vocab_size,
        tokenizer=tokenizer,
        **model_config_overrides(args),
    )
    processor.category_format = args.category_format
    return model, processor


def _decays(name: str, parameter: torch.nn.Parameter) -> bool:
    """Weight decay on matrices only: not on biases, norms, embeddings or the temperature."""
    return parameter.ndim >= 2 and "embedding" not in name


def optimizer_groups(model: CLIPITAModel, args: argparse.Namespace) -> list[dict]:
    """AdamW parameter groups: CLIP towers at `tower_learning_rate`, the rest (attribute tower, heads,
    temperature) at `learning_rate`; frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((name.startswith("clip."), _decays(name, parameter)), []).append(parameter)
    return [
        {
            "params": params,
            "lr": args.tower_learning_rate if tower else args.learning_rate,
            "weight_decay": args.weight_decay if decay else 0.0,
            "name": f"{'towers' if tower else 'heads'}{'' if decay else '_no_decay'}",
        }
        for (tower, decay), params in sorted(groups.items())
    ]
