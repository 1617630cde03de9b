"""Frozen towers: epoch samples/s with the tower feature cache (`--cache_tower_features`) against without.

Two copies of one model with frozen towers train on the same products, through the trainer's pieces
(`TrainingPairs`, `PairCollator`, `contrastive_step`, AdamW on the heads), epoch after epoch, their epochs
alternating so that load drifts hit both: one computes the towers every step, the other through a
`TowerFeatureCache` (its first epoch computes and stores the features, later ones read them; category
nodes are drawn anew each epoch at level "all", so a later epoch may still meet a new category name).
Both collate as the trainer does, processed pixels kept between epochs (`--pixel-cache-gib`, train.py's
`--pixel_cache_gib`; 0 resizes every image every epoch).
Each epoch's time is split into waiting for data (decode, resize, tokenise) and the steps. Last line: the
samples/s ratio of a cached epoch after the first over an uncached one, `ratio 25.0`.

    python bench/cached_features.py --quick
    python bench/cached_features.py --config vit-b-32 --device cuda --products 2048 --batch-size 128
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

if __package__:  # imported: python -m bench.cached_features, or the tests
    from bench import _machine, common
else:  # run as a script, python bench/cached_features.py: its folder is on sys.path
    import _machine
    import common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--dataset", default="demo", help="catalogue whose train split is trained on")
    parser.add_argument(
        "--products", type=int, default=None, help="products per epoch (default: 16 quick, 64)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per side (default: 2 quick, 3)")
    parser.add_argument("--level", default="all", choices=("all", "general", "specific"))
    parser.add_argument(
        "--pixel-cache-gib",
        type=float,
        default=1.0,
        help="processed pixels kept between epochs, both sides (train.py's --pixel_cache_gib; 0: off)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed steps of the uncached side first (the process warms up)",
    )
    args = parser.parse_args(argv)
    args.products = args.products or (16 if args.quick else 64)
    args.epochs = args.epochs or (2 if args.quick else 3)
    if args.batch_size < 2 or args.products < args.batch_size or args.epochs < 2:
        parser.error("need --batch-size >= 2, --products >= --batch-size and --epochs >= 2")
    return args


class Side:
    """One model and its data loader; `epoch(e)` trains one epoch and returns (seconds, data seconds)."""

    def __init__(self, model, processor, rows, args, accelerator):
        from torch.utils.data import DataLoader

        from clipita.schema import modality_columns
        from clipita.training.collate import EpochSampler, PairCollator, TrainingPairs
        from clipita.training.pixel_cache import with_pixel_memo
        from clipita.tree import NodeVocabulary

        modalities = model.config.product_modalities
        self.model, self.accelerator = model.to(accelerator.device).train(), accelerator
        self.pairs = TrainingPairs(rows, args.level, args.seed, modality_columns(modalities))
        self.sampler = EpochSampler(len(self.pairs), args.seed)
        self.loader = DataLoader(
            self.pairs,
            batch_size=args.batch_size,
            sampler=self.sampler,
            collate_fn=PairCollator(
                with_pixel_memo(processor, int(args.pixel_cache_gib * 2**30)),
                NodeVocabulary([list(p) for p in rows["category"]]),
                modalities,
            ),
            drop_last=True,
        )
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.steps = len(self.loader)

    def epoch(self, epoch: int, max_steps: int | None = None) -> tuple[float, float]:
        from clipita.training.gradcache import contrastive_step

        self.pairs.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        device = self.accelerator.device
        data_seconds = 0.0
        start = time.perf_counter()
        batches = iter(self.loader)
        for _ in range(self.steps if max_steps is None else max_steps):
            fetched = time.perf_counter()
            batch = next(batches, None)
            data_seconds += time.perf_counter() - fetched
            if batch is None:
                break
            batch.pop("num_skipped")
            contrastive_step(self.accelerator, self.model, [{k: v.to(device) for k, v in batch.items()}])
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        _machine.synchronize(device)
        return time.perf_counter() - start, data_seconds


def main(argv: list[str] | None = None) -> float:
    from accelerate import Accelerator

    from clipita.data import load_catalogue
    from clipita.training.feature_cache import TowerFeatureCache, check_cacheable
    from clipita.training.model_setup import freeze_towers, training_texts

    args = parse_args(argv)
    common.apply_threads(args.threads)
    device = _machine.resolve_device(args.device)
    torch.manual_seed(args.seed)
    rows = load_catalogue(args.dataset, split="train")
    rows = rows.select(range(min(args.products, len(rows))))
    model, processor = common.build_model(args.config, seed=args.seed, texts=list(training_texts(rows)))
    freeze_towers(model, vision=True, text=True)
    accelerator = Accelerator(cpu=device.type == "cpu")
    sides = {"uncached": Side(copy.deepcopy(model), processor, rows, args, accelerator)}
    cached_model = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as run_dir:
        cache = TowerFeatureCache(cached_model, run_dir, check_cacheable(cached_model))
        cache.install()
        sides["cached"] = Side(cached_model, processor, rows, args, accelerator)
        if args.warmup:
            sides["uncached"].epoch(0, max_steps=min(args.warmup, sides["uncached"].steps))
        times = {name: [] for name in sides}
        for epoch in range(args.epochs):
            for name, side in sides.items():
                times[name].append(side.epoch(epoch))
        cache.save()
        stored = sum(p.stat().st_size for p in cache.folder.glob("*.safetensors"))
    samples = sides["uncached"].steps * args.batch_size

    print(
        f"== cached_features: config {args.config}, towers frozen, {samples} products per epoch from "
        f"{args.dataset}'s train split (level {args.level}), batch {args.batch_size}, {args.epochs} epochs "
        f"per side, the sides' epochs alternating; processed pixels kept up to {args.pixel_cache_gib} GiB"
    )
    print(_machine.command_line())
    print(_machine.describe_machine(device))
    print(f"{'side':10}{'epoch':>6}{'seconds':>10}{'samples/s':>11}{'waiting for data':>18}")
    for name, epochs in times.items():
        for epoch, (seconds, data) in enumerate(epochs):
            print(f"{name:10}{epoch:>6}{seconds:10.2f}{samples / seconds:11.2f}{data / seconds:>18.0%}")
    uncached = statistics.median(seconds for seconds, _ in times["uncached"])
    first = times["cached"][0][0] / times["uncached"][0][0]  # the same epoch's pairs, run back to back
    later = statistics.median(seconds for seconds, _ in times["cached"][1:])
    print(
        f"features stored: {stored / 2**20:.1f} MiB for {sum(len(v) for v in cache.features.values())} inputs "
        f"({', '.join(f'{n} {k}' for k, n in cache.computed.items())} computed)"
    )
    print(f"first (caching) epoch / the same epoch uncached: time {first:.2f}x")
    ratio = uncached / later
    print(f"cached epochs after the first / uncached: samples/s {ratio:.1f}x")
    print(f"ratio {ratio:.1f}")
    return ratio


if __name__ == "__main__":
    main()
