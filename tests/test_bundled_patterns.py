"""The bundled mixture and deliberation systems: shipped agents and links load, run, call the real tool, train.

Everything runs on the shipped zoo (no mocks): three domain experts and a summarizer (mixture), the zoo's
planner as reflector and a tool-caller that writes Python (deliberation). docs/zoo.md has the measured numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from recursivemas import System
from recursivemas.bundled import BUNDLED, bundled_config, links_path
from recursivemas.tools.loop import format_result
from recursivemas.bundled.world import DOMAINS, generate
from recursivemas.bundled.zoo.agents import AGENTS, BUNDLED_ROLES
from recursivemas.bundled.zoo.build import ZOO_DIR, load_agent
from recursivemas.bundled.zoo.pretrain import facts_accuracy, generate_texts
from recursivemas.bundled.zoo.roles import ROLES, render_prompt
from recursivemas.bundled.zoo.tooluse import tool_accuracy

NEW = ("mixture", "deliberation")
shipped = all(links_path(n).is_file() for n in NEW) and all(
    (ZOO_DIR / agent / "config.json").is_file() for n in NEW for agent in BUNDLED_ROLES[n].values()
)
pytestmark = pytest.mark.skipif(not shipped, reason="the mixture/deliberation agents or links are not built in this checkout")

N_EVAL = 24  # first validation problems, seed 0 (per domain for the experts)
# Regression guards for the shipped specialists, a margin below what they scored on these problems when shipped
# (own-domain facts: money 24/24, counting 7/24, time 24/24, each declining 24/24 of other domains; tool-caller 21/24 with the
# tool and the gold plan; deliberation in text mode: 5/6 right programs, 13/16 with the tool against 1/16 without). docs/zoo.md has the 200-problem numbers. An expert must state its own domain's hidden
# fact and decline other domains; the tool-caller must answer with the tool when the gold plan is in its slot.
MIN_ACCURACY = {"money-llama": 0.85, "counting-mistral": 0.15, "time-qwen3": 0.85, "toolcaller-qwen3": 0.7}
MIN_DECLINE = 0.9  # share of other-domain problems an expert answers with exactly "Not a <domain> problem."
MIN_TEXT_RIGHT = 3  # of 6 test problems, deliberation in text mode (the reflector tells the fact) with the tool
MIN_TOOL_GAIN = 6  # of 16 validation problems: with the tool minus without, deliberation in text mode


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and robust on a shared CPU
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def systems() -> dict[str, System]:
    return {name: System.from_config(bundled_config(name)) for name in NEW}


def _config(name: str, **changes) -> dict:
    """The bundled system file as a mapping (paths resolve beside it), with top-level keys changed."""
    data = yaml.safe_load(bundled_config(name).read_text())
    return {**data, "base_dir": str(bundled_config(name).parent), **changes}


def test_registered_and_loaded_with_their_shipped_links(systems) -> None:
    from safetensors.torch import load_file

    assert set(NEW) <= set(BUNDLED)
    for name, system in systems.items():
        assert set(system.agents) == set(BUNDLED_ROLES[name])
        for agent, zoo_name in BUNDLED_ROLES[name].items():
            assert Path(system.config.resolve(system.config.agents[agent].model)).resolve() == (ZOO_DIR / zoo_name).resolve()
        state = {k: v.float() for k, v in system.links.state_dict().items()}
        shipped_links = load_file(str(links_path(name)))
        assert state.keys() == shipped_links.keys()
        for key, value in shipped_links.items():  # the trained links, not a fresh init
            torch.testing.assert_close(state[key], value.float())
    assert systems["mixture"].graph.decoder == "summarizer" and systems["deliberation"].graph.decoder == "tool_caller"
    assert systems["deliberation"].tool_loop is not None and systems["mixture"].tool_loop is None


@pytest.mark.parametrize("name", NEW)
def test_latent_run_only_the_decoder_talks_in_the_last_round(systems, name: str) -> None:
    records = generate("test", 3, seed=0)
    results = systems[name].run([r["question"] for r in records], mode="latent", rounds=2, latent_steps=4)
    decoder = systems[name].graph.decoder
    for res in results:
        talkers = [(s.agent, s.round) for s in res.usage.steps if s.generated_tokens]
        assert talkers == [(decoder, 2)]
        latent = {(s.agent, s.round) for s in res.usage.steps if s.action == "latent"}
        assert latent == {(a, 1) for a in systems[name].agents} | {(a, 2) for a in systems[name].agents if a != decoder}


def test_tool_caller_runs_python_in_the_sandbox_and_reads_the_result(systems) -> None:
    records = generate("test", 6, seed=0)
    # Text mode, one round: the reflector states the hidden fact, the tool-caller programs with it.
    results = systems["deliberation"].run([r["question"] for r in records], mode="text", rounds=1)
    right = 0
    for rec, res in zip(records, results):
        assert res.text.startswith("<python>") and res.tool_calls, res.text
        call = res.tool_calls[0]
        assert call["tool"] == "python" and "print(" in call["payload"]
        assert format_result(call["result"]) in res.text  # the engine fed the sandbox's output back
        right += call["result"].strip() == rec["answer"]
    assert right >= MIN_TEXT_RIGHT, f"only {right} of 6 programs printed the right answer"


def test_the_tool_helps_the_tool_caller(systems) -> None:
    from recursivemas.bundled.world import is_correct

    records = generate("validation", 16, seed=0)
    questions = [r["question"] for r in records]
    with_tool = systems["deliberation"].run(questions, mode="text", rounds=1)
    without = System.from_config(_config("deliberation", tools={})).run(questions, mode="text", rounds=1)
    assert all(not r.tool_calls for r in without)
    acc = {k: sum(is_correct(r.text, rec["answer"]) for r, rec in zip(v, records)) for k, v in (("tool", with_tool), ("none", without))}
    assert acc["tool"] >= acc["none"] + MIN_TOOL_GAIN, acc


@pytest.mark.parametrize("name", NEW)
def test_training_links_on_the_graph_lowers_the_outer_loss(name: str, tmp_path) -> None:
    from recursivemas.train import TrainConfig, train

    config = _config(name, rounds=2, latent_steps=4, links={"kind": "ln_res", "checkpoint": None}, tools={})
    system = System.from_config(config)
    records = generate("train", 24, seed=1)
    cfg = TrainConfig(stage="outer", steps=12, lr=3e-3, warmup_steps=2, batch_size=4, eval_generate=False, progress=False,
                      checkpoint_every=100)
    train(system, records[:20], cfg, tmp_path, records[20:])
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("name", list(MIN_ACCURACY))
def test_shipped_specialist_still_does_its_job(name: str) -> None:
    model, tok = load_agent(ZOO_DIR / name)
    spec = AGENTS[name]
    records = generate("validation", N_EVAL, seed=0, domains=spec.domain or DOMAINS)
    role = next(iter(spec.roles or {}))
    if role == "tool_caller":
        acc = tool_accuracy(model, tok, records, use_tool=True, gold=True)
    else:
        acc = facts_accuracy(model, tok, records, role)
        others = [r for r in generate("validation", 3 * N_EVAL, seed=0) if r["domain"] != role][:N_EVAL]
        texts = generate_texts(model, tok, [render_prompt(tok, ROLES[role], r) for r in others], 24)
        declined = sum(t.strip() == f"Not a {role} problem." for t in texts) / len(others)
        assert declined >= MIN_DECLINE, f"{name} declines {declined:.2f} of other-domain problems"
    assert acc >= MIN_ACCURACY[name], f"{name} scores {acc:.2f} as {role} on {N_EVAL} problems, below {MIN_ACCURACY[name]}"


def test_link_recipes_cover_every_system_and_zoo_links_defaults_are_link_defaults() -> None:
    import typer.main

    from recursivemas.bundled import LINK_DEFAULTS, LINK_RECIPES
    from recursivemas.cli import app

    assert set(LINK_RECIPES) == set(BUNDLED)  # `zoo rebuild` retrains every shipped links file
    assert all(set(recipe) <= set(LINK_DEFAULTS) for recipe in LINK_RECIPES.values())
    links = typer.main.get_command(app).commands["zoo"].commands["links"]
    cli = {p.name: p.default for p in links.params if p.name not in ("system", "workers")}
    cli["warmup_steps"] = cli.pop("warmup")  # the option's name for train_bundled_links' keyword
    assert cli == LINK_DEFAULTS
