"""Latency of the Space's category search: median (and max) of N `/search_category` queries per variant,
in process and through the HTTP API with gradio_client, with the machine.

Run from the repository root (it imports the Space's modules as the package `space`); the model and index
flags and environment variables are the Space's own (`python space/app.py --help`):

    python -m bench.space_latency --index outputs/index --queries 20
    python -m bench.space_latency --model outputs/clip-i --index outputs/index-clip-i --queries 20
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence

import torch

try:
    from space.answers import DEFAULT_K, search_category
    from space.app import build_blocks, parse_args
    from space.variants import Variant, load_variants
except ModuleNotFoundError as err:  # run as a script from elsewhere: the package `space` is not importable
    if err.name not in ("space", "space.answers", "space.app", "space.variants"):
        raise
    raise SystemExit(
        "run this benchmark from the repository root: python -m bench.space_latency ..."
    ) from err

from bench._machine import command_line, describe_machine


def time_queries(variants: Sequence[Variant], queries: int) -> list[dict]:
    """Per variant: latencies (ms) of `queries` category queries in process and through the HTTP API.

    The queries cycle through the variant's category nodes; one warm-up query each way is not timed.
    """
    from gradio_client import Client

    demo = build_blocks(variants)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    client = Client(demo.local_url, verbose=False, download_files=False)  # time the answer, not downloads
    results = []
    try:
        for variant in variants:
            texts = [variant.category_paths[i % len(variant.category_paths)] for i in range(queries + 1)]
            search_category(variant, texts[-1], DEFAULT_K)  # warm-up
            local = []
            for text in texts[:queries]:
                start = time.perf_counter()
                search_category(variant, text, DEFAULT_K)
                local.append((time.perf_counter() - start) * 1000)
            client.predict(texts[-1], DEFAULT_K, variant.name, api_name="/search_category")
            remote = []
            for text in texts[:queries]:
                start = time.perf_counter()
                client.predict(text, DEFAULT_K, variant.name, api_name="/search_category")
                remote.append((time.perf_counter() - start) * 1000)
            results.append({"variant": variant, "local": local, "remote": remote})
    finally:
        client.close()
        demo.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--queries", type=int, default=20, metavar="N", help="timed queries per variant")
    own, rest = parser.parse_known_args(argv)
    if own.queries < 1:
        parser.error("--queries must be at least 1")
    args = parse_args(rest)  # the Space's --model / --index / --catalogue / --name and their defaults
    try:
        variants = load_variants(args.model, args.index, args.catalogue, args.name)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(command_line())
    print(describe_machine(torch.device(variants[0].model.device)))
    for row in time_queries(variants, own.queries):
        variant, local, remote = row["variant"], row["local"], row["remote"]
        print(
            f"{variant.name}: {len(variant.index)} products, k={DEFAULT_K}, {own.queries} queries: "
            f"median {statistics.median(local):.1f} ms in process (max {max(local):.1f}), "
            f"median {statistics.median(remote):.1f} ms through the API (max {max(remote):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
