"""Samples/s and peak memory of a CLIP-ITA training step against a plain CLIP contrastive step.

Same towers, same batch. CLIP-ITA: forward with `return_loss=True` (image, title, each attribute and
the category name through the towers, heads, bidirectional InfoNCE), backward, AdamW step. Plain:
`CLIPModel(pixel_values, title ids, return_loss=True)` (image and title only), backward, AdamW step.
Each is run with and without gradient checkpointing, every configuration in a fresh process so that
its peak memory is its own. The run also counts encoder-layer forwards per step, which shows
whether checkpointing reached the CLIP towers (with it, every layer runs twice). Last line: the
samples/s ratio CLIP-ITA / plain without checkpointing (with it under `--checkpointing on`), `ratio 0.58`.

    python bench/train_throughput.py --quick
    python bench/train_throughput.py --config vit-b-32 --device cuda --batch-size 128
"""

from __future__ import annotations

import argparse
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

SIDES = {"clipita": "CLIP-ITA", "plain": "plain CLIP"}
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


def run_worker(args: argparse.Namespace) -> dict:
    """One configuration (side x checkpointing) in this process: time `steps` steps after `warmup`."""
    device = _machine.resolve_device(args.device)
    model, processor = common.build_model(args.config, seed=args.seed)
    products = common.synthetic_products(args.batch_size, seed=args.seed)
    batch = processor(
        images=products.images,
        titles=products.titles,
        attributes=products.attributes,
        categories=products.categories,
    ).to(device)
    if args.worker == "plain":
        net = model.clip
        net.logit_scale.requires_grad_(True)  # CLIP-ITA freezes CLIP's own scale; plain CLIP learns it
        del model

        def loss_of(net):
            return net(
                pixel_values=batch["pixel_values"],
                input_ids=batch["title_input_ids"],
                attention_mask=batch["title_attention_mask"],
                return_loss=True,
            ).loss
    else:
        net = model

        def loss_of(net):
            return net(**batch, return_loss=True).loss

    net = net.to(device).train()
    if args.checkpointing == "on":
        enable_activation_checkpointing(net)
    counter = LayerForwardCounter(net)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device.type, dtype=_machine.DTYPES[args.dtype], enabled=args.dtype != "float32")

    def step() -> tuple[int, int]:
        counter.calls = 0
        with autocast:
            loss = loss_of(net)
        forward_calls = counter.calls
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return forward_calls, counter.calls

    times = []
    with _machine.PeakMemory(device) as memory:
        for index in range(args.warmup + args.steps):
            _machine.synchronize(device)
            start = time.perf_counter()
            forward_calls, step_calls = step()
            _machine.synchronize(device)
            if index >= args.warmup:
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "side": args.worker,
        "checkpointing": args.checkpointing,
        "seconds_per_step": seconds,
        "samples_per_second": args.batch_size / seconds,
        "peak_bytes": memory.peak,
        "increase_bytes": memory.increase,
        "memory_method": memory.method,
        "layer_forwards": forward_calls,
        "layer_forwards_with_backward": step_calls,
        "checkpointed_layers": counter.checkpointed,
        "layers": len(counter.layers),
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument(
        "--dtype", choices=sorted(_machine.DTYPES), default="float32", help="autocast dtype (float32: none)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 quick, 32 full")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 2 quick, 5 full)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (memory counts them)")
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both")
    parser.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (8 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 5)
    if args.batch_size < 2 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch-size must be >= 2 (a contrastive batch), --steps >= 1, --warmup >= 0")
    if args.worker and args.checkpointing == "both":
        parser.error("a worker runs one checkpointing setting")
    return args


def spawn(args: argparse.Namespace, side: str, checkpointing: str) -> dict:
    """Run one configuration in a fresh interpreter and read back its result line."""
    command = [sys.executable, __file__, "--worker", side, "--checkpointing", checkpointing]
    for flag in ("config", "device", "threads", "seed", "dtype", "batch_size", "steps", "warmup"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker {side}, checkpointing {checkpointing} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise SystemExit(
            f"worker {side}, checkpointing {checkpointing} printed no result:\n{done.stdout[-2000:]}"
        )
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    if args.worker:
        torch.manual_seed(args.seed)
        print(RESULT_PREFIX + json.dumps(run_worker(args)))
        return 0.0
    device = _machine.resolve_device(args.device)
    settings = ["off", "on"] if args.checkpointing == "both" else [args.checkpointing]
    results = {(s, c): spawn(args, s, c) for c in settings for s in SIDES}
    print(
        f"== train_throughput: config {args.config}, {args.dtype}, batch {args.batch_size}, "
        f"warmup {args.warmup}, median of {args.steps} steps, AdamW; each configuration in a fresh process"
    )
    print(_machine.command_line())
    print(_machine.describe_machine(device))
    print(
        f"peak memory: {next(iter(results.values()))['memory_method']}; 'step adds' = peak minus before step 1"
    )
    print(
        f"{'checkpointing':15}{'model':12}{'params':>9}{'samples/s':>11}{'s/step':>9}{'peak':>11}"
        f"{'step adds':>11}{'  layer forwards: forward / step (checkpointed layers)'}"
    )
    for (side, checkpointing), r in results.items():
        print(
            f"{checkpointing:15}{SIDES[side]:12}{r['parameters'] / 1e6:8.1f}M{r['samples_per_second']:11.2f}"
            f"{r['seconds_per_step']:9.3f}{_machine.mib(r['peak_bytes']):>11}{_machine.mib(r['increase_bytes']):>11}"
            f"  {r['layer_forwards']} / {r['layer_forwards_with_backward']}"
            f" ({r['checkpointed_layers']}/{r['layers']})"
        )
    for checkpointing in settings:
        ours, theirs = results[("clipita", checkpointing)], results[("plain", checkpointing)]
        print(
            f"CLIP-ITA / plain, checkpointing {checkpointing}: samples/s "
            f"{ours['samples_per_second'] / theirs['samples_per_second']:.2f}, step adds "
            f"{ours['increase_bytes'] / max(theirs['increase_bytes'], 1):.2f}x"
        )
    if len(settings) == 2:
        for side in SIDES:
            off, on = results[(side, "off")], results[(side, "on")]
            print(
                f"checkpointing on / off, {SIDES[side]}: samples/s "
                f"{on['samples_per_second'] / off['samples_per_second']:.2f}, step adds "
                f"{on['increase_bytes'] / max(off['increase_bytes'], 1):.2f}x"
            )
    first = settings[0]
    ratio = (
        results[("clipita", first)]["samples_per_second"] / results[("plain", first)]["samples_per_second"]
    )
    print(f"ratio {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
