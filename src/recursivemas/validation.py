"""Low-level checks shared by every settings parser: unknown keys with suggestions, value types, safetensors files.

This module imports nothing from the rest of the package, so any module (config, training, serving) can use
it without import cycles. Each check raises the error class the caller passes (default ``ValueError``).
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import struct
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Mapping

# A links file holds a few dozen tensors; its JSON header is tiny. 100 MB is far beyond any real header
# and keeps a hostile file from making us allocate gigabytes before reading a tensor.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class ConfigError(ValueError):
    """A system file that cannot be used as written."""


def close_match(key: Any, allowed: Iterable[str]) -> str | None:
    """The allowed name a mistyped ``key`` most likely meant, if any is close: the one suggestion rule."""
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return close[0] if close else None


def unknown_key_message(section: str, key: Any, allowed: Iterable[str]) -> str:
    """``section: unknown key 'x'. Did you mean 'y'?`` (or the allowed keys when nothing is close)."""
    allowed = list(allowed)
    close = close_match(key, allowed)
    hint = f" Did you mean {close!r}?" if close else f" Allowed keys: {', '.join(allowed)}."
    return f"{section}: unknown key {key!r}.{hint}"


def check_keys(
    section: str,
    data: Any,
    allowed: Iterable[str],
    required: tuple[str, ...] = (),
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error`` unless ``data`` is a mapping whose keys are all ``allowed`` and hold every ``required`` one."""
    allowed = list(allowed)
    if not isinstance(data, Mapping):
        raise error(f"{section}: expected a mapping of {', '.join(allowed[:6])}{', ...' if len(allowed) > 6 else ''}; got {type(data).__name__} {data!r:.60}")
    for key in data:
        if key not in allowed:
            raise error(unknown_key_message(section, key, allowed))
    for key in required:
        if data.get(key) in (None, ""):
            raise error(f"{section}: missing required key {key!r}")


def _matches(value: Any, kind: str) -> bool:
    """Does ``value`` fit one alternative of a dataclass annotation (``int``, ``list[str]``, ``None``...)?"""
    kind = kind.strip()
    if kind in ("None", "NoneType"):
        return value is None
    if kind in ("Any", "object"):
        return True
    if kind == "bool":  # only a real boolean: the string "false" is truthy and must not switch anything on
        return isinstance(value, bool)
    if kind == "int":  # numbers.Integral: numpy integers from a caller's own code are integers too
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "Path":
        return isinstance(value, (str, Path))
    if kind.startswith("list[") and kind.endswith("]"):
        return isinstance(value, list) and all(_matches(v, kind[5:-1]) for v in value)
    if kind.startswith("dict[") and kind.endswith("]"):
        key_kind, _, value_kind = kind[5:-1].partition(",")
        return isinstance(value, dict) and all(_matches(k, key_kind) and _matches(v, value_kind) for k, v in value.items())
    return True  # a type this checker does not know: left to the dataclass itself


def _describe(kind: str) -> str:
    words = {"int": "an integer", "float": "a finite number", "str": "a string", "bool": "true or false (unquoted)",
             "None": "null", "Path": "a path"}
    parts = [words.get(k.strip(), k.strip()) for k in kind.split("|")]
    return " or ".join(parts)


def type_error_message(section: str, key: str, value: Any, annotation: str) -> str | None:
    """None when ``value`` fits ``annotation`` (a dataclass field's type as text), else what is wrong and the fix."""
    if any(_matches(value, alt) for alt in _split_union(annotation)):
        return None
    fix = ""
    if isinstance(value, str) and "bool" in annotation and value.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
        word = "true" if value.strip().lower() in ("true", "yes", "on") else "false"
        fix = f"; write {key}: {word} without quotes"
    elif isinstance(value, str) and ("int" in annotation or "float" in annotation) and _numeric(value):
        fix = "; write the number without quotes"
        if "e" in value.lower() and "." not in value:  # YAML 1.1 reads 1e-4 as text: it needs a dot
            fix += f" and with a dot, like {value.lower().replace('e', '.0e', 1)}"
    elif isinstance(value, float) and not math.isfinite(value):
        fix = "; NaN and infinity are not allowed"
    elif isinstance(value, bool):
        fix = "; a boolean is not a number here"
    elif "str" in annotation and isinstance(value, (int, float)):
        fix = f"; quote it: {key}: \"{value}\""
    return f"{section}.{key} must be {_describe(annotation)}, got {type(value).__name__} {value!r:.60}{fix}"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_union(annotation: str) -> list[str]:
    """``'dict[str, str] | None'`` -> ``['dict[str, str]', 'None']`` (bars inside brackets are kept)."""
    out, depth, current = [], 0, ""
    for ch in annotation:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    return [*out, current]


def check_types(section: str, data: Mapping[str, Any], cls: type, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` for the first value in ``data`` whose type does not fit the dataclass ``cls``'s field."""
    annotations = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)) for f in fields(cls)}
    for key, value in data.items():
        if key in annotations:
            message = type_error_message(section, key, value, annotations[key])
            if message:
                raise error(message)


def check_safetensors(path: str | Path, what: str = "checkpoint", error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming ``path`` unless it looks like a whole safetensors file (sane, bounded header).

    Reads only the 8-byte length and the JSON header: a pickle, a truncated file or a header that claims
    more bytes than the file holds is refused before any tensor is read.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f"{what} {path} is not a safetensors file ({size} bytes, too short); write it with save_pretrained or training")
        if head[:1] == b"\x80" or head[:2] == b"PK":  # a pickle protocol mark, or a zip: torch.save's formats
            raise error(
                f"{what} {path} is a pickled PyTorch file, which is never loaded (unpickling runs code); "
                f"convert it to safetensors (safetensors.torch.save_file) or use links.release for public-release .pt links"
            )
        (length,) = struct.unpack("<Q", head)
        if length > MAX_SAFETENSORS_HEADER or length > size - 8:
            raise error(f"{what} {path} is not a valid safetensors file: its header claims {length} bytes but the file has {size}; "
                        f"it is truncated or not safetensors")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise error(f"{what} {path} is not a valid safetensors file: its header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise error(f"{what} {path} is not a valid safetensors file: its header is not a mapping")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise error(f"{what} {path} is not a valid safetensors file: tensor {name!r} has no data offsets")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise error(f"{what} {path} is truncated: its tensors need {8 + length + end} bytes but the file has {size}")
