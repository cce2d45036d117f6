"""The two kinds of markers in a role prompt, defined once (docs/method.md#slots).

- ``<<NAME>>``: a slot, where an incoming edge's latents (or text, in text mode) are spliced in;
- ``{name}``: an input field (``{question}``, ``{story}``, ...), filled from the input of the run.
"""

from __future__ import annotations

import re

SLOT_RE = re.compile(r"<<([A-Za-z][A-Za-z0-9_]*)>>")
FIELD_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MARKER_RE = re.compile(r"(<<[A-Za-z][A-Za-z0-9_]*>>|\{[A-Za-z_][A-Za-z0-9_]*\})")  # either one, captured whole (re.split)


def prompt_slots(prompt: str) -> list[str]:
    """The slot names of a prompt, in order (repeats kept, so callers can refuse them)."""
    return SLOT_RE.findall(prompt)


def prompt_fields(prompt: str) -> list[str]:
    """The input fields a prompt reads, in order."""
    return FIELD_RE.findall(prompt)
