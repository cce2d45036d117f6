"""The paper's comparisons at small scale, in one run: ``recursivemas report`` writes ``docs/results.md``.

Five sections, each the shape of a table or figure of the paper (arXiv 2604.25917), measured on the
procedural arithmetic world with the system given (by default the bundled sequential system):

- (a) accuracy and cost by rounds 1-3, RecursiveMAS (latent) vs the same agents in text (Table 2's shape);
- (b) trained vs untrained links;
- (c) the latent length ``m`` from 0 upward (the m ablation);
- (d) RecursiveMAS links vs LoRA vs full fine-tuning of the decoding agent, same data and step budget:
  accuracy, trainable parameters, peak memory, time (Table 5's shape);
- (e) teacher-forced vs rollout-consistent outer training.

``m`` and ``rounds`` are chosen on the world's ``validation`` split only (best accuracy, ties to the
cheaper setting, as ``recursivemas tune``); the ``test`` split is evaluated afterwards and never used
for choosing. Every run is seeded. Records (harness JSONL) and training runs go to ``work_dir`` and are
resumed on a rerun; the markdown goes to ``out_dir/results.md``, plots and a JSON of every number to
``out_dir/results/``. Library code only: the CLI is ``recursivemas.commands.report``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from recursivemas import world
from recursivemas.eval.harness import accuracy, evaluate
from recursivemas.eval.report import compare_to_text
from recursivemas.eval.tasks import Example
from recursivemas.eval.tune import pick

PACKAGE = Path(__file__).resolve().parent
TASK = "world"


@dataclass(frozen=True)
class Budget:
    """How much of everything one report run does. ``full`` fits 30 minutes on 2 CPU cores; ``smoke`` is for tests."""

    name: str
    train_records: int  # world train problems the links and the baselines train on
    inner_steps: int  # inner-loop optimizer steps
    outer_steps: int  # outer-loop optimizer steps (teacher and rollout arms alike)
    batch_size: int
    val_n: int  # validation problems for choosing m and rounds
    test_n: int  # test problems for every reported accuracy
    heldout_n: int  # validation problems for the held-out losses logged at the end of training
    m_grid: tuple[int, ...]  # latent lengths swept (section c), 0 first
    rounds_grid: tuple[int, ...] = (1, 2, 3)
    world_steps: tuple[int, int] = (2, 3)  # operations per world problem (the zoo's evaluation range)
    eval_batch: int = 32
    lr_links: float = 1e-3  # inner and outer links
    lr_lora: float = 1e-3
    lr_full: float = 1e-4
    ridge: bool = True  # least-squares initialisation of the outer links before the outer loop (SPEC section 7)

    @property
    def baseline_steps(self) -> int:
        """LoRA and full fine-tuning get as many optimizer steps as RecursiveMAS's two loops together."""
        return self.inner_steps + self.outer_steps


BUDGETS = {
    "full": Budget("full", train_records=2000, inner_steps=100, outer_steps=100, batch_size=4, val_n=100, test_n=200,
                   heldout_n=32, m_grid=(0, 4, 8, 16, 32)),
    "smoke": Budget("smoke", train_records=16, inner_steps=2, outer_steps=2, batch_size=2, val_n=4, test_n=4,
                    heldout_n=2, m_grid=(0, 2, 4), rounds_grid=(1, 2), eval_batch=8),
}

# The paper's figures this report compares against (SPEC section 9, paper Tables 2 and 5).
PAPER = {
    "gain_by_rounds": {1: 3.4, 2: 6.0, 3: 7.2},  # RecursiveMAS - text MAS, accuracy points
    "speedup_by_rounds": {1: 1.2, 2: 1.9, 3: 2.4},
    "token_saving_by_rounds": {1: 34.6, 2: 65.5, 3: 75.6},  # percent
    "cost": {  # scaled sequential: peak GB, trainable params, mean accuracy %
        "RecursiveMAS": (15.29, "13.12M", 74.9), "LoRA": (21.67, "15.92M", 66.9), "Full SFT": (41.40, "4.21B", 68.6),
    },
}


def default_system_path() -> Path:
    """The bundled sequential system: its trained directory if shipped, else the plain system file."""
    trained = PACKAGE / "zoo_models" / "systems" / "sequential"
    return trained if (trained / "system.yaml").is_file() else PACKAGE / "configs" / "sequential.yaml"


# ---------------------------------------------------------------------------------------------- data
def world_examples(split: str, n: int, seed: int, steps: tuple[int, int]) -> list[Example]:
    """``n`` world problems of ``split`` as harness examples (graded strictly as math)."""
    return [Example(r["id"], r["question"], r["answer"], "math", {"task": TASK})
            for r in world.generate(split, n, seed, steps=steps)]


def choose_on_validation(records: Sequence[dict[str, Any]], min_m: int = 1) -> dict[str, Any]:
    """The (latent_steps, rounds) with the best validation accuracy among ``m >= min_m``; ties go to fewer rounds,
    then smaller m (as ``recursivemas tune``). ``grid`` holds every configuration recorded, m = 0 included.

    m = 0 passes nothing between agents (the decoder answers alone after the others' work is dropped), so it is
    not a RecursiveMAS setting: it is the ablation's reference point, not a candidate. Refuses records of any
    other split: this is the one place m and rounds are chosen.
    """
    splits = {r["split"] for r in records}
    if splits != {"validation"}:
        raise ValueError(f"m and rounds are chosen on the validation split only; got records of {sorted(splits)}")
    grid: dict[tuple[int, int], list[dict]] = {}
    for r in records:
        if r["mode"] == "latent":
            grid.setdefault((int(r["latent_steps"]), int(r["rounds"])), []).append(r)
    rows = [{"latent_steps": m, "rounds": n, "n": len(recs), "accuracy": accuracy(recs)} for (m, n), recs in grid.items()]
    candidates = [g for g in rows if g["latent_steps"] >= min_m]
    if not candidates:
        raise ValueError(f"no validation records with latent_steps >= {min_m} to choose from")
    best = pick(candidates)
    return {**best, "grid": sorted(rows, key=lambda g: (g["rounds"], g["latent_steps"])), "best_any_m": pick(rows)}


