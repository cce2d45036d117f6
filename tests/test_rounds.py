"""One round schedule: System.run and the outer training loop walk the same turns and route the same slots.

Also the channel probes the schedule applies (shuffle, zero, gold) and inputs with several fields.
"""

from __future__ import annotations

import pytest
import torch

from recursivemas import System
from recursivemas.channel import channel_test, gold_texts, paired_difference
from recursivemas.rounds import Mailbox, derangement, schedule
from recursivemas.train import TrainConfig
from recursivemas.train.outer import unroll
from conftest import story_ask_config
from tests.test_patterns import mixture_config

QUESTIONS = ["What is 2 + 3?", "Tom has 4 apples and eats one.", "Is 9 odd?", "Name a colour."]


def _diamond(tiny_agents) -> dict:
    """A custom graph: reader -> (left, right) -> judge, with feedback judge -> reader."""
    agents = {
        "reader": {"model": tiny_agents["llama"], "prompt": "Q: {question}\n<<VERDICT>>\nRead.", "target": "notes"},
        "left": {"model": tiny_agents["qwen2"], "prompt": "Q: {question}\n<<NOTES>>\nLeft.", "target": "left"},
        "right": {"model": tiny_agents["gemma"], "prompt": "Q: {question}\n<<NOTES>>\nRight.", "target": "right"},
        "judge": {"model": tiny_agents["gpt2"], "prompt": "Q: {question}\n<<LEFT>> <<RIGHT>>\nAnswer.", "target": "answer"},
    }
    edges = [
        {"from": "reader", "to": "left", "slot": "NOTES"},
        {"from": "reader", "to": "right", "slot": "NOTES"},
        {"from": "left", "to": "judge", "slot": "LEFT"},
        {"from": "right", "to": "judge", "slot": "RIGHT"},
        {"from": "judge", "to": "reader", "slot": "VERDICT"},
    ]
    return {"agents": agents, "edges": edges, "decoder": "judge", "rounds": 3, "latent_steps": 2,
            "generation": {"max_new_tokens": 3, "handoff_max_new_tokens": 3}}


def _records(system: System, n: int = 3) -> list[dict]:
    """Records with the question and a short target for every role (what the outer loop needs)."""
    fields = {a.target for a in system.config.agents.values()}
    return [{"question": QUESTIONS[i], **{f: f"{f} {i}" for f in fields}} for i in range(n)]


@pytest.fixture(params=["sequential", "mixture", "diamond"])
def system(request, tiny_agents, sequential_config) -> System:
    config = {"sequential": sequential_config, "mixture": mixture_config(tiny_agents, shared=False),
              "diamond": _diamond(tiny_agents)}[request.param]
    return System.from_config(config)


@pytest.mark.parametrize("source", ["rollout", "teacher"])
def test_inference_and_training_walk_the_same_schedule(system, source):
    records = _records(system)
    run_trace: list = []
    system.run([r["question"] for r in records], mode="latent", rounds=3, latent_steps=2, trace=run_trace)
    train_trace: list = []
    with torch.no_grad():
        unroll(system, records, TrainConfig(rounds=3, latent_steps=2, gradient_checkpointing=False), source, trace=train_trace)
    assert run_trace == train_trace
    # text mode routes the same slots: only the payload differs
    text_trace: list = []
    system.run([r["question"] for r in records], mode="text", rounds=3, trace=text_trace)
    assert text_trace == run_trace


def test_schedule_semantics_on_the_sequential_pattern(sequential_config):
    system = System.from_config(sequential_config)
    trace: list = []
    system.run(QUESTIONS[:2], mode="latent", rounds=3, latent_steps=2, trace=trace)
    fills = [(r, agent, src) for r, kind, agent, *rest in trace if kind == "fill" for src in [rest[1]]]
    # round 1: nothing has reached the planner's feedback slot; later rounds: the solver's last message
    assert fills[0] == (1, "planner", None)
    assert (2, "planner", "solver->planner") in fills and (3, "planner", "solver->planner") in fills
    posts = [(r, edge) for r, kind, _, edge in (e for e in trace if e[1] == "post")]
    assert (3, "solver->planner") not in posts  # nothing leaves on a feedback edge in the last round
    assert [(r, e) for r, e in posts if e == "solver->planner"] == [(1, "solver->planner"), (2, "solver->planner")]
    assert [e for e in trace if e[1] == "answer"] == [(3, "answer", "solver")]
    turns = list(schedule(system.graph, 2))
    assert [(t.round, t.senders, t.answers) for t in turns] == [
        (1, ("planner",), False), (1, ("critic",), False), (1, ("solver",), False),
        (2, ("planner",), False), (2, ("critic",), False), (2, (), True),
    ]


