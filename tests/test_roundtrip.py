"""The bundled roundtrip system: rounds matter (docs/zoo.md#roundtrip).

The clerk knows the world's facts but never sees the question; the asker's request reaches it as feedback, read
in the next round. So in round 1 nothing has asked the clerk anything and the solver is on its own; from round 2
on the clerk answers. Everything runs on the shipped zoo and links (no mocks).
"""

from __future__ import annotations

import pytest
import torch

from recursivemas import System
from recursivemas.bundled import BUNDLED, bundled_config, links_path
from recursivemas.bundled.world import generate, is_correct
from recursivemas.bundled.zoo.agents import BUNDLED_ROLES
from recursivemas.bundled.zoo.build import ZOO_DIR

shipped = links_path("roundtrip").is_file() and all((ZOO_DIR / a / "config.json").is_file() for a in BUNDLED_ROLES["roundtrip"].values())
pytestmark = pytest.mark.skipif(not shipped, reason="the roundtrip agents or links are not built in this checkout")

N_TEST = 40  # first test problems, seed 0
# Shipped (new world, 5400-step solver): latent 1 round 3/40, 2 rounds 40/40 on these problems; in text mode the
# asker names the right item in 38/40 requests and the clerk states the right value in 38/40 (docs/zoo.md has the
# 200-problem numbers).
MIN_ROUND_GAIN = 20  # of 40: latent accuracy at 2 rounds minus at 1 round, well under the measured gap
MIN_CLERK_RIGHT = 0.8  # share of text-mode round-2 clerk messages that state the world's value of the asked fact
MIN_ASKER_RIGHT = 0.85  # share of round-1 asker requests that name the missing fact's item


@pytest.fixture(scope="module")
def system() -> System:
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and robust on a shared CPU
    yield System.load(bundled_config("roundtrip"))
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return generate("test", N_TEST, 0)


def test_registered_and_the_request_arrives_from_round_two(system, records) -> None:
    assert "roundtrip" in BUNDLED and set(system.agents) == set(BUNDLED_ROLES["roundtrip"])
    assert [e.feedback for e in system.graph.incoming("clerk")] == [True]
    trace: list = []
    system.run(records[:2], mode="latent", rounds=3, trace=trace)
    fills = {(r, slot): edge for r, kind, agent, slot, edge in (t for t in trace if t[1] == "fill") if agent == "clerk"}
    assert fills == {(1, "REQUEST"): None, (2, "REQUEST"): "asker->clerk", (3, "REQUEST"): "asker->clerk"}
    # In the final round only the decoder's ancestors run: the asker, whose edge is feedback, does not.
    assert not any(t[0] == 3 and t[1] == "post" and t[2] == "asker" for t in trace)


def test_text_mode_the_clerk_is_silent_then_answers_the_request(system, records) -> None:
    out = system.run(records, mode="text", rounds=2)
    said = {(h["round"], h["from"]): [] for h in out[0].handoffs}
    for res in out:
        for h in res.handoffs:
            said[(h["round"], h["from"])].append(h["text"].strip())
    assert (2, "asker") not in said  # its request would only arrive after the answer
    # The asker names the missing fact's item, first; the clerk answers with its world value, first. The counted
    # thing's name after them (`bag of balls`) is not checked: clerk-llama misnames it in a third of counting
    # lines, which the solver does not need (docs/zoo.md#agents).
    named = sum(t.split()[:1] == r["request"].split()[:1] for t, r in zip(said[(1, "asker")], records)) / len(records)
    assert named >= MIN_ASKER_RIGHT, f"the asker names the missing fact's item on {named:.2f} of {len(records)}"
    assert all(text == "" for text in said[(1, "clerk")])  # nothing asked yet: nothing to say
    right = sum(text.split()[:1] == r["world_facts"].split()[:1] for text, r in zip(said[(2, "clerk")], records)) / len(records)
    assert right >= MIN_CLERK_RIGHT, f"the clerk states the asked fact's world value on {right:.2f} of {len(records)}"


def test_latent_accuracy_rises_from_one_round_to_two(system, records) -> None:
    def right(rounds: int) -> int:
        return sum(is_correct(res.text, r["answer"]) for res, r in zip(system.run(records, mode="latent", rounds=rounds), records))

    one, two = right(1), right(2)
    assert two - one >= MIN_ROUND_GAIN, f"latent: {one}/{N_TEST} at 1 round, {two}/{N_TEST} at 2 rounds"