# ---------------------------------------------------------------------------------------------- systems
def has_trained_links(system_path: str | Path) -> bool:
    """Whether the system as given carries trained links (a saved directory or a links checkpoint)."""
    from recursivemas.config import load_config

    path = Path(system_path)
    config = load_config(path / "system.yaml" if path.is_dir() else path)
    return bool(config.links.checkpoint or config.links.release) or (path.is_dir() and (path / "links.safetensors").is_file())


def load_system(system_path: str | Path):
    from recursivemas import System

    path = Path(system_path)
    return System.from_pretrained(path) if path.is_dir() else System.from_config(path)


def untrained_config(system_path: str | Path) -> dict[str, Any]:
    """The system file as a mapping with its links reset to their seeded random initialisation."""
    path = Path(system_path)
    path = path / "system.yaml" if path.is_dir() else path
    data = yaml.safe_load(path.read_text())
    links = dict(data.get("links") or {})
    links.update(checkpoint=None, release={})
    data.update(links=links, base_dir=str(path.resolve().parent))
    data.pop("tuned_on", None)
    return data


def finetuned_system(config: dict[str, Any], model_dir: Path, method: str):
    """The system with its decoding agent replaced by a LoRA- or fully fine-tuned copy (for single mode)."""
    from transformers import AutoModelForCausalLM

    from recursivemas import System
    from recursivemas.agent import Agent

    system = System.from_config(config)
    name = system.graph.decoder
    agent = system.agents[name]
    if method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(copy.deepcopy(agent.model), str(model_dir)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=agent.dtype)
    model.to(agent.device).eval().requires_grad_(False)
    system.agents[name] = Agent(name, agent.config, model, agent.tokenizer)
    return system


def _shipped_steps(system_path: Path) -> str | None:
    """'N inner + M outer' from a saved system's training summary, when it ships one."""
    summary = system_path / "summary.json" if system_path.is_dir() else None
    if summary is None or not summary.is_file():
        return None
    stages = json.loads(summary.read_text()).get("stages", {})
    return " + ".join(f"{s['steps']} {name}" for name, s in stages.items()) or None


def _params(system) -> dict[str, int]:
    models = {}
    for name, agent in system.agents.items():
        models.setdefault(id(agent.model), (name, sum(p.numel() for p in agent.model.parameters())))
    return {name: n for name, n in models.values()}


# ---------------------------------------------------------------------------------------------- the run
class _Run:
    """Shared state of one report run: budget, paths, data, timings, logging."""

    def __init__(self, system_path: Path, out_dir: Path, work_dir: Path, budget: Budget, seed: int, threads: int,
                 progress: bool, log: Callable[[str], None]) -> None:
        self.system_path, self.out_dir, self.work, self.budget = system_path, out_dir, work_dir, budget
        self.seed, self.threads, self.progress, self.log = seed, threads, progress, log
        self.plots = out_dir / "results"
        for d in (self.work, self.plots):
            d.mkdir(parents=True, exist_ok=True)
        steps = budget.world_steps
        self.train_records = world.generate("train", budget.train_records, seed, steps=steps)
        validation = world.generate("validation", budget.val_n + budget.heldout_n, seed, steps=steps)
        self.val = world_examples("validation", budget.val_n, seed, steps)  # the first val_n of `validation`
        self.heldout = validation[budget.val_n :]  # distinct problems, for training diagnostics only
        self.test = world_examples("test", budget.test_n, seed, steps)
        self.timings_path = self.work / "timings.json"
        self.timings: dict[str, float] = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}

    def timed(self, stage: str):
        run = self

        class _Timer:
            def __enter__(self):
                run.log(f"== {stage}")
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                if exc[0] is None:  # cumulative over resumed runs: a finished stage adds only its reload time
                    run.timings[stage] = run.timings.get(stage, 0.0) + time.perf_counter() - self.t0
                    run.timings_path.write_text(json.dumps(run.timings, indent=1))

        return _Timer()

    def evaluate(self, system, label: str, split: str, **kw) -> list[dict[str, Any]]:
        examples = self.val if split == "validation" else self.test
        return evaluate(system, examples, split, out_path=self.work / "records" / f"{split}_{label}.jsonl",
                        batch_size=self.budget.eval_batch, progress=self.progress, extra={"system": label}, **kw)

    def train(self, system, name: str, **overrides) -> dict[str, Any]:
        """Train (or resume, or reuse a finished run in ``work/train/name``); returns its summary."""
        from recursivemas.train import TrainConfig, train

        out = self.work / "train" / name
        summary_path = out / "summary.json"
        cfg = TrainConfig(batch_size=self.budget.batch_size, seed=self.seed, warmup_steps=min(10, max(1, overrides["steps"] // 10)),
                          eval_generate=False, progress=self.progress, checkpoint_every=25, keep_checkpoints=1, **overrides)
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            done = (out / "links.safetensors").is_file() or (out / "model").is_dir()
            if done and set(summary.get("stages", {})) == set(cfg.stages()):
                self.log(f"   {name}: already trained in {out}")
                return summary
        resume = (out / "checkpoints").is_dir()
        return train(system, self.train_records, cfg, out, eval_records=[], resume=resume)  # held-out: see heldout_gap


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
    """Run stages (a)-(e) and write ``out_dir/results.md`` (+ ``out_dir/results/*.png`` and ``results.json``).

    ``system_path``: a system file or a saved system directory (default: :func:`default_system_path`).
    ``threads``: torch CPU threads (1 is fastest for these tiny models on a shared 2-core machine).
    ``work_dir`` (default ``runs/paper/<budget>``): records and training runs. A rerun with the same ``work_dir``
    resumes (finished training runs and recorded answers are reused); one made with another system, budget or seed
    is refused.
    """
    if isinstance(budget, str) and budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    spec = BUDGETS[budget] if isinstance(budget, str) else budget
    system_path = Path(system_path) if system_path is not None else default_system_path()
    work_dir = Path(work_dir) if work_dir is not None else Path("runs/paper") / spec.name
    _claim_work_dir(work_dir, {"system": str(system_path.resolve()), "budget": asdict(spec), "seed": seed})
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with _lock(work_dir):
            return _run_report(system_path, Path(out_dir), work_dir, spec, seed, threads, progress, log)
    finally:
        torch.set_num_threads(saved_threads)


@contextmanager
def _lock(work_dir: Path):
    """One report run per work directory at a time: two would append to the same records and training runs."""
    path = work_dir / "lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid = int(path.read_text().strip() or 0)
            if pid and _alive(pid):
                raise RuntimeError(f"{work_dir} is in use by report run {pid}; wait for it, or pass another work directory")
            path.unlink(missing_ok=True)  # left by a run that died
    else:
        raise RuntimeError(f"could not lock {work_dir}")
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_work_dir(work_dir: Path, identity: dict[str, Any]) -> None:
    """Resume only a run of the same system, budget and seed: anything else would mix their results."""
    path = work_dir / "run.json"
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as read back
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != identity:
            diff = ", ".join(k for k in identity if previous.get(k) != identity[k])
            raise ValueError(f"{work_dir} holds a report run with a different {diff}; pass another work directory "
                             f"(--work) or delete {work_dir} to start over")
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1))


