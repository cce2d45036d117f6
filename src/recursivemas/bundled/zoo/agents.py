"""The zoo's agents: five architecture families at different widths, two tokenizers.

Heterogeneous like the paper's systems: a Llama-style model (grouped-query attention, RoPE,
RMSNorm, SwiGLU), a Qwen2-MoE model (4 routed experts, top-2, plus a shared expert), a
GPT-2-style model (learned absolute positions, LayerNorm, GELU), and small Llama, Mistral and
Qwen3 specialists. Who knows the world's hidden facts is split on purpose (docs/zoo.md): the
MoE (planner, distillation expert, reflector) and the domain experts learn them; the Llama
(solver, learner, summarizer), the GPT-2 (critic) and the tool-caller never see them and must be told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# name -> (vocab_size, chat format): BPE over printable ASCII trained on world text.
TOKENIZERS: dict[str, tuple[int, str]] = {"bpe384": (384, "tags"), "bpe320": (320, "chatml")}


@dataclass(frozen=True)
class AgentSpec:
    name: str
    family: str  # a transformers model_type
    tokenizer: str  # a key of TOKENIZERS
    hidden_size: int
    num_layers: int
    steps: int  # pretraining optimizer steps
    lr: float = 3e-3
    batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)
    # The roles this agent learns: role -> draw weight (None: every base role with pretrain.ROLE_WEIGHTS).
    roles: dict[str, float] | None = None
    drill: float = 1.0  # arithmetic-drill draw weight, on the scale of `roles`
    domain: str | None = None  # a domain expert trains on this world domain...
    off_domain_share: float = 0.0  # ...plus this share of other-domain problems (to learn to decline them)

    def config(self, vocab_size: int, eos_id: int, pad_id: int, max_positions: int = 640) -> PretrainedConfig:
        """The model config of this agent (tied embeddings, no dropout)."""
        ids = dict(vocab_size=vocab_size, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None, tie_word_embeddings=True)
        if self.family == "gpt2":
            kw = dict(n_embd=self.hidden_size, n_layer=self.num_layers, n_positions=max_positions,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        else:
            kw = dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_layers, max_position_embeddings=max_positions,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **ids)
        kw.update(self.extra)
        return AutoConfig.for_model(self.family, **kw)


AGENTS: dict[str, AgentSpec] = {
    a.name: a
    for a in (
        # Every answer-writing receiver: computes the chain, the named fact read from its slots. 5400 steps: fewer and it
        # copies wrong operands (gold equations: 74% at 1800 steps, 82% at 3600 on this world), the ceiling of every
        # system (docs/zoo.md#agents).
        AgentSpec(
            "llama-gqa", "llama", "bpe384", hidden_size=160, num_layers=4, steps=5400,
            extra=dict(num_attention_heads=4, num_key_value_heads=2, head_dim=40, intermediate_size=448),
            roles={"solver": 2.0, "learner": 1.0, "summarizer": 1.0}, drill=1.5,
        ),
        # Knows the facts: planner (and reflector: the same prompt) and distillation expert; neither computes.
        AgentSpec(
            "qwen-moe", "qwen2_moe", "bpe320", hidden_size=128, num_layers=3, steps=1000,
            extra=dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=256,
                       num_experts=4, num_experts_per_tok=2, moe_intermediate_size=192,
                       shared_expert_intermediate_size=192, norm_topk_prob=True, router_aux_loss_coef=0.01),
            roles={"planner": 1.0, "expert": 1.0}, drill=0.0,
        ),
        # The critic copies the fact and the chain into equations: no arithmetic, so no drill (500 steps: 48.5% exact).
        AgentSpec(
            "gpt2-small", "gpt2", "bpe384", hidden_size=112, num_layers=4, steps=1200,
            extra=dict(n_head=4, n_inner=448), roles={"critic": 1.0}, drill=0.0,
        ),
    )
}

# Role specialists for the mixture and deliberation systems, appended so the seeds of the first three
# (derived from their position here) never change. Small on purpose: 16 MB caps everything shipped.
_SMALL = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=192)
_MEDIUM = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24, intermediate_size=256)
AGENTS.update({
    a.name: a
    for a in (
        # A domain expert only recalls its domain's facts (no arithmetic): few steps, no drill.
        AgentSpec("money-llama", "llama", "bpe384", hidden_size=64, num_layers=2, steps=600, extra=_SMALL,
                  roles={"money": 1.0}, drill=0.0, domain="money", off_domain_share=0.3),
        AgentSpec("counting-mistral", "mistral", "bpe320", hidden_size=64, num_layers=2, steps=600, extra=_SMALL,
                  roles={"counting": 1.0}, drill=0.0, domain="counting", off_domain_share=0.3),
        AgentSpec("time-qwen3", "qwen3", "bpe384", hidden_size=64, num_layers=2, steps=600, extra=_SMALL,
                  roles={"time": 1.0}, drill=0.0, domain="time", off_domain_share=0.3),
        # Writes the program (the fact read from its slot) and copies the tool's result; no drill: with the tool it
        # never computes. (Not qwen2: AutoTokenizer loads a qwen2 model's tokenizer as Qwen2Tokenizer, another pre-tokenizer.)
        AgentSpec("toolcaller-qwen3", "qwen3", "bpe384", hidden_size=96, num_layers=3, steps=1000, extra=_MEDIUM,
                  roles={"tool_caller": 1.0}, drill=0.0),
    )
})
# The roundtrip's asker and clerk, appended last for the same reason: one names the fact a question lacks, the other
# recalls the value of a named fact (neither computes).
AGENTS["clerk-llama"] = AgentSpec("clerk-llama", "llama", "bpe384", hidden_size=64, num_layers=2, steps=1500, extra=_SMALL,
                                  roles={"asker": 1.0, "clerk": 1.0}, drill=0.0)
BASE_AGENTS = ("llama-gqa", "qwen-moe", "gpt2-small")  # the sequential default's agents

# Which zoo agent plays which role in the bundled systems.
SEQUENTIAL = {"planner": "qwen-moe", "critic": "gpt2-small", "solver": "llama-gqa"}
# The expert knows the facts; the learner (the zoo's strongest solver) does not.
DISTILLATION = {"expert": "qwen-moe", "learner": "llama-gqa"}
# The summarizer is the zoo's strongest solver (a separate 96-wide summarizer solved 8.5%; docs/zoo.md).
MIXTURE = {"money": "money-llama", "counting": "counting-mistral", "time": "time-qwen3", "summarizer": "llama-gqa"}
DELIBERATION = {"reflector": "qwen-moe", "tool_caller": "toolcaller-qwen3"}
# The clerk knows the facts but never sees the question; the asker (same model) and the solver see it but do not know them.
ROUNDTRIP = {"asker": "clerk-llama", "clerk": "clerk-llama", "solver": "llama-gqa"}
BUNDLED_ROLES = {"sequential": SEQUENTIAL, "distillation": DISTILLATION, "mixture": MIXTURE, "deliberation": DELIBERATION,
                 "roundtrip": ROUNDTRIP}
