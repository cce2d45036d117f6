"""The system file: a YAML description of agents, their graph, links, rounds and generation settings.

It is data, validated once at load time: every unknown key, missing field or bad value raises a
``ConfigError`` that names the key and the fix before any model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from recursivemas.markers import prompt_fields
from recursivemas.patterns import EdgeConfig, expand_pattern
from recursivemas.validation import ConfigError, check_keys, check_safetensors, check_types

DTYPES = ("float32", "float16", "bfloat16")
__all__ = ["AgentConfig", "ConfigError", "EdgeConfig", "GenerationConfig", "LinksConfig", "SystemConfig", "dump_config", "load_config"]


def _check_keys(section: str, data: Any, allowed: list[str], required: tuple[str, ...] = ()) -> None:
    check_keys(section, data, allowed, required, error=ConfigError)


def _from_dict(cls, section: str, data: dict | None, required: tuple[str, ...] = ()):
    data = {} if data is None else data
    _check_keys(section, data, [f.name for f in fields(cls)], required)
    check_types(section, data, cls, error=ConfigError)
    return cls(**data)


def check_device(section: str, device: str) -> None:
    """Raise ConfigError unless torch here can place a model on ``device`` (cpu, cuda[:N], mps)."""
    import torch  # lazy: reading a system file should not pay for torch unless it names a device

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ConfigError(f"{section}.device {device!r} is not a device torch knows; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"{section}.device is {device!r}, but torch {torch.__version__} here ({build}) sees no CUDA GPU; "
                              f"set device: cpu, or run on a machine with a GPU and a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{section}.device is {device!r}, but only {torch.cuda.device_count()} CUDA device(s) exist; "
                              f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{section}.device is 'mps', but MPS is not available here; set device: cpu")
        return
    raise ConfigError(f"{section}.device {device!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'mps'")


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
        if not isinstance(self.trust_remote_code, bool):  # a string like "false" is truthy: it would run remote code
            raise ConfigError(f"trust_remote_code must be true or false (unquoted), got {self.trust_remote_code!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"agent dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        if not prompt_fields(self.prompt):
            raise ConfigError(f"agent prompt must name an input field such as '{{question}}' where the input goes; got {self.prompt[:60]!r}")
        check_device("agent", self.device)


@dataclass
class LinksConfig:
    kind: str = "ln_res"
    checkpoint: str | None = None  # a links.safetensors written by save_pretrained or training
    release: dict[str, str] = field(default_factory=dict)  # link name -> public-release .pt file
    init: str = "random"  # random | ridge (training initialises outer links by least squares)
    inner: str = "trained"  # trained | latentmas (training-free closed-form map per model, docs/method.md#baselines)

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
    # Stop strings (OpenAI's ``stop``): a hand-off or answer ends where one of these first appears, and its
    # text ends before it. Base models need them: they never write an end-of-sequence token (docs/real_models.md).
    stop: list[str] = field(default_factory=list)
    # Latent messages end where the sender's own next token would be eos or hold a stop string (at most
    # latent_steps thoughts), as text hand-offs do; not in the paper (docs/engine.md#latent-stop).
    latent_stop: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.handoff_max_new_tokens < 1:
            raise ConfigError("generation.max_new_tokens and handoff_max_new_tokens must be >= 1")
        if not all(isinstance(s, str) and s for s in self.stop) or len(self.stop) > 4:
            raise ConfigError(f"generation.stop must be a list of at most 4 non-empty strings, got {self.stop!r:.80}")
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
    for key in ("from", "to", "slot"):
        if not isinstance(raw[key], str):
            raise ConfigError(f"edges[{i}].{key} must be a string (an agent or slot name), got {raw[key]!r}")
    if not isinstance(raw.get("feedback", False), bool):
        raise ConfigError(f"edges[{i}].feedback must be true or false (unquoted), got {raw['feedback']!r}")
    return EdgeConfig(src=raw["from"], dst=raw["to"], slot=raw["slot"], feedback=raw.get("feedback", False))


def _check_training(section: Any) -> None:
    """The ``training:`` section against TrainConfig's fields and checks, before any model loads."""
    if not section:
        return
    from recursivemas.train.recipe import TrainConfig  # lazy: training modules import torch and peft

    try:
        TrainConfig.from_sources(section)
    except ValueError as err:
        message = str(err)
        raise ConfigError(message if message.startswith("training") else f"training: {message}") from err


