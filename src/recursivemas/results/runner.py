"""Run every stage of the report in order, resumably, and write ``results.md``, its plots and ``results.json``.

The stages: train the inner loop once, then the outer loop with teacher latents; choose m and rounds on validation;
train the outer loop with rollout latents and the LoRA / full fine-tuning baselines; then evaluate every section on
the test split at the chosen m and rounds. No system is mutated: m, rounds and link initialisation are passed per
call (``System.run`` / ``evaluate`` keywords, ``TrainConfig`` fields).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from recursivemas.machine import describe as describe_machine
from recursivemas.results import arms
from recursivemas.results.markdown import render_results
from recursivemas.results.plots import plot_all
from recursivemas.results.protocol import PACKAGE, Budget, choose_on_validation, default_system_path, resolve_budget
from recursivemas.results.tables import (
    compute_channel_table,
    compute_latent_source_table,
    compute_links_table,
    compute_m_table,
    compute_methods_table,
    compute_rounds_table,
    heldout_gap,
)
from recursivemas.results.workdir import ReportRun, claim, fingerprint, locked


def run_report(
    system_path: str | Path | None = None,
    out_dir: str | Path = "docs",
    *,
    budget: str | Budget = "full",
    work_dir: str | Path | None = None,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run every stage and write ``out_dir/results.md`` (+ ``out_dir/results/*.png`` and ``results.json``).

    ``system_path``: a system file or a saved system directory (default: :func:`default_system_path`).
    ``threads``: torch CPU threads (1 is fastest for these tiny models on a shared 2-core machine).
    ``work_dir`` (default ``runs/report/<budget>``): records and training runs. A rerun with the same ``work_dir``
    resumes (finished training runs and recorded answers are reused); one made with another system, budget or seed,
    or before the system's files or the world changed (``workdir.fingerprint``), is refused.
    """
    spec = resolve_budget(budget)
    system_path = Path(system_path) if system_path is not None else default_system_path()
    work_dir = Path(work_dir) if work_dir is not None else Path("runs/report") / spec.name
    claim(work_dir, {"system": str(system_path.resolve()), "fingerprint": fingerprint(system_path, seed),
                     "budget": asdict(spec), "seed": seed})
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with locked(work_dir):
            run = ReportRun(system_path, Path(out_dir), work_dir, spec, seed, threads, progress, log)
            return _run_stages(run)
    finally:
        torch.set_num_threads(saved_threads)