def _run_report(system_path: Path, out_dir: Path, work_dir: Path, spec: Budget, seed: int, threads: int, progress: bool,
                log: Callable[[str], None]) -> Path:
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    run = _Run(system_path, out_dir, work_dir, spec, seed, threads, progress, log)
    shipped = has_trained_links(system_path)
    base_config = untrained_config(system_path)
    res: dict[str, Any] = {"budget": asdict(spec), "system": str(system_path), "shipped_links": shipped, "seed": seed,
                           "threads": threads, "work_dir": str(work_dir)}

    # ---- training: inner loop once, then the outer loop with teacher latents (rollout arm after m is chosen)
    from recursivemas import System

    with run.timed("train: inner loop"):
        inner = run.train(System.from_config(base_config), "inner", stage="inner", steps=spec.inner_steps, lr=spec.lr_links)
    with run.timed("train: outer loop, teacher latents"):
        sys_teacher = System.from_pretrained(run.work / "train" / "inner")
        sys_teacher.config.links.init = "ridge" if spec.ridge else "random"
        teacher = run.train(sys_teacher, "outer_teacher", stage="outer", steps=spec.outer_steps, lr=spec.lr_links,
                            latent_source="teacher")
        sys_teacher = System.from_pretrained(run.work / "train" / "outer_teacher")

    # ---- choose m and rounds on validation, with the main system (shipped links if any, else this run's)
    main = load_system(system_path) if shipped else sys_teacher
    main_label = "main" if shipped else "teacher"  # without shipped links, the main system is this run's teacher arm
    res["main_links"] = "shipped" if shipped else "trained in this run (teacher latents)"
    res["shipped_training"] = _shipped_steps(system_path) if shipped else None
    res["agents"] = _params(main)
    res["zoo_agents"] = all(PACKAGE / "zoo_models" in Path(main.config.resolve(a.model)).resolve().parents
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
        sys_rollout = System.from_pretrained(run.work / "train" / "inner")
        sys_rollout.config.links.init = "ridge" if spec.ridge else "random"
        m_train = m_star  # rollouts as long as at inference
        sys_rollout.config.latent_steps = m_train
        rollout = run.train(sys_rollout, "outer_rollout", stage="outer", steps=spec.outer_steps, lr=spec.lr_links,
                            latent_source="rollout")
        sys_rollout = System.from_pretrained(run.work / "train" / "outer_rollout")
        res["rollout_train_m"] = m_train
    with run.timed("train: LoRA baseline"):
        lora = run.train(System.from_config(base_config), "lora", method="lora", steps=spec.baseline_steps, lr=spec.lr_lora)
    with run.timed("train: full fine-tuning baseline"):
        full = run.train(System.from_config(base_config), "full", method="full", steps=spec.baseline_steps, lr=spec.lr_full)

    # ---- (a) rounds 1-3, latent vs text, on test
    with run.timed("(a) test: rounds, latent vs text"):
        a_records = run.evaluate(main, main_label, "test", modes=("single", "text", "latent"), rounds=spec.rounds_grid,
                                 latent_steps=m_star)
    res["a"] = section_a(a_records, spec.rounds_grid)

    # ---- (c) m ablation on test at the chosen rounds (reported, never used for choosing)
    with run.timed("(c) test: m ablation"):
        c_test = []
        for m in spec.m_grid:
            c_test += run.evaluate(main, main_label, "test", modes=("latent",), rounds=(r_star,), latent_steps=m)
    res["c"] = section_c(chosen["grid"], c_test, r_star)

    # ---- (b) trained vs untrained links at (m*, r*)
    with run.timed("(b) test: trained vs untrained links"):
        arms = [("untrained", "untrained (seeded random init)", System.from_config(base_config)),
                ("teacher", f"trained here: {spec.inner_steps} inner + {spec.outer_steps} outer steps", sys_teacher)]
        if shipped:
            arms.append(("main", "shipped trained links", main))
        b_rows = []
        for label, desc, system in arms:
            recs = run.evaluate(system, label, "test", modes=("latent",), rounds=(r_star,), latent_steps=m_star)
            b_rows.append({"links": desc, "label": label, **_acc(recs)})
    res["b"] = {"rows": b_rows}

    # ---- (d) links vs LoRA vs full fine-tuning, same data and step budget
    with run.timed("(d) test: links vs LoRA vs full"):
        single = [r for r in a_records if r["mode"] == "single"]
        teacher_test = run.evaluate(sys_teacher, "teacher", "test", modes=("latent",), rounds=(r_star,), latent_steps=m_star)
        rollout_test = run.evaluate(sys_rollout, "rollout", "test", modes=("latent",), rounds=(r_star,), latent_steps=m_star)
        lora_test = run.evaluate(finetuned_system(base_config, run.work / "train" / "lora" / "model", "lora"), "lora", "test",
                                 modes=("single",), rounds=(1,))
        full_test = run.evaluate(finetuned_system(base_config, run.work / "train" / "full" / "model", "full"), "full", "test",
                                 modes=("single",), rounds=(1,))
    # The links arm is trained the way the bundled links are (rollout latents; teacher latents are section e's other arm).
    res["d"] = section_d(spec, inner, rollout, lora, full, rollout_test, lora_test, full_test, single, m_star, r_star)

    # ---- (e) teacher-forced vs rollout-consistent outer training
    with run.timed("(e) test: teacher vs rollout outer training"):
        gaps = {name: heldout_gap(system, run.heldout, m_train, spec.eval_batch)
                for name, system in (("teacher", sys_teacher), ("rollout", sys_rollout))}
    res["e"] = section_e(teacher, rollout, gaps, teacher_test, rollout_test, m_train)

    res["timings"] = dict(run.timings)
    res["this_invocation_s"] = time.perf_counter() - t_start
    res["machine"] = _machine(threads)
    res["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    res["data"] = {"train": len(run.train_records), "heldout": len(run.heldout), "validation": len(run.val),
                   "test": len(run.test), "world_steps": list(spec.world_steps)}
    (run.plots / "results.json").write_text(json.dumps(res, indent=1, default=str))
    plots = make_plots(res, run.plots, run.work / "train")
    path = run.out_dir / "results.md"
    path.write_text(render(res, plots, run.out_dir), encoding="utf-8")
    log(f"report: {path} ({time.perf_counter() - t_start:.0f}s)")
    return path


# ---------------------------------------------------------------------------------------------- sections
def _acc(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    acc = accuracy(records)
    return {"n": n, "accuracy": acc, "ci95": _ci95(acc, n),
            "tokens": sum(r.get("generated_tokens", 0) for r in records) / max(1, n),
            "time_s": sum(r.get("wall_time_s", 0.0) for r in records) / max(1, n)}


def _ci95(p: float, n: int) -> float:
    """Half-width of the Wilson 95% interval, in accuracy units (a guide to what a difference means at this n)."""
    if n == 0:
        return float("nan")
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(abs(centre + half - p), abs(p - (centre - half)))


def section_a(records: Sequence[dict[str, Any]], rounds: Sequence[int]) -> dict[str, Any]:
    ratios = {r["rounds"]: r for r in compare_to_text(records) if r["mode"] == "latent"}
    rows = []
    for n in rounds:
        text = _acc([r for r in records if r["mode"] == "text" and r["rounds"] == n])
        latent = _acc([r for r in records if r["mode"] == "latent" and r["rounds"] == n])
        ratio = ratios.get(n, {})
        rows.append({"rounds": n, "text": text, "latent": latent, "delta": latent["accuracy"] - text["accuracy"],
                     "speedup": ratio.get("speedup"), "token_saving": ratio.get("token_saving")})
    return {"rows": rows, "single": _acc([r for r in records if r["mode"] == "single"])}


def section_c(val_grid: Sequence[dict[str, Any]], test_records: Sequence[dict[str, Any]], r_star: int) -> dict[str, Any]:
    rows = []
    for g in val_grid:
        if g["rounds"] != r_star:
            continue
        test = _acc([r for r in test_records if r["latent_steps"] == g["latent_steps"]])
        rows.append({"m": g["latent_steps"], "val_accuracy": g["accuracy"], "val_n": g["n"], "test": test})
    return {"rounds": r_star, "rows": sorted(rows, key=lambda r: r["m"])}


def _train_cost(*summaries: dict[str, Any]) -> dict[str, Any]:
    stages = [s for summary in summaries for s in summary["stages"].values()]
    return {"steps": sum(s["steps"] for s in stages), "trainable_params": max(s["trainable_params"] for s in stages),
            "peak_mb": max(s["peak_train_memory_mb"] for s in stages), "memory_measure": stages[0]["memory_measure"],
            "train_s": sum(s["train_time_s"] for s in stages), "weights_mb": max(s["weights_mb"] for s in stages)}


def section_d(spec: Budget, inner, outer, lora, full, links_test, lora_test, full_test, single, m_star, r_star) -> dict[str, Any]:
    links = _train_cost(inner, outer)
    links["trainable_params"] = inner["stages"]["inner"]["trainable_params"] + outer["stages"]["outer"]["trainable_params"]
    rows = [
        {"method": "RecursiveMAS (links)", "how": f"latent, m={m_star}, {r_star} round(s)", "lr": spec.lr_links, **links,
         **_acc(links_test)},
        {"method": "LoRA (decoder)", "how": "decoder alone", "lr": spec.lr_lora, **_train_cost(lora), **_acc(lora_test)},
        {"method": "Full FT (decoder)", "how": "decoder alone", "lr": spec.lr_full, **_train_cost(full), **_acc(full_test)},
        {"method": "no training (decoder)", "how": "decoder alone", "lr": None, "steps": 0, "trainable_params": 0,
         "peak_mb": None, "train_s": 0.0, **_acc(single)},
    ]
    return {"rows": rows}


def heldout_gap(system, records: Sequence[dict], m: int, batch: int) -> dict[str, float]:
    """Held-out final-answer cross-entropy of ``system`` with teacher latents and with ``m``-step rollout latents."""
    from recursivemas.train import TrainConfig
    from recursivemas.train.outer import answer_metrics

    cfg = TrainConfig(eval_batch_size=batch, progress=False)
    saved, system.config.latent_steps = system.config.latent_steps, m
    try:
        return {source: answer_metrics(system, records, cfg, source)["answer_loss"] for source in ("teacher", "rollout")}
    finally:
        system.config.latent_steps = saved


def _outer_losses(train_dir: Path, name: str) -> list[float]:
    path = train_dir / name / "train_log.jsonl"
    if not path.is_file():
        return []
    return [e["loss"] for e in map(json.loads, path.read_text().splitlines()) if e.get("stage") == "outer" and "loss" in e]


def section_e(teacher, rollout, gaps, teacher_test, rollout_test, m_train: int) -> dict[str, Any]:
    rows = []
    for source, summary, recs in (("teacher", teacher, teacher_test), ("rollout", rollout, rollout_test)):
        stage = summary["stages"]["outer"]
        rows.append({"source": source, "steps": stage["steps"], "train_s": stage["train_time_s"],
                     "s_per_step": stage["time_per_step_s"], "peak_mb": stage["peak_train_memory_mb"],
                     "heldout_loss_teacher": gaps[source]["teacher"], "heldout_loss_rollout": gaps[source]["rollout"],
                     "final_train_loss": stage.get("final_loss"), **_acc(recs)})
    return {"rows": rows, "m_train": m_train}


# ---------------------------------------------------------------------------------------------- plots
def make_plots(res: dict[str, Any], out: Path, train_dir: Path) -> dict[str, str]:
    """One PNG per section in ``out``; returns section -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}

    def save(fig, name: str, key: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths[key] = name

    rows = res["a"]["rows"]
    xs = [r["rounds"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for mode, style in (("text", "s-"), ("latent", "o-")):
        axes[0].errorbar(xs, [100 * r[mode]["accuracy"] for r in rows], yerr=[100 * r[mode]["ci95"] for r in rows],
                         fmt=style, capsize=3, label="RecursiveMAS (latent)" if mode == "latent" else "text MAS")
        axes[1].plot(xs, [r[mode]["tokens"] for r in rows], style, label=mode)
    axes[0].axhline(100 * res["a"]["single"]["accuracy"], ls="--", color="gray", label="decoder alone")
    axes[0].set(xlabel="rounds", ylabel="test accuracy (%)", title="(a) accuracy by rounds", xticks=xs)
    axes[0].set_ylim(bottom=0)
    axes[1].set(xlabel="rounds", ylabel="generated tokens / question", title="tokens", xticks=xs)
    axes[2].plot(xs, [r["speedup"] or float("nan") for r in rows], "o-", label="measured")
    axes[2].plot(xs, [PAPER["speedup_by_rounds"].get(x, float("nan")) for x in xs], "x--", color="gray", label="paper")
    axes[2].axhline(1.0, color="black", lw=0.5)
    axes[2].set(xlabel="rounds", ylabel="speed-up vs text (x)", title="end-to-end speed-up", xticks=xs)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "a_rounds.png", "a")

    fig, ax = plt.subplots(figsize=(5, 3.4))
    b = res["b"]["rows"]
    ax.bar(range(len(b)), [100 * r["accuracy"] for r in b], yerr=[100 * r["ci95"] for r in b], capsize=3, color="tab:blue")
    ax.set_xticks(range(len(b)), [r["label"] for r in b])
    ax.set(ylabel="test accuracy (%)", title=f"(b) links, m={res['chosen']['latent_steps']}, {res['chosen']['rounds']} round(s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, axis="y")
    save(fig, "b_links.png", "b")

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    c = res["c"]["rows"]
    ms = [r["m"] for r in c]
    ax.plot(ms, [100 * r["val_accuracy"] for r in c], "o-", label="validation (chooses m)")
    ax.plot(ms, [100 * r["test"]["accuracy"] for r in c], "s--", label="test (reported only)")
    ax.axvline(res["chosen"]["latent_steps"], color="gray", ls=":", label=f"chosen m={res['chosen']['latent_steps']}")
    ax.set(xlabel="latent steps m", ylabel="accuracy (%)", title=f"(c) latent length, {res['c']['rounds']} round(s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "c_latent_length.png", "c")

    d = [r for r in res["d"]["rows"] if r["steps"]]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    names = [r["method"].split(" (")[0] for r in d]
    for ax, key, label, scale in ((axes[0], "accuracy", "test accuracy (%)", 100), (axes[1], "trainable_params", "trainable params", 1),
                                  (axes[2], "peak_mb", "peak train memory (MiB)", 1), (axes[3], "train_s", "train time (s)", 1)):
        ax.bar(names, [scale * (r[key] or 0) for r in d], color=["tab:blue", "tab:orange", "tab:green"][: len(d)],
               yerr=[100 * r["ci95"] for r in d] if key == "accuracy" else None, capsize=3)
        ax.set(title=label)
        if key == "accuracy":
            ax.axhline(100 * res["a"]["single"]["accuracy"], ls="--", color="gray", label="decoder alone, untrained")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
        if key == "trainable_params":
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("(d) same data and step budget", fontsize=9)
    save(fig, "d_methods.png", "d")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, label in (("outer_teacher", "teacher latents"), ("outer_rollout", "rollout latents")):
        losses = _outer_losses(train_dir, name)
        if losses:
            axes[0].plot(range(1, len(losses) + 1), losses, label=label)
    axes[0].set(xlabel="outer step", ylabel="answer CE (train batch)", title="(e) outer-loop training loss")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    e = res["e"]["rows"]
    width = 0.35
    for k, (key, label) in enumerate((("heldout_loss_teacher", "held-out CE, teacher latents"),
                                      ("heldout_loss_rollout", "held-out CE, rollout latents"))):
        axes[1].bar([i + k * width for i in range(len(e))], [r[key] or 0 for r in e], width, label=label)
    axes[1].set_xticks([i + width / 2 for i in range(len(e))], [f"trained on {r['source']}" for r in e])
    axes[1].set(ylabel="answer CE", title="train/inference gap")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3, axis="y")
    save(fig, "e_latent_source.png", "e")
    return paths


# ---------------------------------------------------------------------------------------------- markdown
def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _pm(cell: dict[str, Any]) -> str:
    return f"{100 * cell['accuracy']:.1f}% ± {100 * cell['ci95']:.1f}"


def _num(x: Any, fmt: str = "{:,}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def render(res: dict[str, Any], plots: dict[str, str], out_dir: Path) -> str:
    """The whole ``results.md``."""
    spec, chosen, data = res["budget"], res["chosen"], res["data"]
    m, r = chosen["latent_steps"], chosen["rounds"]
    agents = ", ".join(f"{name} ({n:,} params)" for name, n in res["agents"].items())
    total = sum(res["timings"].values())
    lines = [
        "# RecursiveMAS at small scale: the paper's comparisons, measured",
        "",
        f"Generated by `recursivemas report --budget {spec['name']}` (`recursivemas.paper.run_report`) on {res['date']}, "
        f"{res['machine']}. Every number below is measured in that run; nothing is copied from the paper except where a "
        "column says \"paper\". Rerun the command to regenerate this page and its plots.",
        "",
        f"- System: `{_rel(res['system'])}`; agents {agents}. Links evaluated in (a) and (c): {res['main_links']}.",
        f"- Task: the procedural arithmetic world (`recursivemas.world`), problems of {data['world_steps'][0]}-"
        f"{data['world_steps'][1]} operations; strict grading (an answer without `#### n` is wrong).",
        f"- Data: {data['train']} train problems for every training run; {data['validation']} validation problems for "
        f"choosing m and rounds; {data['test']} test problems for every reported accuracy; {data['heldout']} further "
        "validation problems (not among those) for the held-out losses in (e). Splits are disjoint by construction.",
        f"- **m and rounds were chosen on the validation split only**: the best validation accuracy over m in "
        f"{{{', '.join(str(x) for x in spec['m_grid'] if x > 0)}}} x rounds in {{{', '.join(map(str, spec['rounds_grid']))}}} "
        f"(ties to fewer rounds, then smaller m) gave **m = {m}, rounds = {r}** ({100 * chosen['accuracy']:.1f}% on "
        f"{chosen['n']} validation problems). m = 0 is not a candidate: it passes nothing between agents (the decoder "
        "answers alone), so it is the reference point of the m ablation (c), not a RecursiveMAS setting. The test split "
        "was evaluated afterwards and never used for choosing; (a), (b), (d) and (e) use these values.",
        f"- Accuracies are given with the half-width of a Wilson 95% interval: at n = {data['test']}, differences smaller "
        "than about that are not evidence of anything.",
        f"- Seed {res['seed']} for data, link initialisation, data order and decoding (greedy); torch threads: {res['threads']}.",
        "",
    ]
    lines += _headline(res)
    lines += _section_a(res, plots)
    lines += _section_b(res, plots)
    lines += _section_c(res, plots)
    lines += _section_d(res, plots)
    lines += _section_e(res, plots)
    lines += ["## Stage timings", "",
              "Wall time of each stage, summed over invocations when the run was resumed (a finished stage then adds only its "
              "reload time).", "", "| stage | wall time |", "|---|---|"]
    lines += [f"| {name} | {_fmt_s(s)} |" for name, s in res["timings"].items()]
    lines += [f"| **total** | **{_fmt_s(total)}** |", "",
              f"Training settings: batch {spec['batch_size']}, AdamW (0.9, 0.95), cosine schedule; links lr {spec['lr_links']}, "
              f"LoRA lr {spec['lr_lora']} (r = 8, alpha 16, every linear layer), full fine-tuning lr {spec['lr_full']}; outer "
              f"links initialised by ridge regression: {spec['ridge']}. Records and training runs: `{_rel(res['work_dir'])}/` (not committed).",
              ""]
    return "\n".join(lines)


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _img(plots: dict[str, str], key: str) -> list[str]:
    return [f"![{key}](results/{plots[key]})", ""] if key in plots else []


def _headline(res: dict[str, Any]) -> list[str]:
    a = {row["rounds"]: row for row in res["a"]["rows"]}
    top = a[max(a)]
    b = {row["label"]: row for row in res["b"]["rows"]}
    d = {row["method"]: row for row in res["d"]["rows"]}
    e = {row["source"]: row for row in res["e"]["rows"]}
    links, lora, full = d["RecursiveMAS (links)"], d["LoRA (decoder)"], d["Full FT (decoder)"]
    trained = b.get("main", b["teacher"])
    total = sum(res["timings"].values())
    return [
        "## Headline", "",
        f"- The whole run took {_fmt_s(total)} of wall time ({res['machine']}; see Stage timings).",
        f"- (a) At {max(a)} rounds: RecursiveMAS {_pm(top['latent'])} vs text MAS {_pm(top['text'])} "
        f"({100 * top['delta']:+.1f} points; paper: +{PAPER['gain_by_rounds'].get(max(a), float('nan'))}); "
        f"{_num(top['speedup'], '{:.2f}')}x faster, {_pct(top['token_saving'])} fewer generated tokens "
        f"(paper: {PAPER['speedup_by_rounds'].get(max(a), '-')}x, {PAPER['token_saving_by_rounds'].get(max(a), '-')}%).",
        f"- (b) Trained links {_pm(trained)} vs untrained {_pm(b['untrained'])}.",
        f"- (c) Validation accuracy by m at {res['c']['rounds']} round(s): "
        + ", ".join(f"m={row['m']}: {_pct(row['val_accuracy'])}" for row in res["c"]["rows"]) + "." + _m0_note(res),
        f"- (d) Same data and {links['steps']} optimizer steps: links {_pm(links)} ({links['trainable_params']:,} params), "
        f"LoRA {_pm(lora)} ({lora['trainable_params']:,}), full {_pm(full)} ({full['trainable_params']:,}).",
        f"- (e) Outer loop on teacher latents {_pm(e['teacher'])} vs on rollout latents {_pm(e['rollout'])}.",
        "",
    ]


def _m0_note(res: dict[str, Any]) -> str:
    """A sentence when passing nothing (m = 0) beat or tied every latent length on validation."""
    best, chosen = res["best_any_m"], res["chosen"]
    if best["latent_steps"] != 0:
        return ""
    if best["accuracy"] > chosen["accuracy"]:
        return (f" Passing no latents at all (m = 0, {best['rounds']} round(s)) scored best on validation "
                f"({_pct(best['accuracy'])} vs {_pct(chosen['accuracy'])} for the chosen m = {chosen['latent_steps']}): "
                "at this scale the latent channel costs accuracy.")
    return (f" Passing no latents at all (m = 0, {best['rounds']} round(s)) tied the chosen m = {chosen['latent_steps']} "
            f"on validation ({_pct(best['accuracy'])} both): at this scale the latent channel adds nothing measurable there.")


def _same(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """Whether two accuracies lie within each other's 95% intervals (no evidence of a difference at this n)."""
    return abs(x["accuracy"] - y["accuracy"]) <= min(x["ci95"], y["ci95"])


def _holds(cond: bool) -> str:
    return "**holds here**" if cond else "**does not hold here**"


def _section_a(res: dict[str, Any], plots: dict[str, str]) -> list[str]:
    a, spec = res["a"], res["budget"]
    m, steps = res["chosen"]["latent_steps"], spec["inner_steps"] + spec["outer_steps"]
    lines = ["## (a) Accuracy by rounds, latent vs text (the paper's Table 2 shape)", "",
             f"The same agents, prompts and graph; text MAS decodes every hand-off, RecursiveMAS passes m = {m} latent "
             f"thoughts through the links. Test split, {a['single']['n']} problems. The decoding agent alone scores "
             f"{_pm(a['single'])}.", "",
             "| rounds | text MAS | RecursiveMAS | delta (points) | paper delta | tokens/q text -> latent | speed-up | paper | "
             "token saving | paper |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in a["rows"]:
        n = row["rounds"]
        lines.append(f"| {n} | {_pm(row['text'])} | {_pm(row['latent'])} | {100 * row['delta']:+.1f} | "
                     f"+{PAPER['gain_by_rounds'].get(n, '-')} | {row['text']['tokens']:.0f} -> {row['latent']['tokens']:.0f} | "
                     f"{_num(row['speedup'], '{:.2f}x')} | {PAPER['speedup_by_rounds'].get(n, '-')}x | {_pct(row['token_saving'])} | "
                     f"{PAPER['token_saving_by_rounds'].get(n, '-')}% |")
    lines.append("")
    lines += _img(plots, "a")
    rows = a["rows"]
    better = all(row["delta"] > 0 for row in rows)
    growing = all(b["delta"] >= a_["delta"] for a_, b in zip(rows, rows[1:]))
    faster = all((row["speedup"] or 0) > 1 for row in rows)
    saving = all((row["token_saving"] or 0) > 0 for row in rows)
    lines.append(f"Paper claim, RecursiveMAS beats text MAS at every number of rounds: {_holds(better)}. "
                 f"The gain grows with rounds: {_holds(growing and better)}. Faster end to end: {_holds(faster)}. "
                 f"Fewer generated tokens: {_holds(saving)}.")
    if not better:
        zoo = (" The bundled zoo agents were pretrained reading each other's gold text in their slots, so a text hand-off "
               "is exactly the input they know, while latents are new to them.") if res.get("zoo_agents") else ""
        if not res["shipped_links"]:
            budget = f"the links trained in this run had {steps} optimizer steps on {res['data']['train']} problems"
        elif res.get("shipped_training"):
            budget = f"the shipped links had {res['shipped_training']} optimizer steps"
        else:
            budget = ("the shipped links had a CPU-sized training budget (the bundled systems' links are trained by "
                      "`recursivemas zoo links`, see docs/zoo.md)")
        lines.append(
            f"Why, at this scale: the latent channel only carries what its links learned to carry, and {budget} (the paper "
            "trains 20k steps with 1.5-4B agents), while a text hand-off needs no training at all." + zoo)
    single = a["single"]["accuracy"]
    if all(single >= max(row["text"]["accuracy"], row["latent"]["accuracy"]) for row in rows):
        lines.append(f"Neither kind of hand-off helps on this task: the decoding agent alone scores {_pm(a['single'])}, at "
                     "least as much as either system at every number of rounds, so the upstream agents have little to add "
                     "and every message, text or latent, is a chance to mislead it.")
    if all(_same(row["latent"], row["text"]) for row in rows):
        lines.append(f"Every accuracy difference in this table is within the 95% intervals at n = {a['single']['n']}: "
                     "in accuracy the two systems are indistinguishable here; the cost columns are where they differ.")
    if saving and not faster:
        lines.append("Fewer tokens but no speed-up: with agents this small a forward call costs about the same whether it "
                     "decodes a token or runs a latent step (per-call framework overhead dominates the vocabulary "
                     "projection the method removes), so latent steps are not cheaper than decoded tokens.")

    lines.append("")
    return lines


def _section_b(res: dict[str, Any], plots: dict[str, str]) -> list[str]:
    b = res["b"]["rows"]
    m, r = res["chosen"]["latent_steps"], res["chosen"]["rounds"]
    lines = ["## (b) Trained vs untrained links", "",
             f"RecursiveMAS at the validation-chosen m = {m}, {r} round(s), test split. Untrained: inner and outer links at "
             "their seeded random initialisation (residual MLPs with LayerNorm, SPEC section 2).", "",
             "| links | test accuracy | tokens/q | time/q (s) |", "|---|---|---|---|"]
    for row in b:
        lines.append(f"| {row['links']} | {_pm(row)} | {row['tokens']:.0f} | {row['time_s']:.3f} |")
    lines.append("")
    lines += _img(plots, "b")
    untrained = next(row for row in b if row["label"] == "untrained")
    trained = [row for row in b if row["label"] != "untrained"]
    wins = all(row["accuracy"] > untrained["accuracy"] for row in trained)
    lines.append(f"The method's premise, trained links beat untrained ones: {_holds(wins)}"
                 + (" (within the 95% intervals)." if any(_same(row, untrained) for row in trained) else "."))
    if not wins:
        single = res["a"]["single"]
        lines.append(f"Why, at this scale: the trained links had {res['budget']['inner_steps']} inner and "
                     f"{res['budget']['outer_steps']} outer steps, and the decoding agent alone already scores {_pm(single)}: "
                     "what the latents add (or take away) is small next to what the decoder gets from the question itself, "
                     "and within the confidence intervals at this number of test problems.")
    lines.append("")
    return lines


def _section_c(res: dict[str, Any], plots: dict[str, str]) -> list[str]:
    c = res["c"]
    lines = ["## (c) Latent length m (the m ablation)", "",
             f"RecursiveMAS at {c['rounds']} round(s) (the validation-chosen rounds). The validation column chose m; the test "
             "column is reported for every m only to show how the choice transfers, and was not used for choosing.", "",
             "| m | validation accuracy | test accuracy | tokens/q | time/q (s) |", "|---|---|---|---|---|"]
    for row in c["rows"]:
        mark = " (chosen)" if row["m"] == res["chosen"]["latent_steps"] else " (nothing passed)" if row["m"] == 0 else ""
        lines.append(f"| {row['m']}{mark} | {_pct(row['val_accuracy'])} (n={row['val_n']}) | {_pm(row['test'])} | "
                     f"{row['test']['tokens']:.0f} | {row['test']['time_s']:.3f} |")
    lines.append("")
    lines += _img(plots, "c")
    rows = c["rows"]
    zero = next((row for row in rows if row["m"] == 0), None)
    best = max(rows, key=lambda row: row["val_accuracy"])
    rises = zero is not None and best["m"] > 0 and best["val_accuracy"] > zero["val_accuracy"]
    lines.append(f"Paper claim, accuracy rises from m = 0 with more latent steps (then flattens around m = 80): "
                 f"{_holds(rises)} on validation.")
    if not rises:
        lines.append("Why, at this scale: m = 0 means the agents before the decoder pass nothing and it answers from the "
                     "question alone. Latent thoughts help only when the links map them to something the receiver can use; "
                     "links trained briefly, and on rollouts of one length, turn other lengths into extra noise in its "
                     "prompt, so more of them does not help. (Section (e) compares links trained on teacher-forced latents "
                     "with links trained on m-step rollouts.)")
    lines.append("")
    return lines


def _section_d(res: dict[str, Any], plots: dict[str, str]) -> list[str]:
    d = res["d"]["rows"]
    lines = ["## (d) RecursiveMAS links vs LoRA vs full fine-tuning (the paper's Table 5 shape)", "",
             "Same training problems, batch size and number of optimizer steps (RecursiveMAS: inner loop + outer loop with "
             "rollout latents, as the bundled links are trained; LoRA and full fine-tuning of the decoding agent alone, on question -> its own target, for as "
             "many steps as the two loops together). Baselines answer alone (single mode); RecursiveMAS as a system at the "
             "validation-chosen m and rounds. Peak memory is the training-time growth of the process's resident set "
             "(CPU; activations, gradients and optimizer state, not the frozen weights).", "",
             "| method | evaluated as | optimizer steps | lr | trainable params | peak train memory (MiB) | train time | "
             "test accuracy |", "|---|---|---|---|---|---|---|---|"]
    for row in d:
        lines.append(f"| {row['method']} | {row['how']} | {row['steps']} | {_num(row['lr'], '{:g}')} | "
                     f"{row['trainable_params']:,} | {_num(row['peak_mb'], '{:.1f}')} | {_fmt_s(row['train_s'])} | {_pm(row)} |")
    lines += ["", "Paper (scaled sequential, 4B agents, GPU): RecursiveMAS 15.29 GB, 13.12M params, 74.9%; LoRA 21.67 GB, "
              "15.92M, 66.9%; full SFT 41.40 GB, 4.21B, 68.6%.", ""]
    lines += _img(plots, "d")
    links, lora, full = d[0], d[1], d[2]
    acc = links["accuracy"] > max(lora["accuracy"], full["accuracy"])
    fewer = links["trainable_params"] < full["trainable_params"]
    fewer_lora = links["trainable_params"] < lora["trainable_params"]
    mem = (links["peak_mb"] or 0) < min(lora["peak_mb"] or 0, full["peak_mb"] or 0)
    faster = links["train_s"] < min(lora["train_s"], full["train_s"])
    close = " (the differences are within the 95% intervals)" if _same(links, lora) and _same(links, full) else ""
    lines.append(f"Paper claims: more accurate than both baselines: {_holds(acc)}{close}; fewer trainable parameters than "
                 f"full fine-tuning: {_holds(fewer)}; fewer than LoRA: {_holds(fewer_lora)}; less peak memory than both: "
                 f"{_holds(mem)}; cheaper to train: {_holds(faster)}.")
    why = []
    biggest = max(res["agents"].values())
    if not acc:
        why.append(f"in {links['steps']} steps, fine-tuning the decoding agent moves its answer tokens directly, while the "
                   "links must first build a new channel between several frozen models")
    if not mem or not faster:
        why.append(f"an outer-loop step runs every agent through every round with gradients through each of them, while a "
                   f"baseline step runs one agent once; the paper's memory and cost advantage comes from not storing "
                   f"gradients and optimizer state for billions of weights, and the largest agent here has {biggest:,} "
                   "parameters, so that state is negligible next to activations (CPU resident-set growth at this size is "
                   "also within allocator noise)")
    if not fewer or not fewer_lora:
        why.append("link width scales with the agents' hidden sizes (an inner link is 2d^2 + 6d, an outer link 3ab + 2b^2 + "
                   "2a + 6b), and with hidden sizes this small the links of several agents outweigh rank-8 LoRA adapters on "
                   "one of them")
    if why:
        lines.append("Why, at this scale: " + "; ".join(why) + ".")
    lines.append("")
    return lines


def _section_e(res: dict[str, Any], plots: dict[str, str]) -> list[str]:
    e = res["e"]["rows"]
    m, r = res["chosen"]["latent_steps"], res["chosen"]["rounds"]
    lines = ["## (e) Teacher-forced vs rollout-consistent outer training", "",
             "Both arms start from the same inner links and the same ridge-initialised outer links, and train the outer "
             f"links for the same steps. Teacher: the latents crossing each edge are the sender's teacher-forced states over "
             f"its target text (cut to 80), as the public release trains. Rollout: they are {res['e']['m_train']} free-running "
             "latent thoughts, as at inference. Held-out answer cross-entropy is measured with both kinds of latents on the "
             f"held-out validation problems; the difference is the train/inference gap. Test accuracy at m = {m}, {r} round(s).",
             "", "| outer loop on | steps | s/step | train time | held-out CE, teacher latents | held-out CE, rollout latents | "
             "test accuracy |", "|---|---|---|---|---|---|---|"]
    for row in e:
        lines.append(f"| {row['source']} latents | {row['steps']} | {row['s_per_step']:.2f} | {_fmt_s(row['train_s'])} | "
                     f"{_num(row['heldout_loss_teacher'], '{:.3f}')} | {_num(row['heldout_loss_rollout'], '{:.3f}')} | {_pm(row)} |")
    lines.append("")
    lines += _img(plots, "e")
    teacher, rollout = e[0], e[1]
    gap_t = (teacher["heldout_loss_rollout"] or 0) - (teacher["heldout_loss_teacher"] or 0)
    closes = (rollout["heldout_loss_rollout"] or math.inf) < (teacher["heldout_loss_rollout"] or math.inf)
    lines.append(f"The paper trains on teacher latents only and does not measure the gap. Here, teacher-trained links lose "
                 f"{gap_t:+.3f} nats of held-out answer CE when fed rollout latents instead of teacher ones. Training on "
                 f"rollouts lowers the CE with rollout latents (what inference sees): {_holds(closes)}; test accuracy "
                 f"{100 * (rollout['accuracy'] - teacher['accuracy']):+.1f} points (rollout - teacher"
                 f"{', within the 95% intervals' if _same(rollout, teacher) else ''}), "
                 f"at {rollout['s_per_step'] / max(teacher['s_per_step'], 1e-9):.1f}x the time per step.")
    lines.append("")
    return lines


def _machine(threads: int) -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores ({threads} torch thread(s)){gpu}, torch {torch.__version__}"


__all__ = ["BUDGETS", "Budget", "choose_on_validation", "default_system_path", "run_report", "world_examples"]
