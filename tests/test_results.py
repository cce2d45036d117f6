"""`recursivemas report` (recursivemas.results): a smoke run on tiny agents, every section present, m and rounds
chosen on the validation split only, and a rerun that resumes instead of redoing the work."""

from __future__ import annotations

import json
import time

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from recursivemas.eval.harness import read_records
from recursivemas.eval.tune import pick
from recursivemas.results import BUDGETS, choose_on_validation, run_report

SECTIONS = {
    "## (a) Accuracy by rounds, latent vs text": ["rounds", "text MAS", "RecursiveMAS", "delta (points)", "speed-up",
                                                  "token saving"],
    "## (b) Trained vs untrained links": ["links", "test accuracy"],
    "## (c) Latent length m": ["m", "validation accuracy", "test accuracy"],
    "## (d) RecursiveMAS links vs LoRA vs full fine-tuning": ["method", "optimizer steps", "trainable params",
                                                              "peak train memory (MiB)", "train time", "test accuracy"],
    "## (e) Teacher-forced vs rollout-consistent outer training": ["outer loop on", "held-out CE, teacher latents",
                                                                   "held-out CE, rollout latents", "test accuracy"],
}


@pytest.fixture(scope="module")
def smoke(tiny_agents, tmp_path_factory):
    """One smoke run of the whole pipeline on a tiny heterogeneous sequential system."""
    root = tmp_path_factory.mktemp("report")
    roles = {"planner": ("llama", "Question: {question}\n<<FEEDBACK>>\nWrite a plan."),
             "critic": ("qwen2", "Question: {question}\nPlan: <<PLAN>>\nImprove the plan."),
             "solver": ("gpt2", "Question: {question}\nRefined plan: <<REFINED_PLAN>>\nSolve it.")}
    config = {"name": "tiny-sequential", "pattern": "sequential", "rounds": 2, "latent_steps": 2,
              "agents": {role: {"model": tiny_agents[model], "prompt": prompt} for role, (model, prompt) in roles.items()},
              "generation": {"max_new_tokens": 4, "handoff_max_new_tokens": 3}}
    system = root / "system.yaml"
    system.write_text(yaml.safe_dump(config))
    out, work = root / "docs", root / "work"
    t0 = time.perf_counter()
    path = run_report(system, out, budget="smoke", work_dir=work, progress=False, log=lambda s: None)
    first = time.perf_counter() - t0
    return {"path": path, "out": out, "work": work, "system": system, "first_s": first,
            "results": json.loads((out / "results" / "results.json").read_text())}


def _table_header(text: str, section: str) -> str:
    body = text.split(section, 1)[1]
    return next(line for line in body.splitlines() if line.startswith("| "))


def test_every_section_with_its_columns_and_plots(smoke):
    text = smoke["path"].read_text()
    assert smoke["path"] == smoke["out"] / "results.md"
    for section, columns in SECTIONS.items():
        assert section in text, section
        header = [c.strip() for c in _table_header(text, section).strip("|").split("|")]
        for col in columns:
            assert col in header, (section, col, header)
        assert "does not hold here" in text.split(section, 1)[1] or "holds here" in text.split(section, 1)[1]
    for png in ("a_rounds.png", "b_links.png", "c_latent_length.png", "d_methods.png", "e_latent_source.png",
                "f_channel.png"):
        assert (smoke["out"] / "results" / png).stat().st_size > 1000
        assert f"(results/{png})" in text
    assert "## Stage timings" in text and "**total**" in text
    res = smoke["results"]
    assert [row["method"] for row in res["d"]["rows"]][:3] == ["RecursiveMAS (links)", "LoRA (decoder)", "Full FT (decoder)"]
    steps = {row["method"]: row["steps"] for row in res["d"]["rows"]}
    assert steps["LoRA (decoder)"] == steps["Full FT (decoder)"] == steps["RecursiveMAS (links)"]  # same step budget
    assert {row["source"] for row in res["e"]["rows"]} == {"teacher", "rollout"}
    assert {row["label"] for row in res["b"]["rows"]} == {"untrained", "teacher"}
    assert [row["rounds"] for row in res["a"]["rows"]] == list(BUDGETS["smoke"].rounds_grid)
    assert set(res["timings"]) >= {"train: inner loop", "(c) validation sweep: m x rounds", "(a) test: rounds, latent vs text",
                                   "(f) test: channel tests"}


