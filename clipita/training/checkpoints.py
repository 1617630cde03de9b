"""Checkpoints that are either complete or ignored.

`save_checkpoint` writes `checkpoint-<step>.tmp/` (Accelerate's state, then trainer_state.json, then a
COMPLETE marker) and only then renames it to `checkpoint-<step>/`, so a run killed while saving leaves a
`.tmp` folder that resumption skips and removes. The best model (by validation mAP@10) is kept the same way
in `best-<step>/`; a checkpoint records which best folder it relies on, so that folder outlives newer ones
that a resumed run will recreate.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file

from clipita.fileio import publish_dir, write_json
from clipita.loading import json_problem, safetensors_problem

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
BEST_PREFIX = "best-"
BEST_WEIGHTS = "model.safetensors"
BEST_INFO = "best.json"
TOKENIZER_DIR = "tokenizer"  # in every checkpoint, and the run's own copy in the checkpoints folder
_NAME = re.compile(rf"^{PREFIX}(\d+)$")
_BEST_NAME = re.compile(rf"^{BEST_PREFIX}(\d+)$")


@dataclass(kw_only=True)
class TrainerState:
    """What a run has done so far; saved with every checkpoint as trainer_state.json (keys in this order).

    `SHAPE` names the fields that identify the run's shape: a resumed run must match them.
    """

    SHAPE: ClassVar[tuple[str, ...]] = ("global_batch_size", "steps_per_epoch", "tokenizer")

    global_step: int = 0
    steps_per_epoch: int
    global_batch_size: int
    tokenizer: str  # fingerprint of the tokenizer's vocabulary
    samples: int = 0
    train_seconds: float = 0.0
    skipped_rows: int = 0  # unreadable training rows replaced by their neighbours (all processes)
    load_report: str | None = None  # what the catalogue loader skipped; None when the caller gave the data
    losses: list[list[float]] = field(default_factory=list)  # [step, loss] per step
    evaluations: list[dict] = field(default_factory=list)  # {"step", "overall", "seen", "unseen", ...}
    best: dict | None = None  # {"step", PRIMARY_METRIC} of the best evaluation so far
    checkpoint_best_step: int | None = None  # the best folder the latest checkpoint relies on

    @property
    def best_step(self) -> int | None:
        return None if self.best is None else self.best.get("step")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainerState:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{STATE_FILE}: unknown keys {unknown}")
        return cls(**data)


def is_complete(path: Path) -> bool:
    return path.is_dir() and _NAME.match(path.name) is not None and (path / COMPLETE).is_file()


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir() if is_complete(p)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    found = complete_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def resolve_resume(value: str | None, checkpoints_dir: Path) -> Path | None:
    """`--resume_from_checkpoint`: "latest" (None when there is none yet) or a checkpoint folder."""
    if not value:
        return None
    if value == "latest":
        found = None
        for candidate in reversed(complete_checkpoints(checkpoints_dir)):
            problem = checkpoint_problem(candidate)
            if problem is None:
                found = candidate
                break
            logger.warning("--resume_from_checkpoint latest: skipping %s: %s", candidate.name, problem)
        if found is None:
            logger.warning(
                "--resume_from_checkpoint latest: no complete checkpoint in %s; starting fresh",
                checkpoints_dir,
            )
        elif found != latest_checkpoint(checkpoints_dir):
            logger.warning("resuming from %s, the newest checkpoint whose files are whole", found.name)
        return found
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder")
    if not (path / COMPLETE).is_file() or not (path / STATE_FILE).is_file():
        raise ValueError(
            f"--resume_from_checkpoint {value}: not a complete checkpoint (no {COMPLETE} marker or {STATE_FILE}); "
            "it was probably interrupted while saving"
        )
    problem = checkpoint_problem(path)
    if problem:
        raise ValueError(f"--resume_from_checkpoint {value}: {problem}")
    return path


def checkpoint_problem(checkpoint: Path) -> str | None:
    """The first truncated or malformed file of a complete checkpoint, named (None when all are whole):
    trainer_state.json, the tokenizer, and the safetensors weights (their headers and sizes)."""
    files = [checkpoint / STATE_FILE, checkpoint / TOKENIZER_DIR / "tokenizer.json"]
    for file in files:
        problem = (
            json_problem(file) if file.is_file() or file.name == STATE_FILE else None
        )  # older: no tokenizer
        if problem:
            return f"{file}: {problem}"
    for file in sorted(checkpoint.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            return f"{file}: {problem}"
    return None


def remove_partial(checkpoints_dir: Path) -> list[Path]:
    """Delete folders left by interrupted saves (`*.tmp`); returns what was removed."""
    if not checkpoints_dir.is_dir():
        return []
    partial = [p for p in checkpoints_dir.iterdir() if p.is_dir() and p.name.endswith(".tmp")]
    for path in partial:
        logger.warning("removing %s, left by an interrupted save", path)
        shutil.rmtree(path)
    return partial


def rotate(checkpoints_dir: Path, total_limit: int | None) -> None:
    """Keep the newest `total_limit` complete checkpoints."""
    if not total_limit or total_limit < 1:
        return
    for path in complete_checkpoints(checkpoints_dir)[:-total_limit]:
        shutil.rmtree(path)


def save_checkpoint(
    accelerator,
    checkpoints_dir: Path,
    step: int,
    trainer_state: TrainerState,
    total_limit: int | None = None,
    tokenizer=None,
) -> Path:
    """Save Accelerate's full state (model, optimizer, scheduler, RNG, scaler) plus `trainer_state`, and
    the run's `tokenizer` (a resumed run loads it instead of rebuilding it).

    Every process must call it (each writes its RNG state); the main process publishes the folder.
    """
    final = checkpoints_dir / f"{PREFIX}{step}"
    tmp = checkpoints_dir / f"{PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, trainer_state.to_json())
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        publish_dir(tmp, final, COMPLETE)
        rotate(checkpoints_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def save_tokenizer(tokenizer, folder: Path) -> Path:
    """Write `tokenizer` into `folder` whole (built aside, then moved in): a reader never sees half of it."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tokenizer.save_pretrained(str(tmp))
    publish_dir(tmp, folder)
    return folder