def test_derangement_moves_every_row():
    for n in (2, 3, 7, 50):
        for seed in range(5):
            perm = derangement(n, seed)
            assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    assert derangement(9, "a") == derangement(9, "a") and derangement(9, "a") != derangement(9, "b")
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_mailbox_probes_change_what_arrives(sequential_config):
    graph = System.from_config(sequential_config).graph
    edge = next(e for e in graph.edges if e.dst == "critic")
    values = [torch.full((2, 3), float(i)) for i in range(5)]
    for probe in ("none", "shuffle", "zero"):
        mail = Mailbox(graph, 5, probe, probe_seed=1)
        next(iter(mail.turns(1)))
        mail.post(edge, values)
        got = mail.fills("critic")[edge.slot]
        if probe == "none":
            assert got == values
        elif probe == "shuffle":
            sources = [int(g[0, 0]) for g in got]
            assert sorted(sources) == list(range(5)) and all(s != i for i, s in enumerate(sources))
        else:
            assert all(torch.equal(g, torch.zeros(2, 3)) for g in got)


def test_shuffle_gives_each_row_another_rows_payload(distillation_config, monkeypatch):
    system = System.from_config({**distillation_config, "rounds": 1})
    seen: dict[str, list] = {}
    real = System._decode

    def spy(self, name, prefixes, fills, *args, **kwargs):
        seen.setdefault("fills", []).append(fills)
        return real(self, name, prefixes, fills, *args, **kwargs)

    monkeypatch.setattr(System, "_decode", spy)
    plain = system.run(QUESTIONS, mode="latent", batch_size=4)
    shuffled = system.run(QUESTIONS, mode="latent", batch_size=4, probe="shuffle", probe_seed=3)
    a, b = seen["fills"][0]["EXPERT"], seen["fills"][1]["EXPERT"]
    perm = derangement(4, "3:0")
    for i in range(4):
        torch.testing.assert_close(b[i], a[perm[i]])
        assert not torch.allclose(b[i], a[i])
    assert len(plain) == len(shuffled) == 4
    zeroed = system.run(QUESTIONS, mode="latent", batch_size=4, probe="zero")
    assert all(torch.count_nonzero(z) == 0 for z in seen["fills"][2]["EXPERT"]) and len(zeroed) == 4
    texts = system.run(QUESTIONS, mode="text", batch_size=4, probe="zero")
    assert seen["fills"][-1]["EXPERT"] == ["", "", "", ""] and len(texts) == 4  # the learner, after the expert spoke


def test_gold_probe_runs_the_decoder_once_on_gold_text(sequential_config):
    system = System.from_config(sequential_config)
    records = [{"question": q, "refined_plan": f"Add {i} and stop."} for i, q in enumerate(QUESTIONS[:2])]
    gold = [gold_texts(system, r) for r in records]
    assert gold[1] == {"REFINED_PLAN": "Add 1 and stop."}
    res = system.run(QUESTIONS[:2], mode="text", probe="gold", gold=gold)
    assert [[(s.agent, s.action) for s in r.usage.steps] for r in res] == [[("solver", "answer")]] * 2
    with pytest.raises(ValueError, match="mode 'text'"):
        system.run(QUESTIONS[:2], mode="latent", probe="gold", gold=gold)
    with pytest.raises(ValueError, match="one mapping per input"):
        system.run(QUESTIONS[:2], mode="text", probe="gold")
    with pytest.raises(ValueError, match="unknown probe"):
        system.run(QUESTIONS[:2], probe="swap")
    with pytest.raises(ValueError, match="at least 2"):
        system.run(QUESTIONS[:1], probe="shuffle")


