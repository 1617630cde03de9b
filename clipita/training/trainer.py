"""The training loop: Accelerate for devices, processes and mixed precision; feature-cache accumulation and
gathered negatives for the contrastive loss; validation with the retrieval metrics; atomic checkpoints.

Resumption is exact: the data order and the category drawn for each product depend only on
(seed, epoch, index), Accelerate restores weights, optimizer, scheduler and RNG states, and a resumed epoch
skips the batches already seen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from clipita.training import checkpoints as ckpt
from clipita.training.collate import (
    CategoryVocabulary,
    EpochSampler,
    PairCollator,
    TrainingPairs,
    dataset_columns,
)
from clipita.training.export import build_metrics, push_to_hub, write_outputs
from clipita.training.gradcache import contrastive_step
from clipita.training.model_setup import build_model, optimizer_groups
from clipita.training.validation import PRIMARY_METRIC, Validator, flatten_metrics

logger = logging.getLogger(__name__)

TRACKER_PROJECT = "clipita"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops before the optimizer applies it."""

    def __init__(self, loss: float, step: int, checkpoint: Path | None):
        self.step = step
        self.checkpoint = checkpoint
        where = (
            f"the last good checkpoint is {checkpoint} (resume with --resume_from_checkpoint latest, "
            "perhaps with a lower --learning_rate)"
            if checkpoint
            else "no checkpoint was saved before it"
        )
        super().__init__(
            f"training loss is {loss} at step {step}; stopped before updating the weights; {where}"
        )


def tokenizer_fingerprint(processor) -> str:
    """Identifies the tokenizer's vocabulary: processes and resumed runs must agree on it."""
    vocab = sorted(processor.tokenizer.get_vocab().items())
    return hashlib.sha1(json.dumps(vocab).encode()).hexdigest()[:16]


def _check_same_on_all_processes(accelerator: Accelerator, fingerprint: str) -> None:
    if accelerator.num_processes == 1:
        return
    local = torch.tensor([int(fingerprint, 16) & (2**62 - 1)], device=accelerator.device)
    if not bool((accelerator.gather(local) == local).all()):
        raise RuntimeError(
            "processes built different tokenizers from the same data; pass --base_model or a fixed tokenizer"
        )


