"""Reusing the prompt prefix's KV cache across rounds must give what encoding every prompt whole gives."""

import pytest
import torch

from recursivemas import InnerLink, System, latent_rollout
from recursivemas.bundled import bundled_config
from recursivemas.generation import decode_batch
from recursivemas import prefix as prefix_module
from recursivemas.kv import backbone_of, drop_last, encode_past, encode_rows, positions_from_mask
from recursivemas.prefix import PrefixStore, prefix_length
from recursivemas.slots import build_inputs, left_pad
from recursivemas.tiny import build_tiny_model, build_tokenizer, save_tiny_agent
from recursivemas.bundled.world import generate as world_problems
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
            tail = store.inputs([agent], {"planner": fills})
            assert tail.past is not None and tail.embeds.shape[1] < whole.shape[1]
            rolled = latent_rollout(agent.model, link, tail.embeds, tail.mask, steps=4, past=tail.past)
            torch.testing.assert_close(rolled, reference, atol=2e-5, rtol=1e-4)

        ids, session = decode_batch(agent.model, whole, mask, eos_token_ids=agent.eos_token_ids, max_new_tokens=6)
        tail = store.inputs([agent], {"planner": fills})
        reused, reused_session = decode_batch(agent.model, tail.embeds, tail.mask, eos_token_ids=agent.eos_token_ids, max_new_tokens=6, past=tail.past)
    assert reused == ids
    cuts = [prefix_length(agent, q) for q in QUESTIONS]
    assert tail.encoded == [0, 0, 0] and tail.reused == cuts  # already stored: read from the cache, not encoded
    # every prompt position is still read exactly once
    assert [c + p for c, p in zip(cuts, reused_session.positions)] == session.positions


def _continue(model, past, steps: int, seed: int = 1) -> torch.Tensor:
    """The hidden states of ``steps`` more positions (one call) after ``past``, which is extended in place."""
    torch.manual_seed(seed)
    nxt = torch.randn(past.mask.shape[0], steps, model.config.hidden_size)
    mask = torch.cat([past.mask, torch.ones(past.mask.shape[0], steps, dtype=past.mask.dtype)], dim=1)
    out = backbone_of(model)(inputs_embeds=nxt, attention_mask=mask, position_ids=positions_from_mask(mask)[:, -steps:],
                             past_key_values=past.cache, use_cache=True)
    return out.last_hidden_state


def _encode_counting(model, rows, chunk: int):
    """``encode_rows(model, rows, chunk)`` and the positions (rows x length) its backbone calls were fed."""
    seen = []
    hook = backbone_of(model).register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"].shape[:2].numel()), with_kwargs=True)
    try:
        return encode_rows(model, rows, chunk=chunk), sum(seen)
    finally:
        hook.remove()


@pytest.mark.parametrize("family", list(TINY_AGENTS))
def test_rows_encoded_in_chunks_read_like_one_padded_batch(tiny_agents, tmp_path, family):
    """``encode_rows`` (shared start once, length-sorted chunks) gives one padded batch's cache and mask."""
    agent = _agent_system(tiny_agents, tmp_path, family).agents["planner"]
    questions = QUESTIONS + ["A much longer question about seven boxes of pens and two of pencils?", "1 + 1?"]
    with torch.no_grad():
        rows = [agent.embed(agent.encode(agent.render(q))) for q in questions]
        whole = encode_past(agent.model, *left_pad(rows))
        parts, fed = _encode_counting(agent.model, rows, chunk=2)  # three chunks, so the join and the reordering run
        # the chat template's opening is encoded once, and a chunk pads only to its own longest row
        assert fed < sum(len(r) for r in rows) < len(rows) * max(len(r) for r in rows)
        assert torch.equal(parts.mask, whole.mask)
        real = whole.mask.bool()[:, None, :, None]
        for a, b in zip(parts.cache.layers, whole.cache.layers):
            assert a.keys.shape == b.keys.shape and not bool(a.keys.masked_select(~real).any())  # zeros at the pads
            torch.testing.assert_close(a.keys.masked_select(real), b.keys.masked_select(real), atol=2e-5, rtol=1e-4)
        outs = [_continue(agent.model, past, 2) for past in (whole, parts)]
    torch.testing.assert_close(outs[1], outs[0], atol=2e-5, rtol=1e-4)


