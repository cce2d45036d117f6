"""One line saying where something ran, for every report and benchmark: CPU, cores, threads, GPU, torch, load."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def _cpu_name() -> str:
    try:  # Linux names the CPU model; elsewhere fall back to the architecture
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(load: bool = True, threads: int | None = None) -> str:
    """E.g. ``Intel Xeon ..., 2 cores, 1 torch thread(s), no GPU, torch 2.13.0, load average 0.4``.

    The load average is there because a busy machine slows every arm of a comparison: say how busy it was.
    """
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads() if threads is None else threads
    text = f"{_cpu_name()}, {os.cpu_count()} cores, {threads} torch thread(s), {gpu}, torch {torch.__version__}"
    if load and hasattr(os, "getloadavg"):
        text += f", load average {os.getloadavg()[0]:.1f}"
    return text
