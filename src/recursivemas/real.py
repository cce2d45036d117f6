"""The bundled real-model system (``configs/real.yaml``): train its links, measure it with the channel tests.

gemma-3-270m reads a passage of facts (``recursivemas.facts``), SmolLM2-135M-Instruct answers without
seeing it; both load from GGUF files shipped by Python packages (``recursivemas.gguf``). See docs/real_models.md.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from recursivemas import facts

CONFIG = Path(__file__).resolve().parent / "configs" / "real.yaml"
LINKS = CONFIG.with_name("real.links.safetensors")


def load(with_links: bool = True):
    """The bundled real system; ``with_links=False`` starts from fresh (untrained) links."""
    from recursivemas import System

    data = yaml.safe_load(CONFIG.read_text())
    if not with_links or not LINKS.is_file():
        data["links"] = {**data.get("links", {}), "checkpoint": None}
    return System.from_config({**data, "base_dir": str(CONFIG.parent)})


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_links(steps: int = 100, records: int = 800, seed: int = 0, out: Path | None = None, **overrides: Any) -> dict:
    """Train the outer links of the real system on facts' train split (rollout latents, ridge init); returns the summary.

    Writes the links to ``out`` (default: ``configs/real.links.safetensors``, shipped in float16).
    """
    from safetensors.torch import load_file, save_file

    from recursivemas.train import TrainConfig, train

    system = load(with_links=False)
    settings = dict(stage="outer", steps=steps, lr=1e-3, batch_size=8, seed=seed, progress=True, eval_generate=False,
                    latent_source="rollout", warmup_steps=min(10, steps // 5), ridge_records=32, eval_fraction=0.05,
                    checkpoint_every=10**6)
    settings.update(overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(system, facts.generate("train", records, seed=seed), TrainConfig(**settings), tmp)
        state = load_file(str(Path(tmp) / "links.safetensors"))
    summary["train_seconds"] = time.perf_counter() - start
    summary["seconds_per_step"] = summary["train_seconds"] / max(steps, 1)
    summary["peak_rss_mb"] = peak_rss_mb()
    target = Path(out) if out else LINKS
    # float16 halves the shipped file; LatentMAS inner links are recomputed at load, so only outer links are stored.
    save_file({k: v.half().contiguous() for k, v in state.items() if k.startswith("outer.")}, str(target), metadata={"format": "pt"})
    summary["links_bytes"] = target.stat().st_size
    return summary
