"""Mixture, deliberation and user-defined graphs run on the one engine; `recursivemas graph` shows them."""

import pytest
import torch
from typer.testing import CliRunner

from recursivemas import System
from recursivemas.cli import app
from recursivemas.links import InnerLink, OuterLink
from recursivemas.prefix import PrefixStore


def mixture_config(tiny_agents, shared: bool) -> dict:
    experts = {"math": "llama", "code": "llama" if shared else "qwen2", "science": "llama" if shared else "gemma"}
    agents = {
        name: {"model": tiny_agents[model], "prompt": f"You know {name}. {{question}}\n<<FEEDBACK>>\nNotes:"}
        for name, model in experts.items()
    }
    agents["summarizer"] = {"model": tiny_agents["gpt2"], "prompt": "{question}\nMath <<MATH>> Code <<CODE>> Science <<SCIENCE>>\nAnswer:"}
    return {"pattern": "mixture", "agents": agents, "rounds": 3, "latent_steps": 3, "generation": {"max_new_tokens": 4, "handoff_max_new_tokens": 3}}


@pytest.mark.parametrize("mode", ["latent", "text", "single"])
def test_mixture_only_the_summarizer_speaks_and_only_at_the_end(tiny_agents, mode):
    system = System.from_config(mixture_config(tiny_agents, shared=False))
    res = system.run(["What is 2 + 2?", "Why is the sky blue?"], mode=mode)
    for r in res:
        answers = [(s.agent, s.round) for s in r.usage.steps if s.action == "answer"]
        assert answers == [("summarizer", r.rounds)]
        if mode == "latent":
            assert [(s.agent, s.round) for s in r.usage.steps if s.generated_tokens] == [("summarizer", 3)]
            # the summarizer decodes once: in rounds 1-2 it only rolls out latents for the experts
            assert [s.action for s in r.usage.steps if s.agent == "summarizer"] == ["latent", "latent", "answer"]
            assert {s.agent for s in r.usage.steps if s.round == 1} == {"math", "code", "science", "summarizer"}


def test_mixture_experts_on_one_model_are_batched_without_changing_results(tiny_agents):
    system = System.from_config(mixture_config(tiny_agents, shared=True))
    assert system.agents["math"].model is system.agents["code"].model
    calls = {"n": 0}
    system.agents["math"].model.model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    batched = system.run(["What is 2 + 2?"], mode="latent", rounds=1, reuse_prefix=False)[0]  # no prefix pass to count
    assert calls["n"] == 3  # three experts, one batched rollout of 3 latent steps
    # the same thoughts as rolling each expert out alone
    expert_inputs = {}
    for name in ("math", "code", "science"):
        from recursivemas.slots import build_inputs

        embeds, mask = build_inputs(system.agents[name], ["What is 2 + 2?"], {"FEEDBACK": [None]})
        with torch.no_grad():
            from recursivemas import latent_rollout

            expert_inputs[name] = latent_rollout(system.agents[name].model, system.links.inner[name], embeds, mask, steps=3)
    prefixes = PrefixStore(["What is 2 + 2?"])
    grouped = system._rollout(["math", "code", "science"], prefixes, {n: {"FEEDBACK": [None]} for n in expert_inputs}, 1, 3,
                              [batched.usage], system.config.generation)
    for name, thoughts in expert_inputs.items():
        torch.testing.assert_close(grouped[name][0], thoughts, atol=1e-5, rtol=1e-4)
        assert grouped[name][1] == [3]  # no latent stop: every message is m thoughts long


@pytest.mark.parametrize("mode", ["latent", "text", "single"])
def test_deliberation_without_tools(tiny_agents, mode):
    config = {
        "pattern": "deliberation",
        "agents": {
            "reflector": {"model": tiny_agents["qwen2_moe"], "prompt": "{question}\n<<FEEDBACK>>\nReflect:"},
            "tool_caller": {"model": tiny_agents["mixtral"], "prompt": "{question}\n<<REFLECTION>>\nAnswer:"},
        },
        "rounds": 2,
        "latent_steps": 2,
        "generation": {"max_new_tokens": 4, "handoff_max_new_tokens": 3},
    }
    res = System.from_config(config).run(["1 + 1?"], mode=mode)[0]
    assert [s.agent for s in res.usage.steps if s.action == "answer"] == ["tool_caller"]


def custom_graph(tiny_agents) -> dict:
    """A diamond: a reader fans out to two analysts whose notes meet at a judge; the judge feeds the reader back."""
    return {
        "name": "diamond",
        "agents": {
            "reader": {"model": tiny_agents["llama"], "prompt": "{question} <<VERDICT>>"},
            "pro": {"model": tiny_agents["qwen2"], "prompt": "{question} <<NOTES>> Argue for."},
            "con": {"model": tiny_agents["gemma"], "prompt": "{question} <<NOTES>> Argue against."},
            "judge": {"model": tiny_agents["gpt2"], "prompt": "{question} For: <<PRO>> Against: <<CON>> Verdict:"},
        },
        "edges": [
            {"from": "reader", "to": "pro", "slot": "NOTES"},
            {"from": "reader", "to": "con", "slot": "NOTES"},
            {"from": "pro", "to": "judge", "slot": "PRO"},
            {"from": "con", "to": "judge", "slot": "CON"},
            {"from": "judge", "to": "reader", "slot": "VERDICT"},
        ],
        "decoder": "judge",
        "rounds": 2,
        "latent_steps": 2,
        "generation": {"max_new_tokens": 3, "handoff_max_new_tokens": 2},
    }


def test_user_defined_graph_runs_in_stages(tiny_agents):
    system = System.from_config(custom_graph(tiny_agents))
    assert system.graph.stages() == [["reader"], ["pro", "con"], ["judge"]]
    assert system.graph.feedback_edges[0].src == "judge"  # edges out of the decoder close the loop
    res = system.run(["Is 9 odd?"], mode="latent")[0]
    assert [(s.agent, s.round) for s in res.usage.steps] == [
        ("reader", 1), ("pro", 1), ("con", 1), ("judge", 1), ("reader", 2), ("pro", 2), ("con", 2), ("judge", 2)
    ]
    assert len(system.links.outer) == 5 and len(system.links.inner) == 4
    assert system.run(["Is 9 odd?"], mode="text")[0].usage.generated_tokens > 0


def test_graph_command_prints_links_and_parameter_counts(tiny_agents, tmp_path):
    import yaml

    path = tmp_path / "diamond.yaml"
    path.write_text(yaml.safe_dump(custom_graph(tiny_agents)))
    out = CliRunner().invoke(app, ["graph", "--system", str(path)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "outer.pro->judge" in out.output and "32 -> 64" in out.output
    expected = InnerLink.num_params_formula(48) + InnerLink.num_params_formula(32) + InnerLink.num_params_formula(48) + InnerLink.num_params_formula(64)
    expected += OuterLink.num_params_formula(48, 32) + OuterLink.num_params_formula(48, 48) + OuterLink.num_params_formula(32, 64)
    expected += OuterLink.num_params_formula(48, 64) + OuterLink.num_params_formula(64, 48)
    assert f"{expected:,}" in out.output


def test_unreachable_agent_is_rejected(tiny_agents):
    from recursivemas import ConfigError

    config = custom_graph(tiny_agents)
    config["agents"]["loner"] = {"model": tiny_agents["llama"], "prompt": "{question}"}
    with pytest.raises(ConfigError, match="'loner' is not connected to the decoding agent 'judge'"):
        System.from_config(config)
