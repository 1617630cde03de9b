"""What every benchmark shares about the machine: its description, fair timing, peak memory, matmul FLOP/s.

Figures are only comparable on the same machine, so every script prints `describe_machine` with them.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`cpu` or `cuda[:i]`; a clear error where CUDA is asked for and absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})"
        )
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: only cpu and cuda are supported")
    return device


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine(device: torch.device) -> str:
    """One block of text naming everything that moves the figures: OS, CPU, cores, threads, versions, card."""
    import transformers

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"machine: {platform.platform()}, python {platform.python_version()}",
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), "
        f"torch threads {torch.get_num_threads()}",
        f"torch {torch.__version__}, transformers {transformers.__version__}",
    ]
    if hasattr(os, "getloadavg"):  # other work on the machine slows every figure; say how much there was
        lines[1] += ", load average {:.1f} {:.1f} {:.1f} (1/5/15 min)".format(*os.getloadavg())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"device: {device} = {props.name}, {props.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}"
        )
    else:
        lines.append("device: cpu")
    return "\n".join(lines)


def command_line() -> str:
    """How this run was started, to print beside its figures."""
    return "$ python " + " ".join(sys.argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    runs: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds of each callable per round, timed in turns (A B A B ...) so that drift in the machine's
    speed (other load, clocks) falls on every contender alike rather than on whichever ran last."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(
    runs: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds of each callable over `repeats` interleaved rounds."""
    return {
        name: statistics.median(t) for name, t in interleaved_times(runs, device, warmup, repeats).items()
    }


def _read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


class PeakMemory:
    """Peak memory of the code inside `with PeakMemory(device) as peak:`, in bytes.

    CUDA: torch's allocator statistics. CPU: the process's resident set; the kernel's high-water mark
    (VmHWM) is reset on entry through /proc/self/clear_refs, so `peak.increase` is what the block
    added on top of what the process already held. Run each configuration in a fresh process: freed
    memory that the allocator keeps would otherwise count for the next one.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self.peak = 0
        self.method = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
                self.method = "VmHWM after reset via /proc/self/clear_refs"
            except OSError:
                self.method = "VmHWM (could not reset: peak includes what ran before)"
            self.start = _read_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _read_status_kib("VmHWM") * 1024

    @property
    def increase(self) -> int:
        return max(0, self.peak - self.start)


def matmul_flops_per_second(
    device: torch.device, size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32
) -> float:
    """The machine's reachable FLOP/s: median over `repeats` of one square `size` x `size` matmul
    (2 * size^3 FLOPs), after two warm-up products."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = interleaved_medians({"matmul": lambda: a @ b}, device, warmup=2, repeats=repeats)["matmul"]
    return 2 * size**3 / seconds


def human(value: float, unit: str = "") -> str:
    """3 significant figures with an SI prefix: 1.23e9 -> '1.23 G'."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.0f} MiB"
