"""`search.py build` under `accelerate launch`, with a kill switch for the resume test:

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m tests.helpers.sharded_build build ...

With KILL_RANK=r and KILL_AFTER=n set, process r dies (SIGKILL, as the OOM killer would) when its encoder is
asked for batch n+1; the other processes are then stopped by the launcher.
"""

from __future__ import annotations

import os
import signal
import sys

import search


def main() -> int:
    kill_rank, kill_after = os.environ.get("KILL_RANK"), os.environ.get("KILL_AFTER")
    if kill_rank is not None and int(os.environ.get("RANK", "0")) == int(kill_rank):
        real = search.product_encoder

        def dying_encoder(*args, **kwargs):
            encode, calls = real(*args, **kwargs), [0]

            def encode_batch(rows):
                calls[0] += 1
                if calls[0] > int(kill_after):
                    os.kill(os.getpid(), signal.SIGKILL)
                return encode(rows)

            return encode_batch

        search.product_encoder = dying_encoder
    return search.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