def test_links_that_ignore_their_input_show_no_channel_gain(sequential_config):
    system = System.from_config(sequential_config)
    with torch.no_grad():  # every outer link emits its output LayerNorm's bias, whatever it receives
        for link in system.links.outer.values():
            link.ln_target.weight.zero_()
            link.ln_target.bias.normal_()
    answers = [r.text for r in system.run(QUESTIONS, mode="latent", batch_size=4)]
    report = channel_test(system, QUESTIONS, lambda text, i: text == answers[i], batch_size=4, modes=("latent",), single=False)
    assert report.accuracy["latent"] == 100.0 and report.accuracy["latent/shuffle"] == 100.0
    assert report.gain["latent"].diff == 0 and not report.gain["latent"].excludes_zero
    assert "no information" in report.to_markdown()


def test_paired_difference_separates_signal_from_noise():
    strong = paired_difference([True] * 40 + [False] * 10, [False] * 40 + [False] * 10)
    assert strong.diff == pytest.approx(80.0) and strong.excludes_zero and strong.low > 60 and strong.p_value < 1e-6
    noise = paired_difference([True, False] * 25, [False, True] * 25)
    assert noise.diff == 0 and not noise.excludes_zero and noise.p_value == pytest.approx(1.0)
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])


def test_inputs_with_fields_reach_only_the_agents_that_read_them(tiny_agents):
    config = story_ask_config(tiny_agents)
    system = System.from_config(config)
    expert, learner = system.agents["expert"], system.agents["learner"]
    assert expert.fields == ["story"] and learner.fields == ["ask"]
    inputs = {"story": "Ann has 3 cats.", "ask": "How many cats?", "answer": "3"}
    assert "Ann has 3 cats." in "".join(s for s in expert.segments(inputs) if isinstance(s, str))
    assert "Ann" not in "".join(s for s in learner.segments(inputs) if isinstance(s, str))
    res = system.run([inputs, {**inputs, "story": "Bo has 5 dogs."}], mode="latent")
    assert len(res) == 2 and all(r.usage.generated_tokens > 0 for r in res)
    assert system.input_fields() == ["story", "ask"] and system.input_fields("single") == ["ask"]
    assert system.missing_fields("just a question") == ["story", "ask"] and system.missing_fields(inputs) == []
    with pytest.raises(ValueError, match=r"input 1 lacks the input field\(s\) story, ask .* text fields given: question"):
        system.run([inputs, "just a question"])
    with pytest.raises(ValueError, match=r"input 0 lacks the input field\(s\) ask "):
        system.run([{"story": "Ann has 3 cats.", "ask": 3}], mode="single")


def test_eval_harness_runs_channel_arms_and_reports_the_gain(sequential_config, tmp_path):
    from recursivemas.eval.harness import evaluate
    from recursivemas.eval.report import channel_gains, markdown
    from recursivemas.eval.tasks import Example

    system = System.from_config(sequential_config)
    examples = [Example(f"q{i}", q, "5", "math", {"task": "toy"}, fields={"question": q, "refined_plan": "add"})
                for i, q in enumerate(QUESTIONS)]
    records = evaluate(system, examples, modes=["text", "latent"], rounds=[2], out_path=tmp_path / "r.jsonl",
                       batch_size=4, progress=False, probes=["shuffle", "zero", "gold"])
    modes = sorted({r["mode"] for r in records})
    assert modes == ["latent", "latent/shuffle", "latent/zero", "text", "text/gold", "text/shuffle", "text/zero"]
    assert {r["probe"] for r in records if r["mode"] == "latent/shuffle"} == {"shuffle"}
    gains = channel_gains(records)
    assert [(g["mode"], g["rounds"], g["n"]) for g in gains] == [("text", 2, 4), ("latent", 2, 4)]
    assert "channel gain" in markdown(records)
    with pytest.raises(ValueError, match="unknown probe"):
        evaluate(system, examples, modes=["latent"], out_path=tmp_path / "x.jsonl", probes=["swap"])


