"""Reusing the prompt prefix's KV cache across rounds must give what encoding every prompt whole gives."""

import pytest
import torch

import recursivemas.prefix as prefix_module
from recursivemas import InnerLink, System, latent_rollout
from recursivemas.generation import generate
from recursivemas.prefix import PrefixStore, prefix_length
from recursivemas.slots import build_inputs
from conftest import TINY_AGENTS, make_sequential_config

QUESTIONS = ["What is 2 + 3?", "Tom has 4 apples, buys 7 more and eats one. How many are left?", "9 - 4?"]


def _agent_system(tiny_agents, tmp_path, family: str) -> System:
    """A sequential system whose planner (a slot after the question) is a ``family`` model."""
    config = make_sequential_config(tiny_agents, tmp_path)
    config["agents"]["planner"] = dict(config["agents"]["planner"], model=tiny_agents[family])
    return System.from_config(config)


@pytest.mark.parametrize("family", list(TINY_AGENTS))
def test_prefix_then_tail_equals_the_whole_prompt(tiny_agents, tmp_path, family):
    system = _agent_system(tiny_agents, tmp_path, family)
    agent = system.agents["planner"]
    torch.manual_seed(0)
    thoughts = [torch.randn(3, agent.hidden_size), None, torch.randn(5, agent.hidden_size)]  # unequal slots, one empty
    fills = {"FEEDBACK": thoughts}
    store = PrefixStore(QUESTIONS)
    link = InnerLink(agent.hidden_size)
    with torch.no_grad():
        whole, mask = build_inputs(agent, QUESTIONS, fills)
        reference = latent_rollout(agent.model, link, whole, mask, steps=4)
        for _ in range(2):  # the second pass starts from the stored cache, untouched by the first
            tail, tail_mask, past, _ = store.inputs([agent], {"planner": fills})
            assert past is not None and tail.shape[1] < whole.shape[1]
            torch.testing.assert_close(latent_rollout(agent.model, link, tail, tail_mask, steps=4, past=past), reference, atol=2e-5, rtol=1e-4)

        ids, session = generate(agent.model, whole, mask, eos_token_ids=agent.eos_token_ids, max_new_tokens=6)
        tail, tail_mask, past, encoded = store.inputs([agent], {"planner": fills})
        reused, reused_session = generate(agent.model, tail, tail_mask, eos_token_ids=agent.eos_token_ids, max_new_tokens=6, past=past)
    assert reused == ids
    assert encoded == [0, 0, 0]  # already stored: nothing re-encoded
    # every prompt position is still encoded exactly once
    cuts = [prefix_length(agent, q) for q in QUESTIONS]
    assert [c + p for c, p in zip(cuts, reused_session.positions)] == session.positions


def test_prefix_stops_before_the_first_slot(tiny_agents, tmp_path):
    agent = _agent_system(tiny_agents, tmp_path, "llama").agents["planner"]
    before_slot = agent.segments(QUESTIONS[1])[0]
    assert QUESTIONS[1] in before_slot
    assert prefix_length(agent, QUESTIONS[1]) == len(agent.encode(before_slot)) - 1


@pytest.mark.parametrize("mode", ["latent", "text"])
def test_system_runs_the_same_with_and_without_reuse(sequential_config, monkeypatch, mode):
    system = System.from_config(sequential_config)
    reused = system.run(QUESTIONS, mode=mode, rounds=3, latent_steps=3)
    monkeypatch.setattr(prefix_module, "prefix_length", lambda agent, question: 0)  # no prefix: every prompt whole
    whole = system.run(QUESTIONS, mode=mode, rounds=3, latent_steps=3)
    assert [r.text for r in reused] == [r.text for r in whole]
    assert [r.handoffs for r in reused] == [r.handoffs for r in whole]
    for a, b in zip(reused, whole):
        # the same positions in all, but each agent's prefix encoded in round 1 only
        assert a.usage.input_positions < b.usage.input_positions
        for agent in ("planner", "critic"):
            first, later = ([s.input_positions for s in r.usage.steps if s.agent == agent] for r in (a, b))
            assert first[0] == later[0] and all(x < y for x, y in zip(first[1:], later[1:]))