def _run_stages(run: ReportRun) -> Path:
    from recursivemas import System

    t_start = time.perf_counter()
    spec, system_path, log = run.budget, run.system_path, run.log
    torch.manual_seed(run.seed)
    shipped = arms.has_trained_links(system_path)
    base_config = arms.untrained_config(system_path)
    res: dict[str, Any] = {"budget": asdict(spec), "system": str(system_path), "shipped_links": shipped, "seed": run.seed,
                           "threads": run.threads, "work_dir": str(run.work)}

    # ---- training: inner loop once, then the outer loop with teacher latents (rollout arm after m is chosen)
    with run.timed("train: inner loop"):
        inner = run.train(System.from_config(base_config), "inner", stage="inner", steps=spec.inner_steps, lr=spec.lr_links)
    with run.timed("train: outer loop, teacher latents"):
        teacher = run.train(System.from_pretrained(run.work / "train" / "inner"), "outer_teacher", stage="outer",
                            steps=spec.outer_steps, lr=spec.lr_links, latent_source="teacher", link_init=spec.link_init)
        sys_teacher = System.from_pretrained(run.work / "train" / "outer_teacher")

    # ---- choose m and rounds on validation, with the main system (shipped links if any, else this run's)
    main = System.load(system_path) if shipped else sys_teacher
    main_label = "main" if shipped else "teacher"  # without shipped links, the main system is this run's teacher arm
    res["main_links"] = "shipped" if shipped else "trained in this run (teacher latents)"
    res["shipped_training"] = arms.shipped_steps(system_path) if shipped else None
    res["agents"] = arms.agent_params(main)
    res["zoo_agents"] = all(PACKAGE / "bundled" / "zoo_models" in Path(main.config.resolve(a.model)).resolve().parents
                            for a in main.config.agents.values())
    with run.timed("(c) validation sweep: m x rounds"):
        val_records = []
        for m in spec.m_grid:
            val_records += run.evaluate(main, main_label, "validation", modes=("latent",), rounds=spec.rounds_grid, latent_steps=m)
        chosen = choose_on_validation(val_records)
    m_star, r_star = chosen["latent_steps"], chosen["rounds"]
    res["chosen"] = {k: chosen[k] for k in ("latent_steps", "rounds", "accuracy", "n")}
    res["validation_grid"] = chosen["grid"]
    res["best_any_m"] = chosen["best_any_m"]
    log(f"   chosen on validation: m={m_star}, rounds={r_star} ({100 * chosen['accuracy']:.1f}%)")

    with run.timed("train: outer loop, rollout latents"):
        m_train = m_star  # rollouts as long as at inference
        rollout = run.train(System.from_pretrained(run.work / "train" / "inner"), "outer_rollout", stage="outer",
                            steps=spec.outer_steps, lr=spec.lr_links, latent_source="rollout", latent_steps=m_train,
                            link_init=spec.link_init)
        sys_rollout = System.from_pretrained(run.work / "train" / "outer_rollout")
        res["rollout_train_m"] = m_train
    with run.timed("train: LoRA baseline"):
        lora = run.train(System.from_config(base_config), "lora", method="lora", steps=spec.baseline_steps, lr=spec.lr_lora)
    with run.timed("train: full fine-tuning baseline"):
        full = run.train(System.from_config(base_config), "full", method="full", steps=spec.baseline_steps, lr=spec.lr_full)

    # ---- (a) rounds, latent vs text, on test
    with run.timed("(a) test: rounds, latent vs text"):
        a_records = run.evaluate(main, main_label, "test", modes=("single", "text", "latent"), rounds=spec.rounds_grid,
                                 latent_steps=m_star)
    res["a"] = compute_rounds_table(a_records, spec.rounds_grid)

    # ---- (c) m ablation on test at the chosen rounds (reported, never used for choosing)
    with run.timed("(c) test: m ablation"):
        c_test = []
        for m in spec.m_grid:
            c_test += run.evaluate(main, main_label, "test", modes=("latent",), rounds=(r_star,), latent_steps=m)
    res["c"] = compute_m_table(chosen["grid"], c_test, r_star)

    # ---- (b) trained vs untrained links at (m*, r*)
    with run.timed("(b) test: trained vs untrained links"):
        links_arms = [("untrained", "untrained (seeded random init)", System.from_config(base_config)),
                      ("teacher", f"trained here: {spec.inner_steps} inner + {spec.outer_steps} outer steps", sys_teacher)]
        if shipped:
            links_arms.append(("main", "shipped trained links", main))
        res["b"] = compute_links_table([
            (label, desc, run.evaluate(system, label, "test", modes=("latent",), rounds=(r_star,), latent_steps=m_star))
            for label, desc, system in links_arms])

    # ---- (d) links vs LoRA vs full fine-tuning, same data and step budget
    with run.timed("(d) test: links vs LoRA vs full"):
        single = [r for r in a_records if r["mode"] == "single"]
        teacher_test = run.evaluate(sys_teacher, "teacher", "test", modes=("latent",), rounds=(r_star,), latent_steps=m_star)
        rollout_test = run.evaluate(sys_rollout, "rollout", "test", modes=("latent",), rounds=(r_star,), latent_steps=m_star)
        lora_test = run.evaluate(arms.finetuned_system(base_config, run.work / "train" / "lora" / "model", "lora"), "lora",
                                 "test", modes=("single",), rounds=(1,))
        full_test = run.evaluate(arms.finetuned_system(base_config, run.work / "train" / "full" / "model", "full"), "full",
                                 "test", modes=("single",), rounds=(1,))
    # The links arm is trained the way the bundled links are (rollout latents; teacher latents are section e's other arm).
    res["d"] = compute_methods_table(spec, inner, rollout, lora, full, rollout_test, lora_test, full_test, single,
                                     m_star, r_star)

    # ---- (e) teacher-forced vs rollout-consistent outer training
    with run.timed("(e) test: teacher vs rollout outer training"):
        gaps = {name: heldout_gap(system, run.heldout, m_train, spec.eval_batch)
                for name, system in (("teacher", sys_teacher), ("rollout", sys_rollout))}
    res["e"] = compute_latent_source_table(teacher, rollout, gaps, teacher_test, rollout_test, m_train)

    # ---- (f) channel tests of the main system at (m*, r*): as run vs shuffled / zeroed / gold upstream text
    with run.timed("(f) test: channel tests"):
        key = {"latent_steps": m_star, "rounds": r_star, "n": len(run.test), "label": main_label, "format": 2}
        res["channel"] = run.cached("channel", key, lambda: channel_section(run, main, m_star, r_star))

    res["timings"] = dict(run.timings)
    res["this_invocation_s"] = time.perf_counter() - t_start
    res["machine"] = describe_machine(load=False, threads=run.threads)
    res["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    res["data"] = {"train": len(run.train_records), "heldout": len(run.heldout), "validation": len(run.val),
                   "test": len(run.test), "world_steps": list(spec.world_steps)}
    (run.plots / "results.json").write_text(json.dumps(res, indent=1, default=str))
    plots = plot_all(res, run.plots, run.work / "train")
    path = run.out_dir / "results.md"
    path.write_text(render_results(res, plots), encoding="utf-8")
    log(f"report: {path} ({time.perf_counter() - t_start:.0f}s)")
    return path


def channel_section(run: ReportRun, system, m: int, rounds: int) -> dict[str, Any]:
    """Run ``recursivemas.channel.channel_test`` on the test split (gold upstream text from the world records)."""
    from recursivemas.channel import channel_test, gold_texts
    from recursivemas.eval.grading import grade

    examples = run.test
    try:
        gold, gold_note = [gold_texts(system, r) for r in run.test_records], ""
    except ValueError as err:  # a custom graph whose upstream agents have no target field: the page says so
        gold, gold_note = None, str(err)
    report = channel_test(system, run.test_records, lambda text, i: grade(examples[i], text).correct, gold=gold,
                          rounds=rounds, latent_steps=m, batch_size=run.budget.eval_batch, seed=run.seed,
                          progress=run.progress)
    return compute_channel_table(report, rounds=rounds, latent_steps=m, n=len(examples), gold_note=gold_note)


