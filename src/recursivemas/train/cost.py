"""What training costs: trainable parameters, peak memory and time per step, measured the same way for every method.

Peak memory is the growth during a stage's training steps over the memory in use when the stage
starts, so it counts activations, gradients and optimizer state but not the loaded weights (reported
apart as ``weights_mb``):

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the start, minus the
  memory allocated then.
- CPU (Linux): the process's resident-set high-water mark (``VmHWM``) after resetting it to the current
  resident set by writing ``5`` to ``/proc/self/clear_refs`` at the start, minus that resident set. It
  includes allocator caching and is coarse for tiny models. Where the reset is refused, the high-water
  mark is not reset and the figure is flagged ``cpu-rss-noreset`` (it may then include earlier peaks).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


def _status_kb(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


@dataclass
class MemoryMeter:
    """Peak memory growth over a block of training steps on ``device``."""

    device: torch.device
    method: str = ""
    _start: float = 0.0

    def start(self) -> "MemoryMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "cuda-max-allocated"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "cpu-rss-hwm"
        except OSError:
            self.method = "cpu-rss-noreset"
        self._start = (_status_kb("VmRSS") or 0) / 1024
        return self

    def peak_mb(self) -> float:
        """Peak growth in MiB since ``start``."""
        if self.device.type == "cuda":
            return max(0.0, torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start)
        return max(0.0, (_status_kb("VmHWM") or 0) / 1024 - self._start)


def trainable_parameters(modules: dict[str, nn.Module] | list[nn.Module]) -> int:
    mods = modules.values() if isinstance(modules, dict) else modules
    seen, total = set(), 0
    for m in mods:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def weights_mb(modules: list[nn.Module]) -> float:
    """Bytes of all parameters and buffers of distinct modules, in MiB."""
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total / 2**20


@dataclass
class StepTimer:
    """Wall time per optimizer step (the first ``skip`` steps are warm-up and not averaged)."""

    skip: int = 1
    times: list[float] = field(default_factory=list)
    _t0: float = 0.0

    def __enter__(self) -> "StepTimer":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.times.append(time.perf_counter() - self._t0)

    @property
    def last(self) -> float:
        return self.times[-1] if self.times else 0.0

    @property
    def mean(self) -> float:
        kept = self.times[self.skip :] or self.times
        return sum(kept) / len(kept) if kept else 0.0