def load_tokenizer(folder: Path):
    """The tokenizer `save_tokenizer` or `save_checkpoint` wrote; None when `folder` holds none."""
    if not (folder / "tokenizer.json").is_file():
        return None
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def load_trainer_state(checkpoint: Path) -> TrainerState:
    return TrainerState.from_json(json.loads((checkpoint / STATE_FILE).read_text()))


def best_dir(checkpoints_dir: Path, step: int) -> Path:
    return checkpoints_dir / f"{BEST_PREFIX}{step}"


def best_steps(checkpoints_dir: Path) -> list[int]:
    """Steps of the complete best-model folders, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    steps = []
    for path in checkpoints_dir.iterdir():
        match = _BEST_NAME.match(path.name)
        if match and (path / COMPLETE).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def save_best(checkpoints_dir: Path, model: torch.nn.Module, step: int, info: dict) -> Path:
    """Keep the current weights as the best model of `step` (main process only)."""
    final = best_dir(checkpoints_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(tmp / BEST_WEIGHTS), metadata={"format": "pt"})
    write_json(tmp / BEST_INFO, info)
    publish_dir(tmp, final, COMPLETE)
    return final


def prune_best(checkpoints_dir: Path, keep: Collection[int]) -> None:
    """Drop the best-model folders of steps not in `keep` (the newest best, and the one the latest
    checkpoint refers to; on resumption, only the one the resumed checkpoint refers to)."""
    for step in best_steps(checkpoints_dir):
        if step not in keep:
            shutil.rmtree(best_dir(checkpoints_dir, step))


def load_best(checkpoints_dir: Path, step: int, model: torch.nn.Module) -> dict:
    """Load the best weights kept for `step` into `model`; returns their info."""
    folder = best_dir(checkpoints_dir, step)
    if not (folder / COMPLETE).is_file():
        raise FileNotFoundError(f"the best model of step {step} is missing from {folder}")
    model.load_state_dict(load_file(str(folder / BEST_WEIGHTS)))
    return json.loads((folder / BEST_INFO).read_text())
