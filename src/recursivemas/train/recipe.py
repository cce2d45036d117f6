"""The training recipe: inner loop, outer loop or a baseline, with logging, checkpoints and resume.

``train(system, records, TrainConfig(...), out_dir)`` runs the stages of ``config.stage`` (``inner``,
``outer`` or ``all`` = inner then outer) for ``method="recursivemas"``, or fine-tunes the decoding agent
alone for ``method="lora"|"full"``. Each step: the global batch of that step (fixed by seed and step),
this rank's share of it, the stage's loss, backward, gradients averaged over ranks, gradient norms
logged, clipped, AdamW (betas 0.9/0.95, no weight decay) and a cosine schedule with linear warm-up.

Everything lands in ``out_dir``: ``train_log.jsonl`` (one line per step: loss, lr, gradient norm per link
and, for the outer loop, per link per round; evaluation lines), ``checkpoints/``, the trained system
(``system.yaml`` + ``links.safetensors``, or ``model/`` for a baseline), ``summary.json`` and ``report.md``.
Settings come from the system file's ``training:`` section, overridden by the caller (the CLI flags).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from recursivemas.machine import describe as describe_machine
from recursivemas.train import checkpoint as ckpt
from recursivemas.train.baselines import METHODS, FinetuneStage
from recursivemas.train.cost import MemoryMeter, StepTimer, trainable_parameters, weights_mb
from recursivemas.train.data import BatchSchedule, split_holdout
from recursivemas.train.distributed import Dist
from recursivemas.train.inner import InnerStage
from recursivemas.train.outer import LATENT_SOURCES, OuterStage, ridge_init_outer
from recursivemas.validation import check_keys, check_types

STAGES = ("inner", "outer", "all")
LOG_NAME, SUMMARY_NAME, REPORT_NAME = "train_log.jsonl", "summary.json", "report.md"


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss or gradient, or settings that cannot work."""