def test_should_stop_cancels_a_run_between_turns(sequential_config):
    from recursivemas.system import Cancelled

    system = System.from_config(sequential_config)
    trace: list = []
    asked = {"n": 0}

    def stop_in_round_two() -> bool:
        asked["n"] += 1
        return any(event[0] == 2 for event in trace)

    with pytest.raises(Cancelled, match="round 2"):
        system.run(QUESTIONS[:2], mode="latent", rounds=3, trace=trace, should_stop=stop_in_round_two)
    assert max(event[0] for event in trace) == 2 and asked["n"] >= 4
    assert system.run(QUESTIONS[:2], mode="latent", rounds=3, should_stop=lambda: False)  # a run nobody stops completes


def test_training_unroll_passes_the_latents_inference_passes(sequential_config, monkeypatch):
    """With rollout latents, the outer loop hands every receiver what System.run hands it (same numbers)."""
    system = System.from_config(sequential_config)
    records = _records(system)
    seen: dict[str, list] = {"run": [], "train": []}
    now = {"path": "run"}
    real = Mailbox.fills

    def spy(self, agent):
        out = real(self, agent)
        copies = {k: [None if v is None else v.detach().clone() for v in vals] for k, vals in out.items()}
        seen[now["path"]].append((self.round, agent, copies))
        return out

    monkeypatch.setattr(Mailbox, "fills", spy)
    system.run([r["question"] for r in records], mode="latent", rounds=3, latent_steps=2)
    now["path"] = "train"
    with torch.no_grad():
        unroll(system, records, TrainConfig(rounds=3, latent_steps=2, gradient_checkpointing=False), "rollout")
    assert [(r, a) for r, a, _ in seen["run"]] == [(r, a) for r, a, _ in seen["train"]]
    compared = 0
    for (_, _, a), (_, _, b) in zip(seen["run"], seen["train"]):
        for slot in a:
            for x, y in zip(a[slot], b[slot]):
                assert (x is None) == (y is None)
                if x is not None:
                    torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4)
                    compared += 1
    assert compared == 3 * (2 + 3 + 3)  # 3 rows: the planner's feedback in rounds 2-3, critic and solver in all 3


def test_inputs_past_an_agents_positions_get_a_clear_error(sequential_config):
    system = System.from_config(sequential_config)
    limit = min(a.model.config.max_position_embeddings if hasattr(a.model.config, "max_position_embeddings")
                else a.model.config.n_positions for a in system.agents.values())
    long_question = "word " * (limit + 10)
    with pytest.raises(ValueError, match=r"would need \d+ positions .* past its model's"):
        system.run([long_question], mode="latent")
    with pytest.raises(ValueError, match="past its model's"):
        system.run([long_question], mode="single")


def test_upstream_weight_adds_each_agents_own_target_loss_where_its_slots_are_filled(sequential_config):
    system = System.from_config(sequential_config)
    records = _records(system)
    cfg = dict(rounds=2, latent_steps=2, gradient_checkpointing=False)
    with torch.no_grad():
        plain = unroll(system, records, TrainConfig(**cfg), "rollout")
        trace: list = []
        both = unroll(system, records, TrainConfig(upstream_weight=0.5, **cfg), "rollout", trace=trace)
    assert plain.upstream_ce == [] and torch.isclose(plain.loss, plain.ce_rows.mean())
    # critic in rounds 1 and 2; the planner only in round 2 (its feedback slot is empty in round 1); never the solver
    fills = [(t[0], t[2]) for t in trace if t[1] == "fill" and t[2] != "solver"]
    assert fills == [(1, "planner"), (1, "critic"), (2, "planner"), (2, "critic")]
    assert len(both.upstream_ce) == 3
    assert torch.allclose(both.ce_rows, plain.ce_rows)
    assert torch.isclose(both.loss, plain.loss + 0.5 * torch.stack(both.upstream_ce).mean())
    with pytest.raises(ValueError, match="upstream_weight"):
        TrainConfig(upstream_weight=-1.0)
