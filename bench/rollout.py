"""KV-cached latent rollout vs the release's re-encoding, on a ~40M-parameter Llama-style model.

    python bench/rollout.py [--prompt 512] [--steps 16 48 96] [--record]

Prints the time of each way and their ratio from one run. Target: >= 10x at M = 48.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from common import record, save_llama
from recursivemas import InnerLink, latent_rollout, reencode_rollout


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 48, 96])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = AutoModelForCausalLM.from_pretrained(save_llama(Path(tmp), args.hidden)).to(args.device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    torch.manual_seed(0)
    link = InnerLink(args.hidden).to(args.device)
    embeds = torch.randn(1, args.prompt, args.hidden, device=args.device) * 0.02
    rows = []
    with torch.no_grad():
        latent_rollout(model, link, embeds, steps=2)  # warm-up
        for m in args.steps:
            cached = timed(lambda: latent_rollout(model, link, embeds, steps=m))
            reencoded = timed(lambda: reencode_rollout(model, link, embeds, steps=m))
            a, b = latent_rollout(model, link, embeds, steps=m), reencode_rollout(model, link, embeds, steps=m) if m <= 16 else None
            diff = f"{(a - b).abs().max().item():.1e}" if b is not None else "-"
            rows.append((m, cached, reencoded, reencoded / cached, diff))
            print(f"M={m:3d}  cached {cached:7.3f}s  re-encode {reencoded:7.3f}s  speed-up {reencoded / cached:6.1f}x  max|diff| {diff}", flush=True)
    table = "| M | KV-cached (s) | re-encode (s) | speed-up | max abs diff |\n|---|---|---|---|---|\n"
    table += "\n".join(f"| {m} | {c:.3f} | {r:.3f} | {s:.1f}x | {d} |" for m, c, r, s, d in rows)
    summary = f"Llama-style model, hidden {args.hidden}, 8 layers, vocab 32000 ({params:.1f}M parameters), prompt {args.prompt}, batch 1, {args.device}.\n\n{table}"
    print(summary)
    if args.record:
        record("Latent rollout: KV cache vs re-encoding (`bench/rollout.py`)", summary)


if __name__ == "__main__":
    main()
