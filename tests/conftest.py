"""Shared fixtures: tiny real Hugging Face agents of several families, saved once per test session."""

from __future__ import annotations

import pytest

from recursivemas.tiny import save_tiny_agent

# name -> (family, hidden size, tokenizer style): four families, three widths, two tokenizers.
TINY_AGENTS = {
    "llama": ("llama", 48, "im"),
    "qwen2": ("qwen2", 32, "header"),
    "qwen2_moe": ("qwen2_moe", 64, "im"),
    "mixtral": ("mixtral", 32, "im"),
    "gpt2": ("gpt2", 64, "header"),
    "gemma": ("gemma", 48, "header"),
}


@pytest.fixture(scope="session")
def tiny_agents(tmp_path_factory) -> dict[str, str]:
    """Paths of saved tiny agents, by name."""
    root = tmp_path_factory.mktemp("agents")
    return {
        name: str(save_tiny_agent(root / name, family, hidden, style, seed=i))
        for i, (name, (family, hidden, style)) in enumerate(TINY_AGENTS.items())
    }


SEQUENTIAL_PROMPTS = {
    "planner": "Question: {question}\n<<FEEDBACK>>\nWrite a plan.",
    "critic": "Question: {question}\nPlan: <<PLAN>>\nImprove the plan.",
    "solver": "Question: {question}\nRefined plan: <<REFINED_PLAN>>\nSolve it.",
}


def make_sequential_config(tiny_agents: dict[str, str], base_dir) -> dict:
    """A heterogeneous sequential system: Llama planner, Qwen2-MoE critic, GPT-2 solver."""
    models = {"planner": "llama", "critic": "qwen2_moe", "solver": "gpt2"}
    return {
        "name": "tiny-sequential",
        "pattern": "sequential",
        "agents": {
            role: {"model": tiny_agents[models[role]], "prompt": prompt, "system_prompt": f"You are the {role}."}
            for role, prompt in SEQUENTIAL_PROMPTS.items()
        },
        "rounds": 2,
        "latent_steps": 4,
        "generation": {"max_new_tokens": 6, "handoff_max_new_tokens": 5},
        "base_dir": str(base_dir),
    }


@pytest.fixture
def sequential_config(tiny_agents, tmp_path) -> dict:
    return make_sequential_config(tiny_agents, tmp_path)


@pytest.fixture
def distillation_config(tiny_agents, tmp_path) -> dict:
    """Expert (Qwen2-MoE, wider) -> learner (Qwen2, narrower) -> expert."""
    return {
        "name": "tiny-distillation",
        "pattern": "distillation",
        "agents": {
            "expert": {"model": tiny_agents["qwen2_moe"], "prompt": "Q: {question}\n<<FEEDBACK>>\nExplain."},
            "learner": {"model": tiny_agents["qwen2"], "prompt": "Q: {question}\nExpert notes: <<EXPERT>>\nAnswer."},
        },
        "rounds": 3,
        "latent_steps": 3,
        "generation": {"max_new_tokens": 5, "handoff_max_new_tokens": 4},
        "base_dir": str(tmp_path),
    }


def pytest_configure(config):
    from transformers.utils import logging

    logging.disable_progress_bar()  # keep test logs readable


def story_ask_config(tiny_agents: dict[str, str], expert_prompt: str = "Story: {story}\n<<FEEDBACK>>\nNotes:") -> dict:
    """A distillation system whose inputs are fields: the expert reads {story}, the learner {ask}."""
    return {
        "pattern": "distillation",
        "agents": {
            "expert": {"model": tiny_agents["llama"], "prompt": expert_prompt},
            "learner": {"model": tiny_agents["gpt2"], "prompt": "Asked: {ask}\n<<EXPERT>>\nAnswer:"},
        },
        "rounds": 2, "latent_steps": 2, "generation": {"max_new_tokens": 3, "handoff_max_new_tokens": 3},
    }