def test_sliding_window_rows_shorter_than_the_window_are_chunked_and_drop_the_same_positions():
    """Rows under the window are chunked, laid out as one padded batch, so positions leave the window alike later."""
    tokenizer = build_tokenizer("im")
    model = build_tiny_model("mixtral", tokenizer, 32, 2, seed=0, sliding_window=16)
    torch.manual_seed(0)
    start = torch.randn(3, 32)  # a shared start, encoded once
    rows = [torch.cat([start, torch.randn(n, 32)]) for n in (2, 9, 4)]
    with torch.no_grad():
        whole = encode_past(model, *left_pad(rows))
        parts, fed = _encode_counting(model, rows, chunk=1)
        assert fed == 3 + 2 + 9 + 4 and torch.equal(parts.mask, whole.mask)
        assert all(type(layer).__name__ == "DynamicSlidingWindowLayer" and layer.get_seq_length() == 12 for layer in parts.cache.layers)
        # 12 positions, then 10 more: every row's first positions leave the 16-wide window
        outs = [_continue(model, past, 10) for past in (whole, parts)]
        later = [_continue(model, past, 1, seed=2) for past in (whole, parts)]
    torch.testing.assert_close(outs[1], outs[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(later[1], later[0], atol=2e-5, rtol=1e-4)


def test_sliding_window_rows_reaching_the_window_are_encoded_as_one_padded_batch():
    """A layer that no longer holds every position cannot be joined from chunks: one padded batch, as before."""
    tokenizer = build_tokenizer("im")
    model = build_tiny_model("mixtral", tokenizer, 32, 2, seed=0, sliding_window=8)
    torch.manual_seed(0)
    start = torch.randn(3, 32)
    rows = [torch.cat([start, torch.randn(n, 32)]) for n in (2, 6, 4)]  # the longest, 9, reaches the window of 8
    with torch.no_grad():
        parts, whole = encode_rows(model, rows, chunk=1), encode_past(model, *left_pad(rows))
    assert torch.equal(parts.mask, whole.mask)
    for a, b in zip(parts.cache.layers, whole.cache.layers):
        assert type(a).__name__ == "DynamicSlidingWindowLayer" and torch.equal(a.keys, b.keys)


def test_prefix_stops_before_the_first_slot(tiny_agents, tmp_path):
    agent = _agent_system(tiny_agents, tmp_path, "llama").agents["planner"]
    before_slot = agent.segments(QUESTIONS[1])[0]
    assert QUESTIONS[1] in before_slot
    assert prefix_length(agent, QUESTIONS[1]) == len(agent.encode(before_slot)) - 1


@pytest.mark.parametrize("mode", ["latent", "text"])
def test_system_runs_the_same_with_and_without_reuse(sequential_config, mode):
    system = System.from_config(sequential_config)
    reused = system.run(QUESTIONS, mode=mode, rounds=3, latent_steps=3)
    whole = system.run(QUESTIONS, mode=mode, rounds=3, latent_steps=3, reuse_prefix=False)
    assert [r.text for r in reused] == [r.text for r in whole]
    assert [r.handoffs for r in reused] == [r.handoffs for r in whole]
    for a, b in zip(reused, whole):
        # the same positions read in all, but each agent's prefix encoded in round 1 only and read from the cache later
        assert a.usage.input_positions + a.usage.cached_positions == b.usage.input_positions
        assert a.usage.input_positions < b.usage.input_positions and b.usage.cached_positions == 0
        for agent in ("planner", "critic"):
            first, later = ([s.input_positions for s in r.usage.steps if s.agent == agent] for r in (a, b))
            assert first[0] == later[0] and all(x < y for x, y in zip(first[1:], later[1:]))


def test_tool_answers_reuse_the_prefix_row_by_row():
    """The deliberation decoder answers one row at a time through the tool loop, each from its own row of the cache."""
    system = System.from_config(bundled_config("deliberation"))
    questions = [r["question"] for r in world_problems("test", 3)]
    reused = system.run(questions, mode="latent", rounds=2)
    whole = system.run(questions, mode="latent", rounds=2, reuse_prefix=False)
    assert [r.text for r in reused] == [r.text for r in whole]
    calls = [[(c["payload"], c["result"]) for c in r.tool_calls] for r in reused]
    assert calls == [[(c["payload"], c["result"]) for c in r.tool_calls] for r in whole]
    assert all(calls)  # the tool path really ran



@pytest.mark.parametrize("window", [200, 80, 60])
def test_passes_reaching_a_sliding_window_read_like_whole_prompts(tmp_path, window):
    """Tails of unequal length leave a pad run after each short row's prefix, which a sliding window counts as
    positions. Passes within the window keep it (harmless there); passes reaching past it move each short
    row's last prefix positions into its tail (window 80); a prefix that reaches the window itself has lost
    positions the move would need, so its rows are encoded whole (window 60)."""
    model_dir = save_tiny_agent(tmp_path / "windowed", "mixtral", 32, "im", sliding_window=window)
    config = make_sequential_config({name: str(model_dir) for name in ("llama", "qwen2_moe", "gpt2")}, tmp_path)
    agent = System.from_config(config).agents["planner"]
    torch.manual_seed(0)
    fills = {"FEEDBACK": [torch.randn(3, 32), None, torch.randn(5, 32)]}  # tails of 25, 22 and 27 positions
    cuts = [prefix_length(agent, q) for q in QUESTIONS]
    assert cuts == [37, 69, 34]  # so the longest row, 69 + 22 positions, reaches past 80 but not 200
    store, link = PrefixStore(QUESTIONS), InnerLink(agent.hidden_size)
    with torch.no_grad():
        whole, mask = build_inputs(agent, QUESTIONS, fills)
        reference = latent_rollout(agent.model, link, whole, mask, steps=4)
        ids, session = decode_batch(agent.model, whole, mask, eos_token_ids=[], max_new_tokens=20)
        for _ in range(2):  # the pass that encodes the prefixes, then one that reuses them
            tail = store.inputs([agent], {"planner": fills}, 4)
            assert (tail.past is None) == (window == 60)
            torch.testing.assert_close(latent_rollout(agent.model, link, tail.embeds, tail.mask, steps=4, past=tail.past),
                                       reference, atol=2e-5, rtol=1e-4)
        tail = store.inputs([agent], {"planner": fills}, 1, horizon=20)
        reused, reused_session = decode_batch(agent.model, tail.embeds, tail.mask, eos_token_ids=[], max_new_tokens=20, past=tail.past)
    assert reused == ids
    # every position is read once, from the cache or encoded by this pass
    assert [r + p for r, p in zip(tail.reused, reused_session.positions)] == session.positions
    expected = {200: cuts, 80: [cuts[0] - 2, cuts[1] - 5, cuts[2]], 60: [0, 0, 0]}[window]  # 80: the short tails' pads
    assert tail.reused == expected


def test_system_past_a_sliding_window_runs_the_same_with_and_without_reuse(tmp_path, monkeypatch):
    """Every agent a Mixtral with a 96-position window, which prompts with text hand-offs of unequal length (the
    tails' pad runs) and answers reach past, over 3 rounds."""
    model_dir = save_tiny_agent(tmp_path / "windowed", "mixtral", 32, "im", sliding_window=96)
    config = make_sequential_config({name: str(model_dir) for name in ("llama", "qwen2_moe", "gpt2")}, tmp_path)
    config["generation"] = {"max_new_tokens": 12, "handoff_max_new_tokens": 9}
    system = System.from_config(config)
    assert max(prefix_length(agent, q) for agent in system.agents.values() for q in QUESTIONS) < 96
    moves = []
    monkeypatch.setattr(prefix_module, "drop_last", lambda past, counts: moves.append(counts) or drop_last(past, counts))
    reused = system.run(QUESTIONS, mode="text", rounds=3)
    assert len(moves) > 3 and all(max(counts) > 0 for counts in moves)  # passes reached past the window and moved positions
    whole = system.run(QUESTIONS, mode="text", rounds=3, reuse_prefix=False)
    assert [r.text for r in reused] == [r.text for r in whole]
    assert [r.handoffs for r in reused] == [r.handoffs for r in whole]
    assert all(r.usage.cached_positions > 0 for r in reused)
