"""Harness, report, tuning and CLI against a fake system (this tests the harness, not a model)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from recursivemas.eval import harness
from recursivemas.eval.harness import accuracy, evaluate, read_records
from recursivemas.eval.report import compare_to_text, markdown, summarize, write_report
from recursivemas.eval.tasks import Example
from recursivemas.eval.tune import check_split, pick, tune, write_tuned_values

EXAMPLES = [Example(f"q{i}", f"What is {i} + {i}?", str(2 * i), "math", {"task": "toy"}) for i in range(6)]


@dataclass
class FakeUsage:
    generated_tokens: int
    latent_steps: int
    forward_calls: int
    wall_time_s: float

    def to_dict(self) -> dict:
        return {"totals": self.__dict__.copy(), "steps": []}


@dataclass
class FakeSystem:
    """Deterministic answers: latent mode is right on more questions as rounds and m grow; text costs more."""

    default_m: int = 32
    calls: list[tuple] = field(default_factory=list)
    fail_after: int | None = None
    batch_sizes: list[int | None] = field(default_factory=list)

    @property
    def config(self) -> Any:
        return SimpleNamespace(latent_steps=self.default_m)

    def run(self, questions: list[str], mode: str = "latent", rounds: int = 3, latent_steps: int | None = None,
            batch_size: int | None = None) -> list:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        questions = [q if isinstance(q, str) else q["question"] for q in questions]  # world inputs carry every text field
        self.calls.append((tuple(questions), mode, rounds, latent_steps))
        self.batch_sizes.append(batch_size)
        m = self.default_m if latent_steps is None else latent_steps
        out = []
        for q in questions:
            words = q.split()
            i = int(words[2]) if len(words) > 2 and words[2].isdigit() else len(q) % 5
            right = (i < rounds + (m >= 32)) if mode == "latent" else (i < 2)
            text = f"#### {2 * i if right else 2 * i + 1}"
            tokens = 10 * rounds if mode == "latent" else 40 * rounds
            usage = FakeUsage(tokens, m * rounds if mode == "latent" else 0, rounds, 0.01 * tokens)
            out.append(SimpleNamespace(text=text, usage=usage))
        return out


def test_records_every_question_and_configuration(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    system = FakeSystem()
    recs = evaluate(system, EXAMPLES, "test", None, ("text", "latent"), (1, 3), out, progress=False, batch_size=4)
    assert len(recs) == 2 * 2 * 6 == len(read_records(out))
    assert system.batch_sizes == [len(q) for q, *_ in system.calls] == [4, 2] * 4  # each harness batch runs as one
    r = read_records(out)[0]
    for key in ("task", "split", "id", "mode", "rounds", "latent_steps", "prediction", "gold", "correct",
                "generated_tokens", "latent_steps_total", "forward_calls", "wall_time_s", "usage"):
        assert key in r, key
    latent3 = [x for x in recs if x["mode"] == "latent" and x["rounds"] == 3]
    assert all(x["latent_steps"] == 32 for x in latent3), "the system default m is recorded"
    assert all(x["latent_steps"] is None for x in recs if x["mode"] == "text")
    assert accuracy(latent3) == pytest.approx(4 / 6) and accuracy([x for x in recs if x["mode"] == "text"]) == 2 / 6
    assert {c[1:] for c in system.calls} == {("text", 1, None), ("text", 3, None), ("latent", 1, 32), ("latent", 3, 32)}


def test_rerun_resumes_and_a_crash_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    crashing = FakeSystem(fail_after=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(crashing, EXAMPLES, "test", None, ("latent",), (1, 2), out, progress=False, batch_size=2)
    assert len(read_records(out)) == 6  # three batches of two were written before the crash
    with out.open("a") as f:
        f.write('{"task": "toy", "id": "q')  # a torn line from a crash mid-write
    resumed = FakeSystem()
    with pytest.warns(UserWarning, match="not valid JSON"):
        recs = evaluate(resumed, EXAMPLES, "test", None, ("latent",), (1, 2), out, progress=False, batch_size=2)
    assert len(recs) == 12
    assert sum(len(c[0]) for c in resumed.calls) == 6, "only the missing questions were asked again"
    again = FakeSystem()
    with pytest.warns(UserWarning):
        evaluate(again, EXAMPLES, "test", None, ("latent",), (1, 2), out, progress=False)
    assert again.calls == []
    other_m = FakeSystem()
    with pytest.warns(UserWarning):
        evaluate(other_m, EXAMPLES, "test", None, ("latent",), (1,), out, latent_steps=8, progress=False)
    assert len(other_m.calls) > 0, "a different latent_steps is a different configuration"


def test_single_mode_runs_once(tmp_path: Path) -> None:
    system = FakeSystem()
    recs = evaluate(system, EXAMPLES[:2], "test", None, ("single",), (1, 2, 3), tmp_path / "r.jsonl", progress=False)
    assert len(recs) == 2 and {r["rounds"] for r in recs} == {1} and len(system.calls) == 1


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown mode 'laten'"):
        evaluate(FakeSystem(), EXAMPLES, modes=("laten",), out_path=tmp_path / "r.jsonl", progress=False)
    with pytest.raises(ValueError, match="rounds"):
        evaluate(FakeSystem(), EXAMPLES, rounds=(0,), out_path=tmp_path / "r.jsonl", progress=False)
    with pytest.raises(ValueError, match="'x' is not a valid int"):
        harness.parse_list("1,x", int, name="--rounds")


def test_report_tables_ratios_and_plots(tmp_path: Path) -> None:
    recs = evaluate(FakeSystem(), EXAMPLES, "test", None, ("single", "text", "latent"), (1, 2, 3),
                    tmp_path / "r.jsonl", progress=False)
    rows = {(r["mode"], r["rounds"]): r for r in summarize(recs)}
    assert rows[("latent", 3)]["generated_tokens"] == 30 and rows[("text", 3)]["generated_tokens"] == 120
    ratios = {(r["mode"], r["rounds"]): r for r in compare_to_text(recs)}
    assert ratios[("latent", 3)]["speedup"] == pytest.approx(4.0)
    assert ratios[("latent", 3)]["token_saving"] == pytest.approx(0.75)
    md = markdown(recs)
    assert "4.00x" in md and "75.0%" in md and "| toy | test | latent | 3 | 32 | 6 |" in md
    path = write_report(recs, tmp_path / "rep")
    for name in ("accuracy_by_rounds.png", "tokens_by_rounds.png", "time_by_rounds.png", "speedup_vs_text.png"):
        png = tmp_path / "rep" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and f"]({name})" in path.read_text()


SYSTEM_YAML = """# my system, tuned below
name: toy
agents:
  solver: {model: tiny, prompt: "{question}"}  # keep this comment
