"""Baselines on the same data and step budget (docs/method.md#baselines, the paper's Table 5).

The decoding agent alone, prompted with its role prompt (every slot empty, as ``System.run(mode="single")``
does), fine-tuned on question -> answer with next-token cross-entropy on the answer tokens + eos:

- ``lora``: LoRA adapters (peft) on every linear layer of a copy of the decoder (``target_modules="all-linear"``
  unless ``lora_target_modules`` is set), rank ``lora_r``, alpha ``lora_alpha``, no dropout.
- ``full``: every parameter of a copy of the decoder.

The copy is made before measurements begin; the system's own frozen model is never touched. Dropout
stays off, as for the frozen agents in RecursiveMAS training, so the methods differ only in what trains.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from recursivemas.generation import cut_at_stop, decode_batch, stop_check
from recursivemas.train.data import role_targets
from recursivemas.train.teacher import answer_ce, forced_pass, prompt_ids, target_ids

METHODS = ("recursivemas", "lora", "full")


def lora_param_count(model: nn.Module, r: int, target_modules: Sequence[str] | str = "all-linear") -> int:
    """``r * (in + out)`` summed over the linear layers LoRA wraps (what peft will add), computed from shapes."""
    from transformers.pytorch_utils import Conv1D

    names = None if target_modules == "all-linear" else set(target_modules)
    out_layer = model.get_output_embeddings()
    total = 0
    for name, module in model.named_modules():
        if module is out_layer or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        if names is not None and name.rsplit(".", 1)[-1] not in names:
            continue
        if isinstance(module, nn.Linear):
            total += r * (module.in_features + module.out_features)
        else:  # GPT-2's Conv1D stores weight as [in, out]
            total += r * sum(module.weight.shape)
    return total


class FinetuneStage:
    """The decoding agent alone, fine-tuned with LoRA or fully."""

    clip_separately = False

    def __init__(self, system: Any, cfg: Any, method: str) -> None:
        if method not in ("lora", "full"):
            raise ValueError(f"baseline method {method!r} is unknown; choose 'lora' or 'full'")
        self.system, self.cfg, self.name = system, cfg, method
        self.agent = system.agents[system.graph.decoder]
        self.field = role_targets(system)[system.graph.decoder]
        model = copy.deepcopy(self.agent.model)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            model.requires_grad_(False)
            targets = cfg.lora_target_modules or "all-linear"
            self.peft = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets))
            self.lm = self.peft.get_base_model()
        else:
            self.peft = None
            self.lm = model.requires_grad_(True)
        self.lm.eval()
        for p in self.lm.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # trainable weights and their optimizer state in float32

    def modules(self) -> dict[str, nn.Module]:
        return {self.name: self.lm}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.lm.named_parameters() if p.requires_grad}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.lm.named_parameters())
        missing = sorted(set(self.state_tensors()) - set(state))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors of the {self.name} baseline (e.g. {missing[0]})")
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)

    def _batch(self, records: Sequence[dict]):
        questions = list(records)  # each agent reads the input fields its prompt names
        ids = target_ids(self.agent, [r[self.field] for r in records], self.cfg.max_target_tokens, eos=True)
        prompts = [prompt_ids(self.agent, q) for q in questions]
        return questions, ids, prompts

    def loss(self, records: Sequence[dict], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        questions, ids, prompts = self._batch(records)
        forced = forced_pass(self.agent, questions, {}, ids, model=self.lm, prompts=prompts, checkpoint=self.cfg.gradient_checkpointing)
        ce, _, _ = answer_ce(self.lm, forced)
        return ce.mean(), {"ce_final": float(ce.detach().mean())}

    @torch.no_grad()
    def evaluate(self, records: Sequence[dict]) -> dict[str, float]:
        ce_sum = acc_sum = exact = 0.0
        bs = self.cfg.eval_batch_size
        for start in range(0, len(records), bs):
            chunk = records[start : start + bs]
            questions, ids, prompts = self._batch(chunk)
            forced = forced_pass(self.agent, questions, {}, ids, model=self.lm, prompts=prompts)
            ce, acc, _ = answer_ce(self.lm, forced)
            ce_sum, acc_sum = ce_sum + float(ce.sum()), acc_sum + float(acc.sum())
            if self.cfg.eval_generate:
                exact += sum(t.strip() == r[self.field].strip() for t, r in zip(self.answer(questions, prompts), chunk))
        out = {"answer_loss": ce_sum / len(records), "answer_token_acc": acc_sum / len(records)}
        if self.cfg.eval_generate:
            out["exact_match"] = exact / len(records)
        return out

    def answer(self, questions: Sequence[str], prompts: list[list[int]] | None = None) -> list[str]:
        """Greedy answers of the fine-tuned decoder."""
        from recursivemas.slots import left_pad

        prompts = prompts or [prompt_ids(self.agent, q) for q in questions]
        table = self.lm.get_input_embeddings()
        embeds, mask = left_pad([table(torch.tensor(p, device=self.agent.device)) for p in prompts])
        gen = self.system.config.generation
        ids, _ = decode_batch(
            self.lm,
            embeds,
            mask,
            eos_token_ids=self.agent.eos_token_ids,
            max_new_tokens=gen.max_new_tokens,
            stop=stop_check(self.agent.decode, gen.stop),
        )
        return [cut_at_stop(self.agent.decode(row), gen.stop) for row in ids]

    def weights(self) -> list[nn.Module]:
        return [self.lm]

    def save(self, directory: str | Path) -> None:
        """The fine-tuned decoder (LoRA adapter or full model) and its tokenizer, in Hugging Face format."""
        directory = Path(directory)
        (self.peft or self.lm).save_pretrained(directory)
        self.agent.tokenizer.save_pretrained(directory)
