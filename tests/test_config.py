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


# ------------------------------------------------------------------------------- broken system files, all of them
def _agent(key: str, value):
    def change(cfg, tmp):
        cfg["agents"]["planner"][key] = value

    return change


def _top(key: str, value):
    def change(cfg, tmp):
        cfg[key] = value

    return change


def _section(section: str, key: str, value):
    def change(cfg, tmp):
        cfg.setdefault(section, {})[key] = value

    return change


def _edges(edges, decoder="solver"):
    def change(cfg, tmp):
        del cfg["pattern"]
        cfg["edges"], cfg["decoder"] = edges, decoder

    return change


def _raw(text: str):
    return lambda cfg, tmp: text


def _raw_training(line: str):
    """The system file as YAML text with a raw ``training:`` line, as a user would type it."""

    def change(cfg, tmp):
        return yaml.safe_dump({k: v for k, v in cfg.items() if k != "base_dir"}) + f"training:\n  {line}\n"

    return change


def _links_file(make):
    def change(cfg, tmp):
        path = tmp / "links.bin"
        make(path)
        cfg["links"] = {"checkpoint": str(path)}

    return change


def _pickled_pt(path):
    import torch

    torch.save({"inner.planner.proj.weight": torch.zeros(2, 2)}, path)


def _huge_header(path):
    import struct

    path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")


def _truncated_safetensors(path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:200])


def _model_dir(change_dir):
    """The planner's model copied, then broken by ``change_dir(directory)``."""

    def change(cfg, tmp):
        import shutil

        target = tmp / "model"
        shutil.copytree(cfg["agents"]["planner"]["model"], target)
        change_dir(target)
        cfg["agents"]["planner"]["model"] = str(target)

    return change


def _pickled_weights(directory):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(directory / "model.safetensors")), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


def _release(make):
    def change(cfg, tmp):
        path = tmp / "release.pt"
        make(path)
        cfg["links"] = {"release": {"inner.planner": str(path)}}

    return change


CUDA_MISSING = "cuda:99"  # a device index no machine here has; "cuda" itself is checked below when torch has no GPU

