"""Batched decoding: rows that finish leave the batch, and every row decodes as it would alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from recursivemas.generation import decode_batch

PROMPTS = [[5, 9, 11, 3, 7, 2], [4, 8], [12, 6, 1, 9]]


def _left_padded(model, prompts: list[list[int]]):
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return model.get_input_embeddings()(ids), mask


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2_moe"])
def test_rows_leave_the_batch_and_decode_as_alone(tiny_agents, family):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_agents[family]).eval()
    with torch.no_grad():
        embeds, mask = _left_padded(model, PROMPTS)
        free, _ = decode_batch(model, embeds, mask, eos_token_ids=set(), max_new_tokens=10)
        # End-of-sequence tokens that stop the rows at different steps, so the batch shrinks mid-decode.
        eos = {free[0][2], free[1][5]}
        batched, session = decode_batch(model, embeds, mask, eos_token_ids=eos, max_new_tokens=10)
        for row, prompt in enumerate(PROMPTS):
            alone_embeds, alone_mask = _left_padded(model, [prompt])
            alone, _ = decode_batch(model, alone_embeds, alone_mask, eos_token_ids=eos, max_new_tokens=10)
            assert batched[row] == alone[0]
            cut = next((k + 1 for k, t in enumerate(free[row]) if t in eos), len(free[row]))
            assert batched[row] == free[row][:cut]
            # Work counted per row: its prompt, then every generated token but the last (never fed back).
            assert session.positions[row] == len(prompt) + len(batched[row]) - 1
    lengths = sorted(len(r) for r in batched)
    assert lengths[0] < lengths[-1], "the chosen eos tokens should stop the rows at different steps"
    assert session.forward_calls == max(len(r) for r in batched)  # prefill + one call per fed token
    assert session._cache.layers[0].keys.shape[0] < len(PROMPTS)  # finished rows were dropped from the cache


def test_stop_strings_end_handoffs_and_answers_before_the_stop():
    """``generation.stop``: the planner's hand-off is its free text cut before the first stop; nothing holds one."""
    from dataclasses import replace

    from recursivemas import System
    from recursivemas.bundled import bundled_config
    from recursivemas.bundled.world import generate

    system = System.load(bundled_config("sequential"))
    questions = [r["question"] for r in generate("validation", 4)]
    free = system.run(questions, mode="text", rounds=1)
    stopped = system.run(questions, mode="text", rounds=1, generation=replace(system.config.generation, stop=["\n"]))
    for a, b in zip(free, stopped):
        plan_free, plan_cut = a.handoffs[0]["text"], b.handoffs[0]["text"]
        assert "\n" in plan_free.strip()  # the free plan runs over several lines, so the stop has work to do
        assert plan_cut == plan_free[: plan_free.index("\n")]
        assert all("\n" not in h["text"] for h in b.handoffs) and "\n" not in b.text
        assert b.usage.steps[0].generated_tokens < a.usage.steps[0].generated_tokens


def test_stop_strings_are_checked_in_the_system_file():
    from recursivemas.config import ConfigError, GenerationConfig

    with pytest.raises(ConfigError, match="generation.stop must be a list"):
        GenerationConfig(stop=[""])
    assert GenerationConfig(stop=["\n"]).stop == ["\n"]
