"""Catalogue encoding on 1 process against N processes (`accelerate launch`, CPU, gloo).

Runs `search.py build` on a catalogue split, in turns: one process with `--threads` torch threads (1 by
default: on a shared, loaded machine 2 threads ran several times slower than 1, docs/BENCHMARKS.md), then
N processes of one thread each, `--rounds` times. A figure is products encoded / wall time of the
whole command (model loading, process start and the index build included); the ratio is taken per round.
The model is the default from-scratch CLIP-ITA (random weights: speed does not depend on them).

    python bench/sharded_encode_bench.py --quick                 # a 300-product catalogue, 1 round
    python bench/sharded_encode_bench.py --dataset demo --split test --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__:  # imported: python -m bench.sharded_encode_bench, or the tests
    from bench._machine import describe_machine
else:  # run as a script: its folder is on sys.path
    from _machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_build(
    model: str, dataset: str, split: str, out: Path, processes: int, threads: int
) -> tuple[float, int]:
    """(wall seconds, products encoded) of one `search.py build`."""
    env = dict(
        os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1"
    )
    build = ["build", "--model", model, "--dataset", dataset, "--split", split, "--output", str(out),
             "--index_kind", "flat", "--batch_size", "32"]  # fmt: skip
    if processes == 1:
        command = [sys.executable, str(ROOT / "search.py"), *build]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
            "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), str(ROOT / "search.py"), *build,
        ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "manifest.json").read_text())["encode"]["encoded"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a generated 300-product catalogue, 1 round")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the single process")
    args = parser.parse_args(argv)

    import torch

    from clipita.bootstrap import build_default_model, register_auto_classes
    from clipita.catalogue import generate_catalogue

    print(describe_machine(torch.device("cpu")), flush=True)
    print(
        f"command: python bench/sharded_encode_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        dataset, rounds = args.dataset, args.rounds
        if args.quick:
            dataset, rounds = str(Path(tmp) / "catalogue"), 1
            generate_catalogue(dataset, num_products=300, progress=False)
        register_auto_classes()
        texts = [
            "Home > Kitchen > Ceramic Mugs",
            "red ceramic mug 12 oz",
            "colour: red",
            "material: ceramic",
        ] * 50
        model, processor = build_default_model(texts)  # the default config, random weights
        model.save_pretrained(Path(tmp) / "model")
        processor.save_pretrained(Path(tmp) / "model")
        n = args.processes
        per_round = []
        for r in range(rounds):
            one = run_build(
                str(Path(tmp) / "model"), dataset, args.split, Path(tmp) / f"one-{r}", 1, args.threads
            )
            many = run_build(str(Path(tmp) / "model"), dataset, args.split, Path(tmp) / f"many-{r}", n, 1)
            per_round.append((one, many))
            print(f"  round {r}: 1 process x {args.threads} threads {one[1] / one[0]:.1f} products/s, "
                  f"{n} processes x 1 thread {many[1] / many[0]:.1f} products/s", flush=True)  # fmt: skip
    products = per_round[0][0][1]
    one_rate = statistics.median(o[1] / o[0] for o, _ in per_round)
    many_rate = statistics.median(m[1] / m[0] for _, m in per_round)
    ratios = [(m[1] / m[0]) / (o[1] / o[0]) for o, m in per_round]
    print()
    print(f"{products} products of {args.dataset if not args.quick else 'a 300-product catalogue'} [{args.split}], "
          f"{rounds} rounds, wall time of `search.py build` per run")  # fmt: skip
    print()
    print("| encoding | products/s (median) | wall s per run |")
    print("|---|---:|---|")
    print(
        f"| 1 process, {args.threads} torch thread(s) | {one_rate:.1f} | {', '.join(f'{o[0]:.1f}' for o, _ in per_round)} |"
    )
    print(f"| {n} processes (accelerate launch), 1 thread each | {many_rate:.1f} | "
          f"{', '.join(f'{m[0]:.1f}' for _, m in per_round)} |")  # fmt: skip
    print()
    print(
        f"ratio {statistics.median(ratios):.2f} ({n} processes / 1 process; per round {', '.join(f'{x:.2f}' for x in ratios)})"
    )


if __name__ == "__main__":
    main()
