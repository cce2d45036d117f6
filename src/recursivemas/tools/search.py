"""The `<search>` tool: BM25 over a local corpus (bm25s), or a search backend the user plugs in.

A corpus is files or directories of `.txt`, `.md` and `.jsonl` (one JSON object per line with a
`text` field). Long texts are cut into passages of about `chunk_chars` characters on paragraph
boundaries. An index is a directory: bm25s's arrays, `passages.jsonl` and `recursivemas_index.json`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

SUFFIXES = (".txt", ".md", ".jsonl")
META_FILE = "recursivemas_index.json"
PASSAGES_FILE = "passages.jsonl"
INDEX_FORMAT = 1
DEFAULT_CHUNK_CHARS = 1000


@dataclass(frozen=True)
class SearchHit:
    """One search result: the passage text, where it came from, and its score if the backend has one."""

    text: str
    source: str = ""
    score: float | None = None


@runtime_checkable
class SearchBackend(Protocol):
    """Anything that answers a query with ranked hits (a web search API, a vector store, ...)."""

    def search(self, query: str, k: int) -> Sequence[SearchHit | str]: ...


# ---------------------------------------------------------------------------- corpus reading


def corpus_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (recursively) into the sorted list of corpus files."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ValueError(f"search corpus path {str(path)!r} does not exist; point search.corpus at existing files or directories")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise ValueError(f"search corpus directory {str(path)!r} has no {', '.join(SUFFIXES)} files")
            files.extend(found)
        elif path.suffix.lower() in SUFFIXES:
            files.append(path)
        else:
            raise ValueError(f"search corpus file {str(path)!r} is not {', '.join(SUFFIXES)}; convert it or leave it out")
    return sorted(set(files))


def _split_long(text: str, limit: int) -> list[str]:
    """Split one long paragraph on whitespace into pieces of at most `limit` characters."""
    pieces: list[str] = []
    cur = ""
    for word in text.split():
        while len(word) > limit:  # a single word longer than a passage
            if cur:
                pieces.append(cur)
                cur = ""
            pieces.append(word[:limit])
            word = word[limit:]
        if cur and len(cur) + 1 + len(word) > limit:
            pieces.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        pieces.append(cur)
    return pieces


def chunk_text(text: str, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> list[str]:
    """Cut `text` into passages of at most `chunk_chars` characters, keeping paragraphs whole where they fit."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    passages: list[str] = []
    cur = ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        for piece in _split_long(para, chunk_chars) if len(para) > chunk_chars else [para]:
            if cur and len(cur) + 2 + len(piece) > chunk_chars:
                passages.append(cur)
                cur = piece
            else:
                cur = f"{cur}\n\n{piece}" if cur else piece
    if cur:
        passages.append(cur)
    return passages


def read_passages(paths: Iterable[str | Path], chunk_chars: int = DEFAULT_CHUNK_CHARS) -> list[SearchHit]:
    """Read corpus files into passages; `source` is `file`, `file#n` (n-th passage) or `file:line`."""
    passages: list[SearchHit] = []
    for path in corpus_files(paths):
        if path.suffix.lower() == ".jsonl":
            records = _read_jsonl(path)
        else:
            records = [(str(path), path.read_text(encoding="utf-8", errors="replace"))]
        for source, text in records:
            chunks = chunk_text(text, chunk_chars)
            for i, chunk in enumerate(chunks):
                passages.append(SearchHit(chunk, source if len(chunks) == 1 else f"{source}#{i + 1}"))
    return passages


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"{path}:{lineno}: each .jsonl line must be an object with a string `text` field")
            title = obj.get("title")
            text = f"{title}\n\n{obj['text']}" if isinstance(title, str) and title else obj["text"]
            records.append((f"{path}:{lineno}", text))
    return records


def fingerprint(paths: Iterable[str | Path]) -> str:
    """Hash of the corpus files' paths, sizes and modification times, to tell when an index is stale."""
    h = hashlib.sha256()
    for path in corpus_files(paths):
        st = path.stat()
        h.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- the BM25 index


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:
        raise ValueError("local search needs bm25s; install it with `pip install 'recursivemas[tools]'`") from exc
    return bm25s


def _tokenize(texts: list[str], **kw: Any) -> Any:
    return _bm25s().tokenize(texts, stopwords="en", show_progress=False, **kw)