@dataclass
class TrainConfig:
    """Every training setting; the system file's ``training:`` section may set any of them."""

    stage: str = "all"  # inner | outer | all (inner, then outer)
    method: str = "recursivemas"  # recursivemas | lora | full
    steps: int = 100  # optimizer steps per stage
    inner_steps: int | None = None  # inner-loop steps when different from `steps`
    lr: float = 1e-4  # the release used 5e-4; re-runs found the outer loop unstable there (docs/method.md#training)
    inner_lr: float | None = None  # defaults to lr
    batch_size: int = 4  # global batch, split across data-parallel ranks
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0  # the cosine schedule decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm (per agent's inner link in the inner loop); 0 = off
    seed: int = 0
    rounds: int | None = None  # defaults to the system's rounds
    latent_steps: int | None = None  # rollout latents: thoughts per agent (defaults to the system's latent_steps)
    link_init: str | None = None  # outer links: random | ridge (defaults to the system file's links.init)
    latent_source: str = "teacher"  # teacher | rollout | mixed
    rollout_share: float = 1.0  # mixed: probability of a rollout step at the end of training (0 at the start)
    max_latent_tokens: int = 80  # teacher latents: first positions of the sender's target
    max_target_tokens: int = 256  # role targets are cut to this many tokens
    nonfinal_weight: float = 0.0  # weight of the mean answer CE of non-final rounds (the release option used 0.1)
    upstream_weight: float = 0.0  # weight of the other agents' own-target CE where all their slots are filled
    inner_mse_weight: float = 0.0  # add this times the MSE to the inner loop's cosine loss
    inner_slots: str = "gold"  # inner loop: upstream gold text on forward slots ("gold") or all slots empty
    ridge_lambda: float = 1e-2  # ridge init (links.init: ridge): regulariser
    ridge_records: int = 64  # ridge init: training records used for the fit
    gradient_checkpointing: bool = True  # on the frozen LLMs' teacher-forced passes
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: list[str] | None = None  # default: every linear layer
    checkpoint_every: int = 50  # steps between checkpoints (and always at a stage's end)
    keep_checkpoints: int = 2
    eval_every: int = 0  # steps between held-out evaluations (0: only at the end of each stage)
    eval_fraction: float = 0.1  # held out from the training data when no eval data is given
    eval_batch_size: int = 8
    eval_generate: bool = True  # also decode greedy answers and report exact match
    progress: bool = True

    def __post_init__(self) -> None:
        check_types("training", {f.name: getattr(self, f.name) for f in fields(self)}, type(self))  # "3" is not 3
        checks = [
            (self.stage in STAGES, f"stage {self.stage!r} is unknown; choose one of {', '.join(STAGES)}"),
            (self.method in METHODS, f"method {self.method!r} is unknown; choose one of {', '.join(METHODS)}"),
            (self.latent_source in LATENT_SOURCES, f"latent_source {self.latent_source!r} is unknown; choose one of {', '.join(LATENT_SOURCES)}"),
            (self.inner_slots in ("gold", "empty"), f"inner_slots {self.inner_slots!r} is unknown; choose 'gold' or 'empty'"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.inner_steps is None or self.inner_steps >= 1, f"inner_steps must be >= 1, got {self.inner_steps}"),
            (self.lr > 0 and (self.inner_lr is None or self.inner_lr > 0), f"learning rates must be > 0, got {self.lr}, {self.inner_lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_latent_tokens >= 1 and self.max_target_tokens >= 1, "max_latent_tokens and max_target_tokens must be >= 1"),
            (self.upstream_weight >= 0 and self.nonfinal_weight >= 0, "nonfinal_weight and upstream_weight must be >= 0"),
            (0 <= self.rollout_share <= 1, f"rollout_share must lie in [0, 1], got {self.rollout_share}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.rounds is None or self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (self.latent_steps is None or self.latent_steps >= 1, f"latent_steps must be >= 1, got {self.latent_steps}"),
            (self.link_init in (None, "random", "ridge"), f"link_init {self.link_init!r} is unknown; choose 'random' or 'ridge'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_sources(cls, section: dict[str, Any] | None, **overrides: Any) -> "TrainConfig":
        """The system file's ``training:`` section, then ``overrides`` (None values are ignored)."""
        values = dict(section or {}) if isinstance(section, dict) or section is None else section
        check_keys("training", values, [f.name for f in fields(cls)])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def stages(self) -> list[str]:
        if self.method != "recursivemas":
            return [self.method]
        return ["inner", "outer"] if self.stage == "all" else [self.stage]

    def steps_for(self, stage: str) -> int:
        return (self.inner_steps or self.steps) if stage == "inner" else self.steps

    def lr_for(self, stage: str) -> float:
        return (self.inner_lr or self.lr) if stage == "inner" else self.lr


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0):
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _make_stage(name: str, system: Any, cfg: TrainConfig):
    if name == "inner":
        return InnerStage(system, cfg)
    if name == "outer":
        return OuterStage(system, cfg, cfg.steps_for("outer"))
    return FinetuneStage(system, cfg, name)


def _params(stage) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for module in stage.modules().values():
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _grad_norm(params) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


class _Log:
    """``train_log.jsonl``, written by rank 0 only, one JSON object per line."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, order: Sequence[str], stage: str, step: int, done: bool) -> None:
        """Drop lines a killed run wrote after its last checkpoint, so a resumed log reads as one run.

        A stage's final evaluation line (``final: true``) is written after its last checkpoint; it is kept
        only when that checkpoint is marked done, else the resumed run writes it again. A torn last line
        (killed mid-write) is dropped.
        """
        if not self.enabled or not self.path.is_file():
            return
        rank = {s: i for i, s in enumerate(order)}
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (rank.get(entry.get("stage"), -1), entry.get("step", 0))
            if key < (rank[stage], step) or (key == (rank[stage], step) and (done or not entry.get("final"))):
                keep.append(line)
        ckpt._write_atomic(self.path, ("\n".join(keep) + "\n" if keep else "").encode())

    def restart(self) -> None:
        """Start an empty log (a fresh run, or a resume that found no checkpoint)."""
        if self.enabled and self.path.exists():
            self.path.unlink()

    def write(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")


def train(
    system: Any,
    records: Sequence[dict],
    config: TrainConfig,
    out_dir: str | Path,
    eval_records: Sequence[dict] | None = None,
    resume: bool = False,
    dist: Dist | None = None,
) -> dict[str, Any]:
    """Train and return the summary (also written to ``out_dir/summary.json``). See the module docstring."""
    dist = dist or Dist()
    out = Path(out_dir)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    records = list(records)
    if eval_records is None:
        records, eval_records = split_holdout(records, config.eval_fraction)
    eval_records = list(eval_records)
    order = config.stages()
    log = _Log(out / LOG_NAME, dist.is_main)
    state = ckpt.latest_checkpoint(out) if resume else None
    if not resume and (out / "checkpoints" / ckpt.LATEST).is_file():
        raise ckpt.CheckpointError(
            f"{out} already holds checkpoints of an earlier run; pass --resume to continue it, or choose a new --out directory"
        )
    if resume and state is None and dist.is_main:
        tqdm.write(f"--resume: no checkpoint in {out}/checkpoints yet; starting from the beginning")
    if state is None:  # a fresh run, or a resume with nothing to resume from: the old log's lines would repeat
        log.restart()
    if state is not None:
        if state.stage not in order:
            raise ckpt.CheckpointError(f"the checkpoint in {out} is for stage {state.stage!r}, but this run trains {', '.join(order)}")
        if state.meta.get("steps") != config.steps_for(state.stage):
            raise ckpt.CheckpointError(
                f"the checkpoint in {out} was written by a run of {state.meta.get('steps')} {state.stage} steps; "
                f"resume with the same --steps, or start over in a new --out directory"
            )
        log.truncate_after(order, state.stage, state.step, bool(state.meta.get("done")))
    summary: dict[str, Any] = {
        "method": config.method,
        "stages": {},
        "config": asdict(config),
        "train_records": len(records),
        "eval_records": len(eval_records),
        "world_size": dist.world,
        "machine": describe_machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if state is not None and (out / SUMMARY_NAME).is_file():
        summary["stages"] = json.loads((out / SUMMARY_NAME).read_text()).get("stages", {})
    stage_obj = None
    for name in order:
        resume_here = None
        if state is not None:
            if order.index(name) < order.index(state.stage):
                continue  # finished before the checkpoint was written
            if name == state.stage:
                resume_here = state
        stage_obj = _run_stage(name, system, records, eval_records, config, out, log, dist, resume_here)
        summary["stages"][name] = stage_obj.summary
        if dist.is_main:
            ckpt._write_atomic(out / SUMMARY_NAME, json.dumps(summary, indent=1).encode())
    if dist.is_main:
        if config.method == "recursivemas":
            system.save_pretrained(out)
        else:
            stage_obj.stage.save(out / "model")
        ckpt._write_atomic(out / SUMMARY_NAME, json.dumps(summary, indent=1).encode())
        (out / REPORT_NAME).write_text(report(summary))
    dist.barrier()
    return summary


@dataclass
class _StageRun:
    stage: Any
    summary: dict[str, Any] = field(default_factory=dict)


def _load_resume_state(stage, optimizer, scheduler, state) -> None:
    """Restore a stage from a checkpoint; one that does not fit this system or these settings is a CheckpointError."""
    try:
        stage.load_state_tensors(state.tensors())
        saved = state.training_state()
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        ckpt.set_rng_state(saved["rng"])
    except ckpt.CheckpointError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ckpt.CheckpointError(
            f"checkpoint {state.path} does not fit this run ({type(err).__name__}: {str(err)[:300]}); it was written for "
            f"another system or other settings: resume with those, or start over in a new --out directory"
        ) from err


def _run_stage(name, system, records, eval_records, cfg: TrainConfig, out: Path, log: _Log, dist: Dist, state) -> _StageRun:
    steps = cfg.steps_for(name)
    stage = _make_stage(name, system, cfg)
    run = _StageRun(stage)
    start_step = state.step if state is not None else 0
    if state is not None and start_step >= steps and state.meta.get("done") and state.meta.get("summary"):
        try:
            stage.load_state_tensors(state.tensors())
        except (RuntimeError, ValueError, KeyError) as err:
            raise ckpt.CheckpointError(f"checkpoint {state.path} does not fit this system ({type(err).__name__}: {str(err)[:300]})") from err
        run.summary = state.meta["summary"]
        return run
    if name == "outer" and state is None and (cfg.link_init or system.config.links.init) == "ridge":
        fits = ridge_init_outer(system, records[: cfg.ridge_records], cfg)
        log.write({"stage": name, "step": 0, "ridge_init_cosine": fits})
    params = _params(stage)
    if not params:
        raise TrainingError(f"stage {name!r} has nothing to train")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr_for(name), betas=(0.9, 0.95), weight_decay=0.0, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, steps, cfg.min_lr_ratio))
    if state is not None:
        _load_resume_state(stage, optimizer, scheduler, state)
    dist.broadcast_parameters([t for t in stage.state_tensors().values()])
    schedule = BatchSchedule(len(records), cfg.batch_size, cfg.seed)
    device = next(iter(params)).device
    meter = MemoryMeter(device).start()
    timer = StepTimer()
    # what the summary needs from steps before a resume travels in each checkpoint
    progress = dict(state.meta.get("progress", {})) if state is not None else {}
    timer.times = list(progress.get("times", []))
    first_loss, recent = progress.get("first_loss"), list(progress.get("recent_losses", []))
    groups = stage.modules()
    last_good = state.path if state is not None else None
    bar = tqdm(total=steps, initial=min(start_step, steps), desc=f"train {name}", unit="step", disable=not (cfg.progress and dist.is_main))
    meta = {"method": cfg.method, "steps": steps, "seed": cfg.seed, "world_size": dist.world}
    for step in range(start_step, steps):
        with timer:
            batch = [records[i] for i in schedule.shard(step, dist.rank, dist.world)]
            loss, metrics = stage.loss(batch, step)
            global_loss = dist.mean_float(float(loss.detach()))
            if not math.isfinite(global_loss):
                raise TrainingError(_nan_message(name, step + 1, "loss", global_loss, last_good, cfg))
            loss.backward()
            dist.average_gradients(params)
            norms = {key: _grad_norm([p for p in module.parameters() if p.requires_grad]) for key, module in groups.items()}
            total_norm = math.sqrt(sum(v * v for v in norms.values()))
            if not math.isfinite(total_norm):
                raise TrainingError(_nan_message(name, step + 1, "gradient norm", total_norm, last_good, cfg))
            if cfg.grad_clip:
                if getattr(stage, "clip_separately", False):
                    for module in groups.values():
                        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], cfg.grad_clip)
                else:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        first_loss = global_loss if first_loss is None else first_loss
        recent = (recent + [global_loss])[-5:]
        entry = {"stage": name, "step": step + 1, "loss": global_loss, "lr": lr, "grad_norm": total_norm, "time_s": timer.last}
        entry.update({f"grad/{k}": v for k, v in norms.items()})
        if hasattr(stage, "grad_metrics"):
            entry.update(stage.grad_metrics(dist))
        entry.update({k: v for k, v in metrics.items() if not k.startswith(("loss/", "cos/")) or dist.world == 1})
        log.write(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{global_loss:.4f}")
        done = step + 1 == steps
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and not done and eval_records:
            _evaluate(stage, eval_records, name, step + 1, log, dist, timer)
        if (step + 1) % cfg.checkpoint_every == 0 or done:
            if dist.is_main:  # "done" is set only once the final evaluation and summary exist (below)
                progress = {"first_loss": first_loss, "recent_losses": recent, "times": timer.times}
                last_good = ckpt.save_checkpoint(
                    out, name, step + 1, stage.state_tensors(), optimizer, scheduler, {**meta, "done": False, "progress": progress},
                    "links.safetensors" if cfg.method == "recursivemas" else "trainable.safetensors", cfg.keep_checkpoints,
                )
            dist.barrier()
    bar.close()
    evaluation = _evaluate(stage, eval_records, name, steps, log, dist, timer, final=True) if eval_records else {}
    divergence = dist.max_divergence(list(stage.state_tensors().values()))  # data-parallel ranks must agree exactly
    run.summary = {
        "steps": steps,
        "resumed_from_step": start_step,
        "trainable_params": trainable_parameters(groups),
        "weights_mb": round(weights_mb(_weights(stage, system)), 3),
        "peak_train_memory_mb": round(meter.peak_mb(), 3),
        "memory_measure": meter.method,
        "time_per_step_s": timer.mean,
        "train_time_s": sum(timer.times),
        "first_loss": first_loss,
        "final_loss": sum(recent) / len(recent) if recent else None,
        "eval": evaluation,
        "rank_divergence": divergence,
    }
    if dist.is_main:  # the stage's final checkpoint carries its summary, and only then counts as done
        final = ckpt.latest_checkpoint(out)
        ckpt.write_state(final.path, {**final.meta, "done": True, "summary": run.summary})
    dist.barrier()
    return run


def _weights(stage, system) -> list[torch.nn.Module]:
    if hasattr(stage, "weights"):
        return stage.weights()
    models = {id(a.model): a.model for a in system.agents.values()}
    return [*models.values(), system.links]


def _evaluate(stage, eval_records, name, step, log: _Log, dist: Dist, timer: StepTimer, final: bool = False) -> dict[str, float]:
    """Held-out metrics on rank 0 (others wait); logged with the training time spent so far."""
    result: dict[str, float] = {}
    if dist.is_main:
        result = stage.evaluate(eval_records)
        log.write({"stage": name, "step": step, "eval": result, "train_time_s": sum(timer.times), **({"final": True} if final else {})})
    dist.barrier()
    return result


def _nan_message(stage: str, step: int, what: str, value: float, last_good: Path | None, cfg: TrainConfig) -> str:
    kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint had been written yet"
    return (
        f"{stage} training stopped at step {step}: the {what} is {value}. Nothing was saved after the last good step; "
        f"{kept}. Lower the learning rate (now {cfg.lr_for(stage)}), check the data, then resume with --resume."
    )


def report(summary: dict[str, Any]) -> str:
    """A short markdown report of a run: what was trained, on what, with which results."""
    cfg = summary["config"]
    lines = [
        f"# Training report: {summary['method']}",
        "",
        f"{summary['date']} on {summary['machine']}; {summary['world_size']} process(es).",
        f"{summary['train_records']} training records, {summary['eval_records']} held out; global batch {cfg['batch_size']}, "
        f"lr {cfg['lr']}, latent source {cfg['latent_source']}.",
        "",
        "| stage | steps | trainable params | peak train mem (MiB) | s/step | first loss | final loss | held-out |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["stages"].items():
        held = ", ".join(f"{k} {v:.4g}" for k, v in s.get("eval", {}).items())
        first = f"{s['first_loss']:.4f}" if s.get("first_loss") is not None else "-"
        final = f"{s['final_loss']:.4f}" if s.get("final_loss") is not None else "-"
        lines.append(
            f"| {name} | {s['steps']} | {s['trainable_params']:,} | {s['peak_train_memory_mb']:.1f} ({s['memory_measure']}) | "
            f"{s['time_per_step_s']:.3f} | {first} | {final} | {held} |"
        )
    return "\n".join(lines) + "\n"


def train_from_files(
    system_file: str | Path,
    data: str | Path,
    out_dir: str | Path,
    eval_data: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Load a system file and data, join the data-parallel job if ``torchrun`` started one, train, clean up.

    ``device`` places every agent there whatever the file says (``System.load``); ``overrides`` are ``TrainConfig``
    fields (None means "keep the system file's or the default value").
    """
    from recursivemas.config import load_config
    from recursivemas.system import System
    from recursivemas.train.data import load_for_system
    from recursivemas.train.distributed import setup

    config = load_config(system_file, device=device)
    dist = setup(any(a.device.startswith("cuda") for a in config.agents.values()))
    try:
        train_config = TrainConfig.from_sources(config.training, **overrides)
        system = System.from_config(system_file, device=device)
        records = load_for_system(system, data)
        held_out = load_for_system(system, eval_data) if eval_data else None
        return train(system, records, train_config, out_dir, held_out, resume=resume, dist=dist)
    finally:
        dist.close()
