"""Deliberation: the tool-caller's final answer runs through the tool loop with the real sandbox.

A tiny GPT-2 is overfitted (a few seconds) to answer with a `<python>` call, so the engine's stop at the
closing tag, the sandboxed run and the `<result>` fed back into the KV cache are all exercised for real.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recursivemas import ConfigError, System

CALL = "<python>print(6*7)</python>"
PROMPTS = {
    "reflector": "Problem: {question}\n<<FEEDBACK>>\nReflect.",
    "tool_caller": "Problem: {question}\nNotes: <<REFLECTION>>\nUse python.",
}


def overfit(path: str, prompt_text: str, target: str, steps: int = 150) -> None:
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(prompt_text + target, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    labels = ids.clone()
    labels[:, :n_prompt] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def tool_system_config(tiny_agents, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("deliberation")
    caller = root / "caller"
    shutil.copytree(tiny_agents["gpt2"], caller)
    config = {
        "pattern": "deliberation",
        "agents": {
            "reflector": {"model": tiny_agents["llama"], "prompt": PROMPTS["reflector"]},
            "tool_caller": {"model": str(caller), "prompt": PROMPTS["tool_caller"]},
        },
        "rounds": 2,
        "latent_steps": 3,
        "generation": {"max_new_tokens": 40, "handoff_max_new_tokens": 4},
        "tools": {"python": {"timeout_s": 10}, "max_calls": 2},
    }
    system = System.from_config(config)
    agent = system.agents["tool_caller"]
    rendered = "".join(s for s in agent.segments("What is 6 times 7?") if isinstance(s, str))  # single mode: empty slot
    overfit(str(caller), rendered, CALL + " The answer is 42.", steps=80)
    return config


def test_single_mode_answer_calls_python_in_the_sandbox(tool_system_config):
    system = System.from_config(tool_system_config)
    res = system.run(["What is 6 times 7?"], mode="single")[0]
    assert res.text.startswith(CALL)
    assert "<result>\n42\n</result>" in res.text
    assert res.tool_calls and res.tool_calls[0]["tool"] == "python" and res.tool_calls[0]["result"].strip() == "42"
    answer = res.usage.steps[-1]
    # the result's tokens were fed into the cache as input positions, not counted as generated
    assert answer.input_positions > answer.generated_tokens


def test_tools_run_only_in_the_final_answer(tool_system_config, monkeypatch):
    system = System.from_config(tool_system_config)
    res = system.run(["What is 6 times 7?"], mode="latent")[0]
    talkers = [(s.agent, s.round) for s in res.usage.steps if s.generated_tokens]
    assert talkers == [("tool_caller", 2)]
    # text mode: the tool-caller also decodes a hand-off in round 1; the tool loop serves only its final answer
    rounds = []
    real = System._decode_with_tools
    monkeypatch.setattr(System, "_decode_with_tools", lambda self, agent, tail, round_, *a: rounds.append(round_) or real(self, agent, tail, round_, *a))
    text = system.run(["What is 6 times 7?", "What is 2 times 3?"], mode="text")
    assert rounds == [2]
    assert [s.action for s in text[0].usage.steps if s.agent == "tool_caller"] == ["text", "answer"]
    assert all("<result>" not in h["text"] for r in text for h in r.handoffs)


def test_missing_search_backend_fails_at_load(tool_system_config):
    config = dict(tool_system_config, tools={"search": {"corpus": "no/such/corpus"}})
    with pytest.raises(ConfigError, match="tools:"):
        System.from_config(config)