@dataclass
class BM25Index:
    """A BM25 index over passages; `search` returns the best `k` passages that share a word with the query."""

    passages: list[SearchHit]
    retriever: Any = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, paths: Iterable[str | Path], chunk_chars: int = DEFAULT_CHUNK_CHARS) -> "BM25Index":
        """Read, chunk and index the corpus at `paths`."""
        paths = [str(p) for p in paths]
        passages = read_passages(paths, chunk_chars)
        if not passages:
            raise ValueError(f"search corpus {paths} has no text to index")
        retriever = _bm25s().BM25()
        retriever.index(_tokenize([p.text for p in passages]), show_progress=False)
        meta = {
            "format": INDEX_FORMAT,
            "corpus": [str(Path(p).resolve()) for p in paths],
            "fingerprint": fingerprint(paths),
            "chunk_chars": chunk_chars,
            "files": len(corpus_files(paths)),
            "passages": len(passages),
            "tokenizer": {"stopwords": "en", "stemmer": None},
        }
        return cls(passages, retriever, meta)

    def save(self, index_dir: str | Path) -> Path:
        """Write the index to `index_dir` (created if needed; an existing index there is replaced)."""
        out = Path(index_dir)
        if out.exists() and any(out.iterdir()) and not (out / META_FILE).exists():
            raise ValueError(f"{str(out)!r} is a non-empty directory without an index; choose an empty or new directory")
        out.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(out), show_progress=False)
        with (out / PASSAGES_FILE).open("w", encoding="utf-8") as fh:
            for p in self.passages:
                fh.write(json.dumps({"text": p.text, "source": p.source}, ensure_ascii=False) + "\n")
        (out / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, index_dir: str | Path) -> "BM25Index":
        """Load an index written by `save` (or `recursivemas tools index`)."""
        src = Path(index_dir)
        if not (src / META_FILE).is_file():
            raise ValueError(
                f"no search index at {str(src)!r}; build one with `recursivemas tools index CORPUS... --out {src}` "
                "or set search.corpus so it is built on load"
            )
        meta = json.loads((src / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"index at {str(src)!r} has format {meta.get('format')}, expected {INDEX_FORMAT}; rebuild it")
        with (src / PASSAGES_FILE).open(encoding="utf-8") as fh:
            passages = [SearchHit(**json.loads(line)) for line in fh if line.strip()]
        retriever = _bm25s().BM25.load(str(src), show_progress=False)
        return cls(passages, retriever, meta)

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        """Top `k` passages by BM25 score; passages with score 0 (no shared word) are left out."""
        if k < 1 or not self.passages:
            return []
        query_tokens = _tokenize([query], return_ids=False)
        if not query_tokens[0]:
            return []
        docs, scores = self.retriever.retrieve(query_tokens, k=min(k, len(self.passages)), show_progress=False)
        hits = []
        for doc, score in zip(docs[0].tolist(), scores[0].tolist()):
            if score > 0:
                hits.append(SearchHit(self.passages[doc].text, self.passages[doc].source, float(score)))
        return hits


def open_index(
    corpus: str | Path | Sequence[str | Path] | None = None,
    index_dir: str | Path | None = None,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
) -> BM25Index:
    """Load, build, or build-and-save an index.

    With only `index_dir`, load it. With only `corpus`, build in memory. With both, load the
    saved index if it was built from the same files (same sizes and times) and chunk size,
    otherwise rebuild and save it.
    """
    paths = [corpus] if isinstance(corpus, (str, Path)) else list(corpus or [])
    if not paths and index_dir is None:
        raise ValueError("local search needs search.corpus (files or directories) or search.index_dir")
    if not paths:
        return BM25Index.load(index_dir)  # type: ignore[arg-type]
    corpus_files(paths)  # check paths before touching any index
    if index_dir is not None and (Path(index_dir) / META_FILE).is_file():
        saved = BM25Index.load(index_dir)
        if saved.meta.get("fingerprint") == fingerprint(paths) and saved.meta.get("chunk_chars") == chunk_chars:
            return saved
    index = BM25Index.build(paths, chunk_chars)
    if index_dir is not None:
        index.save(index_dir)
    return index


# ---------------------------------------------------------------------------- the tool


def load_backend(target: str, args: dict[str, Any] | None = None) -> SearchBackend:
    """Make a backend from `"module:factory"`, calling `factory(**args)` (a class or a function)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"search.backend {target!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"search.backend {target!r}: cannot import {module_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"search.backend {target!r}: module {module_name!r} has no {attr!r}")
    backend = factory(**(args or {}))
    if not callable(getattr(backend, "search", None)):
        raise ValueError(f"search.backend {target!r} made {type(backend).__name__}, which has no search(query, k) method")
    return backend


def format_hits(hits: Sequence[SearchHit | str]) -> str:
    """Numbered passages, each headed by its source."""
    blocks = []
    for i, hit in enumerate(hits, 1):
        if isinstance(hit, str):
            hit = SearchHit(hit)
        head = f"[{i}] {hit.source}" if hit.source else f"[{i}]"
        blocks.append(f"{head}\n{hit.text.strip()}")
    return "\n\n".join(blocks)


@dataclass
class SearchTool:
    """The `<search>` tool: the payload is the query; the result is the top `top_k` passages."""

    backend: SearchBackend
    top_k: int = 3
    name: str = field(default="search", init=False)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"search.top_k must be >= 1, got {self.top_k}")
        if not callable(getattr(self.backend, "search", None)):
            raise ValueError(f"search backend {type(self.backend).__name__} has no search(query, k) method")

    def __call__(self, payload: str) -> str:
        query = " ".join(payload.split())
        if not query:
            return "Error: empty search query; put the query between <search> and </search>."
        try:
            hits = list(self.backend.search(query, self.top_k))[: self.top_k]
        except Exception as exc:
            return f"Error: search failed: {type(exc).__name__}: {exc}"
        if not hits:
            return f"No results for: {query}"
        return format_hits(hits)


def hit_dict(hit: SearchHit) -> dict[str, Any]:
    """A hit as a plain dict (for JSON output)."""
    return asdict(hit)
