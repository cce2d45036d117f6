"""Data parallelism with ``torch.distributed``: gloo on CPU, nccl on GPU, launched by ``torchrun``.

Every rank holds the whole system (frozen LLMs + links) and a share of each global batch; after the
backward pass the trainable gradients are averaged with ``all_reduce``, so all ranks take the same step
and their links stay identical. Rank 0 alone writes checkpoints, logs and the trained system. With one
process (no ``WORLD_SIZE`` in the environment) every call here is a cheap no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a list of floats over all ranks."""
        if not self.active:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.tolist()

    def mean_float(self, value: float) -> float:
        return self.sum_floats([value])[0] / self.world

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks (a missing gradient counts as zero)."""
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grad = p.grad if self.backend != "nccl" or p.grad.is_cuda else p.grad.to(self._device())
            tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
            grad /= self.world
            if grad is not p.grad:
                p.grad.copy_(grad)

    def broadcast_parameters(self, tensors: Iterable[torch.Tensor]) -> None:
        """Copy rank 0's values into every rank (start from identical links)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in tensors:
                buf = t.data if self.backend != "nccl" or t.is_cuda else t.data.to(self._device())
                tdist.broadcast(buf, src=0)
                if buf is not t.data:
                    t.data.copy_(buf)

    def max_divergence(self, tensors: Iterable[torch.Tensor]) -> float:
        """Largest absolute difference between any rank's tensors and rank 0's (0.0 when ranks agree)."""
        if not self.active:
            return 0.0
        worst = torch.zeros((), dtype=torch.float64, device=self._device())
        with torch.no_grad():
            for t in tensors:
                ref = t.detach().clone().to(self._device())
                tdist.broadcast(ref, src=0)
                worst = torch.maximum(worst, (ref - t.detach().to(self._device())).abs().max().double())
        tdist.all_reduce(worst, op=tdist.ReduceOp.MAX)
        return float(worst)

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()


def setup(use_cuda: bool) -> Dist:
    """Join the job ``torchrun`` started (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), or run alone.

    ``use_cuda``: the agents sit on GPUs, so the backend is nccl and this rank binds ``cuda:LOCAL_RANK``
    (an agent's ``device: cuda`` then means this rank's GPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("the system's agents are on CUDA but this machine has no GPU; set agents' device to cpu for gloo")
        torch.cuda.set_device(local_rank)
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend)
