"""Training CLIP-ITA: contrastive pairs per category level, gathered negatives, feature-cache accumulation,
atomic checkpoints, validation with the retrieval metrics. `train.py` is the command line over `train`."""

from clipita.training.arguments import build_parser, parse_args
from clipita.training.checkpoints import TrainerState
from clipita.training.trainer import NonFiniteLossError, Trainer, train

__all__ = ["NonFiniteLossError", "Trainer", "TrainerState", "build_parser", "parse_args", "train"]
