"""The KV-cached rollout must give the release's vectors (re-encode every step) for every family."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from recursivemas import InnerLink, latent_rollout, reencode_rollout
from conftest import TINY_AGENTS


@pytest.mark.parametrize("name", list(TINY_AGENTS))
def test_cached_rollout_equals_reencoding_left_padded_batch(tiny_agents, name):
    model = AutoModelForCausalLM.from_pretrained(tiny_agents[name]).eval()
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    torch.manual_seed(0)
    link = InnerLink(hidden)
    lengths = [9, 4, 6]  # unequal prompts, left-padded
    embeds = torch.randn(3, 9, hidden)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, 9 - n :] = 1
    embeds = embeds * mask[..., None]
    with torch.no_grad():
        cached = latent_rollout(model, link, embeds, mask, steps=6)
        reference = reencode_rollout(model, link, embeds, mask, steps=6)
        alone = [latent_rollout(model, link, embeds[i : i + 1, 9 - n :], steps=6) for i, n in enumerate(lengths)]
    assert cached.shape == (3, 6, hidden)
    torch.testing.assert_close(cached, reference, atol=2e-5, rtol=1e-4)
    # padding changes nothing: each row equals the same prompt run alone
    torch.testing.assert_close(cached, torch.cat(alone), atol=2e-5, rtol=1e-4)


def test_rollout_skips_lm_head_and_counts_calls(tiny_agents):
    model = AutoModelForCausalLM.from_pretrained(tiny_agents["llama"]).eval()
    calls = {"head": 0, "decoder": 0}
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    model.model.register_forward_hook(lambda *a: calls.__setitem__("decoder", calls["decoder"] + 1))
    with torch.no_grad():
        latent_rollout(model, InnerLink(48), torch.randn(2, 5, 48), steps=7)
    assert calls == {"head": 0, "decoder": 7}


def test_zero_steps_and_gradients_flow_to_link(tiny_agents):
    model = AutoModelForCausalLM.from_pretrained(tiny_agents["qwen2"]).eval().requires_grad_(False)
    link = InnerLink(32)
    assert latent_rollout(model, link, torch.randn(1, 3, 32), steps=0).shape == (1, 0, 32)
    latent_rollout(model, link, torch.randn(1, 3, 32), steps=3).sum().backward()
    assert link.proj1.weight.grad is not None and link.proj1.weight.grad.abs().sum() > 0