def test_channel_section_from_a_real_channel_test(smoke):
    text, res = smoke["path"].read_text(), smoke["results"]
    section = text.split("## (f) Channel tests", 1)[1].split("## Stage timings", 1)[0]
    header = [c.strip() for c in _table_header(text, "## (f) Channel tests").strip("|").split("|")]
    assert header == ["mode", "as run", "shuffled", "zeroed", "gold upstream text", "channel gain (points)",
                      "95% interval", "McNemar p"]
    ch = res["channel"]
    assert (ch["latent_steps"], ch["rounds"]) == (res["chosen"]["latent_steps"], res["chosen"]["rounds"])
    assert set(ch["accuracy"]) == {"latent", "latent/shuffle", "latent/zero", "text", "text/shuffle", "text/zero",
                                   "text/gold", "single"}
    # as run is the same system, m, rounds, problems and batches as the (c) test row at the chosen m (greedy)
    c_row = next(row for row in res["c"]["rows"] if row["m"] == ch["latent_steps"])
    assert ch["accuracy"]["latent"] == pytest.approx(c_row["test"]["accuracy"])
    assert ch["accuracy"]["single"] == pytest.approx(res["a"]["single"]["accuracy"])
    for mode in ("latent", "text"):
        g = ch["gain"][mode]
        assert g["diff"] == pytest.approx(100 * (ch["accuracy"][mode] - ch["accuracy"][f"{mode}/shuffle"]))
        what = "latents" if mode == "latent" else "text messages"
        verdict = (f"**The {what} carry information about the input" if g["low"] > 0 or g["high"] < 0
                   else f"**No evidence that the {what} carry information about the input**")
        assert f"{verdict}" in section and f"({mode} mode)" in section


def test_m_and_rounds_are_chosen_on_validation_only(smoke):
    text, res, work = smoke["path"].read_text(), smoke["results"], smoke["work"]
    assert "m and rounds were chosen on the validation split only" in text
    val = read_records(work / "records" / "validation_teacher.jsonl")
    assert val and {r["split"] for r in val} == {"validation"}
    grid = {(g["latent_steps"], g["rounds"]): g["accuracy"] for g in res["validation_grid"]}
    spec = BUDGETS["smoke"]
    assert set(grid) == {(m, r) for m in spec.m_grid for r in spec.rounds_grid}
    # m = 0 passes nothing (not a RecursiveMAS setting): the choice is the validation argmax over m >= 1
    best = pick([{"latent_steps": m, "rounds": r, "accuracy": a} for (m, r), a in grid.items() if m > 0])
    assert (res["chosen"]["latent_steps"], res["chosen"]["rounds"]) == (best["latent_steps"], best["rounds"])
    assert res["chosen"]["accuracy"] == max(a for (m, _), a in grid.items() if m > 0)
    # every later test-split evaluation uses the chosen values
    test = [r for f in (work / "records").glob("test_*.jsonl") for r in read_records(f)]
    assert test and {r["split"] for r in test} == {"test"}
    for label in ("untrained", "rollout"):
        recs = read_records(work / "records" / f"test_{label}.jsonl")
        assert {(r["latent_steps"], r["rounds"]) for r in recs} == {(best["latent_steps"], best["rounds"])}
    # the choosing function refuses anything but validation records
    with pytest.raises(ValueError, match="validation split only"):
        choose_on_validation(val + test[:1])


def test_choice_ignores_test_accuracy():
    """A configuration that wins on test but loses on validation is not chosen."""
    def rec(split, m, r, correct):
        return {"split": split, "mode": "latent", "latent_steps": m, "rounds": r, "correct": correct}

    val = [rec("validation", 4, 1, True), rec("validation", 8, 1, False), rec("validation", 8, 2, False),
           rec("validation", 0, 1, True), rec("validation", 0, 2, True)]
    chosen = choose_on_validation(val)
    assert (chosen["latent_steps"], chosen["rounds"]) == (4, 1)  # m = 0 is the reference, never the choice
    assert chosen["best_any_m"]["latent_steps"] == 0
    with pytest.raises(ValueError):
        choose_on_validation(val + [rec("test", 8, 1, True), rec("test", 8, 1, True)])


def test_rerun_resumes(smoke):
    t0 = time.perf_counter()
    run_report(smoke["system"], smoke["out"], budget="smoke", work_dir=smoke["work"], progress=False, log=lambda s: None)
    again = time.perf_counter() - t0
    assert again < smoke["first_s"]
    lines = (smoke["work"] / "records" / "test_teacher.jsonl").read_text().splitlines()
    assert len(lines) == len({(json.loads(x)["id"], json.loads(x)["mode"], json.loads(x)["rounds"],
                               json.loads(x)["latent_steps"]) for x in lines})  # nothing evaluated twice


