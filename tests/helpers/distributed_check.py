"""Run on 2 CPU processes: each process takes its half of a fixed global batch.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m tests.helpers.distributed_check --out DIR

(`accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up; the line above
starts two with torch.distributed's launcher and the gloo backend.)

Saves the loss and the (DDP-averaged) gradients of one contrastive step, without and with feature-cache
accumulation, then runs a 3-step training to check the loop (evaluation, checkpoints, outputs) on 2 processes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from accelerate import Accelerator

from clipita.training import parse_args, train
from clipita.training.gradcache import contrastive_step
from clipita.training.model_setup import freeze_towers
from tests.conftest import tiny_model
from tests.helpers.batches import fixed_batch, gradients, rows_of, split
from tests.helpers.tiny_catalogue import tiny_catalogue
from tests.helpers.train_tiny import tiny_args


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    accelerator = Accelerator()
    if accelerator.num_processes != 2:
        raise SystemExit(
            f"expected 2 processes, got {accelerator.num_processes} ({accelerator.distributed_type})"
        )
    model, processor = tiny_model(loss_type="path_positive")  # labels of both kinds gathered
    freeze_towers(model, vision=False, text=False)  # the training setup: CLIP's unused logit_scale locked
    batch = fixed_batch(model, processor, size=8, level="all")
    half = 4
    rank = accelerator.process_index
    local = {k: v.to(accelerator.device) for k, v in rows_of(batch, rank * half, (rank + 1) * half).items()}
    ddp_model = accelerator.prepare(model)
    for accumulation in (1, 2):
        ddp_model.zero_grad(set_to_none=True)
        loss = contrastive_step(accelerator, ddp_model, split(local, accumulation))
        if accelerator.is_main_process:
            grads = gradients(accelerator.unwrap_model(ddp_model))
            torch.save({"loss": loss.item(), "grads": grads}, out / f"accumulation{accumulation}.pt")
        accelerator.wait_for_everyone()
    train(
        parse_args(tiny_args(out / "run", "--max_steps", "3", "--eval_steps", "2", "--save_steps", "2")),
        dataset=tiny_catalogue(),
    )


if __name__ == "__main__":
    main()
