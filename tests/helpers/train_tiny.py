"""A tiny training run (seconds on a CPU), shared by the in-process tests and the subprocess that is killed.

    python -m tests.helpers.train_tiny OUTPUT_DIR [--kill_while_saving STEP] [train.py flags...]

`--kill_while_saving STEP` (test-only) SIGKILLs this process while checkpoint STEP is being written: after
Accelerate saved its state into the temporary folder, before the checkpoint is marked complete.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

TINY_FLAGS = [
    "--hidden_size", "32", "--num_hidden_layers", "1", "--image_size", "32", "--vocab_size", "600",
    "--per_device_train_batch_size", "8", "--learning_rate", "2e-3", "--warmup_steps", "2",
    "--report_to", "none", "--max_eval_samples", "24", "--per_device_eval_batch_size", "32",
]  # fmt: skip


def tiny_args(output_dir, *flags: str) -> list[str]:
    return ["--output_dir", str(output_dir), *TINY_FLAGS, *flags]


def main(argv: list[str]) -> None:
    from clipita.training import checkpoints, parse_args, train
    from tests.helpers.tiny_catalogue import tiny_catalogue

    output_dir, *flags = argv
    if "--kill_while_saving" in flags:
        at = flags.index("--kill_while_saving")
        kill_step = int(flags[at + 1])
        del flags[at : at + 2]
        publish = checkpoints.publish_dir

        def publish_or_die(tmp: Path, final: Path, marker: str | None = None) -> None:
            if final.name == f"{checkpoints.PREFIX}{kill_step}":
                os.kill(os.getpid(), signal.SIGKILL)
            publish(tmp, final, marker)

        checkpoints.publish_dir = publish_or_die
    train(parse_args(tiny_args(output_dir, *flags)), dataset=tiny_catalogue())


if __name__ == "__main__":
    main(sys.argv[1:])
