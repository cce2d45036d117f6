"""The KV-cached rollout must give the release's vectors (re-encode every step) for every family."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from recursivemas import InnerLink, latent_rollout, reencode_rollout
from recursivemas.kv import positions_from_mask
from recursivemas.rollout import latent_message
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


def _greedy_next(model, embeds, mask, thoughts):
    """Reference for a latent stop: the LM head's greedy token after the prompt and after each prefix of the thoughts (re-encoded)."""
    ids = []
    for k in range(thoughts.shape[1] + 1):
        x = torch.cat([embeds, thoughts[:, :k].to(embeds.dtype)], dim=1)
        m = torch.cat([mask, torch.ones(mask.shape[0], k, dtype=mask.dtype)], dim=1)
        ids.append(model(inputs_embeds=x, attention_mask=m, position_ids=positions_from_mask(m)).logits[:, -1].argmax(-1))
    return torch.stack(ids, dim=1)  # [batch, thoughts + 1]


def test_latent_stop_ends_each_row_before_its_first_stop_token(tiny_agents):
    model = AutoModelForCausalLM.from_pretrained(tiny_agents["llama"]).eval()
    torch.manual_seed(1)
    link = InnerLink(48)
    embeds, mask = torch.randn(3, 7, 48), torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0  # one left-padded row
    embeds = embeds * mask[..., None]
    with torch.no_grad():
        full = latent_rollout(model, link, embeds, mask, steps=6)
        greedy = _greedy_next(model, embeds, mask, full[:, :5])  # the token each thought's state would emit
        stop_ids = greedy[0, 2:3]  # row 0 stops by its third thought at the latest
        expected = [next((k for k in range(6) if greedy[i, k] in stop_ids), 6) for i in range(3)]
        rows = []  # the batch of every decoder call
        handle = model.model.register_forward_hook(lambda mod, args, kwargs, out: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
        message, lengths = latent_message(model, link, embeds, mask, steps=6, stop_ids=stop_ids)
        handle.remove()
        assert lengths == expected and lengths[0] <= 2
        width = 6 if max(expected) == 6 else max(expected)  # the rollout ends once every row has stopped
        assert message.shape == (3, width, 48)
        for i, k in enumerate(lengths):  # a stop never changes the thoughts kept
            torch.testing.assert_close(message[i, :k], full[i, :k], atol=2e-5, rtol=1e-4)
        # a row whose message ended leaves the batch: each call carries only the rows still talking
        assert rows == [3] + [sum(k >= step for k in lengths) for step in range(1, len(rows))]
        nothing, none = latent_message(model, link, embeds, mask, steps=6, stop_ids=torch.arange(model.config.vocab_size))
        assert none == [0, 0, 0] and nothing.shape == (3, 0, 48)
        _, unstopped = latent_message(model, link, embeds, mask, steps=6)
        assert unstopped == [6, 6, 6]
