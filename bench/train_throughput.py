"""Samples/s of a CLIP-ITA training step against a plain CLIP contrastive step.

Same towers, same batches, drawn from a real catalogue through the training pipeline
(`clipita.training.collate`: pairs at a category level, the processor), so that nodes and attribute
strings repeat as they do in training. CLIP-ITA: forward with `return_loss=True` (image, title, each
attribute and the category name through the towers, heads, bidirectional InfoNCE), backward, AdamW
step, three ways: the default (each distinct text of a step through the text tower once, in length
buckets, and each tower's last layer run for its pooled token only), whole towers (`pooled_last_layer=False`:
unique texts, every token through the last layer) and every text through whole towers
(`deduplicate_texts=False` too, the path before issue 15).
Plain: `CLIPModel(pixel_values, title ids, return_loss=True)` (image and title only), backward, AdamW
step. One process per category level (all / general / specific) runs the four sides from the same
initial weights on the same batches, their steps interleaved, so that a loaded machine slows them alike.
Per level it prints the fraction of text-tower sequences that deduplication removes, and the time the
data pipeline takes to make a batch (decode, resize, tokenise: what the trainer waits for with
`--dataloader_num_workers 0`) against the step. Encoder-layer forwards per step show whether
checkpointing reached the CLIP towers (with it, every layer runs twice). Last line: the lowest samples/s
ratio CLIP-ITA / plain over the levels, `ratio 0.90`.

    python bench/train_throughput.py --quick
    python bench/train_throughput.py --config vit-b-32 --device cuda --batch-size 128
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch

from clipita.training.model_setup import enable_activation_checkpointing

if __package__:  # imported: python -m bench.train_throughput, or the tests
    from bench import _machine, common
else:  # run as a script, python bench/train_throughput.py: its folder is on sys.path
    import _machine
    import common

SIDES = {
    "clipita": "CLIP-ITA",
    "whole": "CLIP-ITA, whole towers",
    "every": "CLIP-ITA, every text",
    "plain": "plain CLIP",
}
LEVELS = ("all", "general", "specific")
RESULT_PREFIX = "RESULT "


class LayerForwardCounter:
    """Counts forwards of the towers' encoder layers, recomputations under checkpointing included.

    The count is a pre-hook on each layer's MLP: a recomputation stops as soon as the last saved
    activation (the MLP's second linear's input) is rebuilt, so it enters the MLP but never
    returns from it, and a post-hook would miss it.
    """

    def __init__(self, model):
        from transformers.modeling_layers import GradientCheckpointingLayer

        self.layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        self.calls = 0
        self.handles = [layer.mlp.register_forward_pre_hook(self._count) for layer in self.layers]

    def _count(self, *_):
        self.calls += 1

    @property
    def checkpointed(self) -> int:
        return sum(bool(layer.gradient_checkpointing) for layer in self.layers)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def training_batches(args: argparse.Namespace, processor, modalities) -> tuple[list[dict], list[float]]:
    """The first `warmup + steps` batches of epoch 0 at `args.level`, as the trainer's data loader makes
    them (`--dataloader_num_workers 0`), and the seconds each took to make."""
    from torch.utils.data import DataLoader

    from clipita.schema import modality_columns
    from clipita.training.collate import EpochSampler, PairCollator, TrainingPairs
    from clipita.tree import NodeVocabulary

    rows = args.rows
    pairs = TrainingPairs(rows, args.level, args.seed, modality_columns(modalities))
    collate = PairCollator(processor, NodeVocabulary([list(p) for p in rows["category"]]), modalities)
    loader = iter(
        DataLoader(
            pairs,
            batch_size=args.batch_size,
            sampler=EpochSampler(len(pairs), args.seed),
            collate_fn=collate,
            drop_last=True,
        )
    )
    batches, seconds = [], []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        batch = next(loader, None)
        if batch is None:
            raise SystemExit(
                f"{len(pairs)} training products make fewer than {args.warmup + args.steps} batches of "
                f"{args.batch_size}: lower --steps or --batch-size"
            )
        seconds.append(time.perf_counter() - start)
        batch.pop("num_skipped")
        batches.append(batch)
    return batches, seconds


def distinct_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Distinct (ids, mask) rows: the sequences unique-text encoding sends through the text tower."""
    return int(torch.unique(torch.cat([input_ids, attention_mask], dim=1), dim=0).shape[0])


