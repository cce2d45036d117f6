"""The engine on a CUDA GPU: the CPU's answers and latents there, and link training there.

The GPU tests are skipped where torch sees no GPU (CI has none); on a GPU machine run
``pytest tests/test_cuda.py`` (``bench/gpu.sh`` does, before the GPU benchmarks). What a user
without a GPU gets from ``device="cuda"`` is tested everywhere.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from recursivemas import ConfigError, InnerLink, System, latent_rollout, reencode_rollout
from recursivemas.bundled import bundled_config
from recursivemas.bundled.world import generate
from recursivemas.tiny import save_tiny_agent
from recursivemas.train import TrainConfig, synthetic_records, train
from conftest import TINY_AGENTS

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gives")
def test_device_override_without_a_gpu_names_the_fix():
    with pytest.raises(ConfigError, match="sees no CUDA GPU.*set device: cpu"):
        System.load(bundled_config("sequential"), device="cuda")


def test_device_override_replaces_every_agents_device(sequential_config):
    config = {**sequential_config, "agents": {k: {**v, "device": "cuda:7"} for k, v in sequential_config["agents"].items()}}
    system = System.from_config(config, device="cpu")  # the file's cuda:7 would not load here
    assert {a.device.type for a in system.agents.values()} == {"cpu"}
    assert {a.config.device for a in system.agents.values()} == {"cpu"}


@cuda
def test_bundled_default_answers_on_cuda_as_on_cpu():
    records = generate("test", 48)
    cpu, gpu = System.load(bundled_config("sequential")), System.load(bundled_config("sequential"), device="cuda")
    assert {a.device.type for a in gpu.agents.values()} == {"cuda"}
    assert {p.device.type for p in gpu.links.parameters()} == {"cuda"}
    for mode in ("text", "latent"):
        for probe in ("none", "shuffle") if mode == "latent" else ("none",):
            a = cpu.run(records, mode=mode, rounds=3, probe=probe)
            b = gpu.run(records, mode=mode, rounds=3, probe=probe)
            same = sum(x.text == y.text for x, y in zip(a, b))
            assert same >= len(records) - 2, (mode, probe, same)  # float32 sums in another order may flip a near tie
            assert [x.usage.latent_steps for x in a] == [y.usage.latent_steps for y in b]


@cuda
@pytest.mark.parametrize("name", ["llama", "qwen2_moe", "gemma", "gpt2"])
def test_cached_rollout_equals_reencoding_on_cuda(tiny_agents, name):
    model = AutoModelForCausalLM.from_pretrained(tiny_agents[name]).to("cuda").eval()
    hidden = TINY_AGENTS[name][1]
    torch.manual_seed(0)
    link = InnerLink(hidden).to("cuda")
    lengths = [9, 4, 6]  # unequal prompts, left-padded
    mask = torch.zeros(3, 9, dtype=torch.long, device="cuda")
    for i, n in enumerate(lengths):
        mask[i, 9 - n :] = 1
    embeds = torch.randn(3, 9, hidden, device="cuda") * mask[..., None]
    with torch.no_grad():
        cached = latent_rollout(model, link, embeds, mask, steps=6)
        reference = reencode_rollout(model, link, embeds, mask, steps=6)
        on_cpu = latent_rollout(model.cpu(), link.cpu(), embeds.cpu(), mask.cpu(), steps=6)
    torch.testing.assert_close(cached, reference, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(cached.cpu(), on_cpu, atol=2e-5, rtol=1e-4)


@cuda
def test_outer_steps_on_cuda_lower_the_loss_and_save_links_that_load_on_cpu(tmp_path):
    models = {role: str(save_tiny_agent(tmp_path / role, family, 32, "im", seed=i, initializer_range=0.2))
              for i, (role, family) in enumerate((("planner", "llama"), ("solver", "qwen2_moe")))}
    config = {
        "pattern": "sequential",
        "agents": {"planner": {"model": models["planner"], "prompt": "Question: {question}\n<<FEEDBACK>>\nPlan."},
                   "solver": {"model": models["solver"], "prompt": "Question: {question}\nPlan: <<PLAN>>\nSolve."}},
        "rounds": 2, "latent_steps": 3, "generation": {"max_new_tokens": 6},
    }
    system = System.from_config(config, device="cuda")
    cfg = TrainConfig(stage="outer", steps=30, lr=3e-3, warmup_steps=2, batch_size=4, eval_generate=False, progress=False)
    summary = train(system, synthetic_records(64, seed=0), cfg, tmp_path / "run", synthetic_records(8, seed=1))["stages"]["outer"]
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    losses = [e["loss"] for e in map(json.loads, lines) if "loss" in e]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    assert summary["memory_measure"] == "cuda-max-allocated"
    on_cpu = System.from_pretrained(tmp_path / "run", device="cpu")
    for name, tensor in on_cpu.links.state_dict().items():
        torch.testing.assert_close(tensor, system.links.state_dict()[name].cpu())
