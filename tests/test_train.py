"""Training: data checks, the inner and outer loops, latent sources, ridge init, baselines, checkpoints,
kill-and-resume and two-process data parallelism, on tiny real architectures.

The tiny agents here use ``initializer_range=0.2``: at the usual 0.02 a random 2-layer model's output
barely depends on its input (even freely optimised prefix embeddings move its loss by ~0.2 nats), so no
link could show learning. Everything runs on one torch thread (the CI cores are shared).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from recursivemas import System
from recursivemas.tiny import save_tiny_agent
from recursivemas.train import CheckpointError, DataError, TrainConfig, TrainingError, latest_checkpoint, load_records, synthetic_records, train
from recursivemas.train import outer as outer_mod
from recursivemas.train.baselines import lora_param_count
from recursivemas.train.data import BatchSchedule, load_for_system
from recursivemas.train.inner import InnerStage
from recursivemas.train.outer import OuterStage, answer_metrics, ridge_pairs, rollout_probability, source_at, unroll
from recursivemas.train.recipe import train_from_files
from recursivemas.bundled.world import write_jsonl

REPO = Path(__file__).resolve().parents[1]
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO / "src")}
FAST = dict(lr=3e-3, warmup_steps=2, batch_size=4, eval_generate=False, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def agents(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("train_agents")
    specs = {"llama": ("llama", 32, "im"), "moe": ("qwen2_moe", 32, "im"), "gpt2": ("gpt2", 48, "header")}
    return {
        name: str(save_tiny_agent(root / name, family, hidden, style, seed=i, initializer_range=0.2))
        for i, (name, (family, hidden, style)) in enumerate(specs.items())
    }


def sequential_cfg(agents: dict[str, str], **extra) -> dict:
    """Llama planner (32) -> Qwen2-MoE critic (32) -> GPT-2 solver (48) -> planner."""
    prompts = {
        "planner": ("llama", "Question: {question}\n<<FEEDBACK>>\nWrite a plan."),
        "critic": ("moe", "Question: {question}\nPlan: <<PLAN>>\nImprove the plan."),
        "solver": ("gpt2", "Question: {question}\nRefined plan: <<REFINED_PLAN>>\nSolve it."),
    }
    return {
        "name": "train-seq",
        "pattern": "sequential",
        "agents": {role: {"model": agents[m], "prompt": p} for role, (m, p) in prompts.items()},
        "rounds": 2,
        "latent_steps": 3,
        "generation": {"max_new_tokens": 4},
        **extra,
    }


def distillation_cfg(agents: dict[str, str], **extra) -> dict:
    """GPT-2 expert (48, its own tokenizer) -> Llama learner (32) -> expert."""
    return {
        "name": "train-distill",
        "pattern": "distillation",
        "agents": {
            "expert": {"model": agents["gpt2"], "prompt": "Q: {question}\n<<FEEDBACK>>\nExplain."},
            "learner": {"model": agents["llama"], "prompt": "Q: {question}\nExpert notes: <<EXPERT>>\nAnswer."},
        },
        "rounds": 2,
        "latent_steps": 3,
        "generation": {"max_new_tokens": 4},
        **extra,
    }


@pytest.fixture(scope="module")
def seq_data():
    return synthetic_records(40, seed=0), synthetic_records(12, seed=1)


@pytest.fixture(scope="module")
def distill_files(agents, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    system = root / "system.yaml"
    system.write_text(yaml.safe_dump(distillation_cfg(agents, training={**FAST, "checkpoint_every": 1})))
    return {
        "system": system,
        "train": write_jsonl(synthetic_records(24, seed=0, pattern="distillation"), root / "train.jsonl"),
        "eval": write_jsonl(synthetic_records(8, seed=1, pattern="distillation"), root / "eval.jsonl"),
    }


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def links_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------------ data
def test_records_load_from_every_format(tmp_path):
    records = synthetic_records(5, pattern="distillation")
    fields = ("expert", "answer")
    jsonl = write_jsonl(records, tmp_path / "d.jsonl")
    (tmp_path / "d.json").write_text(json.dumps(records))
    import datasets

    ds = datasets.Dataset.from_list(records)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in (jsonl, tmp_path / "d.json", tmp_path / "d.parquet", tmp_path / "saved", ds, records):
        assert load_records(source, fields) == [{k: r[k] for k in ("question", *fields)} for r in records]
    # a numeric answer is accepted as text
    assert load_records([{"question": "1 + 1?", "answer": 2}], ["answer"])[0]["answer"] == "2"


def test_bad_records_name_the_file_line_and_field(tmp_path):
    records = synthetic_records(4, pattern="distillation")
    del records[2]["expert"]
    path = write_jsonl(records, tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: record has no field 'expert'"):
        load_records(path, ["expert", "answer"])
    path.write_text(path.read_text() + "{not json\n")
    records[2]["expert"] = "x"
    good = write_jsonl(records, tmp_path / "trail.jsonl")
    good.write_text(good.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"trail\.jsonl:5: line 5 is not valid JSON"):
        load_records(good, ["expert"])
    with pytest.raises(DataError, match=r"row 2: field 'answer' is empty"):
        load_records([{"question": "q", "answer": "1"}, {"question": "q", "answer": "  "}], ["answer"])
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown data format '.csv'"):
        (tmp_path / "d.csv").write_text("question\n")
        load_records(tmp_path / "d.csv")


def test_every_agent_needs_a_target_field(agents):
    cfg = distillation_cfg(agents)
    cfg.pop("pattern")
    cfg.update(edges=[{"from": "expert", "to": "learner", "slot": "EXPERT"}, {"from": "learner", "to": "expert", "slot": "FEEDBACK"}], decoder="learner")
    cfg["agents"]["learner"]["target"] = "answer"
    system = System.from_config(cfg)
    with pytest.raises(DataError, match=r"agent 'expert' has no training target; set agents\.expert\.target"):
        load_for_system(system, synthetic_records(2, pattern="distillation"))


def test_batch_schedule_is_a_function_of_seed_and_step():
    sched = BatchSchedule(size=10, batch_size=4, seed=3)
    epoch = [i for s in range(5) for i in sched.indices(s)][:10]
    assert sorted(epoch) == list(range(10))  # every record once per epoch
    assert BatchSchedule(10, 4, 3).indices(7) == sched.indices(7)
    assert sched.shard(2, 0, 2) + sched.shard(2, 1, 2) == sched.indices(2)
    with pytest.raises(DataError, match="does not divide across 3 processes"):
        sched.shard(0, 0, 3)


# ------------------------------------------------------------------------------------------- the loops
def test_inner_loss_falls_and_heldout_cosine_rises(agents, seq_data, tmp_path):
    system = System.from_config(sequential_cfg(agents))
    records, held = seq_data
    cfg = TrainConfig(stage="inner", steps=40, inner_lr=1e-2, **FAST)
    before = InnerStage(system, cfg).evaluate(held)
    summary = train(system, records, cfg, tmp_path, held)["stages"]["inner"]
    losses = [e["loss"] for e in read_log(tmp_path) if "loss" in e]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    for name in system.agents:
        assert summary["eval"][f"cos/{name}"] > before[f"cos/{name}"] + 0.1
    assert summary["trainable_params"] == sum(p.numel() for p in system.links.inner.parameters())
    # the trained system was saved and loads with the trained links
    loaded = System.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.links.state_dict(), system.links.state_dict())


def test_every_outer_link_gets_gradient_in_every_round_it_carries(agents, seq_data):
    # which turns run is tests/test_rounds.py (the same schedule as System.run); here: credit reaches each use
    system = System.from_config(sequential_cfg(agents, rounds=3))
    result = unroll(system, seq_data[0][:2], TrainConfig(nonfinal_weight=0.0), track_grads=True)
    result.loss.backward()
    assert sorted(result.latent_grad_sq) == sorted(
        [f"{e}/r{r}" for r in (1, 2, 3) for e in ("planner->critic", "critic->solver")] + ["solver->planner/r1", "solver->planner/r2"]
    )
    assert all(v > 0 for v in result.latent_grad_sq.values())


def test_outer_loss_falls_and_beats_the_untrained_system_on_held_out(agents, seq_data, tmp_path):
    system = System.from_config(sequential_cfg(agents))
    records, held = seq_data
    cfg = TrainConfig(stage="outer", steps=30, **FAST)
    untrained = answer_metrics(system, held, cfg)["answer_loss"]
    inner_before = {k: v.clone() for k, v in system.links.inner.state_dict().items()}
    summary = train(system, records, cfg, tmp_path, held)["stages"]["outer"]
    log = [e for e in read_log(tmp_path) if "loss" in e]
    first, last = sum(e["loss"] for e in log[:5]) / 5, sum(e["loss"] for e in log[-5:]) / 5
    assert last < first - 0.5
    assert summary["eval"]["answer_loss"] < untrained - 0.5
    assert answer_metrics(System.from_pretrained(tmp_path), held, cfg)["answer_loss"] == pytest.approx(summary["eval"]["answer_loss"], rel=1e-5)
    # inner links are frozen in the outer loop; every outer link receives gradient, per round
    torch.testing.assert_close(system.links.inner.state_dict(), inner_before)
    for key in ("planner->critic/r1", "planner->critic/r2", "critic->solver/r1", "critic->solver/r2", "solver->planner/r1"):
        assert all(e[f"latent_grad/{key}"] > 0 for e in log)
    assert all(e["grad/outer.solver->planner"] > 0 for e in log)
    assert summary["trainable_params"] == sum(p.numel() for p in system.links.outer.parameters())
    assert "answer_loss_rollout" in summary["eval"]  # the train/inference latent gap is measured


def test_gradient_checkpointing_gives_the_same_gradients_and_recomputes(agents, seq_data):
    system = System.from_config(sequential_cfg(agents))
    OuterStage(system, TrainConfig(), steps=1)
    batch = seq_data[0][:3]
    layer = system.agents["critic"].model.model.layers[0].self_attn
    calls = []
    handle = layer.register_forward_hook(lambda *a: calls.append(1))
    grads = []
    for ckpt in (False, True):
        calls.clear()
        system.links.zero_grad(set_to_none=True)
        unroll(system, batch, TrainConfig(gradient_checkpointing=ckpt)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in system.links.outer.named_parameters()})
        grads.append(len(calls))
    handle.remove()
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-4, atol=1e-7)
    assert grads[3] == 2 * grads[1]  # the critic's layers ran again during the backward pass
    # checkpointing is scoped: inference afterwards still uses the KV cache and matches a fresh system
    fresh = System.from_config(sequential_cfg(agents))
    fresh.links.load_state_dict(system.links.state_dict())
    assert system.run(["What is 2 + 3?"])[0].text == fresh.run(["What is 2 + 3?"])[0].text


def test_rollout_and_mixed_latent_sources(agents, seq_data):
    system = System.from_config(sequential_cfg(agents))
    OuterStage(system, TrainConfig(), steps=1)
    result = unroll(system, seq_data[0][:2], TrainConfig(), "rollout", track_grads=True)
    result.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in system.links.outer.parameters() if p.dim() == 2)
    assert "planner->critic/r1" in "".join(result.latent_grad_sq)
    mixed = TrainConfig(latent_source="mixed", rollout_share=0.8)
    probs = [rollout_probability(mixed, s, 11) for s in range(11)]
    assert probs[0] == 0 and probs[-1] == pytest.approx(0.8) and probs == sorted(probs)
    draws = [source_at(mixed, s, 200) for s in range(200)]
    assert draws == [source_at(mixed, s, 200) for s in range(200)]  # fixed by (seed, step): resume-safe
    assert draws[:100].count("rollout") < draws[100:].count("rollout")


def test_ridge_init_fits_the_pairs_better_than_random(agents, seq_data, tmp_path):
    system = System.from_config(sequential_cfg(agents, links={"init": "ridge"}))
    cfg = TrainConfig(stage="outer", steps=1, **FAST)
    pairs = ridge_pairs(system, seq_data[0][:24], cfg)
    assert set(pairs) == {"planner->critic", "critic->solver", "solver->planner"}
    src, tgt = pairs["planner->critic"]
    assert src.shape[1] == 32 and tgt.shape[1] == 32 and src.shape[0] == tgt.shape[0] > 100
    with torch.no_grad():
        before = {k: float(torch.cosine_similarity(system.links.outer[k](s), t, dim=-1).mean()) for k, (s, t) in pairs.items()}
    train(system, seq_data[0][:24], cfg, tmp_path, seq_data[1][:4])
    fits = next(e["ridge_init_cosine"] for e in read_log(tmp_path) if "ridge_init_cosine" in e)
    for key in pairs:
        assert fits[key] > before[key] + 0.3, (key, fits[key], before[key])


# ------------------------------------------------------------------------------------------- baselines
def test_lora_and_full_baselines_train_and_report_costs(agents, tmp_path):
    system = System.from_config(distillation_cfg(agents))
    records, held = synthetic_records(24, pattern="distillation"), synthetic_records(8, seed=1, pattern="distillation")
    learner = system.agents["learner"].model
    d, vocab, layers = 32, learner.config.vocab_size, learner.config.num_hidden_layers
    kv, inter = learner.config.num_key_value_heads * learner.config.head_dim, learner.config.intermediate_size
    # LoRA on every linear layer: r * (in + out) for q, k, v, o, gate, up, down
    r = 4
    lora_formula = layers * r * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + inter) + (inter + d))
    full_formula = 2 * vocab * d + layers * (2 * d * d + 2 * d * kv + 3 * d * inter + 2 * d) + d
    assert lora_param_count(learner, r) == lora_formula
    figures = {}
    for method, expected in (("lora", lora_formula), ("full", full_formula)):
        cfg = TrainConfig(method=method, steps=8, lora_r=r, **{**FAST, "eval_generate": True})
        summary = train(system, records, cfg, tmp_path / method, held)
        s = summary["stages"][method]
        assert s["trainable_params"] == expected
        assert s["time_per_step_s"] > 0 and s["peak_train_memory_mb"] >= 0 and s["memory_measure"].startswith("cpu-rss")
        assert set(s["eval"]) == {"answer_loss", "answer_token_acc", "exact_match"}
        assert s["final_loss"] < s["first_loss"]
        figures[method] = s
    assert (tmp_path / "lora" / "model" / "adapter_config.json").is_file()
    assert (tmp_path / "full" / "model" / "config.json").is_file()
    # the baselines trained copies: the system's own decoder is untouched and still frozen
    assert not any(p.requires_grad for p in learner.parameters())
    assert "| full |" in (tmp_path / "full" / "report.md").read_text()


# ------------------------------------------------------------------------------------ failures and resume
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(agents, tmp_path, monkeypatch):
    records = synthetic_records(16, pattern="distillation")
    cfg = TrainConfig(stage="outer", steps=6, checkpoint_every=2, **FAST)
    good = System.from_config(distillation_cfg(agents))
    train(good, records, replace_steps(cfg, 2), tmp_path / "good", records[:4])

    real, count = outer_mod.unroll, []

    def poisoned(*args, **kwargs):
        result = real(*args, **kwargs)
        count.append(1)
        if len(count) == 3:  # the third training step
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(outer_mod, "unroll", poisoned)
    system = System.from_config(distillation_cfg(agents))
    with pytest.raises(TrainingError, match=r"outer training stopped at step 3: the loss is nan\..*last good checkpoint is .*outer-step0000002"):
        train(system, records, cfg, tmp_path / "run", records[:4])
    state = latest_checkpoint(tmp_path / "run")
    assert state.step == 2 and not (tmp_path / "run" / "checkpoints" / "outer-step0000003").exists()
    with pytest.raises(CheckpointError, match="already holds checkpoints of an earlier run; pass --resume"):
        train(system, records, cfg, tmp_path / "run", records[:4])  # a fresh run never mixes with an old one
    # the kept checkpoint is whole and holds the links of a clean 2-step run (both steps are warm-up steps,
    # so the schedule's length does not matter yet)
    saved = state.tensors()
    loaded = System.from_config(distillation_cfg(agents))
    loaded.links.load(state.tensors_file)
    torch.testing.assert_close(dict(loaded.links.state_dict()), {k: v for k, v in saved.items()})
    torch.testing.assert_close(saved, links_of(tmp_path / "good" / "links.safetensors"))


def replace_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, steps=steps)


def test_cli_reports_bad_data_and_options(distill_files, tmp_path):
    from typer.testing import CliRunner

    from recursivemas.cli import app

    records = synthetic_records(6, pattern="distillation")
    del records[4]["expert"]
    bad = write_jsonl(records, tmp_path / "bad.jsonl")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--system", str(distill_files["system"]), "--data", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "bad.jsonl:5: record has no field 'expert'" in result.output
    result = runner.invoke(app, ["train", "--system", str(distill_files["system"]), "--data", str(distill_files["train"]),
                                 "--out", str(tmp_path / "o"), "--latent-source", "dreams"])
    assert result.exit_code == 1 and "latent_source 'dreams' is unknown; choose one of teacher, rollout, mixed" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gives")
def test_cli_train_device_override_fails_clearly_without_a_gpu(distill_files, tmp_path):
    from typer.testing import CliRunner

    from recursivemas.cli import app

    result = CliRunner().invoke(app, ["train", "--system", str(distill_files["system"]), "--data", str(distill_files["train"]),
                                      "--out", str(tmp_path / "o"), "--device", "cuda"])
    assert result.exit_code == 1 and "sees no CUDA GPU" in result.output and "set device: cpu" in result.output
    assert not (tmp_path / "o" / "checkpoints").exists()  # nothing trained


def test_killed_run_resumes_to_the_same_links(distill_files, tmp_path):
    args = dict(eval_data=distill_files["eval"], inner_steps=4, steps=24)
    reference = tmp_path / "reference"
    train_from_files(distill_files["system"], distill_files["train"], reference, **args)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "recursivemas", "train", "--system", str(distill_files["system"]), "--data", str(distill_files["train"]),
           "--eval-data", str(distill_files["eval"]), "--out", str(out), "--steps", "24", "--no-progress"]
    # inner_steps comes from the system file in the subprocess: write a copy that sets it
    system_file = tmp_path / "system.yaml"
    data = yaml.safe_load(distill_files["system"].read_text())
    data["training"]["inner_steps"] = 4
    system_file.write_text(yaml.safe_dump(data))
    cmd[cmd.index("--system") + 1] = str(system_file)
    proc = subprocess.Popen(cmd, env=SUB_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            latest = out / "checkpoints" / "latest"
            if latest.is_file() and latest.read_text().startswith("outer-step") and int(latest.read_text()[-7:]) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    killed_at = latest_checkpoint(out).step
    assert 2 <= killed_at < 24 and not (out / "links.safetensors").exists()

    summary = train_from_files(system_file, distill_files["train"], out, eval_data=distill_files["eval"], resume=True, steps=24)
    assert summary["stages"]["outer"]["resumed_from_step"] == killed_at
    ref, got = links_of(reference / "links.safetensors"), links_of(out / "links.safetensors")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    steps = [(e["stage"], e["step"]) for e in read_log(out) if "loss" in e]
    assert steps == [("inner", s) for s in range(1, 5)] + [("outer", s) for s in range(1, 25)]  # one continuous log
    ref_losses = [e["loss"] for e in read_log(reference) if "loss" in e]
    assert [e["loss"] for e in read_log(out) if "loss" in e] == pytest.approx(ref_losses, rel=1e-5)


def test_torchrun_two_processes_match_one(distill_files, tmp_path):
    one = tmp_path / "one"
    train_from_files(distill_files["system"], distill_files["train"], one, eval_data=distill_files["eval"], stage="outer", steps=4)
    two = tmp_path / "two"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "recursivemas", "train", "--system", str(distill_files["system"]),
           "--data", str(distill_files["train"]), "--eval-data", str(distill_files["eval"]), "--out", str(two), "--stage", "outer",
           "--steps", "4", "--no-progress"]
    done = subprocess.run(cmd, env=SUB_ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["stages"]["outer"]["rank_divergence"] == 0.0  # links identical on both ranks
    a = [e for e in read_log(one) if "loss" in e]
    b = [e for e in read_log(two) if "loss" in e]
    assert [e["loss"] for e in b] == pytest.approx([e["loss"] for e in a], rel=1e-4)
    assert [e["grad_norm"] for e in b] == pytest.approx([e["grad_norm"] for e in a], rel=1e-3)
    assert b[0]["latent_grad/expert->learner/r1"] == pytest.approx(a[0]["latent_grad/expert->learner/r1"], rel=1e-3)
    torch.testing.assert_close(links_of(two / "links.safetensors"), links_of(one / "links.safetensors"), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- kills at every moment, checkpoint integrity
class Killed(BaseException):
    """A simulated SIGKILL: raised before an I/O or evaluation event, never caught by the recipe."""


KILL_SYSTEM_EXTRA = {"latent_steps": 2}
KILL_CFG = dict(stage="all", steps=2, inner_steps=1, checkpoint_every=1, lr=3e-3, warmup_steps=1, batch_size=2,
                eval_generate=False, progress=False, eval_batch_size=4)


def _train_killed_at(cfg_dict: dict, out: Path, kill_at: int | None, resume: bool) -> tuple[bool, int]:
    """Train once, killed just before the ``kill_at``-th event (log line, evaluation, checkpoint, state or summary write,
    final save); a kill at a log line first writes half of it, as a real kill mid-write would. Returns (killed, events)."""
    from recursivemas.train import checkpoint as ckpt
    from recursivemas.train import recipe

    count = [0]

    def hook(kind, fn):
        def wrapped(*args, **kwargs):
            count[0] += 1
            if count[0] == kill_at:
                if kind == "log" and args[0].enabled:
                    with args[0].path.open("a") as f:
                        f.write(json.dumps(args[1])[:25])  # a torn line
                raise Killed(kind)
            return fn(*args, **kwargs)

        return wrapped

    records = synthetic_records(12, pattern="distillation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipe._Log, "write", hook("log", recipe._Log.write))
        mp.setattr(recipe, "_evaluate", hook("evaluate", recipe._evaluate))
        mp.setattr(ckpt, "save_checkpoint", hook("checkpoint", ckpt.save_checkpoint))
        mp.setattr(ckpt, "write_state", hook("state", ckpt.write_state))
        mp.setattr(ckpt, "_write_atomic", hook("atomic", ckpt._write_atomic))
        system = System.from_config(cfg_dict)
        mp.setattr(system, "save_pretrained", hook("save", system.save_pretrained))
        try:
            train(system, records[:8], TrainConfig(**KILL_CFG), out, records[8:], resume=resume)
        except Killed:
            return True, count[0]
    return False, count[0]


def test_a_kill_at_any_moment_resumes_to_the_same_run(agents, tmp_path):
    """Figures for docs/training.md: every event of a two-stage run is a kill point; each resumes exactly."""
    cfg_dict = distillation_cfg(agents, **KILL_SYSTEM_EXTRA)
    reference = tmp_path / "reference"
    _, events = _train_killed_at(cfg_dict, reference, None, resume=False)
    ref_log = read_log(reference)
    ref_links = links_of(reference / "links.safetensors")
    assert events > 20
    exact = 0
    for k in range(1, events + 1):
        out = tmp_path / f"kill{k}"
        killed, _ = _train_killed_at(cfg_dict, out, k, resume=False)
        assert killed
        again, _ = _train_killed_at(cfg_dict, out, None, resume=True)
        assert not again
        log = read_log(out)
        steps = [(e["stage"], e["step"]) for e in log if "loss" in e]
        assert steps == [(e["stage"], e["step"]) for e in ref_log if "loss" in e], f"kill {k}: log steps {steps}"
        assert [e["stage"] for e in log if e.get("final")] == ["inner", "outer"], f"kill {k}: final evaluations"
        summary = json.loads((out / "summary.json").read_text())
        assert {s["steps"] for s in summary["stages"].values()} == {1, 2} and (out / "report.md").is_file()
        torch.testing.assert_close(links_of(out / "links.safetensors"), ref_links, rtol=1e-6, atol=1e-7)
        assert [e["loss"] for e in log if "loss" in e] == pytest.approx([e["loss"] for e in ref_log if "loss" in e], rel=1e-6)
        exact += 1
    print(f"\nkill-and-resume: {events} kill points, {exact} exact resumes")  # docs/training.md quotes this line


def _finished_run(agents, out: Path) -> Path:
    killed, _ = _train_killed_at(distillation_cfg(agents, **KILL_SYSTEM_EXTRA), out, None, resume=False)
    assert not killed
    return out / "checkpoints"


def _resume_error(agents, out: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        _train_killed_at(distillation_cfg(agents, **KILL_SYSTEM_EXTRA), out, None, resume=True)
    return str(info.value)


def test_altered_checkpoints_are_refused_naming_the_file(agents, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from recursivemas.train import checkpoint as ckpt

    cases = 0

    def fresh(name: str) -> tuple[Path, Path]:
        root = _finished_run(agents, tmp_path / name)
        return root, root / (root / "latest").read_text()

    root, last = fresh("edited")
    state = json.loads((last / "state.json").read_text())
    state["step"] = 1
    (last / "state.json").write_text(json.dumps(state))
    assert re.search(r"state\.json was changed after it was written", _resume_error(agents, root.parent))
    cases += 1

    root, last = fresh("truncated")
    data = (last / "links.safetensors").read_bytes()
    (last / "links.safetensors").write_bytes(data[: len(data) // 2])
    assert re.search(r"links\.safetensors does not match the SHA-256", _resume_error(agents, root.parent))
    cases += 1

    root, last = fresh("optimizer")
    (last / "optimizer.pt").write_bytes(b"garbage")
    assert "optimizer.pt does not match the SHA-256" in _resume_error(agents, root.parent)
    cases += 1

    root, last = fresh("nochecksum")
    state = json.loads((last / "state.json").read_text())
    del state["state_sha256"]
    (last / "state.json").write_text(json.dumps(state))
    assert "carries no checksums" in _resume_error(agents, root.parent)
    cases += 1

    root, last = fresh("wrongshape")  # consistent checksums, but tensors of another shape: does not fit
    tensors = links_of(last / "links.safetensors")
    key = next(k for k in tensors if k.endswith("weight") and tensors[k].dim() == 2)
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(last / "links.safetensors"))
    state = json.loads((last / "state.json").read_text())
    state["files"]["links.safetensors"] = ckpt.sha256_file(last / "links.safetensors")
    state["done"] = False  # a stage still to evaluate, so the resume loads everything
    ckpt.write_state(last, state)
    message = _resume_error(agents, root.parent)
    assert "does not fit this run" in message and last.name in message
    cases += 1

    root, last = fresh("outside")
    other = tmp_path / "other" / "checkpoints"
    shutil.copytree(last, other / last.name)
    (root / "latest").write_text(f"../../other/checkpoints/{last.name}")
    assert "not a checkpoint of this run" in _resume_error(agents, root.parent)
    cases += 1
    shutil.rmtree(last)
    (root / last.name).symlink_to(other / last.name)
    (root / "latest").write_text(last.name)
    assert "leads outside" in _resume_error(agents, root.parent)
    cases += 1

    root, last = fresh("renamed")  # a checkpoint directory renamed to claim another step
    last.rename(root / "outer-step0000009")
    (root / "latest").write_text("outer-step0000009")
    assert "not outer-step0000009" in _resume_error(agents, root.parent)
    cases += 1
    print(f"\naltered checkpoints: {cases} cases, {cases} refused with the file named")


def test_a_latent_stop_cuts_messages_alike_in_training_and_inference(agents, seq_data, monkeypatch):
    """generation.latent_stop: System.run and the outer loop's rollout end each message at the same thought."""
    import recursivemas.system as system_mod
    from recursivemas.agent import Agent

    # half the vocabulary ends a message, so random tiny agents stop after varied numbers of thoughts
    monkeypatch.setattr(Agent, "stop_token_ids", lambda self, stops: torch.arange(0, len(self.tokenizer), 2))
    seen: dict[str, list] = {"run": [], "train": []}

    def recording(key, real):
        def wrapped(*args, **kwargs):
            assert kwargs.get("stop_ids") is not None
            thoughts, lengths = real(*args, **kwargs)
            seen[key].append(lengths)
            return thoughts, lengths
        return wrapped

    monkeypatch.setattr(system_mod, "latent_message", recording("run", system_mod.latent_message))
    monkeypatch.setattr(outer_mod, "latent_message", recording("train", outer_mod.latent_message))
    system = System.from_config(sequential_cfg(agents, rounds=1, generation={"max_new_tokens": 4, "latent_stop": True}))
    batch = seq_data[0][:4]
    results = system.run(batch, mode="latent", batch_size=4)
    unroll(system, batch, TrainConfig(), "rollout")
    assert seen["run"] == seen["train"] and len(seen["run"]) == 2  # planner, then critic
    flat = [k for lengths in seen["run"] for k in lengths]
    assert min(flat) < 3 and len(set(flat)) > 1  # messages of several lengths, shorter than m
    for i, r in enumerate(results):  # usage counts the thoughts each question actually sent
        assert r.usage.latent_steps == sum(lengths[i] for lengths in seen["run"])


def test_least_squares_inner_links_fit_the_inner_loss_pairs(agents, seq_data):
    from recursivemas.train.inner import agent_loss, ridge_init_inner

    system = System.from_config(sequential_cfg(agents, links={"kind": "linear"}))
    cfg = TrainConfig(stage="inner", steps=1, **FAST)
    before = {name: agent_loss(system, name, seq_data[1][:8], cfg)[1] for name in system.agents}
    fits = ridge_init_inner(system, seq_data[0][:24], cfg)
    assert set(fits) == set(system.agents)
    held_out = {name: agent_loss(system, name, seq_data[1][:8], cfg)[1] for name in system.agents}
    for name in system.agents:  # held-out cosine of the inner loop's objective, not only the fitted rows
        assert held_out[name] > before[name] + 0.15, (name, before[name], held_out[name])  # measured: +0.19 to +0.68
    with pytest.raises(ValueError, match="links.kind: linear"):
        ridge_init_inner(System.from_config(sequential_cfg(agents)), seq_data[0][:4], cfg)
