"""`recursivemas run` and friends through the real CLI entry point."""

import json

import yaml
from typer.testing import CliRunner

from recursivemas.cli import app


def write_system(tmp_path, config) -> str:
    config = {k: v for k, v in config.items() if k != "base_dir"}
    path = tmp_path / "system.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_run_one_question_prints_usage_table(sequential_config, tmp_path):
    path = write_system(tmp_path, sequential_config)
    out = CliRunner().invoke(app, ["run", "--system", path, "--question", "What is 2 + 2?", "--rounds", "2"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "latent mode, 2 round(s)" in out.output and "answer" in out.output and "total" in out.output


def test_run_json_and_questions_file(sequential_config, tmp_path):
    path = write_system(tmp_path, sequential_config)
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question": q}) for q in ["1 + 1?", "2 + 5?", "3 * 3?"]) + "\n")
    out = CliRunner().invoke(app, ["run", "--system", path, "--questions", str(questions), "--mode", "text", "--json", "--out", str(tmp_path / "r.jsonl")])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines()]  # the progress bar goes to stderr
    assert [r["question"] for r in lines] == ["1 + 1?", "2 + 5?", "3 * 3?"]
    assert all(r["mode"] == "text" and r["usage"]["totals"]["generated_tokens"] > 0 for r in lines)
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3


def test_run_bad_questions_file_names_the_line(sequential_config, tmp_path):
    path = write_system(tmp_path, sequential_config)
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "ok?"}) + "\n" + json.dumps({"prompt": "no"}) + "\n")
    out = CliRunner().invoke(app, ["run", "--system", path, "--questions", str(questions)], env={"COLUMNS": "200"})
    assert out.exit_code != 0 and "line 2 has no 'question' field" in out.output


def test_bad_system_file_is_a_message_not_a_traceback(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("agents: {a: {model: /no/such/model, prompt: '{question}'}}\npattern: sequential\n")
    proc = subprocess.run([sys.executable, "-c", "from recursivemas.cli import main; main()", "run", "--system", str(path), "-q", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: pattern 'sequential' needs exactly the agents planner, critic, solver")
    assert "Traceback" not in proc.stderr
