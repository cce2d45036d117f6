"""An agent: a frozen Hugging Face causal LM with its own tokenizer, chat template, role prompt, device and dtype."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from recursivemas.config import AgentConfig, ConfigError
from recursivemas.gguf import is_gguf, local_model_dir

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A role prompt is split at slot markers and at input-field placeholders such as ``{question}``.
_SPLIT_RE = re.compile(r"(<<[A-Za-z][A-Za-z0-9_]*>>|\{[A-Za-z_][A-Za-z0-9_]*\})")
FIELD_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def as_fields(item: str | Mapping[str, Any]) -> Mapping[str, Any]:
    """One input of a run as its fields: a plain string is the ``question`` field."""
    return {"question": item} if isinstance(item, str) else item


@dataclass(frozen=True)
class Slot:
    """Where an incoming edge's latents (or text, in text mode) go in a rendered prompt."""

    name: str


@dataclass(frozen=True)
class Field:
    """Where an input field (``{question}``, ``{passage}``, ...) goes in a rendered prompt."""

    name: str


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1  # hub ids are "name" or "org/name"


def load_model_and_tokenizer(config: AgentConfig, model_path: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer from a local directory, a hub id or a GGUF file (``recursivemas.gguf``)."""
    if is_gguf(model_path, config.gguf_file):  # converted once to a cached Hugging Face directory
        model_path = local_model_dir(model_path, config.gguf_file)
    elif not Path(model_path).is_dir() and _looks_local(model_path):
        raise ConfigError(f"model path {model_path!r} does not exist; point 'model' at a local model directory or a hub id like 'org/name'")
    kwargs = dict(trust_remote_code=config.trust_remote_code, revision=config.revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[config.dtype], **kwargs)
    except OSError as err:
        raise ConfigError(f"could not load model {model_path!r}: {err}. Is the path right, or the hub reachable?") from err
    model.to(config.device).eval().requires_grad_(False)
    return model, tokenizer


class Agent:
    """One role in a system. Built by ``System`` so that each model is loaded once per system."""

    def __init__(self, name: str, config: AgentConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self.name, self.config, self.model, self.tokenizer = name, config, model, tokenizer
        self.device = torch.device(config.device)
        self.dtype = _DTYPES[config.dtype]
        self.hidden_size: int = model.get_input_embeddings().weight.shape[1]
        self.embedding = model.get_input_embeddings()
        self.eos_token_ids = self._eos_ids()
        self.template = self._split(self.render(config.prompt))

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids |= set(gen_eos) if isinstance(gen_eos, list) else ({gen_eos} if gen_eos is not None else set())
        if not ids:
            raise ConfigError(f"agent {self.name!r}: its tokenizer and generation config name no end-of-sequence token")
        return ids

    def render(self, user: str) -> str:
        """The full chat prompt up to the start of the assistant turn, in this agent's own template."""
        system = self.config.system_prompt
        template = self.config.chat_template or self.tokenizer.chat_template
        if template is None:  # plain format for base models (docs/real_models.md): BOS, system, blank line, prompt
            bos = self.tokenizer.bos_token or ""  # Gemma degrades badly without its BOS
            # No newline after the prompt: a base model continues right where it ends (e.g. after "Answer:").
            return f"{bos}{system + chr(10) + chr(10) if system else ''}{user}"
        messages = [{"role": "user", "content": user}]
        try:
            with_system = [{"role": "system", "content": system}] + messages if system else messages
            return self.tokenizer.apply_chat_template(with_system, chat_template=template, add_generation_prompt=True, tokenize=False)
        except Exception:  # some templates (e.g. Gemma's) reject a system turn: fold it into the user turn
            merged = [{"role": "user", "content": f"{system}\n\n{user}" if system else user}]
            return self.tokenizer.apply_chat_template(merged, chat_template=template, add_generation_prompt=True, tokenize=False)

    @staticmethod
    def _split(rendered: str) -> list[str | Slot | Field]:
        """Split at markers: text pieces stay strings, slots become ``Slot``, placeholders ``Field``."""
        parts: list[str | Slot | Field] = []
        for piece in _SPLIT_RE.split(rendered):
            if piece.startswith("<<") and piece.endswith(">>"):
                parts.append(Slot(piece[2:-2]))
            elif FIELD_RE.fullmatch(piece):
                parts.append(Field(piece[1:-1]))
            elif piece:
                parts.append(piece)
        return parts

    @property
    def fields(self) -> list[str]:
        """The input fields this agent's prompt reads, in order."""
        return [p.name for p in self.template if isinstance(p, Field)]

    def segments(self, inputs: str | Mapping[str, Any]) -> list[str | Slot]:
        """This agent's prompt for one input: text runs (fields filled in) and slots, in order."""
        fields = as_fields(inputs)
        out: list[str | Slot] = []
        for part in self.template:
            text = self._field(fields, part.name) if isinstance(part, Field) else part
            if isinstance(text, str) and out and isinstance(out[-1], str):
                out[-1] += text
            else:
                out.append(text)
        return out

    def _field(self, fields: Mapping[str, Any], name: str) -> str:
        value = fields.get(name)
        if not isinstance(value, str):
            given = ", ".join(sorted(k for k, v in fields.items() if isinstance(v, str))) or "none"
            problem = "is missing" if value is None else f"is a {type(value).__name__}, not a string"
            raise ValueError(f"agent {self.name!r}: its prompt reads input field {{{name}}}, which {problem}; "
                             f"pass each input as a mapping with a {name!r} string (text fields given: {given})")
        return value

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def embed(self, ids: list[int]) -> torch.Tensor:
        """``[len(ids), hidden]`` input embeddings from this agent's own table."""
        return self.embedding(torch.tensor(ids, dtype=torch.long, device=self.device))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, {type(self.model).__name__}, hidden={self.hidden_size}, {self.config.dtype}, {self.config.device})"
