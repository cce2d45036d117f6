"""Tests for the deliberation tools: the tool loop, the sandboxed python tool, BM25 search, build-time errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recursivemas.tools import (
    BM25Index,
    PythonTool,
    SearchHit,
    SearchTool,
    ToolLoop,
    build_tool_loop,
    build_tools,
    limit_message,
    run_tool_loop,
)
from recursivemas.tools.python_tool import clean_code
from recursivemas.tools.search import chunk_text


class Scripted:
    """A fake `generate`: returns fixed segments in order and records what was appended before each."""

    def __init__(self, segments: list[str]) -> None:
        self.segments = list(segments)
        self.appended: list[str] = []

    def __call__(self, appended: str) -> tuple[str, bool]:
        self.appended.append(appended)
        segment = self.segments.pop(0) if self.segments else ""
        return segment, segment.rstrip().endswith(("</python>", "</search>"))


class Echo:
    """A stand-in tool that counts its calls."""

    def __init__(self, name: str = "python", output: str = "ok") -> None:
        self.name = name
        self.output = output
        self.payloads: list[str] = []

    def __call__(self, payload: str) -> str:
        self.payloads.append(payload)
        return self.output


def result_body(appended: str) -> str:
    assert appended.startswith("\n<result>\n") and appended.endswith("\n</result>\n"), appended
    return appended[len("\n<result>\n") : -len("\n</result>\n")]


# ---------------------------------------------------------------------------- the loop with the real sandbox


def test_python_call_gets_42() -> None:
    gen = Scripted(["Compute it. <python>print(6*7)</python>", " So the answer is 42."])
    loop = ToolLoop({"python": PythonTool(timeout_s=10)})
    transcript = run_tool_loop(gen, loop)
    assert result_body(gen.appended[1]) == "42"
    assert transcript == "Compute it. <python>print(6*7)</python>\n<result>\n42\n</result>\n So the answer is 42."
    assert [(c.tool, c.payload.strip()) for c in loop.calls] == [("python", "print(6*7)")]
    assert loop.calls[0].seconds > 0
    assert loop.stop_strings == ["</python>"]


def test_sandbox_timeout_is_an_error_result_not_a_crash() -> None:
    gen = Scripted(["<python>while True:\n    pass</python>", "<python>print('after')</python>", "done"])
    loop = ToolLoop({"python": PythonTool(timeout_s=1)})
    transcript = run_tool_loop(gen, loop)
    first = result_body(gen.appended[1])
    assert first.startswith("Error") and "time limit" in first
    assert result_body(gen.appended[2]) == "after"  # the loop went on
    assert transcript.endswith("done")


def test_python_exception_and_sandbox_escape_return_error_text(tmp_path: Path) -> None:
    tool = PythonTool(timeout_s=5)
    out = tool("raise ValueError('boom')")
    assert "ValueError: boom" in out
    target = tmp_path / "escaped.txt"
    out = tool(f"open({str(target)!r}, 'w').write('x')\nprint('wrote')")
    assert not target.exists(), "sandboxed code wrote outside its directory"
    assert "wrote" not in out.split("[stderr]")[0]
    assert "Error" in out or "PermissionError" in out or "denied" in out.lower()
    out = PythonTool(timeout_s=5, memory_mb=256)("x = bytearray(1024 ** 3)")
    assert out.endswith("Error: the code ran out of memory (limit 256 MB).")


def test_python_output_is_cut_at_result_chars() -> None:
    loop = ToolLoop({"python": PythonTool()}, result_chars=6000)
    body = result_body(loop.step("<python>print('x' * 10000)</python>"))
    assert body.startswith("x" * 6000) and not body.startswith("x" * 6001)
    assert "4000 more characters" in body
    assert len(loop.calls[0].result) == 10000  # the record keeps the full output (trailing newline stripped)


def test_fenced_code_runs() -> None:
    assert clean_code("\n```python\n  x = 1\n  print(x)\n```\n") == "x = 1\nprint(x)"
    assert PythonTool()("```py\nprint(1+1)\n```") == "2"


# ---------------------------------------------------------------------------- the loop with stand-in tools


def test_more_than_max_calls_stops_with_final_message() -> None:
    tool = Echo()
    calls = [f"<python>print({i})</python>" for i in range(8)]
    gen = Scripted(calls + ["final answer"])
    loop = ToolLoop({"python": tool}, max_calls=5)
    transcript = run_tool_loop(gen, loop)
    assert len(tool.payloads) == 5 and len(loop.calls) == 5
    assert result_body(gen.appended[6]) == limit_message(5) == "Tool call limit (5) reached; answer now without tools."
    assert transcript.count("<result>") == 6
    # the 7th call runs nothing and ends the loop; the model's text is kept as generated
    assert transcript.endswith("<python>print(6)</python>") and len(gen.appended) == 7
    assert loop.limit_reached and loop.stop_strings == []
    assert loop.step("<python>print(9)</python>") is None
    assert loop.summary()["calls"] == 5 and loop.summary()["limit_reached"] is True


def test_step_rules() -> None:
    tool = Echo("search", "hit")
    loop = ToolLoop({"search": tool, "python": Echo()})
    assert loop.stop_strings == ["</search>", "</python>"]
    assert loop.step("no call here") is None
    assert loop.step("</search>") is None  # a closing tag alone is not a call
    loop.reset()
    assert loop.step("I will look it up: <search>capital of") is None  # split over segments
    assert result_body(loop.step(" France</search>\n")) == "hit"
    assert tool.payloads == ["capital of France"]
    assert loop.step("<python>x</search>") is None  # mismatched tags
    loop.reset()
    assert loop.step("<calc>1+1</calc>") is None  # not a configured tool


def test_tool_exception_becomes_error_result() -> None:
    def broken(payload: str) -> str:
        raise RuntimeError("backend down")

    broken.name = "search"  # type: ignore[attr-defined]
    loop = ToolLoop({"search": broken})  # type: ignore[dict-item]
    assert result_body(loop.step("<search>q</search>")) == "Error: the search tool failed: RuntimeError: backend down"


def test_result_truncation_and_bad_loop_args() -> None:
    loop = ToolLoop({"python": Echo(output="abcdefghij" * 3)}, result_chars=12)
    assert result_body(loop.step("<python>p</python>")) == "abcdefghijab\n... [cut: 18 more characters not shown]"
    with pytest.raises(ValueError, match="has name"):
        ToolLoop({"search": Echo("python")})
    with pytest.raises(ValueError, match="result_chars"):
        ToolLoop({"python": Echo()}, result_chars=0)


# ---------------------------------------------------------------------------- search


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "plants.txt").write_text("Photosynthesis converts light energy into chemical energy in chloroplasts.\n")
    (root / "sub" / "rivers.md").write_text("# Rivers\n\nThe Nile is the longest river in Africa.\n")
    (root / "facts.jsonl").write_text(
        json.dumps({"title": "Eiffel Tower", "text": "The Eiffel Tower is in Paris and was finished in 1889."})
        + "\n\n"
        + json.dumps({"text": "Mount Everest is the highest mountain above sea level."})
        + "\n"
    )
    (root / "ignored.csv").write_text("a,b\n")
    return root


def test_bm25_finds_expected_passage(corpus: Path, tmp_path: Path) -> None:
    index = BM25Index.build([corpus])
    assert len(index.passages) == 4 and index.meta["files"] == 3
    hits = index.search("When was the Eiffel Tower finished?", k=3)
    assert hits[0].source == f"{corpus / 'facts.jsonl'}:1" and "1889" in hits[0].text
    assert all(h.score and h.score > 0 for h in hits)
    assert index.search("longest river", k=1)[0].source.endswith("rivers.md")
    assert index.search("zzzz qqqq") == [] and index.search("the of") == []
    saved = BM25Index.load(index.save(tmp_path / "idx"))
    assert [h.source for h in saved.search("chloroplasts light")] == [str(corpus / "plants.txt")]


def test_search_tool_through_build_tools(corpus: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    loop = build_tool_loop({"search": {"corpus": str(corpus), "index_dir": str(idx), "top_k": 2}, "max_calls": 3})
    assert (idx / "recursivemas_index.json").is_file() and loop.max_calls == 3
    body = result_body(loop.step("<search>highest mountain</search>"))
    assert body.startswith(f"[1] {corpus / 'facts.jsonl'}:3\nMount Everest")
    assert "No results for: xyzzy" == result_body(loop.step("<search> xyzzy </search>"))
    # a saved index is reused while the corpus is unchanged, rebuilt when it changes
    assert build_tools({"search": {"index_dir": str(idx)}})["search"]("Nile").startswith("[1]")
    (corpus / "new.txt").write_text("Quokkas live on Rottnest Island.\n")
    tools = build_tools({"search": {"corpus": str(corpus), "index_dir": str(idx)}})
    assert "Rottnest" in tools["search"]("quokka quokkas")
    assert json.loads((idx / "recursivemas_index.json").read_text())["passages"] == 5


def test_long_files_are_chunked(tmp_path: Path) -> None:
    paras = [f"Paragraph {i} talks about topic{i} " + "filler words here " * 20 for i in range(10)]
    text = "\n\n".join(paras)
    chunks = chunk_text(text, 500)
    assert len(chunks) >= 5 and all(len(c) <= 500 for c in chunks)
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    (tmp_path / "long.txt").write_text(text)
    index = BM25Index.build([tmp_path / "long.txt"], chunk_chars=500)
    hit = index.search("topic7", k=1)[0]
    assert "topic7" in hit.text and hit.source.startswith(str(tmp_path / "long.txt") + "#")


def test_pluggable_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Web:
        def search(self, query: str, k: int) -> list[SearchHit | str]:
            return [SearchHit("web text", "https://example.org", 1.0), "plain string hit", "extra"]

    assert SearchTool(Web(), top_k=2)("q") == "[1] https://example.org\nweb text\n\n[2]\nplain string hit"
    (tmp_path / "my_web_backend.py").write_text(
        "class Engine:\n"
        "    def __init__(self, prefix):\n        self.prefix = prefix\n"
        "    def search(self, query, k):\n        return [self.prefix + query]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    tools = build_tools({"search": {"backend": "my_web_backend:Engine", "backend_args": {"prefix": "web: "}}})
    assert tools["search"]("cats") == "[1]\nweb: cats"


# ---------------------------------------------------------------------------- build-time errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"search": {}}, "tools.search has no backend: set search.corpus"),
        ({"search": None}, "tools.search has no backend"),
        ({"search": {"corpus": "/nonexistent/docs"}}, "'/nonexistent/docs' does not exist"),
        ({"search": {"index_dir": "/nonexistent/idx"}}, "no search index at '/nonexistent/idx'; build one with `recursivemas tools index"),
        ({"calculator": {}}, r"unknown tool\(s\) \['calculator'\] in tools spec; known tools: python, search"),
        ({"python": {"timeout": 3}}, r"unknown option\(s\) \['timeout'\] for tools.python; known: timeout_s"),
        ({"python": {"timeout_s": 0}}, "timeout_s must be > 0"),
        ({"python": "yes"}, "tools.python must be a mapping"),
        ({"search": {"backend": "no_such_module_xyz:Engine"}}, "cannot import 'no_such_module_xyz'"),
        ({"search": {"backend": "json"}}, "must look like 'package.module:factory'"),
        ({"search": {"backend": "json:nothing_here"}}, "module 'json' has no 'nothing_here'"),
        ({"search": {"backend": "a:b", "corpus": "x"}}, "not both"),
    ],
)
def test_missing_backend_is_a_build_time_error(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_tools(spec)


def test_bad_corpus_contents(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no .txt, .md, .jsonl files"):
        build_tools({"search": {"corpus": str(tmp_path / "empty")}})
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: each .jsonl line must be an object with a string `text` field"):
        build_tools({"search": {"corpus": str(tmp_path / "bad.jsonl")}})
    (tmp_path / "data.pdf").write_text("x")
    with pytest.raises(ValueError, match="is not .txt, .md, .jsonl"):
        build_tools({"search": {"corpus": str(tmp_path / "data.pdf")}})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="non-empty directory without an index"):
        BM25Index.build([tmp_path / "notes"]).save(tmp_path / "notes")


def test_disabled_and_default_tools() -> None:
    tools = build_tools({"python": True, "search": False, "max_calls": 5, "result_chars": 6000})
    assert list(tools) == ["python"] and tools["python"].timeout_s == 10.0
    with pytest.raises(ValueError, match="enables no tool"):
        build_tool_loop({"python": False})


# ---------------------------------------------------------------------------- CLI


def test_cli_index_and_search(corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recursivemas.cli import app

    runner = CliRunner()
    idx = tmp_path / "cli_idx"
    res = runner.invoke(app, ["tools", "index", str(corpus), "--out", str(idx)])
    assert res.exit_code == 0, res.output
    assert "indexed 4 passages from 3 files" in res.output
    res = runner.invoke(app, ["tools", "search", "Eiffel Tower Paris", "--index", str(idx), "-k", "1"])
    assert res.exit_code == 0 and "1889" in res.output
    res = runner.invoke(app, ["tools", "search", "Nile", "--corpus", str(corpus), "--json"])
    assert res.exit_code == 0 and json.loads(res.output.splitlines()[0])["source"].endswith("rivers.md")
    res = runner.invoke(app, ["tools", "search", "x", "--index", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "no search index" in res.output
