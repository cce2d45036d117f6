"""Bad system files fail at load time with a message that names the problem and the fix."""

import copy

import pytest
import yaml

from recursivemas import ConfigError, OuterLink, System
from recursivemas.config import load_config
from recursivemas.linkset import LinkSet


def edit(config, **changes):
    cfg = copy.deepcopy(config)
    cfg.update(changes)
    return cfg


def test_unknown_top_level_key_suggests_the_right_one(sequential_config):
    with pytest.raises(ConfigError, match="unknown key 'round'.*Did you mean 'rounds'"):
        load_config(edit(sequential_config, round=3))


def test_unknown_agent_key(sequential_config):
    cfg = copy.deepcopy(sequential_config)
    cfg["agents"]["planner"]["temprature"] = 0.5
    with pytest.raises(ConfigError, match=r"agents.planner: unknown key 'temprature'"):
        load_config(cfg)


def test_unknown_model_path(sequential_config):
    cfg = copy.deepcopy(sequential_config)
    cfg["agents"]["critic"]["model"] = "/nonexistent/models/critic"
    with pytest.raises(ConfigError, match="model path '/nonexistent/models/critic' does not exist"):
        System.from_config(cfg)


def test_prompt_missing_the_slot_an_edge_needs(sequential_config):
    cfg = copy.deepcopy(sequential_config)
    cfg["agents"]["critic"]["prompt"] = "Question: {question}\nImprove the plan."
    with pytest.raises(ConfigError, match=r"planner->critic fills slot <<PLAN>>.*add <<PLAN>> to agents.critic.prompt"):
        System.from_config(cfg)


def test_cycle_with_no_decoding_agent(sequential_config):
    cfg = copy.deepcopy(sequential_config)
    del cfg["pattern"]
    cfg["edges"] = [
        {"from": "planner", "to": "critic", "slot": "PLAN"},
        {"from": "critic", "to": "solver", "slot": "REFINED_PLAN"},
        {"from": "solver", "to": "planner", "slot": "FEEDBACK"},
    ]
    with pytest.raises(ConfigError, match="no decoding agent; set 'decoder'"):
        load_config(cfg)


def test_forward_cycle_must_be_closed_by_a_feedback_edge(sequential_config):
    cfg = copy.deepcopy(sequential_config)
    del cfg["pattern"]
    cfg["decoder"] = "solver"
    cfg["edges"] = [
        {"from": "planner", "to": "critic", "slot": "PLAN"},
        {"from": "critic", "to": "planner", "slot": "FEEDBACK"},  # a loop within one round
        {"from": "critic", "to": "solver", "slot": "REFINED_PLAN"},
    ]
    with pytest.raises(ConfigError, match="cycle among planner, critic.*feedback: true"):
        System.from_config(cfg)
    cfg["edges"][1]["feedback"] = True  # closing the loop across rounds is fine
    assert System.from_config(cfg).graph.order() == ["planner", "critic", "solver"]


def test_two_edges_into_one_slot(sequential_config):
    cfg = copy.deepcopy(sequential_config)
    del cfg["pattern"]
    cfg["decoder"] = "solver"
    cfg["edges"] = [
        {"from": "planner", "to": "critic", "slot": "PLAN"},
        {"from": "planner", "to": "solver", "slot": "REFINED_PLAN"},
        {"from": "critic", "to": "solver", "slot": "REFINED_PLAN"},
        {"from": "solver", "to": "planner", "slot": "FEEDBACK"},
    ]
    with pytest.raises(ConfigError, match="two edges fill slot <<REFINED_PLAN>> of solver"):
        System.from_config(cfg)


def test_outer_link_width_mismatch(sequential, tmp_path):
    bad = LinkSet({"planner": 48, "critic": 64, "solver": 64}, sequential.graph.edges)
    bad.outer["planner->critic"] = OuterLink(48, 32)  # the critic is really 64 wide
    bad.save(tmp_path / "links.safetensors")
    with pytest.raises(ConfigError, match=r"outer.planner->critic.*expected.*must map width 48 -> 64"):
        sequential.links.load(tmp_path / "links.safetensors")


def test_wrong_pattern_roles_and_unknown_pattern(sequential_config):
    cfg = copy.deepcopy(sequential_config)
    cfg["agents"]["writer"] = cfg["agents"].pop("solver")
    with pytest.raises(ConfigError, match="needs exactly the agents planner, critic, solver"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="unknown pattern 'pipeline'"):
        load_config(edit(sequential_config, pattern="pipeline"))


def test_yaml_file_with_relative_model_paths(tmp_path, tiny_agents):
    import shutil

    shutil.copytree(tiny_agents["qwen2"], tmp_path / "models" / "small")
    shutil.copytree(tiny_agents["qwen2_moe"], tmp_path / "models" / "big")
    spec = {
        "pattern": "distillation",
        "agents": {
            "expert": {"model": "models/big", "prompt": "{question} <<FEEDBACK>>"},
            "learner": {"model": "models/small", "prompt": "{question} <<EXPERT>>"},
        },
        "latent_steps": 2,
        "generation": {"max_new_tokens": 3},
    }
    (tmp_path / "system.yaml").write_text(yaml.safe_dump(spec))
    system = System.from_config(tmp_path / "system.yaml")
    assert system.agents["expert"].hidden_size == 64
    assert system.run(["hi"], rounds=1)[0].usage.generated_tokens <= 3


@pytest.fixture
def sequential(sequential_config):
    return System.from_config(sequential_config)
