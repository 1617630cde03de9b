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
from transformers import get_scheduler

from clipita.progress import first_line, progress_bar
from clipita.schema import modality_columns
from clipita.training import checkpoints as ckpt
from clipita.training.checkpoints import TrainerState
from clipita.training.collate import EpochSampler, PairCollator, TrainingPairs
from clipita.training.export import build_metrics, push_to_hub, write_outputs
from clipita.training.feature_cache import TowerFeatureCache, check_cacheable
from clipita.training.gradcache import contrastive_step
from clipita.training.model_setup import (
    build_model,
    build_tokenizer,
    enable_activation_checkpointing,
    optimizer_groups,
)
from clipita.training.pixel_cache import with_pixel_memo
from clipita.training.validation import PRIMARY_METRIC, Validator, flatten_metrics
from clipita.tree import NodeVocabulary

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
        from clipita.cli import load_from_args

        if getattr(args, "streaming", False):
            raise ValueError(
                "--streaming is not supported for training: epochs, shuffling and resumption need a map-style dataset"
            )
        dataset, report = load_from_args(args)
        report = str(report)
    if "train" not in dataset:
        raise ValueError(f"the dataset has no train split (splits: {', '.join(dataset)})")
    return dataset, report


def _accelerator(args: argparse.Namespace, output_dir: Path) -> Accelerator:
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("clipita").setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    return accelerator