latent_steps: 32
batch_size: 4
"""


def test_tune_refuses_test_split_unless_forced(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="refusing to tune on the 'test' split"):
        check_split("test", force=False)
    check_split("test", force=True)
    check_split("validation", force=False)


def test_tune_picks_best_on_validation_and_writes_the_system_file(tmp_path: Path) -> None:
    sys_file = tmp_path / "system.yaml"
    sys_file.write_text(SYSTEM_YAML)
    res = tune(FakeSystem(), sys_file, EXAMPLES, split="validation", latent_steps_grid=(8, 32),  # type: ignore[arg-type]
               rounds_grid=(1, 2, 3), out_dir=tmp_path / "t", progress=False)
    # accuracy grows with rounds and with m >= 32: best is m=32, rounds=3 (4 of 6)
    assert (res.latent_steps, res.rounds, res.accuracy, res.forced_test) == (32, 3, pytest.approx(4 / 6), False)
    text = sys_file.read_text()
    assert "# keep this comment" in text and "# my system, tuned below" in text
    data = yaml.safe_load(text)
    assert (data["latent_steps"], data["rounds"], data["tuned_on"]) == (32, 3, "toy/validation")
    assert data["batch_size"] == 4 and data["agents"]["solver"]["model"] == "tiny"
    report = res.report.read_text()
    assert "Tuned on **toy / validation**" in report and "WARNING" not in report


def test_forced_test_split_tuning_is_marked(tmp_path: Path) -> None:
    sys_file = tmp_path / "system.yaml"
    sys_file.write_text(SYSTEM_YAML)
    res = tune(FakeSystem(), sys_file, EXAMPLES, split="test", latent_steps_grid=(32,), rounds_grid=(1,),  # type: ignore[arg-type]
               out_dir=tmp_path / "t", force=True, progress=False)
    assert res.forced_test and "tuned on the TEST split (forced)" in res.report.read_text()
    assert "forced" in yaml.safe_load(sys_file.read_text())["tuned_on"]


def test_pick_breaks_ties_towards_the_cheaper_setting() -> None:
    grid = [{"latent_steps": 64, "rounds": 2, "accuracy": 0.5}, {"latent_steps": 16, "rounds": 2, "accuracy": 0.5},
            {"latent_steps": 16, "rounds": 3, "accuracy": 0.5}, {"latent_steps": 80, "rounds": 3, "accuracy": 0.4}]
    assert pick(grid) == {"latent_steps": 16, "rounds": 2, "accuracy": 0.5}


def test_write_tuned_values_appends_missing_keys(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("agents:\n  a: {model: m, prompt: '{question}'}\nrounds: 2\n")
    write_tuned_values(f, 48, 3, "world/validation")
    assert yaml.safe_load(f.read_text()) == {"agents": {"a": {"model": "m", "prompt": "{question}"}}, "rounds": 3,
                                             "latent_steps": 48, "tuned_on": "world/validation"}


# ----------------------------------------------------------------------------------------- CLI


def _cli():  # noqa: ANN202
    import typer
    from typer.testing import CliRunner

    from recursivemas.commands.eval import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode
    return app, CliRunner()


def test_cli_bad_system_fails_before_any_question(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, runner = _cli()
    monkeypatch.setattr(harness, "evaluate", lambda *a, **k: pytest.fail("questions ran with a broken system"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents: {}\n")
    result = runner.invoke(app, ["eval", "--system", str(bad), "--task", "MATH500", "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1 and "could not load system" in result.output and "agents" in result.output
    result = runner.invoke(app, ["eval", "--system", str(bad), "--task", "MATH5000"])
    assert result.exit_code == 2 and "known tasks" in result.output


class _FakeSystemClass:
    devices: list = []  # what each load was asked to place the agents on

    @staticmethod
    def from_config(path: str, device: str | None = None) -> FakeSystem:
        _FakeSystemClass.devices.append(device)
        return FakeSystem()

    from_pretrained = load = from_config


@pytest.mark.skipif(importlib.util.find_spec("recursivemas.bundled.world") is None, reason="recursivemas.bundled.world not present")
def test_cli_eval_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import recursivemas

    monkeypatch.setattr(recursivemas, "System", _FakeSystemClass)
    app, runner = _cli()
    sys_file = tmp_path / "s.yaml"
    sys_file.write_text("name: fake\n")
    out = tmp_path / "r.jsonl"
    result = runner.invoke(app, ["eval", "--system", str(sys_file), "--task", "world", "--split", "validation",
                                 "--limit", "3", "--modes", "text,latent", "--rounds", "1,2", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(read_records(out)) == 12 and "report:" in result.output
    assert _FakeSystemClass.devices[-1] == "cpu"  # --device reaches the loader
    result = runner.invoke(app, ["eval-report", str(out), "--out-dir", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "report.md").exists()
    result = runner.invoke(app, ["tune", "--system", str(sys_file), "--task", "world", "--split", "test"])
    assert result.exit_code == 2 and "refusing to tune" in result.output


def test_bench_appends_under_its_own_heading(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("eval_efficiency", Path(__file__).parents[1] / "bench" / "eval_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other bench\n\nold numbers\n")
    bench.append_section(doc, "### run 1\n")
    bench.append_section(doc, "### run 2\n")
    text = doc.read_text()
    assert text.count(bench.HEADING) == 1 and "old numbers" in text
    assert text.index(bench.HEADING) < text.index("### run 1") < text.index("### run 2")
    recs = evaluate(FakeSystem(), EXAMPLES, "test", None, ("text", "latent"), (1, 3), tmp_path / "r.jsonl", progress=False)
    args = SimpleNamespace(system="sys.yaml", task="toy", split="test")
    block = bench.section(recs, args, "python bench/eval_efficiency.py")
    assert "| 3 | 32 | 6 |" in block and "4.00x" in block and json.dumps(block)


def test_a_second_writer_is_locked_out_naming_the_holder(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "r.jsonl"
    # another process holding the lock file as the harness does (flock, its pid inside); plain Python, fast to start
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\nfd = os.open(sys.argv[1] + '.lock', os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, f'{os.getpid()}\\n'.encode())\nprint('locked', flush=True)\ntime.sleep(60)\n",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        system = FakeSystem()
        with pytest.raises(harness.OutputLockedError, match=rf"r\.jsonl is being written by another evaluation \(pid {holder.pid},"):
            evaluate(system, EXAMPLES, "test", None, ("latent",), (1,), out, progress=False)
        assert system.calls == [] and not out.exists(), "the second writer ran questions or wrote records"
    finally:
        holder.kill()
        holder.wait()
    recs = evaluate(FakeSystem(), EXAMPLES, "test", None, ("latent",), (1,), out, progress=False)  # killed holder: lock gone
    assert len(recs) == 6


def test_duplicate_records_are_counted_once(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    recs = evaluate(FakeSystem(), EXAMPLES, "test", None, ("latent",), (1,), out, progress=False)
    out.write_text(out.read_text() * 2)  # what two unlocked evaluations on one --out used to leave
    assert len(read_records(out, unique=False)) == 12 and len(read_records(out)) == 6
    rows = summarize(read_records(out, unique=False))
    assert [r["n"] for r in rows] == [6] and rows[0]["accuracy"] == pytest.approx(accuracy(recs))
    again = FakeSystem()
    assert len(evaluate(again, EXAMPLES, "test", None, ("latent",), (1,), out, progress=False)) == 6 and again.calls == []
