"""Sequential and distillation systems end to end in every mode, on tiny heterogeneous agents."""

import pytest
import torch

from recursivemas import System
from recursivemas.prefix import prefix_length


@pytest.fixture
def sequential(sequential_config):
    return System.from_config(sequential_config)


def test_agents_are_heterogeneous_and_loaded_once(sequential, sequential_config, tiny_agents):
    sizes = {n: a.hidden_size for n, a in sequential.agents.items()}
    assert sizes == {"planner": 48, "critic": 64, "solver": 64}
    assert {type(a.model).__name__ for a in sequential.agents.values()} == {"LlamaForCausalLM", "Qwen2MoeForCausalLM", "GPT2LMHeadModel"}
    # two roles on the same model directory share one loaded model
    cfg = dict(sequential_config)
    cfg["agents"] = {k: dict(v) for k, v in cfg["agents"].items()}
    cfg["agents"]["critic"]["model"] = tiny_agents["llama"]
    shared = System.from_config(cfg)
    assert shared.agents["planner"].model is shared.agents["critic"].model


@pytest.mark.parametrize("rounds", [1, 3])
def test_latent_mode_generates_only_in_the_decoders_last_round(sequential, rounds):
    results = sequential.run(["What is 2 + 3?", "Tom has 4 apples and eats one. How many are left?"], mode="latent", rounds=rounds, latent_steps=4)
    for res in results:
        talkers = [(s.agent, s.round) for s in res.usage.steps if s.generated_tokens > 0]
        assert talkers == [("solver", rounds)]
        answers = [s for s in res.usage.steps if s.action == "answer"]
        assert len(answers) == 1 and answers[0].generated_tokens <= 6
        # every non-final step is a latent rollout of M steps, M forward calls (+1 in round 1: the prompt prefix)
        for s in res.usage.steps:
            if s.action == "latent":
                assert s.latent_steps == 4 and s.forward_calls == 4 + (s.round == 1)
        # rounds: planner, critic, solver per non-final round; planner, critic then the answer in the last
        assert len(res.usage.steps) == 3 * rounds
        assert res.usage.latent_steps == 4 * (3 * rounds - 1)


def test_feedback_latents_reach_the_planner_from_round_two(sequential):
    steps = sequential.run(["2 + 2?"], mode="latent", rounds=2, latent_steps=5)[0].usage.steps
    planner = [s for s in steps if s.agent == "planner"]
    # round 2's prompt holds 5 more positions: the solver's feedback latents; its prefix is not encoded again
    reused = prefix_length(sequential.agents["planner"], "2 + 2?")
    assert reused > 0 and planner[1].input_positions - planner[0].input_positions == 5 - reused


def test_text_mode_hands_off_text_and_counts_it(sequential):
    res = sequential.run(["What is 7 - 2?"], mode="text", rounds=2)[0]
    assert res.usage.latent_steps == 0
    senders = [(h["round"], h["from"]) for h in res.handoffs]
    assert senders == [(1, "planner"), (1, "critic"), (1, "solver"), (2, "planner"), (2, "critic")]
    assert res.usage.generated_tokens == sum(s.generated_tokens for s in res.usage.steps) > 6
    # the critic's prompt grows by the planner's message in text mode
    critic = [s for s in res.usage.steps if s.agent == "critic"][0]
    single = [s for s in sequential.run(["What is 7 - 2?"], mode="single")[0].usage.steps]
    assert critic.input_positions > 0 and len(single) == 1 and single[0].agent == "solver"


def test_single_mode_runs_only_the_decoder(sequential):
    res = sequential.run("Hello?", mode="single", rounds=3)[0]
    assert [(s.agent, s.round, s.action) for s in res.usage.steps] == [("solver", 1, "answer")]
    assert res.rounds == 1


def test_distillation_system_all_modes(distillation_config):
    system = System.from_config(distillation_config)
    assert system.graph.decoder == "learner"
    for mode in ("latent", "text", "single"):
        res = system.run(["What is 3 * 3?", "Is 7 prime?"], mode=mode)
        assert len(res) == 2 and all(isinstance(r.text, str) for r in res)
    latent = system.run(["What is 3 * 3?"], mode="latent", rounds=3)[0]
    assert [(s.agent, s.round) for s in latent.usage.steps if s.generated_tokens] == [("learner", 3)]
    assert [(s.agent, s.round) for s in latent.usage.steps] == [
        ("expert", 1), ("learner", 1), ("expert", 2), ("learner", 2), ("expert", 3), ("learner", 3)
    ]


