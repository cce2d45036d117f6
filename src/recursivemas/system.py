"""A recursive multi-agent system: agents on a graph, links on its edges, run for n rounds (docs/method.md#rounds).

Modes share everything but the hand-off: ``latent`` passes ``R_out(R_in(H))`` between agents and decodes
text once, at the decoding agent in the last round; ``text`` decodes every hand-off to text (the paper's
Recursive-TextMAS); ``single`` runs the decoding agent alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from recursivemas.agent import Agent, as_fields, load_model_and_tokenizer
from recursivemas.config import CONFIG_NAME, ConfigError, GenerationConfig, SystemConfig, dump_config, load_config
from recursivemas.generation import DecodeSession, cut_at_stop, decode_batch, stop_check
from recursivemas.graph import Graph, edge_name
from recursivemas.kv import position_limit
from recursivemas.links import LatentMASLink
from recursivemas.linkset import LinkSet
from recursivemas.prefix import PrefixStore, Tail
from recursivemas.rollout import latent_message
from recursivemas.rounds import MODES, PROBES, Mailbox
from recursivemas.slots import Input, SlotFill
from recursivemas.tools.loop import run_tool_loop
from recursivemas.usage import StepUsage, Usage

LINKS_NAME = "links.safetensors"


class Cancelled(RuntimeError):
    """``System.run`` stopped early because its ``should_stop`` callback said so."""


@dataclass
class RunResult:
    """One question's answer and what it cost."""

    question: str
    text: str
    mode: str
    rounds: int
    latent_steps: int
    usage: Usage
    handoffs: list[dict] = field(default_factory=list)  # text mode: every message passed, for inspection
    tool_calls: list[dict] = field(default_factory=list)  # deliberation: every tool call of the final answer

    def to_dict(self) -> dict:
        data = asdict(self)
        data["usage"] = self.usage.to_dict()
        return data