def text_sequences(batch: dict) -> dict[str, tuple[int, int]]:
    """(every, distinct) text sequences of a batch, per kind of text."""
    real = batch["attribute_mask"].bool()
    kinds = {
        "titles": (batch["title_input_ids"], batch["title_attention_mask"]),
        "attributes": (batch["attribute_input_ids"][real], batch["attribute_attention_mask"][real]),
        "categories": (batch["category_input_ids"], batch["category_attention_mask"]),
    }
    return {kind: (ids.shape[0], distinct_rows(ids, mask)) for kind, (ids, mask) in kinds.items()}


def run_worker(args: argparse.Namespace) -> dict:
    """One level x checkpointing setting in this process: every side on the same batches, their steps
    interleaved (the order rotating each step) so that load on the machine hits them alike."""
    from clipita.data import load_catalogue
    from clipita.training.model_setup import training_texts

    device = _machine.resolve_device(args.device)
    args.rows = load_catalogue(args.dataset, split="train")
    model, processor = common.build_model(args.config, seed=args.seed, texts=list(training_texts(args.rows)))
    batches, data_seconds = training_batches(args, processor, model.config.product_modalities)
    sequences = [text_sequences(batch) for batch in batches[args.warmup :]]
    batches = [{k: v.to(device) for k, v in batch.items() if k != "category_ids"} for batch in batches]
    whole = copy.deepcopy(model)
    whole.config.pooled_last_layer = False
    every = copy.deepcopy(whole)
    every.config.deduplicate_texts = False
    plain = copy.deepcopy(model).clip
    plain.logit_scale.requires_grad_(True)  # CLIP-ITA freezes CLIP's own scale; plain CLIP learns it
    nets = {"clipita": model, "whole": whole, "every": every, "plain": plain}

    def loss_of(side, net, batch):
        if side != "plain":
            return net(**batch, return_loss=True).loss
        return net(
            pixel_values=batch["pixel_values"],
            input_ids=batch["title_input_ids"],
            attention_mask=batch["title_attention_mask"],
            return_loss=True,
        ).loss

    counters, optimizers = {}, {}
    for side, net in nets.items():
        net.to(device).train()
        if args.checkpointing == "on":
            enable_activation_checkpointing(net)
        counters[side] = LayerForwardCounter(net)
        optimizers[side] = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device.type, dtype=_machine.DTYPES[args.dtype], enabled=args.dtype != "float32")

    def step(side, batch) -> tuple[int, int]:
        counter = counters[side]
        counter.calls = 0
        with autocast:
            loss = loss_of(side, nets[side], batch)
        forward_calls = counter.calls
        loss.backward()
        optimizers[side].step()
        optimizers[side].zero_grad(set_to_none=True)
        return forward_calls, counter.calls

    sides = list(SIDES)
    times = {side: [] for side in sides}
    calls = {}
    for index, batch in enumerate(batches):
        for side in sides[index % len(sides) :] + sides[: index % len(sides)]:
            _machine.synchronize(device)
            start = time.perf_counter()
            calls[side] = step(side, batch)
            _machine.synchronize(device)
            if index >= args.warmup:
                times[side].append(time.perf_counter() - start)
    result = {
        "level": args.level,
        "checkpointing": args.checkpointing,
        "data_seconds_per_batch": statistics.median(data_seconds[args.warmup :]),
        "sequences": {kind: [sum(s[kind][i] for s in sequences) for i in (0, 1)] for kind in sequences[0]},
        "sides": {},
    }
    for side in sides:
        seconds = statistics.median(times[side])
        result["sides"][side] = {
            "seconds_per_step": seconds,
            "samples_per_second": args.batch_size / seconds,
            "layer_forwards": calls[side][0],
            "layer_forwards_with_backward": calls[side][1],
            "checkpointed_layers": counters[side].checkpointed,
            "layers": len(counters[side].layers),
            "parameters": sum(p.numel() for p in nets[side].parameters()),
        }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument(
        "--dataset", default="demo", help="catalogue whose train split makes the batches (clipita.data)"
    )
    parser.add_argument(
        "--levels",
        default=",".join(LEVELS),
        help=f"category levels to run, comma-separated ({', '.join(LEVELS)})",
    )
    parser.add_argument(
        "--dtype", choices=sorted(_machine.DTYPES), default="float32", help="autocast dtype (float32: none)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 quick, 32 full")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 2 quick, 5 full)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (memory counts them)")
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="off")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--level", choices=LEVELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (8 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 5)
    args.levels = [level.strip() for level in args.levels.split(",") if level.strip()]
    if not args.levels or any(level not in LEVELS for level in args.levels):
        parser.error(f"--levels must name some of {', '.join(LEVELS)}")
    if args.batch_size < 2 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch-size must be >= 2 (a contrastive batch), --steps >= 1, --warmup >= 0")
    if args.worker and (args.checkpointing == "both" or args.level is None):
        parser.error("a worker runs one checkpointing setting and one --level")
    return args


