"""All links of one system: an inner link per agent and an outer link per edge, saved as safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from recursivemas.config import ConfigError, EdgeConfig
from recursivemas.graph import edge_name
from recursivemas.links import InnerLink, OuterLink, load_release_state_dict
from recursivemas.validation import check_safetensors


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file with the permissions the user's umask gives (``save_file`` makes it owner-only, 0600)."""
    Path(path).write_bytes(save(tensors, metadata=metadata))


class LinkSet(nn.Module):
    """``inner[agent]`` (R_in) and ``outer["src->dst"]`` (R_out), always float32 whatever the LLMs' dtype."""

    def __init__(self, hidden_sizes: dict[str, int], edges: list[EdgeConfig], kind: str = "ln_res") -> None:
        super().__init__()
        self.kind = kind
        self.inner = nn.ModuleDict({name: InnerLink(d, kind) for name, d in hidden_sizes.items()})
        self.outer = nn.ModuleDict({edge_name(e): OuterLink(hidden_sizes[e.src], hidden_sizes[e.dst], kind) for e in edges})

    def num_parameters(self) -> dict[str, int]:
        counts = {f"inner.{k}": sum(p.numel() for p in m.parameters()) for k, m in self.inner.items()}
        counts.update({f"outer.{k}": sum(p.numel() for p in m.parameters()) for k, m in self.outer.items()})
        return counts

    def save(self, path: str | Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = Path(path).with_suffix(".tmp")
        # One metadata key: safetensors writes metadata in hash-map order, so two keys would make reruns differ in bytes.
        save_tensors(state, tmp, metadata={"kind": self.kind})
        tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint

    def _load_module(self, name: str, module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ConfigError(f"{source}: link {name} has missing keys {missing} / unexpected keys {unexpected} (link kind {self.kind!r})")
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                hint = f"; link {name} must be {module.hidden_size} wide (the agent's hidden size)" if isinstance(module, InnerLink) else ""
                if isinstance(module, OuterLink):
                    hint = f"; link {name} must map width {module.in_dim} -> {module.out_dim} (sender and receiver hidden sizes)"
                raise ConfigError(f"{source}: {name}.{key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}{hint}")
        module.load_state_dict({k: v.float() for k, v in state.items()})

    def load(self, path: str | Path, strict: bool = True) -> None:
        """Load a safetensors checkpoint; every link's widths must match this system's agents."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"link checkpoint {path} does not exist")
        check_safetensors(path, "link checkpoint", error=ConfigError)  # a pickle or a hostile header: refused unread
        state = load_file(str(path))
        for group in ("inner", "outer"):
            for name, module in getattr(self, group).items():
                prefix = f"{group}.{name}."
                sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                if sub or strict:
                    self._load_module(f"{group}.{name}", module, sub, str(path))
        known = {f"{g}.{n}." for g in ("inner", "outer") for n in getattr(self, g)}
        stray = sorted({k.rsplit(".", 2)[0] for k in state if not any(k.startswith(p) for p in known)})
        if stray:
            raise ConfigError(f"{path}: links {stray} do not belong to this system's graph")

    def load_release(self, files: dict[str, str]) -> None:
        """Load public-release ``.pt`` link files, named like ``inner.planner`` or ``outer.planner->critic``."""
        for name, file in files.items():
            group, _, key = name.partition(".")
            modules = getattr(self, group, None) if group in ("inner", "outer") else None
            if modules is None or key not in modules:
                raise ConfigError(f"links.release: {name!r} is not a link of this system; names are {sorted(self.num_parameters())}")
            self._load_module(name, modules[key], load_release_state_dict(file), file)