def _tracker_config(args: argparse.Namespace) -> dict:
    """Run arguments as the scalar values trackers accept."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}


def _prepare_output_dir(
    accelerator: Accelerator, args: argparse.Namespace, checkpoints_dir: Path
) -> Path | None:
    """Clean interrupted saves, decide where to resume from, refuse to mix with an earlier run.

    Every process decides (and fails) alike, so that no process waits for one that raised.
    """
    resume = ckpt.resolve_resume(args.resume_from_checkpoint, checkpoints_dir)
    leftovers = resume is None and bool(
        ckpt.complete_checkpoints(checkpoints_dir) or ckpt.best_steps(checkpoints_dir)
    )
    if leftovers and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise FileExistsError(
            f"{checkpoints_dir} holds checkpoints of an earlier run: pass --resume_from_checkpoint latest "
            "to continue it, or --overwrite_output_dir to start over"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        if leftovers:  # --overwrite_output_dir, or "latest" before any complete checkpoint: start afresh
            shutil.rmtree(checkpoints_dir)
        ckpt.remove_partial(checkpoints_dir)
    accelerator.wait_for_everyone()
    return resume


def _usable_rows(rows, name: str):
    """Drop products without a category path (they cannot be paired), saying how many."""
    keep = [i for i, path in enumerate(rows["category"]) if path]
    if len(keep) < len(rows):
        logger.warning(
            "%s: %d of %d products have no category path and are skipped",
            name,
            len(rows) - len(keep),
            len(rows),
        )
        rows = rows.select(keep)
    if len(rows) == 0:
        raise ValueError(f"the {name} split has no product with a category path")
    return rows


def _load_splits(args: argparse.Namespace, dataset) -> tuple[dict, str | None]:
    """The splits, and what the loader skipped (None when the caller passed the dataset)."""
    report = None
    if dataset is not None:
        args.dataset = (
            None  # the record (training_args.json, card) must not name a catalogue that was not used
        )
    else:
        from clipita.data import load_from_args

        if getattr(args, "streaming", False):
            raise ValueError(
                "--streaming is not supported for training: epochs, shuffling and resumption need a map-style dataset"
            )
        dataset, report = load_from_args(args)
        report = str(report)
    if "train" not in dataset:
        raise ValueError(f"the dataset has no train split (splits: {', '.join(dataset)})")
    return dataset, report


def train(args: argparse.Namespace, dataset=None) -> dict:
    """Train per `args` (see `clipita.training.arguments`); returns metrics.json's content.

    `dataset`: splits in the canonical schema (a `DatasetDict`); default: `clipita.data.load_from_args(args)`.
    """
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("clipita").setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed)
    resume = _prepare_output_dir(accelerator, args, checkpoints_dir)

    splits, load_report = _load_splits(args, dataset)
    train_rows = _usable_rows(splits["train"], "train")
    if args.max_train_samples and len(train_rows) > args.max_train_samples:
        train_rows = train_rows.shuffle(seed=args.seed).select(range(args.max_train_samples))
    train_paths = [list(p) for p in train_rows["category"]]

    model, processor = build_model(args, train_rows)
    fingerprint = tokenizer_fingerprint(processor)
    _check_same_on_all_processes(accelerator, fingerprint)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    modalities = model.config.product_modalities

    pairs = TrainingPairs(train_rows, args.category_level, args.seed, dataset_columns(modalities))
    loader = DataLoader(
        pairs,
        batch_size=args.per_device_train_batch_size,
        sampler=EpochSampler(len(pairs), args.seed),
        collate_fn=PairCollator(processor, CategoryVocabulary(train_paths), modalities),
        drop_last=True,
        num_workers=args.dataloader_num_workers,
    )
    optimizer = torch.optim.AdamW(optimizer_groups(model, args), betas=(0.9, 0.98), eps=1e-6)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    accumulation = args.gradient_accumulation_steps
    global_batch = args.per_device_train_batch_size * accumulation * accelerator.num_processes
    steps_per_epoch = len(loader) // accumulation
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(pairs)} training products do not fill one step of {global_batch} pairs "
            "(per-device batch x accumulation x processes): lower --per_device_train_batch_size"
        )
    total_steps = args.max_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=min(args.warmup_steps, total_steps),
        num_training_steps=total_steps,
    )
    accelerator.register_for_checkpointing(scheduler)

    validator = None
    if (
        args.eval_steps
        and "validation" in splits
        and len(splits["validation"])
        and accelerator.is_main_process
    ):
        validator = Validator(
            splits["validation"],
            processor,
            modalities,
            args.category_level,
            train_paths,
            max_products=args.max_eval_samples,
            max_queries=args.max_eval_queries,
            batch_size=args.per_device_eval_batch_size,
            seed=args.seed,
        )
    elif args.eval_steps and "validation" not in splits:
        logger.warning("no validation split: no evaluation, and the final model is the last one")

    state = {
        "global_step": 0,
        "steps_per_epoch": steps_per_epoch,
        "global_batch_size": global_batch,
        "tokenizer": fingerprint,
        "samples": 0,
        "train_seconds": 0.0,
        "skipped_rows": 0,
        "load_report": load_report,
        "losses": [],
        "evaluations": [],
        "best": None,
        "checkpoint_best_step": None,
    }
    last_checkpoint = None
    if resume is not None:
        accelerator.load_state(str(resume))
        saved = ckpt.load_trainer_state(resume)
        for key in ("global_batch_size", "steps_per_epoch", "tokenizer"):
            if saved[key] != state[key]:
                raise ValueError(
                    f"cannot resume from {resume}: its {key} is {saved[key]}, this run's is {state[key]} "
                    "(same data, batch size, accumulation and number of processes are needed)"
                )
        state = saved
        last_checkpoint = resume
        if accelerator.is_main_process:
            best_step = (state["best"] or {}).get("step")
            ckpt.prune_best(checkpoints_dir, keep={best_step})
            if best_step is not None and best_step not in ckpt.best_steps(checkpoints_dir):
                logger.warning(
                    "the best model of step %d is gone; best-model tracking starts over", best_step
                )
                state["best"] = None
        logger.info("resumed from %s at step %d", resume, state["global_step"])

    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(TRACKER_PROJECT, config=_tracker_config(args))

    def evaluate(step: int) -> None:
        if validator is not None:
            unwrapped = accelerator.unwrap_model(model)
            results = validator.evaluate(unwrapped)
            record = {"step": step, **results}
            state["evaluations"].append(record)
            accelerator.log(flatten_metrics(results), step=step)
            score = results["overall"].get(PRIMARY_METRIC)
            logger.info(
                "step %d: validation %s", step, {k: round(v, 4) for k, v in flatten_metrics(results).items()}
            )
            best = state["best"]
            if (
                args.keep_best
                and step > 0
                and score is not None
                and (best is None or score > best[PRIMARY_METRIC])
            ):
                ckpt.save_best(checkpoints_dir, unwrapped, step, {"step": step, **results})
                state["best"] = {"step": step, PRIMARY_METRIC: score}
                ckpt.prune_best(checkpoints_dir, keep={step, state["checkpoint_best_step"]})
        accelerator.wait_for_everyone()

    def save(step: int) -> Path:
        if accelerator.is_main_process:
            state["checkpoint_best_step"] = (state["best"] or {}).get("step")
        path = ckpt.save_checkpoint(accelerator, checkpoints_dir, step, state, args.checkpoints_total_limit)
        if accelerator.is_main_process:
            ckpt.prune_best(checkpoints_dir, keep={state["checkpoint_best_step"]})
        logger.info("saved %s", path)
        return path

    if state["global_step"] == 0 and not state["evaluations"]:
        evaluate(0)

    step = state["global_step"]
    progress = tqdm(
        total=total_steps,
        initial=step,
        desc="training",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    skipped = 0
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        loader.set_epoch(epoch)  # the sampler's order
        pairs.set_epoch(epoch)  # the categories drawn ("all" level)
        batches = accelerator.skip_first_batches(loader, position * accumulation) if position else loader
        micro_batches = []
        step_started = time.perf_counter()
        for batch in batches:
            skipped += int(batch.pop("num_skipped"))
            micro_batches.append(batch)
            if len(micro_batches) < accumulation:
                continue
            loss = contrastive_step(accelerator, model, micro_batches).item()
            micro_batches = []
            if not math.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(loss, step + 1, last_checkpoint)
            if args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state["global_step"] = step
            state["samples"] += global_batch
            state["train_seconds"] += time.perf_counter() - step_started
            state["losses"].append([step, loss])
            speed = state["samples"] / max(state["train_seconds"], 1e-9)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{speed:.1f}", epoch=epoch)
            if args.logging_steps and step % args.logging_steps == 0:
                recent = [value for _, value in state["losses"][-args.logging_steps :]]
                accelerator.log(
                    {
                        "train/loss": sum(recent) / len(recent),
                        "train/learning_rate": scheduler.get_last_lr()[0],
                        "train/temperature": 1.0 / accelerator.unwrap_model(model).logit_scale.exp().item(),
                        "train/samples_per_second": speed,
                        "train/epoch": step / steps_per_epoch,
                    },
                    step=step,
                )
            last = step == total_steps
            if args.eval_steps and (step % args.eval_steps == 0 or last):
                evaluate(step)
            if (args.save_steps and step % args.save_steps == 0) or last:
                last_checkpoint = save(step)
            if last:
                break
            step_started = time.perf_counter()
    progress.close()

    state["skipped_rows"] = state.get("skipped_rows", 0) + int(
        accelerator.reduce(torch.tensor(skipped, device=accelerator.device), reduction="sum")
    )
    if state["skipped_rows"]:
        logger.warning("%d unreadable training rows were replaced by their neighbours", state["skipped_rows"])
    metrics = None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if args.keep_best and state["best"]:
            ckpt.load_best(checkpoints_dir, state["best"]["step"], unwrapped)
            logger.info(
                "final model: the best validation %s, at step %d", PRIMARY_METRIC, state["best"]["step"]
            )
        metrics = build_metrics(state, args, time.perf_counter() - started)
        write_outputs(output_dir, unwrapped, processor, args, state, metrics)
        logger.info(
            "model, training_args.json, metrics.json and training_curve.png written to %s", output_dir
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        logger.info("uploaded: %s", push_to_hub(output_dir, args))
    return metrics