BROKEN = [
    # (id, change to a working system file, what the error must say)
    ("yaml-list", _raw("- a\n- b\n"), "system: expected a mapping"),
    ("yaml-empty", _raw(""), "system: expected a mapping"),
    ("yaml-syntax", _raw("agents: {planner: [\n"), "is not valid YAML"),
    ("unknown-top", _top("round", 3), "Did you mean 'rounds'"),
    ("rounds-bool", _top("rounds", True), "system.rounds must be an integer"),
    ("rounds-str", _top("rounds", "3"), "system.rounds must be an integer"),
    ("rounds-zero", _top("rounds", 0), "rounds must be a positive integer"),
    ("rounds-float", _top("rounds", 2.5), "system.rounds must be an integer"),
    ("latent-negative", _top("latent_steps", -1), "latent_steps must be a positive integer"),
    ("latent-str", _top("latent_steps", "4"), "write the number without quotes"),
    ("batch-zero", _top("batch_size", 0), "batch_size must be a positive integer"),
    ("batch-null", _top("batch_size", None), "system.batch_size must be an integer"),
    ("seed-word", _top("seed", "abc"), "system.seed must be an integer"),
    ("seed-float", _top("seed", 1.5), "system.seed must be an integer"),
    ("name-number", _top("name", 5), "system.name must be a string"),
    ("name-list", _top("name", ["a"]), "system.name must be a string"),
    ("pattern-number", _top("pattern", 5), "system.pattern must be a string"),
    ("pattern-unknown", _top("pattern", "pipeline"), "unknown pattern 'pipeline'"),
    ("pattern-and-edges", _top("edges", []), "give either 'pattern' or 'edges'"),
    ("decoder-mismatch", _top("decoder", "planner"), "decodes with 'solver'"),
    ("decoder-number", _top("decoder", 5), "system.decoder must be a string"),
    ("tuned-on-number", _top("tuned_on", 5), "system.tuned_on must be a string"),
    ("agents-list", _top("agents", ["planner"]), "'agents' must map agent names"),
    ("agents-empty", _top("agents", {}), "'agents' must map agent names"),
    ("agents-missing", lambda c, t: c.pop("agents") and None, "system: missing required key 'agents'"),
    ("agent-string", lambda c, t: c["agents"].update(planner="llama"), "agents.planner: expected a mapping"),
    ("agent-no-model", lambda c, t: c["agents"]["planner"].pop("model") and None, "agents.planner: missing required key 'model'"),
    ("agent-no-prompt", lambda c, t: c["agents"]["planner"].pop("prompt") and None, "agents.planner: missing required key 'prompt'"),
    ("agent-roles", lambda c, t: c["agents"].update(writer=c["agents"].pop("solver")) and None, "needs exactly the agents"),
    ("model-number", _agent("model", 5), "agents.planner.model must be a string"),
    ("prompt-number", _agent("prompt", 5), "agents.planner.prompt must be a string"),
    ("prompt-no-question", _agent("prompt", "Plan. <<FEEDBACK>>"), "must name an input field"),
    ("system-prompt-list", _agent("system_prompt", [1]), "agents.planner.system_prompt must be a string"),
    ("dtype-unknown", _agent("dtype", "float64"), "dtype 'float64' is not supported"),
    ("dtype-number", _agent("dtype", 32), "agents.planner.dtype must be a string"),
    ("device-banana", _agent("device", "banana"), "agents.planner.device 'banana' is not a device torch knows"),
    ("device-index", _agent("device", CUDA_MISSING), "agents.planner.device is 'cuda:99'"),
    ("device-number", _agent("device", 0), "agents.planner.device must be a string"),
    ("device-tpu", _agent("device", "xla"), "agents.planner.device 'xla' is not supported"),
    ("remote-code-string", _agent("trust_remote_code", "false"), "trust_remote_code must be true or false (unquoted)"),
    ("remote-code-int", _agent("trust_remote_code", 1), "trust_remote_code must be true or false"),
    ("revision-number", _agent("revision", 3), "agents.planner.revision must be a string or null"),
    ("template-number", _agent("chat_template", 5), "agents.planner.chat_template must be a string or null"),
    ("target-number", _agent("target", 7), "agents.planner.target must be a string or null"),
    ("agent-unknown-key", _agent("temprature", 0.5), "agents.planner: unknown key 'temprature'"),
    ("edges-number", _edges(5), "'edges' must be a list"),
    ("edge-string", _edges(["planner->critic"]), "edges[0]: expected a mapping"),
    ("edge-no-slot", _edges([{"from": "planner", "to": "critic"}]), "edges[0]: missing required key 'slot'"),
    ("edge-from-number", _edges([{"from": 5, "to": "critic", "slot": "PLAN"}]), "edges[0].from must be a string"),
    ("edge-feedback-str", _edges([{"from": "planner", "to": "critic", "slot": "PLAN", "feedback": "yes"}]), "edges[0].feedback must be true or false"),
    ("edge-unknown-key", _edges([{"from": "planner", "to": "critic", "slot": "PLAN", "weight": 1}]), "edges[0]: unknown key 'weight'"),
    ("edge-unknown-agent", _edges([{"from": "planner", "to": "judge", "slot": "PLAN"}]), "judge"),
    ("no-pattern-no-edges", lambda c, t: c.pop("pattern") and None, "give a 'pattern'"),
    ("generation-number", _top("generation", 5), "generation: expected a mapping"),
    ("max-new-tokens-str", _section("generation", "max_new_tokens", "64"), "generation.max_new_tokens must be an integer"),
    ("max-new-tokens-zero", _section("generation", "max_new_tokens", 0), "max_new_tokens and handoff_max_new_tokens must be >= 1"),
    ("handoff-bool", _section("generation", "handoff_max_new_tokens", True), "a boolean is not a number here"),
    ("temperature-nan", _section("generation", "temperature", float("nan")), "NaN and infinity are not allowed"),
    ("temperature-inf", _section("generation", "temperature", float("inf")), "generation.temperature must be a finite number"),
    ("temperature-negative", _section("generation", "temperature", -1.0), "temperature >= 0"),
    ("top-p-zero", _section("generation", "top_p", 0.0), "0 < top_p <= 1"),
    ("top-p-str", _section("generation", "top_p", "1"), "generation.top_p must be a finite number"),
    ("latent-stop-str", _section("generation", "latent_stop", "yes"), "generation.latent_stop must be true or false"),
    ("generation-unknown", _section("generation", "max_tokens", 5), "Did you mean 'max_new_tokens'"),
    ("links-string", _top("links", "ridge"), "links: expected a mapping"),
    ("links-kind", _section("links", "kind", "banana"), "links.kind 'banana' is unknown"),
    ("links-inner", _section("links", "inner", "x"), "links.inner 'x' is unknown"),
    ("links-init", _section("links", "init", "zeros"), "links.init 'zeros' is unknown"),
    ("links-checkpoint-number", _section("links", "checkpoint", 5), "links.checkpoint must be a string or null"),
    ("links-checkpoint-missing", _section("links", "checkpoint", "/no/such/links.safetensors"), "does not exist"),
    ("links-checkpoint-pickle", _links_file(_pickled_pt), "is a pickled PyTorch file, which is never loaded"),
    ("links-checkpoint-huge-header", _links_file(_huge_header), "its header claims 1152921504606846976 bytes"),
    ("links-checkpoint-truncated", _links_file(_truncated_safetensors), "is truncated"),
    ("links-checkpoint-not-json", _links_file(lambda p: p.write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00\xff\xfe{}")), "header is not JSON"),
    ("links-checkpoint-tiny", _links_file(lambda p: p.write_bytes(b"abc")), "too short"),
    ("links-release-string", _section("links", "release", "x.pt"), "links.release must be"),
    ("links-release-garbage", _release(lambda p: p.write_bytes(b"not a torch file")), "cannot be read as plain tensors"),
    ("links-release-missing", _release(lambda p: None), "does not exist"),
    ("tools-number", _top("tools", 5), "system.tools must be"),
    ("tools-typo", _top("tools", {"pyhton": {}}), "did you mean 'python'?"),
    ("tools-option-typo", _top("tools", {"python": {"timeout": 3}}), "unknown option(s) ['timeout'] for tools.python"),
    ("tools-timeout-zero", _top("tools", {"python": {"timeout_s": 0}}), "tools.python.timeout_s must be > 0"),
    ("tools-max-calls-str", _top("tools", {"python": True, "max_calls": "5"}), "tools.max_calls must be > 0"),
    ("tools-search-nothing", _top("tools", {"search": {}}), "tools.search has no backend"),
    ("tools-none-enabled", _top("tools", {"python": False}), "enables no tool"),
    ("training-number", _top("training", 5), "system.training must be"),
    ("training-typo", _section("training", "stpes", 3), "training: unknown key 'stpes'. Did you mean 'steps'?"),
    ("training-steps-str", _section("training", "steps", "3"), "training.steps must be an integer"),
    ("training-steps-zero", _section("training", "steps", 0), "training: steps must be >= 1"),
    ("training-lr-yaml-string", _raw_training("lr: 1e-4"), "like 1.0e-4"),
    ("training-stage", _section("training", "stage", "middle"), "stage 'middle' is unknown"),
    ("training-bool-str", _section("training", "gradient_checkpointing", "no"), "training.gradient_checkpointing must be true or false"),
    ("training-lr-nan", _section("training", "lr", float("nan")), "training.lr must be a finite number"),
    ("training-lora-targets", _section("training", "lora_target_modules", "q_proj"), "training.lora_target_modules must be"),
    ("model-pickled-bin", _model_dir(_pickled_weights), "holds only pickled weights (pytorch_model.bin)"),
    ("model-dir-empty", _model_dir(lambda d: [p.unlink() for p in d.iterdir()]), "has no config.json"),
    ("model-config-broken", _model_dir(lambda d: (d / "config.json").write_text("{not json")), "could not load model"),
    ("model-weights-truncated", _model_dir(lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")), "could not load model"),
    ("model-missing", _agent("model", "/no/such/model/dir"), "does not exist"),
    ("chat-template-raises", _agent("chat_template", "{{ raise_exception('templates say no') }}"), "agent 'planner': its chat template failed"),
    ("chat-template-syntax", _agent("chat_template", "{% if %}"), "agent 'planner': its chat template failed"),
]



def _cli_error(path, capsys) -> tuple[object, str]:
    """``recursivemas run --system PATH --question x`` through the console entry point: (exit code, stderr)."""
    import sys
    from unittest import mock

    from recursivemas import cli

    with mock.patch.object(sys, "argv", ["recursivemas", "run", "--system", str(path), "--question", "x"]):
        try:
            cli.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return code, capsys.readouterr().err


def test_every_broken_system_file_is_a_clear_error(sequential_config, tmp_path, capsys):
    """Figures for docs/training.md: every case ends in `error: <what and how to fix>`, never a traceback."""
    import torch

    cases = list(BROKEN)
    if not torch.cuda.is_available():
        cases.append(("device-cuda-on-cpu-build", _agent("device", "cuda"), "sees no CUDA GPU; set device: cpu"))
    failures = []
    for name, change, expected in cases:
        cfg = copy.deepcopy(sequential_config)
        cfg.pop("base_dir")
        where = tmp_path / name
        where.mkdir()
        text = change(cfg, where)
        path = where / "system.yaml"
        path.write_text(text if isinstance(text, str) else yaml.safe_dump(cfg))
        try:
            code, err = _cli_error(path, capsys)
        except Exception as exc:  # noqa: BLE001 - exactly what must never happen
            failures.append(f"{name}: raw {type(exc).__name__}: {exc}")
            continue
        if code != 2 or not err.startswith("error: ") or expected not in err or "Traceback" in err:
            failures.append(f"{name}: exit {code}, stderr {err.strip()[:300]!r} (wanted {expected!r})")
    code, err = _cli_error(tmp_path / "missing.yaml", capsys)
    assert code == 2 and "does not exist" in err
    assert not failures, "\n".join(failures)
    print(f"\nbroken system files: {len(cases) + 1} tried, {len(cases) + 1} clear errors")  # quoted in docs/training.md


def test_training_section_is_checked_before_any_model_loads(sequential_config, monkeypatch):
    import recursivemas.agent

    monkeypatch.setattr(recursivemas.agent, "load_model_and_tokenizer", lambda *a: pytest.fail("a model loaded first"))
    with pytest.raises(ConfigError, match="training: unknown key 'stpes'. Did you mean 'steps'"):
        System.from_config(edit(sequential_config, training={"stpes": 3}))
    assert load_config(edit(sequential_config, training={"steps": 3, "lr": 1e-3})).training == {"steps": 3, "lr": 1e-3}


def test_config_and_patterns_import_one_way():
    import ast
    from pathlib import Path

    import recursivemas.patterns

    tree = ast.parse(Path(recursivemas.patterns.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "recursivemas.config" not in imported
    validation = ast.parse(Path(recursivemas.patterns.__file__).with_name("validation.py").read_text())
    assert not [n for n in ast.walk(validation) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("recursivemas")]
