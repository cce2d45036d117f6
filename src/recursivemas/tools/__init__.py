"""Tools for the deliberation pattern's tool-caller: `<python>` (sandboxed) and `<search>` (BM25 or plugged in).

    tools = build_tools({"python": {"timeout_s": 10}, "search": {"corpus": "docs/"}})
    loop = ToolLoop(tools, max_calls=5, result_chars=6000)
    text = run_tool_loop(generate, loop)   # generate(appended) -> (segment, stopped)

A tool that is configured but cannot work (no corpus, missing path, unknown name) is an error
here, at load time, never a dummy result later.
"""

from __future__ import annotations

from typing import Any, Mapping

from recursivemas.tools.loop import Tool, ToolCall, ToolLoop, limit_message, run_tool_loop
from recursivemas.tools.python_tool import PythonTool
from recursivemas.tools.search import BM25Index, SearchBackend, SearchHit, SearchTool, load_backend, open_index

__all__ = [
    "BM25Index",
    "PythonTool",
    "SearchBackend",
    "SearchHit",
    "SearchTool",
    "Tool",
    "ToolCall",
    "ToolLoop",
    "build_tool_loop",
    "build_tools",
    "limit_message",
    "open_index",
    "run_tool_loop",
]

TOOL_NAMES = ("python", "search")
LOOP_KEYS = ("max_calls", "result_chars")
_PYTHON_KEYS = ("timeout_s", "memory_mb", "cpu_s", "max_file_mb", "max_procs")
_SEARCH_KEYS = ("corpus", "index_dir", "top_k", "chunk_chars", "backend", "backend_args")


def _options(name: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A tool's options: `true`, `null` or `{}` mean defaults; a mapping is checked for unknown keys."""
    if value is None or value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"tools.{name} must be a mapping of options, true, or false; got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for tools.{name}; known: {', '.join(allowed)}")
    return dict(value)


def _build_search(opts: dict[str, Any]) -> SearchTool:
    backend = opts.get("backend")
    local = opts.get("corpus") is not None or opts.get("index_dir") is not None
    top_k = int(opts.get("top_k", 3))
    if backend is not None:
        if local:
            raise ValueError("tools.search: set either backend (plugged-in search) or corpus/index_dir (local BM25), not both")
        if isinstance(backend, str):
            backend = load_backend(backend, opts.get("backend_args"))
        return SearchTool(backend, top_k=top_k)
    if opts.get("backend_args") is not None:
        raise ValueError("tools.search.backend_args is set but tools.search.backend is not")
    if not local:
        raise ValueError(
            "tools.search has no backend: set search.corpus to files/directories of .txt/.md/.jsonl, "
            "search.index_dir to an index built with `recursivemas tools index`, or search.backend to "
            "'package.module:factory' for a web search backend; or remove `search` from the tools"
        )
    chunk_chars = int(opts.get("chunk_chars", 1000))
    return SearchTool(open_index(opts.get("corpus"), opts.get("index_dir"), chunk_chars), top_k=top_k)


def build_tools(spec: Mapping[str, Any]) -> dict[str, Tool]:
    """Build the tools named in `spec` (the system file's `tools` section); raise ValueError if one cannot work.

    Keys: `python` and `search` (options, `true`/`null` for defaults, `false` to leave out);
    `max_calls` and `result_chars` belong to the loop and are skipped here. Paths are used as given.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"tools spec must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(TOOL_NAMES) - set(LOOP_KEYS))
    if unknown:
        raise ValueError(
            f"unknown tool(s) {unknown} in tools spec; known tools: {', '.join(TOOL_NAMES)} "
            f"(loop options: {', '.join(LOOP_KEYS)})"
        )
    tools: dict[str, Tool] = {}
    if "python" in spec and spec["python"] is not False:
        try:
            tools["python"] = PythonTool(**_options("python", spec["python"], _PYTHON_KEYS))
        except TypeError as exc:
            raise ValueError(f"tools.python: {exc}") from exc
    if "search" in spec and spec["search"] is not False:
        tools["search"] = _build_search(_options("search", spec["search"], _SEARCH_KEYS))
    return tools


def build_tool_loop(spec: Mapping[str, Any]) -> ToolLoop:
    """`build_tools(spec)` wrapped in a ToolLoop with the spec's `max_calls` (5) and `result_chars` (6000)."""
    tools = build_tools(spec)
    if not tools:
        raise ValueError("tools spec enables no tool; add `python` and/or `search`")
    return ToolLoop(tools, max_calls=int(spec.get("max_calls", 5)), result_chars=int(spec.get("result_chars", 6000)))