def spawn(args: argparse.Namespace, level: str, checkpointing: str) -> dict:
    """Run one level x checkpointing setting in a fresh interpreter and read back its result line."""
    command = [sys.executable, __file__, "--worker", "--level", level, "--checkpointing", checkpointing]
    for flag in ("config", "device", "threads", "seed", "dtype", "batch_size", "steps", "warmup", "dataset"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True)
    what = f"worker for level {level}, checkpointing {checkpointing}"
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise SystemExit(f"{what} printed no result:\n{done.stdout[-2000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def print_deduplication(results: dict, levels: list[str]) -> None:
    """Text-tower sequences of the timed steps, and the fraction unique-text encoding removes."""
    print("text-tower sequences over the timed steps: every / distinct (removed)")
    print(f"{'level':10}{'titles':>22}{'attributes':>22}{'categories':>22}{'all texts':>22}")
    for level in levels:
        counts = next(r for (lv, _), r in results.items() if lv == level)["sequences"]
        every = sum(c[0] for c in counts.values())
        distinct = sum(c[1] for c in counts.values())
        cells = [(c[0], c[1]) for c in counts.values()] + [(every, distinct)]
        print(f"{level:10}" + "".join(f"{f'{e} / {d} ({1 - d / e:.0%})':>22}" for e, d in cells))


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    if args.worker:
        torch.manual_seed(args.seed)
        print(RESULT_PREFIX + json.dumps(run_worker(args)))
        return 0.0
    device = _machine.resolve_device(args.device)
    settings = ["off", "on"] if args.checkpointing == "both" else [args.checkpointing]
    results = {(level, c): spawn(args, level, c) for c in settings for level in args.levels}
    print(
        f"== train_throughput: config {args.config}, {args.dtype}, batch {args.batch_size} from {args.dataset}'s "
        f"train split, warmup {args.warmup}, median of {args.steps} steps, AdamW; one process per level, its "
        "sides' steps interleaved on the same batches"
    )
    print(_machine.command_line())
    print(_machine.describe_machine(device))
    print_deduplication(results, args.levels)
    print(
        f"{'checkpointing':15}{'level':10}{'model':24}{'params':>9}{'samples/s':>11}{'s/step':>9}"
        f"{'  layer forwards: forward / step (checkpointed layers)'}"
    )
    for (level, checkpointing), result in results.items():
        for side, r in result["sides"].items():
            print(
                f"{checkpointing:15}{level:10}{SIDES[side]:24}{r['parameters'] / 1e6:8.1f}M"
                f"{r['samples_per_second']:11.2f}{r['seconds_per_step']:9.3f}"
                f"  {r['layer_forwards']} / {r['layer_forwards_with_backward']}"
                f" ({r['checkpointed_layers']}/{r['layers']})"
            )
    ratios = []
    for checkpointing in settings:
        for level in args.levels:
            sides = results[(level, checkpointing)]["sides"]
            plain = sides["plain"]["samples_per_second"]
            ratio = sides["clipita"]["samples_per_second"] / plain
            ratios.append(ratio)
            print(
                f"CLIP-ITA / plain, level {level}, checkpointing {checkpointing}: samples/s {ratio:.2f} "
                f"(whole towers: {sides['whole']['samples_per_second'] / plain:.2f}, "
                f"every text: {sides['every']['samples_per_second'] / plain:.2f})"
            )
    for level in args.levels:
        result = results[(level, settings[0])]
        data, step = result["data_seconds_per_batch"], result["sides"]["clipita"]["seconds_per_step"]
        print(
            f"data pipeline, level {level}: {data:.3f} s to make a batch (decode, resize, tokenise) against a "
            f"{step:.3f} s CLIP-ITA step: {data / (data + step):.0%} of the time waiting for data with "
            "--dataloader_num_workers 0"
        )
    if len(settings) == 2:
        for side in SIDES:
            for level in args.levels:
                off, on = (results[(level, c)]["sides"][side] for c in ("off", "on"))
                print(
                    f"checkpointing on / off, {SIDES[side]}, level {level}: samples/s "
                    f"{on['samples_per_second'] / off['samples_per_second']:.2f}"
                )
    print(f"ratio {min(ratios[: len(args.levels)]):.2f}")
    return min(ratios[: len(args.levels)])


if __name__ == "__main__":
    main()
