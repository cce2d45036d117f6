"""Tools for the deliberation pattern's tool-caller: `<python>` (sandboxed) and `<search>` (BM25 or plugged in).

    tools = build_tools({"python": {"timeout_s": 10}, "search": {"corpus": "docs/"}})
    loop = ToolLoop(tools, max_calls=5, result_chars=6000)
    text = run_tool_loop(generate, loop)   # generate(appended) -> (segment, stopped)

A tool that is configured but cannot work (no corpus, missing path, unknown name) is an error
here, at load time, never a dummy result later.
"""

from __future__ import annotations

import math
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
    "validate_tool_spec",
]

TOOL_NAMES = ("python", "search")
LOOP_KEYS = ("max_calls", "result_chars")
_PYTHON_KEYS = ("timeout_s", "memory_mb", "cpu_s", "max_file_mb", "max_procs", "max_box_mb")
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


_POSITIVE_INTS = {"max_calls", "result_chars", "top_k", "chunk_chars", "max_procs"}
_POSITIVE_NUMBERS = {"timeout_s", "memory_mb", "cpu_s", "max_file_mb"}


def _check_number(where: str, value: Any, integer: bool) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"tools.{where} must be > 0 ({kind}), got {value!r}")


def validate_tool_spec(spec: Any) -> None:
    """Check a ``tools`` section's shape without building anything: names, options, numbers, search source.

    Pure (no files opened, no backends imported), so ``load_config`` can run it before any model loads;
    ``build_tools`` runs it too and then opens corpora, indexes and backends.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"tools spec must be a mapping, got {type(spec).__name__}")
    unknown = sorted(map(str, set(spec) - set(TOOL_NAMES) - set(LOOP_KEYS)))
    if unknown:
        from recursivemas.validation import close_match

        close = close_match(unknown[0], [*TOOL_NAMES, *LOOP_KEYS])
        hint = f"did you mean {close!r}? " if close else ""
        raise ValueError(
            f"unknown tool(s) {unknown} in tools spec; {hint}known tools: {', '.join(TOOL_NAMES)} "
            f"(loop options: {', '.join(LOOP_KEYS)})"
        )
    for key in LOOP_KEYS:
        if key in spec:
            _check_number(key, spec[key], integer=True)
    enabled = [name for name in TOOL_NAMES if name in spec and spec[name] is not False]
    if not enabled:
        raise ValueError("tools spec enables no tool; add `python` and/or `search`")
    for name, allowed in (("python", _PYTHON_KEYS), ("search", _SEARCH_KEYS)):
        if name not in enabled:
            continue
        opts = _options(name, spec[name], allowed)
        for key, value in opts.items():
            if key in _POSITIVE_INTS or key in _POSITIVE_NUMBERS:
                _check_number(f"{name}.{key}", value, integer=key in _POSITIVE_INTS)
    if "search" in enabled:
        opts = _options("search", spec["search"], _SEARCH_KEYS)
        backend = opts.get("backend")
        local = opts.get("corpus") is not None or opts.get("index_dir") is not None
        if backend is not None and local:
            raise ValueError("tools.search: set either backend (plugged-in search) or corpus/index_dir (local BM25), not both")
        if backend is not None and not isinstance(backend, str) and not callable(getattr(backend, "search", None)):
            raise ValueError(f"tools.search.backend must be 'package.module:factory', got {backend!r}")
        if backend is None and opts.get("backend_args") is not None:
            raise ValueError("tools.search.backend_args is set but tools.search.backend is not")
        if backend is None and not local:
            raise ValueError(
                "tools.search has no backend: set search.corpus to files/directories of .txt/.md/.jsonl, "
                "search.index_dir to an index built with `recursivemas tools index`, or search.backend to "
                "'package.module:factory' for a web search backend; or remove `search` from the tools"
            )
        if opts.get("index_dir") is not None and not isinstance(opts["index_dir"], str):
            raise ValueError(f"tools.search.index_dir must be a path (a string), got {opts['index_dir']!r}")


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
    if any(name in spec and spec[name] is not False for name in TOOL_NAMES):
        validate_tool_spec(spec)
    else:  # nothing enabled: build_tool_loop says so; here only unknown names are an error
        unknown = sorted(map(str, set(spec) - set(TOOL_NAMES) - set(LOOP_KEYS)))
        if unknown:
            validate_tool_spec(spec)
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
