"""Train CLIP-ITA for category-to-image retrieval.

    python train.py --output_dir outputs/clip-ita                      # small model from scratch, demo data
    accelerate launch train.py --base_model openai/clip-vit-base-patch32 --dataset DATASET ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ...   # 2 CPU processes

(With Accelerate 1.x, `accelerate launch --cpu --num_processes 2` starts one process unless MPI is set up.)
`python train.py --help` lists every option; the library code is in clipita/training/.
"""

import os

# OpenMP threads that spin while waiting take the cores from any other busy process (another training
# process, the data loader) and slow every step down; passive waiting avoids that. Set before torch loads;
# export OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clipita.training import parse_args, train  # noqa: E402


def main(argv=None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    import sys

    from clipita.cli import run_command

    sys.exit(run_command(main))