class Trainer:
    """One run: `__init__` sets up data, model, optimizer and (on resumption) the saved state; `fit` runs
    the steps, evaluating, logging and checkpointing on the way; `finish` exports the final model.

    Every process builds its own Trainer; evaluation, best-model keeping and export run on the main one.
    """

    def __init__(self, args: argparse.Namespace, dataset=None):
        self.started = time.perf_counter()
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.accelerator = accelerator = _accelerator(args, self.output_dir)
        set_seed(args.seed)
        resume = _prepare_output_dir(accelerator, args, self.checkpoints_dir)

        splits, load_report = _load_splits(args, dataset)
        train_rows = _usable_rows(splits["train"], "train")
        if args.max_train_samples and len(train_rows) > args.max_train_samples:
            train_rows = train_rows.shuffle(seed=args.seed).select(range(args.max_train_samples))
        train_paths = [list(p) for p in train_rows["category"]]

        tokenizer = self._run_tokenizer(resume, train_rows)
        model, self.processor = build_model(args, train_rows, tokenizer)
        fingerprint = tokenizer_fingerprint(self.processor)
        _check_same_on_all_processes(accelerator, fingerprint)
        if args.gradient_checkpointing:
            enable_activation_checkpointing(model)
        modalities = model.config.product_modalities

        self.pairs = TrainingPairs(
            train_rows,
            args.category_level,
            args.seed,
            modality_columns(modalities),
            broad_dropout=getattr(args, "broad_dropout", None),
            leaf_probability=getattr(args, "leaf_probability", None),
        )
        loader = DataLoader(
            self.pairs,
            batch_size=args.per_device_train_batch_size,
            sampler=EpochSampler(len(self.pairs), args.seed),
            collate_fn=PairCollator(
                with_pixel_memo(self.processor, int(getattr(args, "pixel_cache_gib", 0.0) * 2**30)),
                NodeVocabulary(train_paths),
                modalities,
            ),
            drop_last=True,
            num_workers=args.dataloader_num_workers,
        )
        optimizer = torch.optim.AdamW(optimizer_groups(model, args), betas=(0.9, 0.98), eps=1e-6)
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)

        self.accumulation = args.gradient_accumulation_steps
        global_batch = args.per_device_train_batch_size * self.accumulation * accelerator.num_processes
        steps_per_epoch = len(self.loader) // self.accumulation
        if steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.pairs)} training products do not fill one step of {global_batch} pairs "
                "(per-device batch x accumulation x processes): lower --per_device_train_batch_size"
            )
        self.total_steps = args.max_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
        self.scheduler = get_scheduler(
            args.lr_scheduler,
            self.optimizer,
            num_warmup_steps=min(args.warmup_steps, self.total_steps),
            num_training_steps=self.total_steps,
        )
        accelerator.register_for_checkpointing(self.scheduler)
        self.validator = self._validator(splits, modalities, train_paths)

        self.state = TrainerState(
            steps_per_epoch=steps_per_epoch,
            global_batch_size=global_batch,
            tokenizer=fingerprint,
            load_report=load_report,
        )
        self.last_checkpoint: Path | None = None
        if resume is not None:
            self._resume(resume)
        self.feature_cache = None
        if getattr(args, "cache_tower_features", False):
            unwrapped = accelerator.unwrap_model(self.model)
            self.feature_cache = TowerFeatureCache(
                unwrapped, self.output_dir, check_cacheable(unwrapped), accelerator.process_index
            )
            self.feature_cache.install()
        if accelerator.is_main_process and args.report_to != "none":
            accelerator.init_trackers(TRACKER_PROJECT, config=_tracker_config(args))

    def _run_tokenizer(self, resume: Path | None, train_rows):
        """The tokenizer of the run: a resumed run's is the one its checkpoint holds; a fresh run's is
        built by the main process alone and loaded by the others, so no process depends on rebuilding it
        identically. None with `--base_model` (its own tokenizer)."""
        if self.args.base_model:
            return None
        if resume is not None:
            saved = ckpt.load_tokenizer(resume / ckpt.TOKENIZER_DIR)
            if saved is not None:
                logger.info("tokenizer: the one saved in %s", resume)
                return saved
            logger.warning("%s holds no tokenizer (an older checkpoint): rebuilding it from the data", resume)
        shared = self.checkpoints_dir / ckpt.TOKENIZER_DIR
        with self.accelerator.main_process_first():
            if self.accelerator.is_main_process:
                tokenizer = build_tokenizer(self.args, train_rows)
                if self.accelerator.num_processes > 1:
                    ckpt.save_tokenizer(tokenizer, shared)
            else:
                tokenizer = ckpt.load_tokenizer(shared)
        return tokenizer

    def _validator(self, splits, modalities, train_paths) -> Validator | None:
        args = self.args
        if args.eval_steps and "validation" not in splits:
            logger.warning("no validation split: no evaluation, and the final model is the last one")
        if not (
            args.eval_steps
            and "validation" in splits
            and len(splits["validation"])
            and self.accelerator.is_main_process
        ):
            return None
        return Validator(
            splits["validation"],
            self.processor,
            modalities,
            args.category_level,
            train_paths,
            max_products=args.max_eval_samples,
            max_queries=args.max_eval_queries,
            batch_size=args.per_device_eval_batch_size,
            seed=args.seed,
        )

    def _resume(self, checkpoint: Path) -> None:
        """Restore Accelerate's state and the trainer state of `checkpoint`, after checking the run's shape."""
        try:
            self.accelerator.load_state(str(checkpoint))
        except Exception as err:  # a damaged optimizer / scheduler / RNG file: name the checkpoint
            first = first_line(err)
            raise ValueError(
                f"cannot resume from {checkpoint}: a file of it is unreadable ({type(err).__name__}: {first}); "
                "pass an older checkpoint folder to --resume_from_checkpoint"
            ) from err
        saved = ckpt.load_trainer_state(checkpoint)
        for key in TrainerState.SHAPE:
            if getattr(saved, key) != getattr(self.state, key):
                raise ValueError(
                    f"cannot resume from {checkpoint}: its {key} is {getattr(saved, key)}, this run's is "
                    f"{getattr(self.state, key)} (same data, batch size, accumulation and number of "
                    "processes are needed)"
                )
        self.state = saved
        self.last_checkpoint = checkpoint
        if self.accelerator.is_main_process:
            best_step = saved.best_step
            ckpt.prune_best(self.checkpoints_dir, keep={best_step})
            if best_step is not None and best_step not in ckpt.best_steps(self.checkpoints_dir):
                logger.warning(
                    "the best model of step %d is gone; best-model tracking starts over", best_step
                )
                saved.best = None
        logger.info("resumed from %s at step %d", checkpoint, saved.global_step)

    def evaluate(self, step: int) -> None:
        """Validate (main process), record the evaluation and keep the model if it is the best so far."""
        if self.validator is not None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            results = self.validator.evaluate(unwrapped)
            self.state.evaluations.append({"step": step, **results})
            flat = flatten_metrics(results)
            self.accelerator.log(flat, step=step)
            logger.info("step %d: validation %s", step, {k: round(v, 4) for k, v in flat.items()})
            score = results["overall"].get(PRIMARY_METRIC)
            if self.args.keep_best and step > 0 and score is not None and self._beats_best(score):
                self.save_best(step, results, score)
        self.accelerator.wait_for_everyone()

    def _beats_best(self, score: float) -> bool:
        return self.state.best is None or score > self.state.best[PRIMARY_METRIC]

    def save_best(self, step: int, results: dict, score: float) -> None:
        """Keep the current weights as the best model (main process)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        ckpt.save_best(self.checkpoints_dir, unwrapped, step, {"step": step, **results})
        self.state.best = {"step": step, PRIMARY_METRIC: score}
        ckpt.prune_best(self.checkpoints_dir, keep={step, self.state.checkpoint_best_step})

    def save_checkpoint(self, step: int) -> Path:
        """A complete checkpoint of the run (every process takes part)."""
        main = self.accelerator.is_main_process
        if self.feature_cache is not None:
            self.feature_cache.save()
        if main:
            self.state.checkpoint_best_step = self.state.best_step
        path = ckpt.save_checkpoint(
            self.accelerator,
            self.checkpoints_dir,
            step,
            self.state,
            self.args.checkpoints_total_limit,
            tokenizer=None if self.args.base_model else self.processor.tokenizer,
        )
        if main:
            ckpt.prune_best(self.checkpoints_dir, keep={self.state.checkpoint_best_step})
        logger.info("saved %s", path)
        self.last_checkpoint = path
        return path

    def log_training(self, step: int, speed: float) -> None:
        """Mean loss of the last `--logging_steps` steps, learning rate, temperature, speed, epoch."""
        recent = [value for _, value in self.state.losses[-self.args.logging_steps :]]
        temperature = 1.0 / self.accelerator.unwrap_model(self.model).logit_scale.exp().item()
        self.accelerator.log(
            {
                "train/loss": sum(recent) / len(recent),
                "train/learning_rate": self.scheduler.get_last_lr()[0],
                "train/temperature": temperature,
                "train/samples_per_second": speed,
                "train/epoch": step / self.state.steps_per_epoch,
            },
            step=step,
        )

    def optimizer_step(self, micro_batches: list[dict], step: int) -> float:
        """One update over the micro-batches; stops before applying a non-finite loss."""
        loss = contrastive_step(self.accelerator, self.model, micro_batches).item()
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(loss, step, self.last_checkpoint)
        if self.args.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def fit(self) -> None:
        """Train up to the last step, resuming where the state says; the data order depends on the step only."""
        args, state = self.args, self.state
        if state.global_step == 0 and not state.evaluations:
            self.evaluate(0)
        step = state.global_step
        bar = progress_bar(
            total=self.total_steps,
            initial=step,
            desc="training",
            unit="step",
            disable=not self.accelerator.is_local_main_process,
        )
        self.model.train()
        skipped = 0
        while step < self.total_steps:
            epoch, position = divmod(step, state.steps_per_epoch)
            self.loader.set_epoch(epoch)  # the sampler's order
            self.pairs.set_epoch(epoch)  # the categories drawn ("all" level)
            batches = (
                self.accelerator.skip_first_batches(self.loader, position * self.accumulation)
                if position
                else self.loader
            )
            micro_batches = []
            step_started = time.perf_counter()
            for batch in batches:
                skipped += int(batch.pop("num_skipped"))
                micro_batches.append(batch)
                if len(micro_batches) < self.accumulation:
                    continue
                loss = self.optimizer_step(micro_batches, step + 1)
                micro_batches = []
                step += 1
                state.global_step = step
                state.samples += state.global_batch_size
                state.train_seconds += time.perf_counter() - step_started
                state.losses.append([step, loss])
                speed = state.samples / max(state.train_seconds, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{speed:.1f}", epoch=epoch)
                if args.logging_steps and step % args.logging_steps == 0:
                    self.log_training(step, speed)
                last = step == self.total_steps
                if args.eval_steps and (step % args.eval_steps == 0 or last):
                    self.evaluate(step)
                if (args.save_steps and step % args.save_steps == 0) or last:
                    self.save_checkpoint(step)
                if last:
                    break
                step_started = time.perf_counter()
        bar.close()
        state.skipped_rows += int(
            self.accelerator.reduce(torch.tensor(skipped, device=self.accelerator.device), reduction="sum")
        )
        if state.skipped_rows:
            logger.warning(
                "%d unreadable training rows were replaced by their neighbours", state.skipped_rows
            )

    def export(self) -> dict | None:
        """Write the final model (the best evaluation's, else the last) and the training record to output_dir;
        returns metrics.json's content on the main process, None on the others."""
        metrics = None
        if self.accelerator.is_main_process:
            unwrapped = self.accelerator.unwrap_model(self.model)
            if self.args.keep_best and self.state.best:
                ckpt.load_best(self.checkpoints_dir, self.state.best_step, unwrapped)
                logger.info(
                    "final model: the best validation %s, at step %d", PRIMARY_METRIC, self.state.best_step
                )
            metrics = build_metrics(self.state, self.args, time.perf_counter() - self.started)
            write_outputs(self.output_dir, unwrapped, self.processor, self.args, self.state, metrics)
            logger.info(
                "model, training_args.json, metrics.json and training_curve.png written to %s",
                self.output_dir,
            )
        self.accelerator.wait_for_everyone()
        return metrics

    def finish(self) -> dict | None:
        """Export, close the trackers, and upload when asked."""
        metrics = self.export()
        self.accelerator.end_training()
        if self.args.push_to_hub and self.accelerator.is_main_process:
            logger.info("uploaded: %s", push_to_hub(self.output_dir, self.args))
        return metrics


def train(args: argparse.Namespace, dataset=None) -> dict:
    """Train per `args` (see `clipita.training.arguments`); returns metrics.json's content (None on processes
    other than the main one).

    `dataset`: splits in the canonical schema (a `DatasetDict`); default: `clipita.cli.load_from_args(args)`.
    """
    trainer = Trainer(args, dataset)
    trainer.fit()
    return trainer.finish()
