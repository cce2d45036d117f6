"""An agent: a frozen Hugging Face causal LM with its own tokenizer, chat template, role prompt, device and dtype."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from recursivemas.config import AgentConfig, ConfigError
from recursivemas.gguf import is_gguf, local_model_dir
from recursivemas.markers import FIELD_RE, MARKER_RE

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


_ENCODE_CACHE = 16384  # distinct texts whose token ids an agent remembers


class PromptText(str):
    """A run of prompt text that remembers which character spans came from the user (the input fields).

    ``Agent.encode`` splits special-token strings inside those spans into plain pieces, so a question
    holding ``<|im_start|>system`` cannot open a real role turn. Concatenation keeps the spans, so code
    that joins segments (``prefix_length``, the teacher) encodes exactly what ``build_inputs`` encodes.
    """

    user: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, text: str, user: tuple[tuple[int, int], ...] = ()) -> "PromptText":
        """``text`` with ``user`` as its user-supplied character spans."""
        run = cls(text)
        run.user = tuple(user)
        return run

    def __add__(self, other: str) -> "PromptText":
        if not isinstance(other, str):
            return NotImplemented
        n = len(self)
        return PromptText.of(str.__add__(self, other), self.user + tuple((a + n, b + n) for a, b in getattr(other, "user", ())))

    def __radd__(self, other: str) -> "PromptText":  # runs before str.__add__ because this is a str subclass
        if not isinstance(other, str):
            return NotImplemented
        n = len(other)
        return PromptText.of(str.__add__(other, self), tuple(getattr(other, "user", ())) + tuple((a + n, b + n) for a, b in self.user))


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1  # hub ids are "name" or "org/name"


_PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_dir(model_path: str) -> None:
    """A local model directory must exist and hold safetensors weights: pickled weights are never loaded."""
    path = Path(model_path)
    if not path.is_dir():
        if _looks_local(model_path) or path.exists():
            raise ConfigError(f"model path {model_path!r} does not exist; point 'model' at a local model directory or a hub id like 'org/name'")
        return  # a hub id
    if not (path / "config.json").is_file():
        raise ConfigError(f"model directory {model_path!r} has no config.json; point 'model' at a directory written by save_pretrained")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in _PICKLED for p in path.glob(pattern))
        if pickled:
            raise ConfigError(
                f"model directory {model_path!r} holds only pickled weights ({', '.join(pickled[:3])}), which are never loaded "
                f"(unpickling can run code); convert them once to safetensors (model.save_pretrained(dir) writes model.safetensors)"
            )
        raise ConfigError(f"model directory {model_path!r} has no *.safetensors weights")


def load_model_and_tokenizer(config: AgentConfig, model_path: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer from a local directory, a hub id or a GGUF file (``recursivemas.gguf``)."""
    if is_gguf(model_path, config.gguf_file):  # converted once to a cached Hugging Face directory
        model_path = local_model_dir(model_path, config.gguf_file)
    check_model_dir(model_path)
    # `is True`: only a real boolean may run a model directory's own code (load_config checks the type too)
    kwargs = dict(trust_remote_code=config.trust_remote_code is True, revision=config.revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[config.dtype], use_safetensors=True, **kwargs)
    except OSError as err:
        raise ConfigError(f"could not load model {model_path!r}: {err}. Is the path right, or the hub reachable?") from err
    except Exception as err:  # noqa: BLE001 - a broken config.json, tokenizer or weight file: name the model
        raise ConfigError(f"could not load model {model_path!r}: {type(err).__name__}: {err}") from err
    try:
        model.to(config.device).eval().requires_grad_(False)
    except (RuntimeError, AssertionError) as err:  # e.g. a device that exists but cannot take this model
        raise ConfigError(f"could not place model {model_path!r} on device {config.device!r}: {err}") from err
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
        self._stop_ids: dict[tuple[str, ...], torch.Tensor] = {}
        # Every round re-renders the same prompt segments; tokenizing them was about a tenth of a latent run.
        self._encoded: dict[tuple[str, tuple[tuple[int, int], ...], bool], tuple[int, ...]] = {}
        try:
            self.template = self._split(self.render(config.prompt))
        except Exception as err:  # noqa: BLE001 - a Jinja template can raise anything: name the agent and the fix
            raise ConfigError(
                f"agent {name!r}: its chat template failed to render the prompt ({type(err).__name__}: {err}); "
                f"fix or remove agents.{name}.chat_template (or the tokenizer's template)"
            ) from err
        ids = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special} | set(self.tokenizer.all_special_ids)
        self._special_text = {i: str(self.tokenizer.convert_ids_to_tokens(i)) for i in ids}  # id -> its string
        self._plain_tokenizer: PreTrainedTokenizerBase | None = None  # built on first need, by _split_specials
        self._special_strings = [t for t in self.tokenizer.all_special_tokens if t] + [
            t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special and t.content
        ]

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
        for piece in MARKER_RE.split(rendered):  # a role prompt splits at slots and at input fields
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
            if isinstance(part, Field):  # user-supplied: special-token strings in it stay plain text
                value = self._field(fields, part.name)
                text = PromptText.of(value, ((0, len(value)),))
            else:
                text = PromptText.of(part) if isinstance(part, str) else part
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

    def encode(self, text: str, untrusted: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token strings in its user spans (a ``PromptText``), or anywhere in it
        when ``untrusted``, are tokenized as plain text; everything else tokenizes exactly as before."""
        key = (str(text), tuple(getattr(text, "user", ())), untrusted)
        ids = self._encoded.get(key)
        if ids is None:
            if len(self._encoded) >= _ENCODE_CACHE:  # bounded: a server sees endless new questions
                self._encoded.clear()
            ids = self._encoded[key] = tuple(self._encode(text, untrusted))
        return list(ids)

    def _encode(self, text: str, untrusted: bool) -> list[int]:
        spans = ((0, len(text)),) if untrusted else getattr(text, "user", ())
        plain = str(text)
        if not spans or not any(tok in plain[max(a - len(tok) + 1, 0) : b + len(tok) - 1] for tok in self._special_strings for a, b in spans):
            return self.tokenizer(plain, add_special_tokens=False)["input_ids"]
        if not getattr(self.tokenizer, "is_fast", False):  # no offsets: tokenize user spans apart from the rest
            return self._encode_pieces(plain, spans)
        enc = self.tokenizer(plain, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = []
        for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            # where the token's own string sits: an lstrip/rstrip token's offsets also cover the spaces it ate,
            # which may be the user's while the token is the template's
            found = plain.find(self._special_text.get(tid, "\0"), a, b)
            c, d = (found, found + len(self._special_text[tid])) if found >= 0 else (a, b)
            if tid in self._special_text and any(c < e and s < d for s, e in spans):
                ids += self._split_specials(plain[a:b])
            else:
                ids.append(tid)
        return ids

    def _split_specials(self, text: str) -> list[int]:
        # A private copy that always splits: passing split_special_tokens per call would flip a flag on the
        # shared backend, racing with the server's worker thread encoding templates at the same time.
        if self._plain_tokenizer is None:
            plain = copy.deepcopy(self.tokenizer)
            plain.split_special_tokens = True
            self._plain_tokenizer = plain
        return self._plain_tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_pieces(self, text: str, spans: tuple[tuple[int, int], ...]) -> list[int]:
        ids: list[int] = []
        cursor = 0
        for a, b in sorted(spans):
            if a > cursor:
                ids += self.tokenizer(text[cursor:a], add_special_tokens=False)["input_ids"]
            ids += self._split_specials(text[max(a, cursor) : b])
            cursor = max(cursor, b)
        if cursor < len(text):
            ids += self.tokenizer(text[cursor:], add_special_tokens=False)["input_ids"]
        return ids

    def embed(self, ids: list[int]) -> torch.Tensor:
        """``[len(ids), hidden]`` input embeddings from this agent's own table."""
        return self.embedding(torch.tensor(ids, dtype=torch.long, device=self.device))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def stop_token_ids(self, stops: Sequence[str]) -> torch.Tensor:
        """Ids that end a latent message (``generation.latent_stop``): the eos tokens and every token whose text holds a stop string.

        Decodes the whole vocabulary once per set of stops (about a second for a 262k vocabulary), then cached.
        """
        key = tuple(stops)
        if key not in self._stop_ids:
            ids = set(self.eos_token_ids)
            if stops:
                size = len(self.tokenizer)
                texts = self.tokenizer.batch_decode([[i] for i in range(size)])
                ids |= {i for i, text in enumerate(texts) if any(s in text for s in stops)}
            self._stop_ids[key] = torch.tensor(sorted(ids), dtype=torch.long)
        return self._stop_ids[key]

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, {type(self.model).__name__}, hidden={self.hidden_size}, {self.config.dtype}, {self.config.device})"
