"""The system file: a YAML description of agents, their graph, links, rounds and generation settings.

It is data, validated once at load time: every unknown key, missing field or bad value raises a
``ConfigError`` that names the key and the fix before any model is loaded.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

DTYPES = ("float32", "float16", "bfloat16")


class ConfigError(ValueError):
    """A system file that cannot be used as written."""


def _check_keys(section: str, data: dict, allowed: list[str], required: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Allowed keys: {', '.join(allowed)}."
            raise ConfigError(f"{section}: unknown key {key!r}.{hint}")
    for key in required:
        if data.get(key) in (None, ""):
            raise ConfigError(f"{section}: missing required key {key!r}")


def _from_dict(cls, section: str, data: dict | None, required: tuple[str, ...] = ()):
    data = {} if data is None else data
    _check_keys(section, data, [f.name for f in fields(cls)], required)
    return cls(**data)


@dataclass
class AgentConfig:
    model: str  # a model directory, hub id, .gguf file or pkg: file (docs/real_models.md)
    prompt: str
    system_prompt: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    revision: str | None = None
    chat_template: str | None = None  # overrides the tokenizer's template
    target: str | None = None  # training-data field this role learns to produce
    gguf_file: str | None = None  # a .gguf file inside the 'model' directory

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"agent dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        if not re.search(r"\{[A-Za-z_][A-Za-z0-9_]*\}", self.prompt):
            raise ConfigError(f"agent prompt must name an input field such as '{{question}}' where the input goes; got {self.prompt[:60]!r}")


@dataclass
class EdgeConfig:
    src: str
    dst: str
    slot: str
    feedback: bool = False


@dataclass
class LinksConfig:
    kind: str = "ln_res"
    checkpoint: str | None = None  # a links.safetensors written by save_pretrained or training
    release: dict[str, str] = field(default_factory=dict)  # link name -> public-release .pt file
    init: str = "random"  # random | ridge (training initialises outer links by least squares)
    inner: str = "trained"  # trained | latentmas (training-free closed-form map per model, SPEC section 8)

    def __post_init__(self) -> None:
        from recursivemas.links import LINK_KINDS

        if self.kind not in LINK_KINDS:
            raise ConfigError(f"links.kind {self.kind!r} is unknown; choose one of {', '.join(LINK_KINDS)}")
        if self.inner not in ("trained", "latentmas"):
            raise ConfigError(f"links.inner {self.inner!r} is unknown; choose 'trained' or 'latentmas'")
        if self.init not in ("random", "ridge"):
            raise ConfigError(f"links.init {self.init!r} is unknown; choose 'random' or 'ridge'")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256  # the final answer
    handoff_max_new_tokens: int = 128  # each text hand-off in text mode
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.handoff_max_new_tokens < 1:
            raise ConfigError("generation.max_new_tokens and handoff_max_new_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"generation needs temperature >= 0 and 0 < top_p <= 1; got {self.temperature}, {self.top_p}")


@dataclass
class SystemConfig:
    agents: dict[str, AgentConfig]
    edges: list[EdgeConfig]
    decoder: str
    name: str = "system"
    pattern: str | None = None
    rounds: int = 3
    latent_steps: int = 32
    batch_size: int = 8
    seed: int = 0
    links: LinksConfig = field(default_factory=LinksConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    tools: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)  # relative model / checkpoint paths resolve here
    tuned_on: str | None = None  # the split latent_steps / rounds were tuned on, written by `recursivemas tune`

    def resolve(self, path: str) -> str:
        """A relative local path resolved against the system file's directory; hub ids unchanged."""
        candidate = self.base_dir / path
        return str(candidate) if not Path(path).is_absolute() and candidate.exists() else path

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("base_dir")
        if self.pattern:  # the pattern re-derives its edges and decoder
            del data["edges"], data["decoder"]
        else:
            data["edges"] = [{"from": e.src, "to": e.dst, "slot": e.slot, "feedback": e.feedback} for e in self.edges]
        return {k: v for k, v in data.items() if v not in (None, {}, [])}


_TOP_KEYS = [f.name for f in fields(SystemConfig) if f.name != "base_dir"]


def _parse_edge(i: int, raw: Any) -> EdgeConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"edges[{i}]: expected a mapping with 'from', 'to' and 'slot', got {raw!r}")
    _check_keys(f"edges[{i}]", raw, ["from", "to", "slot", "feedback"], ("from", "to", "slot"))
    return EdgeConfig(src=str(raw["from"]), dst=str(raw["to"]), slot=str(raw["slot"]), feedback=bool(raw.get("feedback", False)))


def load_config(source: str | Path | dict) -> SystemConfig:
    """Parse and validate a system file (path or already-parsed mapping). Graph checks happen in ``graph.py``."""
    from recursivemas.patterns import expand_pattern

    if isinstance(source, dict):
        data, base_dir = dict(source), Path(source.get("base_dir", Path.cwd()))
        data.pop("base_dir", None)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"system file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"system file {path} is not valid YAML: {err}") from err
        base_dir = path.resolve().parent
    _check_keys("system", data, _TOP_KEYS, ("agents",))
    if not isinstance(data["agents"], dict) or not data["agents"]:
        raise ConfigError("system: 'agents' must map agent names to their settings")
    agents = {}
    for name, raw in data["agents"].items():
        agents[str(name)] = _from_dict(AgentConfig, f"agents.{name}", raw, ("model", "prompt"))
    pattern = data.get("pattern")
    if pattern is not None:
        if "edges" in data:
            raise ConfigError("system: give either 'pattern' or 'edges', not both (a pattern defines its edges)")
        edges, decoder, targets = expand_pattern(pattern, list(agents))
        if data.get("decoder") not in (None, decoder):
            raise ConfigError(f"pattern {pattern!r} decodes with {decoder!r}; remove 'decoder: {data['decoder']}'")
        for name, agent in agents.items():
            agent.target = agent.target or targets.get(name)
    else:
        if "edges" not in data:
            raise ConfigError("system: give a 'pattern' (sequential, distillation, mixture, deliberation) or a list of 'edges'")
        edges = [_parse_edge(i, e) for i, e in enumerate(data["edges"] or [])]
        decoder = data.get("decoder")
        if not decoder:
            raise ConfigError("system: no decoding agent; set 'decoder' to the agent that writes the final answer")
    rest = {k: v for k, v in data.items() if k not in ("agents", "edges", "pattern", "decoder", "links", "generation")}
    for key in ("rounds", "latent_steps", "batch_size"):
        if key in rest and (not isinstance(rest[key], int) or rest[key] < (0 if key == "latent_steps" else 1)):
            raise ConfigError(f"system: {key} must be a positive integer, got {rest[key]!r}")
    return SystemConfig(
        agents=agents,
        edges=edges,
        decoder=str(decoder),
        pattern=pattern,
        links=_from_dict(LinksConfig, "links", data.get("links")),
        generation=_from_dict(GenerationConfig, "generation", data.get("generation")),
        base_dir=base_dir,
        **rest,
    )


def dump_config(config: SystemConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))