def test_cli_rejects_unknown_budget(tmp_path):
    from recursivemas.commands import report

    app = typer.Typer()
    report.register(app)
    app.command("noop")(lambda: None)  # two commands, so the command name is required as on the real CLI
    result = CliRunner().invoke(app, ["report", "--budget", "huge", "--system", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown budget" in result.output


def test_one_run_per_work_dir(tmp_path):
    import os

    work = tmp_path / "work"
    work.mkdir()
    (work / "lock").write_text(str(os.getpid()))  # a live process holds it
    with pytest.raises(RuntimeError, match="in use by report run"):
        run_report(tmp_path / "system.yaml", tmp_path / "docs", budget="smoke", work_dir=work, log=lambda s: None)
    (work / "lock").write_text("999999999")  # a dead one: the lock is taken over (then the missing system file fails)
    with pytest.raises(Exception) as err:
        run_report(tmp_path / "system.yaml", tmp_path / "docs", budget="smoke", work_dir=work, log=lambda s: None)
    assert "in use" not in str(err.value)
    assert not (work / "lock").exists()


def test_m0_note_says_costs_only_when_m0_wins():
    from recursivemas.results.markdown import _m0_note

    chosen = {"latent_steps": 4, "rounds": 1, "accuracy": 0.9}
    assert "costs accuracy" in _m0_note({"chosen": chosen, "best_any_m": {"latent_steps": 0, "rounds": 1, "accuracy": 0.92}})
    tied = _m0_note({"chosen": chosen, "best_any_m": {"latent_steps": 0, "rounds": 1, "accuracy": 0.9}})
    assert "tied" in tied and "costs" not in tied
    assert _m0_note({"chosen": chosen, "best_any_m": chosen}) == ""


def test_settings_are_passed_not_written_into_systems(smoke):
    """The rollout arm gets m and the ridge initialisation through TrainConfig; the saved systems keep their file's m."""
    work, res = smoke["work"], smoke["results"]
    summary = json.loads((work / "train" / "outer_rollout" / "summary.json").read_text())
    assert summary["config"]["latent_steps"] == res["rollout_train_m"] == res["chosen"]["latent_steps"]
    assert summary["config"]["link_init"] == "ridge"
    teacher = json.loads((work / "train" / "outer_teacher" / "summary.json").read_text())
    assert teacher["config"]["link_init"] == "ridge" and teacher["config"]["latent_steps"] is None
    for name in ("outer_teacher", "outer_rollout"):
        saved = yaml.safe_load((work / "train" / name / "system.yaml").read_text())
        assert saved["latent_steps"] == 2  # the system file's value, whatever m was chosen


def _channel_res(run_correct: int, shuffle_correct: int) -> dict:
    """The channel section computed from a real ChannelReport of 200 paired outcomes (the first k of each arm right)."""
    from recursivemas.channel import ChannelReport, paired_difference
    from recursivemas.results.tables import compute_channel_table

    def outcomes(k: int) -> list[bool]:
        return [i < k for i in range(200)]

    report = ChannelReport(200, 2, 4)
    for arm, k in (("latent", run_correct), ("latent/shuffle", shuffle_correct), ("latent/zero", 80), ("text", 100),
                   ("text/shuffle", 100), ("text/zero", 90), ("text/gold", 140), ("single", 96)):
        report.add(arm, outcomes(k), tokens=3.0)
    for mode in ("latent", "text"):
        report.gain[mode] = paired_difference(report.correct[mode], report.correct[f"{mode}/shuffle"])
    return {"channel": compute_channel_table(report, rounds=2, latent_steps=4, n=200)}


def test_channel_section_says_whether_latents_carry_information():
    from recursivemas.results.markdown import render_channel_table

    res = _channel_res(120, 90)  # 30 problems right only as run, none only shuffled: +15 points
    g = res["channel"]["gain"]["latent"]
    assert g["diff"] == pytest.approx(15.0) and 0 < g["low"] < 15 < g["high"]
    text = "\n".join(render_channel_table(res, {}))
    header = [c.strip() for c in _table_header(text, "## (f) Channel tests").strip("|").split("|")]
    assert header[:5] == ["mode", "as run", "shuffled", "zeroed", "gold upstream text"] and "95% interval" in header
    assert "| latent | 60.0% | 45.0% | 40.0% | - | +15.0 |" in text
    assert "| text | 50.0% | 50.0% | 45.0% | 70.0% | +0.0 |" in text
    assert "**The latents carry information about the input** (latent mode)" in text and "excludes 0" in text
    assert "**No evidence that the text messages carry information" in text  # identical outcomes: interval [0, 0]
    assert "soft prompt" not in text  # shuffling costs 15 points: the content matters
    assert "the decoder scores 70.0% against 48.0% alone (+22.0 [" in text and "a perfect hand-off helps it" in text
    unclear = "\n".join(render_channel_table(_channel_res(120, 118), {}))  # 2 discordant problems
    assert "**No evidence that the latents carry information about the input**" in unclear and "includes 0" in unclear
    # zeroing costs 20 points (40 problems right only as run), shuffling nothing measurable: presence, not content
    assert "Zeroing the latents costs +20.0 [" in unclear and "soft prompt" in unclear
    worse = "\n".join(render_channel_table(_channel_res(90, 120), {}))
    assert "but it lowers accuracy" in worse


def _arm(acc: float) -> dict:
    return {"n": 200, "accuracy": acc, "ci95": 0.05, "tokens": 20.0, "time_s": 0.02}


def test_rounds_claim_needs_growth_not_a_flat_gain():
    """(a): a gain that is the same at 1, 2 and 3 rounds does not "grow with rounds"; one that rises does."""
    from recursivemas.results.markdown import render_rounds_table

    def res(deltas):
        rows = [{"rounds": n, "text": _arm(0.5), "latent": _arm(0.5 + d), "delta": d, "speedup": 2.0, "token_saving": 0.8}
                for n, d in zip((1, 2, 3), deltas)]
        return {"a": {"rows": rows, "single": _arm(0.2)}, "budget": {"inner_steps": 1, "outer_steps": 1},
                "chosen": {"latent_steps": 1, "rounds": 1}, "shipped_links": True, "zoo_agents": True}

    flat = "\n".join(render_rounds_table(res([0.01, 0.01, 0.01]), {}))
    assert "at every number of rounds: **holds here**" in flat and "grows with rounds: **does not hold here**" in flat
    rising = "\n".join(render_rounds_table(res([0.01, 0.03, 0.03]), {}))
    assert "grows with rounds: **holds here**" in rising


def test_m_claim_separates_rising_from_m0_and_staying_up():
    """(c): accuracy that peaks at m = 1 and falls by m = 32 rises from m = 0 but does not stay up, and says why."""
    from recursivemas.results.markdown import render_m_table

    def res(vals):
        rows = [{"m": m, "val_accuracy": v, "val_n": 100, "test": _arm(v)} for m, v in zip((0, 1, 8, 32), vals)]
        return {"c": {"rows": rows, "rounds": 1}, "chosen": {"latent_steps": 1, "rounds": 1}}

    falls = "\n".join(render_m_table(res([0.16, 1.0, 0.4, 0.21]), {}))
    assert "rising from m = 0 **holds here**" in falls
    assert "(m = 32: 21.0% against 100.0% at the best, m = 1) **does not hold here**" in falls and "Why, at this scale" in falls
    flat = "\n".join(render_m_table(res([0.16, 0.9, 0.92, 0.9]), {}))
    assert "rising from m = 0 **holds here**" in flat and "m = 8) **holds here**" in flat and "Why" not in flat


def test_a_changed_system_is_not_resumed(tmp_path):
    """New weights or links under the same system path must not reuse the old run's answers: the claim is refused."""
    from safetensors.torch import save_file

    from recursivemas.results.workdir import claim, fingerprint

    model = tmp_path / "agent"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "links.safetensors"))
    system = tmp_path / "system.yaml"
    prompts = {"planner": "{question} <<FEEDBACK>>", "critic": "{question} <<PLAN>>", "solver": "{question} <<REFINED_PLAN>>"}
    system.write_text(yaml.safe_dump({"name": "s", "pattern": "sequential", "links": {"checkpoint": "links.safetensors"},
                                      "agents": {role: {"model": "agent", "prompt": p} for role, p in prompts.items()}}))
    first = fingerprint(system, 0)
    assert fingerprint(system, 0) == first and fingerprint(system, 1) != first  # the seed picks other problems
    (model / "model.safetensors").write_bytes(b"weights v2")
    second = fingerprint(system, 0)
    save_file({"w": torch.ones(2)}, str(tmp_path / "links.safetensors"))
    assert len({first, second, fingerprint(system, 0)}) == 3
    work = tmp_path / "work"
    claim(work, {"system": str(system), "fingerprint": first, "seed": 0})
    claim(work, {"system": str(system), "fingerprint": first, "seed": 0})  # the same run resumes
    with pytest.raises(ValueError, match="different fingerprint"):
        claim(work, {"system": str(system), "fingerprint": second, "seed": 0})