def _check_tools(section: Any) -> None:
    """The ``tools:`` section's shape (tool names, options, loop limits); backends and paths open later."""
    if not section:
        return
    from recursivemas.tools import validate_tool_spec

    try:
        validate_tool_spec(section)
    except ValueError as err:
        message = str(err)
        raise ConfigError(message if message.startswith("tools") else f"tools: {message}") from err


def _check_link_files(links: LinksConfig, resolve) -> None:
    """A links checkpoint must be a sane safetensors file: checked here, before any model loads."""
    if links.checkpoint:
        check_safetensors(resolve(links.checkpoint), "links.checkpoint", error=ConfigError)


CONFIG_NAME = "system.yaml"  # the system file inside a directory written by System.save_pretrained


def system_file(path: str | Path) -> Path:
    """The system file a path names: the file itself, or ``system.yaml`` inside a saved system directory."""
    path = Path(path)
    return path / CONFIG_NAME if path.is_dir() else path


def load_config(source: str | Path | dict, device: str | None = None) -> SystemConfig:
    """Parse and validate a system file (path or already-parsed mapping). Graph checks happen in ``graph.py``.

    ``device`` replaces every agent's ``device`` before the checks (a file written for a GPU loads on a CPU).
    """
    if isinstance(source, dict):
        data, base_dir = dict(source), Path(source.get("base_dir", Path.cwd()))
        data.pop("base_dir", None)
    else:
        path = system_file(source)
        if not path.is_file():
            raise ConfigError(f"system file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"system file {path} is not valid YAML: {err}") from err
        base_dir = path.resolve().parent
    _check_keys("system", data, _TOP_KEYS, ("agents",))
    check_types("system", {k: v for k, v in data.items() if k not in ("agents", "edges", "links", "generation")}, SystemConfig, ConfigError)
    if not isinstance(data["agents"], dict) or not data["agents"]:
        raise ConfigError("system: 'agents' must map agent names to their settings")
    agents = {}
    for name, raw in data["agents"].items():
        section = f"agents.{name}"
        if device is not None and isinstance(raw, dict):
            raw = {**raw, "device": device}
        try:
            agents[str(name)] = _from_dict(AgentConfig, section, raw, ("model", "prompt"))
        except ConfigError as err:  # __post_init__ checks do not know the agent's name: add it
            message = str(err)
            if message.startswith("agent."):
                message = section + message[len("agent"):]
            raise ConfigError(message if message.startswith(section) else f"{section}: {message}") from err
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
        if not isinstance(data.get("edges"), list):
            if "edges" in data:
                raise ConfigError(f"system: 'edges' must be a list of {{from, to, slot}} mappings, got {data['edges']!r:.60}")
            raise ConfigError("system: give a 'pattern' (sequential, distillation, mixture, deliberation) or a list of 'edges'")
        edges = [_parse_edge(i, e) for i, e in enumerate(data["edges"])]
        decoder = data.get("decoder")
        if not decoder:
            raise ConfigError("system: no decoding agent; set 'decoder' to the agent that writes the final answer")
    rest = {k: v for k, v in data.items() if k not in ("agents", "edges", "pattern", "decoder", "links", "generation")}
    for key in ("rounds", "latent_steps", "batch_size"):
        if key in rest and (not isinstance(rest[key], int) or rest[key] < (0 if key == "latent_steps" else 1)):
            raise ConfigError(f"system: {key} must be a positive integer, got {rest[key]!r}")
    config = SystemConfig(
        agents=agents,
        edges=edges,
        decoder=str(decoder),
        pattern=pattern,
        links=_from_dict(LinksConfig, "links", data.get("links")),
        generation=_from_dict(GenerationConfig, "generation", data.get("generation")),
        base_dir=base_dir,
        **rest,
    )
    _check_link_files(config.links, config.resolve)
    _check_tools(config.tools)
    _check_training(config.training)
    return config


def dump_config(config: SystemConfig, path: str | Path) -> None:
    """Write ``config`` as a system file that ``load_config`` reads back."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))
