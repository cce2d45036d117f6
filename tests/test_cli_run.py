"""`recursivemas run` and friends through the real CLI entry point."""

import json

import yaml
from typer.testing import CliRunner

from recursivemas.cli import app

from conftest import story_ask_config


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
    assert out.exit_code != 0 and "line 2 lacks 'question'" in " ".join(out.output.split())


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


def _fields_system(tiny_agents, tmp_path) -> str:
    """A distillation system whose expert reads {story} and whose learner reads {ask}: no agent reads {question}."""
    config = {**story_ask_config(tiny_agents), "name": "story-ask"}
    return write_system(tmp_path, config)


def test_run_with_input_fields_from_the_command_line_and_a_file(tiny_agents, tmp_path):
    from recursivemas import System

    path = _fields_system(tiny_agents, tmp_path)
    story = tmp_path / "story.txt"
    story.write_text("Ann has 3 cats.")
    out = CliRunner().invoke(app, ["run", "--system", path, "--field", f"story=@{story}", "-f", "ask=How many cats?", "--json"])
    assert out.exit_code == 0, out.output
    expected = System.load(path).run([{"story": "Ann has 3 cats.", "ask": "How many cats?"}])[0]
    assert json.loads(out.stdout)["text"] == expected.text
    records = tmp_path / "in.jsonl"
    records.write_text("\n".join(json.dumps({"story": s, "ask": "How many pets?", "id": i}) for i, s in enumerate(["Bo has 5 dogs.", "Cy has 1 fish."])))
    out = CliRunner().invoke(app, ["run", "--system", path, "--questions", str(records), "--json"])
    assert out.exit_code == 0, out.output
    texts = [json.loads(line)["text"] for line in out.stdout.splitlines()]
    inputs = [{"story": s, "ask": "How many pets?"} for s in ["Bo has 5 dogs.", "Cy has 1 fish."]]
    assert texts == [r.text for r in System.load(path).run(inputs)]


def test_run_names_the_missing_input_fields_and_how_to_give_them(tiny_agents, tmp_path):
    path = _fields_system(tiny_agents, tmp_path)
    runner = CliRunner()
    flat = lambda result: " ".join(result.output.split())  # noqa: E731 (rich wraps the message)
    out = runner.invoke(app, ["run", "--system", path, "-q", "How many cats?"], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "read the input field(s) 'story', 'ask'; missing 'story', 'ask'" in flat(out)
    assert "--field story=..." in flat(out)
    out = runner.invoke(app, ["run", "--system", path, "-f", "story=Ann has 3 cats."], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "missing 'ask'" in flat(out)
    text = tmp_path / "q.txt"
    text.write_text("How many cats?\n")
    out = runner.invoke(app, ["run", "--system", path, "--questions", str(text)], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "a text file gives only 'question'" in flat(out)
    for bad, phrase in [("story", "is not NAME=VALUE"), ("story=@/no/such/file", "does not exist")]:
        out = runner.invoke(app, ["run", "--system", path, "-f", bad], env={"COLUMNS": "200"})
        assert out.exit_code == 2 and phrase in flat(out)
    out = runner.invoke(app, ["run", "--system", path, "-f", "ask=a", "--questions", str(text)], env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "give exactly one of" in flat(out)
