"""The bundled real system's shapes with random weights: its cost where the GGUF packages cannot be installed.

    python bench/real_shapes.py [--device cuda] [--dtype bfloat16] [--part speed,rollout,train]

gemma-3-270m (reader) and SmolLM2-135M-Instruct (answerer) are rebuilt from their configurations
(``bench/shapes/*.json``, read from the GGUF files) with random weights and word tokenizers of their
vocabulary sizes, and wired as ``bundled/configs/real.yaml`` wires the real ones (same prompts, edges,
feedback and batch of 16). Random weights stop at random places, so end-of-sequence never matches and
stop strings are off: every message has a fixed length (latent stop still pays for its LM head). The defaults copy what the real system's
batches cost on 16 test problems (2026-12-04): each text hand-off runs 7 decode steps and the final
answer 16 (a batch decodes until its slowest row ends), a latent message 4 steps, and the latent
mode's answer 5 (the trained links make the answerer write the option alone, which random links
cannot: ``--latent-answer`` sets it), so the weights are synthetic, not the lengths. A word tokenizer makes each word of the
passage one token, about 20% fewer prompt positions than the real tokenizers give.

- speed: latent vs text MAS at 1, 2 and 3 rounds (tokens, forward calls, wall time, ratio);
- rollout: KV-cached latent rollout vs re-encoding, prompt 256, m = 32, batch 1, each model;
- train: links vs LoRA vs full fine-tuning of the answerer (`bench/real_models.py`'s part, on these models).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from common import machine
from real_models import bench_rollout, bench_train
from recursivemas import System, facts, real
from recursivemas.tiny import build_word_tokenizer

SHAPES = Path(__file__).resolve().parent / "shapes"
MODELS = {"reader": "gemma-3-270m", "answerer": "smollm2-135m-instruct"}


def save_random(name: str, out: Path, seed: int) -> Path:
    """``name``'s architecture with random weights and a word tokenizer of its vocabulary size."""
    data = json.loads((SHAPES / f"{name}.json").read_text())
    tokenizer = build_word_tokenizer(data["vocab_size"])
    data.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def system_data(tmp: Path, args: argparse.Namespace) -> dict:
    """real.yaml with the random models, fixed-length messages and untrained links."""
    data = yaml.safe_load(real.CONFIG.read_text())
    for i, (role, name) in enumerate(MODELS.items()):
        agent = data["agents"][role]
        agent.update(model=str(save_random(name, tmp / name, seed=i)), dtype=args.dtype, device=args.device)
        agent.pop("system_prompt", None)  # the word tokenizer's chat template is what renders it; keep prompts alike
    data["links"] = {"kind": "linear", "inner": "latentmas"}
    data["latent_steps"] = args.latent_steps
    # latent stop stays on, so its LM head runs at every thought as in the real system; eos never matches, so it never stops
    data["generation"] = {**data["generation"], "stop": [],
                          "handoff_max_new_tokens": args.handoff, "max_new_tokens": args.answer}
    return data


def bench_speed(system: System, problems: int, latent_answer: int) -> str:
    for agent in system.agents.values():
        agent.eos_token_ids = {-1}  # never matches: fixed-length messages
    records = facts.generate("test", problems)
    latent_answer_only = {"latent": replace(system.config.generation, max_new_tokens=latent_answer)}
    lines = ["| rounds | latent s/problem | text s/problem | speed-up | latent tokens | text tokens | fewer tokens | latent forward calls | text forward calls |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rounds in (1, 2, 3):  # real.speed warms both modes up, then times them back to back
        s = real.speed(system, records, rounds, generation=latent_answer_only)
        lat, txt = s["latent"], s["text"]
        lines.append(f"| {rounds} | {lat['seconds_per_problem']:.4f} | {txt['seconds_per_problem']:.4f} | {s['speedup']:.2f}x | "
                     f"{lat['generated_tokens']:.1f} | {txt['generated_tokens']:.1f} | {100 * s['token_reduction']:.1f}% | "
                     f"{lat['forward_calls']} | {txt['forward_calls']} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="speed,rollout,train")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--problems", type=int, default=64, help="test problems, in batches of 16")
    parser.add_argument("--handoff", type=int, default=7, help="decode steps of every text hand-off (the real batches: 7-9)")
    parser.add_argument("--answer", type=int, default=16, help="decode steps of the final answer (the real text batches: 16)")
    parser.add_argument("--latent-steps", type=int, default=4, help="m (the real system's, tuned on validation)")
    parser.add_argument("--latent-answer", type=int, default=5, help="decode steps of the latent mode's answer (the real batches: 5-6)")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="training batch")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as bench/real_models.py, so the two compare on a CPU
    parts = args.part.split(",")
    print(f"# The real system's shapes, random weights ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.device}, {args.dtype})\n")
    with tempfile.TemporaryDirectory() as tmp:
        data = system_data(Path(tmp), args)
        system = System.from_config({**data, "base_dir": str(real.CONFIG.parent)})
        if "speed" in parts:
            print(f"## Latent vs text MAS ({args.problems} test problems; text hand-offs {args.handoff} steps, answers "
                  f"{args.answer} (latent mode {args.latent_answer}), m = {args.latent_steps})\n\n{bench_speed(system, args.problems, args.latent_answer)}\n", flush=True)
        if "rollout" in parts:
            print(f"## KV rollout vs re-encoding\n\n{bench_rollout(system)}\n", flush=True)
        if "train" in parts:
            del system  # each method trains in its own process, with the GPU's memory to itself
            print(f"## Training cost ({args.train_steps} steps, batch {args.batch_size})\n\n"
                  f"{bench_train(args.train_steps, args.batch_size, data=data)}\n", flush=True)
    print(f"Machine: {machine()}.")


if __name__ == "__main__":
    main()