class System:
    """Build with ``System.from_config(path_or_dict)`` or ``System.from_pretrained(dir)``."""

    def __init__(self, config: SystemConfig, agents: dict[str, Agent], links: LinkSet, graph: Graph) -> None:
        self.config, self.agents, self.links, self.graph = config, agents, links, graph
        self.tool_loop = _build_tool_loop(config)  # a missing tool backend fails here, at load time

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_config(cls, source: str | Path | dict, link_checkpoint: str | Path | None = None, device: str | None = None) -> "System":
        """A system from a system file or an already-parsed mapping (``System.load`` also takes directories).

        ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) places every agent there, whatever the file says.
        """
        config = load_config(source, device=device)
        graph = Graph.from_config(config)
        agents = _load_agents(config)
        torch.manual_seed(config.seed)  # random links are reproducible per seed
        links = LinkSet({n: a.hidden_size for n, a in agents.items()}, graph.edges, config.links.kind)
        if config.links.inner == "latentmas":  # training-free inner links from each model's own embeddings
            for name, agent in agents.items():
                links.inner[name] = LatentMASLink.from_model(agent.model).float()
        checkpoint = link_checkpoint or (config.resolve(config.links.checkpoint) if config.links.checkpoint else None)
        if checkpoint:
            links.load(checkpoint)
        if config.links.release:
            links.load_release({k: config.resolve(v) for k, v in config.links.release.items()})
        system = cls(config, agents, links, graph)
        system.place_links()
        return system

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "System":
        """A system from a system file (YAML) or a directory written by ``save_pretrained``: the one way to load one."""
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path, device=device)
        if not path.is_file():
            raise ConfigError(f"system {str(path)!r} does not exist; pass a system YAML file or a directory saved with save_pretrained")
        return cls.from_config(path, device=device)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> "System":
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise ConfigError(f"{directory} has no {CONFIG_NAME}; save one with System.save_pretrained(dir)")
        links = directory / LINKS_NAME
        return cls.from_config(directory / CONFIG_NAME, link_checkpoint=links if links.is_file() else None, device=device)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``system.yaml`` (model paths made absolute) and ``links.safetensors`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.links.save(directory / LINKS_NAME)
        config = replace(self.config, links=replace(self.config.links, checkpoint=LINKS_NAME, release={}))
        config.agents = {name: replace(a, model=self._portable_path(a.model)) for name, a in self.config.agents.items()}
        dump_config(config, directory / CONFIG_NAME)

    def _portable_path(self, model: str) -> str:
        """Local model directories (and .gguf files) are saved as absolute paths so the saved system loads from anywhere."""
        path = Path(self.config.resolve(model))
        return str(path.resolve()) if path.exists() else model

    def place_links(self) -> None:
        """Inner links live on their agent's device, outer links on the receiver's."""
        for name, link in self.links.inner.items():
            link.to(self.agents[name].device)
        for edge in self.graph.edges:
            self.links.outer[edge_name(edge)].to(self.agents[edge.dst].device)

    # ---------------------------------------------------------------- inputs
    def input_fields(self, mode: str = "latent") -> list[str]:
        """The input fields the agents that run in ``mode`` read (``{question}``, ``{passage}``, ...), in order.

        Single mode runs the decoder alone, so only its fields are needed there.
        """
        names = [self.graph.decoder] if mode == "single" else list(self.agents)
        return list(dict.fromkeys(field for name in names for field in self.agents[name].fields))

    def missing_fields(self, item: Input, mode: str = "latent") -> list[str]:
        """The fields of ``input_fields(mode)`` that ``item`` lacks or holds as something other than a string."""
        fields = as_fields(item)
        return [name for name in self.input_fields(mode) if not isinstance(fields.get(name), str)]

    # ---------------------------------------------------------------- running
    @torch.no_grad()
    def run(
        self,
        inputs: Input | Sequence[Input],
        mode: str = "latent",
        rounds: int | None = None,
        latent_steps: int | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool = False,
        reuse_prefix: bool = True,
        generation: GenerationConfig | None = None,
        probe: str = "none",
        gold: Sequence[Mapping[str, str]] | None = None,
        probe_seed: int = 0,
        trace: list | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[RunResult]:
        """Answer each input; returns one ``RunResult`` per input, in order.

        An input is a question, or a mapping of input fields (``{"story": ..., "ask": ...}``) when the
        agents' prompts read different fields; extra keys are ignored, so a data record can be passed.

        ``generation`` overrides the system file's decoding settings for this call alone (the system is
        never mutated, so concurrent callers with different settings cannot see each other's).

        ``probe`` tests the channel (docs/method.md#channel-tests): ``shuffle`` gives every slot what the
        same edge produced for another input of the batch (a derangement seeded by ``probe_seed``),
        ``zero`` gives zeros (text mode: empty messages), ``gold`` (text mode) runs the decoding agent once
        with each slot holding ``gold[i][SLOT]``, the gold upstream text: the ceiling of what upstream
        can give.

        ``reuse_prefix`` encodes each agent's prompt up to its first slot once per batch (its rows' shared
        start once, the rest in length-sorted chunks: ``kv.encode_rows``) and reuses its KV cache in every
        pass (``recursivemas.prefix``); turning it off encodes every prompt whole, for checks. ``trace``
        collects the schedule's events (tests).
        ``should_stop`` is asked before every turn of every round; when it answers true the run raises
        ``Cancelled`` (the server stops work for a client that went away).
        """
        if isinstance(inputs, (str, Mapping)):
            inputs = [inputs]
        inputs = list(inputs)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        _check_probe(probe, mode, gold, len(inputs))
        for i, item in enumerate(inputs):  # before anything runs, for every input
            if missing := self.missing_fields(item, mode):
                given = ", ".join(sorted(k for k, v in as_fields(item).items() if isinstance(v, str))) or "none"
                raise ValueError(f"input {i} lacks the input field(s) {', '.join(missing)} that the agents' prompts read "
                                 f"(they read {', '.join(self.input_fields(mode))}; text fields given: {given}); pass each "
                                 "input as a mapping with every one of them as a string")
        rounds = self.config.rounds if rounds is None else rounds
        steps = self.config.latent_steps if latent_steps is None else latent_steps
        if rounds < 1 or steps < 0:
            raise ValueError(f"need rounds >= 1 and latent_steps >= 0; got {rounds}, {steps}")
        batch_size = batch_size or self.config.batch_size
        gen = self.config.generation if generation is None else generation
        generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        results: list[RunResult] = []
        bar = tqdm(total=len(inputs), desc=f"{mode} x{rounds}", disable=not progress, unit="q")
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            batch_gold = None if gold is None else list(gold[start : start + batch_size])
            results += self._run_batch(batch, mode, 1 if mode == "single" else rounds, steps, gen, generator, reuse_prefix,
                                       probe, f"{probe_seed}:{start}", batch_gold, trace, should_stop)
            bar.update(len(batch))
        bar.close()
        return results

    def _run_batch(self, inputs: list, mode: str, rounds: int, steps: int, gen: GenerationConfig, generator,
                   reuse_prefix: bool, probe: str = "none", probe_seed: int | str = 0, gold=None, trace: list | None = None,
                   should_stop: Callable[[], bool] | None = None) -> list[RunResult]:
        n = len(inputs)
        usages = [Usage() for _ in inputs]
        handoffs: list[list[dict]] = [[] for _ in inputs]
        tool_log: list[list[dict]] = [[] for _ in inputs]
        decoder, max_answer = self.graph.decoder, gen.max_new_tokens
        # Each agent's prompt up to its first slot, encoded once for all rounds; with encode_rows this is faster than
        # encoding prompts whole even in one round (bench/prefix_reuse.py).
        prefixes = PrefixStore(inputs, reuse=reuse_prefix)
        if should_stop is not None and should_stop():
            raise Cancelled("the run was cancelled before it started")
        if mode == "single" or probe == "gold":  # the decoding agent alone: every slot empty, or holding gold text
            fills = _gold_fills(self.graph, gold, n) if probe == "gold" else {}
            texts = self._decode(decoder, prefixes, fills, 1, "answer", max_answer, usages, gen, generator, tool_log)
            return [self._result(x, texts[i], mode, 1, 0, usages[i], tool_calls=tool_log[i]) for i, x in enumerate(inputs)]
        mail = Mailbox(self.graph, n, probe, probe_seed, trace)
        for turn in mail.turns(rounds):
            r = turn.round
            if should_stop is not None and should_stop():
                raise Cancelled(f"the run was cancelled in round {r}")
            answer_fills = mail.fills(decoder) if turn.answers else None
            fills = {agent: mail.fills(agent) for agent in turn.senders}
            if turn.answers:
                texts = self._decode(decoder, prefixes, answer_fills, r, "answer", max_answer, usages, gen, generator, tool_log)
                mail.answered()
            if mode == "latent":
                for group in self._same_model_groups(list(fills)):
                    for agent, (thoughts, lengths) in self._rollout(group, prefixes, fills, r, steps, usages, gen).items():
                        for e in mail.edges_out(agent):  # latents cross each edge through its outer link
                            mapped = self.links.outer[edge_name(e)](thoughts.to(self.agents[e.dst].device))
                            mail.post(e, [row[:k] for row, k in zip(mapped, lengths)])
                continue
            for agent, agent_fills in fills.items():
                msgs = self._decode(agent, prefixes, agent_fills, r, "text", gen.handoff_max_new_tokens, usages, gen, generator)
                edges = mail.edges_out(agent)
                for i, msg in enumerate(msgs):
                    handoffs[i].append({"round": r, "from": agent, "to": [e.dst for e in edges], "text": msg})
                for e in edges:
                    mail.post(e, msgs)
        return [
            self._result(x, texts[i], mode, rounds, steps if mode == "latent" else 0, usages[i], handoffs[i], tool_log[i])
            for i, x in enumerate(inputs)
        ]

    @staticmethod
    def _result(inputs, text: str, mode: str, rounds: int, steps: int, usage: Usage, handoffs=None, tool_calls=None) -> RunResult:
        fields = as_fields(inputs)
        return RunResult(str(fields.get("question", "")), text, mode, rounds, steps, usage, handoffs or [], tool_calls or [])

    def _same_model_groups(self, names: list[str]) -> list[list[str]]:
        """Agents of one stage that share a loaded model (e.g. mixture experts on one LLM) roll out as one batch."""
        groups: dict[int, list[str]] = {}
        for name in names:
            groups.setdefault(id(self.agents[name].model), []).append(name)
        return list(groups.values())

    def _rollout(self, names: list[str], prefixes: PrefixStore, fills, round_: int, steps: int, usages: list[Usage],
                 gen: GenerationConfig) -> dict[str, tuple[torch.Tensor, list[int]]]:
        """Latent rollouts of agents sharing one model, batched together; each row uses its own agent's inner link.

        Per agent: its thoughts ``[n, <= steps, hidden]`` and each row's message length (``steps`` unless
        ``generation.latent_stop`` ended it early).
        """
        model, n = self.agents[names[0]].model, len(prefixes.inputs_)
        if steps == 0:  # nothing to pass on (the m = 0 ablation): encode nothing
            for name in names:
                for i in range(n):
                    usages[i].steps.append(StepUsage(name, round_, "latent", 0, 0, 0, 0, 0.0))
            return {name: (torch.zeros(n, 0, self.agents[name].hidden_size), [0] * n) for name in names}
        start = time.perf_counter()
        tail = prefixes.inputs([self.agents[name] for name in names], fills, steps, f"{steps} latent thoughts")
        inner = [self.links.inner[name] for name in names]
        link = inner[0] if len(names) == 1 else (lambda h: torch.cat([fn(h[k * n : (k + 1) * n]) for k, fn in enumerate(inner)]))
        stop_ids = self.agents[names[0]].stop_token_ids(gen.stop) if gen.latent_stop else None
        thoughts, kept = latent_message(model, link, tail.embeds, tail.mask, steps=steps, past=tail.past, stop_ids=stop_ids)
        seconds = (time.perf_counter() - start) / len(tail.encoded)
        # thoughts fed back through the model: all but the last, or all of them when every row stopped early
        fed = thoughts.shape[1] if thoughts.shape[1] < steps else steps - 1
        calls = 1 + fed + any(tail.encoded)  # the prompt pass, the fed thoughts, the prefix pass when this call made it
        lengths = tail.mask.sum(-1).tolist()
        for k, name in enumerate(names):
            for i in range(n):
                row = k * n + i  # the prompt (a reused prefix is cached, not encoded), then its fed-back thoughts
                positions = tail.encoded[row] + lengths[row] + min(fed, kept[row])  # a row that stopped left the batch
                usages[i].steps.append(
                    StepUsage(name, round_, "latent", 0, kept[row], calls, positions, seconds, cached_positions=tail.reused[row])
                )
        return {name: (thoughts[k * n : (k + 1) * n], kept[k * n : (k + 1) * n]) for k, name in enumerate(names)}

    def _decode(self, name: str, prefixes: PrefixStore, fills, round_: int, action: str, max_new: int, usages, gen: GenerationConfig, generator, tool_log=None) -> list[str]:
        agent = self.agents[name]
        start = time.perf_counter()
        # the prompt must fit; an answer that would run past the model's positions stops there (docs/engine.md)
        tail = prefixes.inputs([agent], {name: fills}, 1, "the first token it writes", horizon=max_new)
        used = _positions(tail)
        limit = position_limit(agent.model)
        if limit is not None:
            max_new = min(max_new, limit - used)
        if action == "answer" and self.tool_loop is not None:
            return self._decode_with_tools(agent, tail, round_, max_new, usages, gen, generator, start, tool_log)
        ids, session = decode_batch(
            agent.model,
            tail.embeds,
            tail.mask,
            eos_token_ids=agent.eos_token_ids,
            max_new_tokens=max_new,
            temperature=gen.temperature,
            top_p=gen.top_p,
            generator=generator,
            past=tail.past,
            stop=stop_check(agent.decode, gen.stop),
        )
        seconds = (time.perf_counter() - start) / len(ids)
        calls = session.forward_calls + any(tail.encoded)
        for i, row in enumerate(ids):
            positions = tail.encoded[i] + session.positions[i]
            usages[i].steps.append(StepUsage(name, round_, action, len(row), 0, calls, positions, seconds, cached_positions=tail.reused[i]))
        return [cut_at_stop(agent.decode(row), gen.stop) for row in ids]

    def _decode_with_tools(self, agent: Agent, tail: Tail, round_, max_new, usages, gen: GenerationConfig, generator, start, tool_log) -> list[str]:
        """The final answer with a tool loop, one question at a time (each has its own calls and results)."""
        texts = []
        shared = (time.perf_counter() - start) / len(tail.encoded)  # each row's share of building the inputs and prefix
        for i in range(len(tail.encoded)):
            row_start = time.perf_counter()
            session = DecodeSession(agent.model, agent.eos_token_ids)
            keep = tail.mask[i].bool()
            session.prefill(tail.embeds[i : i + 1, keep], tail.mask[i : i + 1, keep], None if tail.past is None else tail.past.row(i))
            loop, generated = self.tool_loop, []
            loop.reset()

            def continue_decoding(appended: str) -> tuple[str, bool]:
                if appended:
                    session.feed(agent.encode(appended, untrusted=True))  # tool output is not ours: no special tokens
                budget = max_new - len(generated)
                if budget <= 0 or (generated and generated[-1] in agent.eos_token_ids):
                    return "", False
                stops = loop.stop_strings
                stop = (lambda ids: any(agent.decode(ids).rstrip().endswith(s) for s in stops)) if stops else None
                ids = session.sample(budget, gen.temperature, gen.top_p, generator, stop=stop)[0]
                generated.extend(ids)
                return agent.decode(ids), False

            with torch.no_grad():
                texts.append(run_tool_loop(continue_decoding, loop))
            if tool_log is not None:
                tool_log[i].extend(asdict(c) for c in loop.calls)
            seconds = time.perf_counter() - row_start + shared
            calls = session.forward_calls + bool(tail.encoded[i])
            positions = tail.encoded[i] + session.positions[0]
            usages[i].steps.append(
                StepUsage(agent.name, round_, "answer", len(generated), 0, calls, positions, seconds, cached_positions=tail.reused[i])
            )
        return texts

    def __repr__(self) -> str:
        agents = ", ".join(repr(a) for a in self.agents.values())
        return f"System({self.config.name!r}, decoder={self.graph.decoder!r}, agents=[{agents}])"


def _positions(tail: Tail) -> int:
    """The most real positions any row of a pass starts from (its cached prefix and its own tokens; pads take none)."""
    real = tail.mask.sum(-1) + (0 if tail.past is None else tail.past.mask.sum(-1))
    return int(real.max())


def _check_probe(probe: str, mode: str, gold, n: int) -> None:
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if probe != "none" and mode == "single":
        raise ValueError(f"probe {probe!r} needs mode 'latent' or 'text': a single agent receives nothing to probe")
    if probe == "gold":
        if mode != "text":
            raise ValueError("probe 'gold' fills slots with gold text, so it runs in mode 'text'")
        if gold is None or len(gold) != n:
            raise ValueError(f"probe 'gold' needs gold=[{{slot: text}}, ...] with one mapping per input ({n}), "
                             f"got {'none' if gold is None else len(gold)}")
    elif gold is not None:
        raise ValueError(f"gold texts are only read by probe 'gold', not {probe!r}; drop gold= or set probe='gold'")


def _gold_fills(graph: Graph, gold: Sequence[Mapping[str, str]], n: int) -> dict[str, list[SlotFill]]:
    """The decoding agent's slots, each holding the gold upstream text of every row."""
    fills = {}
    for e in graph.incoming(graph.decoder):
        missing = [i for i in range(n) if not isinstance(gold[i].get(e.slot), str)]
        if missing:
            raise ValueError(f"gold[{missing[0]}] has no text for slot {e.slot!r} (the edge {edge_name(e)}); "
                             f"give every input a gold text for each of the decoder's slots")
        fills[e.slot] = [gold[i][e.slot] for i in range(n)]
    return fills


def _build_tool_loop(config: SystemConfig):
    """The decoding agent's tool loop, when the system file configures tools (deliberation)."""
    if not config.tools:
        return None
    from recursivemas.tools import build_tool_loop

    if config.generation.stop:  # the tool loop ends answers at its own closing tags
        raise ConfigError("generation.stop does not combine with tools: (a tool-using answer stops at its tags); remove one of them")
    spec = dict(config.tools)
    search = spec.get("search")
    if isinstance(search, dict):  # corpus and index paths are relative to the system file
        spec["search"] = {k: (config.resolve(v) if k in ("corpus", "index_dir") and isinstance(v, str) else v) for k, v in search.items()}
    try:
        return build_tool_loop(spec)
    except ValueError as err:
        raise ConfigError(f"tools: {err}") from err


def _load_agents(config: SystemConfig) -> dict[str, Agent]:
    """Load each distinct (model, dtype, device) once, however many roles share it."""
    loaded: dict[tuple, tuple] = {}
    agents = {}
    for name, agent_config in config.agents.items():
        path = config.resolve(agent_config.model)
        key = (path, agent_config.gguf_file, agent_config.dtype, agent_config.device, agent_config.revision, agent_config.trust_remote_code)
        if key not in loaded:
            loaded[key] = load_model_and_tokenizer(agent_config, path)
        agents[name] = Agent(name, agent_config, *loaded[key])
    return agents