def test_same_seed_same_output_with_sampling(sequential_config):
    cfg = dict(sequential_config, generation={"max_new_tokens": 8, "handoff_max_new_tokens": 4, "temperature": 1.0, "top_p": 0.9})
    a = System.from_config(cfg).run(["Q1?", "Q2?"], mode="latent", seed=7)
    b = System.from_config(cfg).run(["Q1?", "Q2?"], mode="latent", seed=7)
    assert [r.text for r in a] == [r.text for r in b]
    c = System.from_config(cfg).run(["Q1?", "Q2?"], mode="latent", seed=8)
    assert [r.text for r in a] != [r.text for r in c]


def test_batching_does_not_change_greedy_answers(sequential):
    questions = ["What is 2 + 3?", "A longer question about how many apples Tom has left?", "1?"]
    batched = sequential.run(questions, mode="latent", batch_size=3)
    alone = sequential.run(questions, mode="latent", batch_size=1)
    assert [r.text for r in batched] == [r.text for r in alone]
    text_batched = sequential.run(questions, mode="text", batch_size=3)
    text_alone = sequential.run(questions, mode="text", batch_size=1)
    assert [r.text for r in text_batched] == [r.text for r in text_alone]


def test_save_and_load_pretrained_round_trip(sequential, tmp_path):
    with torch.no_grad():
        for p in sequential.links.parameters():
            p.add_(0.01)  # make links differ from a fresh random init
    sequential.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "links.safetensors").is_file()
    loaded = System.from_pretrained(tmp_path / "saved")
    for (k, a), (_, b) in zip(sequential.links.state_dict().items(), loaded.links.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    q = ["What is 9 - 4?"]
    assert sequential.run(q)[0].text == loaded.run(q)[0].text


def test_usage_serialises(sequential):
    data = sequential.run(["2?"], mode="latent")[0].to_dict()
    assert set(data["usage"]["totals"]) == {"generated_tokens", "latent_steps", "forward_calls", "input_positions", "cached_positions", "wall_time_s"}
    assert data["usage"]["steps"][0]["agent"] == "planner"


def test_latentmas_training_free_inner_links(sequential_config, tmp_path):
    from recursivemas import LatentMASLink

    cfg = dict(sequential_config, links={"inner": "latentmas"})
    system = System.from_config(cfg)
    assert all(isinstance(link, LatentMASLink) for link in system.links.inner.values())
    res = system.run(["2 + 2?"], mode="latent", rounds=2)[0]
    assert [(s.agent, s.round) for s in res.usage.steps if s.generated_tokens] == [("solver", 2)]
    system.save_pretrained(tmp_path / "saved")
    assert System.from_pretrained(tmp_path / "saved").run(["2 + 2?"], rounds=2)[0].text == res.text


def test_tokenizer_without_chat_template_uses_plain_fallback(tiny_agents, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(tiny_agents["qwen2"], tmp_path / "plain")
    tok = AutoTokenizer.from_pretrained(tmp_path / "plain")
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "chat_template.jinja").unlink(missing_ok=True)
    cfg = {
        "pattern": "distillation",
        "agents": {
            "expert": {"model": tiny_agents["llama"], "prompt": "{question} <<FEEDBACK>>", "system_prompt": "Be an expert."},
            "learner": {"model": str(tmp_path / "plain"), "prompt": "{question} <<EXPERT>>", "system_prompt": "Learn."},
        },
        "latent_steps": 2,
        "generation": {"max_new_tokens": 3},
    }
    system = System.from_config(cfg)
    learner = system.agents["learner"]
    assert learner.tokenizer.chat_template is None
    assert learner.render("Q?") == "<s>Learn.\n\nQ?"  # no newline after the prompt: a base model continues it
    assert "<|im_start|>" in system.agents["expert"].render("Q?")
    assert system.run(["Q?"])[0].usage.generated_tokens <= 3


def test_bfloat16_agent_runs_with_float32_links(sequential_config):
    cfg = dict(sequential_config)
    cfg["agents"] = {k: dict(v) for k, v in cfg["agents"].items()}
    cfg["agents"]["critic"]["dtype"] = "bfloat16"
    system = System.from_config(cfg)
    assert system.agents["critic"].model.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in system.links.parameters())
    res = system.run(["2 + 2?"], mode="latent")[0]
    assert [(s.agent, s.action) for s in res.usage.steps][-1] == ("solver", "answer")
