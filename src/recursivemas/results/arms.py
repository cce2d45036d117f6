"""The systems a report run compares: the one given, its untrained twin, and fine-tuned single-agent baselines.

Each is built from a system file or a saved directory; none is changed after it is built (settings such as m,
rounds or decoding are passed to ``System.run`` and ``TrainConfig`` per call instead).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml


def has_trained_links(system_path: str | Path) -> bool:
    """Whether the system as given carries trained links (a saved directory or a links checkpoint)."""
    from recursivemas.config import load_config

    path = Path(system_path)
    config = load_config(path)
    return bool(config.links.checkpoint or config.links.release) or (path.is_dir() and (path / "links.safetensors").is_file())


def untrained_config(system_path: str | Path) -> dict[str, Any]:
    """The system file as a mapping with its links reset to their seeded random initialisation."""
    from recursivemas.config import system_file

    path = system_file(system_path)
    data = yaml.safe_load(path.read_text())
    links = dict(data.get("links") or {})
    links.update(checkpoint=None, release={})
    data.update(links=links, base_dir=str(path.resolve().parent))
    data.pop("tuned_on", None)
    return data


def finetuned_system(config: dict[str, Any], model_dir: Path, method: str):
    """A new system whose decoding agent is a LoRA- or fully fine-tuned copy (for single mode)."""
    from transformers import AutoModelForCausalLM

    from recursivemas import System
    from recursivemas.agent import Agent

    system = System.from_config(config)
    name = system.graph.decoder
    agent = system.agents[name]
    if method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(copy.deepcopy(agent.model), str(model_dir)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=agent.dtype)
    model.to(agent.device).eval().requires_grad_(False)
    system.agents[name] = Agent(name, agent.config, model, agent.tokenizer)  # a system built here, not the caller's
    return system


def shipped_steps(system_path: Path) -> str | None:
    """'N inner + M outer' from a saved system's training summary, when it ships one."""
    summary = system_path / "summary.json" if system_path.is_dir() else None
    if summary is None or not summary.is_file():
        return None
    stages = json.loads(summary.read_text()).get("stages", {})
    return " + ".join(f"{s['steps']} {name}" for name, s in stages.items()) or None


def agent_params(system) -> dict[str, int]:
    """Agent name -> parameter count of its model (an agent sharing another's model is counted once)."""
    models = {}
    for name, agent in system.agents.items():
        models.setdefault(id(agent.model), (name, sum(p.numel() for p in agent.model.parameters())))
    return {name: n for name, n in models.values()}
